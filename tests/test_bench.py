"""`utter bench`: the fixed workload, the report's ratios and targets, and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from utter.bench import commands, report
from utter.bench.runner import available_modes
from utter.bench.workload import TEXTS, reference_audio, text_frames
from utter.engine.cpu.quant import int8_kernel

FRAME_KEYS = {"prefill_ms", "talker_ms", "code_predictor_ms", "gen_ms", "codec_ms", "total_ms", "x_realtime"}


def test_texts_have_the_seed_lengths_and_budgets() -> None:
    assert {k: len(v) for k, v in TEXTS.items()} == {"short": 56, "medium": 800, "long": 2616}
    assert [text_frames(t) for t in TEXTS.values()] == [47, 667, 2180]
    ref = reference_audio()
    assert ref.dtype.name == "float32" and len(ref) == 6 * 24000 and 0 < abs(ref).max() < 1


def _doc(ours: dict, official: dict, device: str = "cpu", size: str = "0.6b") -> dict:
    modes = list(ours)
    settings = {
        "size": size,
        "device": device,
        "frames": 60,
        "weight_modes": modes,
        "official_reference": "bfloat16",
    }
    return report.finish({"settings": settings, "utter": ours, "official": official})


def test_ratios_and_targets() -> None:
    def result(gen: float, say: float, agg8: float, ttfa: float) -> dict:
        return {
            "frame": {"gen_ms": gen},
            "say": {"seconds": say},
            "ttfa": {"seconds": ttfa},
            "concurrency": {"8": {"audio_s_per_s": agg8}},
        }

    doc = _doc(
        {"int8": result(90.0, 10.0, 6.0, 1.0), "bfloat16": result(200.0, 12.0, 0, 2.0)},
        {"bfloat16": result(400.0, 25.0, 1.0, 30.0)},
    )
    assert doc["ratios"]["gen_ms"] == {"int8": 0.225, "bfloat16": 0.5}
    assert doc["ratios"]["audio_s_per_s"] == {"8": 6.0}
    verdict = {t["id"]: t["passed"] for t in doc["targets"]}
    assert verdict == {
        "frame_16bit": True,
        "frame_8bit": True,
        "say": True,
        "throughput_8": True,
        "ttfa": True,
    }
    slow = _doc({"int8": result(200.0, 20.0, 2.0, 2.0)}, {"bfloat16": result(400.0, 25.0, 1.0, 30.0)})
    verdict = {t["id"]: t["passed"] for t in slow["targets"]}
    assert verdict == {
        "frame_16bit": None,
        "frame_8bit": False,
        "say": False,
        "throughput_8": False,
        "ttfa": False,
    }
    # Without the official package: no ratios, and only the absolute targets can be judged.
    alone = _doc({"int8": result(90.0, 10.0, 6.0, 1.0)}, {})
    assert alone["ratios"] == {}
    assert {t["id"]: t["passed"] for t in alone["targets"]}["ttfa"] is True
    gpu = _doc({"bfloat16": {"frame": {"x_realtime": 12.0}, "ttfa": {"seconds": 0.04}}}, {}, device="cuda")
    assert {t["id"]: t["passed"] for t in gpu["targets"]} == {
        "gpu_one_stream": True,
        "gpu_ttfa": True,
        "gpu_32_streams": None,
    }


def test_bench_tiny_quick_end_to_end(tmp_path: Path, capsys) -> None:
    """The whole command at tiny size: JSON with every figure, a PNG, the table on screen."""
    modes = available_modes("cpu")[:2]  # the engine's default mode (full suite) and one more
    out, png, md = tmp_path / "bench.json", tmp_path / "bench.png", tmp_path / "bench.md"
    argv = ["bench", "--size", "tiny", "--quick", "--checkpoint-cache", str(tmp_path / "cache")]
    argv += ["--weight-mode", ",".join(modes), "--threads", "1", "--texts", "short,long"]
    argv += ["--output", str(out), "--plot", str(png), "--markdown", str(md)]
    assert commands.main(argv) == 0
    doc = json.loads(out.read_text())

    assert {"machine", "settings", "utter", "official", "ratios", "targets"} <= set(doc)
    assert {"cpu", "cores", "ram_gib", "torch"} <= set(doc["machine"])
    assert doc["settings"]["size"] == "tiny" and doc["settings"]["frames"] == 8
    assert list(doc["utter"]) == modes
    full = doc["utter"][modes[0]]
    assert "error" not in full, full
    assert {"load", "say", "frame", "ttfa", "concurrency", "texts", "memory"} <= set(full)
    assert FRAME_KEYS <= set(full["frame"])
    assert full["frame"]["frames"] == 8 and full["frame"]["frames_ok"]
    assert full["frame"]["prefill_ms"] > 0  # the admission (batched prefill) is timed
    assert 0 < full["frame"]["kernels_per_frame"] <= full["frame"]["ops_per_frame"]  # the launch proxy
    assert full["say"]["frames_ok"] and full["say"]["seconds"] > full["load"]["cold_start_s"] > 0
    phases = full["load"]["phases_s"]  # where the engine's load went
    assert {"checkpoint", "talker", "codec_tokenizer_wait", "total"} <= set(phases)
    assert phases["total"] >= phases["talker"] > 0 and "graphs" not in phases  # no CUDA graphs on a CPU
    assert 0 < full["ttfa"]["seconds"] < full["say"]["seconds"]
    assert full["serving_kernels"].startswith(f"int8 {int8_kernel('cpu', 4)}")  # sized for 4 rows
    assert set(full["concurrency"]) == {"1", "4"}
    assert all(c["frames_ok"] and c["audio_s"] > 0 for c in full["concurrency"].values())
    assert full["concurrency"]["4"]["audio_s"] == 4 * full["concurrency"]["1"]["audio_s"]
    assert set(full["texts"]) == {"short", "long"} and all(t["frames_ok"] for t in full["texts"].values())
    assert set(full["arrivals"]) == {"2.0"}
    burst = full["arrivals"]["2.0"]
    assert burst["frames_ok"] and burst["requests"] >= 1
    assert 0 < burst["first_audio_p50_s"] <= burst["first_audio_p95_s"] <= burst["first_audio_max_s"]
    assert set(full["realtime"]) == {"20", "35", "50"}
    for fed in full["realtime"].values():
        assert fed["frames_ok"] and 0 < fed["first_audio_s"] < 60 and fed["stall_s"] >= 0
    long = full["longform"]  # the long text whole and in parts, the same frames in all three
    assert long["parts"] > 2 and long["frames"] == 2 * long["parts"] and long["parallel"] == 2
    assert long["whole"]["audio_s"] == pytest.approx(long["frames"] * 0.08)
    seams = (long["parts"] - 1) * 0.04  # each seam's crossfade overlaps 40 ms
    for way in ("one_at_a_time", "at_once"):
        assert long[way]["frames_ok"] and long[way]["audio_s"] == pytest.approx(long["frames"] * 0.08 - seams)
    assert 0 < full["memory"]["rss_after_load_mib"] <= full["memory"]["peak_rss_mib"]
    light = doc["utter"][modes[1]]
    assert "error" not in light, light
    assert {"say", "frame", "ttfa"} <= set(light) and "concurrency" not in light

    if importlib.util.find_spec("qwen_tts") is not None:  # official columns and ratios
        official = doc["official"]["bfloat16"]
        assert "error" not in official, official
        assert FRAME_KEYS <= set(official["frame"]) and official["frame"]["frames_ok"]
        assert official["say"]["frames_ok"]
        assert all(c["frames_ok"] for c in official["concurrency"].values())
        one, four = official["concurrency"]["1"], official["concurrency"]["4"]  # one rate, measured once
        assert one["requests_run"] == four["requests_run"] == 4
        assert one["audio_s_per_s"] == four["audio_s_per_s"]
        assert four["x_realtime_per_stream"] == pytest.approx(one["x_realtime_per_stream"] / 4)
        assert four["wall_s"] == pytest.approx(4 * one["wall_s"])
        assert all(t["frames_ok"] for t in official["texts"].values())
        assert doc["ratios"]["gen_ms"][modes[0]] > 0
        assert doc["ratios"]["audio_s_per_s"]["4"] > 0
    else:
        assert doc["official"] == {} and doc["ratios"] == {}

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    screen = capsys.readouterr().out
    assert "| cold start" in screen and f"utter {modes[0]}" in screen and "Targets" in screen
    assert "| RSS after load (MiB) |" in screen
    assert f"| serving engine's products | {full['serving_kernels']} |" in screen
    assert f"| long text (2616 chars, {long['frames']} frames) whole / in {long['parts']} parts" in screen
    assert md.read_text().strip() == screen.strip()


def test_engine_kernels_name_what_multiplies_the_talker(tiny_checkpoint: Path) -> None:
    """A serving table says which kernels its figures are of: the one an engine's batch limit
    picked, the prefills' own beside the native kernels, or plain torch products."""
    from utter.bench.runner import engine_kernels
    from utter.engine.cpu.quant import prefill_kernel
    from utter.engine.engine import Engine

    def load(mode: str, rows: int) -> str:
        return engine_kernels(
            Engine.load(str(tiny_checkpoint), device="cpu", weight_mode=mode, max_batch=rows)
        )

    single = int8_kernel("cpu", 1)
    prefills = prefill_kernel("cpu") if single == "native" else None
    assert load("int8", 1) == f"int8 {single}" + (f", prefills int8 {prefills}" if prefills else "")
    assert load("int8", 32) == f"int8 {int8_kernel('cpu', 32)}"  # past the native kernels: one kernel
    assert load("float32", 4) == "torch"


