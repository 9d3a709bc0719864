"""Where the studio's speech comes from: the in-process engine, or a remote utter service.

Both providers turn one chunk of text in one stored voice into a stream of audio chunks that
can be cancelled, so the job worker (worker.py) does not care which one it talks to:

- :class:`LocalProvider` runs the model in this process through the server's
  :class:`~utter.server.runtime.EngineHolder` (background download/load, continuous batching).
  A voice's prompt is computed once per model and cached next to its recording.
- :class:`RemoteProvider` calls a running utter service (``utter serve --api-only``, e.g. the
  Modal deployment) with its seed-compatible ``POST /clone`` API, streaming the WAV back so
  progress and cancellation work over the network too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from ..audio import SAMPLE_RATE, AudioError, load_audio
from ..engine.config import LANGUAGES
from ..engine.cpu.threads import in_own_thread
from ..server.runtime import EngineHolder, ModelNotReady, ModelState
from .storage import Storage

logger = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 1920  # one 80 ms frame of the 12 Hz codec at 24 kHz
_WAV_HEADER = 44


@dataclass(frozen=True)
class VoiceSource:
    """A stored voice as providers see it: the reference recording and its transcript."""

    id: str
    audio_path: Path
    transcript: str | None  # None: x-vector-only voice


@dataclass(frozen=True)
class Synthesis:
    """One chunk of text to speak. ``options`` holds the request's sampling overrides."""

    text: str
    voice: VoiceSource | None  # None: a preset speaker (options["speaker"])
    language: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A piece of audio (float32 mono 24 kHz) and how far the chunk's generation has come."""

    pcm: np.ndarray
    frames_done: int
    max_frames: int  # 0 when unknown (remote)


class SynthesisStream(Protocol):
    """Async-iterable audio of one chunk; ``cancel()`` stops it, ``finish_reason`` says how it ended."""

    finish_reason: str | None

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    def cancel(self) -> None: ...


class TTSProvider(Protocol):
    kind: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    @property
    def state(self) -> ModelState: ...

    def languages(self) -> list[str]: ...

    async def synthesize(self, request: Synthesis) -> SynthesisStream:
        """Start speaking; raises ValueError for a bad request, ModelNotReady, QueueFullError."""
        ...


