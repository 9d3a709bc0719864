"""Continuous batching and streaming through the Batcher, on a tiny checkpoint."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from tests.conftest import REF_TEXT
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions
from utter.engine.sched.batcher import Batcher, QueueFullError


def assert_same_audio(streamed: np.ndarray, one_shot: np.ndarray) -> None:
    """Streamed audio is exactly frames x 1920 samples; the official-style cut of the reference
    part can leave one extra sample at the front of the one-shot audio, so compare the tails."""
    assert 0 <= len(one_shot) - len(streamed) <= 1
    assert np.abs(streamed - one_shot[len(one_shot) - len(streamed) :]).max() < 1e-3


@pytest.fixture(autouse=True, params=["own-streams", "slots"])
def codec_mode(request, monkeypatch) -> str:
    """Every test runs twice: each request decoding its own AudioStream (the CPU default) and
    all requests' codec state in CodecSlots, decoded together (the GPU default)."""
    monkeypatch.setenv("UTTER_CODEC_SLOTS", "1" if request.param == "slots" else "0")
    return request.param


def slots_free(batcher: Batcher) -> bool:
    """Whether every codec slot is back (True without slots)."""
    return batcher._slots is None or batcher._slots.free == batcher.max_batch


@pytest.fixture(scope="module")
def voice(engine, ref_wav):
    return engine.create_voice(ref_wav, ref_text=REF_TEXT)


def test_stream_equals_whole_file_generation(engine, voice) -> None:
    req = Request("Streaming equals one shot.", voice, "English", GenerationOptions.greedy(max_frames=17))
    whole = engine.generate_batch([req])[0]
    with Batcher(engine, first_chunk_frames=2, chunk_frames=5) as batcher:
        stream = batcher.submit(req)
        chunks = list(stream)
    assert [len(c.pcm) for c in chunks][0] == 2 * 1920
    assert len(chunks) == 1 + -(-15 // 5)
    audio = np.concatenate([c.pcm for c in chunks])
    assert stream.finish_reason == "max_frames" and stream.frames == 17
    assert len(audio) == 17 * 1920
    assert_same_audio(audio, whole.audio)


def test_concurrent_requests_do_not_mix(engine, voice, codec_mode) -> None:
    reqs = [
        Request(
            f"Request number {i} with its own words.",
            voice,
            lang,
            GenerationOptions.greedy(max_frames=4 + 3 * i),
        )
        for i, lang in enumerate(["English", "Chinese", "Auto", "English", "German"])
    ]
    alone = [engine.generate_codes([r])[0] for r in reqs]
    results: dict[int, np.ndarray] = {}
    with Batcher(engine, max_batch=3) as batcher:

        def client(i: int) -> None:
            results[i] = batcher.submit(reqs[i]).audio()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (batcher._slots is not None) == (codec_mode == "slots")
        assert slots_free(batcher)
    for i, req in enumerate(reqs):
        assert_same_audio(results[i], engine.decode(alone[i], req.voice))


def test_async_streams_and_cancel(engine, voice) -> None:
    async def main() -> tuple[str, int, str]:
        with Batcher(engine) as batcher:
            long = batcher.submit(Request("A long one. " * 20, voice, "English", GenerationOptions.greedy()))
            short = batcher.submit(
                Request("Short.", voice, "English", GenerationOptions.greedy(max_frames=6))
            )
            got = 0
            async for _chunk in long:
                got += 1
                if got == 2:
                    long.cancel()
            audio = await short.audio_async()
            assert slots_free(batcher)
            return long.finish_reason, len(audio), short.finish_reason

    reason, n, short_reason = asyncio.run(main())
    assert reason == "cancelled"
    assert n == 6 * 1920 and short_reason == "max_frames"
    assert engine.runner.active == 0


def test_bad_requests_and_full_queue(engine, voice) -> None:
    batcher = Batcher(engine, max_queue=1)  # not started: nothing leaves the queue
    with pytest.raises(ValueError, match="empty"):
        batcher.submit(Request("  ", voice))
    with pytest.raises(ValueError, match="unknown language"):
        batcher.submit(Request("hi", voice, "Elvish"))
    batcher.submit(Request("one", voice))
    with pytest.raises(QueueFullError):
        batcher.submit(Request("two", voice))
    batcher.stop()


def test_seeded_sampling_is_batch_independent(engine, voice) -> None:
    opts = GenerationOptions(seed=5, max_frames=6)
    alone = engine.generate_codes([Request("Sampled.", voice, "English", opts)])[0]
    with Batcher(engine) as batcher:
        other = batcher.submit(
            Request("Another one.", voice, "English", GenerationOptions(seed=6, max_frames=9))
        )
        mine = batcher.submit(Request("Sampled.", voice, "English", opts))
        audio = mine.audio()
        other.audio()
    assert_same_audio(audio, engine.decode(alone, voice))


def test_waiting_requests_are_admitted_together_and_sound_as_alone(engine, voice, monkeypatch) -> None:
    """Requests that wait together are prefilled in one call; each sounds as it does alone, and
    one that cannot be prepared fails alone."""
    reqs = [
        Request(
            f"Admitted together, number {i}.", voice, "English", GenerationOptions(seed=i, max_frames=5 + i)
        )
        for i in range(5)
    ]
    alone = [engine.generate_codes([r])[0] for r in reqs]
    batches: list[int] = []
    add_many = engine.runner.add_many
    monkeypatch.setattr(
        engine.runner, "add_many", lambda seqs: (batches.append(len(seqs)), add_many(seqs))[1]
    )
    sequence = engine._sequence

    def broken(request):
        if "broken" in request.text:
            raise RuntimeError("cannot prepare this one")
        return sequence(request)

    monkeypatch.setattr(engine, "_sequence", broken)
    batcher = Batcher(engine, max_batch=8)  # not started: everything waits
    streams = [batcher.submit(r) for r in reqs]
    bad = batcher.submit(Request("A broken one.", voice, "English", GenerationOptions(seed=9, max_frames=4)))
    with batcher:
        audios = [s.audio() for s in streams]
        with pytest.raises(RuntimeError, match="cannot prepare"):
            bad.audio()
        assert slots_free(batcher)
    assert batches[0] == 5  # the five good ones in one prefill
    for audio, req, codes in zip(audios, reqs, alone):
        assert_same_audio(audio, engine.decode(codes, req.voice))
