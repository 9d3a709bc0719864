"""Voices: clone one from an upload, list/search, rename or re-transcribe, delete, hear the reference.

An upload is checked on the server before anything is stored: its size (also capped while it
arrives, see limits.py), that a real decoder can read it (wav, mp3, m4a, flac, ogg ...), and its
length. The recording is kept decoded as 24 kHz mono WAV; the voice prompt the model needs is
computed from it on first use (see provider.py), so cloning works while the model downloads.
"""

from __future__ import annotations

import logging
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from ...audio import SAMPLE_RATE, AudioError, TooLong, load_audio
from ...server.http.errors import ApiError
from ..deps import SessionDep, Studio, StudioDep
from ..inputs import clean_text, get_row
from ..models import Voice, new_id
from ..schemas import CloneOut, VoiceList, VoiceOut, VoiceUpdate
from ..search import matches
from ..views import MAX_PAGE, page_of, pages, voice_out
from ..voice_library import name_taken, remove_voice
from .languages import resolve_language

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["voices"])

MAX_NAME_CHARS = 100


def _name(value: str | None) -> str:
    name = " ".join(clean_text(value).split())
    if not name:
        raise ApiError(422, "Give the voice a name.", param="name")
    if len(name) > MAX_NAME_CHARS:
        raise ApiError(
            422, f"The name is too long ({len(name)} characters; at most {MAX_NAME_CHARS}).", param="name"
        )
    return name


def _transcript(studio: Studio, value: str | None) -> str:
    text = " ".join(clean_text(value).split())
    if not text:
        raise ApiError(
            422, "Give the transcript: the exact words spoken in the recording.", param="transcript"
        )
    limit = studio.settings.max_transcript_chars
    if len(text) > limit:
        raise ApiError(
            422, f"The transcript is too long ({len(text)} characters; at most {limit}).", param="transcript"
        )
    return text


def _get_voice(session: Session, voice_id: str) -> Voice:
    return get_row(session, Voice, voice_id, "Voice", param="voice_id")


def read_reference(studio: Studio, audio: UploadFile) -> np.ndarray:
    """The upload decoded to 24 kHz mono, checked for size, format and length (422/413)."""
    settings = studio.settings
    data = audio.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413, f"The audio file is too large: the limit is {settings.max_upload_mb:g} MB.", param="audio"
        )
    lo, hi = settings.min_ref_seconds, settings.max_ref_seconds
    try:  # refused from the container's header, or decoded no further than the limit
        wav, _ = load_audio(data, target_sr=SAMPLE_RATE, max_seconds=hi)
    except TooLong as exc:
        message = f"The recording is {exc.seconds:.1f} s long; use one between {lo:g} and {hi:g} seconds."
        raise ApiError(422, message, param="audio") from exc
    except AudioError as exc:
        raise ApiError(
            422, str(exc).replace("the uploaded audio", f"{audio.filename or 'the upload'!r}"), param="audio"
        ) from exc
    seconds = len(wav) / SAMPLE_RATE
    if not lo <= seconds <= hi:
        raise ApiError(
            422,
            f"The recording is {seconds:.1f} s long; use one between {lo:g} and {hi:g} seconds.",
            param="audio",
        )
    return wav


def _transcribe(studio: Studio, wav: np.ndarray, language: str) -> tuple[str, str]:
    """(transcript, language) made by the transcription model for a clone sent without words;
    422 when there is none to make it (the page then asks for the words or transcript-free mode)."""
    asr = studio.asr
    transcriber = asr.wait_ready_sync(studio.settings.asr_wait_seconds) if asr.enabled else None
    if transcriber is None:
        raise ApiError(
            422,
            "Give the transcript: the exact words spoken in the recording, or tick transcript-free mode "
            f"({asr.unavailable_reason()}).",
            param="transcript",
        )
    made = transcriber.transcribe(wav, SAMPLE_RATE)
    if not made.text:
        raise ApiError(
            422,
            "No words were recognised in the recording: give the transcript, or use transcript-free mode.",
            param="transcript",
        )
    if language == "Auto" and made.language in studio.provider.languages():
        language = made.language
    return _transcript(studio, made.text), language