def test_official_end_of_speech_is_disabled(tiny_checkpoint: Path, ref_wav: Path) -> None:
    """With EOS made the likeliest token, the official package stops at once unless our hook is on."""
    from tests.official import import_qwen_tts
    from utter.bench.official import _Official

    model = _Official(import_qwen_tts(), str(tiny_checkpoint), "cpu", "float32", sample=False, seed=0)
    head = model.talker.codec_head
    with torch.no_grad():
        head.weight[model.eos] = 50 * head.weight.abs().max()
    prompt = model.tts.create_voice_clone_prompt(ref_audio=str(ref_wav), ref_text="Hello there.")
    model.run("Hi.", 6, voice_clone_prompt=prompt)
    assert model.lengths == [6] and model.frames_ok(6)
    assert len(model.probe.calls["cp"]) == 6
    del model.talker.generate  # back to the package's own generate (EOS on)
    model.run("Hi.", 6, voice_clone_prompt=prompt)
    assert model.lengths[0] < 6


def test_playback_stalls() -> None:
    from utter.bench.realtime import playback

    # chunks of 1 s arriving at 0, 0.5 and 3 s: the player has 1.5 s by 2.0 s, then waits 1 s
    assert playback([(0.0, 1.0), (0.5, 1.0), (3.0, 1.0)]) == {"stall_s": 1.0, "stalls": 1, "min_lead_s": 0.0}
    ahead = playback([(0.0, 1.0), (0.2, 1.0), (0.4, 1.0)])
    assert ahead == {"stall_s": 0.0, "stalls": 0, "min_lead_s": 0.8}
    assert playback([(1.0, 2.0)]) == {"stall_s": 0.0, "stalls": 0, "min_lead_s": 0.0}


