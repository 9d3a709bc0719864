"""Compiled (fused) decoder layers (engine/cuda/fusion.py) compute what the eager layers do, with
fewer kernels, compiled once for every layer and shape; where they cannot compile, the engine
stays eager. Run on the CPU (inductor's C++ backend); the GPU check repeats it on CUDA."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from tests.conftest import REF_TEXT
from utter.engine.cuda import fusion
from utter.engine.engine import Engine, Request
from utter.engine.model.layers import new_cache
from utter.engine.opcount import count_kernels
from utter.engine.sampling import GenerationOptions, SamplingOptions
from utter.engine.sched.runner import Runner

# Inductor's on-disk cache of this run only: one shared with runs at another CPU capability
# (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine, as the AVX2 check of this suite does)
# handed back kernels that computed wrong codes. Removed at exit: each run's is some 15 MB.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="utter-inductor-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


def _inductor_works() -> str | None:
    """Why inductor cannot compile on this machine (no C++ compiler, no Python headers), or None."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "inductor needs a C++ compiler"
    try:
        torch.compile(lambda x: x * 2 + 1, dynamic=False)(torch.ones(3))
    except Exception as exc:  # noqa: BLE001 - any failure: the machine cannot compile
        return f"inductor cannot compile here: {type(exc).__name__}: {exc}"[:300]
    return None


WHY_NOT = _inductor_works()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def _stacks(engine: Engine) -> list:
    return [engine.talker.model, engine.talker.code_predictor.model]


@pytest.fixture(scope="module")
def fused(tiny_checkpoint: Path):
    """A float32 engine set up as a GPU serves (fixed-shape steps, what CUDA graphs replay, here
    run eagerly) whose layers are compiled (kernels visible to the profiler), and the number of
    graphs compiling them took."""
    fusion.profile_kernels()
    engine = Engine.load(str(tiny_checkpoint), device="cpu", dtype="float32", max_batch=4)
    engine.runner = Runner(engine.talker, engine.config)
    engine.runner.enable_graphs(max_batch=4, max_len=256, capture=False)
    before = counters["stats"]["unique_graphs"]
    assert fusion.fuse(_stacks(engine)) and fusion.warm(engine.runner)  # as Engine.load does
    return engine, counters["stats"]["unique_graphs"] - before


def _eager(engine: Engine):
    """Context: the same engine with eager layers."""

    class Eager:
        def __enter__(self):
            self.saved = [stack.fused for stack in _stacks(engine)]
            fusion.unfuse(_stacks(engine))

        def __exit__(self, *exc):
            for stack, pair in zip(_stacks(engine), self.saved):
                stack.fused = pair

    return Eager()


