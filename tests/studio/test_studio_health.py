"""``/api/health`` and ``/api/languages``, and a studio whose model is downloading, loading or
cannot be had: it serves at once, says what is going on, and generation waits or fails clearly."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from tests.studio.support import StudioServer, clone, studio_settings, wait_task
from utter.server.runtime import EngineHolder
from utter.studio.provider import LocalProvider
from utter.studio.storage import Storage


def test_docs_work_offline(client) -> None:
    """The studio's API docs and the TTS service's (under /tts) load nothing from a CDN."""
    for prefix in ("", "/tts"):
        page = client.get(f"{prefix}/docs")
        assert page.status_code == 200 and "cdn." not in page.text
        assert f"{prefix}/docs/assets/swagger-ui-bundle.js" in page.text
        assert client.get(f"{prefix}/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_unknown_addresses_get_a_page_in_the_browser_and_json_in_the_api(client) -> None:
    page = client.get("/no/such/page", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Page not found" in page.text and 'href="/generate"' in page.text
    api = client.get("/api/no-such-thing", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.json()["detail"]
    assert client.get("/no/such/page").json()["detail"]  # not a browser: JSON as before


def test_health_and_languages(client) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["database"] == "ok"
    assert health["model"]["state"] == "ready" and health["model"]["provider"] == "local"
    assert set(health["jobs"]) == {"queued", "processing"}
    langs = client.get("/api/languages").json()
    assert langs["default"] == "Auto" and langs["languages"][0] == "Auto" and len(langs["languages"]) == 11
    assert {"English", "Chinese", "Japanese", "Korean"} <= set(langs["languages"])


class GatedHolder(EngineHolder):
    """A holder whose load waits for ``gate``: the model is "downloading" until the test opens it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def _load(self) -> None:
        self._on_progress(0.4)
        self.gate.wait(60)
        super()._load()


def _server(tmp_path: Path, model: str, holder: EngineHolder | None = None) -> StudioServer:
    settings = studio_settings(tmp_path / "data", Path(model), cache_dir=str(tmp_path / "hf"))
    provider = LocalProvider(holder, Storage(settings.data_dir)) if holder else None
    return StudioServer(settings, provider=provider).start(wait_model=False)


def test_jobs_wait_while_the_model_downloads_then_run(tmp_path, tiny_checkpoint) -> None:
    holder = GatedHolder(str(tiny_checkpoint), device="cpu", dtype="float32")
    server = _server(tmp_path, str(tiny_checkpoint), holder)
    try:
        client = server.client
        health = client.get("/api/health").json()
        assert health["status"] == "starting"
        assert health["model"]["state"] == "downloading" and health["model"]["progress"] == pytest.approx(0.4)
        voice = clone(client, "early")  # cloning needs no model
        job = client.post("/api/generate", json={"voice_id": voice, "text": "Wait for it.", "max_frames": 2})
        assert job.status_code == 202
        task = client.get(f"/api/tasks/{job.json()['task_id']}").json()
        assert task["status"] == "queued" and task["message"] == "waiting for the model: downloading 40%"
        time.sleep(0.5)
        assert client.get(f"/api/tasks/{task['id']}").json()["status"] == "queued"  # nothing claims it yet
        holder.gate.set()
        assert wait_task(client, task["id"])["status"] == "completed"
        assert client.get("/api/health").json()["model"]["state"] == "ready"
    finally:
        server.stop()


def test_a_model_that_cannot_be_had_is_reported_with_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = _server(tmp_path, "Qwen/Qwen3-TTS-12Hz-0.6B-Base")
    try:
        client = server.client
        deadline = time.monotonic() + 30
        while (health := client.get("/api/health").json())["model"]["state"] != "failed":
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["status"] == "degraded"
        model = health["model"]
        assert "offline" in model["error"] and "--model" in model["error"] and model["hint"]
        voice = clone(client, "still works")
        r = client.post("/api/generate", json={"voice_id": voice, "text": "Hello."})
        assert r.status_code == 503 and "Cannot get model" in r.json()["detail"]
        assert client.get("/api/languages").json()["languages"][0] == "Auto"
        assert client.get("/tts/health").status_code == 503
        if importlib.util.find_spec("utter.studio.pages") is not None:  # the pages are served regardless
            assert client.get("/clone").status_code == 200
    finally:
        server.stop()


def test_a_failed_model_is_retried_from_the_page_without_a_restart(tmp_path, tiny_checkpoint, caplog) -> None:
    import logging
    import shutil

    folder = tmp_path / "model-arrives-later"
    server = _server(tmp_path, str(folder))
    try:
        client = server.client
        deadline = time.monotonic() + 30
        while client.get("/api/health").json()["model"]["state"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        failures = [r for r in caplog.records if "loading" in r.getMessage() and r.levelno >= logging.ERROR]
        assert failures and all(r.exc_info is None for r in failures)  # one clear line, no traceback
        shutil.copytree(tiny_checkpoint, folder)  # what the person fixed
        r = client.post("/api/model/retry")
        assert r.status_code == 202
        while client.get("/api/health").json()["model"]["state"] != "ready":
            assert time.monotonic() < deadline + 60
            time.sleep(0.05)
        assert client.post("/api/model/retry").status_code == 409  # nothing to retry now
        voice = clone(client, "after the retry")
        job = client.post("/api/generate", json={"voice_id": voice, "text": "Back.", "max_frames": 2}).json()
        assert wait_task(client, job["task_id"])["status"] == "completed"
    finally:
        server.stop()
