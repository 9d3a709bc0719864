"""Every knob of the TTS service in one object, read from ``UTTER_*`` environment variables.

The same service runs on a laptop, a GPU box and Modal; only these values differ between them,
so they all live here (with the reason for each default) and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..engine.engine import MAX_FRAMES, check_device
from ..engine.streaming import CHUNK_FRAMES, FIRST_CHUNK_FRAMES

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"
DEFAULT_ASR_MODEL = "openai/whisper-small"


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "utter"


class ServerSettings(BaseSettings):
    """Configuration of the TTS service; each field is also ``UTTER_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="UTTER_", extra="ignore", protected_namespaces=())

    # Model
    model: str = DEFAULT_MODEL
    device: str | None = None  # cuda when a GPU is present, else cpu
    dtype: str | None = None  # weight mode; None = quant.default_weight_mode(device)
    cache_dir: str | None = None  # Hugging Face cache for hub ids

    # More models served beside ``model``, comma-separated hub ids or folders: a CustomVoice
    # and/or a VoiceDesign model next to a Base one (requests pick one by ``model``, by a preset
    # speaker's name, or by needing an instruction); each loads in the background like ``model``.
    extra_models: str = ""

    # Transcription of references sent without a transcript (server/voices/asr.py): a Whisper hub id or
    # folder, loaded on first use; "none" turns it off (such references then clone by x-vector).
    asr_model: str = DEFAULT_ASR_MODEL
    asr_device: str | None = None  # None: the TTS device
    asr_max_seconds: float = Field(default=600.0, gt=0)  # longest audio /v1/audio/transcriptions takes

    # Network
    host: str = "127.0.0.1"  # loopback unless asked: the service has no key by default
    port: int = 8000

    # Where stored voices and job results live (voices survive restarts; see voices/store.py, speech/jobs.py).
    data_dir: Path = Field(default_factory=default_data_dir)

    # Optional API key, accepted as "Authorization: Bearer KEY" or "X-API-Key: KEY".
    api_key: SecretStr | None = None

    # Whether create_app's lifespan starts and stops the holder. The studio mounts the app and
    # manages the holder itself (mounted apps get no lifespan events), so it sets this False.
    manage_holder: bool = True

    # Load: the batcher runs up to max_batch requests at once and queues max_queue more; beyond
    # that requests are refused with 429 + Retry-After instead of waiting without bound.
    max_batch: int | None = Field(default=None, ge=1)  # None: engine.default_max_batch (8 CPU, 16 GPU)
    max_queue: int = Field(default=64, ge=1)
    first_chunk_frames: int = Field(default=FIRST_CHUNK_FRAMES, ge=1)  # small first chunk: early first audio
    chunk_frames: int = Field(default=CHUNK_FRAMES, ge=1)  # larger later chunks amortise decoding
    retry_after_s: int = Field(default=2, ge=1)

    # How long a request waits for a model that is still loading before it gets 503. On Modal
    # the first request of a cold container arrives while the model loads, so wait a while.
    ready_timeout_s: float = Field(default=60.0, ge=0)
    # Longest a single generation may take (non-streaming) or go silent (streaming): then 504.
    generation_timeout_s: float = Field(default=900.0, gt=0)

    # A worker with requests waiting and no decode step for this long is reported stuck
    # (/health answers 503, so a supervisor can restart the process).
    worker_stall_s: float = Field(default=120.0, gt=0)

    # Connections: request headers must arrive within header_timeout_s and a body within
    # body_timeout_s; idle keep-alive connections close after idle_timeout_s; beyond
    # max_connections open connections uvicorn answers 503 instead of accepting more.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    idle_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    # On SIGTERM (a deploy's stop) answers in flight get this long to finish, then are cut: a
    # client that holds a streamed answer without reading it must not keep the server up.
    shutdown_grace_s: float = Field(default=15.0, gt=0)

    # A realtime (WebSocket) session whose input stays open with no text for this long is closed:
    # it holds a place in the batch while it waits.
    realtime_idle_timeout_s: float = Field(default=20.0, gt=0)

    # Input limits
    max_text_chars: int = Field(default=5000, ge=1)
    # A text longer than split_chars (CJK characters count 3) is spoken in parts cut at sentence
    # ends, up to split_parallel of them at once (at most half the batch), joined with a short
    # crossfade: the model drifts on long texts, and one request makes at most max_frames.
    # 0 speaks every text whole.
    split_chars: int = Field(default=300, ge=0)
    split_parallel: int = Field(default=4, ge=1)
    split_crossfade_ms: float = Field(default=40.0, ge=0)
    # Most frames (80 ms each) one request may ask for: the KV cache is sized from it.
    max_frames: int = Field(default=MAX_FRAMES, ge=1, le=MAX_FRAMES)
    max_batch_items: int = Field(default=32, ge=1)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    ref_min_seconds: float = Field(default=1.0, ge=0)
    ref_max_seconds: float = Field(default=60.0, gt=0)

    # ref_audio_url is off by default (the server would fetch URLs on a client's behalf: SSRF).
    allow_ref_audio_url: bool = False
    # Also allow loopback/private/link-local targets (only for trusted internal networks).
    ref_audio_url_allow_private: bool = False
    ref_audio_url_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    ref_audio_url_timeout_s: float = Field(default=15.0, gt=0)

    # Jobs (in memory; results as files under data_dir/jobs until fetched or expired).
    job_ttl_s: float = Field(default=3600.0, gt=0)
    max_jobs: int = Field(default=256, ge=1)

    # Reference prompts computed for /clone are cached by content, so a client that sends the
    # same reference with every request pays for encoding it once.
    voice_cache_size: int = Field(default=32, ge=0)

    @field_validator("device", "asr_device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        """A typo (``--device tpu``) stops the server at start, not its model's load later."""
        if value and value.strip():
            check_device(value.strip(), available=False)
        return value

    @property
    def voices_dir(self) -> Path:
        return Path(self.data_dir).expanduser() / "tts" / "voices"

    @property
    def jobs_dir(self) -> Path:
        return Path(self.data_dir).expanduser() / "tts" / "jobs"

    def extra_model_list(self) -> list[str]:
        return [m.strip() for m in self.extra_models.split(",") if m.strip() and m.strip() != self.model]

    def api_key_value(self) -> str | None:
        value = self.api_key.get_secret_value() if self.api_key is not None else None
        return value or None


def bad_setting(exc: ValidationError) -> str:
    """The first problem of settings that do not validate, in one line for a command to print
    (pydantic's own message is a page)."""
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    return f"utter: error: bad setting {where + ': ' if where else ''}{first['msg']}"