# ---------------------------------------------------------------------------------------- local
class LocalProvider:
    """The engine in this process. Generation waits for nothing: callers check ``state`` first."""

    kind = "local"

    def __init__(self, holder: EngineHolder, storage: Storage) -> None:
        self.holder = holder
        self.models: Any = None  # the /tts service's ModelSet, set by the studio at mount
        self.storage = storage
        self._prompt_locks: dict[str, threading.Lock] = {}

    def start(self) -> None:
        self.holder.start()

    def stop(self) -> None:
        self.holder.stop()

    @property
    def state(self) -> ModelState:
        return self.holder.state

    def status(self) -> dict[str, Any]:
        return {**self.holder.status(), "provider": self.kind}

    def languages(self) -> list[str]:
        engine = self.holder.engine
        return list(engine.languages) if engine is not None else list(LANGUAGES)

    def model_key(self) -> str:
        """Names the loaded model in voice-prompt cache files (a prompt is per model)."""
        assert self.holder.engine is not None
        return hashlib.sha1(str(self.holder.engine.folder.resolve()).encode()).hexdigest()[:16]

    async def voice_prompt(self, voice: VoiceSource):  # -> VoicePrompt
        """:meth:`prompt_for` off the event loop, in a thread that ends with it (a pooled thread
        would keep the OpenMP team the prompt's computation starts: see ``engine/cpu/threads.py``)."""
        return await in_own_thread(self.prompt_for, voice)

    def prompt_for(self, voice: VoiceSource):  # -> VoicePrompt
        """The voice's prompt for the loaded model: from its cache file, else computed and cached.
        The one place prompts are made for stored voices (studio jobs and the /tts service)."""
        from ..engine.voice import VoicePrompt

        engine = self.holder.engine
        if engine is None:
            raise ModelNotReady(self.holder.state, "the model is not loaded yet")
        path = self.storage.voice_prompt(voice.id, self.model_key())
        with self._prompt_locks.setdefault(voice.id, threading.Lock()):
            if path.is_file():
                try:
                    return VoicePrompt.load(path)
                except ValueError:
                    logger.warning("recomputing unreadable voice prompt %s", path)
            started = time.perf_counter()
            prompt = engine.create_voice(voice.audio_path, voice.transcript, voice.transcript is None)
            logger.info("computed voice %s in %.1fs", voice.id, time.perf_counter() - started)
            try:
                prompt.save(path)
            except OSError as exc:  # a cache: a full disk costs the next use a recomputation, not this one
                logger.warning("voice %s not cached (%s); it is computed again next time", voice.id, exc)
            return prompt

    def _options(self, request: Synthesis, engine: Any = None):  # -> GenerationOptions
        from ..engine.sampling import GenerationOptions

        engine = engine or self.holder.engine
        assert engine is not None
        opts = request.options
        base = engine.default_options()
        greedy = bool(opts.get("greedy"))

        def pick(name: str, default: Any) -> Any:
            return opts[name] if opts.get(name) is not None else default

        talker = replace(
            base.talker,
            do_sample=base.talker.do_sample and not greedy,
            temperature=pick("temperature", base.talker.temperature),
            top_k=pick("top_k", base.talker.top_k),
            top_p=pick("top_p", base.talker.top_p),
        )
        sub = replace(base.subtalker, do_sample=base.subtalker.do_sample and not greedy)
        return GenerationOptions(
            talker,
            sub,
            pick("repetition_penalty", base.repetition_penalty),
            seed=request.seed,
            max_frames=opts.get("max_frames"),
        )

    async def synthesize(self, request: Synthesis) -> SynthesisStream:
        from ..engine.engine import Request

        speaker = request.options.get("speaker")
        if speaker:  # a preset speaker: the CustomVoice model that has it
            holder = self.models.speaker_of(speaker) if self.models is not None else None
            if holder is None:
                raise ValueError(f"no CustomVoice model with the speaker {speaker!r} is running")
            batcher = await holder.wait_ready(0)
            options = self._options(request, batcher.engine)
            instruct = request.options.get("instruct")
            return batcher.submit(
                Request(request.text, None, request.language, options, speaker=speaker, instruct=instruct)
            )
        batcher = await self.holder.wait_ready(0)
        assert request.voice is not None
        prompt = await self.voice_prompt(request.voice)
        return batcher.submit(Request(request.text, prompt, request.language, self._options(request)))


# --------------------------------------------------------------------------------------- remote
class RemoteError(RuntimeError):
    """The remote service refused or failed a request; the message is its own, for people.

    ``retryable`` is set for answers that say "later" (busy, loading, gateway trouble).
    """

    RETRY_STATUSES = (429, 502, 503, 504)

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = status in self.RETRY_STATUSES


