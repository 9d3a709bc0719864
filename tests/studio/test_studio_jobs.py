"""The durable job queue on SQLite and PostgreSQL: claiming, leases, recovery, cancel, and two
worker processes on one database never taking the same job."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from datetime import timedelta

from utter.studio.db import Database
from utter.studio.jobs import JobQueue
from utter.studio.models import Generation, Task, utcnow


def _queue(url: str, lease: float = 30.0, attempts: int = 2) -> JobQueue:
    db = Database(url)
    db.migrate()
    return JobQueue(db.sessions, lease_seconds=lease, max_attempts=attempts)


def _enqueue(queue: JobQueue, n: int) -> list[str]:
    ids = []
    with queue.sessions.begin() as s:
        for i in range(n):
            gen = Generation(
                voice_name="v", text=f"text {i}", language="English", options={}, seed=i, status="queued"
            )
            task = Task(generation=gen, status="queued", created_at=utcnow() + timedelta(microseconds=i))
            s.add_all([gen, task])
            s.flush()
            ids.append(task.id)
    return ids


def _task(queue: JobQueue, task_id: str) -> Task:
    with queue.sessions() as s:
        task = s.get(Task, task_id)
        assert task is not None
        s.expunge(task)
        return task


def _status_pair(queue: JobQueue, task_id: str) -> tuple[str, str]:
    with queue.sessions() as s:
        task = s.get(Task, task_id)
        return task.status, task.generation.status


def test_claim_takes_the_oldest_once_and_marks_the_generation(database_url: str) -> None:
    queue = _queue(database_url)
    first, second = _enqueue(queue, 2)
    assert queue.claim("w1") == first
    assert queue.claim("w2") == second
    assert queue.claim("w1") is None
    task = _task(queue, first)
    assert task.status == "processing" and task.worker_id == "w1" and task.attempts == 1
    assert task.lease_expires_at is not None and task.lease_expires_at > utcnow()
    assert _status_pair(queue, first) == ("processing", "processing")
    assert queue.counts() == {"queued": 0, "processing": 2}


def test_heartbeat_writes_progress_only_for_the_owner_and_reports_cancel(database_url: str) -> None:
    queue = _queue(database_url)
    (task_id,) = _enqueue(queue, 1)
    queue.claim("w1")
    assert queue.heartbeat(task_id, "w1", chunks_done=1, chunks_total=3, frames_done=7, progress=0.4).owned
    assert not queue.heartbeat(task_id, "intruder", progress=0.9).owned
    task = _task(queue, task_id)
    assert (task.chunks_done, task.chunks_total, task.frames_done, task.progress) == (1, 3, 7, 0.4)
    cancelled = queue.request_cancel(task_id)
    assert cancelled is not None and cancelled.status == "processing" and cancelled.cancel_requested
    beat = queue.heartbeat(task_id, "w1")
    assert beat.owned and beat.cancel
    assert queue.mark_cancelled(task_id, "w1")
    assert _status_pair(queue, task_id) == ("cancelled", "cancelled")
    assert not queue.heartbeat(task_id, "w1").owned  # finished tasks take no more writes


def test_a_job_that_breaks_after_its_cancel_was_requested_ends_cancelled(database_url: str) -> None:
    """Deleting a voice flags its job, then removes the files the job may be opening: the job's
    failure must not hide the user's cancel."""
    queue = _queue(database_url)
    cancelled_id, plain_id = _enqueue(queue, 2)
    queue.claim("w1")
    queue.claim("w1")
    queue.request_cancel(cancelled_id, "the voice was deleted")
    assert queue.fail(cancelled_id, "w1", "the reference audio is missing")
    assert queue.fail(plain_id, "w1", "the reference audio is missing")
    assert _status_pair(queue, cancelled_id) == ("cancelled", "cancelled")
    assert _task(queue, cancelled_id).error == "the voice was deleted"
    assert _status_pair(queue, plain_id) == ("failed", "failed")
    assert _task(queue, plain_id).error == "the reference audio is missing"


def test_cancel_of_a_queued_task_is_immediate(database_url: str) -> None:
    queue = _queue(database_url)
    (task_id,) = _enqueue(queue, 1)
    assert queue.request_cancel(task_id).status == "cancelled"
    assert queue.claim("w1") is None
    assert queue.request_cancel("0" * 32) is None


