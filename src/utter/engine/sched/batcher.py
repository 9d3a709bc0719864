"""Continuous batching with streaming audio: the engine as a service for many concurrent callers.

One worker thread owns the engine (``worker.py``: a thread per GPU batcher, one for all of a
process's CPU batchers). In each of its turns it admits queued requests (prefill), drops
cancelled ones, runs one decode step and turns each request's new frames into PCM through that
request's streaming codec decoder. Callers get a :class:`Stream` at once and read audio chunks
from it, from asyncio (``async for``) or from plain threads (``for``). The first chunk is small
so the first audio comes early; later chunks are larger to amortise decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from ..codec_slots import CodecSlots
from ..engine import MAX_FRAMES, Engine, Request
from ..streaming import CHUNK_FRAMES, FIRST_CHUNK_FRAMES, PcmChunker
from .runner import Sequence
from .worker import Worker, worker_for

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The bounded request queue is full; retry later."""


class WorkerError(RuntimeError):
    """The worker failed while this request was running or waiting (the server's fault, not the
    request's); the worker has recovered, or is down for good. Retry the request."""


# A worker that fails this many times within RESTART_WINDOW_S stops restarting: something is
# broken for good, and /health must say so (503) so a supervisor restarts the process.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class AudioChunk:
    """A piece of a request's audio: float32 mono PCM at 24 kHz, in order."""

    pcm: np.ndarray
    frames_done: int  # frames generated so far, this chunk included
    max_frames: int  # the request's frame limit (for progress)


_END = object()


