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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class TextFeed:
    """Thread-safe: callers :meth:`push` and :meth:`close` from any thread; the engine's worker
    takes the new token ids with :meth:`take`."""

    def __init__(self, text: str = "", close: bool = False) -> None:
        self._lock = threading.Lock()
        self._text = text
        self._closed = close
        self._given = 0  # ids handed to the engine so far
        self._notify: Callable[[], None] | None = None  # wakes the engine's worker

    def push(self, text: str) -> None:
        """Append text (any split: mid-word, mid-character-run); raises once closed."""
        if not text:
            return
        with self._lock:
            if self._closed:
                raise ValueError("this text input is closed")
            self._text += text
        self._wake()

    def close(self) -> None:
        """No more text: the request speaks the rest and ends (idempotent)."""
        with self._lock:
            self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    def bind(self, notify: Callable[[], None]) -> None:
        """Called by the engine's worker: ``notify`` runs after every push and close."""
        self._notify = notify

    def _wake(self) -> None:
        if self._notify is not None:
            self._notify()

    def committed_text(self, tokenizer: Any) -> tuple[str, bool]:
        """(the text whose tokens are final, closed): all of it once closed, else the text up to
        the start of its last pre-token."""
        with self._lock:
            text, closed = self._text, self._closed
        text = tokenizer.normalize(text)  # spans below are in the normalised text
        if closed or not text:
            return text, closed
        pieces = tokenizer.pre_tokenize(text)
        cut = pieces[-1][1][0] if pieces else 0
        return text[:cut], closed

    def take(self, tokenizer: Any) -> tuple[list[int], bool]:
        """(new final token ids since the last call, closed). ``tokenizer`` is the engine's
        :class:`~utter.engine.text.TextTokenizer`."""
        text, closed = self.committed_text(tokenizer)
        ids = tokenizer.text_ids(text) if text else []
        new = ids[self._given :]
        self._given = max(self._given, len(ids))
        return new, closed
