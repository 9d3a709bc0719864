"""A full disk under the studio: writes answer 507 with a sentence saying so (not a dropped
connection), reads go on, nothing half-made stays behind, and a job that could not store its
audio (nor, with SQLite on the same disk, write that it failed) ends "failed" with a resumable
reason once the database takes writes again, then resumes to the end.

The end-to-end test runs on a real tmpfs of 32 MiB (SQLite and the files on it; it needs
root to mount one and skips elsewhere); the others make the same errors at chosen moments and
run anywhere.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from safetensors import SafetensorError

from tests.server_support import read_wav
from tests.studio.support import StudioServer, audio_bytes, clone, studio_settings, wait_task
from utter.server.http.errors import STORAGE_FULL_MESSAGE, is_storage_full
from utter.studio.worker import STORAGE_FULL_REASON

TEXT = " ".join(f"This is sentence number {n} of the job." for n in range(1, 7))  # six chunks of 40


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (SQLite's write-ahead log alone may take 4), mounted for the test only."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte; returns it (delete it to free the disk)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):  # big writes, then the last pages and bytes
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _generate(client, voice_id: str, text: str = TEXT):
    return client.post("/api/generate", json={"voice_id": voice_id, "text": text, "language": "English"})


def test_a_full_disk_gets_507s_keeps_serving_and_loses_no_job(small_disk: Path, tiny_checkpoint) -> None:
    data = small_disk / "data"
    server = StudioServer(studio_settings(data, tiny_checkpoint, job_lease_seconds=2.0)).start()
    client = server.client  # one keep-alive connection: a 507 must not drop it
    try:
        voice = clone(client, "Kept")
        folders = sorted(p.name for p in (data / "voices").iterdir())
        r = _generate(client, voice)
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        filler = _fill(small_disk)

        refused = client.post(
            "/api/clone",
            data={"name": "Refused", "transcript": "Hello there.", "language": "English"},
            files={"audio": ("ref.wav", audio_bytes(3.0), "audio/wav")},
        )
        assert refused.status_code == 507, refused.text
        assert refused.json()["detail"] == STORAGE_FULL_MESSAGE and "x-request-id" in refused.headers
        assert sorted(p.name for p in (data / "voices").iterdir()) == folders  # nothing half-made
        listed = client.get("/api/voices")
        assert listed.status_code == 200 and [v["name"] for v in listed.json()["voices"]] == ["Kept"]
        health = client.get("/api/health").json()
        assert health["storage"]["low"] is True and health["storage"]["free_mib"] < 1
        assert client.get("/tts/health").json()["storage"]["low"] is True
        assert _generate(client, voice, "Another text.").status_code in (202, 507)

        # The job cannot store its chunks nor, SQLite being on the same disk, say so: it must not
        # stay "processing" once the disk has room again.
        runner, deadline = server.studio.runner, time.monotonic() + 90
        while task_id not in runner._unrecorded:  # its end, waiting for the database
            assert time.monotonic() < deadline, client.get(f"/api/tasks/{task_id}").json()
            time.sleep(0.1)
        assert client.get(f"/api/tasks/{task_id}").json()["status"] == "processing"
        filler.unlink()
        task = wait_task(client, task_id, timeout=60)
        assert task["status"] == "failed" and task["error"] == STORAGE_FULL_REASON, task
        assert client.get("/api/health").json()["storage"]["free_mib"] > 10  # (still "low": under 200)

        resumed = client.post(f"/api/tasks/{task_id}/resume")
        assert resumed.status_code == 200, resumed.text
        task = wait_task(client, task_id, timeout=120)
        assert task["status"] == "completed", task
        audio = client.get(f"/api/generations/{task['generation_id']}/audio")
        assert audio.status_code == 200 and len(read_wav(audio.content)[0]) > 0
        clone(client, "After")  # and cloning works again
    finally:
        server.stop()


def test_a_job_whose_end_cannot_be_written_is_recorded_later(studio, monkeypatch) -> None:
    """The database refuses writes (a full disk) while a job ends: its end is written later."""
    client, app = studio.client, studio.studio
    voice = clone(client, "Recorded later")
    full = sqlalchemy.exc.OperationalError("UPDATE tasks", {}, _sqlite_full())
    real_fail, real_save = app.queue.fail, app.storage.save_generation
    refusals = {"fail": 0}

    def save_generation(generation_id, audio):
        raise OSError(errno.ENOSPC, "No space left on device", str(app.storage.root / "secret"))

    def fail(*args, **kwargs):
        if refusals["fail"] < 3:
            refusals["fail"] += 1
            raise full
        return real_fail(*args, **kwargs)

    monkeypatch.setattr(app.storage, "save_generation", save_generation)
    monkeypatch.setattr(app.queue, "fail", fail)
    r = _generate(client, voice, "One short sentence.")
    assert r.status_code == 202, r.text
    task = wait_task(client, r.json()["task_id"], timeout=60)
    assert task["status"] == "failed" and task["error"] == STORAGE_FULL_REASON, task
    assert refusals["fail"] == 3 and "secret" not in task["error"]
    monkeypatch.setattr(app.storage, "save_generation", real_save)
    assert client.post(f"/api/tasks/{task['id']}/resume").status_code == 200
    assert wait_task(client, task["id"], timeout=60)["status"] == "completed"


def test_a_failing_write_answers_507_and_the_connection_goes_on(studio, monkeypatch) -> None:
    client, app = studio.client, studio.studio

    def full(voice_id, audio):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(app.storage, "save_voice_audio", full)
    before = sorted(p.name for p in (app.storage.root / "voices").iterdir())
    r = client.post(
        "/api/clone",
        data={"name": "Nowhere", "transcript": "Hello there.", "language": "English"},
        files={"audio": ("ref.wav", audio_bytes(3.0), "audio/wav")},
    )
    assert r.status_code == 507 and r.json()["error"]["type"] == "insufficient_storage", r.text
    assert sorted(p.name for p in (app.storage.root / "voices").iterdir()) == before
    assert client.get("/api/voices", params={"search": "Nowhere"}).json()["voices"] == []

    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(app.queue, "counts", broken)
    r = client.get("/api/health", headers={"X-Request-ID": "studio-500"})
    assert r.status_code == 500 and "studio-500" in r.json()["detail"] and "something" not in r.text
    monkeypatch.undo()
    assert client.get("/api/health").status_code == 200


def _sqlite_full() -> sqlite3.OperationalError:
    """SQLite's own "database or disk is full", made by a database capped at its size."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 2")
    try:
        for _ in range(100):
            db.execute("INSERT INTO t VALUES (zeroblob(4096))")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("SQLite took every row")