def test_recovery_requeues_then_fails_with_a_reason(database_url: str) -> None:
    queue = _queue(database_url, lease=30, attempts=2)
    (task_id,) = _enqueue(queue, 1)
    queue.claim("elsewhere:1:aaaa")  # another machine: only its lease tells whether it is alive
    assert queue.recover("me") == 0  # lease still running
    later = utcnow() + timedelta(seconds=31)
    assert queue.recover("me", now=later) == 1
    task = _task(queue, task_id)
    assert task.status == "queued" and task.worker_id is None and "resuming" in task.message
    assert queue.claim("elsewhere:2:bbbb") == task_id  # second attempt
    assert queue.recover("me", now=utcnow() + timedelta(seconds=31)) == 1
    task = _task(queue, task_id)
    assert task.status == "failed" and "interrupted 2 time(s)" in task.error
    assert _status_pair(queue, task_id) == ("failed", "failed")


def test_recovery_of_a_dead_local_process_is_immediate(database_url: str) -> None:
    queue = _queue(database_url)
    resumed, kept, cancelled = _enqueue(queue, 3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    queue.claim(f"{host}:{dead.pid}:old:dead")
    queue.claim(f"{host}:{os.getppid()}:other:alive")  # a live process on this machine keeps its task
    queue.claim(f"{host}:{dead.pid}:old:dead")
    queue.request_cancel(cancelled)  # asked to cancel, then its worker died: it ends cancelled
    assert queue.recover("me") == 2  # leases are still running: the dead pid is what tells
    assert _task(queue, resumed).status == "queued"
    assert _task(queue, kept).status == "processing"
    assert _status_pair(queue, cancelled) == ("cancelled", "cancelled")


def test_workers_of_this_process_are_never_taken_for_dead() -> None:
    from utter.studio.jobs import _worker_is_gone, make_worker_id

    me, sibling = make_worker_id(), make_worker_id()  # two studios in one process
    assert not _worker_is_gone(sibling, me)
    host = socket.gethostname()
    assert _worker_is_gone(f"{host}:{os.getpid()}:earlier:x", me)  # same pid, earlier process
    assert not _worker_is_gone(f"elsewhere:{os.getpid()}:earlier:x", me)  # another machine: lease decides


def _claim_all(url: str, worker: str, start, out) -> None:  # runs in a child process
    queue = JobQueue(Database(url).sessions, lease_seconds=30, max_attempts=3)
    start.wait()
    got = []
    while (task_id := queue.claim(worker)) is not None:
        got.append(task_id)
    out.put(got)


def test_two_worker_processes_never_claim_the_same_job(database_url: str) -> None:
    queue = _queue(database_url)
    ids = _enqueue(queue, 60)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(database_url, f"w{i}", start, out)) for i in range(2)]
    for p in procs:
        p.start()
    start.set()
    claimed = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    everything = claimed[0] + claimed[1]
    assert sorted(everything) == sorted(ids)  # every job taken, none twice
    assert len(set(everything)) == len(everything)
    with queue.sessions() as s:
        assert all(t.attempts == 1 for t in s.query(Task))


def test_migrations_are_idempotent(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for _ in range(2):
        Database(url).migrate()
    from sqlalchemy import create_engine, inspect

    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"voices", "generations", "tasks", "alembic_version"} <= tables


def test_two_studios_on_one_database_share_the_jobs(database_url: str, tmp_path, tiny_checkpoint) -> None:
    """Two full studio processes' worth of workers (each its own engine) on one database: every
    job runs exactly once, whichever studio it was submitted to."""
    from tests.studio.support import StudioServer, clone, studio_settings, wait_task

    servers = [
        StudioServer(studio_settings(tmp_path / "data", tiny_checkpoint, database_url, job_slots=2)).start()
        for _ in range(2)
    ]
    try:
        client = servers[0].client
        voice = clone(client, "shared")
        jobs = [
            servers[i % 2]
            .client.post("/api/generate", json={"voice_id": voice, "text": f"Job {i}.", "max_frames": 2})
            .json()
            for i in range(8)
        ]
        tasks = [wait_task(client, job["task_id"]) for job in jobs]
        assert all(t["status"] == "completed" and t["attempts"] == 1 for t in tasks), tasks
        with Database(database_url).sessions() as s:
            owners = {t.worker_id for t in s.query(Task)}
        assert owners <= {server.studio.runner.worker_id for server in servers}
    finally:
        for server in servers:
            server.stop()


def test_upgrade_fills_the_search_keys_of_existing_rows(database_url: str) -> None:
    """A database made by the first schema, with rows in it, gains folded search keys on upgrade."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from utter.studio.db import MIGRATIONS
    from utter.studio.search import search_key

    db = Database(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO voices (id, name, language, reference_transcript, reference_seconds, audio_path,"
                " created_at, updated_at) VALUES ('a' || :pad, 'ÉLODIE', 'French', 'Straße', 3.0, 'x.wav',"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"pad": "0" * 31},
        )
    db.migrate()
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT search_key, name_key FROM voices")).one()
    assert tuple(row) == (search_key("ÉLODIE", "Straße"), "élodie")
    db.dispose()
