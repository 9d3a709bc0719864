"""Long texts: split at sentence boundaries into model-friendly chunks.

The model does best on a few sentences at a time; past a few hundred characters it drifts and
slows down (every frame attends to everything before it). So a long text is cut at sentence
ends (Latin ``. ! ? …`` followed by a space, CJK ``。！？；`` anywhere, blank lines), the sentences
are packed greedily into chunks of at most ``max_cost``, and a sentence longer than that is cut
at clause marks, then at spaces, then anywhere. A CJK character speaks about as long as three
Latin letters, so it costs 3.
"""

from __future__ import annotations

import re

CJK_COST = 3

# Han, kana, hangul and fullwidth forms: scripts written without spaces between words.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
_CLOSERS = "\"'”’»)]}」』）】》"
_LATIN_END = ".!?…"
_CJK_END = "。！？；"
_CLAUSE_MARKS = ",;:，、；：—–"
_CLAUSE = re.compile(f"(?<=[{_CLAUSE_MARKS}])")
# Words after which a full stop does not end a sentence.
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig", "mt",
    "approx", "dept", "est", "inc", "ltd", "co", "hr", "hrs", "min", "sec", "vol", "ca", "cf",
}  # fmt: skip


def cost(text: str) -> int:
    """How much speech ``text`` makes, in Latin-character units."""
    cjk = len(_CJK.findall(text))
    return len(text) - cjk + CJK_COST * cjk


def _is_abbreviation(sentence: str) -> bool:
    """True when ``sentence`` ends in a full stop that belongs to an abbreviation or an initial."""
    if not sentence.endswith("."):
        return False
    word = re.split(r"\s", sentence)[-1].rstrip(".").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _blank_run(text: str, i: int) -> int:
    """Length of the whitespace run starting at ``i``."""
    j = i
    while j < len(text) and text[j].isspace():
        j += 1
    return j - i


def sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (stripped, none empty), keeping their punctuation."""
    out: list[str] = []
    start, i, n = 0, 0, len(text)

    def flush(end: int) -> None:
        piece = text[start:end].strip()
        if piece:
            out.append(piece)

    while i < n:
        ch = text[i]
        if ch == "\n" and "\n" in text[i + 1 : i + 1 + _blank_run(text, i + 1)]:  # a blank line
            flush(i)
            start = i = i + 1
            continue
        if ch not in _LATIN_END and ch not in _CJK_END:
            i += 1
            continue
        j = i + 1
        while j < n and (text[j] in _LATIN_END or text[j] in _CJK_END):  # "?!", "...", "。。"
            j += 1
        while j < n and text[j] in _CLOSERS:
            j += 1
        ends = ch in _CJK_END or j == n or text[j].isspace()
        if ends and not _is_abbreviation(text[start:j].strip()):
            flush(j)
            start = j
        i = j
    flush(n)
    return out


def _hard_cut(text: str, max_cost: int) -> list[str]:
    """Cut text with no usable boundary into pieces of at most ``max_cost``."""
    pieces, current = [], ""
    for ch in text:
        if current and cost(current + ch) > max_cost:
            pieces.append(current)
            current = ""
        current += ch
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _pack(parts: list[str], max_cost: int, joiner: str = " ") -> list[str]:
    """Greedily join consecutive parts while the result stays within ``max_cost``."""
    chunks: list[str] = []
    for part in parts:
        if chunks and cost(chunks[-1] + joiner + part) <= max_cost:
            chunks[-1] = _join(chunks[-1], part, joiner)
        else:
            chunks.append(part)
    return chunks


def _join(left: str, right: str, joiner: str) -> str:
    # No space between CJK sentences: "你好。" + "再见。" stays "你好。再见。".
    if _CJK.search(left[-1:]) or _CJK.search(right[:1]):
        return left + right
    return left + joiner + right


def _split_long(sentence: str, max_cost: int) -> list[str]:
    """Split one over-long sentence at clause marks, then spaces, then anywhere."""
    if cost(sentence) <= max_cost:
        return [sentence]
    out: list[str] = []
    for clause in (c.strip() for c in _CLAUSE.split(sentence)):
        if not clause:
            continue
        if cost(clause) <= max_cost:
            out.append(clause)
            continue
        words = clause.split()
        if len(words) > 1:
            for word in _pack(words, max_cost):
                out.extend(_hard_cut(word, max_cost) if cost(word) > max_cost else [word])
        else:
            out.extend(_hard_cut(clause, max_cost))
    return _pack(out, max_cost)


def split_text(text: str, max_cost: int = 300) -> list[str]:
    """Chunks of ``text``, in order, each of cost at most ``max_cost`` and none empty.

    Whitespace is normalised; nothing else is dropped or reordered.
    """
    if max_cost < 1:
        raise ValueError("max_cost must be at least 1")
    parts: list[str] = []
    for sentence in sentences(text):
        parts.extend(_split_long(re.sub(r"\s+", " ", sentence), max_cost))
    return _pack(parts, max_cost)


class PartCutter:
    """Where a text that arrives in pieces (an LLM's reply, over a realtime session) is cut
    into parts, decided as it comes: text already handed on is never taken back.

    A whole text is packed into parts of at most ``max_cost`` (:func:`split_text`); a text still
    being written cannot be, since what follows is unknown. So a part ends at the first
    sentence end once it costs two thirds of ``max_cost`` (or a line break: list items,
    paragraphs), else at a clause mark once it costs ``max_cost``, else at any space or after a
    CJK character at one and a half times that. A Latin sentence end counts once the character
    after it is known (a space; "3.5" is no end), so where the cuts fall depends on the text
    only, never on how it was cut into messages (tested), except that a client's flush
    (:meth:`flush`) makes a sentence end at the end of the text so far count at once.
    """

    def __init__(self, max_cost: int) -> None:
        self.max_cost = max_cost  # 0: never cut
        self.target = max(1, max_cost * 2 // 3)
        self.hard = max_cost * 3 // 2
        self._text = ""  # the current part's text so far
        self._cut = False  # a cut was made: the whitespace that starts the next part goes
        self._scan = 0  # where scanning goes on: no cut before it
        self._cost = 0  # cost of _text[:_scan]

    def push(self, piece: str) -> list[tuple[str, bool]]:
        """Add ``piece``; returns ``(text, ends)`` pairs in order: text for the current part
        and whether the part ends after it (the next text starts a new part). A part after a
        cut starts at its first non-space, as :func:`split_text`'s do; the first part keeps
        the text as given (a reply that fits one part reads as the API reads it)."""
        if not self._text and self._cut:
            piece = piece.lstrip()
        emitted = len(self._text)
        self._text += piece
        out: list[tuple[str, bool]] = []
        while self.max_cost and (cut := self._find_cut()) is not None:
            assert cut >= emitted  # what was handed on stays in its part
            out.append((self._text[emitted:cut], True))
            self._text, self._scan, self._cost, emitted = self._text[cut:].lstrip(), 0, 0, 0
            self._cut = True
        if len(self._text) > emitted:
            out.append((self._text[emitted:], False))
        return out

    def flush(self) -> bool:
        """The text so far is final (a client's flush): a sentence end at its very end, which
        waits for the character after it, counts now. Returns whether the current part ends
        here (the next text starts a new part): a client that flushes a sentence once the part
        is long enough gets its cut at once, not when the next message comes."""
        text, i = self._text, self._scan
        if not self.max_cost or i >= len(text) or not (text[i] in _LATIN_END or text[i] in _CJK_END):
            return False  # _find_cut stopped at the end of the text: no end is pending
        if self._cost + cost(text[i:]) < self.target or _is_abbreviation(text.rstrip()):
            return False
        self._text, self._scan, self._cost, self._cut = "", 0, 0, True
        return True

    def _find_cut(self) -> int | None:
        text, n = self._text, len(self._text)
        i, spent = self._scan, self._cost
        while i < n:
            ch = text[i]
            if ch in _LATIN_END or ch in _CJK_END:
                j = i + 1
                while j < n and (text[j] in _LATIN_END or text[j] in _CJK_END):
                    j += 1
                while j < n and text[j] in _CLOSERS:
                    j += 1
                if j == n:  # what follows decides: wait for it
                    break
                spent += cost(text[i:j])
                ends = ch in _CJK_END or text[j].isspace()
                if ends and spent >= self.target and not _is_abbreviation(text[:j].rstrip()):
                    return j
                i = j
                continue
            if i and spent >= self.max_cost and self._boundary(text[i - 1], ch):
                if text[i - 1] in _CLAUSE_MARKS or spent >= self.hard:
                    return i
            if ch == "\n" and spent >= self.target:
                return i
            spent += cost(ch)
            i += 1
        self._scan, self._cost = i, spent
        return None

    @staticmethod
    def _boundary(before: str, after: str) -> bool:
        """Whether a part may end between ``before`` and ``after`` (mid-sentence): at a space,
        or after a CJK character or clause mark unless punctuation follows."""
        if after.isspace():
            return True
        punctuation = after in _LATIN_END or after in _CJK_END or after in _CLOSERS or after in _CLAUSE_MARKS
        return bool(_CJK.match(before) or before in _CLAUSE_MARKS) and not punctuation
