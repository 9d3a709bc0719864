"""First audio under an arrival pattern: requests arriving at N per second (Poisson), for a while.

All-at-once bursts say how a server takes a crowd; a service meets a stream of requests
arriving at random. For each rate, arrival times are drawn from an exponential distribution
(a Poisson process, seeded: the same pattern every run) over ``seconds``; each request is
submitted at its time and its first audio timed from its own arrival. Reported: p50, p95 and
the worst first audio, and the audio made per wall second while the pattern ran.
"""

from __future__ import annotations

import random
import time

from .common import median
from .workload import SAMPLE_RATE, SHORT


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def arrival_times(rate: float, seconds: float, seed: int = 0) -> list[float]:
    """Poisson arrivals at ``rate`` per second within ``seconds`` (at least one, at 0)."""
    rng = random.Random(seed)
    times, t = [0.0], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return times
        times.append(t)


def measure_arrivals(batcher, voice, opts, rates, seconds: float, seed: int = 0) -> dict:
    """One pattern per rate through ``batcher`` (``voice``: runner.Speaker); see the module docstring."""
    out = {}
    for rate in rates:
        plan = arrival_times(rate, seconds, seed)
        start = time.perf_counter()
        streams = []
        for at in plan:
            wait = start + at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            streams.append(batcher.submit(voice.request(SHORT, opts)))
        audio = sum(len(s.audio()) for s in streams) / SAMPLE_RATE  # waits for every request to end
        wall = time.perf_counter() - start
        first = [s.first_audio_at - s.submitted_at for s in streams if s.first_audio_at is not None]
        if len(first) != len(streams):
            raise RuntimeError(f"{len(streams) - len(first)} requests at {rate}/s made no audio")
        out[str(rate)] = {
            "rate_per_s": rate,
            "requests": len(streams),
            "seconds": seconds,
            "first_audio_p50_s": median(first),
            "first_audio_p95_s": _percentile(first, 0.95),
            "first_audio_max_s": max(first),
            "audio_s_per_s": audio / wall,
            "frames_ok": all(
                s.finish_reason == "max_frames" and s.frames == opts.max_frames for s in streams
            ),
        }
    return out
