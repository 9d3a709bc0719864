"""Stored voices: create once from a recording, then speak in them by id.

``POST /v1/voices`` (multipart) computes the voice prompt once and saves it with the reference;
``GET /v1/audio/voices`` lists them in the shape Open WebUI reads (``{"voices": [{"id", "name"}]}``);
``DELETE /v1/voices/{id}`` removes one. Voices are files under the data dir and survive restarts.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from ..deps import EngineDep, ServiceDep
from ..http.errors import ApiError
from ..schemas import VoiceInfo, VoiceList
from ..speech.submit import check_language
from ..voices.store import VoiceNameTaken, VoiceNotFound
from .openai import unknown_voice

router = APIRouter(tags=["voices"])
MAX_NAME = 100


@router.post("/v1/voices", response_model=VoiceInfo, status_code=201)
async def create_voice(
    service: ServiceDep,
    engine: EngineDep,
    audio: Annotated[UploadFile, File(description="reference recording (wav, mp3, m4a, flac, ogg; 1-60 s)")],
    name: Annotated[str, Form(description="a name to show")],
    ref_text: Annotated[
        str | None, Form(description="transcript of the recording; made by transcription when left out")
    ] = None,
    language: Annotated[
        str, Form(description="default language for this voice (Auto: the transcribed one, if any)")
    ] = "Auto",
    x_vector_only: Annotated[bool, Form(description="ignore ref_text; speaker embedding only")] = False,
) -> dict[str, Any]:
    """Compute a voice from a recording and store it; answers its ``id`` for ``voice`` fields."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise ApiError(400, f"name must be 1 to {MAX_NAME} characters.", param="name")
    language = check_language(engine, language)
    data = await audio.read()
    if not data:
        raise ApiError(400, "The uploaded audio is empty.", param="audio")
    made = await service.references.encode(engine, data, ref_text, x_vector_only)
    if made.transcript is not None and language == "Auto" and made.transcript.language in engine.languages:
        language = made.transcript.language
    try:
        return await run_in_threadpool(
            service.voices.create, name, language, made.prompt, made.reference, service.holder.model
        )
    except VoiceNameTaken as exc:
        raise ApiError(409, str(exc), param="name") from exc


@router.get("/v1/audio/voices", response_model=VoiceList)
async def list_voices(service: ServiceDep) -> dict[str, Any]:
    """Stored voices (``category: cloned``), then the preset speakers of a CustomVoice model
    the server runs (``category: premade``)."""
    return {"voices": await run_in_threadpool(service.voices.list) + service.models.presets()}


@router.get("/v1/voices", response_model=VoiceList, include_in_schema=False)
async def list_voices_alias(service: ServiceDep) -> dict[str, Any]:
    return await list_voices(service)


@router.get("/v1/voices/{voice_id}", response_model=VoiceInfo)
async def get_voice(voice_id: str, service: ServiceDep) -> dict[str, Any]:
    try:
        return await run_in_threadpool(service.voices.get, voice_id)
    except VoiceNotFound as exc:
        raise unknown_voice(voice_id) from exc


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(voice_id: str, service: ServiceDep) -> dict[str, Any]:
    try:
        await run_in_threadpool(service.voices.delete, voice_id)
    except VoiceNotFound as exc:
        raise unknown_voice(voice_id) from exc
    return {"id": voice_id, "object": "voice", "deleted": True}
