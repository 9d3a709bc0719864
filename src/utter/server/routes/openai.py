"""OpenAI-compatible speech: ``POST /v1/audio/speech`` with stored voices, plus model listings.

``voice`` names a stored voice (``POST /v1/voices``; its prompt was computed once, so a request
costs only generation) or a preset speaker of a CustomVoice model; ``instructions`` say how to
speak (CustomVoice 1.7B) or describe the voice (VoiceDesign). ``model`` picks one of the server's
models (see models.py); OpenAI's own names ("tts-1") mean its main model. Formats that carry no
total length (pcm, mp3, opus, aac) stream by default; wav and flac come whole, with exact
headers, unless ``stream_format`` asks for streaming ("audio": raw bytes, "sse": events).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...audio.encode import FORMATS, LENGTH_IN_HEADER, AudioEncoder, encode_audio, make_encoder
from ...engine.sched.batcher import Batcher
from ...engine.voice import VoicePrompt
from ..deps import Service, ServiceDep
from ..http.errors import ApiError
from ..schemas import SpeechRequest
from ..speech.submit import (
    AudioChunks,
    check_language,
    check_text,
    collect,
    encoded_body,
    generation_options,
    open_audio_stream,
    submit,
)
from ..voices.store import VoiceNotFound

logger = logging.getLogger(__name__)
router = APIRouter(tags=["OpenAI-compatible"])

AUDIO_RESPONSE = {200: {"content": {mime: {} for mime, _ in FORMATS.values()}, "description": "audio"}}


def unknown_voice(voice: str) -> ApiError:
    message = (
        f"Unknown voice {voice!r}: create one with POST /v1/voices and use its id "
        "(GET /v1/audio/voices lists them)."
    )
    return ApiError(404, message, param="voice")


async def _speaker(
    service: Service, body: SpeechRequest
) -> tuple[Batcher, VoicePrompt | None, dict, str | None]:
    """(batcher, stored voice, its listing, preset speaker) for a request: the model it names,
    else the CustomVoice model whose preset speaker it names, else the main model."""
    models = service.models
    try:
        meta: dict | None = await run_in_threadpool(service.voices.resolve, body.voice)
    except VoiceNotFound:
        meta = None
    holder = models.named(body.model)
    if holder is None:  # a stored voice first (the main model's), then a preset speaker
        holder = models.main if meta is not None else models.speaker_of(body.voice) or models.main
    batcher = await holder.wait_ready(service.settings.ready_timeout_s)
    variant = batcher.engine.variant
    if variant == "custom_voice":
        return batcher, None, {}, body.voice
    if variant == "voice_design":
        if not (body.instructions or "").strip():
            raise ApiError(
                400,
                "A VoiceDesign model makes the voice from `instructions`: describe the voice.",
                param="instructions",
            )
        return batcher, None, {}, None
    if meta is None:
        raise unknown_voice(body.voice)
    return batcher, await run_in_threadpool(service.voices.prompt, meta["id"]), meta, None


@router.post("/v1/audio/speech", responses=AUDIO_RESPONSE, response_class=Response)
async def speech(body: SpeechRequest, service: ServiceDep, http: Request) -> Response:
    """Speak ``input`` in a stored voice or as a preset speaker, as OpenAI's speech endpoint does."""
    settings = service.settings
    text = check_text(body.input, settings, "input")
    batcher, prompt, meta, speaker = await _speaker(service, body)
    engine = batcher.engine
    language = check_language(engine, body.language or meta.get("language"))
    options = generation_options(engine, body, body.max_frames)
    stream = submit(
        batcher, text, prompt, language, options, settings, speaker=speaker, instruct=body.instructions
    )
    fmt = body.response_format
    mime, ext = FORMATS[fmt]
    headers = {"Content-Disposition": f'inline; filename="speech.{ext}"'}
    if body.stream_format == "sse":
        chunks, first = await open_audio_stream(stream, settings)
        events = sse_body(chunks, first, make_encoder(fmt, body.speed), len(text))
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    if body.stream_format == "audio" or fmt not in LENGTH_IN_HEADER:
        chunks, first = await open_audio_stream(stream, settings)
        return StreamingResponse(
            encoded_body(chunks, first, make_encoder(fmt, body.speed)), media_type=mime, headers=headers
        )
    audio = await collect(stream, settings, http)
    data = await run_in_threadpool(encode_audio, audio, fmt, body.speed)
    return Response(data, media_type=mime, headers=headers)


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def sse_body(
    chunks: AudioChunks, first: np.ndarray | None, encoder: AudioEncoder, input_chars: int
) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE: ``speech.audio.delta`` events with base64 audio, then ``speech.audio.done``."""
    frames = 0
    try:
        pcm = first
        while pcm is not None:
            data = encoder.write(pcm)
            if data:
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            pcm = await chunks.next()
        tail = encoder.close()
        if tail:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(tail).decode()})
        frames = chunks.stream.frames
        usage = {"input_tokens": input_chars, "output_tokens": frames, "total_tokens": input_chars + frames}
        yield _event({"type": "speech.audio.done", "usage": usage})
    except ApiError as exc:
        yield _event({"type": "error", "error": {"message": exc.message, "code": exc.status}})
    finally:
        await chunks.close()


@router.get("/v1/models")
async def models(service: ServiceDep) -> dict[str, Any]:
    """OpenAI's model list: the models this server runs (main first), with their kind."""
    data = [
        {"id": h.model, "object": "model", "owned_by": "utter", "kind": h.variant, "state": h.state.value}
        for h in service.models.all
    ]
    return {"object": "list", "data": data}


@router.get("/v1/audio/models")
async def audio_models(service: ServiceDep) -> dict[str, Any]:
    """The listing Open WebUI reads from custom OpenAI-compatible TTS servers."""
    return {"models": [{"id": h.model, "name": h.model} for h in service.models.all]}