@router.post("/clone", status_code=201, response_model=CloneOut)
def clone(
    studio: StudioDep,
    session: SessionDep,
    name: Annotated[str, Form()],
    audio: Annotated[UploadFile, File(description="reference recording: wav, mp3, m4a, flac, ogg ...")],
    transcript: Annotated[
        str | None, Form(description="the words spoken; transcribed when left out (if the studio can)")
    ] = None,
    language: Annotated[str, Form()] = "Auto",
    x_vector_only: Annotated[bool, Form()] = False,
) -> CloneOut:
    name = _name(name)
    if name_taken(session, name):
        raise ApiError(409, f"A voice named “{name}” already exists; choose another name.", param="name")
    language = resolve_language(studio, language)
    given = " ".join(clean_text(transcript).split())
    text = None if x_vector_only or not given else _transcript(studio, given)
    wav = read_reference(studio, audio)
    transcribed = not x_vector_only and text is None
    if transcribed:
        text, language = _transcribe(studio, wav, language)
    seconds = len(wav) / SAMPLE_RATE
    voice_id = new_id()
    try:
        path = studio.storage.save_voice_audio(voice_id, wav)
        voice = Voice(
            id=voice_id,
            name=name,
            language=language,
            reference_transcript=text,
            reference_seconds=round(seconds, 3),
            audio_path=studio.storage.relative(path),
        )
        session.add(voice)
        session.commit()
    except BaseException:
        studio.storage.delete_voice(voice_id)  # nothing half-made stays behind
        raise
    logger.info(
        "cloned voice %s (%s, %.1f s%s)", voice_id, name, seconds, ", transcribed" if transcribed else ""
    )
    return CloneOut(id=voice_id, name=name, language=language, transcript=text, transcribed=transcribed)


@router.get("/voices", response_model=VoiceList)
def list_voices(
    session: SessionDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
    search: Annotated[str | None, Query(max_length=200)] = None,
) -> VoiceList:
    query = select(Voice)
    search = clean_text(search).strip()
    if search:
        query = query.where(matches(Voice.search_key, search))
    rows, total = page_of(session, query, page, per_page, Voice.created_at.desc(), Voice.id)
    return VoiceList(
        voices=[voice_out(v, search) for v in rows],
        total=total,
        page=page,
        per_page=per_page,
        pages=pages(total, per_page),
    )


@router.get("/voices/{voice_id}", response_model=VoiceOut)
def get_voice(voice_id: str, session: SessionDep) -> VoiceOut:
    return voice_out(_get_voice(session, voice_id))


@router.patch("/voices/{voice_id}", response_model=VoiceOut)
def update_voice(voice_id: str, body: VoiceUpdate, studio: StudioDep, session: SessionDep) -> VoiceOut:
    voice = _get_voice(session, voice_id)
    fields = body.model_fields_set
    if not fields:
        raise ApiError(422, "Nothing to change: give name, reference_transcript or language.")
    if "name" in fields:
        name = _name(body.name)
        if name_taken(session, name, except_id=voice.id):
            raise ApiError(409, f"A voice named “{name}” already exists; choose another name.", param="name")
        voice.name = name
    if "language" in fields:
        voice.language = resolve_language(studio, body.language)
    new_transcript = None
    if "reference_transcript" in fields:
        new_transcript = _transcript(studio, body.reference_transcript)
        voice.reference_transcript = new_transcript
    session.commit()
    if new_transcript is not None:
        studio.storage.delete_voice_prompts(voice.id)  # the voice is computed again from the new words
    return voice_out(voice)


@router.delete("/voices/{voice_id}", status_code=204)
def delete_voice(voice_id: str, studio: StudioDep, session: SessionDep) -> Response:
    """Delete a voice and its files. Its unfinished jobs are cancelled; finished audio is kept."""
    voice = _get_voice(session, voice_id)
    session.commit()  # end this read before the queue writes (SQLite allows one writer)
    remove_voice(studio, voice.id)
    return Response(status_code=204)


@router.get("/voices/{voice_id}/preview", response_class=FileResponse)
def preview(voice_id: str, studio: StudioDep, session: SessionDep) -> FileResponse:
    voice = _get_voice(session, voice_id)
    path = studio.storage.resolve(voice.audio_path)
    if not path.is_file():
        raise ApiError(404, "The recording of this voice is missing from the data directory.")
    return FileResponse(path, media_type="audio/wav")
