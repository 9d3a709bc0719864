"""The durable job queue: tasks live in the database, so a restart never loses one.

- **Claim**: one ``UPDATE ... WHERE id = (SELECT ... WHERE status = 'queued' ... FOR UPDATE SKIP
  LOCKED) AND status = 'queued' RETURNING id``. PostgreSQL skips rows another worker has locked;
  SQLite has no row locks, but runs each write statement alone (``BEGIN IMMEDIATE``), so the
  status test in the outer WHERE is enough. Either way two workers never get the same task.
- **Lease**: a worker owns a task while ``lease_expires_at`` is in the future and renews it with
  every heartbeat (which also writes progress and reads ``cancel_requested``). Every write the
  worker makes is conditioned on still owning the task, so a worker that lost it stops quietly.
- **Recovery**: a task left ``processing`` by a worker that is gone (its lease ran out, or it
  was a process on this machine that no longer exists) goes back to the queue to resume from
  its finished chunks, or fails with the reason once it has been interrupted too often.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import Generation, Task, utcnow
from .schemas import ACTIVE, CANCELLED, COMPLETED, FAILED, PROCESSING, QUEUED

logger = logging.getLogger(__name__)


# Drawn once per process: tells this process's workers from an earlier process with the same pid.
_PROCESS_TOKEN = uuid.uuid4().hex[:8]


def make_worker_id() -> str:
    """``host:pid:process:worker``. Host and pid let a restarted server on the same machine see at
    once that the previous owner of a task is gone; the process token tells a reused pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}:{uuid.uuid4().hex[:8]}"


def _owned(task_id: str, worker_id: str | None) -> list:
    """The condition every write of a running task's worker carries: it still owns the task."""
    return [Task.id == task_id, Task.worker_id == worker_id, Task.status == PROCESSING]


def _worker_is_gone(worker_id: str | None, me: str) -> bool:
    """True when ``worker_id`` was a process on this machine that no longer runs."""
    if not worker_id or worker_id == me:
        return False
    parts = worker_id.split(":")
    if len(parts) != 4 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False  # another machine (or not ours): only its lease can tell
    pid, token = int(parts[1]), parts[2]
    if pid == os.getpid():
        return token != _PROCESS_TOKEN  # an earlier server with our pid (containers restart as pid 1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


@dataclass
class Beat:
    """What a heartbeat learned: whether the task is still ours and whether to stop."""

    owned: bool
    cancel: bool
    exists: bool = True


