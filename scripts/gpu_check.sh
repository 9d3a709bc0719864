#!/usr/bin/env bash
# The prepared GPU check (issue #10): correctness on CUDA first, then the benchmark, each step
# under its own timeout, results under $OUT as they come. On a lent GPU, from the project root:
#   ../shared/gpu/prepare.sh                       # here, once: wheels into .gpu/
#   run: bash .gpu/run.sh bash scripts/gpu_check.sh  (carry: [".gpu"], timeout_s ~540)
# Try it on the CPU first with DEVICE=cpu (the CUDA tests skip there).
set -uo pipefail
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
# CUDA: graphs, compiled (Triton) layers in graphs, reads per step (plain and pipelined); then the
# scheduling logic the GPU runs by default (pipelined steps, chunked prefill) on this machine.
step tests 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_graphs.py \
  tests/test_host_reads.py tests/test_pipeline.py tests/test_prefill.py \
  "tests/test_streaming.py::test_cuda_batched_stream"
step checkpoint 120 python3 -m utter.cli dev tiny-checkpoint /tmp/ck06 --size 0.6b
# Compiled layers first (the full suite: the candidate default), eager bfloat16 beside it (the
# per-frame split, kernels per frame), the official package in the same run.
step bench 420 python3 -m utter.cli bench --device "$DEVICE" --model /tmp/ck06 \
  --weight-mode bfloat16+compile,bfloat16 --official-dtype bfloat16 --frames 100 \
  --concurrency 1,8,32,64 --arrival-rates 10 --arrival-seconds 10 --text-frames-cap 60 \
  --ttfa-repeats 10 --output "$OUT/bench.json" --plot "$OUT/bench.png" --markdown "$OUT/bench.md"
tail -n 5 "$OUT/tests.log"
cat "$OUT/bench.md" 2>/dev/null
cat "$OUT/summary.txt"
