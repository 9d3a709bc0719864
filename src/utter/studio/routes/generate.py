"""``POST /api/generate`` queues a job; ``/api/tasks`` shows jobs and cancels them.

The job is written to the database before the answer is sent, so it survives a restart; a
worker (worker.py, in this or another process) picks it up when the model is ready. While the
model downloads or loads, the job waits and its task says so; if the local model failed to
load, the request is refused with the reason, since waiting cannot help until a restart.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from ...audio import SAMPLE_RATE
from ...audio.encode import pcm16, wav_header
from ...server.http.errors import ApiError
from ...server.runtime import ModelState
from ..deps import SessionDep, Studio, StudioDep
from ..inputs import clean_text, get_row, require_id
from ..models import Generation, Task, Voice
from ..schemas import (
    COMPLETED,
    FAILED,
    QUEUED,
    STATUSES,
    GenerateIn,
    GenerateOut,
    TaskList,
    TaskOut,
)
from ..views import task_out
from .languages import resolve_language

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["generate"])

OPTION_FIELDS = {
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "greedy",
    "max_frames",
    "speaker",
    "instruct",
}


@router.post("/generate", status_code=202, response_model=GenerateOut)
def generate(body: GenerateIn, studio: StudioDep, session: SessionDep) -> GenerateOut:
    text = clean_text(body.text).strip()
    if not text:
        raise ApiError(422, "The text is empty: type something to say.", param="text")
    limit = studio.settings.max_text_chars
    if len(text) > limit:
        raise ApiError(422, f"The text is {len(text)} characters long; the limit is {limit}.", param="text")
    language = resolve_language(studio, body.language)
    if (body.voice_id is None) == (body.speaker is None):
        raise ApiError(
            422, "Give either voice_id (a stored voice) or speaker (a preset speaker).", param="voice_id"
        )
    body.instruct = clean_text(body.instruct).strip() or None
    if body.speaker is not None:
        voice_id, voice_name = None, _preset(studio, body.speaker, body.instruct)
        body.speaker = voice_name
    else:
        voice = session.get(Voice, body.voice_id) if re.fullmatch(r"[0-9a-f]{32}", body.voice_id) else None
        if voice is None:
            raise ApiError(404, "Voice not found: it may have been deleted.", param="voice_id")
        if body.instruct:
            raise ApiError(
                422,
                "Instructions steer the preset speakers of a CustomVoice 1.7B model; a cloned voice takes "
                "none (describe a new voice on the Design page instead).",
                param="instruct",
            )
        voice_id, voice_name = voice.id, voice.name
    provider = studio.provider
    if provider.kind == "local" and provider.state is ModelState.FAILED:
        status = provider.status()
        raise ApiError(
            503, f"The model is not available: {status.get('error')} {status.get('hint') or ''}".strip()
        )
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    gen = Generation(
        voice_id=voice_id,
        voice_name=voice_name,
        text=text,
        language=language,
        options=body.model_dump(include=OPTION_FIELDS, exclude_none=True, exclude_defaults=True),
        seed=seed,
        status=QUEUED,
    )
    task = Task(generation=gen, status=QUEUED, message="queued")
    session.add_all([gen, task])
    session.commit()
    studio.runner.wake()
    logger.info("queued generation %s (%d characters) as task %s", gen.id, len(text), task.id)
    return GenerateOut(task_id=task.id, generation_id=gen.id, status=task.status)


def _preset(studio: Studio, speaker: str, instruct: str | None) -> str:
    """The canonical name of a preset speaker of a CustomVoice model the studio runs; 404 if
    none has it, 422 for an instruction that model cannot follow."""
    models = studio.models
    holder = models.speaker_of(speaker) if models is not None else None
    if holder is None or holder.engine is None:
        known = [v["name"] for v in models.presets()] if models is not None else []
        hint = f" Preset speakers: {', '.join(known)}." if known else " No CustomVoice model is running."
        raise ApiError(404, f"Unknown preset speaker {speaker!r}.{hint}", param="speaker")
    engine = holder.engine
    if instruct and not engine.config.supports_instruct:
        raise ApiError(
            422, "This CustomVoice model takes no instructions (the 1.7B one does).", param="instruct"
        )
    return engine.speakers[list(engine.config.talker.speakers).index(engine.config.speaker_key(speaker))]


def _task(session: SessionDep, task_id: str) -> Task:
    return get_row(session, Task, task_id, "Task")


@router.get("/tasks", response_model=TaskList)
def list_tasks(
    studio: StudioDep,
    session: SessionDep,
    status: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> TaskList:
    query = select(Task)
    if status:
        unknown = [s for s in status if s not in STATUSES]
        if unknown:
            raise ApiError(
                422, f"Unknown status {unknown[0]!r}; use one of: {', '.join(STATUSES)}.", param="status"
            )
        query = query.where(Task.status.in_(status))
    rows = session.scalars(query.order_by(Task.created_at.desc(), Task.id).limit(limit)).all()
    model = studio.provider.status()
    return TaskList(tasks=[task_out(t, model) for t in rows])


@router.get("/tasks/{task_id}", response_model=TaskOut)
def get_task(task_id: str, studio: StudioDep, session: SessionDep) -> TaskOut:
    return task_out(_task(session, task_id), studio.provider.status())


@router.get("/tasks/{task_id}/live.wav", response_class=StreamingResponse)
async def live_audio(task_id: str, studio: StudioDep) -> StreamingResponse:
    """The audio of a running job as it is made: a WAV stream (unknown length, the usual
    convention for streamed WAV) that starts with what is made so far and follows the job until
    it ends. 404 when the job is not running in this process (queued, finished, or another
    worker's): then its generation's audio is the thing to play."""
    job = studio.runner.live_job(require_id(task_id, "Task"))
    if job is None:
        raise ApiError(404, "This job is not running here; play its generation's audio instead.")

    async def body():
        yield wav_header(SAMPLE_RATE)  # unknown length: the job is still running
        sent = 0
        while True:
            while sent < len(job.live):
                yield pcm16(job.live[sent]).astype("<i2").tobytes()
                sent += 1
            if job.done and sent >= len(job.live):
                return
            await asyncio.sleep(0.05)

    return StreamingResponse(body(), media_type="audio/wav", headers={"Cache-Control": "no-store"})


@router.post("/tasks/{task_id}/resume", response_model=TaskOut)
def resume_task(task_id: str, studio: StudioDep, session: SessionDep) -> TaskOut:
    """Continue a failed or cancelled job from the audio it made: its finished chunks are kept,
    the rest is generated (with the same seed, so the result is what an uninterrupted job makes)."""
    task = _task(session, require_id(task_id, "Task"))
    gen = session.get(Generation, task.generation_id)
    session.commit()  # end this read before the queue writes (SQLite: one writer)
    if gen is None or (gen.voice_id is None and not (gen.options or {}).get("speaker")):
        raise ApiError(409, "The voice of this generation was deleted; it cannot be resumed.")
    if studio.queue.resume(task.id) is None:
        raise ApiError(409, f"The task is {task.status}; only a failed or cancelled one can be resumed.")
    studio.runner.wake()
    session.expire_all()
    return task_out(_task(session, task.id), studio.provider.status())


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut)
def cancel_task(task_id: str, studio: StudioDep) -> TaskOut:
    """Cancel a job: a queued one ends at once, a running one within a moment (its stream stops).

    Cancelling a cancelled task is fine (the same answer again); a finished one is a 409.
    """
    task = studio.queue.request_cancel(require_id(task_id, "Task"))
    if task is None:
        raise ApiError(404, "Task not found.")
    if task.status in (COMPLETED, FAILED):
        raise ApiError(409, f"The task has already {task.status}; there is nothing to cancel.")
    studio.runner.cancel_local(task_id)
    return task_out(task, studio.provider.status())
