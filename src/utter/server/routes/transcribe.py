"""``POST /v1/audio/transcriptions``: OpenAI's transcription API, answered by the server's Whisper.

Clients of OpenAI's SDK (``client.audio.transcriptions.create``) work unchanged; the studio's
Transcribe button and references sent without a transcript use the same model (``asr.py``).
``model``, ``prompt`` and ``temperature`` are accepted and ignored: there is one model, decoded
greedily so a transcript is reproducible. Subtitle formats (srt, vtt) are refused.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ...asr.whisper import LANGUAGE_NAMES, SAMPLE_RATE
from ...audio import TooLong, load_audio
from ..deps import ServiceDep
from ..http.errors import ApiError

router = APIRouter(tags=["transcription"])
FORMATS = ("json", "text", "verbose_json")
# verbose_json names a language in lower case ("english") as OpenAI does; one beyond the ten
# Qwen3-TTS speaks is given by its Whisper code ("nl").


def _decode(data: bytes, max_seconds: float) -> Any:
    try:
        wav, _ = load_audio(data, target_sr=SAMPLE_RATE, max_seconds=max_seconds)
    except TooLong as exc:
        raise ApiError(
            400,
            f"The audio is {exc.seconds:.0f} s long; at most {max_seconds:g} s is transcribed.",
            param="file",
        ) from exc
    return wav


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="audio: wav, mp3, m4a, flac, ogg, webm ...")],
    model: Annotated[str | None, Form(description="accepted and ignored: the server has one model")] = None,
    language: Annotated[
        str | None, Form(description="ISO-639-1 code (en, zh ...); detected if left out")
    ] = None,
    prompt: Annotated[str | None, Form(description="accepted and ignored")] = None,
    response_format: Annotated[str, Form(description="json, text or verbose_json")] = "json",
    temperature: Annotated[float | None, Form(description="accepted and ignored (greedy)")] = None,
) -> Any:
    """Transcribe a recording; the language is detected unless given."""
    if response_format not in FORMATS:
        raise ApiError(
            400,
            f"response_format {response_format!r} is not supported; use one of {', '.join(FORMATS)}.",
            param="response_format",
        )
    data = await file.read()
    if not data:
        raise ApiError(400, "The uploaded audio is empty.", param="file")
    wav = await run_in_threadpool(_decode, data, service.settings.asr_max_seconds)
    transcript = await service.asr.transcribe(wav, SAMPLE_RATE, language, service.settings.ready_timeout_s)
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format == "json":
        return {"text": transcript.text}
    code = transcript.language_code
    return {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(code, code).lower(),
        "duration": round(transcript.seconds, 3),
        "text": transcript.text,
        "segments": [],
    }
