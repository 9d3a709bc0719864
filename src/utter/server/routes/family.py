"""``POST /v1/voice-design``: a voice from a description, heard at once, kept if liked.

The VoiceDesign model speaks a short clip in the voice a description asks for ("a warm, low
female voice with a slight British accent"); each seed is another take. With ``save_as`` the
clip and its words become a stored voice of the server's Base model (design, then clone: the
documented workflow, which keeps the voice the same for any text), usable at once as ``voice``
in ``/v1/audio/speech``, the ElevenLabs API and the studio.
"""

from __future__ import annotations

import base64
import random
from typing import Any

from fastapi import APIRouter
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ...audio import SAMPLE_RATE, to_wav_bytes
from ...engine.cpu.threads import in_own_thread
from ...engine.design import sample_text
from ..deps import ServiceDep
from ..http.errors import ApiError
from ..schemas import ApiModel, SamplingFields
from ..speech.submit import check_language, check_text, collect, generation_options, submit
from ..voices.store import VoiceNameTaken

router = APIRouter(tags=["voice design"])


class VoiceDesignRequest(SamplingFields, ApiModel):
    description: str = Field(min_length=1, max_length=2000, description="the voice, in words")
    text: str | None = Field(
        default=None, description="what the clip says (default: a sentence in the language)"
    )
    language: str = "Auto"
    save_as: str | None = Field(
        default=None, max_length=100, description="keep it as a stored voice of this name"
    )


@router.post("/v1/voice-design")
async def voice_design(body: VoiceDesignRequest, service: ServiceDep) -> dict[str, Any]:
    """Speak a clip in the described voice; returns it (base64 WAV) with its seed, and the
    stored voice when ``save_as`` is given."""
    models, settings = service.models, service.settings
    designer = models.require_kind("voice_design", "Designing a voice")
    base = models.require_kind("base", "Keeping a designed voice") if body.save_as else None
    batcher = await designer.wait_ready(settings.ready_timeout_s)
    engine = batcher.engine
    language = check_language(engine, body.language)
    text = check_text(body.text or sample_text(language), settings)
    options = generation_options(engine, body, None)
    if options.seed is None:  # say which take this was, so it can be made again
        from dataclasses import replace

        options = replace(options, seed=random.getrandbits(31))
    stream = submit(batcher, text, None, language, options, settings, instruct=body.description)
    clip = await collect(stream, settings)
    out: dict[str, Any] = {
        "description": body.description,
        "text": text,
        "language": language,
        "seed": options.seed,
        "audio_base64": base64.b64encode(to_wav_bytes(clip, SAMPLE_RATE)).decode(),
        "voice": None,
    }
    if base is not None:
        name = (body.save_as or "").strip()
        if not name:
            raise ApiError(400, "save_as must name the voice.", param="save_as")
        cloner = (await base.wait_ready(settings.ready_timeout_s)).engine
        prompt = await in_own_thread(cloner.create_voice, (clip, SAMPLE_RATE), text)
        try:
            out["voice"] = await run_in_threadpool(
                service.voices.create, name, language, prompt, clip, base.model
            )
        except VoiceNameTaken as exc:
            raise ApiError(409, str(exc), param="save_as") from exc
    return out
