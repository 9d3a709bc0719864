"""ElevenLabs-compatible text to speech for stored voices: a drop-in for agent frameworks.

Pipecat, LiveKit Agents and many apps ship ElevenLabs clients; pointed at this server (its base
URL and key) they speak in our stored voices:

* ``POST /v1/text-to-speech/{voice_id}`` and ``.../stream``: ``{"text", "model_id",
  "language_code", "seed", "voice_settings", ...}`` with ``?output_format=mp3_44100_128``
  (also ``pcm_16000``..``pcm_48000``, ``ulaw_8000``, ``alaw_8000``, ``opus_48000_64`` ...).
  Both stream the audio as it is made.
* ``WS /v1/text-to-speech/{voice_id}/stream-input``: ElevenLabs' input-streaming protocol
  (``{"text": " "}`` to open, text messages with optional ``flush``, ``{"text": ""}`` to end;
  ``{"audio": base64, "isFinal": false}`` messages, then ``{"isFinal": true}``).
* ``GET /v1/voices`` and ``/v1/voices/{voice_id}`` (``routes/voices.py``) carry ``voice_id``.

The key is accepted as ``xi-api-key`` (and as everywhere else). Fields we cannot honour
(``voice_settings``, ``previous_text``, ``pronunciation_dictionary_locators``, alignment, ...)
are accepted and ignored, as ElevenLabs does for models without them; ``model_id`` is ignored
(the server runs one model).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from ...asr.whisper import LANGUAGE_NAMES
from ...audio.formats import FormatEncoder, OutputFormat, parse_output_format
from ...engine.engine import Engine
from ...engine.sampling import MAX_SEED, GenerationOptions
from ..deps import BatcherDep, Service, ServiceDep
from ..http.errors import ApiError, is_storage_full
from ..runtime import ModelNotReady
from ..schemas import ApiModel, SamplingFields
from ..speech.longform import PartedStream
from ..speech.realtime import (
    POLICY_VIOLATION,
    SESSION_START_FAILED,
    Incoming,
    SessionError,
    TextInSession,
    key_of,
    key_ok,
    receive_text,
)
from ..speech.submit import (
    check_language,
    check_text,
    encoded_body,
    generation_options,
    open_audio_stream,
    submit,
)
from ..voices.store import VoiceNotFound
from .openai import unknown_voice

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ElevenLabs-compatible"])
ws_router = APIRouter(tags=["ElevenLabs-compatible"])

DEFAULT_FORMAT = "mp3_44100_128"


class ElevenLabsSpeech(ApiModel):
    """The body of ElevenLabs' text-to-speech calls; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: str
    model_id: str | None = None
    language_code: str | None = Field(default=None, description="ISO 639-1; default: the voice's language")
    seed: int | None = Field(default=None, ge=0, le=4294967295)
    voice_settings: dict[str, Any] | None = None


def _format(name: str | None) -> OutputFormat:
    try:
        return parse_output_format(name or DEFAULT_FORMAT)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="output_format") from exc


def _language(engine: Engine, code: str | None, voice_language: str | None) -> str:
    if not code:
        return check_language(engine, voice_language)
    name = LANGUAGE_NAMES.get(code.strip().lower())
    if name is None:
        codes = ", ".join(sorted(LANGUAGE_NAMES))
        raise ApiError(
            400, f"language_code {code!r} is not supported; use one of: {codes}.", param="language_code"
        )
    return check_language(engine, name, "language_code")


async def _voice(service: Service, voice_id: str) -> tuple[dict[str, Any], Any]:
    try:
        meta = await run_in_threadpool(service.voices.resolve, voice_id)
        return meta, await run_in_threadpool(service.voices.prompt, meta["id"])
    except VoiceNotFound as exc:
        raise unknown_voice(voice_id) from exc


def _options(engine: Engine, seed: int | None) -> GenerationOptions:
    """Sampling as the checkpoint says (``voice_settings`` have no equivalent here), with the seed."""
    return generation_options(engine, SamplingFields(seed=seed), None)


@router.post("/v1/text-to-speech/{voice_id}", response_class=StreamingResponse)
@router.post("/v1/text-to-speech/{voice_id}/stream", response_class=StreamingResponse)
async def text_to_speech(
    voice_id: str,
    body: ElevenLabsSpeech,
    service: ServiceDep,
    batcher: BatcherDep,
    output_format: str | None = Query(default=DEFAULT_FORMAT),
    optimize_streaming_latency: int | None = Query(default=None, include_in_schema=False),
    enable_logging: bool | None = Query(default=None, include_in_schema=False),
) -> StreamingResponse:
    """Speak ``text`` in a stored voice (ElevenLabs' ``convert`` and ``stream``: both stream
    the audio as it is made)."""
    fmt = _format(output_format)
    text = check_text(body.text, service.settings)
    meta, prompt = await _voice(service, voice_id)
    engine = batcher.engine
    language = _language(engine, body.language_code, meta.get("language"))
    stream = submit(batcher, text, prompt, language, _options(engine, body.seed), service.settings)
    chunks, first = await open_audio_stream(stream, service.settings)
    return StreamingResponse(encoded_body(chunks, first, FormatEncoder(fmt)), media_type=fmt.content_type)