@pytest.mark.parametrize("variant", ["custom_voice", "voice_design"])
def test_bench_covers_the_other_variants(tmp_path: Path, variant: str) -> None:
    """CustomVoice (a preset speaker with an instruction) and VoiceDesign (a described voice)
    run the same suite as Base; the official comparison is Base-only."""
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--size",
        "tiny",
        "--quick",
        "--variant",
        variant,
        "--checkpoint-cache",
        str(tmp_path / "c"),
    ]
    argv += [
        "--weight-mode",
        "float32",
        "--texts",
        "short",
        "--concurrency",
        "1",
        "--idle-models",
        "1",
        "--output",
        str(out),
        "--plot",
        "",
    ]
    assert commands.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["variant"] == variant and doc["official"] == {}
    run = doc["utter"]["float32"]
    assert "error" not in run, run
    assert doc["settings"]["idle_models"] == 1 and run["idle_models"] == 1  # one more model, idle
    assert run["say"]["frames_ok"] and run["frame"]["frames_ok"] and run["ttfa"]["seconds"] > 0
    assert all(r["frames_ok"] for r in run["realtime"].values())


def test_poisson_arrivals_are_seeded_and_within_the_window() -> None:
    from utter.bench.arrivals import arrival_times

    times = arrival_times(4.0, 30.0, seed=1)
    assert times == arrival_times(4.0, 30.0, seed=1) and times != arrival_times(4.0, 30.0, seed=2)
    assert times[0] == 0.0 and all(0 <= a < b < 30 for a, b in zip(times, times[1:]))
    assert 80 < len(times) < 160  # about 4 per second


