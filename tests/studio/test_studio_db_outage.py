"""The studio's PostgreSQL server goes down (killed, as a crash or a restart would) and comes
back: meanwhile requests that need it get 503 with Retry-After and a sentence (not 500s), health
says the database is unreachable, and a running job goes back to the queue instead of failing;
once the server is back the job completes and everything answers again. Its own cluster, so the
session's shared one is never stopped."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.studio.support import (
    Cluster,
    StudioServer,
    clone,
    new_pg_database,
    pg_bin,
    running_cluster,
    studio_settings,
    wait_task,
)
from utter.server.speech.realtime import SESSION_START_FAILED
from utter.studio.db import UNAVAILABLE_MESSAGE, is_unavailable

TEXT = " ".join(f"This is sentence number {n} of the job." for n in range(1, 7))


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    with running_cluster(bindir) as cluster:
        yield cluster


def test_a_database_outage_gets_503s_and_jobs_wait_for_it(
    own_cluster: Cluster, tmp_path: Path, tiny_checkpoint
) -> None:
    url = new_pg_database(own_cluster.url)
    server = StudioServer(
        studio_settings(tmp_path / "data", tiny_checkpoint, url, job_lease_seconds=2.0)
    ).start()
    client = server.client
    try:
        voice = clone(client, "Outage")
        # The server goes down just as the worker starts the job (its first read of it fails).
        runner, real_plan, halted = server.studio.runner, server.studio.runner._plan, threading.Event()

        def plan(task_id: str):
            if not halted.is_set():
                own_cluster.halt()
                halted.set()
            return real_plan(task_id)

        runner._plan = plan
        r = client.post("/api/generate", json={"voice_id": voice, "text": TEXT, "language": "English"})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        assert halted.wait(60)
        for method, path, body in (
            ("GET", "/api/voices", None),
            ("GET", f"/api/tasks/{task_id}", None),
            ("POST", "/api/generate", {"voice_id": voice, "text": "Hello.", "language": "English"}),
            ("GET", "/tts/v1/audio/voices", None),  # the API's voices live in the studio's database
            ("POST", "/tts/v1/audio/speech", {"input": "Hello.", "voice": voice}),
        ):
            down = client.request(method, path, json=body)
            assert down.status_code == 503, (path, down.text)
            assert down.json()["detail"] == UNAVAILABLE_MESSAGE and down.headers["retry-after"] == "5"
        ws_url = server.url.replace("http", "ws") + "/tts"
        for path, first in (
            ("/v1/realtime/speech", {"type": "start", "voice": voice}),
            (f"/v1/text-to-speech/{voice}/stream-input", {"text": " "}),
        ):
            with connect(ws_url + path) as ws:  # a session that cannot start says so and closes
                ws.send(json.dumps(first))
                error = json.loads(ws.recv(timeout=30))
                assert error["code"] == 503 and error["message"] == SESSION_START_FAILED, error
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd.code == 1011
        health = client.get("/api/health")
        assert health.status_code == 200 and health.json()["database"] == "unreachable"
        assert health.json()["status"] == "degraded"
        time.sleep(1.0)  # the worker tries to write the job's end meanwhile

        own_cluster.serve()
        task = wait_task(client, task_id, timeout=120)
        assert task["status"] == "completed", task  # waited for the database, not failed
        assert client.get("/api/voices").status_code == 200
        assert client.get("/api/health").json()["database"] == "ok"
    finally:
        server.stop()


def _sqlite_error(sql: str, setup: str = "") -> sqlite3.Error:
    """The error SQLite itself raises for ``sql`` (after ``setup``), with its error code."""
    db = sqlite3.connect(":memory:")
    try:
        if setup:
            db.executescript(setup)
        db.execute(sql)
    except sqlite3.Error as error:
        return error
    finally:
        db.close()
    raise AssertionError(f"{sql} did not fail")


def test_unavailable_databases_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(path, timeout=0.05).execute("SELECT * FROM t")
    except sqlite3.OperationalError as error:
        locked = error
    finally:
        holder.close()
    assert locked.sqlite_errorcode & 0xFF == 5  # SQLITE_BUSY: "database is locked"
    assert is_unavailable(sqlalchemy.exc.OperationalError("UPDATE tasks", {}, locked))
    missing = _sqlite_error("SELECT * FROM nowhere")  # also an OperationalError, but a bug
    assert isinstance(missing, sqlite3.OperationalError)
    assert not is_unavailable(sqlalchemy.exc.OperationalError("SELECT", {}, missing))
    assert is_unavailable(sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection closed")))
    dropped = sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_unavailable(dropped)
    for other in (
        sqlalchemy.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")),
        sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("syntax error")),
        ValueError("database"),
    ):
        assert not is_unavailable(other)
