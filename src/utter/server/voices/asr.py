"""The transcription model of a server: loaded on first use, in the background, with progress.

Most requests never need it (they carry a transcript or use a stored voice), so nothing is
downloaded or loaded until a request asks for a transcript: the first ``/v1/audio/transcriptions``
call, a voice created without ``ref_text``, or the studio's Transcribe button. That request
waits up to ``ready_timeout_s``; later ones see "downloading 40%" in a 503 (and in ``/health``)
until it is ready. A model that cannot be had (offline, a wrong name) is reported once, in one
line, and references without a transcript then fall back to x-vector cloning.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from ...engine.cpu.threads import in_own_thread
from ..http.errors import ApiError
from ..runtime import public_text

if TYPE_CHECKING:
    from ...asr import Transcriber, Transcript

logger = logging.getLogger(__name__)

OFF_VALUES = ("", "none", "off", "false", "0")


class AsrState(str, Enum):
    OFF = "off"  # no transcription model configured
    IDLE = "idle"  # configured, not needed yet
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class AsrHolder:
    """Owns the :class:`~utter.asr.Transcriber` of one process (shared by the API and the studio)."""

    def __init__(self, model: str | None, device: str | None = None, cache_dir: str | None = None) -> None:
        self.model = (model or "").strip()
        self.device = device
        self.cache_dir = cache_dir
        self.transcriber: Transcriber | None = None
        self._state = AsrState.OFF if self.model.lower() in OFF_VALUES else AsrState.IDLE
        self._progress: float | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> AsrState:
        return self._state

    @property
    def enabled(self) -> bool:
        return self._state is not AsrState.OFF

    def status(self) -> dict[str, Any]:
        """JSON-able, with nothing that names a place on the server's disk."""
        return {
            "state": self._state.value,
            "model": public_text(self.model) if self.enabled else None,
            "progress": self._progress if self._state is AsrState.DOWNLOADING else None,
            "error": public_text(self._error),
            "languages": self.transcriber.languages if self.transcriber is not None else None,
        }

    def start(self) -> None:
        """Begin downloading/loading in a background thread (once; again after :meth:`retry`)."""
        with self._lock:
            if self._state is not AsrState.IDLE:
                return
            self._state = AsrState.LOADING
            self._thread = threading.Thread(target=self._load, name="utter-asr-loader", daemon=True)
            self._thread.start()

    def retry(self) -> bool:
        """Try again after a failure (the network is back); False unless it had failed."""
        with self._lock:
            if self._state is not AsrState.FAILED:
                return False
            self._state, self._error = AsrState.IDLE, None
        self.start()
        return True

    def _on_progress(self, fraction: float) -> None:
        self._state, self._progress = AsrState.DOWNLOADING, fraction

    def _load(self) -> None:
        from ...asr import AsrError, Transcriber, resolve_asr_model

        started = time.perf_counter()
        try:
            folder = resolve_asr_model(self.model, self.cache_dir, self._on_progress)
            self._state, self._progress = AsrState.LOADING, None
            self.transcriber = Transcriber.load(folder, device=self.device, name=self.model)
        except AsrError as exc:  # expected (offline, a wrong name): one clear line
            logger.error("transcription model %s unavailable: %s", self.model, exc)
            self._error, self._state = str(exc), AsrState.FAILED
            return
        except Exception as exc:  # noqa: BLE001 - reported through state/error
            logger.exception("loading the transcription model %s failed", self.model)
            self._error, self._state = f"{type(exc).__name__}: {exc}", AsrState.FAILED
            return
        self._state = AsrState.READY
        logger.info("transcription model %s ready in %.1fs", self.model, time.perf_counter() - started)

    def _poll(self, deadline: float) -> tuple[bool, Transcriber | None]:
        """(settled, transcriber): settled with None when off or failed; 503 past ``deadline``."""
        if self._state is AsrState.READY and self.transcriber is not None:
            return True, self.transcriber
        if self._state in (AsrState.OFF, AsrState.FAILED):
            return True, None
        if time.monotonic() >= deadline:
            doing = "downloading" if self._state is AsrState.DOWNLOADING else "loading"
            pct = f" ({self._progress:.0%})" if self._state is AsrState.DOWNLOADING and self._progress else ""
            raise ApiError(
                503,
                f"The transcription model {public_text(self.model)} is {doing}{pct}; try again shortly, "
                "or give the transcript yourself.",
                {"Retry-After": "5"},
            )
        return False, None

    async def wait_ready(self, timeout: float) -> Transcriber | None:
        """The transcriber, loading it on first use; None when transcription is off or failed.
        Raises :class:`ApiError` 503 (with Retry-After) while it is still on its way after ``timeout``."""
        self.start()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            settled, transcriber = self._poll(deadline)
            if settled:
                return transcriber
            await asyncio.sleep(0.05)

    def wait_ready_sync(self, timeout: float) -> Transcriber | None:
        """:meth:`wait_ready` for code already in a worker thread (the studio's sync routes)."""
        self.start()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            settled, transcriber = self._poll(deadline)
            if settled:
                return transcriber
            time.sleep(0.05)

    def unavailable_reason(self) -> str:
        if self._state is AsrState.OFF:
            return "transcription is off on this server (set UTTER_ASR_MODEL to enable it)"
        return f"transcription is unavailable: {public_text(self._error)}"

    async def require(self, timeout: float) -> Transcriber:
        """Like :meth:`wait_ready`, but 503 when transcription is off or failed, saying why."""
        transcriber = await self.wait_ready(timeout)
        if transcriber is None:
            reason = self.unavailable_reason()
            raise ApiError(503, reason[0].upper() + reason[1:] + ".")
        return transcriber

    async def transcribe(
        self, wav: np.ndarray, sample_rate: int, language: str | None, timeout: float
    ) -> Transcript:
        """Transcribe in a thread of its own that ends with it (the event loop keeps serving, and
        no OpenMP team stays behind: see ``engine/cpu/threads.py``); 503 when unavailable,
        400 for a language the model does not know."""
        transcriber = await self.require(timeout)
        try:
            return await in_own_thread(transcriber.transcribe, wav, sample_rate, language)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="language") from exc
