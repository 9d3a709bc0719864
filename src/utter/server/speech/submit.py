"""From a validated request to audio: options, admission to the batcher, collecting or streaming.

Every route that speaks (seed /clone, /clone-batch, jobs, OpenAI /v1/audio/speech) goes through
these few functions, so limits, timeouts, cancellation and error mapping are written once.
A stream whose consumer goes away (timeout, client disconnect, error) is always cancelled, so
abandoned requests stop costing compute at the next decode step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
from starlette.requests import Request as HttpRequest

from ...audio.encode import AudioEncoder
from ...engine.engine import Engine, Request
from ...engine.sampling import GenerationOptions, SamplingOptions
from ...engine.sched.batcher import Batcher, QueueFullError, WorkerError
from ...engine.voice import VoicePrompt
from ..http.errors import ApiError, busy
from ..schemas import SamplingFields
from ..settings import ServerSettings
from .longform import AnyStream, PartedStream, part_requests, parts_at_once, parts_of

logger = logging.getLogger(__name__)


def check_text(text: str, settings: ServerSettings, field: str = "text") -> str:
    if not text or not text.strip():
        raise ApiError(400, f"{field} is empty: give the text to speak.", param=field)
    if len(text) > settings.max_text_chars:
        limit = settings.max_text_chars
        message = f"{field} has {len(text)} characters; at most {limit} are allowed per request."
        raise ApiError(400, message, param=field)
    return text


def check_language(engine: Engine, language: str | None, field: str = "language") -> str:
    """The canonical name of ``language`` (case-insensitive); 400 for one the model lacks."""
    name = (language or "Auto").strip()
    for known in engine.languages:
        if known.lower() == name.lower():
            return known
    message = f"Unknown language {language!r}; choose one of: {', '.join(engine.languages)}."
    raise ApiError(400, message, param=field)


def generation_options(engine: Engine, fields: SamplingFields, max_frames: int | None) -> GenerationOptions:
    """The checkpoint's defaults with the request's overrides applied."""
    base = engine.default_options()

    def overridden(options: SamplingOptions, prefix: str) -> SamplingOptions:
        names = ("do_sample", "temperature", "top_k", "top_p")
        given = {name: getattr(fields, prefix + name) for name in names}
        return replace(options, **{name: value for name, value in given.items() if value is not None})

    penalty = fields.repetition_penalty
    return GenerationOptions(
        overridden(base.talker, ""),
        overridden(base.subtalker, "subtalker_"),
        base.repetition_penalty if penalty is None else penalty,
        seed=fields.seed,
        max_frames=max_frames,
    )


def frames_from_max_new_tokens(max_new_tokens: int | None) -> int | None:
    """The seed's ``max_new_tokens`` -> our frame cap.

    The official package stops one short (``max_new_tokens=N`` gives at most N-1 frames), and
    seed clients tuned their values against it, so we keep that meaning: N-1 frames.
    """
    return None if max_new_tokens is None else max(1, max_new_tokens - 1)


def submit(
    batcher: Batcher,
    text: str,
    voice: VoicePrompt,
    language: str,
    options: GenerationOptions,
    settings: ServerSettings,
    speaker: str | None = None,
    instruct: str | None = None,
) -> AnyStream:
    """Queue one request (a long text: its parts, see longform.py); 429 + Retry-After when the
    queue is full, 400 for a bad request (one this model cannot serve included: the message
    names the model it needs)."""
    request = Request(text, voice, language, options, speaker=speaker, instruct=instruct)
    # A long text is spoken in parts (longform.py), unless its voice is made afresh by each
    # generation (a VoiceDesign description: every part would be another voice).
    parts = parts_of(text, settings.split_chars) if voice is not None or speaker else [text]
    try:
        if len(parts) > 1:
            parallel = parts_at_once(settings.split_parallel, batcher)
            stream: AnyStream = PartedStream(
                batcher,
                part_requests(request, parts),
                parallel,
                options.max_frames,
                settings.split_crossfade_ms,
            )
        else:
            stream = batcher.submit(request)
    except QueueFullError as exc:
        raise busy(settings.retry_after_s, f"The server is busy ({exc}); retry shortly.") from exc
    except WorkerError as exc:
        raise ApiError(503, f"The server cannot generate now: {exc}.") from exc
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    # Logged inside the HTTP request, so this line links its request id to the engine's stream id.
    mode = speaker or ("design" if voice is None else "x-vector" if voice.x_vector_only else "icl")
    split = f", {len(parts)} parts" if len(parts) > 1 else ""
    logger.info("submitted %s: %d characters, %s, %s%s", stream.id, len(text), language, mode, split)
    return stream


def _stream_error(stream: AnyStream, exc: BaseException) -> ApiError:
    if isinstance(exc, WorkerError):  # not this request's fault: another try can succeed
        logger.error("request %s failed: %s", stream.id, exc)
        message = "Generation failed on the server and was not completed; retry the request."
        return ApiError(503, message, {"Retry-After": "1"})
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    logger.error("request %s failed: %s", stream.id, exc)
    return ApiError(500, "Generation failed; the server log has the details.")


class AudioChunks:
    """Async iteration over a stream's PCM chunks with an idle timeout; cancels what it abandons."""

    def __init__(self, stream: AnyStream, timeout_s: float, http: HttpRequest | None = None) -> None:
        self.stream, self.timeout_s, self.http = stream, timeout_s, http
        self._agen = stream.__aiter__()

    async def next(self) -> np.ndarray | None:
        """The next chunk, or None at the end. Raises ApiError (timeout 504, failure 4xx/500)."""
        try:
            chunk = await asyncio.wait_for(self._agen.__anext__(), self.timeout_s)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError as exc:
            self.stream.cancel()
            message = f"Generation produced nothing for {self.timeout_s:g} s and was stopped."
            raise ApiError(504, message) from exc
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - the engine's error for this request
            raise _stream_error(self.stream, exc) from exc
        if self.http is not None and await self.http.is_disconnected():
            logger.info("client went away; cancelling %s", self.stream.id)
            self.stream.cancel()
            raise ApiError(499, "The client closed the request.")
        return chunk.pcm

    async def close(self) -> None:
        if self.stream.finish_reason is None:
            self.stream.cancel()
        await self._agen.aclose()


