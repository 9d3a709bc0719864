"""Batchers of several models in one process (``engine/sched/worker.py``): on a CPU one thread
serves them all, so the process keeps one OpenMP team; each model's requests, failures and stop
stay its own, and a busy model does not starve another."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import REF_TEXT
from tests.test_batcher import assert_same_audio
from tests.test_threads import _native_threads, _settle, needs_teams
from utter.engine.engine import Engine, Request
from utter.engine.sampling import GenerationOptions
from utter.engine.sched import worker as worker_module
from utter.engine.sched.batcher import MAX_RESTARTS, Batcher, WorkerError


@pytest.fixture(scope="module")
def other(tiny_checkpoint):
    """A second model in the process (the same checkpoint, its own engine and state)."""
    return Engine.load(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def voices(engine, other, ref_wav):
    return engine.create_voice(ref_wav, ref_text=REF_TEXT), other.create_voice(ref_wav, ref_text=REF_TEXT)


def _request(voice, frames: int, text: str = "Two models, one thread.") -> Request:
    options = replace(GenerationOptions.greedy(max_frames=frames), ignore_eos=True)
    return Request(text, voice, "English", options)


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _parallel_steps(engine: Engine, monkeypatch) -> None:
    """Make each decode step start a parallel region, as every step of a real-size model does
    (a tiny model's tensors are too small for torch to go parallel)."""
    big = torch.randn(1 << 21)
    step = engine.runner.step

    def parallel_step():
        (big * 2).sum()
        return step()

    monkeypatch.setattr(engine.runner, "step", parallel_step)


@needs_teams
def test_cpu_batchers_share_one_thread_and_one_openmp_team(engine, other, voices, monkeypatch) -> None:
    _parallel_steps(engine, monkeypatch)
    _parallel_steps(other, monkeypatch)
    first = Batcher(engine, max_batch=2).start()
    second = Batcher(other, max_batch=2)
    try:
        assert len(first.submit(_request(voices[0], 3)).audio()) == 3 * 1920
        baseline = _native_threads()  # the first batcher's worker and its team are in it
        second.start()
        assert len(second.submit(_request(voices[1], 3)).audio()) == 3 * 1920
        assert second._thread is first._thread and second._thread.name == "utter-batcher-cpu"
        extra = _settle(baseline, more=True, timeout=1.0)
        assert not extra, f"the second model's batcher started {len(extra)} more helper threads"
    finally:
        second.stop()
        first.stop()


def test_the_worker_thread_ends_with_its_last_batcher_and_a_new_one_comes(engine, voices) -> None:
    first = Batcher(engine, max_batch=2).start()
    thread = first._thread
    assert thread is not None and first.alive
    shared = worker_module.worker_for(engine.device)
    first.stop()
    assert not first.alive
    if shared.members == 0:  # no other batcher of this process is being served
        thread.join(timeout=5)
        assert not thread.is_alive(), "an idle worker with no batchers kept its thread"
    again = Batcher(engine, max_batch=2).start()
    try:
        assert again.alive and again._thread.is_alive()
        assert len(again.submit(_request(voices[0], 2)).audio()) == 2 * 1920
    finally:
        again.stop()


def test_a_busy_model_does_not_starve_another_and_neither_changes_the_other(engine, other, voices) -> None:
    long = _request(voices[0], 300, "A long request keeps the first model busy.")
    short = _request(voices[1], 6)
    alone = other.generate_batch([short])[0].audio
    with Batcher(engine, max_batch=2) as busy, Batcher(other, max_batch=2) as quiet:
        running = busy.submit(long)
        chunks = iter(running)
        next(chunks)  # the first model is decoding
        audio = quiet.submit(short).audio()
        assert running.finish_reason is None, "the second model waited for the first one's request"
        running.cancel()
        list(chunks)
    assert_same_audio(audio, alone)


def test_stopping_one_model_cancels_its_requests_only(engine, other, voices) -> None:
    first = Batcher(engine, max_batch=2).start()
    with Batcher(other, max_batch=2) as second:
        doomed = first.submit(_request(voices[0], 300))
        kept = second.submit(_request(voices[1], 40))
        _wait(lambda: doomed.frames > 0 and kept.frames > 0)
        first.stop()
        assert doomed.finish_reason == "cancelled" and engine.runner.active == 0
        assert len(kept.audio()) == 40 * 1920 and kept.finish_reason == "max_frames"
        assert second.alive and not first.alive


def test_a_model_that_gives_up_leaves_the_other_serving(engine, other, voices, monkeypatch) -> None:
    def broken():
        raise RuntimeError("broken for good")

    monkeypatch.setattr(engine.runner, "step", broken)
    with Batcher(engine, max_batch=2) as failing, Batcher(other, max_batch=2) as healthy:
        for _ in range(MAX_RESTARTS):
            with pytest.raises(WorkerError):
                failing.submit(_request(voices[0], 3)).audio()
        _wait(lambda: not failing.alive)
        assert "broken for good" in str(failing.health()["error"])
        assert healthy.alive and healthy.health()["alive"] is True
        audio = healthy.submit(_request(voices[1], 5)).audio()
        assert len(audio) == 5 * 1920 and np.isfinite(audio).all()
        assert threading.current_thread() is not healthy._thread


def test_a_model_whose_recovery_fails_is_let_go_and_the_other_serves_on(engine, other, voices, monkeypatch):
    def broken():
        raise RuntimeError("step broke")

    def unrecoverable(exc):
        raise RuntimeError("and so did the recovery")

    with Batcher(engine, max_batch=2) as failing, Batcher(other, max_batch=2) as healthy:
        monkeypatch.setattr(engine.runner, "step", broken)
        monkeypatch.setattr(failing, "_recover", unrecoverable)
        with pytest.raises(WorkerError, match="down"):
            failing.submit(_request(voices[0], 3)).audio()
        assert not failing.alive and "and so did the recovery" in str(failing.health()["error"])
        audio = healthy.submit(_request(voices[1], 4)).audio()
        assert len(audio) == 4 * 1920 and healthy.alive and healthy._thread.is_alive()
    assert engine.runner.live == 0  # the failed model's rows were let go with it


def test_each_gpu_batcher_gets_a_thread_of_its_own_and_cpu_ones_share() -> None:
    cpu = torch.device("cpu")
    assert worker_module.worker_for(cpu) is worker_module.worker_for(cpu)
    gpu = torch.device("meta")  # any device that is not the CPU: its kernels run asynchronously
    first, second = worker_module.worker_for(gpu), worker_module.worker_for(gpu)
    assert first is not second and first is not worker_module.worker_for(cpu)
