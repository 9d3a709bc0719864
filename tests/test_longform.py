"""Long texts in parts (server/longform.py): several parts at once in the batch, read back as one
stream equal to the parts spoken alone and crossfaded; limits, cancels, a full queue, failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import REF_TEXT
from utter.audio import SAMPLE_RATE
from utter.audio.crossfade import crossfade_join
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions
from utter.engine.sched.batcher import Batcher, WorkerError
from utter.engine.sched.runner import Runner
from utter.server.speech.longform import FADE_MS, PartedStream, part_requests
from utter.server.speech.textsplit import split_text

TEXT = "One is here. Two is there. Three, now. Then four. And five ends it."


@pytest.fixture(scope="module")
def voice(engine, ref_wav):
    return engine.create_voice(ref_wav, ref_text=REF_TEXT)


def parts_of(voice, options: GenerationOptions) -> list[Request]:
    parts = split_text(TEXT, 16)
    assert len(parts) >= 4
    return part_requests(Request(TEXT, voice, "English", options), parts)


def alone(engine, requests: list[Request]) -> list[tuple[np.ndarray, str]]:
    """Each part spoken by itself (a batch of one), with its finish reason."""
    out = []
    with Batcher(engine) as batcher:
        for request in requests:
            stream = batcher.submit(request)
            out.append((stream.audio(), stream.finish_reason))
    return out


def read_in_loop(batcher: Batcher, requests: list[Request], parallel: int, stop_after: int | None = None):
    """Make and read a PartedStream in one event loop (its parts' streams belong to that loop),
    limited as the server limits it: by the frame limit of the parts' options."""

    async def main():
        stream = PartedStream(batcher, requests, parallel, requests[0].options.max_frames)
        chunks, peak = [], 0
        async for chunk in stream:
            if not chunks:  # the first part's first audio came before the others started
                assert len(stream._started) == 1
            chunks.append(chunk.pcm)
            peak = max(peak, len(stream._running))
            if stop_after is not None and len(chunks) == stop_after:
                break
        return stream, chunks, peak

    stream, chunks, peak = asyncio.run(main())
    return stream, (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), peak


def joined(parts: list[tuple[np.ndarray, str]]) -> np.ndarray:
    return crossfade_join([audio for audio, _ in parts], SAMPLE_RATE, FADE_MS)


@contextlib.contextmanager
def gpu_scheduling(engine, monkeypatch):
    """The GPU's way of scheduling, run on the CPU: fixed shapes (batch buckets, one cache
    allocated once), pipelined steps, and every stream's codec state in shared slots."""
    monkeypatch.setenv("UTTER_PIPELINE", "1")
    monkeypatch.setenv("UTTER_CODEC_SLOTS", "1")
    saved = engine.runner
    engine.runner = Runner(engine.talker, engine.config)
    engine.runner.enable_graphs(max_batch=4, max_len=1024, capture=False)
    try:
        yield
    finally:
        engine.runner = saved


@pytest.mark.parametrize(("parallel", "path"), [(1, "cpu"), (3, "cpu"), (3, "gpu-like")])
def test_parts_run_together_and_sound_as_alone_crossfaded(engine, voice, parallel, path, monkeypatch) -> None:
    requests = parts_of(voice, GenerationOptions(seed=7))
    assert {r.options.seed for r in requests} == {7}  # as the studio speaks chunks
    expected = alone(engine, requests)
    scheduling = gpu_scheduling(engine, monkeypatch) if path == "gpu-like" else contextlib.nullcontext()
    with scheduling, Batcher(engine, max_batch=4) as batcher:
        assert (batcher._slots is not None) == (path == "gpu-like")
        stream, audio, peak = read_in_loop(batcher, requests, parallel)
        assert engine.runner.active == 0 and batcher.queued == 0
    assert peak == parallel  # the first `parallel` parts ran at once
    want = joined(expected)
    assert len(audio) == len(want)
    np.testing.assert_allclose(audio, want, atol=1e-3)
    reasons = {reason for _, reason in expected}
    assert stream.finish_reason == ("max_frames" if "max_frames" in reasons else "eos")
    assert stream.frames == sum(len(a) for a, _ in expected) // 1920
    assert stream.first_audio_at is not None


def test_the_callers_frame_limit_holds_for_the_whole_text(engine, voice) -> None:
    requests = parts_of(voice, GenerationOptions.greedy(max_frames=30))
    whole = joined(alone(engine, requests))
    assert len(whole) > 30 * 1920  # the limit cuts
    with Batcher(engine, max_batch=4) as batcher:
        stream, audio, _ = read_in_loop(batcher, requests, 3)
        deadline = time.monotonic() + 5
        while engine.runner.active and time.monotonic() < deadline:  # the rest were cancelled
            time.sleep(0.01)
        assert engine.runner.active == 0 and batcher.queued == 0
    assert len(audio) == 30 * 1920 and stream.frames == 30
    np.testing.assert_allclose(audio, whole[: len(audio)], atol=1e-3)
    assert stream.finish_reason == "max_frames"


def test_a_reader_that_leaves_cancels_every_part(engine, voice) -> None:
    requests = parts_of(voice, GenerationOptions.greedy())
    with Batcher(engine, max_batch=4) as batcher:
        stream, _, _ = read_in_loop(batcher, requests, 3, stop_after=3)
        deadline = time.monotonic() + 5
        while (engine.runner.active or batcher.active) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.runner.active == 0 and batcher.active == 0 and batcher.queued == 0
    assert stream.finish_reason == "cancelled" and stream.cancelled
    assert len(stream._started) == 3  # the parts after them never started


def test_later_parts_wait_for_room_in_a_full_queue(engine, voice) -> None:
    """A queue of one: the second part cannot be queued while the first waits; it is offered
    again as the first runs, and the whole text still comes, the same as with room."""
    requests = parts_of(voice, GenerationOptions.greedy())
    expected = joined(alone(engine, requests))
    with Batcher(engine, max_batch=1, max_queue=1) as batcher:
        _, audio, _ = read_in_loop(batcher, requests, 3)
    np.testing.assert_allclose(audio, expected, atol=1e-3)


def test_a_part_that_fails_fails_the_stream_and_stops_the_others(engine, voice, monkeypatch) -> None:
    requests = parts_of(voice, GenerationOptions.greedy(max_frames=12))
    with Batcher(engine, max_batch=4) as batcher:
        real, calls = batcher.submit, []

        def submit(request):
            calls.append(request)
            if len(calls) == 3:
                raise WorkerError("the generation worker is down (test)")
            return real(request)

        monkeypatch.setattr(batcher, "submit", submit)
        with pytest.raises(WorkerError):
            read_in_loop(batcher, requests, 2)
        deadline = time.monotonic() + 5
        while engine.runner.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.runner.active == 0 and batcher.queued == 0


def test_every_part_is_checked_before_any_runs(engine, voice) -> None:
    requests = parts_of(voice, GenerationOptions.greedy())
    requests[-1] = replace(requests[-1], language="Elvish")
    with Batcher(engine) as batcher:
        with pytest.raises(ValueError, match="unknown language"):
            asyncio.run(_make(batcher, requests))
        assert batcher.queued == 0 and engine.runner.active == 0


async def _make(batcher: Batcher, requests: list[Request]) -> PartedStream:
    return PartedStream(batcher, requests, 2)


def test_an_open_stream_takes_parts_as_they_come(engine, voice) -> None:
    """A realtime reply's parts are added while the first speaks, and the reader waits between
    parts for the next or the end: the same audio as all parts known at once."""
    requests = parts_of(voice, GenerationOptions(seed=7))
    expected = joined(alone(engine, requests))

    async def main(batcher: Batcher) -> tuple[PartedStream, np.ndarray]:
        stream = PartedStream(batcher, requests[:1], 2, open=True)
        assert stream.parts == 1

        async def add_later() -> None:
            for request in requests[1:]:
                await asyncio.sleep(0.05)
                stream.add(request)
            with pytest.raises(ValueError, match="unknown language"):  # a bad part, refused alone
                stream.add(replace(requests[0], language="Elvish"))
            await asyncio.sleep(0.5)  # the reader has read every part by now, and waits
            stream.end()

        adder = asyncio.create_task(add_later())
        chunks = [chunk.pcm async for chunk in stream]
        await adder
        return stream, np.concatenate(chunks)

    with Batcher(engine, max_batch=4) as batcher:
        stream, audio = asyncio.run(main(batcher))
        assert engine.runner.active == 0 and batcher.queued == 0
    np.testing.assert_allclose(audio, expected, atol=1e-3)
    assert stream.parts == len(requests) and stream.finish_reason in ("eos", "max_frames")
    with pytest.raises(RuntimeError, match="complete"):
        stream.add(requests[0])


def test_an_open_stream_cancelled_between_parts_ends(engine, voice) -> None:
    requests = parts_of(voice, GenerationOptions.greedy(max_frames=6))

    async def main(batcher: Batcher) -> PartedStream:
        stream = PartedStream(batcher, requests[:1], 2, open=True)

        async def leave() -> None:  # the client leaves while the reader waits for more text
            while not stream._done_frames:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            stream.cancel()

        leaving = asyncio.create_task(leave())
        chunks = [chunk async for chunk in stream]  # the one part, then a wait the cancel ends
        await leaving
        assert len(chunks) > 0
        stream.add(requests[1])  # after a cancel: nothing starts
        return stream

    with Batcher(engine, max_batch=4) as batcher:
        stream = asyncio.run(asyncio.wait_for(main(batcher), 60))
        assert engine.runner.active == 0 and batcher.queued == 0
    assert stream.finish_reason == "cancelled" and len(stream._started) == 1
