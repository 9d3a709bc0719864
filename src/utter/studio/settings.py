"""Studio configuration: one pydantic-settings object, read from ``UTTER_*`` environment variables.

``utter serve`` turns its command-line flags into these variables before it starts the web
server, so every worker process (uvicorn starts them fresh) builds the same settings from its
environment without any state being pickled across.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from ..server.settings import ServerSettings

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"


def default_data_dir() -> Path:
    """``~/.local/share/utter``: where voices, audio and the database live (as for the TTS service)."""
    return Path.home() / ".local" / "share" / "utter"


class StudioSettings(BaseSettings):
    """Everything the studio can be told. Field ``x`` is set by the environment variable ``UTTER_X``."""

    model_config = SettingsConfigDict(env_prefix="UTTER_", extra="ignore", validate_default=True)

    # Where things live.
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # None: SQLite file utter.db inside data_dir

    # Which TTS to talk to: the in-process engine (default) or a remote utter service.
    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | None = None
    max_batch: int | None = Field(None, ge=1)  # None: 8 on CPUs, 16 on GPUs (engine.default_max_batch)
    max_queue: int = Field(64, ge=1)
    # Transcription of references (the Clone page's Transcribe button, clones without a
    # transcript): a Whisper hub id or folder, loaded on first use; "none" turns it off.
    asr_model: str = "openai/whisper-small"
    asr_device: str | None = None  # None: the TTS device
    extra_models: str = ""  # more models beside ``model`` for /tts: a CustomVoice, a VoiceDesign
    asr_wait_seconds: float = Field(120.0, ge=0)  # a clone without words waits this long for the model
    tts_endpoint: str | None = None  # e.g. https://me--utter.modal.run; set -> RemoteProvider
    tts_api_key: SecretStr | None = None
    tts_timeout: float = Field(900.0, gt=0)  # seconds one remote chunk may take

    # Web server.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    # Login (studio/login.py): with a password every page, /api and /tts need it (a session from
    # /login, or "Authorization: Bearer PASSWORD"); listening beyond loopback needs one unless
    # the network is trusted (open_network).
    password: SecretStr | None = None
    open_network: bool = False

    # Connection limits, as for the TTS service (see ServerSettings): header and body deadlines,
    # idle keep-alive, the most open connections before new ones get 503, and the shutdown grace.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(120.0, gt=0)
    idle_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(512, ge=1)
    shutdown_grace_s: float = Field(15.0, gt=0)  # answers in flight at SIGTERM, then cut

    # Uploads and texts.
    max_upload_mb: float = Field(25.0, gt=0)
    min_ref_seconds: float = Field(3.0, ge=0)
    max_ref_seconds: float = Field(60.0, gt=0)
    max_text_chars: int = Field(20000, ge=1)
    max_transcript_chars: int = Field(2000, ge=1)

    # Long texts: chunk size in "cost" units (a Latin character is 1, a CJK character 3) and
    # the crossfade between chunks.
    chunk_chars: int = Field(300, ge=20)
    crossfade_ms: float = Field(40.0, ge=0)
    # Chunks of one job spoken at once: the next ones start while the current one streams (on a
    # GPU a few more rows in a step cost about the same, so a long text is done sooner).
    chunk_parallel: int = Field(4, ge=1)

    # Jobs.
    job_slots: int = Field(4, ge=1)  # jobs one process runs at once (they share the batcher)
    job_lease_seconds: float = Field(30.0, gt=0)  # a job whose worker stops heartbeating is recovered
    job_max_attempts: int = Field(3, ge=1)  # after this many interrupted runs a job fails
    job_poll_seconds: float = Field(1.0, gt=0)  # how often an idle worker looks for new jobs

    def password_value(self) -> str | None:
        value = self.password.get_secret_value() if self.password is not None else None
        return value or None

    @field_validator(
        "tts_endpoint", "database_url", "device", "dtype", "cache_dir", "asr_device", mode="before"
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("device", "asr_device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        """A typo (``--device tpu``) stops the studio at start, not its model's load later."""
        if value:
            from ..engine.engine import check_device  # only when a device is named: torch is slow to import

            check_device(value, available=False)
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> StudioSettings:
        if self.min_ref_seconds >= self.max_ref_seconds:
            raise ValueError("min_ref_seconds must be below max_ref_seconds")
        return self

    def service_settings(self, **overrides: object) -> ServerSettings:
        """Settings of the TTS service on the same model: the in-process engine and ``/tts``."""
        from ..server.settings import ServerSettings

        values = {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "cache_dir": self.cache_dir,
            "asr_model": self.asr_model,
            "extra_models": self.extra_models,
            "asr_device": self.asr_device,
            "data_dir": self.data_dir,
            "host": self.host,
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            # /tts speaks long texts as the studio does (same split, same crossfade).
            "split_chars": self.chunk_chars,
            "split_crossfade_ms": self.crossfade_ms,
        }
        return ServerSettings(**{**values, **overrides})

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL to use: ``database_url`` or the embedded SQLite file."""
        return self.database_url or f"sqlite:///{self.data_dir.expanduser().resolve() / 'utter.db'}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def remote(self) -> bool:
        return self.tts_endpoint is not None
