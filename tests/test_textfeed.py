"""Text that arrives while it is spoken: final tokens only, parking while the text runs dry, and
the same speech as the whole text given at once (on the tiny checkpoint, greedy, float32)."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from tests.conftest import REF_TEXT
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions
from utter.engine.sched.batcher import Batcher
from utter.engine.sched.textfeed import TextFeed

TEXTS = [
    "Hello there, this is a streamed reply from a language model.",
    "Numbers 12345 and  double  spaces, punctuation!? And a new\nline.",
    "今天天气很好，我们去公园散步吧。然后吃饭。",
    "Ça va très bien — naïve café, über straße.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_give_the_whole_texts_tokens(engine, text: str) -> None:
    tok = engine.tokenizer
    whole = tok.text_ids(text)
    rng = random.Random(len(text))
    for _ in range(5):
        feed, got = TextFeed(), []
        cuts = sorted(rng.sample(range(1, len(text)), min(6, len(text) - 1)))
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            feed.push(text[a:b])
            new, closed = feed.take(tok)
            got += new
            assert got == whole[: len(got)]  # a token once handed out never changes
            assert not closed
        feed.close()
        new, closed = feed.take(tok)
        assert closed and got + new == whole


def _voice(engine, ref_wav, icl: bool):
    if icl:
        return engine.create_voice(ref_wav, ref_text=REF_TEXT)
    return engine.create_voice(ref_wav, x_vector_only=True)


def _wait_parked(batcher: Batcher, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not batcher.engine.runner.parked:
        assert time.monotonic() < deadline, "the fed request never ran out of text"
        time.sleep(0.005)


def _fed(batcher: Batcher, req: Request, pieces: list[str]) -> tuple[np.ndarray, int]:
    """Submit ``req`` with its text in ``pieces``, each pushed once the request has run dry."""
    feed = TextFeed(pieces[0])
    stream = batcher.submit(Request("", req.voice, req.language, req.options, feed=feed))
    parked = 0
    chunks: list[np.ndarray] = []
    reader = threading.Thread(target=lambda: chunks.extend(c.pcm for c in stream))
    reader.start()
    for piece in pieces[1:]:
        _wait_parked(batcher)
        parked += 1
        feed.push(piece)
    _wait_parked(batcher)
    feed.close()
    reader.join(120)
    assert stream.error is None and stream.finish_reason == "max_frames"
    return np.concatenate(chunks), parked


@pytest.mark.parametrize("icl", [False, True])
def test_fed_text_speaks_as_the_whole_text(engine, ref_wav, icl: bool) -> None:
    """Parked after every piece (the text ran dry each time), the request makes the same frames
    as the whole text at once. In ICL mode the text shares positions with the reference's codes
    first, so the first piece covers those positions; the rest arrives in pieces."""
    text = (
        "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four. "
        "Then the same again in other words: apples, pears, plums, cherries, grapes, melons, figs, "
        "lemons, limes, oranges, peaches and quinces fill the baskets at the market every morning."
    )
    voice = _voice(engine, ref_wav, icl)
    req = Request(text, voice, "English", GenerationOptions.greedy(max_frames=60))
    whole = engine.generate_batch([req])[0].audio
    words = text.split(" ")
    first = 2
    if icl:  # enough words for the reference overlap, and one more whose end is final
        overlap = voice.ref_codes.shape[0] + 1 - len(engine.tokenizer.reference_ids(REF_TEXT))
        while len(engine.tokenizer.text_ids(" ".join(words[:first]))) <= overlap + 1:
            first += 1
        assert first < len(words) - 6, "the test needs text beyond the overlap"
    rest = words[first:]
    third = len(rest) // 3
    pieces = [" ".join(words[:first])]
    pieces += [" " + " ".join(part) for part in (rest[:third], rest[third : 2 * third], rest[2 * third :])]
    with Batcher(engine, first_chunk_frames=1, chunk_frames=3) as batcher:
        audio, parked = _fed(batcher, req, pieces)
    assert parked == len(pieces) - 1
    assert len(audio) == 60 * 1920
    tail = whole[len(whole) - len(audio) :]
    assert np.abs(audio - tail).max() < 1e-3


def test_a_waiting_request_does_not_hold_up_others(engine, ref_wav) -> None:
    voice = _voice(engine, ref_wav, icl=False)
    other = Request(
        "An ordinary request alongside.", voice, "English", GenerationOptions.greedy(max_frames=12)
    )
    alone = engine.generate_batch([other])[0].audio
    feed = TextFeed("Waiting for")
    with Batcher(engine, max_batch=4) as batcher:
        fed = batcher.submit(
            Request("", voice, "English", GenerationOptions.greedy(max_frames=30), feed=feed)
        )
        _wait_parked(batcher)
        steps = batcher.steps
        time.sleep(0.3)
        assert batcher.steps - steps <= 1  # only a waiting request: the worker sleeps
        audio = batcher.submit(other).audio()  # runs to the end while the fed one is parked
        assert batcher.engine.runner.parked
        np.testing.assert_allclose(audio, alone[len(alone) - len(audio) :], atol=1e-3)
        fed.cancel()
        deadline = time.monotonic() + 30
        while batcher.engine.runner.parked:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        list(fed)
        assert fed.finish_reason == "cancelled"


def test_a_request_starts_with_its_first_final_word(engine, ref_wav) -> None:
    voice = _voice(engine, ref_wav, icl=False)
    feed = TextFeed("Hel")  # "Hel" may still become "Hello": nothing is final yet
    with Batcher(engine) as batcher:
        stream = batcher.submit(
            Request("", voice, "English", GenerationOptions.greedy(max_frames=6), feed=feed)
        )
        time.sleep(0.3)
        assert stream.frames == 0 and batcher.queued == 1
        feed.push("lo world")  # "Hello" is final now
        first = next(iter(stream))
        assert first.pcm.size > 0
        feed.close()
        list(stream)
        assert stream.finish_reason == "max_frames"
    empty = TextFeed(close=True)
    with Batcher(engine) as batcher:
        with pytest.raises(ValueError, match="empty"):
            batcher.submit(Request("", voice, "English", GenerationOptions.greedy(max_frames=6), feed=empty))
        blank = TextFeed("   ")
        stream = batcher.submit(
            Request("", voice, "English", GenerationOptions.greedy(max_frames=6), feed=blank)
        )
        blank.close()  # closed with no words after all: the request fails alone, clearly
        with pytest.raises(ValueError, match="empty"):
            list(stream)
    with pytest.raises(ValueError, match="closed"):
        empty.push("more")


def test_flush_makes_the_text_so_far_final(engine) -> None:
    tok = engine.tokenizer
    feed = TextFeed("Hello wor")
    assert feed.take(tok) == (tok.text_ids("Hello"), False)  # "wor" may grow
    assert not TextFeed("Hel").ready(tok)
    feed.flush()  # the client says: "wor" is complete
    new, closed = feed.take(tok)
    assert new == tok.text_ids("Hello wor")[len(tok.text_ids("Hello")) :] and not closed
    feed.push("ld again")
    feed.close()
    rest, closed = feed.take(tok)
    assert closed and rest == tok.text_ids("ld again")  # after a flush, a new text begins
    assert feed.text == "Hello world again"
    flushed = TextFeed("Hi")
    flushed.flush()
    assert flushed.ready(tok)