class StreamInputSession(TextInSession):
    """ElevenLabs' ``stream-input`` messages over the shared session."""

    async def read(self) -> Incoming:
        try:
            message = json.loads(await receive_text(self.ws))
            text = message.get("text")
        except (ValueError, AttributeError):
            raise SessionError('Each message is a JSON object with a "text" field.') from None
        if not isinstance(text, str):
            raise SessionError('Each message needs a "text" string ("" ends the input).')
        if text == "":
            return Incoming(close=True)
        return Incoming(text=text, flush=bool(message.get("flush")))

    async def send_audio(self, data: bytes) -> None:
        payload = {"audio": base64.b64encode(data).decode(), "isFinal": False}
        await self.ws.send_text(json.dumps({**payload, "normalizedAlignment": None, "alignment": None}))

    async def send_done(self, stream: PartedStream) -> None:
        await self.ws.send_text(json.dumps({"isFinal": True}))

    async def send_error(self, message: str, status: int) -> None:
        await self.ws.send_text(json.dumps({"message": message, "error": "error", "code": status}))


@ws_router.websocket("/v1/text-to-speech/{voice_id}/stream-input")
async def stream_input(ws: WebSocket, voice_id: str) -> None:
    service: Service = ws.app.state.service
    expected = service.settings.api_key_value()
    given = key_of(ws)
    if given is not None and not key_ok(given, expected):
        await ws.close(POLICY_VIOLATION, "invalid API key")
        return
    await ws.accept()
    params = ws.query_params
    session: StreamInputSession | None = None
    try:
        fmt = _format(params.get("output_format"))
        session = StreamInputSession(ws, service, FormatEncoder(fmt))
        first = json.loads(await receive_text(ws))  # {"text": " ", voice_settings, xi_api_key ...}
        if not isinstance(first, dict):
            raise SessionError('The first message must be a JSON object like {"text": " "}.')
        if given is None:
            auth = first.get("authorization")
            auth = auth if isinstance(auth, str) else ""
            key = first.get("xi_api_key") or (auth[7:].strip() if auth[:7].lower() == "bearer " else auth)
            if not key_ok(key, expected):
                raise SessionError("A valid API key is required (xi-api-key).", 401)
        batcher = await service.holder.wait_ready(service.settings.ready_timeout_s)
        meta, prompt = await _voice(service, voice_id)
        language = _language(batcher.engine, params.get("language_code"), meta.get("language"))
        options = _options(batcher.engine, _seed(params.get("seed")))
        text = first.get("text")
        if isinstance(text, str) and text.strip():  # the opening " " is not part of the text
            session.add(Incoming(text=text, flush=bool(first.get("flush"))))
    except WebSocketDisconnect:
        return
    except ValueError:
        await _fail(ws, session, "Messages are JSON objects.", 400)
        return
    except ModelNotReady as exc:
        await _fail(ws, session, exc.detail, 503)
        return
    except (SessionError, ApiError) as exc:
        await _fail(ws, session, exc.message, exc.status)
        return
    except Exception as exc:  # noqa: BLE001 - e.g. the voice store's database is down: say so, close
        logger.error("the session could not start: %s", exc, exc_info=not is_storage_full(exc))
        await _fail(ws, session, SESSION_START_FAILED, 503)
        return
    await session.serve(batcher, prompt, language, options)


def _seed(value: str | None) -> int | None:
    """The ``seed`` query parameter: none, or a whole number below 2^63 (as the HTTP APIs take)."""
    if not value:
        return None
    if not (
        value.isascii() and value.isdigit() and len(value) <= len(str(MAX_SEED)) and int(value) <= MAX_SEED
    ):
        raise SessionError(f"seed must be a whole number from 0 to {MAX_SEED}.")
    return int(value)


async def _fail(ws: WebSocket, session: StreamInputSession | None, message: str, status: int) -> None:
    if session is None:
        session = StreamInputSession(
            ws, ws.app.state.service, FormatEncoder(parse_output_format("pcm_24000"))
        )
    await session._fail(message, status)
