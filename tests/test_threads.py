"""Compute in threads that end (``engine/cpu/threads.py``): results, errors, modes, the bound on
threads at once, and the point of it all: no OpenMP team outlives a load or a voice prompt."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time

import pytest
import torch

from utter.engine.cpu import threads
from utter.engine.cpu.threads import call_in_own_thread, in_own_thread

TAG: contextvars.ContextVar[str] = contextvars.ContextVar("TAG", default="unset")


def _where() -> tuple[int, threading.Thread, bool, bool, str]:
    me = threading.current_thread()
    return me.ident, me, torch.is_grad_enabled(), torch.is_inference_mode_enabled(), TAG.get()


def test_call_in_own_thread_runs_elsewhere_and_ends():
    TAG.set("caller")
    with torch.inference_mode():
        ident, thread, grad, inference, tag = call_in_own_thread(_where)
    assert ident != threading.get_ident()
    assert not thread.is_alive()  # ended before the call returned
    assert (grad, inference, tag) == (False, True, "caller")
    with torch.enable_grad():
        assert call_in_own_thread(_where)[2:4] == (True, False)
    assert call_in_own_thread(int, "ff", base=16) == 255


def test_call_in_own_thread_raises_the_callers_exception():
    def fail(message: str) -> None:
        raise KeyError(message)

    with pytest.raises(KeyError, match="gone") as info:
        call_in_own_thread(fail, "gone")
    assert any(frame.name == "fail" for frame in info.traceback)  # where it happened, kept


def test_in_own_thread_result_error_and_context():
    async def main():
        TAG.set("async caller")
        ident, thread, _, _, tag = await in_own_thread(_where)
        with pytest.raises(ValueError, match="bad"):
            await in_own_thread(int, "bad")
        return ident, thread, tag

    ident, thread, tag = asyncio.run(main())
    assert ident != threading.get_ident() and tag == "async caller"
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_in_own_thread_bounds_calls_at_once_and_keeps_the_bound_through_cancels(monkeypatch):
    monkeypatch.setattr(threads, "MAX_AT_ONCE", 2)
    lock = threading.Lock()
    running, most = 0, 0
    release = threading.Event()

    def work() -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1
        return 1

    async def main():
        calls = [asyncio.ensure_future(in_own_thread(work)) for _ in range(5)]
        await asyncio.sleep(0.3)
        assert running == 2  # the other three wait for a place
        calls[0].cancel()  # a cancelled caller: its call still runs, and keeps its place
        await asyncio.sleep(0.3)
        assert running == 2
        release.set()
        done = await asyncio.gather(*calls[1:])
        assert sum(done) == 4
        assert await in_own_thread(lambda: "after") == "after"  # places came back

    asyncio.run(main())
    assert most == 2


# ---------------------------------------------------------------- OpenMP teams left behind
def _native_threads() -> set[int]:
    """Threads of this process that Python did not start: OpenMP's helper threads among them."""
    python = {t.native_id for t in threading.enumerate()}
    return {int(t) for t in os.listdir("/proc/self/task")} - python


def _settle(baseline: set[int], more: bool, timeout: float = 5.0) -> set[int]:
    """New native threads once they have come (``more``) or gone (helpers of an ended thread
    leave a moment after it)."""
    deadline = time.monotonic() + timeout
    while True:
        extra = _native_threads() - baseline
        if bool(extra) == more or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def _parked(work) -> tuple[threading.Thread, threading.Event]:
    """``work()`` in a new thread that then stays alive (as a pooled thread would) until told."""
    done, leave = threading.Event(), threading.Event()

    def run() -> None:
        work()
        done.set()
        leave.wait(30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(120)
    return thread, leave


needs_teams = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2,
    reason="OpenMP helper threads exist with 2 or more torch threads (Linux /proc to count them)",
)


@needs_teams
def test_a_load_leaves_no_openmp_team_in_the_calling_thread(tiny_checkpoint, monkeypatch):
    from utter.engine import engine as engine_module
    from utter.engine.engine import Engine

    big = torch.randn(1 << 21)
    load_talker = engine_module._load_talker

    def converting(*args, **kwargs):  # a tiny model converts too little to go parallel: as real sizes do
        (big * 2).sum()
        return load_talker(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_load_talker", converting)

    def load() -> None:
        Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=1)

    load()  # threads torch starts once per process are there before the baseline
    baseline = _native_threads()

    # The probe sees a team: a thread that ran parallel work and lives on keeps its helpers ...
    thread, leave = _parked(lambda: (big * 2).sum())
    kept = _settle(baseline, more=True)
    leave.set()
    thread.join()
    assert kept, "a live thread's OpenMP team was not seen"
    assert not _settle(baseline, more=False), "an ended thread's team did not go"

    # ... and a thread that loaded an engine (its conversion runs in parallel) keeps none.
    thread, leave = _parked(load)
    try:
        assert not _settle(baseline, more=False), "Engine.load left an OpenMP team in the caller's thread"
    finally:
        leave.set()
        thread.join()


@needs_teams
def test_voice_prompts_over_the_api_leave_no_openmp_team(engine, ref_wav, tmp_path):
    from tests.server_support import start_server, store_voice
    from utter.engine.cpu.threads import call_in_own_thread

    call_in_own_thread(engine.create_voice, str(ref_wav), "warm")  # torch's once-per-process threads
    server = start_server(engine, tmp_path)
    try:
        with server.client() as http:
            time.sleep(0.5)
            baseline = _native_threads()
            store_voice(http, ref_wav, "Ada")  # decoded, encoded and stored off the event loop
            extra = _settle(baseline, more=False)
            assert not extra, f"{len(extra)} OpenMP helper threads stayed after a voice was made"
    finally:
        server.stop()


@needs_teams
def test_the_studio_makes_voice_prompts_in_a_thread_that_ends(engine, ref_wav, tmp_path):
    from tests.conftest import REF_TEXT
    from utter.server.runtime import EngineHolder
    from utter.studio.provider import LocalProvider, VoiceSource
    from utter.studio.storage import Storage

    call_in_own_thread(engine.create_voice, str(ref_wav), "warm")  # torch's once-per-process threads
    holder = EngineHolder.from_engine(engine, model="tiny")
    try:
        provider = LocalProvider(holder, Storage(tmp_path))
        baseline = _native_threads()

        async def made():  # in one event loop, as the studio's worker asks (its pool lives on)
            voice = VoiceSource("a" * 32, ref_wav, REF_TEXT)
            first = await provider.voice_prompt(voice)
            extra = _settle(baseline, more=False)
            return first, extra, await provider.voice_prompt(voice)

        first, extra, cached = asyncio.run(made())
        assert not extra, f"{len(extra)} OpenMP helper threads stayed after the studio made a voice prompt"
        assert torch.equal(first.ref_codes, cached.ref_codes)  # the second came from its file
    finally:
        holder.stop()
