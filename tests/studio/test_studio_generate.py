"""``/api/generate`` and ``/api/tasks``: jobs run to the end with progress in chunks and frames,
long texts are chunked (each chunk with its own frame limit), the seed makes audio repeatable,
cancel stops the stream, and bad requests get clear 4xx answers. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import threading
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


class _OpenStreams:
    """Wraps a provider's ``synthesize``: counts the chunk streams open at once (and with
    ``hold`` keeps the first stream after its first piece until that event is set, at most
    30 s: a current chunk that lasts until the test has seen what it waits for)."""

    def __init__(self, real, hold: threading.Event | None = None) -> None:
        self.real, self.open, self.peak, self.hold, self.started = real, 0, 0, hold, 0

    async def synthesize(self, request):
        stream = await self.real(request)
        self.started += 1
        hold = self.hold if self.started == 1 else None
        self.open += 1
        self.peak = max(self.peak, self.open)
        spy = self

        class Counted:
            @property
            def finish_reason(self):
                return stream.finish_reason

            def cancel(self) -> None:
                stream.cancel()

            async def __aiter__(self):
                try:
                    async for chunk in stream:
                        yield chunk
                        waited = 0.0
                        while hold is not None and not hold.is_set() and waited < 30:
                            await asyncio.sleep(0.05)
                            waited += 0.05
                finally:
                    spy.open -= 1

        return Counted()


def test_chunks_are_spoken_ahead_and_sound_as_one_by_one(client, studio, voice, monkeypatch) -> None:
    """With chunk_parallel > 1 the chunks after the current one are spoken at once (from its
    first audio on) and taken up in order: the same audio as one chunk at a time."""
    runner = studio.studio.runner
    text = (
        "The first sentence is right here. The second one follows it now. "
        "A third one comes after that. And the fourth one ends it."
    )
    audio, peaks = {}, {}
    for parallel in (1, 3):
        monkeypatch.setattr(runner.settings, "chunk_parallel", parallel)
        spy = _OpenStreams(runner.provider.synthesize)
        monkeypatch.setattr(runner.provider, "synthesize", spy.synthesize)
        job = _generate(
            client, voice, text, seed=21, max_frames=16
        )  # the current chunk outlasts the start of those ahead
        task = wait_task(client, job["task_id"])
        assert task["status"] == "completed" and task["chunks_total"] == 4, task
        audio[parallel], peaks[parallel] = _audio(client, job["generation_id"]), spy.peak
        monkeypatch.undo()
    assert peaks == {1: 1, 3: 3}
    assert np.array_equal(audio[1], audio[3])


def test_progress_counts_the_chunks_spoken_ahead(client, studio, voice, monkeypatch) -> None:
    """The work done ahead shows: while the first chunk is still the current one, the progress
    already counts what the chunks after it have made (it used to jump when their turn came)."""
    runner = studio.studio.runner
    monkeypatch.setattr(runner.settings, "chunk_parallel", 3)
    seen_ahead = threading.Event()  # the current chunk is held until the work ahead shows
    spy = _OpenStreams(runner.provider.synthesize, hold=seen_ahead)
    monkeypatch.setattr(runner.provider, "synthesize", spy.synthesize)
    text = "The first sentence is right here. The second one follows it now. A third one comes after."
    job = _generate(client, voice, text, seed=5, max_frames=24)
    seen = []
    deadline = time.monotonic() + 120
    while (task := client.get(f"/api/tasks/{job['task_id']}").json())["status"] in ("queued", "processing"):
        assert time.monotonic() < deadline, task
        seen.append((task["chunks_done"], task["progress"], task["frames_done"]))
        if task["chunks_done"] == 0 and task["progress"] > 1 / 3:
            seen_ahead.set()
        time.sleep(0.05)
    assert task["status"] == "completed" and task["chunks_total"] == 3 and spy.peak == 3, task
    progress = [p for _, p, _ in seen]
    assert progress == sorted(progress)  # only forward
    assert any(done == 0 and p > 1 / 3 for done, p, _ in seen), seen  # more than the first chunk's share
    assert max(f for _, _, f in seen) <= task["frames_done"] == 72


def test_same_seed_same_audio(client, voice) -> None:
    a = _generate(client, voice, "Repeat me.", seed=123, max_frames=4)
    b = _generate(client, voice, "Repeat me.", seed=123, max_frames=4)
    for job in (a, b):
        assert wait_task(client, job["task_id"])["status"] == "completed"
    assert np.array_equal(_audio(client, a["generation_id"]), _audio(client, b["generation_id"]))


def test_cancel_stops_a_running_job_and_keeps_what_it_made(client, studio, voice) -> None:
    job = _generate(client, voice, SENTENCES * 3, max_frames=40, seed=1)
    seen = []
    deadline = time.monotonic() + 60
    while True:
        task = client.get(f"/api/tasks/{job['task_id']}").json()
        seen.append(task["progress"])
        if task["status"] == "processing" and task["chunks_done"] >= 1:
            break
        assert task["status"] in ("queued", "processing") and time.monotonic() < deadline, task
        time.sleep(0.02)
    r = client.post(f"/api/tasks/{job['task_id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    task = wait_task(client, job["task_id"], timeout=10)
    assert task["status"] == "cancelled"
    frames = task["frames_done"]
    assert frames < 9 * 40  # it stopped early
    assert seen == sorted(seen)  # progress only moves forward
    time.sleep(0.5)
    assert client.get(f"/api/tasks/{job['task_id']}").json()["frames_done"] == frames  # nothing runs on
    batcher = studio.studio.runner.provider.holder.batcher  # nor do the chunks spoken ahead
    assert batcher.active == 0 and batcher.queued == 0
    gen = client.get(f"/api/generations/{job['generation_id']}").json()
    # What it made is kept: playable, downloadable, and marked as a partial result.
    assert gen["status"] == "cancelled" and gen["partial"] and gen["resumable"] and gen["audio_url"]
    partial = _audio(client, job["generation_id"])
    assert len(partial) >= FRAME and gen["duration_seconds"] == pytest.approx(len(partial) / 24000)
    assert (studio.settings.data_dir / "generations" / f"{job['generation_id']}.parts").exists()
    again = client.post(f"/api/tasks/{job['task_id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent

    # Resumed, it finishes from there, and ends with the audio of a job never interrupted.
    resumed = client.post(f"/api/tasks/{job['task_id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] in ("queued", "processing", "completed")
    assert wait_task(client, job["task_id"], timeout=120)["status"] == "completed"
    done = client.get(f"/api/generations/{job['generation_id']}").json()
    assert done["status"] == "completed" and not done["partial"] and done["error_message"] is None
    whole = _audio(client, job["generation_id"])
    lsb = 2 / 32767  # chunks read back from their 16-bit files join within a step or two of fresh ones
    head = len(partial) - 2000  # the partial result ends in a fade-out
    assert np.abs(whole[:head] - partial[:head]).max() <= lsb
    fresh = _generate(client, voice, SENTENCES * 3, max_frames=40, seed=1)
    assert wait_task(client, fresh["task_id"], timeout=120)["status"] == "completed"
    assert np.abs(whole - _audio(client, fresh["generation_id"])).max() <= lsb
    assert not (studio.settings.data_dir / "generations" / f"{job['generation_id']}.parts").exists()
    again = client.post(f"/api/tasks/{job['task_id']}/resume")
    assert again.status_code == 409  # a completed job has nothing to resume


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


def test_a_job_interrupted_too_often_fails_but_keeps_its_audio_and_resumes(client, studio, voice) -> None:
    """The worker died mid-chunk on every attempt (the last kill -9 left chunk 0 done and chunk 1
    saved up to its last few seconds): recovery fails the job without blaming the text, offers
    chunks 0 and the saved part of 1 as a partial result, and a resume finishes it."""
    from utter.studio.models import Task

    s = studio.studio
    job = _generate(client, voice, SENTENCES, max_frames=6, seed=5)
    assert wait_task(client, job["task_id"])["status"] == "completed"
    whole = _audio(client, job["generation_id"])
    gen_id, task_id = job["generation_id"], job["task_id"]
    with s.queue.sessions() as db:
        chunks = db.get(Task, task_id).chunks
    # The chunks as the job made them (each chunk alone, same seed), to lay out the interrupted state.
    made = []
    for text in chunks[:2]:
        one = _generate(client, voice, text, max_frames=6, seed=5)
        assert wait_task(client, one["task_id"])["status"] == "completed"
        made.append(_audio(client, one["generation_id"]))
    s.storage.save_chunk(gen_id, 0, made[0])
    s.storage.save_running_chunk(gen_id, 1, made[1][: 2 * FRAME])
    with s.queue.sessions.begin() as db:
        task = db.get(Task, task_id)
        task.status, task.generation.status = "processing", "processing"
        task.generation.audio_path = None
        task.worker_id = "elsewhere:1:dead:worker"
        task.lease_expires_at = None
        task.attempts = s.settings.job_max_attempts
    ended: list[str] = []
    assert s.queue.recover("me", ended=ended) == 1 and ended == [gen_id]
    s.runner._keep_made(gen_id)
    gen = client.get(f"/api/generations/{gen_id}").json()
    assert gen["status"] == "failed" and gen["partial"] and gen["resumable"]
    assert "resume" in gen["error_message"] and "shorter text" not in gen["error_message"]
    kept = _audio(client, gen_id)
    fade = int(24000 * studio.settings.crossfade_ms / 1000)
    assert len(kept) == len(made[0]) + 2 * FRAME - fade  # chunk 0, then chunk 1 up to its last save
    assert (
        client.get(f"{gen['audio_url']}?download=1").headers["content-disposition"].startswith("attachment")
    )
    assert client.post(f"/api/tasks/{task_id}/resume").status_code == 200
    assert wait_task(client, task_id, timeout=120)["status"] == "completed"
    assert np.abs(_audio(client, gen_id) - whole).max() <= 2 / 32767


def test_audio_downloads_in_every_format_and_history_keeps_the_settings(client, voice) -> None:
    from utter.audio import load_audio

    job = _generate(client, voice, "Take it away.", seed=77, max_frames=5, temperature=0.7, top_k=20)
    assert wait_task(client, job["task_id"])["status"] == "completed"
    gen = client.get(f"/api/generations/{job['generation_id']}").json()
    assert gen["seed"] == 77 and gen["options"] == {"temperature": 0.7, "top_k": 20, "max_frames": 5}
    wav = _audio(client, job["generation_id"])
    for fmt, media in (
        ("wav", "audio/wav"),
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg"),
        ("flac", "audio/flac"),
    ):
        r = client.get(f"{gen['audio_url']}?download=1&format={fmt}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), fmt
        assert r.headers["content-disposition"].endswith(f'.{fmt}"'), r.headers["content-disposition"]
        decoded, sr = load_audio(r.content, target_sr=24000)
        assert sr == 24000 and abs(len(decoded) - len(wav)) < 24000 * 0.1, fmt  # codecs pad a little
    assert client.get(f"{gen['audio_url']}?format=aiff").status_code == 422


def test_a_running_jobs_audio_streams_while_it_is_made(client, voice) -> None:
    """GET /api/tasks/{id}/live.wav: a WAV stream that starts with what is made so far and
    follows the job to its end; its audio is the job's chunks back to back."""
    job = _generate(client, voice, SENTENCES * 2, max_frames=30, seed=4)
    deadline = time.monotonic() + 60
    while (task := client.get(f"/api/tasks/{job['task_id']}").json())["frames_done"] == 0:
        assert task["status"] in ("queued", "processing") and time.monotonic() < deadline, task
        time.sleep(0.02)
    received = b""
    with client.stream("GET", f"/api/tasks/{job['task_id']}/live.wav") as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        for piece in r.iter_bytes():
            if not received:  # the first bytes came while the job was still running
                assert client.get(f"/api/tasks/{job['task_id']}").json()["status"] == "processing"
            received += piece
    assert received[:4] == b"RIFF" and received[36:40] == b"data"
    live = np.frombuffer(received[44:], dtype="<i2")
    task = wait_task(client, job["task_id"])
    assert task["status"] == "completed"
    final = _audio(client, job["generation_id"])
    fade = int(24000 * 0.04)
    assert len(live) == len(final) + (task["chunks_total"] - 1) * fade  # chunks back to back, no crossfades
    assert client.get(f"/api/tasks/{job['task_id']}/live.wav").status_code == 404  # over: play the result