class Stream:
    """Audio of one request as it is generated. Iterate (sync or async) to get :class:`AudioChunk`s.

    After iteration ends, ``finish_reason`` is "eos", "max_frames" or "cancelled"; ``error``
    holds the exception if the request failed (iteration re-raises it).
    """

    def __init__(self, request: Request, request_id: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self.request = request
        self.id = request_id
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.frames = 0
        self.max_frames = 0
        self.submitted_at = time.perf_counter()
        self.first_audio_at: float | None = None
        self._loop = loop
        self._async_q: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._sync_q: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._batcher: Batcher | None = None

    # -- producer side (worker thread) --
    def _put(self, item: object) -> None:
        if self._loop is not None and self._async_q is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_q.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone; nobody is listening
                self._cancel.set()
        else:
            self._sync_q.put(item)

    # -- consumer side --
    def cancel(self) -> None:
        """Stop generating this request; it costs no compute from the next step on."""
        self._cancel.set()
        if self._batcher is not None:
            self._batcher._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _check(self, item: object) -> AudioChunk | None:
        if item is _END:
            if self.error is not None:
                raise self.error
            return None
        return item  # type: ignore[return-value]

    def __iter__(self):
        if self._async_q is not None:
            raise RuntimeError("this stream was created inside an event loop; use `async for`")
        while (chunk := self._check(self._sync_q.get())) is not None:
            yield chunk

    async def __aiter__(self):
        if self._async_q is None:
            raise RuntimeError("this stream was created outside an event loop; use `for`")
        try:
            while (chunk := self._check(await self._async_q.get())) is not None:
                yield chunk
        finally:
            if self.finish_reason is None:  # the consumer went away early
                self.cancel()

    def audio(self) -> np.ndarray:
        """Block until done and return the whole waveform (sync streams only)."""
        parts = [c.pcm for c in self]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    async def audio_async(self) -> np.ndarray:
        parts = [c.pcm async for c in self]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@dataclass
class _Live:
    """Worker-side state of an admitted request."""

    stream: Stream
    seq: Sequence
    chunker: PcmChunker  # its own AudioStream decodes, or ...
    slot: int | None = None  # ... its slot of the batcher's CodecSlots


class Batcher:
    """Runs an :class:`Engine` for many concurrent requests (continuous batching + streaming)."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 16,
        max_queue: int = 64,
        first_chunk_frames: int = FIRST_CHUNK_FRAMES,
        chunk_frames: int = CHUNK_FRAMES,
        max_frames: int | None = None,
    ) -> None:
        self.engine = engine
        # The most frames one request may ask for (a server's cap, at most the engine's).
        self.max_frames = min(max_frames or MAX_FRAMES, MAX_FRAMES)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self._waiting: deque[Stream] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._worker: Worker | None = None
        self._thread: threading.Thread | None = None  # the worker's thread that serves this batcher
        self._left = threading.Event()  # set once the worker has ended its requests and let it go
        self._live: dict[int, _Live] = {}
        # Liveness, read by /health: the worker stamps every turn of its loop (also when idle).
        self.heartbeat = time.monotonic()
        self.steps = 0
        self.failures: deque[float] = deque(maxlen=MAX_RESTARTS)  # when the loop last failed
        self.dead: str | None = None  # why the worker gave up for good (None while it serves)
        # On GPUs the codec decodes on a CUDA stream of its own: its work (from host codes to
        # host PCM) overlaps the decode loop's instead of queueing behind the next step, and
        # reading its PCM waits for the codec only. Every codec tensor of the batcher (warm
        # voice states, codec slots and their graphs) is made on that stream.
        # UTTER_CODEC_STREAM=0 keeps the codec on the decode loop's stream (a way back should a
        # GPU misbehave with two streams).
        cuda = engine.device.type == "cuda"
        own = cuda and os.environ.get("UTTER_CODEC_STREAM", "1") != "0"
        self._codec_stream = torch.cuda.Stream(device=engine.device) if own else None
        # On GPUs every stream's codec state lives in a slot of one pool and the chunks due at a
        # step are decoded in one call per chunk length, replayed from a CUDA graph per batch
        # bucket (codec_slots.py). On CPUs each stream pushes its own AudioStream: bit-exact, and
        # faster there than one batched call (8 streams at 0.6B: 1.28 against 1.09 audio s/s).
        # UTTER_CODEC_SLOTS=0/1 and UTTER_CODEC_GRAPHS=0 override.
        self._slots: CodecSlots | None = None
        if os.environ.get("UTTER_CODEC_SLOTS", "1" if cuda else "0") != "0":
            graphs = cuda and os.environ.get("UTTER_CODEC_GRAPHS", "1") != "0"
            with self._codec():
                self._slots = CodecSlots(
                    engine.codec.decoder, max_batch, (first_chunk_frames, chunk_frames), capture=graphs
                )

    # ---------------------------------------------------------------- control
    def start(self) -> Batcher:
        """Join a worker (on a CPU the process's one, see ``worker.py``) and start serving."""
        if self._worker is None:
            self._worker = worker_for(self.engine.device)
            self._thread = self._worker.attach(self)
        return self

    def stop(self) -> None:
        """Stop serving: queued and running requests end "cancelled"; returns once they have."""
        self._stop.set()
        self._wake()
        if self._worker is not None:
            if not self._left.wait(timeout=30):
                logger.warning("the batcher's worker did not let it go within 30 s")
            self._worker = None
            self._thread = None

    def __enter__(self) -> Batcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wake(self) -> None:
        self._wakeup.set()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._live)

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running and has not given up."""
        thread = self._thread
        return self.dead is None and thread is not None and thread.is_alive() and not self._left.is_set()

    def health(self) -> dict[str, object]:
        """Liveness for /health: whether the worker runs, when it last turned its loop, failures."""
        return {
            "alive": self.alive,
            "last_step_age_s": round(time.monotonic() - self.heartbeat, 3),
            "steps": self.steps,
            "recent_failures": len(self.failures),
            "error": self.dead,
        }

    # ---------------------------------------------------------------- submit
    def submit(self, request: Request) -> Stream:
        """Queue a request and return its stream at once.

        Raises ValueError for a bad request (empty text, unknown language ...),
        :class:`QueueFullError` when ``max_queue`` requests are already waiting and
        :class:`WorkerError` when the worker is down for good.
        """
        self.engine.validate(request)
        asked = request.options.max_frames if request.options is not None else None
        if asked is not None and asked > self.max_frames:
            raise ValueError(
                f"max_frames is {asked}; this server allows at most {self.max_frames} frames "
                f"({self.max_frames * 0.08:g} s of audio) per request: split longer texts"
            )
        if self.dead is not None:
            raise WorkerError(f"the generation worker is down ({self.dead})")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        stream = Stream(request, f"req-{next(self._ids)}", loop)
        stream._batcher = self
        if request.feed is not None:  # text arriving later wakes the worker
            request.feed.bind(self._wake)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(stream)
        self._wake()
        return stream

    # ---------------------------------------------------------------- worker
    def _turn_safely(self) -> bool:
        """One turn of the worker's loop (see :meth:`_turn`); returns whether it stepped.

        A failed turn fails the requests it held (:class:`WorkerError`), forgets their rows and
        counts as busy (the next turn comes at once); a batcher that keeps failing
        (``MAX_RESTARTS`` in ``RESTART_WINDOW_S``) gives up: ``dead`` is set, the worker lets it
        go and fails everything queued, so /health reports it and new requests get a clear error.
        """
        try:
            return self._turn()
        except BaseException as exc:  # noqa: BLE001 - whatever it was, the callers must hear
            logger.exception("batcher worker failed")
            self._recover(exc)
            return True

    def _turn(self) -> bool:
        """Admit, drop the cancelled, feed text, then one decode step if any row can take it."""
        self.heartbeat = time.monotonic()
        self._admit()
        self._drop_cancelled()
        self._pump_text()
        if not self._live:
            self.engine.runner.release()  # idle: give back the memory a long request grew
        if not self.engine.runner.active:  # idle, or every request waits for its text
            return False
        self._step()
        self.steps += 1
        return True

    def _drain_for_exit(self) -> None:
        """Run by the worker as it lets this batcher go: cancelled at a stop, failed if dead."""
        down = None if self.dead is None else WorkerError(f"the generation worker is down ({self.dead})")
        self._drain(down)

    def _recover(self, exc: BaseException) -> None:
        """Fail the live requests and forget their rows without touching the (suspect) caches."""
        now = time.monotonic()
        self.failures.append(now)
        error = WorkerError(f"generation failed on the server ({type(exc).__name__}: {exc}); retry")
        error.__cause__ = exc
        self.engine.runner.reset()
        for live in list(self._live.values()):
            self._finish(live, "error", error)
        self._live.clear()
        if len(self.failures) == MAX_RESTARTS and now - self.failures[0] < RESTART_WINDOW_S:
            last = f"{type(exc).__name__}: {exc}"
            self.dead = f"{MAX_RESTARTS} failures within {RESTART_WINDOW_S:g} s, last: {last}"
            logger.critical("batcher worker gives up: %s", self.dead)

    def _drain(self, error: BaseException | None) -> None:
        """End every live and waiting request: cancelled at a clean stop, else with ``error``."""
        reason = "cancelled" if error is None else "error"
        for live in list(self._live.values()):
            self._finish(live, reason, error)
        self._live.clear()
        self.engine.runner.reset(reason)
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for stream in waiting:
            stream.error, stream.finish_reason = error, reason
            stream._put(_END)

    def _pump_text(self) -> None:
        """Hand requests whose text is arriving the words that became final; those that were
        parked for want of text rejoin the batch."""
        fed = [live.seq for live in self._live.values() if live.seq.feed is not None]
        for seq in fed:
            if self.engine.pump_text(seq):
                seq.max_frames = min(seq.max_frames, self.max_frames)
        if fed:
            self.engine.runner.resume()

    def _admit(self) -> None:
        """Move waiting requests into free rows, all of them prefilled in one call (they join at
        the next step together); a request that cannot be prepared fails alone. A request whose
        text is arriving waits, in its place in the queue, until its first words are final."""
        runner = self.engine.runner
        ready: list[_Live] = []
        early: list[Stream] = []  # fed requests with no final word yet
        while runner.live + len(ready) < self.max_batch:
            with self._lock:
                if not self._waiting:
                    break
                stream = self._waiting.popleft()
            if stream.cancelled:
                stream.finish_reason = "cancelled"
                stream._put(_END)
                continue
            if not self.engine.text_ready(stream.request):
                early.append(stream)
                continue
            try:
                seq = self.engine._sequence(stream.request)
                seq.max_frames = min(seq.max_frames, self.max_frames)  # the server's cap, also by default
                live = self._open(stream, seq)
            except Exception as exc:  # a bad request must not take the batch down
                self._refuse(stream, exc)
                continue
            ready.append(live)
        if early:
            with self._lock:
                self._waiting.extendleft(reversed(early))
        if not ready:
            return
        try:
            runner.add_many([live.seq for live in ready])
            admitted = ready
        except Exception:  # noqa: BLE001 - find the request at fault: one by one
            logger.exception("batched admission of %d requests failed; admitting one by one", len(ready))
            for live in ready:  # whatever got in before the failure leaves again
                runner.cancel(live.seq)
            admitted = []
            for live in ready:
                try:
                    runner.add(live.seq)
                    admitted.append(live)
                except Exception as exc:  # noqa: BLE001 - reported to its caller
                    self._close(live)
                    self._refuse(live.stream, exc)
        for live in admitted:
            live.stream.max_frames = live.seq.max_frames
            self._live[id(live.seq)] = live

    def _open(self, stream: Stream, seq: Sequence) -> _Live:
        """A request's worker-side state: its chunker and codec state (a slot, or a stream)."""
        with self._codec():
            if self._slots is None:
                audio = self.engine.audio_stream(stream.request.voice)
                return _Live(stream, seq, PcmChunker(audio, self.first_chunk_frames, self.chunk_frames))
            slot = self._slots.open(self.engine.warm_stream(stream.request.voice))
        return _Live(stream, seq, PcmChunker(None, self.first_chunk_frames, self.chunk_frames), slot)

    def _close(self, live: _Live) -> None:
        """Give back a request's codec slot (once)."""
        if live.slot is not None and self._slots is not None:
            self._slots.close(live.slot)
            live.slot = None

    def _codec(self) -> contextlib.AbstractContextManager:
        """Where codec work runs: the codec's own CUDA stream on GPUs, else nothing special."""
        if self._codec_stream is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self._codec_stream)

    def _refuse(self, stream: Stream, exc: BaseException) -> None:
        logger.exception("request %s failed at admission", stream.id, exc_info=exc)
        stream.error, stream.finish_reason = exc, "error"
        stream._put(_END)

    def _drop_cancelled(self) -> None:
        for live in list(self._live.values()):
            if live.stream.cancelled:
                self.engine.runner.cancel(live.seq)
                self._finish(live, "cancelled")

    def _step(self) -> None:
        """One decode step; then the audio of every stream with a chunk due, decoded in one
        batched call, handed out before the streams that ended are finished."""
        due: list[tuple[_Live, torch.Tensor]] = []
        ended: list[tuple[_Live, str]] = []
        runner = self.engine.runner
        outputs = runner.step()
        waiting = {id(p.seq) for p in runner.parked}
        for out in outputs:
            live = self._live.get(id(out.sequence))
            if live is None:
                continue
            if out.codes is not None:
                live.stream.frames += 1
                chunk = live.chunker.offer(out.codes)
                if chunk is None and id(out.sequence) in waiting:
                    chunk = live.chunker.take()  # waiting for text: play what is made so far
                if chunk is not None:
                    due.append((live, chunk))
            else:
                ended.append((live, out.sequence.reason))
                last = live.chunker.take()  # the frames since its last chunk
                if last is not None:
                    due.append((live, last))
        if due:
            for (live, _), pcm in zip(due, self._decode(due)):
                self._emit(live, pcm)
        for live, reason in ended:
            self._finish(live, reason)

    def _decode(self, due: list[tuple[_Live, torch.Tensor]]) -> list[np.ndarray]:
        """The PCM of each (request, chunk codes [T, Q]): with slots, one call per chunk length."""
        with self._codec():
            if self._slots is None:
                return [live.chunker.stream.push(chunk) for live, chunk in due]  # type: ignore[union-attr]
            slots = [live.slot for live, _ in due]
            return self._slots.push_chunks(slots, [chunk for _, chunk in due])  # type: ignore[arg-type]

    def _emit(self, live: _Live, pcm: np.ndarray | None) -> None:
        if pcm is None:
            return
        if live.stream.first_audio_at is None:
            live.stream.first_audio_at = time.perf_counter()
        live.stream._put(AudioChunk(pcm, live.stream.frames, live.stream.max_frames))

    def _finish(self, live: _Live, reason: str, error: BaseException | None = None) -> None:
        """End a request (its last audio was handed out by the step that ended it)."""
        self._live.pop(id(live.seq), None)
        self._close(live)
        live.stream.error = error
        live.stream.finish_reason = "error" if error is not None else reason
        live.stream._put(_END)
