"""Checks every route applies to what a request carries: ids and free text.

Ids are 32 hex characters; anything else cannot name a row, so it is "not found" without
asking the database (which may choke on it: PostgreSQL refuses NUL bytes in text). Free text
loses control characters (NUL, escapes) but keeps line breaks and tabs.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from ..server.http.errors import ApiError

T = TypeVar("T")

_ID = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def require_id(value: str, what: str) -> str:
    """``value`` if it can be an id; else 404 "<what> not found."."""
    if not _ID.fullmatch(value):
        raise ApiError(404, f"{what} not found.")
    return value


def get_row(
    session: Session, model: type[T], row_id: str, what: str, param: str | None = None, options: Any = None
) -> T:
    """The ``model`` row with id ``row_id``; else 404 "<what> not found."."""
    row = session.get(model, require_id(row_id, what), options=options)
    if row is None:
        raise ApiError(404, f"{what} not found.", param=param)
    return row


def clean_text(value: str | None) -> str:
    """``value`` without control characters (line breaks and tabs stay)."""
    return _CONTROL.sub("", value or "")
