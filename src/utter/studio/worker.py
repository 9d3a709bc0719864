"""Runs queued generation jobs in this process: claim, speak chunk by chunk, heartbeat, finish.

Every studio process runs one :class:`JobRunner` (``--workers N`` gives N of them on one
database). A job's text is split into chunks once (stored with the task); each chunk is spoken
with the same voice and seed and saved as it finishes, so a job interrupted by a crash resumes
with the chunks it has not finished. Up to ``chunk_parallel`` chunks are spoken at once: the
current one streams to the live audio, the next ones are spoken ahead (from the current
chunk's first audio on) and taken up in order. A heartbeat per job renews its lease, writes
progress (chunks and frames) and picks up cancel requests, which stop its streams at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select

from ..audio import SAMPLE_RATE, AudioError
from ..audio.crossfade import crossfade_join
from ..engine.sched.batcher import QueueFullError, WorkerError
from ..server.http.errors import is_storage_full, shown_error
from ..server.runtime import ModelNotReady, ModelState
from ..server.speech.textsplit import split_text
from .db import is_unavailable
from .jobs import JobQueue, make_worker_id
from .models import Generation, Task, Voice
from .provider import SAMPLES_PER_FRAME, RemoteError, Synthesis, SynthesisStream, TTSProvider, VoiceSource
from .settings import StudioSettings
from .storage import Storage

logger = logging.getLogger(__name__)

RETRY_SECONDS = 2.0  # wait before retrying a chunk the TTS could not take (queue full, remote busy)
MAX_RETRIES = 60
SAVE_EVERY_SECONDS = 3.0  # a running chunk's audio is saved this often: a stop loses at most this much
STORAGE_FULL_REASON = (
    "the server ran out of disk space while storing this generation's audio: free some space, "
    "then resume it (the audio made so far is kept)"
)


class _Stop(Exception):
    """The job must stop now: cancelled, lost its lease, or the server is shutting down."""


@dataclass
class _Plan:
    """What a job needs, read from the database in one go."""

    generation_id: str
    text: str
    language: str
    seed: int
    options: dict[str, Any]
    voice: VoiceSource | None
    chunks: list[str] | None
    busy_seconds: float


@dataclass
class _Job:
    task_id: str
    generation_id: str | None = None
    started: float = field(default_factory=time.monotonic)
    busy_before: float = 0.0
    chunks: list[str] = field(default_factory=list)
    chunks_done: int = 0
    frames_before: int = 0  # frames of the chunks taken up in order (chunks_done)
    # Chunks being spoken (the current one and those ahead) or spoken ahead and not yet taken
    # up: index -> (frames made, frame limit), so the progress shown counts the work ahead too.
    speaking: dict[int, tuple[int, int]] = field(default_factory=dict)
    streams: set[SynthesisStream] = field(default_factory=set)  # the current chunk's and those ahead
    stop_reason: str | None = None  # "cancelled", "lost", "gone", "shutdown"
    # The audio made so far, in order, as it streams (finished chunks, then the running one):
    # what GET /api/tasks/{id}/live.wav plays while the job runs.
    live: list[np.ndarray] = field(default_factory=list)
    done: bool = False

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        for stream in list(self.streams):
            stream.cancel()

    def check(self) -> None:
        if self.stop_reason is not None:
            raise _Stop(self.stop_reason)

    def progress_values(self) -> dict[str, Any]:
        total = max(len(self.chunks), 1)
        within = sum(min(made / limit, 1.0) for made, limit in self.speaking.values() if limit)
        return {
            "chunks_total": len(self.chunks),
            "chunks_done": self.chunks_done,
            "frames_done": self.frames_before + sum(made for made, _ in self.speaking.values()),
            "progress": min((self.chunks_done + within) / total, 0.999),
            "busy_seconds": self.busy_before + time.monotonic() - self.started,
            "message": f"chunk {min(self.chunks_done + 1, len(self.chunks))} of {len(self.chunks)}"
            if self.chunks
            else "starting",
        }


class JobRunner:
    def __init__(
        self, settings: StudioSettings, queue: JobQueue, storage: Storage, provider: TTSProvider
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.storage = storage
        self.provider = provider
        self.worker_id = make_worker_id()
        self.jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._unrecorded: dict[str, Callable[[], object]] = {}  # task id -> its end, not yet written
        self._loop_error: tuple[str, float] = ("", 0.0)  # the last one logged, and when

    # ---------------------------------------------------------------- control
    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        recovered = await self._recover()
        if recovered:
            logger.warning("recovered %d interrupted job(s) at start-up", recovered)
        self._loop_task = asyncio.create_task(self._loop(), name="utter-jobs")
        logger.info("job worker %s started (%d slots)", self.worker_id, self.settings.job_slots)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running ones stop and go back to the queue to resume later."""
        self._stopping = True
        for job in list(self.jobs.values()):
            job.stop("shutdown")
        self.wake()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        if self._unrecorded:  # a last try; what still fails is recovered by the next start
            await self._retry_records()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    def wake(self) -> None:
        """Look for work now (thread-safe: routes call it from the thread pool)."""
        if self._wake is not None and self._event_loop is not None and not self._event_loop.is_closed():
            self._event_loop.call_soon_threadsafe(self._wake.set)

    def live_job(self, task_id: str) -> _Job | None:
        """The running job of this process with ``task_id`` (its ``live`` audio grows), or None."""
        return self.jobs.get(task_id)

    def cancel_local(self, task_id: str) -> None:
        """Stop a job of this process at once (the database flag reaches other processes)."""
        job = self.jobs.get(task_id)
        if job is not None and self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(job.stop, "cancelled")

    # ------------------------------------------------------------------- loop
    async def _loop(self) -> None:
        assert self._wake is not None
        last_recovery = time.monotonic()
        while not self._stopping:
            try:
                if self._unrecorded:
                    await self._retry_records()
                refresh = getattr(self.provider, "refresh", None)
                if refresh is not None:
                    await refresh()
                if time.monotonic() - last_recovery > self.settings.job_lease_seconds / 2:
                    last_recovery = time.monotonic()
                    await self._recover()
                while (
                    not self._stopping
                    and self.provider.state is ModelState.READY
                    and len(self.jobs) < self.settings.job_slots
                ):
                    task_id = await asyncio.to_thread(self.queue.claim, self.worker_id)
                    if task_id is None:
                        break
                    self._spawn(task_id)
            except Exception as exc:  # noqa: BLE001 - e.g. the database is briefly unreachable: keep going
                if is_storage_full(exc) or is_unavailable(exc):  # one line, and once a minute at most
                    if str(exc) != self._loop_error[0] or time.monotonic() - self._loop_error[1] > 60:
                        logger.error("job loop: %s; retrying", exc)
                        self._loop_error = (str(exc), time.monotonic())
                else:
                    logger.exception("job loop error; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.job_poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _recover(self) -> int:
        """Take back the tasks of stopped workers; those that end keep the audio they made."""
        ended: list[str] = []
        count = await asyncio.to_thread(self.queue.recover, self.worker_id, None, ended)
        for generation_id in ended:
            await asyncio.to_thread(self._keep_made, generation_id)
        return count

    def _keep_made(self, generation_id: str | None) -> None:
        """Offer the audio a failed or cancelled job made (finished chunks, then the running one
        up to its last save) as its generation's partial result; its parts stay for a resume."""
        if not generation_id:
            return
        with self.queue.sessions() as s:
            task = s.scalar(select(Task).where(Task.generation_id == generation_id))
            chunks = len(task.chunks or []) if task is not None else 0
        parts = self.storage.made_so_far(generation_id, chunks)
        if not parts:
            return
        joined = crossfade_join(parts, SAMPLE_RATE, self.settings.crossfade_ms)
        try:
            path = self.storage.save_generation(generation_id, joined)
        except OSError as exc:  # the parts stay on disk: a resume still continues from them
            logger.warning("generation %s: its partial audio could not be saved (%s)", generation_id, exc)
            return
        seconds = len(joined) / SAMPLE_RATE
        if self.queue.keep_audio(generation_id, self.storage.relative(path), seconds):
            logger.info("generation %s keeps %.1f s of audio made before it stopped", generation_id, seconds)

    def _spawn(self, task_id: str) -> None:
        job = _Job(task_id)
        self.jobs[task_id] = job
        task = asyncio.create_task(self._run(job), name=f"utter-job-{task_id}")
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            self.jobs.pop(task_id, None)
            self.wake()  # a slot is free

        task.add_done_callback(done)

    # -------------------------------------------------------------------- job
    async def _run(self, job: _Job) -> None:
        beat = asyncio.create_task(self._heartbeat(job))
        outcome: Callable[[], object] | None = None
        try:
            outcome = await self._generate(job)
        except _Stop as stop:
            outcome = self._stopped(job, str(stop))
        except ModelNotReady as exc:
            outcome = partial(self.queue.release, job.task_id, self.worker_id, f"waiting: {exc.detail}")
        except (ValueError, RemoteError) as exc:
            logger.info("job %s failed: %s", job.task_id, exc)
            outcome = self._failed(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the worker goes on
            if is_storage_full(exc):
                logger.error("job %s stopped: out of disk space (%s)", job.task_id, exc)
                outcome = self._failed(job, STORAGE_FULL_REASON)
            elif is_unavailable(exc):  # back to the queue (written once the database is back)
                logger.error("job %s stopped: the database is unavailable (%s)", job.task_id, exc)
                message = "waiting: the database was unavailable; it resumes from its finished chunks"
                outcome = partial(self.queue.release, job.task_id, self.worker_id, message)
            else:
                logger.exception("job %s failed", job.task_id)
                outcome = self._failed(job, f"generation failed: {shown_error(exc)}")
        finally:
            job.done = True
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        if outcome is not None:
            await self._record(job.task_id, outcome)

    async def _record(self, task_id: str, outcome: Callable[[], object]) -> None:
        """Write how a job ended. A database that takes no writes (a full disk) must not leave it
        "processing" for the life of this process: the write is retried from the loop until it
        goes through (or another worker has recovered the task, which makes it a no-op)."""
        try:
            await asyncio.to_thread(outcome)
        except Exception as exc:  # noqa: BLE001 - kept and retried; the worker goes on
            logger.error("could not record the end of job %s (%s); retrying", task_id, exc)
            self._unrecorded[task_id] = outcome

    async def _retry_records(self) -> None:
        for task_id, outcome in list(self._unrecorded.items()):
            try:
                await asyncio.to_thread(outcome)
            except Exception:  # noqa: BLE001 - still failing: the next round tries again
                continue
            del self._unrecorded[task_id]
            logger.info("recorded the end of job %s", task_id)

    def _failed(self, job: _Job, reason: str) -> Callable[[], object]:
        generation_id = job.generation_id

        def fail() -> None:
            if self.queue.fail(job.task_id, self.worker_id, reason):
                self._keep_made(generation_id)

        return fail

    def _stopped(self, job: _Job, reason: str) -> Callable[[], object] | None:
        generation_id = job.generation_id
        if reason == "cancelled":

            def cancelled() -> None:
                if self.queue.mark_cancelled(job.task_id, self.worker_id):
                    logger.info("job %s cancelled", job.task_id)
                    self._keep_made(generation_id)

            return cancelled
        if reason == "shutdown":
            message = "the server stopped; it resumes on restart"
            return partial(self.queue.release, job.task_id, self.worker_id, message)
        if reason == "gone" and generation_id:
            self.storage.delete_generation(generation_id)  # deleted meanwhile: leave nothing behind
        # "lost": another worker recovered the task and owns its files now.
        return None

    def _generation_id(self, task_id: str) -> str | None:
        with self.queue.sessions() as s:
            task = s.get(Task, task_id)
            return task.generation_id if task is not None else None

    async def _heartbeat(self, job: _Job) -> None:
        # Twice a second: the progress a page shows comes from these beats (at one a second, a
        # job shorter than that showed no progress before it ended).
        interval = min(0.5, self.settings.job_lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                beat = await asyncio.to_thread(
                    self.queue.heartbeat, job.task_id, self.worker_id, **job.progress_values()
                )
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                trace = not (is_storage_full(exc) or is_unavailable(exc))
                logger.warning("heartbeat of job %s failed: %s", job.task_id, exc, exc_info=trace)
                continue
            if not beat.owned:
                job.stop("lost" if beat.exists else "gone")
            elif beat.cancel:
                job.stop("cancelled")

    def _plan(self, task_id: str) -> _Plan:
        with self.queue.sessions() as s:
            task = s.get(Task, task_id)
            if task is None:
                raise _Stop("gone")
            gen = s.get(Generation, task.generation_id)
            voice = s.get(Voice, gen.voice_id) if gen is not None and gen.voice_id else None
            if gen is None:
                raise _Stop("gone")
            source = None
            if voice is not None:
                source = VoiceSource(
                    voice.id, self.storage.resolve(voice.audio_path), voice.reference_transcript
                )
            return _Plan(
                gen.id, gen.text, gen.language, gen.seed, dict(gen.options or {}), source, task.chunks,
                task.busy_seconds,
            )  # fmt: skip

    async def _generate(self, job: _Job) -> Callable[[], object]:
        """Speak the job's chunks and save its audio; returns how to record that it completed."""
        plan = await asyncio.to_thread(self._plan, job.task_id)
        job.generation_id = plan.generation_id
        preset = bool(plan.options.get("speaker"))
        if not preset and (plan.voice is None or not plan.voice.audio_path.is_file()):
            raise ValueError("the voice of this generation was deleted")
        job.busy_before = plan.busy_seconds
        job.chunks = plan.chunks or split_text(plan.text, self.settings.chunk_chars)
        if not job.chunks:
            raise ValueError("the text has nothing to speak")
        if plan.chunks is None:  # first start: fix the split, so a resumed job uses the same one
            await asyncio.to_thread(
                self.queue.heartbeat,
                job.task_id,
                self.worker_id,
                chunks=job.chunks,
                chunks_total=len(job.chunks),
            )
        saved = sum(self.storage.chunk_audio(plan.generation_id, i).is_file() for i in range(len(job.chunks)))
        if saved:
            logger.info(
                "resuming job %s: %d of %d chunks were already done", job.task_id, saved, len(job.chunks)
            )
        parts: list[np.ndarray] = []
        ahead: dict[int, asyncio.Task] = {}  # chunks spoken ahead of their turn, by index
        try:
            for index, text in enumerate(job.chunks):
                job.check()
                live_base = len(job.live)
                if index in ahead:  # spoken ahead (and saved): its audio as made, not as saved
                    audio = await self._chunk_of(plan, ahead.pop(index))
                else:
                    audio = await asyncio.to_thread(self.storage.load_chunk, plan.generation_id, index)
                if audio is None:

                    def go_ahead(first: int = index + 1) -> None:  # from this chunk's first audio on
                        self._look_ahead(job, plan, first, ahead)

                    audio = await self._chunk_of(plan, self._speak(job, plan, text, index, go_ahead))
                    await asyncio.to_thread(self.storage.save_chunk, plan.generation_id, index, audio)
                parts.append(audio)
                if len(job.live) == live_base:  # a chunk not streamed now (earlier run, or ahead)
                    job.live.append(audio)
                job.frames_before += len(audio) // SAMPLES_PER_FRAME
                job.speaking.pop(index, None)
                job.chunks_done = index + 1
        finally:  # a job that stops stops its chunks ahead too (what they finished stays saved)
            for task in ahead.values():
                task.cancel()
            await asyncio.gather(*ahead.values(), return_exceptions=True)
        joined = crossfade_join(parts, SAMPLE_RATE, self.settings.crossfade_ms)
        if len(joined) == 0:
            raise ValueError("the model produced no audio for this text")
        job.check()
        path = await asyncio.to_thread(self.storage.save_generation, plan.generation_id, joined)
        values = job.progress_values()
        seconds = len(joined) / SAMPLE_RATE

        def complete() -> None:  # recorded by _run (retried while the database takes no writes)
            done = self.queue.complete(
                job.task_id,
                self.worker_id,
                {k: values[k] for k in ("chunks_total", "chunks_done", "frames_done", "busy_seconds")},
                audio_path=self.storage.relative(path),
                duration_seconds=seconds,
                generation_seconds=values["busy_seconds"],
            )
            if done:
                self.storage.delete_parts(plan.generation_id)
                logger.info("job %s done: %d chunk(s), %.1f s of audio", job.task_id, len(parts), seconds)
            elif self._generation_id(job.task_id) is None:
                self.storage.delete_generation(plan.generation_id)  # deleted while we finished

        return complete

    async def _chunk_of(self, plan: _Plan, speaking: Awaitable[np.ndarray]) -> np.ndarray:
        try:
            return await speaking
        except AudioError as exc:  # the recording vanished meanwhile: say so, name no path
            if plan.voice is not None and not plan.voice.audio_path.is_file():
                raise ValueError("the voice of this generation was deleted") from exc
            raise

    def _look_ahead(self, job: _Job, plan: _Plan, first: int, ahead: dict[int, asyncio.Task]) -> None:
        """Start speaking the chunks from ``first`` on that are not done, so that with the
        current one ``chunk_parallel`` run; each is saved as it finishes."""
        for index in range(first, min(first + self.settings.chunk_parallel - 1, len(job.chunks))):
            if index in ahead or self.storage.chunk_audio(plan.generation_id, index).is_file():
                continue
            ahead[index] = asyncio.create_task(
                self._speak_ahead(job, plan, index), name=f"utter-chunk-{index}"
            )

    async def _speak_ahead(self, job: _Job, plan: _Plan, index: int) -> np.ndarray:
        audio = await self._speak(job, plan, job.chunks[index], index, None)
        await asyncio.to_thread(self.storage.save_chunk, plan.generation_id, index, audio)
        frames = len(audio) // SAMPLES_PER_FRAME
        job.speaking[index] = (frames, frames)  # done: it counts whole until its turn comes
        return audio

    async def _speak(
        self, job: _Job, plan: _Plan, text: str, index: int, on_first_audio: Callable[[], None] | None
    ) -> np.ndarray:
        """One chunk's audio; retries while the TTS is momentarily full or unreachable. With
        ``on_first_audio`` it is the current chunk (it streams to the live audio and calls
        that at its first audio), else a chunk spoken ahead (quietly, into its own buffer)."""
        request = Synthesis(text, plan.voice, plan.language, plan.seed, plan.options)  # type: ignore[arg-type]
        for attempt in range(MAX_RETRIES + 1):
            job.check()
            try:
                return await self._stream(job, request, plan.generation_id, index, on_first_audio)
            except (QueueFullError, WorkerError, httpx.TransportError, RemoteError) as exc:
                if isinstance(exc, RemoteError) and not exc.retryable:
                    raise
                if attempt == MAX_RETRIES:
                    raise RemoteError(f"the TTS stayed unavailable: {exc}") from exc
                logger.info("job %s: TTS busy or unreachable (%s); retrying", job.task_id, exc)
                await asyncio.sleep(RETRY_SECONDS)
        raise AssertionError("unreachable")

    async def _stream(
        self,
        job: _Job,
        request: Synthesis,
        generation_id: str,
        index: int,
        on_first_audio: Callable[[], None] | None,
    ) -> np.ndarray:
        """The chunk's audio as it streams. The current chunk (``on_first_audio`` given) goes
        to the live audio and what it has made is saved every few seconds, so a job that stops
        (crash, cancel, failure) keeps all but the last few seconds of it."""
        current = on_first_audio is not None
        stream = await self.provider.synthesize(request)
        job.streams.add(stream)
        if job.stop_reason is not None:
            stream.cancel()
        pcm: list[np.ndarray] = []
        saved = 0
        base = len(job.live)  # a retried chunk streams again from its start
        try:
            async for chunk in stream:
                pcm.append(chunk.pcm)
                job.speaking[index] = (chunk.frames_done, chunk.max_frames)
                if not current:
                    continue
                if len(pcm) == 1:
                    on_first_audio()
                job.live.append(chunk.pcm)
                made = sum(len(p) for p in pcm)
                if made - saved >= SAVE_EVERY_SECONDS * SAMPLE_RATE:
                    saved = made
                    try:
                        await asyncio.to_thread(
                            self.storage.save_running_chunk, generation_id, index, np.concatenate(pcm)
                        )
                    except OSError as exc:  # a safety net only: the chunk goes on in memory
                        logger.warning("job %s: could not save the running chunk (%s)", job.task_id, exc)
        except BaseException:
            if current:  # what it made up to its last save is kept (a retry overwrites it)
                del job.live[base:]
            else:  # a chunk ahead keeps nothing until it ends
                job.speaking.pop(index, None)
            stream.cancel()  # e.g. a chunk ahead whose job stopped: its generation stops too
            raise
        finally:
            job.streams.discard(stream)
        job.check()
        if stream.finish_reason == "cancelled":
            raise _Stop("cancelled")
        if stream.finish_reason == "max_frames" and not request.options.get("max_frames"):
            logger.warning("job %s: a chunk reached its frame limit (runaway guard)", job.task_id)
        return np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.float32)