def _requests(engine: Engine, ref_wav: Path) -> list[Request]:
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    xvec = engine.create_voice(ref_wav, x_vector_only=True)
    sampled = SamplingOptions(do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    return [
        Request(
            "Compiled layers speak the same words.", voice, "English", GenerationOptions.greedy(max_frames=12)
        ),
        Request("两个。", xvec, "Chinese", GenerationOptions.greedy(max_frames=5)),
        Request("Sampled, too.", voice, "Auto", GenerationOptions(sampled, sampled, seed=3, max_frames=9)),
    ]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and torch.equal(x, y)


def test_compiled_layers_make_the_eager_codes(fused, ref_wav) -> None:
    engine, _ = fused
    reqs = _requests(engine, ref_wav)
    compiled_batch = engine.generate_codes(reqs)  # batched admission and steps, greedy and sampled
    compiled_alone = [engine.generate_codes([r])[0] for r in reqs]  # one row: aligned positions
    with _eager(engine):
        eager_batch = engine.generate_codes(reqs)
        eager_alone = [engine.generate_codes([r])[0] for r in reqs]
    _same(compiled_batch, eager_batch)
    _same(compiled_alone, eager_alone)
    # A dynamic runner (growing caches, as CPUs serve) with compiled layers: variants compile
    # as its caches grow, the codes stay the eager ones.
    saved, engine.runner = engine.runner, Runner(engine.talker, engine.config)
    try:
        _same(engine.generate_codes(reqs), eager_batch)
    finally:
        engine.runner = saved


def test_one_compile_serves_every_layer_and_shape(fused, ref_wav) -> None:
    """Every layer of a stack shares one compiled graph per shape kind (compile time does not
    grow with depth), and the variants compiled at load cover what requests run: serving
    compiles nothing more."""
    engine, compiled_at_load = fused
    assert 0 < compiled_at_load < fusion.RECOMPILE_LIMIT
    before = counters["stats"]["unique_graphs"]
    engine.generate_codes(_requests(engine, ref_wav))
    assert counters["stats"]["unique_graphs"] == before
    # The graph of one layer runs any other layer of the stack: no compile per layer.
    stack = engine.talker.model
    first = stack.fused[0]
    keys, values = new_cache(stack.cfg, 1, 8, engine.device, engine.dtype)
    cos, sin = stack.rotary.table(8, engine.dtype)
    with torch.inference_mode():
        x = torch.randn(1, 1, stack.cfg.hidden_size)
        first(stack.layers[0], x, cos[2:3], sin[2:3], keys[0], values[0], 2)  # may compile this shape
        compiled = counters["stats"]["unique_graphs"]
        for i, layer in enumerate(stack.layers[1:], start=1):
            first(layer, x, cos[2:3], sin[2:3], keys[i], values[i], 2)
            assert counters["stats"]["unique_graphs"] == compiled, f"layer {i} compiled its own graph"
        assert not torch.equal(keys[0], keys[1])  # each layer wrote its own keys, with its weights


def _step_kernels(engine: Engine, reqs: list[Request]) -> int:
    runner = engine.runner
    with torch.inference_mode():
        runner.add_many([engine._sequence(r) for r in reqs])
        try:
            runner.step()
            return count_kernels(runner.step)[1]
        finally:
            for seq in list(runner.rows):
                runner.cancel(seq)


def test_compiled_layers_launch_fewer_kernels(fused, ref_wav) -> None:
    """The CPU proxy for GPU launches: a compiled step runs about 9 kernels per layer pass
    (four fused, the cache writes inside them, four products, attention) against ~20 eager."""
    engine, _ = fused
    reqs = [r for r in _requests(engine, ref_wav) if not r.options.talker.do_sample][:2]
    compiled = _step_kernels(engine, reqs)
    with _eager(engine):
        eager = _step_kernels(engine, reqs)
    assert compiled < 0.65 * eager, (compiled, eager)  # 413 against 735 at tiny sizes


def test_weights_that_cannot_compile_stay_eager(tiny_checkpoint, ref_wav, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="utter.engine.cuda.fusion"):
        engine = Engine.load(
            str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=32, compile=True
        )  # (up to native_max_batch() rows, 16 at most, the native stack runs instead, also not compiled)
    assert all(stack.fused is None for stack in _stacks(engine))
    assert "layers not compiled" in caplog.text and "Int8Linear" in caplog.text
    voice = engine.create_voice(ref_wav, x_vector_only=True)
    assert engine.generate_codes(
        [Request("Still speaks.", voice, "English", GenerationOptions.greedy(max_frames=3))]
    )


def test_a_compiler_that_fails_leaves_eager_layers(tiny_checkpoint, ref_wav, monkeypatch, caplog) -> None:
    def broken(fn, **_):
        def run(*args, **kwargs):
            raise RuntimeError("no backend on this machine")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.ERROR, logger="utter.engine.cuda.fusion"):
        engine = Engine.load(str(tiny_checkpoint), device="cpu", dtype="float32", max_batch=4, compile=True)
    assert all(stack.fused is None for stack in _stacks(engine))
    assert "compiling the decoder layers failed" in caplog.text
    voice = engine.create_voice(ref_wav, x_vector_only=True)
    assert engine.generate_codes(
        [Request("Still speaks.", voice, "English", GenerationOptions.greedy(max_frames=3))]
    )


def test_compile_is_asked_for_by_argument_or_environment(monkeypatch) -> None:
    monkeypatch.delenv("UTTER_COMPILE", raising=False)
    assert not fusion.wanted(None) and fusion.wanted(True)
    monkeypatch.setenv("UTTER_COMPILE", "1")
    assert fusion.wanted(None) and not fusion.wanted(False)


