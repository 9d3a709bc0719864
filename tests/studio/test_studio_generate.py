"""``/api/generate`` and ``/api/tasks``: jobs run to the end with progress in chunks and frames,
long texts are chunked (each chunk with its own frame limit), the seed makes audio repeatable,
cancel stops the stream, and bad requests get clear 4xx answers. SQLite and PostgreSQL."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf

from tests.studio.support import clone, unique, wait_task

FRAME = 1920
SENTENCES = "The first sentence is here. The second one follows it. A third closes the text."


@pytest.fixture(scope="module")
def voice(studio) -> str:
    return clone(studio.client, unique("gen"))


def _generate(client, voice_id: str, text: str = SENTENCES, **options) -> dict:
    r = client.post(
        "/api/generate", json={"voice_id": voice_id, "text": text, "language": "English", **options}
    )
    assert r.status_code == 202, r.text
    return r.json()


def _audio(client, generation_id: str) -> np.ndarray:
    gen = client.get(f"/api/generations/{generation_id}").json()
    r = client.get(gen["audio_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == 24000
    return audio


def test_long_text_is_chunked_and_each_chunk_has_its_own_limit(client, studio, voice) -> None:
    job = _generate(client, voice, max_frames=3, seed=11)
    assert job["status"] == "queued" and job["task_id"] and job["generation_id"]
    task = wait_task(client, job["task_id"])
    assert task["status"] == "completed", task
    assert task["chunks_total"] == 3 and task["chunks_done"] == 3  # chunk_chars=40: one per sentence
    assert task["frames_done"] == 9 and task["progress"] == 1.0 and task["error"] is None
    audio = _audio(client, job["generation_id"])
    fade = int(24000 * studio.settings.crossfade_ms / 1000)
    assert len(audio) == 9 * FRAME - 2 * fade  # three 3-frame chunks, two crossfades
    gen = client.get(f"/api/generations/{job['generation_id']}").json()
    assert gen["status"] == "completed" and gen["duration_seconds"] == pytest.approx(len(audio) / 24000)
    assert gen["generation_seconds"] > 0 and gen["voice_id"] == voice and gen["text"] == SENTENCES
    parts = studio.settings.data_dir / "generations" / f"{job['generation_id']}.parts"
    assert not parts.exists()  # chunk files are cleaned up once joined


def test_same_seed_same_audio(client, voice) -> None:
    a = _generate(client, voice, "Repeat me.", seed=123, max_frames=4)
    b = _generate(client, voice, "Repeat me.", seed=123, max_frames=4)
    for job in (a, b):
        assert wait_task(client, job["task_id"])["status"] == "completed"
    assert np.array_equal(_audio(client, a["generation_id"]), _audio(client, b["generation_id"]))


def test_cancel_stops_a_running_job(client, studio, voice) -> None:
    job = _generate(client, voice, SENTENCES * 3, max_frames=40, seed=1)
    seen = []
    deadline = time.monotonic() + 60
    while True:
        task = client.get(f"/api/tasks/{job['task_id']}").json()
        seen.append(task["progress"])
        if task["status"] == "processing" and task["frames_done"] > 0:
            break
        assert task["status"] in ("queued", "processing") and time.monotonic() < deadline, task
        time.sleep(0.05)
    r = client.post(f"/api/tasks/{job['task_id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    task = wait_task(client, job["task_id"], timeout=10)
    assert task["status"] == "cancelled"
    frames = task["frames_done"]
    assert frames < 9 * 40  # it stopped early
    assert seen == sorted(seen)  # progress only moves forward
    time.sleep(0.5)
    assert client.get(f"/api/tasks/{job['task_id']}").json()["frames_done"] == frames  # nothing runs on
    gen = client.get(f"/api/generations/{job['generation_id']}").json()
    assert gen["status"] == "cancelled" and gen["audio_url"] is None
    assert client.get(f"/api/generations/{job['generation_id']}/audio").status_code == 404
    assert not (studio.settings.data_dir / "generations" / f"{job['generation_id']}.parts").exists()
    again = client.post(f"/api/tasks/{job['task_id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent


def test_cancel_of_finished_or_unknown_tasks(client, voice) -> None:
    job = _generate(client, voice, "Short.", max_frames=2)
    assert wait_task(client, job["task_id"])["status"] == "completed"
    r = client.post(f"/api/tasks/{job['task_id']}/cancel")
    assert r.status_code == 409 and "completed" in r.json()["detail"]
    assert client.post(f"/api/tasks/{'0' * 32}/cancel").status_code == 404
    assert client.get(f"/api/tasks/{'0' * 32}").status_code == 404


def test_deleting_the_voice_cancels_its_running_job(client) -> None:
    voice_id = clone(client, unique("doomed"))
    job = _generate(client, voice_id, SENTENCES * 3, max_frames=40)
    wait_task(client, job["task_id"], until=("processing",))
    assert client.delete(f"/api/voices/{voice_id}").status_code == 204
    task = wait_task(client, job["task_id"], timeout=10)
    assert task["status"] == "cancelled" and task["error"] == "the voice was deleted"
    gen = client.get(f"/api/generations/{job['generation_id']}").json()
    assert gen["voice_id"] is None and gen["voice_name"].startswith("doomed")  # history keeps the name


def test_tasks_list_filters_by_status(client, voice) -> None:
    job = _generate(client, voice, "Listed.", max_frames=2)
    wait_task(client, job["task_id"])
    body = client.get("/api/tasks", params={"status": ["completed"], "limit": 200}).json()
    assert job["task_id"] in [t["id"] for t in body["tasks"]]
    assert all(t["status"] == "completed" for t in body["tasks"])
    assert client.get("/api/tasks", params={"status": "bogus"}).status_code == 422


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"text": "Hi"}, 422, "voice_id"),
        ({"voice_id": "f" * 32, "text": "Hi"}, 404, "Voice not found"),
        ({"text": ""}, 422, "empty"),
        ({"text": "   \n "}, 422, "empty"),
        ({"text": "x" * 2001}, 422, "limit is 2000"),
        ({"text": "Hi", "language": "Elvish"}, 422, "Unknown language"),
        ({"text": "Hi", "temperature": 0}, 422, "temperature"),
        ({"text": "Hi", "top_p": 1.5}, 422, "top_p"),
        ({"text": "Hi", "top_k": -1}, 422, "top_k"),
        ({"text": "Hi", "max_frames": 0}, 422, "max_frames"),
        ({"text": "Hi", "seed": -1}, 422, "seed"),
        ({"text": "Hi", "bogus": True}, 422, "bogus"),
        ({"text": 5}, 422, "text"),
    ],
)
def test_generate_rejects_bad_input(client, voice, body, status, words) -> None:
    if "voice_id" not in body and words != "voice_id":
        body = {"voice_id": voice, **body}
    r = client.post("/api/generate", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words.lower() in detail.lower(), detail


def test_generate_rejects_a_body_that_is_not_json(client) -> None:
    r = client.post("/api/generate", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