def test_storage_full_errors_are_told_apart() -> None:
    full = _sqlite_full()
    assert full.sqlite_errorcode == 13 and is_storage_full(full)
    assert is_storage_full(sqlalchemy.exc.OperationalError("INSERT", {}, full))
    assert is_storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_storage_full(wrapped)
    text = "Error while serializing: I/O error: No space left on device (os error 28)"
    assert is_storage_full(SafetensorError(text))

    class PgDiskFull(Exception):
        sqlstate = "53100"

    assert is_storage_full(PgDiskFull("could not extend file"))
    for other in (
        OSError(errno.EACCES, "Permission denied"),
        ValueError("the disk is full of songs"),
        sqlite3.OperationalError("database is locked"),
    ):
        assert not is_storage_full(other)


def test_a_job_failing_on_another_os_error_names_no_path(studio, monkeypatch) -> None:
    """A data folder the server may not write (permissions, read-only): the job fails with the
    error's kind, not the path it names (the log keeps that)."""
    client, app = studio.client, studio.studio
    voice = clone(client, "Denied")

    def denied(generation_id, audio):
        raise PermissionError(errno.EACCES, "Permission denied", str(app.storage.root / "generations"))

    monkeypatch.setattr(app.storage, "save_generation", denied)
    r = _generate(client, voice, "One short sentence.")
    assert r.status_code == 202, r.text
    task = wait_task(client, r.json()["task_id"], timeout=60)
    assert task["status"] == "failed", task
    assert task["error"] == "generation failed: Permission denied (PermissionError)", task
    assert str(app.storage.root) not in client.get(f"/api/tasks/{task['id']}").text