async def collect(stream: AnyStream, settings: ServerSettings, http: HttpRequest | None = None) -> np.ndarray:
    """The whole waveform of ``stream``, within ``generation_timeout_s`` in total."""
    chunks = AudioChunks(stream, settings.generation_timeout_s, http)
    parts: list[np.ndarray] = []
    try:
        async with _Deadline(settings.generation_timeout_s, stream):
            while (pcm := await chunks.next()) is not None:
                parts.append(pcm)
    finally:
        await chunks.close()
    if stream.finish_reason == "cancelled":  # not by us: the server is stopping
        raise ApiError(503, "The generation was cancelled because the server is shutting down; retry.")
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class _Deadline:
    """Async context manager: cancel the stream and answer 504 once ``seconds`` have passed."""

    def __init__(self, seconds: float, stream: AnyStream) -> None:
        self.seconds, self.stream = seconds, stream
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False

    async def __aenter__(self) -> None:
        def expire() -> None:
            self._expired = True
            self.stream.cancel()

        self._handle = asyncio.get_running_loop().call_later(self.seconds, expire)

    async def __aexit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired:
            raise ApiError(504, f"Generation took longer than {self.seconds:g} s and was stopped.")


async def open_audio_stream(
    stream: AnyStream, settings: ServerSettings
) -> tuple[AudioChunks, np.ndarray | None]:
    """Wait for the first chunk before answering, so errors before any audio get a real status."""
    chunks = AudioChunks(stream, settings.generation_timeout_s)
    try:
        first = await chunks.next()
    except BaseException:
        await chunks.close()
        raise
    return chunks, first


async def encoded_body(
    chunks: AudioChunks, first: np.ndarray | None, encoder: AudioEncoder
) -> AsyncIterator[bytes]:
    """Response body of a streamed audio file. Headers are already sent, so a failure mid-way
    can only end the body early; it is logged with the request id."""
    try:
        pcm = first
        while pcm is not None:
            data = encoder.write(pcm)
            if data:
                yield data
            pcm = await chunks.next()
        tail = encoder.close()
        if tail:
            yield tail
    except ApiError as exc:
        logger.warning("stream %s ended early: %s", chunks.stream.id, exc.message)
    finally:
        await chunks.close()
