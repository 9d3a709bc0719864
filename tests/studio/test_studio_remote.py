"""The remote provider: the studio speaking through a real utter service (``create_app``) over HTTP
with an API key, as it would through the Modal deployment; and clear states when it cannot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.server_support import API_KEY, start_server
from tests.studio.support import StudioServer, clone, free_port, studio_settings, wait_task
from utter.studio.provider import RemoteError, RemoteProvider, Synthesis, VoiceSource

SENTENCES = "The first sentence is here. The second one follows it. A third closes the text."


@pytest.fixture
def tts(engine, tmp_path):
    server = start_server(engine, tmp_path / "tts", ref_max_seconds=10.0, max_request_bytes=4_000_000)
    yield server
    server.stop()


def _wait_state(studio: StudioServer, state: str) -> dict:
    deadline = time.monotonic() + 30
    while (model := studio.client.get("/api/health").json()["model"])["state"] != state:
        assert time.monotonic() < deadline, model
        time.sleep(0.05)
    return model


def test_generation_through_a_remote_service(tmp_path, tts) -> None:
    settings = studio_settings(tmp_path / "data", Path("unused"), tts_endpoint=tts.url, tts_api_key=API_KEY)
    studio = StudioServer(settings).start(wait_model=False)
    try:
        model = _wait_state(studio, "ready")
        assert model["provider"] == "remote" and model["endpoint"] == tts.url
        client = studio.client
        voice = clone(client, "remote voice")
        job = client.post(
            "/api/generate", json={"voice_id": voice, "text": SENTENCES, "max_frames": 3, "seed": 2}
        )
        task = wait_task(client, job.json()["task_id"])
        assert task["status"] == "completed" and task["chunks_done"] == 3 and task["frames_done"] == 9, task
        gen = client.get(f"/api/generations/{task['generation_id']}").json()
        assert gen["duration_seconds"] == pytest.approx((9 * 1920 - 2 * 960) / 24000)
        assert client.get(gen["audio_url"]).content[:4] == b"RIFF"

        long = client.post("/api/generate", json={"voice_id": voice, "text": SENTENCES * 4, "max_frames": 40})
        wait_task(client, long.json()["task_id"], until=("processing",))
        client.post(f"/api/tasks/{long.json()['task_id']}/cancel")
        assert wait_task(client, long.json()["task_id"], timeout=15)["status"] == "cancelled"
        assert client.get("/tts/health").status_code == 404  # no local model to serve there
    finally:
        studio.stop()


def test_a_wrong_key_fails_the_request_with_the_services_reason(tts, ref_wav) -> None:
    async def run() -> None:
        provider = RemoteProvider(tts.url, "wrong-key")
        voice = VoiceSource("a" * 32, Path(ref_wav), "Hello.")
        stream = await provider.synthesize(Synthesis("Hi.", voice, "English", 1, {"max_frames": 2}))
        async for _ in stream:
            pass

    with pytest.raises(RemoteError, match="401"):
        asyncio.run(run())


def test_an_unreachable_service_shows_in_health_and_jobs_wait(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    studio = StudioServer(studio_settings(tmp_path / "data", Path("unused"), tts_endpoint=url)).start(
        wait_model=False
    )
    try:
        model = _wait_state(studio, "failed")
        assert "cannot be reached" in model["error"] and "--tts-endpoint" in model["hint"]
        voice = clone(studio.client, "patient")
        job = studio.client.post("/api/generate", json={"voice_id": voice, "text": "Later."})
        assert job.status_code == 202  # a remote service may come back: the job waits in the queue
        task = studio.client.get(f"/api/tasks/{job.json()['task_id']}").json()
        assert task["status"] == "queued" and "cannot be reached" in task["message"]
    finally:
        studio.stop()
