"""History: list/search generations, fetch one or its audio, delete one (with its files)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ...audio import SAMPLE_RATE, load_audio
from ...audio.encode import FORMATS, encode_audio
from ...server.http.errors import ApiError
from ..deps import SessionDep, StudioDep
from ..inputs import clean_text, get_row
from ..models import Generation
from ..schemas import ACTIVE, STATUSES, GenerationList, GenerationOut
from ..search import matches
from ..views import MAX_PAGE, generation_out, page_of, pages

router = APIRouter(prefix="/api", tags=["generations"])


def _get(session: Session, generation_id: str) -> Generation:
    return get_row(session, Generation, generation_id, "Generation", options=[selectinload(Generation.task)])


@router.get("/generations", response_model=GenerationList)
def list_generations(
    session: SessionDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
    search: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query()] = None,
) -> GenerationList:
    query = select(Generation)
    search = clean_text(search).strip()
    if search:
        query = query.where(matches(Generation.search_key, search))
    if status:
        if status not in STATUSES:
            raise ApiError(
                422, f"Unknown status {status!r}; use one of: {', '.join(STATUSES)}.", param="status"
            )
        query = query.where(Generation.status == status)
    order = (Generation.created_at.desc(), Generation.id)
    rows, total = page_of(session, query, page, per_page, *order, options=[selectinload(Generation.task)])
    return GenerationList(
        generations=[generation_out(g, g.task, search) for g in rows],
        total=total,
        page=page,
        per_page=per_page,
        pages=pages(total, per_page),
    )


@router.get("/generations/{generation_id}", response_model=GenerationOut)
def get_generation(generation_id: str, session: SessionDep) -> GenerationOut:
    gen = _get(session, generation_id)
    return generation_out(gen, gen.task)


DOWNLOAD_FORMATS = ("wav", "mp3", "opus", "flac")


@router.get("/generations/{generation_id}/audio", response_class=FileResponse)
def generation_audio(
    generation_id: str,
    studio: StudioDep,
    session: SessionDep,
    download: bool = False,
    format: Annotated[str, Query(description="wav (as stored), mp3, opus (Ogg) or flac")] = "wav",
) -> Response:
    gen = _get(session, generation_id)
    if format not in DOWNLOAD_FORMATS:
        raise ApiError(
            422, f"Unknown format {format!r}; choose one of: {', '.join(DOWNLOAD_FORMATS)}.", param="format"
        )
    if gen.status in ACTIVE or not gen.audio_path:  # a failed or cancelled one may keep what it made
        raise ApiError(404, f"This generation has no audio yet (it is {gen.status}).")
    path = studio.storage.resolve(gen.audio_path)
    if not path.is_file():
        raise ApiError(404, "The audio of this generation is missing from the data directory.")
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", gen.voice_name).strip("-") or "voice"
    media_type, extension = FORMATS[format]
    filename = f"utter-{name}-{gen.id[:8]}.{extension}" if download else None
    if format == "wav":
        return FileResponse(path, media_type=media_type, filename=filename)
    audio, _ = load_audio(path, target_sr=SAMPLE_RATE)
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'} if filename else None
    return Response(encode_audio(audio, format), media_type=media_type, headers=headers)


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
