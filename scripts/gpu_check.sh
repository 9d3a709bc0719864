#!/usr/bin/env bash
# The prepared GPU check (issue #10): correctness on CUDA first, then the benchmarks, each step
# under its own timeout, results under $OUT as they come. A device command may run 10 minutes
# and a lease is 15 in all, so the check is two calls of under 600 s each, back to back (the
# machine stays warm between them):
#   ../shared/gpu/prepare.sh                                     # here, once: wheels into .gpu/
#   run: bash .gpu/run.sh bash scripts/gpu_check.sh a   (carry: [".gpu"], timeout_s 600)
#        tests on CUDA, then the 0.6B benchmark (compiled and eager, the official package)
#   run: bash .gpu/run.sh bash scripts/gpu_check.sh b   (carry: [".gpu"], timeout_s 600)
#        the 1.7B benchmark (compiled; its targets: one stream, 32 streams, arrivals at 10/s)
# Try it on the CPU first with DEVICE=cpu (the CUDA tests skip there). A bench step cut by its
# timeout still leaves its JSON and table: every item measured before the cut, marked incomplete.
set -uo pipefail
PART=${1:-a}
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $OUT/NAME.log, keep going
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
}
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())" | tee "$OUT/torch.txt"
if [ "$PART" = a ]; then
  # CUDA: parity with the official package on the GPU (float32 greedy codes, reference codes),
  # graphs, compiled (Triton) layers in graphs, reads per step (plain and pipelined), the
  # codec on its own stream, codec slots replayed from graphs; then the scheduling logic the GPU runs by default (pipelined
  # steps, chunked prefill) on this machine's CPU.
  step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_graphs.py \
    tests/test_host_reads.py tests/test_pipeline.py tests/test_prefill.py \
    "tests/test_streaming.py::test_cuda_batched_stream" \
    "tests/test_streaming.py::test_codec_slots_equal_streams_pushed_alone"
  step checkpoint06 40 python3 -m utter.cli dev tiny-checkpoint /tmp/ck06 --size 0.6b
  # Compiled layers first (the full suite: the candidate default), eager bfloat16 beside it (the
  # per-frame split, kernels per frame), the official package in the same run.
  step bench06 390 python3 -m utter.cli bench --device "$DEVICE" --model /tmp/ck06 \
    --weight-mode bfloat16+compile,bfloat16 --official-dtype bfloat16 --frames 100 \
    --concurrency 1,8,32,64 --arrival-rates 10 --arrival-seconds 10 --text-frames-cap 60 \
    --ttfa-repeats 10 --output "$OUT/bench06.json" --plot "$OUT/bench06.png" --markdown "$OUT/bench06.md"
  tail -n 5 "$OUT/tests.log"
  cat "$OUT/bench06.md" 2>/dev/null
else
  step checkpoint17 60 python3 -m utter.cli dev tiny-checkpoint /tmp/ck17 --size 1.7b
  step bench17 500 python3 -m utter.cli bench --device "$DEVICE" --model /tmp/ck17 \
    --weight-mode bfloat16+compile --no-official --frames 100 --concurrency 1,32 \
    --arrival-rates 10 --arrival-seconds 10 --text-frames-cap 60 --ttfa-repeats 10 \
    --output "$OUT/bench17.json" --plot "$OUT/bench17.png" --markdown "$OUT/bench17.md"
  cat "$OUT/bench17.md" 2>/dev/null
fi
cat "$OUT/summary.txt"
