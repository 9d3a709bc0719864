"""Long texts over the API: spoken in parts, several at once, streamed back as one audio.

The model does best on a few sentences at a time: past a few hundred characters it drifts and
slows down (every frame attends to everything before it), and one request may make at most
``MAX_FRAMES`` frames (5.5 minutes), so a long text sent whole could be cut short. So a text
longer than ``split_chars`` is cut at sentence boundaries (``textsplit``), each part is a
request of its own with the same voice, and up to ``parallel`` parts are generated at once in
the batch: on a GPU a step with a few more rows costs about the same, so a long text is done
several times sooner. The caller sees one stream: the parts' audio in order, joined with a
short crossfade (``audio.crossfade``) as it comes, the first part's first audio as early as a
short text's.

A :class:`PartedStream` has the attributes of the engine's ``Stream`` that the routes use
(``id``, ``frames``, ``max_frames``, ``finish_reason``, ``error``, ``cancel``, ``async for``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np

from ...audio import SAMPLE_RATE
from ...audio.crossfade import Crossfader
from ...engine.engine import Request
from ...engine.sched.batcher import AudioChunk, Batcher, QueueFullError, Stream
from .textsplit import cost, split_text

logger = logging.getLogger(__name__)

FADE_MS = 40.0  # the crossfade at each seam, by default (the studio's default too)
RETRY_S = 0.1  # a part the full queue refused is offered again this soon


class PartedStream:
    """The parts of one long text, generated up to ``parallel`` at once, read as one stream.

    Parts are submitted in order: the first alone, then, from its first audio on, as many as
    make ``parallel`` running, another each time one ends; the audio of a part that is ahead
    waits in its own stream until its turn. ``max_frames`` limits the whole text (the caller's
    limit; :func:`part_requests` gives each part the same one, which none can exceed): the
    audio stops there and the parts still running are cancelled (``finish_reason``
    "max_frames").

    With ``open`` the parts are not all known yet (a realtime reply, cut as its text comes):
    :meth:`add` appends one, :meth:`end` says there will be no more, and the stream ends only
    after both.
    """

    def __init__(
        self,
        batcher: Batcher,
        requests: list[Request],
        parallel: int,
        max_frames: int | None = None,
        fade_ms: float = FADE_MS,
        open: bool = False,
    ) -> None:
        if not requests:
            raise ValueError("no parts to speak")
        for request in requests:  # every part is checked before the first one runs
            batcher.engine.validate(request)
        self.limit = max_frames  # the whole text's frames (None: each part's own limit only)
        self._batcher = batcher
        self._waiting: deque[Request] = deque(requests)
        self._running: deque[Stream] = deque()
        self._parallel = max(1, parallel)
        self._fade = int(SAMPLE_RATE * fade_ms / 1000)
        self._frame_samples = batcher.engine.codec.frame_samples
        self._estimates = [self._estimate(r) for r in requests]
        self._started: list[Stream] = []
        self._done_frames = 0  # frames of the parts already read to their end
        self._cancelled = False
        self._open = open
        self._more = asyncio.Event()  # set by add() and end(): the reader waits on it
        self.parts = len(requests)
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.submitted_at = time.perf_counter()
        self.first_audio_at: float | None = None
        # The first part alone at first: admitted with others it would share their prefill (on
        # a CPU, seconds for four), so the rest start once its first audio is out.
        self._submit()  # the first part's refusal (queue full, server down) is the caller's answer
        self.id = self._started[0].id + ("+" if open else f"+{self.parts - 1}")

    # ------------------------------------------------------------------ what the routes read
    @property
    def frames(self) -> int:
        """Frames made so far, every part's together (what progress and logs report)."""
        made = self._done_frames + sum(s.frames for s in self._running)
        return made if self.limit is None else min(made, self.limit)

    @property
    def max_frames(self) -> int:
        """The most frames the whole text may take: each part's limit (estimated until it runs)."""
        total = sum(s.max_frames or est for s, est in zip(self._started, self._estimates))
        total += sum(self._estimates[len(self._started) :])
        return total if self.limit is None else min(total, self.limit)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop every running part; the parts not yet started never will."""
        self._cancelled = True
        self._waiting.clear()
        self._more.set()
        for stream in self._running:
            stream.cancel()

    def add(self, request: Request) -> None:
        """Another part after the others (only while open); raises ValueError for a part the
        engine refuses, WorkerError when the engine is down."""
        if not self._open:
            raise RuntimeError("this stream's parts are complete")
        if self._cancelled:
            return
        self._batcher.engine.validate(request)
        self._waiting.append(request)
        self._estimates.append(self._estimate(request))
        self.parts += 1
        if self.first_audio_at is not None:  # else it waits for the first audio (see __init__)
            self._top_up()
        self._more.set()

    def end(self) -> None:
        """No more parts will be added."""
        self._open = False
        self._more.set()

    # ------------------------------------------------------------------ parts
    def _estimate(self, request: Request) -> int:
        """A part's frame limit before it runs (a text still arriving: the limit of no text)."""
        engine = self._batcher.engine
        return engine.frame_limit(0) if request.feed is not None else engine.default_max_frames(request.text)

    def _submit(self) -> None:
        request = self._waiting[0]
        stream = self._batcher.submit(request)  # raises QueueFullError, WorkerError
        self._waiting.popleft()
        self._running.append(stream)
        self._started.append(stream)

    def _top_up(self) -> None:
        """Start waiting parts while fewer than ``parallel`` run and the queue takes them."""
        while self._waiting and len(self._running) < self._parallel and not self._cancelled:
            try:
                self._submit()
            except QueueFullError:  # others are waiting too: try again at the next chunk
                return

    async def _next_part(self) -> Stream | None:
        """The stream of the next part to read, started now if it has not been (the queue may
        be full for a while), or None once cancelled."""
        while not self._running:
            if self._cancelled or not (self._waiting or self._open):
                return None
            if not self._waiting:  # an open stream between parts: wait for the next or the end
                self._more.clear()
                await self._more.wait()
                continue
            self._top_up()
            if not self._running:
                await asyncio.sleep(RETRY_S)
        return self._running[0]

    # ------------------------------------------------------------------ reading
    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        fader = Crossfader(self._fade)
        budget = None if self.limit is None else self.limit * self._frame_samples  # samples left
        reasons: list[str] = []
        limited = False
        try:
            first = True
            while (self._running or self._waiting or self._open) and not self._cancelled:
                stream = await self._next_part()
                if stream is None:  # cancelled while it waited for room in the queue
                    break
                if not first:
                    pcm = fader.seam()
                    if len(pcm):
                        pcm, budget = _within(pcm, budget)
                        yield self._chunk(pcm)
                first = False
                async for chunk in stream:
                    pcm, budget = _within(fader.push(chunk.pcm), budget)
                    if len(pcm):
                        yield self._chunk(pcm)
                    if budget == 0:
                        break
                    self._top_up()  # after the first audio is out (see __init__)
                self._running.popleft()
                self._done_frames += stream.frames
                if budget == 0:  # the caller's limit for the whole text: the rest is not needed
                    limited = True
                    stream.cancel()
                    self.cancel()
                    break
                reasons.append(stream.finish_reason or "cancelled")
                if reasons[-1] == "cancelled":  # not by us: the server is stopping
                    self.cancel()
                    break
                self._top_up()
            pcm, budget = _within(fader.finish(), budget)
            if len(pcm):
                yield self._chunk(pcm)
            if limited:
                self.finish_reason = "max_frames"
            else:
                self.finish_reason = "cancelled" if self._cancelled else _reason(reasons)
        except BaseException as exc:
            self.error = exc if isinstance(exc, Exception) else None
            self.finish_reason = "error" if isinstance(exc, Exception) else "cancelled"
            raise
        finally:
            if self.finish_reason is None:  # the reader went away early
                self.finish_reason = "cancelled"
            if self._running or self._waiting:
                self.cancel()

    def _chunk(self, pcm: np.ndarray) -> AudioChunk:
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        return AudioChunk(pcm, self.frames, self.max_frames)

    async def audio_async(self) -> np.ndarray:
        parts = [c.pcm async for c in self]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


