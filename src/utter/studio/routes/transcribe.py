"""``POST /api/transcribe``: the Clone page's Transcribe button; ``/api/asr``: the model's state.

The recording is checked like a clone's (size, a real decoder, length), then transcribed by the
process's Whisper (``server/voices/asr.py``, shared with ``/tts``), which loads on first use. The page
asks with a short ``wait`` and shows "downloading 40%" from the 503 until the model is ready.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from ...audio import SAMPLE_RATE
from ...server.http.errors import ApiError
from ..deps import StudioDep
from ..schemas import TranscriptOut
from .voices import read_reference

router = APIRouter(prefix="/api", tags=["transcription"])


@router.post("/transcribe", response_model=TranscriptOut)
async def transcribe(
    studio: StudioDep,
    audio: Annotated[UploadFile, File(description="the reference recording")],
    language: Annotated[str | None, Form(description="a language name or code; detected if left out")] = None,
    wait: Annotated[
        float, Form(ge=0, le=300, description="seconds to wait for a model still loading")
    ] = 60.0,
) -> TranscriptOut:
    wav = await run_in_threadpool(read_reference, studio, audio)
    lang = None if (language or "").strip().lower() in ("", "auto") else language
    t = await studio.asr.transcribe(wav, SAMPLE_RATE, lang, wait)
    if not t.text:
        raise ApiError(
            422, "No words were recognised in the recording; type the transcript yourself.", param="audio"
        )
    return TranscriptOut(
        text=t.text, language=t.language, language_code=t.language_code, seconds=round(t.seconds, 3)
    )


@router.get("/asr")
def asr_status(studio: StudioDep) -> dict[str, Any]:
    """The transcription model's state: off, idle (loads on first use), downloading, loading,
    ready or failed."""
    return studio.asr.status()


@router.post("/asr/retry", status_code=202)
def asr_retry(studio: StudioDep) -> dict[str, str]:
    """Load the transcription model again after it failed (say, the network is back)."""
    if not studio.asr.retry():
        raise ApiError(409, f"The transcription model has not failed (it is {studio.asr.state.value}).")
    return {"state": studio.asr.state.value}