def test_gpu_busy_share_counts_overlapping_kernels_once() -> None:
    from utter.bench.gpubusy import BusySampler, busy_share

    assert busy_share([]) is None
    assert busy_share([(0.0, 10.0)]) == 1.0
    # Two overlapping kernels (0-4, 2-6), a gap, one more (8-10): 8 of 10 units busy.
    assert busy_share([(8.0, 10.0), (0.0, 4.0), (2.0, 6.0)]) == 0.8
    assert busy_share([(0.0, 1.0), (0.5, 0.7), (9.0, 10.0)]) == 0.2  # a kernel inside another
    with BusySampler("cpu") as sampler:  # nothing to sample off a GPU
        pass
    assert sampler.share is None and sampler._thread is None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_a_worker_reports_its_own_peak_memory_not_its_parents() -> None:
    """ru_maxrss survives fork and exec: workers spawned by a parent that had held 5.8 GB once all
    reported 5789 MiB. The peak is the program's own (VmHWM)."""
    import subprocess
    import sys

    child = "from utter.bench.common import peak_memory; print(peak_memory('cpu')['peak_rss_mib'])"
    parent = (
        "import subprocess, sys\n"
        "big = bytearray(700 * 2**20)\n"  # touched (zeroed) by the allocation: resident
        f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, check=True, timeout=120
    )
    assert float(out.stdout.split()[-1]) < 600, out.stdout


def test_the_checkpoint_is_read_through_before_the_workers(tmp_path: Path) -> None:
    """Every byte of the checkpoint folder is read once (nested folders too), so no worker is
    the one that reads it from disk."""
    from utter.bench.common import read_through

    (tmp_path / "speech_tokenizer").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"x" * (9 << 20))
    (tmp_path / "speech_tokenizer" / "model.safetensors").write_bytes(b"y" * 1000)
    assert read_through(tmp_path)[0] == (9 << 20) + 1000


def test_a_stopped_bench_keeps_what_it_measured(tmp_path: Path) -> None:
    """SIGTERM (an outer ``timeout``, Ctrl-C) in the middle of a configuration: the worker is
    stopped, the items it finished are written with the reason the rest is missing, exit 1."""
    import os
    import signal
    import subprocess
    import sys

    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["--debug", "bench", "--size", "tiny", "--checkpoint-cache", str(tmp_path / "cache")]
    argv += ["--weight-mode", "float32", "--no-official", "--frames", "4", "--concurrency", "1"]
    argv += ["--texts", "short", "--ttfa-repeats", "1", "--threads", "1"]
    argv += ["--arrival-rates", "1", "--arrival-seconds", "600"]  # an item that would run 10 minutes
    argv += ["--output", str(out), "--plot", "", "--markdown", str(md)]
    code = "import sys; from utter.bench.commands import main; sys.exit(main(sys.argv[1:]))"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-c", code, *argv]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = []
        for line in proc.stderr:  # the worker's log comes through with --debug
            seen.append(line)
            if "arrivals [1.0]/s for 600 s ..." in line:
                break
        else:
            pytest.fail("the arrivals item never started:\n" + "".join(seen[-30:]))
        proc.send_signal(signal.SIGTERM)  # the parent only: it stops its worker itself
        proc.stderr.read()
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    doc = json.loads(out.read_text())
    run = doc["utter"]["float32"]
    assert "error" not in run and "stopped" in run["incomplete"]
    assert run["say"]["frames_ok"] and run["frame"]["frames"] == 4 and run["concurrency"]["1"]["frames_ok"]
    assert run["ttfa"]["seconds"] > 0 and "arrivals" not in run and "partial" not in run
    assert "stopped during utter float32" in doc["settings"]["stopped"]
    table = md.read_text()
    assert "incomplete, stopped" in table and "audio s per s, 1 streams" in table