# What the routes read audio from: one request's stream, or a long text's parts as one.
AnyStream = Stream | PartedStream


def _within(pcm: np.ndarray, budget: int | None) -> tuple[np.ndarray, int | None]:
    """``pcm`` cut to the samples left in ``budget`` (None: no limit), and what is left after."""
    if budget is None:
        return pcm, None
    pcm = pcm[:budget]
    return pcm, budget - len(pcm)


def _reason(reasons: list[str]) -> str:
    """The whole text's finish reason from its parts': cancelled (the server stopping one),
    else a frame limit (the runaway guard of a part, or the caller's for the whole), else end
    of speech."""
    if "cancelled" in reasons:
        return "cancelled"
    return "max_frames" if "max_frames" in reasons else "eos"


def parts_of(text: str, max_cost: int) -> list[str]:
    """``text`` cut into parts of at most ``max_cost`` (textsplit), or as it is when it fits (or
    with ``max_cost`` 0): the one rule the server, ``utter say`` and the benchmark split by."""
    return split_text(text, max_cost) if max_cost and cost(text) > max_cost else [text]


def parts_at_once(wanted: int, batcher: Batcher) -> int:
    """How many parts of one text run at once: ``wanted``, at most half the batch (the rest of
    the batch stays for other requests), at least one."""
    return max(1, min(wanted, batcher.max_batch // 2))


async def speak_parts(
    batcher: Batcher, requests: list[Request], parallel: int, max_frames: int | None
) -> np.ndarray:
    """The whole audio of a long text's parts (for callers outside a server: ``utter say``)."""
    return await PartedStream(batcher, requests, parallel, max_frames).audio_async()


def part_requests(request: Request, texts: list[str]) -> list[Request]:
    """One request per part: the same voice, language and options (the seed and a frame limit
    included). The studio speaks the chunks of a long text the same way (same split, same seed
    for every chunk, same crossfade), so a text and seed sound the same from either."""
    return [replace(request, text=text) for text in texts]
