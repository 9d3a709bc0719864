"""Requests leaving a busy batch (cancel, failures) never hurt the others or the worker.

A cancel moves the last row of the KV cache into the leaving row's slot; it once raised
("Inplace update to inference tensor outside InferenceMode") and killed the worker thread for
every client. These tests hold the worker between steps with a gate, so the cancels land
while every row is generating, in the order given, and then check that every other request
still gets exactly the audio it gets alone.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import REF_TEXT, decisive_requests
from tests.test_batcher import assert_same_audio
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions
from utter.engine.sched.batcher import MAX_RESTARTS, Batcher, WorkerError

FRAMES = 20  # more than the steps any ORDERS case takes, so survivors are still running


@pytest.fixture(scope="module")
def voice(engine, ref_wav):
    return engine.create_voice(ref_wav, ref_text=REF_TEXT)


@pytest.fixture(scope="module")
def requests_and_alone(engine, voice):
    """16 greedy requests that never end early, and each one's audio generated alone; each is
    decisive (see ``decisive_requests``), so a batch's rounding cannot change its codes."""
    opts = replace(GenerationOptions.greedy(max_frames=FRAMES), ignore_eos=True)
    candidates = [Request(f"Row {i} has words of its own.", voice, "English", opts) for i in range(32)]
    reqs, codes = decisive_requests(engine, candidates, 16)
    return reqs, [engine.decode(c, voice) for c in codes]


class StepGate:
    """Wraps ``runner.step`` so the test decides when each decode step may run."""

    def __init__(self, runner, monkeypatch) -> None:
        self.allowed = threading.Semaphore(0)
        self.done = 0
        self.open = False
        real = runner.step

        def step():
            if not self.open:
                assert self.allowed.acquire(timeout=30), "the test never let the step run"
            out = real()
            self.done += 1
            return out

        monkeypatch.setattr(runner, "step", step)

    def one(self) -> None:
        before = self.done
        self.allowed.release()
        deadline = time.monotonic() + 30
        while self.done == before:
            assert time.monotonic() < deadline
            time.sleep(0.001)

    def release_all(self) -> None:
        self.open = True
        self.allowed.release()


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


ORDERS = [
    (2, [0]),
    (2, [1]),
    (2, [0, 1]),
    (2, [1, 0]),
    (8, [0]),
    (8, [7]),
    (8, [3]),
    (8, list(range(8))),
    (8, list(range(7, -1, -1))),
    (8, [0, 2, 4, 6]),
    (8, random.Random(8).sample(range(8), 5)),
    (16, [0, 15, 8]),
    (16, random.Random(16).sample(range(16), 8)),
    (16, list(range(15))),
]


def cancel_between_steps(engine, max_batch: int, reqs, order, monkeypatch):
    """Submit ``reqs`` to a Batcher together, let every row make a frame, then cancel the rows
    in ``order``, one between each pair of steps; returns the streams and their audio."""
    gate = StepGate(engine.runner, monkeypatch)
    batcher = Batcher(engine, max_batch=max_batch, first_chunk_frames=2, chunk_frames=3)
    # Queued before the worker starts, so it admits them all at once: submitted to a running
    # worker on a busy machine, the first few were admitted alone and the worker then waited at
    # the gate for a step the test only allows once all are admitted.
    streams = [batcher.submit(r) for r in reqs]
    with batcher:
        wait_for(lambda: batcher.active == len(reqs))  # all admitted: the worker waits at the gate
        gate.one()  # every row has made a frame: they are all mid-generation
        for i in order:  # one cancel between each pair of steps
            streams[i].cancel()
            if not all(s.cancelled for s in streams):
                gate.one()
        gate.release_all()
        audios = [s.audio() for s in streams]
        assert batcher.alive
    return streams, audios


@pytest.mark.parametrize(("rows", "order"), ORDERS, ids=[f"{n}rows-{o}" for n, o in ORDERS])
def test_cancel_in_any_order_leaves_the_others_intact(
    engine, requests_and_alone, monkeypatch, rows, order
) -> None:
    reqs, alone = requests_and_alone
    streams, audios = cancel_between_steps(engine, 16, reqs[:rows], order, monkeypatch)
    for i, stream in enumerate(streams):
        if i in order:
            assert stream.finish_reason == "cancelled" and stream.error is None
        else:
            assert stream.finish_reason == "max_frames", stream.error
            assert_same_audio(audios[i], alone[i])
    assert engine.runner.active == 0


def test_cancel_every_row_at_once_then_serve_again(engine, requests_and_alone, monkeypatch) -> None:
    reqs, alone = requests_and_alone
    gate = StepGate(engine.runner, monkeypatch)
    with Batcher(engine, max_batch=16) as batcher:
        streams = [batcher.submit(r) for r in reqs]
        wait_for(lambda: batcher.active == 16)
        gate.one()
        for s in reversed(streams):
            s.cancel()
        gate.release_all()
        for s in streams:  # the step under way when they were cancelled may still hand out audio
            assert len(s.audio()) <= 2 * 1920 and s.finish_reason == "cancelled"
        again = batcher.submit(reqs[3]).audio()
    assert_same_audio(again, alone[3])


def test_a_failed_step_fails_its_requests_and_the_worker_goes_on(
    engine, requests_and_alone, monkeypatch
) -> None:
    reqs, alone = requests_and_alone
    real = engine.runner.step
    failures = {"left": 1}

    def flaky():
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("device fell over")
        return real()

    monkeypatch.setattr(engine.runner, "step", flaky)
    with Batcher(engine) as batcher:
        hit = [batcher.submit(r) for r in reqs[:3]]
        for s in hit:
            with pytest.raises(WorkerError, match="device fell over"):
                s.audio()
            assert s.finish_reason == "error"
        assert batcher.alive and batcher.health()["recent_failures"] == 1
        after = batcher.submit(reqs[5]).audio()
    assert_same_audio(after, alone[5])
    assert engine.runner.active == 0


def test_a_worker_that_keeps_failing_gives_up_loudly(engine, requests_and_alone, monkeypatch) -> None:
    reqs, _ = requests_and_alone

    def broken():
        raise RuntimeError("broken for good")

    monkeypatch.setattr(engine.runner, "step", broken)
    batcher = Batcher(engine).start()
    try:
        for _ in range(MAX_RESTARTS):
            stream = batcher.submit(reqs[0])
            with pytest.raises(WorkerError):
                stream.audio()
        wait_for(lambda: not batcher.alive)
        health = batcher.health()
        assert health["alive"] is False and "broken for good" in str(health["error"])
        with pytest.raises(WorkerError, match="down"):
            batcher.submit(reqs[0])
    finally:
        batcher.stop()
    assert engine.runner.active == 0


def test_idle_runner_gives_its_grown_cache_back(engine, voice) -> None:
    runner = engine.runner
    runner.release(keep_bytes=0)  # back to the initial size (earlier tests grew it)
    start = runner.cache_bytes()
    opts = replace(GenerationOptions.greedy(max_frames=3), ignore_eos=True)
    runner.reserve(16, 2000)  # what a long batch grows it to
    assert runner.cache_bytes() > 4 * start
    assert runner.release(keep_bytes=start) is True
    assert runner.cache_bytes() <= start
    audio = engine.generate("Still fine.", voice, "English", opts)
    assert len(audio) == 3 * 1920 and np.isfinite(audio).all()