def test_a_batcher_serves_compiled_layers_from_its_own_thread(fused, ref_wav) -> None:
    """Compiled from scratch at load, as a GPU server does (fixed-shape runner, caches made
    before the first request), the variants serve everything the batcher's worker thread runs:
    admissions at later rows, pipelined steps, a cancel. Nothing compiles while serving,
    nothing falls back (torch's compiler settings are per thread: a worker left at the default
    recompile limit once failed every request)."""
    import dataclasses
    import time

    from utter.engine.sched.batcher import Batcher

    engine, _ = fused
    saved = engine.runner
    torch._dynamo.reset()  # forget what earlier tests compiled: load's warm-up alone must do
    try:
        engine.runner = Runner(engine.talker, engine.config)
        engine.runner.enable_graphs(max_batch=4, max_len=256, capture=False)
        engine.runner.pipelined = True  # as on CUDA
        assert fusion.fuse(_stacks(engine)) and fusion.warm(engine.runner)
        before = counters["stats"]["unique_graphs"]
        reqs = _requests(engine, ref_wav)
        with Batcher(engine, max_batch=4) as batcher:
            first = batcher.submit(reqs[0])
            time.sleep(0.3)  # the others join rows 1.. of a running batch
            later = [batcher.submit(r) for r in reqs[1:]]
            long = batcher.submit(
                dataclasses.replace(reqs[0], options=GenerationOptions.greedy(max_frames=200))
            )
            time.sleep(0.2)
            long.cancel()
            streams = [first, *later]
            audio = [s.audio() for s in streams]
            long.audio()
        assert all(s.error is None and s.finish_reason in ("eos", "max_frames") for s in streams)
        assert all(a.size > 0 for a in audio)
        assert counters["stats"]["unique_graphs"] == before
    finally:
        engine.runner = saved


def test_each_thread_that_runs_compiled_layers_raises_its_own_limit() -> None:
    import threading

    seen: list[int] = []

    def worker(prepare: bool) -> None:
        if prepare:
            fusion.prepare_thread()
        seen.append(torch._dynamo.config.recompile_limit)

    for prepare in (False, True):
        thread = threading.Thread(target=worker, args=(prepare,))
        thread.start()
        thread.join()
    assert seen[0] < fusion.RECOMPILE_LIMIT == seen[1]  # torch's settings are per thread


def test_a_batcher_without_compiled_layers_never_imports_the_compiler(tiny_checkpoint) -> None:
    """Setting the worker thread's limit imported torch._dynamo (0.9 s of a server's start, and
    sympy) in every process, compiled or not; only a process that compiled needs it."""
    import subprocess
    import sys

    probe = f"""
import sys, numpy as np
from utter.engine.engine import Engine, Request
from utter.engine.sampling import GenerationOptions
from utter.engine.sched.batcher import Batcher
engine = Engine.load({str(tiny_checkpoint)!r}, device="cpu", dtype="float32")
voice = engine.create_voice((np.sin(np.arange(48000) / 20).astype(np.float32) * 0.3, 24000), ref_text="hi")
with Batcher(engine) as batcher:
    batcher.submit(Request("Hi.", voice, "English", GenerationOptions.greedy(max_frames=3))).audio()
sys.exit("torch._dynamo was imported" if "torch._dynamo" in sys.modules else 0)
"""
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=300)


def test_engine_load_compiles_when_asked(tiny_checkpoint) -> None:
    import threading

    limits: list[int] = []

    def load():  # in a thread left at torch's limit, as a program's main thread is
        limits.append(torch._dynamo.config.recompile_limit)
        loaded = Engine.load(str(tiny_checkpoint), device="cpu", dtype="float32", max_batch=2, compile=True)
        limits.append(torch._dynamo.config.recompile_limit)
        return loaded

    box: list[Engine] = []
    thread = threading.Thread(target=lambda: box.append(load()))
    thread.start()
    thread.join()
    engine = box[0]
    # The load compiles in a thread of its own; the caller, where `utter say` and the benchmark's
    # one-stream runs use the compiled layers, gets the raised limit too.
    assert limits[0] < fusion.RECOMPILE_LIMIT == limits[1]
    assert all(stack.fused is not None for stack in _stacks(engine))
    assert (
        engine.load_seconds["compile"] > 0 and engine.load_seconds["total"] >= engine.load_seconds["compile"]
    )
