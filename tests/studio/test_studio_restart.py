"""Durability: kill -9 the server in the middle of a long job, start it again, and the job resumes
from its finished chunks (or fails with the reason once it was interrupted too often); a
graceful stop puts a running job back in the queue. Real ``utter serve`` processes on SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.studio.support import clone, free_port, wait_task

# A chunk per sentence (chunk_chars 40), FRAMES frames each: enough chunks that a kill after the
# first two always lands mid-job (six once finished before the kill on a 2-core machine).
CHUNKS = 24
TEXT = " ".join(f"This is sentence number {n}." for n in range(1, CHUNKS + 1))
FRAMES = 16


class Serve:
    """``python -m utter.studio.commands serve`` (what ``utter serve`` runs) on a free port."""

    def __init__(self, data: Path, model: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environ = {
            **os.environ,
            "UTTER_CHUNK_CHARS": "40",
            "UTTER_JOB_POLL_SECONDS": "0.2",
            "UTTER_JOB_LEASE_SECONDS": "5",
            "HF_HUB_OFFLINE": "1",
            **env,
        }
        args = ["--model", str(model), "--data-dir", str(data), "--port", str(self.port), "--device", "cpu"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "utter.studio.commands", "serve", *args, "--dtype", "float32"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.client.get("/api/health").json()["model"]["state"] == "ready":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.client.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.client.close()
        return code


def _row(data: Path, task_id: str) -> dict:
    with sqlite3.connect(data / "utter.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone())


def _submit(server: Serve, voice: str, seed: int, text: str = TEXT) -> str:
    body = {"voice_id": voice, "text": text, "max_frames": FRAMES, "seed": seed}
    return server.client.post("/api/generate", json=body).json()["task_id"]


def _wait_chunks(server: Serve, task_id: str, chunks: int, also: tuple[str, int] | None = None) -> None:
    """Until the task has ``chunks`` chunks done (and the task in ``also`` its count too)."""
    wanted = [(task_id, chunks)] + ([also] if also else [])
    deadline = time.monotonic() + 120
    while any(server.client.get(f"/api/tasks/{t}").json()["chunks_done"] < n for t, n in wanted):
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9")
def test_a_killed_server_resumes_or_fails_its_jobs_on_restart(tmp_path, tiny_checkpoint) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    first = Serve(data, tiny_checkpoint, log)
    voice = clone(first.client, "durable")
    resumed, doomed = _submit(first, voice, seed=3), _submit(first, voice, seed=4)
    _wait_chunks(first, resumed, 2, also=(doomed, 1))  # both generating (a busy machine claims late)
    first.kill()
    rows = {task_id: _row(data, task_id) for task_id in (resumed, doomed)}
    assert all(row["status"] == "processing" for row in rows.values()), [
        (r["status"], r["chunks_done"], r["attempts"]) for r in rows.values()
    ]  # killed mid-job
    assert 2 <= rows[resumed]["chunks_done"] < CHUNKS
    with sqlite3.connect(data / "utter.db") as db:  # as if this job had already crashed the server 3 times
        db.execute("UPDATE tasks SET attempts = 3 WHERE id = ?", (doomed,))

    second = Serve(data, tiny_checkpoint, log)
    task = wait_task(second.client, resumed)
    assert task["status"] == "completed", task
    assert task["attempts"] == 2 and task["chunks_done"] == CHUNKS and task["frames_done"] == CHUNKS * FRAMES
    assert "resuming job" in log.read_text()  # the finished chunks were not made again
    gen = second.client.get(f"/api/generations/{task['generation_id']}").json()
    fade = 960  # 40 ms at 24 kHz
    assert gen["duration_seconds"] == pytest.approx((CHUNKS * FRAMES * 1920 - (CHUNKS - 1) * fade) / 24000)
    assert second.client.get(gen["audio_url"]).status_code == 200

    # Interrupted as often as allowed: the job ends failed, with the reason, never "processing".
    task = second.client.get(f"/api/tasks/{doomed}").json()
    assert task["status"] == "failed" and "interrupted 3 time(s)" in task["error"]
    gen = second.client.get(f"/api/generations/{task['generation_id']}").json()
    assert gen["status"] == "failed" and "interrupted" in gen["error_message"]
    # It keeps what it made before the kill (finished chunks, the running one up to its last
    # save), playable, and a resume finishes it.
    if rows[doomed]["chunks_done"] > 0:
        assert gen["partial"] and gen["audio_url"] and gen["duration_seconds"] > 0
        assert second.client.get(gen["audio_url"]).status_code == 200
    assert gen["resumable"]
    assert second.client.post(f"/api/tasks/{doomed}/resume").status_code == 200
    task = wait_task(second.client, doomed)
    assert task["status"] == "completed" and task["chunks_done"] == CHUNKS, task

    # A graceful stop hands a running job back to the queue without counting an attempt.
    paused = _submit(second, voice, seed=5, text=" ".join([TEXT] * 20))  # long: still running at the stop
    _wait_chunks(second, paused, 1)
    assert second.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    row = _row(data, paused)
    assert row["status"] == "queued" and row["attempts"] == 0 and "resumes" in row["message"]