def test_a_worker_that_fails_midway_keeps_the_items_before(tmp_path: Path, monkeypatch) -> None:
    from utter.bench import worker
    from utter.bench.common import save_partial

    spec = {"system": "utter", "mode": "int8", "out": str(tmp_path / "result.json")}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))

    def measure_then_fail(spec: dict) -> dict:
        out = {"system": "utter", "mode": "int8", "say": {"frames_ok": True}}
        save_partial(spec, out)
        raise RuntimeError("the GPU fell over")

    monkeypatch.setattr(worker, "run", measure_then_fail)
    assert worker.main([str(spec_path)]) == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["say"] == {"frames_ok": True} and "partial" not in result
    assert result["incomplete"] == "failed: RuntimeError: the GPU fell over"

    monkeypatch.setattr(worker, "run", lambda spec: 1 / 0)  # nothing saved: the error alone
    (tmp_path / "result.json").unlink()
    assert worker.main([str(spec_path)]) == 1
    assert json.loads((tmp_path / "result.json").read_text())["error"].startswith("ZeroDivisionError")


def test_a_run_stopped_before_the_official_side_says_it_was_not_run(tmp_path: Path, monkeypatch) -> None:
    settings = {
        "model": str(tmp_path / "not-a-folder"), "device": "cpu", "frames": 4, "concurrency": [1],
        "max_batch": 1, "arrival_rates": [1.0], "arrival_seconds": 1.0, "text_frames": {},
        "longform_frames": 4, "ttfa_repeats": 1, "sample": False, "threads": None, "seed": 0,
        "weight_modes": ["int8", "float16"], "official_dtypes": ["bfloat16"],
        "official_reference": "bfloat16", "size": "0.6b", "variant": "base", "official_status": "measured",
    }  # fmt: skip
    ran = []

    def worker(spec: dict, workdir: Path, timeout: float) -> dict:
        ran.append(spec["mode"])
        partial = {
            "system": "utter",
            "mode": spec["mode"],
            "say": {"frames_ok": True},
            "incomplete": "stopped",
        }
        raise commands.Stopped(partial)

    monkeypatch.setattr(commands, "_worker", worker)
    doc = commands.run(settings)
    assert ran == ["int8"] and doc["utter"]["int8"]["incomplete"] == "stopped"  # nothing after it ran
    assert doc["settings"]["official_status"] == "not run (the benchmark was stopped)"
    assert "stopped during utter int8" in doc["settings"]["stopped"] and doc["official"] == {}
    assert "official: not run (the benchmark was stopped)" in report.table(doc)


def test_utter_drift_reports_each_engine_kind_with_its_kernel(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`utter drift`: a single-stream and a serving engine (sized past the native kernels) of
    each mode, each row naming the int8 kernel that engine picks on this CPU, in JSON and a table."""
    from utter.bench.drift import CASES, table
    from utter.cli import main

    out, md = tmp_path / "drift.json", tmp_path / "drift.md"
    assert main(["drift", "--model", str(tiny_checkpoint), "--output", str(out), "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    assert [(r["mode"], r["max_batch"]) for r in result["rows"]] == CASES
    kernels = {(r["mode"], r["max_batch"]): r["int8_kernel"] for r in result["rows"]}
    assert kernels[("int8", 32)] == int8_kernel("cpu", 32)  # the batch kernel, not the native one
    assert kernels[("int8", 1)].startswith(int8_kernel("cpu", 1))
    for r in result["rows"]:
        assert 0.9 < r["talker_cosine"] <= 1.0 + 1e-6 and 0.9 < r["predictor_cosine"] <= 1.0 + 1e-6
    assert md.read_text().strip() == table(result).strip() and "serving (32 rows)" in md.read_text()
