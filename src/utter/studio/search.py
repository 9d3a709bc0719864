"""Search that folds case in every script, and says why a row matched.

SQLite's LIKE folds only ASCII letters ("É" never finds "é"), and PostgreSQL's ILIKE lowers but
does not fold ("STRASSE" never finds "Straße"). So each searchable row keeps a folded copy of
its searchable text (``search_key``: NFKC-normalised, then ``str.casefold``), written whenever
the row is (see ``models.py``), and a search folds the query the same way and matches it
literally against that key, the same on every database. The page shows where a row matched
(which field, and the words around the match) from the row itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement

from ..server.voices.store import fold

SEPARATOR = "\n"  # between fields in a search key: a query with a line break matches nothing across
SNIPPET_CHARS = 40  # context on each side of a match


__all__ = ["fold", "matches", "search_key", "why"]


def search_key(*fields: str | None) -> str:
    return SEPARATOR.join(fold(f) for f in fields)


def _like(search: str) -> str:
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def matches(column: Any, search: str) -> ColumnElement[bool]:
    """Rows whose ``search_key`` column contains the folded ``search`` literally."""
    return column.like(_like(fold(search)), escape="\\")


def why(search: str, fields: dict[str, str | None]) -> dict[str, str] | None:
    """Where ``search`` matched: ``{"field": name, "snippet": "...words around it..."}`` for
    the first field that contains it (folded), or None."""
    needle = fold(search)
    if not needle:
        return None
    for name, value in fields.items():
        if not value:
            continue
        # Fold character by character to map the match back to the original text (folding can
        # change lengths: "ß" -> "ss").
        folded, origin = "", []
        for i, ch in enumerate(value):
            piece = fold(ch)
            folded += piece
            origin += [i] * len(piece)
        at = folded.find(needle)
        if at < 0:
            continue
        start, end = origin[at], origin[at + len(needle) - 1] + 1
        lo, hi = max(0, start - SNIPPET_CHARS), min(len(value), end + SNIPPET_CHARS)
        snippet = ("…" if lo else "") + value[lo:hi] + ("…" if hi < len(value) else "")
        return {"field": name, "snippet": " ".join(snippet.split()), "matched": value[start:end]}
    return None