class JobQueue:
    """Database operations on tasks. Every method opens its own short transaction."""

    def __init__(self, sessions: sessionmaker[Session], lease_seconds: float, max_attempts: int) -> None:
        self.sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts

    # ------------------------------------------------------------------ claim
    def claim(self, worker_id: str) -> str | None:
        """Take the oldest queued task for ``worker_id``; its id, or None when the queue is empty."""
        now = utcnow()
        oldest = (
            select(Task.id)
            .where(Task.status == QUEUED)
            .order_by(Task.created_at, Task.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(Task)
            .where(Task.id == oldest, Task.status == QUEUED)
            .values(
                status=PROCESSING,
                worker_id=worker_id,
                lease_expires_at=now + self.lease,
                attempts=Task.attempts + 1,
                started_at=func.coalesce(Task.started_at, now),
                message="starting",
            )
            .returning(Task.id, Task.generation_id)
            .execution_options(synchronize_session=False)
        )
        with self.sessions.begin() as s:
            row = s.execute(stmt).first()
            if row is None:
                return None
            s.execute(
                update(Generation)
                .where(Generation.id == row.generation_id)
                .values(status=PROCESSING)
                .execution_options(synchronize_session=False)
            )
        return row.id

    # -------------------------------------------------------------- heartbeat
    def heartbeat(self, task_id: str, worker_id: str, **progress: object) -> Beat:
        """Renew the lease and write progress (any Task columns); say whether to go on."""
        values = {"lease_expires_at": utcnow() + self.lease, **progress}
        with self.sessions.begin() as s:
            res = s.execute(
                update(Task)
                .where(*_owned(task_id, worker_id))
                .values(**values)
                .returning(Task.cancel_requested)
                .execution_options(synchronize_session=False)
            ).first()
            if res is not None:
                return Beat(owned=True, cancel=bool(res.cancel_requested))
            exists = s.get(Task, task_id) is not None
        return Beat(owned=False, cancel=True, exists=exists)

    # ----------------------------------------------------------------- moves
    def _move(self, where: list, task_values: dict[str, object], **gen_values: object) -> str | None:
        """Update the task matching ``where`` and give its generation the task's new status, in
        one transaction. A move to a final state also stamps the generation's finish time and
        error. Returns the new status, or None when no task matched (someone else moved it)."""
        with self.sessions.begin() as s:
            row = s.execute(
                update(Task)
                .where(*where)
                .values(**task_values)
                .returning(Task.generation_id, Task.error, Task.status)
                .execution_options(synchronize_session=False)
            ).first()
            if row is None:
                return None
            if row.status not in ACTIVE:
                gen_values = {"finished_at": utcnow(), "error_message": row.error, **gen_values}
            s.execute(
                update(Generation)
                .where(Generation.id == row.generation_id)
                .values(status=row.status, **gen_values)
                .execution_options(synchronize_session=False)
            )
        return row.status

    def _finish(
        self,
        task_id: str,
        worker_id: str,
        status: str,
        task_values: dict[str, object] | None = None,
        **gen_values: object,
    ) -> bool:
        """Move a task this worker owns to a final state."""
        values: dict[str, object] = {
            "progress": Task.progress,
            **(task_values or {}),
            "status": status,
            "finished_at": utcnow(),
            "lease_expires_at": None,
            "error": gen_values.pop("error_message", None),
            "message": None,
        }
        if status == COMPLETED:
            values["progress"] = 1.0
        if status == CANCELLED:  # keep the reason given with the cancel request ("the voice was deleted")
            values["error"] = func.coalesce(Task.error, values["error"])
        elif status == FAILED:
            # A job whose cancel was requested ends cancelled even when it broke first (deleting a
            # voice removes its files while its job may be opening them): the user's act wins.
            values["status"] = case((Task.cancel_requested, CANCELLED), else_=FAILED)
            values["error"] = case(
                (Task.cancel_requested, func.coalesce(Task.error, values["error"])), else_=values["error"]
            )
        return self._move(_owned(task_id, worker_id), values, **gen_values) is not None

    def complete(
        self, task_id: str, worker_id: str, task_values: dict[str, object], **gen_values: object
    ) -> bool:
        """Finish a task whose audio is written; ``task_values`` are its final progress columns."""
        return self._finish(task_id, worker_id, COMPLETED, task_values, **gen_values)

    def fail(self, task_id: str, worker_id: str, reason: str) -> bool:
        return self._finish(task_id, worker_id, FAILED, error_message=reason)

    def mark_cancelled(self, task_id: str, worker_id: str, reason: str = "cancelled") -> bool:
        return self._finish(task_id, worker_id, CANCELLED, error_message=reason)

    def release(self, task_id: str, worker_id: str, message: str, count_attempt: bool = False) -> bool:
        """Give an owned task back to the queue (server shutting down, model not ready)."""
        attempts = Task.attempts if count_attempt else Task.attempts - 1
        values = {"status": QUEUED, "worker_id": None, "lease_expires_at": None, "message": message}
        return self._move(_owned(task_id, worker_id), {**values, "attempts": attempts}) is not None

    # ----------------------------------------------------------------- cancel
    def request_cancel(self, task_id: str, reason: str = "cancelled") -> Task | None:
        """Cancel a task: a queued one at once; a processing one is flagged and its worker stops it
        within a heartbeat. Returns the task as it is now (None if it does not exist)."""
        if not self.mark_queued_cancelled(task_id, reason):
            with self.sessions.begin() as s:
                s.execute(
                    update(Task)
                    .where(Task.id == task_id, Task.status == PROCESSING)
                    .values(cancel_requested=True, message="cancelling", error=reason)
                    .execution_options(synchronize_session=False)
                )
        with self.sessions() as s:
            return s.get(Task, task_id)

    def mark_queued_cancelled(self, task_id: str, reason: str) -> bool:
        values = {"status": CANCELLED, "finished_at": utcnow(), "cancel_requested": True, "message": None}
        return (
            self._move([Task.id == task_id, Task.status == QUEUED], {**values, "error": reason}) is not None
        )

    # --------------------------------------------------------------- recovery
    def recover(self, worker_id: str, now: datetime | None = None, ended: list[str] | None = None) -> int:
        """Requeue (or fail, or finish cancelling) tasks whose worker is gone. Returns how many;
        the generation ids of those that ended (failed or cancelled) are added to ``ended``, so
        the caller can keep the audio they made."""
        now = now or utcnow()
        with self.sessions() as s:
            rows = s.execute(
                select(
                    Task.id, Task.worker_id, Task.lease_expires_at, Task.attempts, Task.cancel_requested
                ).where(Task.status == PROCESSING, Task.worker_id != worker_id)
            ).all()
        count = 0
        for row in rows:
            expired = row.lease_expires_at is None or row.lease_expires_at < now
            if not (expired or _worker_is_gone(row.worker_id, worker_id)):
                continue
            status = self._recover_one(row.id, row.worker_id, row.attempts, row.cancel_requested)
            count += status is not None
            if status in (FAILED, CANCELLED) and ended is not None:
                with self.sessions() as s:
                    ended.append(s.get(Task, row.id).generation_id)
        return count

    def _recover_one(self, task_id: str, dead: str | None, attempts: int, cancel: bool) -> str | None:
        if cancel:  # the reason was stored with the cancel request
            values = {"status": CANCELLED, "finished_at": utcnow(), "message": None}
            values["error"] = func.coalesce(Task.error, "cancelled")
        elif attempts >= self.max_attempts:
            reason = (
                f"interrupted {attempts} time(s) while generating (the server stopped or crashed each "
                "time); stopped so it cannot crash the server again. The audio made so far is kept: "
                "resume to continue from there."
            )
            values = {"status": FAILED, "finished_at": utcnow(), "error": reason, "message": None}
        else:
            values = {"status": QUEUED, "message": "resuming after the server stopped during generation"}
        status = self._move(_owned(task_id, dead), {"worker_id": None, "lease_expires_at": None, **values})
        if status is None:
            return None  # someone else recovered it first
        logger.warning("task %s of stopped worker %s -> %s", task_id, dead, status)
        return status

    # ---------------------------------------------------------- what remains
    def keep_audio(self, generation_id: str, audio_path: str, duration_seconds: float) -> bool:
        """Offer what a failed or cancelled job made as its generation's (partial) audio."""
        with self.sessions.begin() as s:
            res = s.execute(
                update(Generation)
                .where(Generation.id == generation_id, Generation.status.in_((FAILED, CANCELLED)))
                .values(audio_path=audio_path, duration_seconds=duration_seconds)
                .execution_options(synchronize_session=False)
            )
        return bool(res.rowcount)

    def resume(self, task_id: str) -> str | None:
        """Queue a failed or cancelled task again; it continues from its finished chunks (and
        starts its attempts afresh). Returns the new status, or None when the task is not
        failed or cancelled."""
        values = {
            "status": QUEUED,
            "cancel_requested": False,
            "attempts": 0,
            "error": None,
            "finished_at": None,
            "worker_id": None,
            "lease_expires_at": None,
            "message": "resuming from the audio made so far",
        }
        where = [Task.id == task_id, Task.status.in_((FAILED, CANCELLED))]
        return self._move(where, values, finished_at=None, error_message=None)

    # ------------------------------------------------------------------ stats
    def counts(self) -> dict[str, int]:
        with self.sessions() as s:
            rows = s.execute(
                select(Task.status, func.count())
                .where(Task.status.in_((QUEUED, PROCESSING)))
                .group_by(Task.status)
            ).all()
        out = {QUEUED: 0, PROCESSING: 0}
        out.update({status: int(n) for status, n in rows})
        return out
