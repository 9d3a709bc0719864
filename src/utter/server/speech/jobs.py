"""Jobs for long texts (the seed's submit/poll API): generate in the background, fetch later.

A job is one request through the batcher like any other; a task reads its stream and appends
the audio to ``<jobs_dir>/<id>.wav.part`` as it is made (so a long job costs no memory), then
fixes the WAV header and renames the file into place. Cancelling a job cancels its stream, so
the generation really stops at the next decode step.

Jobs live in memory: a restart forgets them, and their files are removed once ``job_ttl_s`` has
passed, like those of finished jobs (the studio keeps its own durable jobs in its database).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ...audio import SAMPLE_RATE
from ...audio.encode import PcmEncoder, wav_header
from ..http.errors import ApiError, is_storage_full, shown_error
from .longform import AnyStream

logger = logging.getLogger(__name__)

STORAGE_FULL_JOB = "the server ran out of disk space for the job's audio; submit it again once space is freed"

FINISHED = ("completed", "failed", "cancelled")


@dataclass
class Job:
    id: str
    text_length: int
    stream: AnyStream
    path: Path
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    samples: int = 0
    error: str | None = None
    task: asyncio.Task | None = None

    def info(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        frames, limit = self.stream.frames, self.stream.max_frames
        done = self.status == "completed"
        return {
            "job_id": self.id,
            "status": self.status,
            "text_length": self.text_length,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_seconds": round(end - self.created_at, 3),
            "frames_done": frames,
            "max_frames": limit,
            "progress": 1.0 if done else (round(frames / limit, 4) if limit else 0.0),
            "audio_seconds": round(self.samples / SAMPLE_RATE, 3) if done else None,
            "error": self.error,
        }


class JobManager:
    """In-memory jobs whose results are WAV files under ``root``."""

    def __init__(self, root: Path, ttl_s: float, max_jobs: int) -> None:
        self.root, self.ttl_s, self.max_jobs = Path(root), ttl_s, max_jobs
        self.jobs: dict[str, Job] = {}
        self._sweep_files()

    def _sweep_files(self) -> None:
        """Delete result files past their time to live, whoever made them: a previous run's jobs
        are forgotten, and other worker processes sharing the folder keep theirs until then."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - self.ttl_s
        for leftover in self.root.glob("job_*.wav*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink(missing_ok=True)
            except OSError:  # removed meanwhile
                pass

    def _sweep(self) -> None:
        """Forget finished jobs past their time to live, and delete their files."""
        self._sweep_files()
        now = time.time()
        for job in list(self.jobs.values()):
            if job.status in FINISHED and job.finished_at and now - job.finished_at > self.ttl_s:
                self._forget(job)

    def _forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        job.path.unlink(missing_ok=True)

    def add(self, stream: AnyStream, text_length: int, retry_after_s: int) -> Job:
        """Track a submitted stream as a job and start consuming it (inside the event loop)."""
        self._sweep()
        if len(self.jobs) >= self.max_jobs:
            finished = [j for j in self.jobs.values() if j.status in FINISHED]
            if not finished:
                stream.cancel()
                message = f"{self.max_jobs} jobs are already running; retry later."
                raise ApiError(429, message, {"Retry-After": str(retry_after_s)})
            self._forget(min(finished, key=lambda j: j.created_at))
        job_id = f"job_{secrets.token_hex(8)}"
        job = Job(job_id, text_length, stream, self.root / f"{job_id}.wav")
        self.jobs[job_id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"utter-{job_id}")
        return job

    def get(self, job_id: str) -> Job:
        self._sweep()
        job = self.jobs.get(job_id)
        if job is None:
            message = f"Unknown job {job_id!r} (jobs are kept for {self.ttl_s:g} s after they end)."
            raise ApiError(404, message, param="job_id")
        return job

    async def cancel(self, job_id: str, wait_s: float = 10.0) -> Job:
        """Cancel the job's stream and wait (briefly) until the batcher has dropped it."""
        job = self.get(job_id)
        if job.status not in FINISHED:
            job.stream.cancel()
            if job.task is not None:
                await asyncio.wait({job.task}, timeout=wait_s)
        return job

    def cancel_all(self) -> None:
        for job in self.jobs.values():
            if job.status not in FINISHED:
                job.stream.cancel()

    async def _run(self, job: Job) -> None:
        part = job.path.with_name(job.path.name + ".part")
        encoder = PcmEncoder()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as f:
                f.write(wav_header(SAMPLE_RATE, 0))
                async for chunk in job.stream:
                    if job.started_at is None:
                        job.status, job.started_at = "running", time.time()
                    f.write(encoder.write(chunk.pcm))
                    job.samples += len(chunk.pcm)
                if job.stream.finish_reason == "cancelled":
                    job.status = "cancelled"
                else:
                    await asyncio.to_thread(_finish_wav, f, job.samples)
            if job.status == "cancelled":
                part.unlink(missing_ok=True)
            else:
                os.replace(part, job.path)
                job.status = "completed"
        except Exception as exc:  # noqa: BLE001 - recorded on the job for /job-status
            job.stream.cancel()  # e.g. its file could not be written: stop generating for nobody
            if is_storage_full(exc):
                logger.error("job %s failed: out of disk space (%s)", job.id, exc)
                job.status, job.error = "failed", STORAGE_FULL_JOB
            else:
                logger.exception("job %s failed", job.id)
                job.status, job.error = "failed", shown_error(exc)
            part.unlink(missing_ok=True)
        except asyncio.CancelledError:  # the server is shutting down
            job.stream.cancel()
            job.status = "cancelled"
            part.unlink(missing_ok=True)
            raise
        finally:
            job.finished_at = time.time()
            logger.info("job %s %s: %.2f s of audio", job.id, job.status, job.samples / SAMPLE_RATE)


def _finish_wav(f: BinaryIO, samples: int) -> None:
    """Write the real sizes into the header and make the file durable before it is renamed."""
    f.seek(0)
    f.write(wav_header(SAMPLE_RATE, samples * 2))
    f.flush()
    os.fsync(f.fileno())
