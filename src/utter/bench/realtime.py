"""Realtime text in: an LLM's reply arriving at N tokens per second while it is spoken.

For each rate the reply (``workload.MEDIUM``) is pushed into a :class:`TextFeed` in pieces of
four characters (about one LLM token, split mid-word as tokenizers do) from a second thread, and
the audio chunks' arrival times are recorded. Reported:

- ``first_audio_s``: from the first piece of text to the first audio;
- ``stall_s`` and ``stalls``: a player that starts with the first chunk and plays the chunks
  back to back waits this long in total (this many times) for audio that has not arrived yet;
  zero means the audio kept ahead of playback the whole time;
- ``min_lead_s``: the least audio the player had in hand when a chunk arrived.

End of speech is disabled (as everywhere in the benchmark): every run makes ``frames`` frames.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from .workload import FRAME_SECONDS, MEDIUM

CHARS_PER_TOKEN = 4
RATES = (20, 35, 50)  # LLM tokens per second: typical streaming speeds of hosted and local models


def _push(feed, text: str, rate: float, stop: threading.Event) -> None:
    """Push ``text`` at ``rate`` pieces per second, then close; ``stop`` ends it early."""
    pieces = [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
    t0 = time.perf_counter()
    for n, piece in enumerate(pieces):
        if stop.wait(max(0.0, t0 + n / rate - time.perf_counter())):
            return  # the request made its frames before the reply was complete
        feed.push(piece)
    feed.close()


def playback(arrivals: list[tuple[float, float]]) -> dict:
    """(arrival time, seconds of audio) per chunk -> stalls of a player that starts with the
    first chunk; ``min_lead_s``: the least audio queued when a later chunk arrived."""
    clock = arrivals[0][0] + arrivals[0][1]  # when the player runs dry
    stall, stalls, leads = 0.0, 0, []
    for at, seconds in arrivals[1:]:
        if at > clock:  # the player ran dry before this chunk came
            stall += at - clock
            stalls += 1
            clock = at
        leads.append(clock - at)
        clock += seconds
    return {"stall_s": stall, "stalls": stalls, "min_lead_s": min(leads) if leads else 0.0}


def measure_realtime(batcher, voice, opts, frames: int, rates=RATES) -> dict:
    """One fed request per rate through ``batcher`` (``voice``: runner.Speaker, who speaks);
    see the module docstring."""
    from ..engine.sched.textfeed import TextFeed

    out = {}
    for rate in rates:
        feed = TextFeed()
        o = dataclasses.replace(opts, max_frames=frames)
        stream = batcher.submit(voice.request("", o, feed=feed))
        stop = threading.Event()
        pusher = threading.Thread(target=_push, args=(feed, MEDIUM, rate, stop), daemon=True)
        t0 = time.perf_counter()
        pusher.start()
        arrivals = []
        for chunk in stream:
            arrivals.append((time.perf_counter() - t0, len(chunk.pcm) / 24000))
        stop.set()
        pusher.join()
        if not arrivals:
            raise RuntimeError(f"no audio at {rate} tokens/s ({stream.finish_reason})")
        out[str(rate)] = {
            "tokens_per_s": rate,
            "first_audio_s": arrivals[0][0],
            "frames": stream.frames,
            "frames_ok": stream.frames == frames,
            "audio_s": stream.frames * FRAME_SECONDS,
            **playback(arrivals),
        }
    return out
