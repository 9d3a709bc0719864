"""Request and response bodies of the studio API (``/api/...``): the contract the pages code against.

Every error is JSON ``{"detail": "<one sentence for a person>", "error": {"message", "type",
"param", "code"}}`` with a 4xx/5xx status (the TTS service's shape); ``error.param`` names the
field at fault when there is one ("name", "audio", "text" ...).
Lists are paginated the same way: ``{"<items>": [...], "total", "page", "per_page", "pages"}``.
Times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..engine.sampling import MAX_SEED
from ..server.schemas import ApiModel

# Task and generation states. A job only moves forward: queued -> processing -> one of the
# final three (a job interrupted by a crash goes back to queued or ends failed with a reason).
QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED = "queued", "processing", "completed", "failed", "cancelled"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)
ACTIVE = (QUEUED, PROCESSING)


class CloneOut(BaseModel):
    """``POST /api/clone`` (multipart: name, audio, transcript, language) -> 201."""

    id: str
    name: str
    language: str = "Auto"
    transcript: str | None = None
    transcribed: bool = False  # the transcript was made by the transcription model


class TranscriptOut(BaseModel):
    """``POST /api/transcribe``: the words of a recording and the language they are in."""

    text: str
    language: str  # the engine's name ("English"), or "Auto" for a language it does not speak
    language_code: str  # Whisper's code: "en", "nl" ...
    seconds: float


class VoiceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    language: str
    reference_transcript: str | None
    reference_seconds: float
    created_at: datetime
    updated_at: datetime
    preview_url: str  # GET: audio/wav of the reference recording
    match: dict[str, str] | None = None  # with ?search=: {field, snippet, matched} (search.py)


class VoiceList(BaseModel):
    """``GET /api/voices?page=1&per_page=20&search=`` (search matches name and transcript)."""

    voices: list[VoiceOut]
    total: int
    page: int
    per_page: int
    pages: int


class VoiceUpdate(ApiModel):
    """``PATCH /api/voices/{id}``: any subset of the fields; a new transcript re-derives the voice."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=100)
    reference_transcript: str | None = Field(None, min_length=1)
    language: str | None = None


class GenerateIn(ApiModel):
    """``POST /api/generate``: text in a stored voice (``voice_id``) or as a preset speaker of a
    CustomVoice model the studio runs (``speaker``, optionally with an ``instruct``ion: "speak
    slowly, sadly"). Options left out use the model's defaults.

    Long texts are split at sentence boundaries into chunks; every chunk uses this seed (a random
    one is drawn and stored when none is given, so a resumed job sounds the same).
    """

    model_config = ConfigDict(extra="forbid")

    voice_id: str | None = Field(None, min_length=1, max_length=64)
    speaker: str | None = Field(None, min_length=1, max_length=64)
    instruct: str | None = Field(None, max_length=2000)
    text: str
    language: str = "Auto"
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    temperature: float | None = Field(None, gt=0, le=5)
    top_k: int | None = Field(None, ge=0, le=5000)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=5)
    greedy: bool = False  # deterministic decoding (argmax)
    max_frames: int | None = Field(None, ge=1, le=10000)  # per chunk; default: derived from its text


class GenerateOut(BaseModel):
    """``POST /api/generate`` -> 202. Poll ``GET /api/tasks/{task_id}``."""

    task_id: str
    generation_id: str
    status: str


class TaskOut(BaseModel):
    """``GET /api/tasks/{id}`` and ``POST /api/tasks/{id}/cancel``.

    ``progress`` is 0..1 over all chunks (a chunk counts by frames made / its frame limit);
    ``message`` says what is happening now ("waiting for the model: downloading 40%",
    "chunk 2 of 5", "resumed after the server stopped"); ``error`` says why it failed.
    """

    id: str
    generation_id: str
    status: str
    progress: float
    chunks_done: int
    chunks_total: int
    frames_done: int
    message: str | None
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TaskList(BaseModel):
    """``GET /api/tasks?status=queued&status=processing&limit=50`` newest first."""

    tasks: list[TaskOut]


class GenerationOut(BaseModel):
    id: str
    task_id: str | None
    voice_id: str | None  # None once the voice was deleted; voice_name stays
    voice_name: str
    text: str
    language: str
    status: str
    progress: float
    duration_seconds: float | None  # length of the audio
    generation_seconds: float | None  # wall time spent generating it
    error_message: str | None
    audio_url: str | None  # GET: audio/wav (add ?download=1 for an attachment); set when there is audio
    seed: int | None = None  # the seed it was made with (Regenerate with it makes the same audio)
    options: dict[str, Any] = Field(default_factory=dict)  # the sampling options asked for
    partial: bool = False  # the audio is what a failed or cancelled job made before it stopped
    resumable: bool = False  # POST /api/tasks/{task_id}/resume continues it from that audio
    match: dict[str, str] | None = None  # with ?search=: {field, snippet, matched} (search.py)
    created_at: datetime
    finished_at: datetime | None


class GenerationList(BaseModel):
    """``GET /api/generations?page=1&per_page=20&search=&status=`` newest first."""

    generations: list[GenerationOut]
    total: int
    page: int
    per_page: int
    pages: int


class LanguagesOut(BaseModel):
    """``GET /api/languages``."""

    languages: list[str]
    default: str


class ModelStatus(BaseModel):
    """The TTS model's state: ``downloading`` (progress 0..1), ``loading``, ``ready`` or ``failed``
    (``error`` says why, ``hint`` what to do). ``provider`` is "local" or "remote"."""

    model_config = ConfigDict(extra="allow")

    state: str
    provider: str
    model: str
    progress: float | None = None
    error: str | None = None
    hint: str | None = None


class HealthOut(BaseModel):
    """``GET /api/health``: always 200 while the studio runs; ``status`` is "ok" once the model is
    ready, "starting" while it downloads or loads, "degraded" when it failed."""

    status: str
    model: ModelStatus
    database: str
    jobs: dict[str, int]  # queued / processing counts
    asr: dict[str, Any] | None = None  # the transcription model's state (server/voices/asr.py)
    models: list[dict[str, Any]] = Field(default_factory=list)  # every model of /tts, main first
    # Free space for voices and generations: {"free_mib", "low"} (the pages warn when low).
    storage: dict[str, Any] | None = None
