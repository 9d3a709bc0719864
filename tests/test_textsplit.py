"""Sentence splitting for long texts (10 languages, CJK punctuation), the cutting of a text that
arrives in pieces (realtime replies), and the crossfade join."""

from __future__ import annotations

import re

import numpy as np
import pytest

from utter.audio.crossfade import Crossfader, crossfade_join
from utter.server.speech.textsplit import PartCutter, cost, sentences, split_text


def test_latin_sentences_keep_punctuation_and_skip_abbreviations() -> None:
    text = (
        'Mr. Smith went to Washington! Did he? Yes... "Quite so." Pi is 3.14 today. J. R. R. Tolkien wrote.'
    )
    assert sentences(text) == [
        "Mr. Smith went to Washington!",
        "Did he?",
        "Yes...",
        '"Quite so."',
        "Pi is 3.14 today.",
        "J. R. R. Tolkien wrote.",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "你好。今天天气很好！我们去公园吧？好的；走吧",
            ["你好。", "今天天气很好！", "我们去公园吧？", "好的；", "走吧"],
        ),
        ("こんにちは。元気ですか？はい、元気です。", ["こんにちは。", "元気ですか？", "はい、元気です。"]),
        ("안녕하세요. 반갑습니다! 네?", ["안녕하세요.", "반갑습니다!", "네?"]),
        ("Привет. Как дела? Хорошо!", ["Привет.", "Как дела?", "Хорошо!"]),
        ("Hola. ¿Qué tal? ¡Bien!", ["Hola.", "¿Qué tal?", "¡Bien!"]),
        ("「はい。」と言った。次です。", ["「はい。」", "と言った。", "次です。"]),
    ],
)
def test_sentences_in_other_languages(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_blank_lines_split_but_wrapped_lines_do_not() -> None:
    assert sentences("A wrapped\nline. Next one.\n\nA heading\n\nBody") == [
        "A wrapped\nline.",
        "Next one.",
        "A heading",
        "Body",
    ]


def test_chunks_pack_sentences_within_the_budget_and_lose_nothing() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    chunks = split_text(text, 100)
    assert all(cost(c) <= 100 for c in chunks)
    assert len(chunks) > 5
    assert " ".join(chunks) == text
    assert all(c.endswith(".") for c in chunks)  # cut at sentence ends only


def test_cjk_costs_more_and_joins_without_spaces() -> None:
    assert cost("你好") == 6 and cost("ab") == 2
    chunks = split_text("你好，世界。" * 30, 60)
    assert all(cost(c) <= 60 for c in chunks)
    assert "".join(chunks) == "你好，世界。" * 30


def test_overlong_sentences_split_at_clauses_then_words_then_anywhere() -> None:
    clauses = split_text("one two three, four five six, seven eight nine, ten eleven twelve.", 30)
    assert clauses == ["one two three, four five six,", "seven eight nine,", "ten eleven twelve."]
    words = split_text("word " * 50, 23)
    assert all(cost(c) <= 23 for c in words) and " ".join(words) == ("word " * 50).strip()
    assert split_text("a" * 130, 50) == ["a" * 50, "a" * 50, "a" * 30]


def test_empty_and_whitespace_texts_give_no_chunks() -> None:
    assert split_text("   \n\n  ") == []
    with pytest.raises(ValueError):
        split_text("x", 0)


def cut(pieces: list[str], max_cost: int) -> list[str]:
    """The parts a PartCutter makes of ``pieces`` pushed in order (checking what it hands on)."""
    cutter, parts = PartCutter(max_cost), [""]
    for piece in pieces:
        for text, ends in cutter.push(piece):
            assert text or ends
            parts[-1] += text
            if ends:
                parts.append("")
    return [p for p in parts if p]


REPLY = (
    'Dr. Smith came at 3.5 p.m. today! "Was it raining?" she asked. It was, a little. '
    "Then the sun came out and we walked to the river, slowly, talking about nothing much. "
    "First item\nSecond item\n这是一个测试。我们要看看它怎么切分，对不对？"
    * 3
    + "and then " * 60
    + "一二三四五六七八九十" * 20
)


def test_a_text_in_pieces_is_cut_the_same_however_it_arrives() -> None:
    whole = cut([REPLY], 90)
    assert len(whole) > 8
    for seed in range(30):
        rng = np.random.default_rng(seed)
        points = sorted(set(rng.integers(1, len(REPLY), int(rng.integers(1, 300))).tolist()))
        pieces = [REPLY[a:b] for a, b in zip([0, *points], [*points, len(REPLY)])]
        assert cut(pieces, 90) == whole, seed
    assert cut(list(REPLY), 90) == whole
    # Nothing is lost or reordered: only the whitespace at the cuts goes.
    assert "".join(whole).replace(" ", "").replace("\n", "") == REPLY.replace(" ", "").replace("\n", "")
    assert all(p == p.lstrip() for p in whole)


def test_parts_end_at_sentence_ends_once_long_enough_else_clauses_else_spaces() -> None:
    # Sentence ends after two thirds of the budget; "3.5", "Dr." and "p.m." do not end one there.
    assert cut(["Dr. Smith came at 3.5 p.m. today. We left. Then more text came."], 60) == [
        "Dr. Smith came at 3.5 p.m. today. We left.",
        "Then more text came.",
    ]
    # A sentence end counts only once what follows it is known.
    cutter = PartCutter(30)
    assert cutter.push("One two three four five six.") == [("One two three four five six.", False)]
    assert cutter.push(" Next") == [("", True), ("Next", False)]
    assert cutter.push(".5") == [(".5", False)]
    # No sentence end: a clause mark once the budget is spent, any space at one and a half.
    assert cut(["word " * 7 + "clause, " + "word " * 20], 30)[0] == ("word " * 7 + "clause,")
    parts = cut(["word " * 40], 30)
    assert len(parts) > 3 and all(45 <= cost(p) < 50 for p in parts[:-1])
    # Line breaks end a part once long enough (lists, paragraphs).
    assert cut(["a list item that is long enough\nnext"], 30) == ["a list item that is long enough", "next"]
    # CJK: sentence ends need no space; a run without any punctuation is cut between characters.
    assert cut(["这是一个测试。" * 3], 30) == ["这是一个测试。这是一个测试。", "这是一个测试。"]
    assert all(cost(p) <= 45 for p in cut(["一二三四五六七八九十" * 10], 30))


def test_a_flush_makes_a_sentence_end_at_the_end_count_at_once() -> None:
    cutter = PartCutter(30)
    assert cutter.push("One two three four five six.") == [("One two three four five six.", False)]
    assert cutter.flush()  # no need to wait for the next character
    assert cutter.push(" Next") == [("Next", False)]  # a new part, at its first word
    assert not cutter.flush()  # no sentence end pending
    # Too short, an abbreviation, or no end at the end of the text: no cut.
    assert not PartCutter(30).flush()
    short = PartCutter(30)
    short.push("Short one.")
    assert not short.flush() and short.push(" More") == [(" More", False)]
    abbreviation = PartCutter(30)
    abbreviation.push("We met the famous Dr.")
    assert not abbreviation.flush()
    closers = PartCutter(30)
    closers.push('She said "one two three four five?"')
    assert closers.flush()
    assert not PartCutter(0).flush()
    # Flushing after every sentence, where the cuts fall anyway, changes nothing.
    whole = cut([REPLY], 90)
    cutter, parts = PartCutter(90), [""]
    for sentence in re.split(r"(?<=[.!?。？！])(?=\s)|(?<=[。？！])", REPLY):
        for text, ends in cutter.push(sentence):
            parts[-1] += text
            if ends:
                parts.append("")
        if cutter.flush():
            parts.append("")
    assert [p for p in parts if p] == whole


def test_texts_without_boundaries_or_budget_stay_whole() -> None:
    assert cut(["x" * 500], 30) == ["x" * 500]  # nowhere to cut: one part, as before
    assert cut([REPLY], 0) == [REPLY]  # cutting off
    # The first part keeps the text as given (as the API does); later parts start at a word.
    assert cut(["  Hello"], 30) == ["  Hello"]
    first = " one two three four five six."
    assert cut([first + "  ", "  Seven."], 30) == [first, "Seven."]


def test_crossfade_join_overlaps_each_seam_and_never_gets_louder() -> None:
    sr, fade_ms = 24000, 10
    n = sr * fade_ms // 1000
    parts = [np.ones(1000, np.float32), np.ones(1000, np.float32), np.ones(500, np.float32)]
    joined = crossfade_join(parts, sr, fade_ms)
    assert len(joined) == 2500 - 2 * n
    assert np.allclose(joined, 1.0)  # gains sum to one across every seam
    ramp = crossfade_join([np.ones(1000, np.float32), np.zeros(1000, np.float32)], sr, fade_ms)
    assert np.all(np.diff(ramp[1000 - n - 1 : 1000]) <= 0)  # a monotone fade out
    assert len(crossfade_join([], sr)) == 0
    assert (
        len(crossfade_join([np.ones(3, np.float32), np.ones(3, np.float32)], sr, fade_ms)) == 3
    )  # short chunk


@pytest.mark.parametrize("fade", [0, 5, 240, 2000])
def test_streamed_crossfade_equals_the_join_of_whole_parts(fade: int) -> None:
    """The server streams a long text's parts through a Crossfader in whatever pieces the engine
    hands out; the samples must be the studio's join of the whole parts, bit for bit: short and
    empty parts, pieces shorter than the fade, seams that wait for the next part's start."""
    rng = np.random.default_rng(fade)
    lengths = [3000, 0, 7, 1200, 0, 0, 4800, 1, 2500]
    parts = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    expected = crossfade_join(parts, 1000, fade)  # at 1000 Hz, fade_ms == samples
    assert len(expected) == sum(lengths) - sum(
        min(fade, a, b) for a, b in zip(_tails(lengths, fade), [n for n in lengths if n][1:])
    )
    for trial in range(5):
        fader, out = Crossfader(fade), []
        for i, part in enumerate(parts):
            if i:
                out.append(fader.seam())
            cuts = np.sort(rng.integers(0, len(part) + 1, size=trial))  # pieces of any size, empty too
            out.extend(fader.push(piece) for piece in np.split(part, cuts))
        out.append(fader.finish())
        np.testing.assert_array_equal(np.concatenate(out), expected)


def _tails(lengths: list[int], fade: int) -> list[int]:
    """The length of each non-empty part's tail at its seam with the next (what is left of it
    after its own start was mixed into the part before)."""
    tails, mixed = [], 0
    kept = [n for n in lengths if n]
    for a, b in zip(kept, kept[1:]):
        tail = a - mixed
        tails.append(tail)
        mixed = min(fade, tail, b)
    return tails


def test_crossfade_mixes_the_seam_with_gains_that_sum_to_one() -> None:
    a, b = np.full(100, 2.0, np.float32), np.full(100, -1.0, np.float32)
    joined = crossfade_join([a, b], 1000, 10)
    ramp = np.linspace(0.0, 1.0, 12, dtype=np.float32)[1:-1]
    np.testing.assert_array_equal(joined[:90], a[:90])
    np.testing.assert_allclose(joined[90:100], 2.0 * (1 - ramp) - ramp, rtol=1e-6)
    np.testing.assert_array_equal(joined[100:], b[10:])
