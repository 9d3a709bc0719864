"""History: list/search generations, fetch one or its audio, delete one (with its files)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from ..server.errors import ApiError
from .deps import SessionDep, StudioDep
from .inputs import clean_text, require_id
from .models import Generation
from .schemas import ACTIVE, COMPLETED, STATUSES, GenerationList, GenerationOut
from .views import generation_out, like, pages

router = APIRouter(prefix="/api", tags=["generations"])


def _get(session: Session, generation_id: str) -> Generation:
    gen = session.get(
        Generation, require_id(generation_id, "Generation"), options=[selectinload(Generation.task)]
    )
    if gen is None:
        raise ApiError(404, "Generation not found.")
    return gen


@router.get("/generations", response_model=GenerationList)
def list_generations(
    session: SessionDep,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
    search: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query()] = None,
) -> GenerationList:
    query = select(Generation)
    search = clean_text(search).strip()
    if search:
        pattern = like(search)
        query = query.where(
            or_(
                Generation.text.ilike(pattern, escape="\\"), Generation.voice_name.ilike(pattern, escape="\\")
            )
        )
    if status:
        if status not in STATUSES:
            raise ApiError(
                422, f"Unknown status {status!r}; use one of: {', '.join(STATUSES)}.", param="status"
            )
        query = query.where(Generation.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(selectinload(Generation.task))
        .order_by(Generation.created_at.desc(), Generation.id)
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return GenerationList(
        generations=[generation_out(g, g.task) for g in rows],
        total=total,
        page=page,
        per_page=per_page,
        pages=pages(total, per_page),
    )


@router.get("/generations/{generation_id}", response_model=GenerationOut)
def get_generation(generation_id: str, session: SessionDep) -> GenerationOut:
    gen = _get(session, generation_id)
    return generation_out(gen, gen.task)


@router.get("/generations/{generation_id}/audio", response_class=FileResponse)
def generation_audio(
    generation_id: str, studio: StudioDep, session: SessionDep, download: bool = False
) -> FileResponse:
    gen = _get(session, generation_id)
    if gen.status != COMPLETED or not gen.audio_path:
        raise ApiError(404, f"This generation has no audio yet (it is {gen.status}).")
    path = studio.storage.resolve(gen.audio_path)
    if not path.is_file():
        raise ApiError(404, "The audio of this generation is missing from the data directory.")
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", gen.voice_name).strip("-") or "voice"
    filename = f"utter-{name}-{gen.id[:8]}.wav" if download else None
    return FileResponse(path, media_type="audio/wav", filename=filename)


@router.delete("/generations/{generation_id}", status_code=204)
def delete_generation(generation_id: str, studio: StudioDep, session: SessionDep) -> Response:
    """Delete a generation and its audio; a job still running for it is cancelled first."""
    gen = _get(session, generation_id)
    task = gen.task
    session.commit()  # end this read before the queue opens its own transaction (SQLite: one writer)
    if task is not None and task.status in ACTIVE:
        studio.queue.request_cancel(task.id, "the generation was deleted")
        studio.runner.cancel_local(task.id)
    session.delete(gen)
    session.commit()
    studio.storage.delete_generation(generation_id)
    return Response(status_code=204)
