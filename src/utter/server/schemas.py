"""Request and response bodies of the HTTP API (they are also what /docs shows).

Field names follow the two contracts we serve: the seed's voice-clone API (``text``,
``ref_audio_base64``, ``max_new_tokens`` ...) and OpenAI's ``/v1/audio/speech`` (``input``,
``voice``, ``response_format`` ...). Unknown fields are ignored, as the seed's service did.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..engine.engine import MAX_FRAMES
from ..engine.sampling import MAX_SEED
from ..engine.text import invalid_unicode_at

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac"]

TOP_K_MAX = 1_000_000  # far above any vocabulary (top_k above it keeps every token anyway)


def check_unicode(value: Any, field: str) -> Any:
    """``value`` if every string in it is valid Unicode text; JSON's ``"\ud800"`` (a lone
    surrogate) is not, and would fail later in the tokenizer, a file name or a database."""
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        if isinstance(text, str) and invalid_unicode_at(text) is not None:
            raise PydanticCustomError(
                "invalid_text",
                "{field} is not valid Unicode text (it has a lone surrogate)",
                {"field": field},
            )
    return value


class ApiModel(BaseModel):
    """A request body: every text field must be valid Unicode (400 at the door otherwise)."""

    @field_validator("*", mode="after")
    @classmethod
    def _valid_text(cls, value: Any, info: ValidationInfo) -> Any:
        return check_unicode(value, info.field_name or "text")


class SamplingFields(ApiModel):
    """Optional decoding overrides; anything left out comes from the checkpoint's defaults.

    ``do_sample``/``temperature``/``top_k``/``top_p`` steer the talker (codebook 0), as in the
    official ``generate_voice_clone``; the ``subtalker_*`` fields steer the code predictor.
    """

    model_config = ConfigDict(extra="ignore")

    do_sample: bool | None = None
    temperature: float | None = Field(default=None, gt=0, le=10)
    top_k: int | None = Field(default=None, ge=0, le=TOP_K_MAX)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="fixed seed: same request, same audio"
    )
    subtalker_do_sample: bool | None = None
    subtalker_temperature: float | None = Field(default=None, gt=0, le=10)
    subtalker_top_k: int | None = Field(default=None, ge=0, le=TOP_K_MAX)
    subtalker_top_p: float | None = Field(default=None, gt=0, le=1)


class ReferenceFields(ApiModel):
    ref_audio_base64: str | None = Field(default=None, description="reference recording, any common format")
    ref_audio_url: str | None = Field(
        default=None, description="http(s) URL; off unless the server allows it"
    )
    ref_text: str | None = Field(
        default=None,
        description="transcript of the reference; transcribed when left out (x-vector mode when the "
        "server cannot transcribe)",
    )
    x_vector_only: bool = Field(default=False, description="clone from the speaker embedding only")


class CloneRequest(SamplingFields, ReferenceFields):
    """``POST /clone`` and ``POST /submit-job``."""

    text: str
    language: str = "Auto"
    max_new_tokens: int | None = Field(
        default=None,
        ge=2,
        le=MAX_FRAMES + 1,
        description="as in the official package: at most max_new_tokens - 1 frames of 80 ms; "
        f"default: a limit derived from the text length; at most {MAX_FRAMES + 1}",
    )
    stream: bool = Field(default=False, description="send the WAV chunk by chunk while it is generated")


class CloneBatchRequest(SamplingFields, ReferenceFields):
    """``POST /clone-batch``: several texts in one voice, generated as one batch."""

    texts: list[str]
    languages: list[str] | None = Field(default=None, description="one per text; default Auto for all")
    max_new_tokens: int | None = Field(default=None, ge=2, le=MAX_FRAMES + 1)


class BatchAudio(BaseModel):
    index: int
    text: str
    audio_base64: str
    size_bytes: int


class CloneBatchResponse(BaseModel):
    status: str
    count: int
    audio_files: list[BatchAudio]


class SpeechRequest(SamplingFields):
    """``POST /v1/audio/speech`` (OpenAI-compatible). ``voice`` is the id of a stored voice."""

    model: str = ""
    input: str
    voice: str
    response_format: AudioFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] | None = Field(
        default=None,
        description="audio: stream raw audio (wav/flac with an unknown-length header); sse: server-sent "
        "events with base64 chunks; default: stream every format except wav and flac",
    )
    language: str | None = Field(default=None, description="default: the stored voice's language")
    max_frames: int | None = Field(
        default=None, ge=1, le=MAX_FRAMES, description=f"at most this many 80 ms frames (up to {MAX_FRAMES})"
    )
    instructions: str | None = Field(
        default=None,
        max_length=2000,
        description="how to speak (CustomVoice 1.7B), or the voice itself (VoiceDesign: required)",
    )


class RealtimeStart(SamplingFields):
    """First message of a ``/v1/realtime/speech`` WebSocket session (``type: "start"``)."""

    type: Literal["start"] = "start"
    voice: str = Field(description="id (or unique name) of a stored voice")
    language: str | None = Field(default=None, description="default: the stored voice's language")
    response_format: AudioFormat = Field(default="pcm", description="pcm: raw s16le, 24 kHz, mono")
    max_frames: int | None = Field(default=None, ge=1, le=MAX_FRAMES)


class VoiceInfo(BaseModel):
    id: str
    name: str
    object: str = "voice"
    voice_id: str = ""  # = id, for ElevenLabs clients
    category: str = "cloned"  # ElevenLabs' field; "premade" for a CustomVoice model's speakers
    instructions: bool = False  # a preset speaker that follows instructions (CustomVoice 1.7B)
    language: str
    ref_text: str | None
    x_vector_only: bool
    reference_seconds: float
    model: str
    created_at: float

    @model_validator(mode="after")
    def _voice_id(self) -> VoiceInfo:
        self.voice_id = self.voice_id or self.id
        return self


class VoiceList(BaseModel):
    voices: list[VoiceInfo]


class JobSubmitted(BaseModel):
    job_id: str
    status: str
    text_length: int


class JobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    text_length: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    elapsed_seconds: float
    frames_done: int
    max_frames: int
    progress: float
    audio_seconds: float | None = None
    error: str | None = None


class JobRef(ApiModel):
    job_id: str
