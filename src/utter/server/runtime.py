"""The model behind the service: downloaded, loaded and batched in the background.

A server must answer /health (and say "downloading 40%") while a 4 GB checkpoint is still on
its way, so nothing here blocks the caller: :meth:`EngineHolder.start` returns at once and a
background thread resolves the checkpoint (with progress), loads the engine and starts the
:class:`~utter.engine.sched.batcher.Batcher`. Request handlers call :meth:`EngineHolder.wait_ready`,
which either hands them the batcher or raises :class:`ModelNotReady` with a message that says
what is happening and what to do. The studio builds against this same object.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..engine.checkpoint import CheckpointError
from ..engine.engine import MAX_FRAMES, Engine, default_device, default_max_batch
from ..engine.sched.batcher import Batcher
from ..engine.streaming import CHUNK_FRAMES, FIRST_CHUNK_FRAMES

if TYPE_CHECKING:
    from .settings import ServerSettings

logger = logging.getLogger(__name__)


class ModelState(str, Enum):
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelNotReady(RuntimeError):
    """The model cannot serve yet (or ever, when ``state`` is FAILED); the message says why."""

    def __init__(self, state: ModelState, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.detail = detail


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\"]+)+/?")


def public_text(text: str | None) -> str | None:
    """``text`` with every absolute path cut to its last part (``/srv/models/tiny`` -> ``tiny``):
    what an open endpoint may show about a model or an error without mapping the disk."""
    if text is None:
        return None
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)


def _hint(exc: BaseException) -> str:
    """What a person can do about a load failure."""
    text = str(exc).lower()
    if isinstance(exc, CheckpointError):
        return "Fix the model setting (UTTER_MODEL or --model) as the error says, then restart the server."
    if "out of memory" in text:
        return "The GPU ran out of memory: use the 0.6B model, --dtype bfloat16, or --device cpu."
    if "cuda" in text:
        return "Check the GPU and its driver, or run with --device cpu."
    return "See the server log for details, then restart the server."


class EngineHolder:
    """Owns one :class:`Engine` and its :class:`Batcher` for the lifetime of a server."""

    @classmethod
    def from_settings(cls, settings: ServerSettings, model: str | None = None) -> EngineHolder:
        """The holder a service with these settings serves from (api-only server and studio
        alike); ``model`` for one of its extra models."""
        return cls(
            model or settings.model,
            device=settings.device,
            dtype=settings.dtype,
            cache_dir=settings.cache_dir,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            first_chunk_frames=settings.first_chunk_frames,
            chunk_frames=settings.chunk_frames,
            max_frames=settings.max_frames,
            stall_s=settings.worker_stall_s,
        )

    def __init__(
        self,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        cache_dir: str | None = None,
        max_batch: int | None = None,
        max_queue: int = 64,
        first_chunk_frames: int = FIRST_CHUNK_FRAMES,
        chunk_frames: int = CHUNK_FRAMES,
        max_frames: int = MAX_FRAMES,
        stall_s: float = 120.0,
    ) -> None:
        self.model = model
        self.max_frames = max_frames
        self.stall_s = stall_s
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self._state = ModelState.LOADING
        self._progress: float | None = None
        self._error: str | None = None
        self._hint: str | None = None
        self._settled = threading.Event()  # set once READY or FAILED
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._memory_mib: float | None = None  # weights and codec, measured once loaded

    @classmethod
    def from_engine(cls, engine: Engine, model: str | None = None, **batcher_args: Any) -> EngineHolder:
        """A holder around an engine that is already loaded (tests, notebooks, embedding apps)."""
        holder = cls(model or str(engine.folder), device=str(engine.device), **batcher_args)
        holder.engine = engine
        holder._start_batcher()
        return holder

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def progress(self) -> float | None:
        """Fraction downloaded (0..1) while DOWNLOADING; None otherwise."""
        return self._progress if self._state is ModelState.DOWNLOADING else None

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def hint(self) -> str | None:
        return self._hint

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for /health and the studio's status display.

        Both are open without a key, so nothing here names a place on the server's disk: a
        local model folder is shown by its name and paths in errors by their last part.
        ``dtype`` is the weight mode (int8 weights compute with float32 activations on CPUs;
        ``activation_dtype`` says so)."""
        engine = self.engine
        return {
            "state": self._state.value,
            "model": public_text(self.model),
            "progress": self.progress,
            "error": public_text(self._error),
            "hint": self._hint,
            "device": str(engine.device) if engine is not None else self.device,
            "dtype": engine.weight_mode if engine is not None else self.dtype,
            "activation_dtype": str(engine.dtype).removeprefix("torch.") if engine is not None else None,
            "languages": list(engine.languages) if engine is not None else [],
            "variant": self.variant,
            "speakers": engine.speakers if engine is not None else [],
            "memory_mib": self._memory_mib,
            "worker": self.worker_status(),
        }

    @property
    def variant(self) -> str | None:
        """base, custom_voice or voice_design; guessed from the name until the model is loaded."""
        if self.engine is not None:
            return self.engine.variant
        name = self.model.lower().replace("_", "")
        if "customvoice" in name:
            return "custom_voice"
        if "voicedesign" in name:
            return "voice_design"
        return "base" if name.endswith("-base") else None

    def worker_status(self) -> dict[str, Any] | None:
        """The batcher's liveness, with ``healthy`` False when its worker is down or stuck
        (requests waiting or running, and no turn of its loop for ``stall_s``)."""
        batcher = self.batcher
        if batcher is None:
            return None
        status = batcher.health()
        busy = batcher.active > 0 or batcher.queued > 0
        stalled = busy and status["last_step_age_s"] > self.stall_s
        status["healthy"] = bool(status["alive"]) and not stalled
        if stalled and status["error"] is None:
            status["error"] = f"no decode step for {status['last_step_age_s']:.0f} s with requests waiting"
        return status

    # ---------------------------------------------------------------- control
    def start(self) -> None:
        """Begin downloading/loading in a background thread; returns at once. Idempotent."""
        with self._lock:
            if self._thread is not None or self._settled.is_set():
                return
            self._thread = threading.Thread(target=self._load, name="utter-model-loader", daemon=True)
            self._thread.start()

    def retry(self) -> bool:
        """Load again after a failure (the network is back, the folder was fixed), without a
        restart; returns False (and does nothing) unless the model had failed."""
        with self._lock:
            if self._state is not ModelState.FAILED or self._stopped:
                return False
            self._error = self._hint = None
            self._state, self._progress = ModelState.LOADING, None
            self._settled.clear()
            self._thread = None
        logger.info("retrying to load %s", public_text(self.model))
        self.start()
        return True

    def stop(self) -> None:
        """Stop the batcher (live requests end as "cancelled"). A load in progress is abandoned."""
        self._stopped = True
        if self.batcher is not None:
            self.batcher.stop()

    def join(self, timeout: float | None = None) -> ModelState:
        """Block until the model is READY or FAILED (or ``timeout`` passes); for sync callers."""
        self._settled.wait(timeout)
        return self._state

    async def wait_ready(self, timeout: float) -> Batcher:
        """The batcher once the model is ready; raises :class:`ModelNotReady` if it is not in time.

        A FAILED model raises at once: waiting cannot fix it.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self._state is ModelState.READY and self.batcher is not None:
                return self.batcher
            if self._state is ModelState.FAILED:
                raise ModelNotReady(self._state, f"The model failed to load: {self._error} {self._hint}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelNotReady(self._state, self._not_ready_message())
            await asyncio.sleep(min(0.05, remaining))

    def _not_ready_message(self) -> str:
        if self._state is ModelState.DOWNLOADING:
            pct = f" ({self.progress:.0%})" if self.progress is not None else ""
            return f"The model {self.model} is downloading{pct}; try again in a minute."
        return f"The model {self.model} is loading; try again in a few seconds."

    # ----------------------------------------------------------------- worker
    def _on_progress(self, fraction: float) -> None:
        self._state = ModelState.DOWNLOADING
        self._progress = fraction

    def _load(self) -> None:
        from ..engine.checkpoint import resolve_checkpoint

        started = time.perf_counter()
        try:
            folder = resolve_checkpoint(self.model, cache_dir=self.cache_dir, progress=self._on_progress)
            self._state, self._progress = ModelState.LOADING, None
            # The engine sizes its caches (and CUDA graphs) for the batcher's largest batch, and
            # on CPUs picks its kernels by it (default_max_batch: the native kernels' most).
            self.max_batch = self.max_batch or default_max_batch(self.device or default_device())
            self.engine = Engine.load(
                str(folder), device=self.device, dtype=self.dtype, max_batch=self.max_batch
            )
            self._start_batcher()
        except Exception as exc:  # noqa: BLE001 - reported through state/error/hint
            if isinstance(exc, CheckpointError):  # expected (offline, wrong folder): one clear line
                logger.error("loading %s failed: %s %s", self.model, exc, _hint(exc))
            else:
                logger.exception("loading %s failed", self.model)
            self._error, self._hint = str(exc), _hint(exc)
            self._state = ModelState.FAILED
            self._settled.set()
            return
        logger.info("model %s ready in %.1fs", self.model, time.perf_counter() - started)

    def _start_batcher(self) -> None:
        assert self.engine is not None
        # Unset: what the engine was loaded for (its kernels were chosen by it).
        self.max_batch = self.max_batch or self.engine.max_batch
        self._memory_mib = round(self.engine.memory_bytes() / 2**20, 1)
        if self._stopped:  # stop() came while the model was loading: serve nothing
            return
        self.batcher = Batcher(
            self.engine,
            max_batch=self.max_batch,
            max_queue=self.max_queue,
            first_chunk_frames=self.first_chunk_frames,
            chunk_frames=self.chunk_frames,
            max_frames=self.max_frames,
        ).start()
        self._state = ModelState.READY
        self._settled.set()