class RemoteStream:
    """Streams ``POST /clone`` (``stream: true``) and yields the audio once it is complete.

    Progress comes from the bytes received (16-bit PCM after a 44-byte header); the audio is
    decoded once at the end with the real decoder, which accepts streamed WAV headers.
    """

    def __init__(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], max_frames: int) -> None:
        self.client, self.url, self.body, self.max_frames = client, url, body, max_frames
        self.finish_reason: str | None = None
        self._cancelled = asyncio.Event()
        self.frames = 0

    def cancel(self) -> None:
        self._cancelled.set()

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        data = bytearray()
        async with self.client.stream("POST", self.url, json=self.body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise RemoteError(_remote_message(response), response.status_code)
            async for piece in response.aiter_bytes():
                if self._cancelled.is_set():
                    self.finish_reason = "cancelled"
                    return  # closing the connection stops the generation on the server
                data.extend(piece)
                frames = max(0, len(data) - _WAV_HEADER) // (2 * SAMPLES_PER_FRAME)
                if frames > self.frames:
                    self.frames = frames
                    yield Chunk(np.zeros(0, dtype=np.float32), frames, self.max_frames)
        try:
            audio, _ = load_audio(bytes(data), target_sr=SAMPLE_RATE)
        except AudioError as exc:
            raise RemoteError(f"the remote service sent audio that cannot be read: {exc}") from exc
        self.frames = len(audio) // SAMPLES_PER_FRAME
        self.finish_reason = "eos"
        yield Chunk(audio, self.frames, self.max_frames)


def _remote_message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return f"the TTS service answered {response.status_code}: {detail or response.text[:200]}"


class RemoteProvider:
    """A remote utter service at ``endpoint`` (with an optional API key)."""

    kind = "remote"
    STATUS_TTL = 5.0  # seconds a fetched /health answer is reused

    def __init__(self, endpoint: str, api_key: str | None = None, timeout: float = 900.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._headers = headers
        self._client: httpx.AsyncClient | None = None
        self._status: dict[str, Any] = {"state": ModelState.LOADING.value}
        self._checked = 0.0
        self._languages: list[str] = list(LANGUAGES)
        self._voice_b64: dict[Path, tuple[float, str]] = {}

    def start(self) -> None:
        self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout)

    def stop(self) -> None:
        self._client = None  # connections close with the event loop; nothing is running here

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self.start()
        assert self._client is not None
        return self._client

    @property
    def state(self) -> ModelState:
        try:
            return ModelState(self._status.get("state", "loading"))
        except ValueError:
            return ModelState.LOADING

    def status(self) -> dict[str, Any]:
        return {"model": self.endpoint, **self._status, "provider": self.kind, "endpoint": self.endpoint}

    def languages(self) -> list[str]:
        return list(self._languages)

    async def refresh(self) -> None:
        """Ask the service how its model is (``GET /health``); called by the worker loop."""
        if time.monotonic() - self._checked < self.STATUS_TTL:
            return
        self._checked = time.monotonic()
        try:
            response = await self.client.get(f"{self.endpoint}/health", timeout=10.0)
            body = (
                response.json()
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
        except (httpx.HTTPError, ValueError) as exc:
            self._status = {
                "state": ModelState.FAILED.value,
                "error": f"the TTS service at {self.endpoint} cannot be reached: {exc or type(exc).__name__}",
                "hint": "Check --tts-endpoint and that the service is running; jobs wait until it answers.",
            }
            return
        if response.status_code in (401, 403):
            self._status = {
                "state": ModelState.FAILED.value,
                "error": f"the TTS service refused the API key ({response.status_code})",
                "hint": "Set --tts-api-key (UTTER_TTS_API_KEY) to the service's key.",
            }
            return
        model = body.get("model") if isinstance(body.get("model"), dict) else body
        state = model.get("state") or ("ready" if response.status_code == 200 else "loading")
        self._status = {k: model.get(k) for k in ("progress", "error", "hint") if model.get(k) is not None}
        self._status["state"] = state
        langs = model.get("supported_languages") or model.get("languages")
        if isinstance(langs, list) and langs:
            self._languages = [str(x) for x in langs]

    def _reference_b64(self, path: Path) -> str:
        mtime = path.stat().st_mtime
        cached = self._voice_b64.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, base64.b64encode(path.read_bytes()).decode("ascii"))
            self._voice_b64 = {path: cached}  # keep one: references can be megabytes
        return cached[1]

    async def synthesize(self, request: Synthesis) -> SynthesisStream:
        if request.voice is None:
            raise RemoteError("Preset speakers run on the studio's own engine, not a remote service.")
        opts = request.options
        greedy = bool(opts.get("greedy"))
        body: dict[str, Any] = {
            "text": request.text,
            "language": request.language,
            "ref_audio_base64": await asyncio.to_thread(self._reference_b64, request.voice.audio_path),
            "ref_text": request.voice.transcript,
            "x_vector_only": request.voice.transcript is None,
            "seed": request.seed,
            "stream": True,
        }
        if greedy:
            body["do_sample"] = body["subtalker_do_sample"] = False
        for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
            if opts.get(name) is not None:
                body[name] = opts[name]
        if opts.get("max_frames"):
            body["max_new_tokens"] = int(opts["max_frames"]) + 1  # the seed API's off-by-one
        return RemoteStream(self.client, f"{self.endpoint}/clone", body, int(opts.get("max_frames") or 0))


def make_provider(settings, storage: Storage) -> TTSProvider:  # settings: StudioSettings
    """The remote provider when ``tts_endpoint`` is set, else the in-process engine."""
    if settings.tts_endpoint:
        key = settings.tts_api_key.get_secret_value() if settings.tts_api_key else None
        return RemoteProvider(settings.tts_endpoint, key, settings.tts_timeout)
    return LocalProvider(EngineHolder.from_settings(settings.service_settings()), storage)
