"""``GET /api/languages``, and the one place a language name from a request is checked."""

from __future__ import annotations

from fastapi import APIRouter

from ...server.http.errors import ApiError
from ..deps import Studio, StudioDep
from ..schemas import LanguagesOut

router = APIRouter(prefix="/api", tags=["languages"])


def resolve_language(studio: Studio, value: str | None, param: str = "language") -> str:
    """The canonical spelling of ``value`` ("english" -> "English"); 422 for an unknown one."""
    known = studio.provider.languages()
    by_key = {name.lower(): name for name in known}
    key = (value or "").strip().lower()
    if key not in by_key:
        raise ApiError(422, f"Unknown language {value!r}; choose one of: {', '.join(known)}.", param=param)
    return by_key[key]


@router.get("/languages", response_model=LanguagesOut)
def languages(studio: StudioDep) -> LanguagesOut:
    return LanguagesOut(languages=studio.provider.languages(), default="Auto")
