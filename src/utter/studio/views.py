"""Rows -> API bodies (schemas.py). Kept apart from the routes because several routes show tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from .models import Generation, Task, Voice
from .schemas import ACTIVE, CANCELLED, COMPLETED, FAILED, QUEUED, GenerationOut, TaskOut, VoiceOut
from .search import why


def voice_out(voice: Voice, search: str | None = None) -> VoiceOut:
    """``search``: the query the voice was found by; ``match`` then says where it matched."""
    fields = {"name": voice.name, "transcript": voice.reference_transcript}
    return VoiceOut(
        match=why(search, fields) if search else None,
        id=voice.id,
        name=voice.name,
        language=voice.language,
        reference_transcript=voice.reference_transcript,
        reference_seconds=voice.reference_seconds,
        created_at=voice.created_at,
        updated_at=voice.updated_at,
        preview_url=f"/api/voices/{voice.id}/preview",
    )


def waiting_message(model: dict[str, Any]) -> str | None:
    """What a queued job waits for when the model is not ready (None when it is)."""
    state = model.get("state")
    if state == "ready":
        return None
    if state == "downloading":
        progress = model.get("progress")
        pct = f" {progress:.0%}" if isinstance(progress, (int, float)) else ""
        return f"waiting for the model: downloading{pct}"
    if state == "failed":
        return f"waiting for the model, which failed: {model.get('error')}"
    return f"waiting for the model: {state}"


def task_out(task: Task, model: dict[str, Any]) -> TaskOut:
    message = task.message
    if task.status == QUEUED:
        message = waiting_message(model) or message or "queued"
    return TaskOut(
        id=task.id,
        generation_id=task.generation_id,
        status=task.status,
        progress=1.0 if task.status == COMPLETED else task.progress,
        chunks_done=task.chunks_done,
        chunks_total=task.chunks_total,
        frames_done=task.frames_done,
        message=message,
        error=task.error,
        cancel_requested=task.cancel_requested,
        attempts=task.attempts,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
    )


def generation_out(gen: Generation, task: Task | None, search: str | None = None) -> GenerationOut:
    has_audio = gen.status not in ACTIVE and gen.audio_path is not None
    return GenerationOut(
        match=why(search, {"text": gen.text, "voice": gen.voice_name}) if search else None,
        id=gen.id,
        task_id=task.id if task is not None else None,
        voice_id=gen.voice_id,
        voice_name=gen.voice_name,
        text=gen.text,
        language=gen.language,
        status=gen.status,
        progress=1.0 if gen.status == COMPLETED else (task.progress if task is not None else 0.0),
        duration_seconds=gen.duration_seconds,
        generation_seconds=gen.generation_seconds,
        error_message=gen.error_message,
        audio_url=f"/api/generations/{gen.id}/audio" if has_audio else None,
        seed=gen.seed,
        options=dict(gen.options or {}),
        partial=has_audio and gen.status != COMPLETED,
        resumable=task is not None
        and gen.status in (FAILED, CANCELLED)
        and (gen.voice_id is not None or bool((gen.options or {}).get("speaker"))),
        created_at=gen.created_at,
        finished_at=gen.finished_at,
    )


# The highest page a list may be asked for: its offset (page x per_page) must fit the database's
# 64-bit integers, and SQLite refused 10^20 with an error the client saw as a 500. A person pages
# through far fewer; a page past the end is an empty one.
MAX_PAGE = 1_000_000


def pages(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))


def page_of(
    session: Session, query: Select, page: int, per_page: int, *order_by: Any, options: Sequence[Any] = ()
) -> tuple[list[Any], int]:
    """Rows of page ``page`` (from 1) of ``query`` in ``order_by`` order, and the total count."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(*options).order_by(*order_by).offset((page - 1) * per_page).limit(per_page)
    ).all()
    return list(rows), total
