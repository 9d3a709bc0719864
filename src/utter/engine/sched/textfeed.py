"""Text that arrives in pieces while its speech is generated (an LLM's reply, token by token).

The talker reads text as a second track, one text position per frame (``prompt.py``), so it
can start speaking before the text is complete: a request with a :class:`TextFeed` starts once
its first words are known, and whenever it has consumed every text position it has, the runner
parks it (out of the batch, costing nothing) until more text or the end of the text arrives.

Tokens must not change once the model has read them, yet a BPE tokenizer may tokenize the end
of a text differently when more characters follow ("Hel" + "lo"). So a feed hands out only the
tokens of *complete pre-tokens*: the tokenizer's own pre-tokenizer splits the text received so
far and the last piece (which the next characters could still extend) waits until more text
comes or the feed is closed. The ids handed out are then a prefix of the whole text's ids, and
a request fed in pieces reads exactly the text positions it would have read given all at once.
:meth:`TextFeed.flush` makes the text so far final at once (a client that knows a phrase is
complete); text after it is tokenized on its own, as if a new text began there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class TextFeed:
    """Thread-safe: callers :meth:`push`, :meth:`flush` and :meth:`close` from any thread; the
    engine's worker takes the new token ids with :meth:`take`."""

    def __init__(self, text: str = "", close: bool = False) -> None:
        self._lock = threading.Lock()
        self._text = text  # the text since the last flush
        self._before = ""  # the text up to the last flush (final)
        self._unread: list[str] = []  # flushed pieces not tokenized yet
        self._flushed_ids: list[int] = []
        self._closed = close
        self._given = 0  # ids handed to the engine so far
        # Pushes, flushes and closes so far, and the count the last take/ready saw: the worker
        # asks on every decode step, and tokenizing an unchanged text again would be waste.
        self._changes = 0
        self._taken = -1
        self._ready: tuple[int, bool] = (-1, False)
        self._notify: Callable[[], None] | None = None  # wakes the engine's worker

    def push(self, text: str) -> None:
        """Append text (any split: mid-word, mid-character-run); raises once closed."""
        if not text:
            return
        with self._lock:
            if self._closed:
                raise ValueError("this text input is closed")
            self._text += text
            self._changes += 1
        self._wake()

    def flush(self) -> None:
        """Make everything received so far final, even a word that more text could extend."""
        with self._lock:
            if self._text:
                self._unread.append(self._text)
                self._before += self._text
                self._text = ""
                self._changes += 1
        self._wake()

    def close(self) -> None:
        """No more text: the request speaks the rest and ends (idempotent)."""
        with self._lock:
            self._closed = True
            self._changes += 1
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def text(self) -> str:
        """Everything received so far."""
        with self._lock:
            return self._before + self._text

    def bind(self, notify: Callable[[], None]) -> None:
        """Called by the engine's worker: ``notify`` runs after every push, flush and close."""
        self._notify = notify

    def _wake(self) -> None:
        if self._notify is not None:
            self._notify()

    def committed_text(self, tokenizer: Any) -> tuple[str, bool]:
        """(the part of the text since the last flush whose tokens are final, closed): all of it
        once closed, else the text up to the start of its last pre-token."""
        with self._lock:
            text, closed = self._text, self._closed
        text = tokenizer.normalize(text)  # spans below are in the normalised text
        if closed or not text:
            return text, closed
        pieces = tokenizer.pre_tokenize(text)
        cut = pieces[-1][1][0] if pieces else 0
        return text[:cut], closed

    def ready(self, tokenizer: Any) -> bool:
        """Whether a request on this feed can start: a word is final, or the text is closed."""
        with self._lock:
            if self._closed or self._before.strip() or self._flushed_ids:
                return True
            changes = self._changes
        if self._ready[0] != changes:
            self._ready = (changes, bool(self.committed_text(tokenizer)[0]))
        return self._ready[1]

    def take(self, tokenizer: Any) -> tuple[list[int], bool]:
        """(new final token ids since the last call, closed). ``tokenizer`` is the engine's
        :class:`~utter.engine.text.TextTokenizer`."""
        with self._lock:
            if self._changes == self._taken:
                return [], self._closed
            self._taken = self._changes
            unread, self._unread = self._unread, []
        for piece in unread:  # final as a whole: tokenized once, on its own
            piece = tokenizer.normalize(piece)
            if piece.strip():
                self._flushed_ids += tokenizer.text_ids(piece)
        text, closed = self.committed_text(tokenizer)
        ids = self._flushed_ids + (tokenizer.text_ids(text) if text else [])
        new = ids[self._given :]
        self._given = max(self._given, len(ids))
        return new, closed
