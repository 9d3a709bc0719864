"""The seed's voice-clone API, unchanged for its clients: ``POST /clone`` and ``POST /clone-batch``.

Both take the reference audio with every call (base64, or a URL when the server allows it);
its prompt is cached by content, so repeating a reference costs nothing after the first call.
"""

from __future__ import annotations

import asyncio
import base64
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...audio import SAMPLE_RATE
from ...audio.encode import encode_audio, make_encoder
from ...engine.sched.batcher import Batcher
from ..deps import BatcherDep, Service, ServiceDep
from ..http.errors import ApiError
from ..schemas import CloneBatchRequest, CloneBatchResponse, CloneRequest
from ..speech.longform import AnyStream
from ..speech.submit import (
    check_language,
    check_text,
    collect,
    encoded_body,
    frames_from_max_new_tokens,
    generation_options,
    open_audio_stream,
    submit,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["voice clone (seed API)"])

WAV_RESPONSE = {200: {"content": {"audio/wav": {}}, "description": "16-bit PCM mono WAV at 24 kHz"}}


async def start_clone(body: CloneRequest, service: Service, batcher: Batcher) -> tuple[AnyStream, str]:
    """Check a /clone body (also /submit-job's), make its voice and submit it to the batcher.
    Returns the running stream and the checked text."""
    engine, settings = batcher.engine, service.settings
    text = check_text(body.text, settings)
    language = check_language(engine, body.language)
    data = await service.references.audio_bytes(body.ref_audio_base64, body.ref_audio_url)
    voice = await service.references.voice(engine, data, body.ref_text, body.x_vector_only)
    options = generation_options(engine, body, frames_from_max_new_tokens(body.max_new_tokens))
    return submit(batcher, text, voice, language, options, settings), text


@router.post("/clone", responses=WAV_RESPONSE, response_class=Response)
async def clone(body: CloneRequest, service: ServiceDep, batcher: BatcherDep, http: Request) -> Response:
    """Speak ``text`` in the voice of the reference recording; answers a WAV file.

    With ``stream: true`` the WAV arrives chunk by chunk while it is generated (its header
    declares an unknown length, 0xFFFFFFFF, the usual convention for streamed WAV).
    """
    settings = service.settings
    stream, _ = await start_clone(body, service, batcher)
    headers = {"Content-Disposition": 'attachment; filename="clone.wav"'}
    if body.stream:
        chunks, first = await open_audio_stream(stream, settings)
        body_iter = encoded_body(chunks, first, make_encoder("wav"))
        return StreamingResponse(body_iter, media_type="audio/wav", headers=headers)
    audio = await collect(stream, settings, http)
    headers |= {
        "X-Audio-Duration": f"{len(audio) / SAMPLE_RATE:.3f}",
        "X-Finish-Reason": stream.finish_reason or "",
    }
    return Response(encode_audio(audio, "wav"), media_type="audio/wav", headers=headers)


@router.post("/clone-batch", response_model=CloneBatchResponse)
async def clone_batch(
    body: CloneBatchRequest, service: ServiceDep, batcher: BatcherDep, http: Request
) -> CloneBatchResponse:
    """Several texts in one voice, generated together as one batch; base64 WAV files in order.

    A client that goes away (or the generation timeout) cancels every text of the batch."""
    engine, settings = batcher.engine, service.settings
    if not body.texts:
        raise ApiError(400, "texts is empty: give at least one text.", param="texts")
    if len(body.texts) > settings.max_batch_items:
        message = f"texts has {len(body.texts)} items; at most {settings.max_batch_items} per request."
        raise ApiError(400, message, param="texts")
    languages = body.languages if body.languages is not None else ["Auto"] * len(body.texts)
    if len(languages) != len(body.texts):
        message = f"languages has {len(languages)} items but texts has {len(body.texts)}; give one per text."
        raise ApiError(400, message, param="languages")
    texts = [check_text(t, settings, f"texts[{i}]") for i, t in enumerate(body.texts)]
    languages = [check_language(engine, lang, f"languages[{i}]") for i, lang in enumerate(languages)]
    free = batcher.max_queue - batcher.queued
    if len(texts) > free:
        message = f"The server is busy (room for {max(free, 0)} more requests); retry shortly."
        raise ApiError(429, message, {"Retry-After": str(settings.retry_after_s)})
    data = await service.references.audio_bytes(body.ref_audio_base64, body.ref_audio_url)
    voice = await service.references.voice(engine, data, body.ref_text, body.x_vector_only)
    options = generation_options(engine, body, frames_from_max_new_tokens(body.max_new_tokens))
    streams = []
    try:
        for text, language in zip(texts, languages):
            streams.append(submit(batcher, text, voice, language, options, settings))
        audios = await asyncio.gather(*(collect(s, settings, http) for s in streams))
    except BaseException:
        for s in streams:
            s.cancel()
        raise
    files = []
    for i, (text, audio) in enumerate(zip(texts, audios)):
        wav = encode_audio(audio, "wav")
        b64 = base64.b64encode(wav).decode()
        files.append({"index": i, "text": text, "audio_base64": b64, "size_bytes": len(wav)})
    return CloneBatchResponse(status="success", count=len(files), audio_files=files)
