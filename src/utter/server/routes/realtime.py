"""``WS /v1/realtime/speech``: text in while audio comes out, for voice agents.

Protocol (JSON text messages; audio as binary messages):

* client: ``{"type": "start", "voice": ID, "language", "response_format": "pcm", "seed", ...}``
  first (the sampling fields of ``/v1/audio/speech``), then ``{"type": "text", "text": "..."}``
  as the reply is written, ``{"type": "flush"}`` to make the text so far final (a word that
  more characters could extend is otherwise held back), and ``{"type": "close"}`` when the
  text is complete.
* server: ``{"type": "started", "format", "sample_rate"}``, then binary messages with the audio
  (pcm: raw s16le, 24 kHz mono; or wav/mp3/opus/aac/flac bytes of one stream), then
  ``{"type": "done", "reason", "frames", "audio_seconds"}`` and a normal close; or
  ``{"type": "error", "message", "code"}`` and a close (1008 for the client's fault, 1011 for
  the server's).

The API key (when the server has one) comes as a header or as ``?api_key=`` (browsers cannot
set headers on a WebSocket); without it the handshake is refused.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from ...audio.encode import make_encoder
from ..deps import Service
from ..http.errors import ApiError, is_storage_full
from ..runtime import ModelNotReady
from ..schemas import RealtimeStart
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
from ..speech.submit import check_language, generation_options
from ..voices.store import VoiceNotFound

logger = logging.getLogger(__name__)
router = APIRouter(tags=["realtime"])


class RealtimeSession(TextInSession):
    async def read(self) -> Incoming:
        raw = await receive_text(self.ws)
        try:
            message = json.loads(raw)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            raise SessionError('Each message is a JSON object with a "type".') from None
        if kind == "text":
            text = message.get("text")
            if not isinstance(text, str):
                raise SessionError('A "text" message needs a string "text".')
            return Incoming(text=text)
        if kind in ("flush", "close"):
            return Incoming(flush=kind == "flush", close=kind == "close")
        raise SessionError(f"Unknown message type {kind!r}: use text, flush or close.")

    async def send_audio(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def send_done(self, stream: PartedStream) -> None:
        frames = stream.frames
        done = {
            "type": "done",
            "reason": stream.finish_reason,
            "frames": frames,
            "audio_seconds": frames * 0.08,
        }
        await self.ws.send_text(json.dumps(done))

    async def send_error(self, message: str, status: int) -> None:
        await self.ws.send_text(json.dumps({"type": "error", "message": message, "code": status}))


async def _start(ws: WebSocket, service: Service) -> tuple[RealtimeStart, dict]:
    try:
        body = RealtimeStart.model_validate_json(await receive_text(ws))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise SessionError(
            f'The first message must be {{"type": "start", "voice": ...}}: {where}: {first["msg"]}.'
        ) from None
    try:
        meta = await run_in_threadpool(service.voices.resolve, body.voice)
    except VoiceNotFound:
        raise SessionError(f"Unknown voice {body.voice!r}: GET /v1/audio/voices lists them.", 404) from None
    return body, meta


@router.websocket("/v1/realtime/speech")
async def realtime_speech(ws: WebSocket) -> None:
    service: Service = ws.app.state.service
    if not key_ok(key_of(ws), service.settings.api_key_value()):
        await ws.close(POLICY_VIOLATION, "a valid API key is required")
        return
    await ws.accept()
    try:
        body, meta = await _start(ws, service)
        batcher = await service.holder.wait_ready(service.settings.ready_timeout_s)
        prompt = await run_in_threadpool(service.voices.prompt, meta["id"])
        language = check_language(batcher.engine, body.language or meta.get("language"))
        options = generation_options(batcher.engine, body, body.max_frames)
        encoder = make_encoder(body.response_format)
    except WebSocketDisconnect:
        return
    except ModelNotReady as exc:
        await RealtimeSession(ws, service, make_encoder("pcm"))._fail(exc.detail, 503)
        return
    except (SessionError, ApiError) as exc:
        session = RealtimeSession(ws, service, make_encoder("pcm"))
        await session._fail(exc.message, exc.status)
        return
    except Exception as exc:  # noqa: BLE001 - e.g. the voice store's database is down: say so, close
        logger.error("the session could not start: %s", exc, exc_info=not is_storage_full(exc))
        await RealtimeSession(ws, service, make_encoder("pcm"))._fail(SESSION_START_FAILED, 503)
        return
    await ws.send_text(json.dumps({"type": "started", "format": body.response_format, "sample_rate": 24000}))
    await RealtimeSession(ws, service, encoder).serve(batcher, prompt, language, options)
