"""The seed's job API over a real server: submit, poll, fetch, and a cancel that stops compute."""

from __future__ import annotations

import errno
import time

import pytest

from tests.conftest import REF_TEXT
from tests.server_support import b64, read_wav, start_server


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    srv = start_server(engine, tmp_path_factory.mktemp("data"))
    yield srv
    srv.stop()


def job_body(ref_wav, frames: int) -> dict:
    return {
        "text": "A job for a longer text.",
        "language": "English",
        "ref_audio_base64": b64(ref_wav.read_bytes()),
        "ref_text": REF_TEXT,
        "max_new_tokens": frames + 1,
        "seed": 1,
    }


def wait_for(http, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get("/job-status", params={"job_id": job_id}).json()
        if status["status"] in statuses:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def test_job_lifecycle(server, ref_wav) -> None:
    with server.client() as http:
        r = http.post("/submit-job", json=job_body(ref_wav, 5))
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["status"] == "queued" and job["text_length"] == len("A job for a longer text.")
        early = http.get("/job-result", params={"job_id": job["job_id"]})
        if early.status_code == 202:  # still running
            assert early.json()["status"] in ("queued", "running")
        done = wait_for(http, job["job_id"], ("completed",))
        assert done["frames_done"] == 5 and done["progress"] == 1.0 and done["audio_seconds"] == 0.4
        result = http.get("/job-result", params={"job_id": job["job_id"]})
        assert result.status_code == 200 and result.headers["content-type"] == "audio/wav"
        samples, sr, _ = read_wav(result.content)
        assert sr == 24000 and len(samples) == 5 * 1920
        clone = http.post("/clone", json=job_body(ref_wav, 5))
        assert clone.content[44:] == result.content[44:]  # same request, same audio
        files = sorted(p.name for p in server.settings.jobs_dir.iterdir())
        assert files == [f"{job['job_id']}.wav"]


def test_cancel_stops_the_generation(server, ref_wav) -> None:
    with server.client() as http:
        job = http.post("/submit-job", json=job_body(ref_wav, 2000)).json()
        wait_for(http, job["job_id"], ("running",))
        r = http.post("/cancel-job", json={"job_id": job["job_id"]})
        assert r.status_code == 200 and r.json() == {
            "job_id": job["job_id"],
            "status": "cancelled",
            "cancelled": True,
        }
        status = http.get("/job-status", params={"job_id": job["job_id"]}).json()
        assert status["status"] == "cancelled" and status["frames_done"] < 2000
        assert server.holder.batcher.active == 0  # no compute left for it
        assert http.get("/job-result", params={"job_id": job["job_id"]}).status_code == 410
        assert not list(server.settings.jobs_dir.glob(f"{job['job_id']}*"))


def test_job_errors(server, ref_wav) -> None:
    with server.client() as http:
        assert http.get("/job-status", params={"job_id": "job_nope"}).status_code == 404
        assert http.get("/job-result", params={"job_id": "job_nope"}).status_code == 404
        assert http.post("/cancel-job", params={"job_id": "job_nope"}).status_code == 404
        assert http.post("/cancel-job", json={}).status_code == 422
        assert http.get("/job-status").status_code == 422
        bad = job_body(ref_wav, 3) | {"text": ""}
        assert http.post("/submit-job", json=bad).status_code == 400


def test_a_job_whose_file_cannot_be_written_fails_clearly_and_stops_computing(
    server, ref_wav, monkeypatch
) -> None:
    """The disk fills while a job writes its audio: the job fails with a sentence (no path) and
    its generation stops at once instead of running on for nobody."""
    from utter.server.speech import jobs as jobs_module

    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        written = {"n": 0}
        real_write = f.write

        def write(data):
            written["n"] += 1
            if written["n"] > 2:  # the header and a first chunk, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(data)

        f.write = write
        return f

    monkeypatch.setattr(jobs_module, "open", full_open, raising=False)
    with server.client() as http:
        job = http.post("/submit-job", json=job_body(ref_wav, 2000)).json()
        status = wait_for(http, job["job_id"], ("failed",))
        assert status["error"] == jobs_module.STORAGE_FULL_JOB and status["frames_done"] < 2000
        deadline = time.monotonic() + 10
        while server.holder.batcher.active:  # its stream was cancelled: no compute left for it
            assert time.monotonic() < deadline, "the failed job's generation ran on"
            time.sleep(0.02)
        assert not list(server.settings.jobs_dir.glob(f"{job['job_id']}*"))
        result = http.get("/job-result", params={"job_id": job["job_id"]})
        assert result.status_code == 507 and "disk space" in result.json()["detail"]


def test_a_job_failing_on_another_os_error_names_no_path(server, ref_wav, monkeypatch) -> None:
    from utter.server.speech import jobs as jobs_module

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(jobs_module, "open", denied, raising=False)
    with server.client() as http:
        job = http.post("/submit-job", json=job_body(ref_wav, 2000)).json()
        status = wait_for(http, job["job_id"], ("failed",))
        assert status["error"] == "Permission denied (PermissionError)", status
        result = http.get("/job-result", params={"job_id": job["job_id"]})
        assert result.status_code == 500 and str(server.settings.jobs_dir) not in result.text
