"""A long text whole against in parts (``server/speech/longform.py``), through the serving Batcher.

The long seed text (2616 characters) is spoken three ways: as one request, in its parts one at
a time, and in its parts ``parallel`` at once, as the server does. End of speech is disabled
(every run makes the same frames), so the frames are shared out among the parts by their
length; the same total in every run. Reported: seconds until the whole audio is there, first
audio, and x real time. On a GPU, where a step with a few more rows costs about the same, parts
at once should finish several times sooner; on a small CPU the rows share its cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from ..engine.sched.batcher import Batcher
from ..server.settings import ServerSettings
from ..server.speech.longform import PartedStream, parts_at_once, parts_of
from ..server.speech.textsplit import cost
from .workload import LONG, SAMPLE_RATE

DEFAULT_FRAMES = 360  # 28.8 s of audio in all, about 30 frames for each of the long text's 12 parts


def share(frames: int, weights: list[int]) -> list[int]:
    """``frames`` shared out in proportion to ``weights``, at least one each, summing to ``frames``."""
    if frames < len(weights):
        raise ValueError(f"{frames} frames cannot give each of {len(weights)} parts one")
    total = sum(weights)
    out = [max(1, frames * w // total) for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):  # the rest to the longest parts
        if sum(out) >= frames:
            break
        out[i] += 1
    while sum(out) > frames:  # the minimum of one may overshoot
        out[out.index(max(out))] -= 1
    return out


def _whole(batcher: Batcher, speaker, opts, frames: int) -> dict:
    start = time.perf_counter()
    stream = batcher.submit(speaker.request(LONG, dataclasses.replace(opts, max_frames=frames)))
    audio = stream.audio()
    wall = time.perf_counter() - start
    return _result(wall, stream.first_audio_at - start if stream.first_audio_at else None, len(audio),
                   stream.frames == frames and stream.finish_reason == "max_frames")  # fmt: skip


def _parts(batcher: Batcher, speaker, opts, parts: list[str], budget: list[int], parallel: int) -> dict:
    requests = [speaker.request(p, dataclasses.replace(opts, max_frames=n)) for p, n in zip(parts, budget)]

    async def run() -> dict:
        start = time.perf_counter()
        stream = PartedStream(batcher, requests, parallel)
        samples, first = 0, None
        async for chunk in stream:
            first = first if first is not None else time.perf_counter() - start
            samples += len(chunk.pcm)
        wall = time.perf_counter() - start
        return _result(
            wall, first, samples, stream.frames == sum(budget) and stream.finish_reason == "max_frames"
        )

    return asyncio.run(run())


def _result(wall: float, first: float | None, samples: int, ok: bool) -> dict:
    return {
        "seconds": wall,
        "first_audio_s": first,
        "audio_s": samples / SAMPLE_RATE,
        "x_realtime": samples / SAMPLE_RATE / wall,
        "frames_ok": ok,
    }


def long_parts() -> list[str]:
    """The long text's parts as a server with default settings cuts it."""
    return parts_of(LONG, ServerSettings().split_chars)


def measure_longform(
    batcher: Batcher, speaker, opts, frames: int = DEFAULT_FRAMES, parallel: int | None = None
) -> dict:
    """The long text whole, in parts one at a time, and ``parallel`` at once (the server's
    default: ``split_parallel``, at most half the batch)."""
    parts = long_parts()
    budget = share(frames, [cost(p) for p in parts])
    parallel = parallel or parts_at_once(ServerSettings().split_parallel, batcher)
    out = {"chars": len(LONG), "parts": len(parts), "frames": frames, "parallel": parallel}
    out["whole"] = _whole(batcher, speaker, opts, frames)
    out["one_at_a_time"] = _parts(batcher, speaker, opts, parts, budget, 1)
    out["at_once"] = _parts(batcher, speaker, opts, parts, budget, parallel)
    return out
