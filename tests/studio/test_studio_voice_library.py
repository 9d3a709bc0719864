"""One voice library: voices cloned in the studio speak through the OpenAI-compatible API under
``/tts``, voices made through that API are studio voices, deletes reach both, and voices an
earlier version kept in the service's own folder are taken in with their old ids working."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from tests.conftest import REF_TEXT
from tests.studio.support import StudioServer, audio_bytes, clone, studio_settings, unique, wait_task


def test_a_studio_voice_speaks_through_the_api(client) -> None:
    name = unique("studio-made")
    voice_id = clone(client, name)
    listed = client.get("/tts/v1/audio/voices").json()["voices"]
    mine = [v for v in listed if v["id"] == voice_id]
    assert mine and mine[0]["name"] == name and mine[0]["ref_text"] == REF_TEXT
    for voice in (voice_id, name):  # by id, and by its (unique) name
        r = client.post(
            "/tts/v1/audio/speech",
            json={"input": "Hello.", "voice": voice, "response_format": "wav", "max_frames": 4, "seed": 1},
        )
        assert r.status_code == 200, r.text
        audio, sr = sf.read(io.BytesIO(r.content))
        assert sr == 24000 and len(audio) == 4 * 1920 and np.abs(audio).max() > 0


def test_an_api_voice_is_a_studio_voice_and_deletes_reach_both(client) -> None:
    name = unique("api-made")
    files = {"audio": ("ref.wav", audio_bytes(3.0), "audio/wav")}
    r = client.post(
        "/tts/v1/voices", data={"name": name, "ref_text": REF_TEXT, "language": "English"}, files=files
    )
    assert r.status_code == 201, r.text
    voice_id = r.json()["id"]
    studio_voice = client.get(f"/api/voices/{voice_id}").json()
    assert studio_voice["name"] == name and studio_voice["reference_transcript"] == REF_TEXT
    job = client.post(
        "/api/generate", json={"voice_id": voice_id, "text": "Made by the API.", "max_frames": 3, "seed": 2}
    ).json()
    assert wait_task(client, job["task_id"])["status"] == "completed"
    assert client.delete(f"/tts/v1/voices/{voice_id}").json()["deleted"] is True
    assert client.get(f"/api/voices/{voice_id}").status_code == 404
    assert voice_id not in {v["id"] for v in client.get("/tts/v1/audio/voices").json()["voices"]}
    studio_made = clone(client, unique("gone"))
    assert client.delete(f"/api/voices/{studio_made}").status_code == 204
    assert client.get(f"/tts/v1/voices/{studio_made}").status_code == 404


def test_a_long_text_sounds_the_same_from_the_studio_and_its_api(client) -> None:
    """The studio speaks a long text chunk by chunk; the API under /tts speaks it in parts at
    once (server/longform.py) with the studio's split, seed and crossfade: the same audio."""
    voice_id = clone(client, unique("long"))
    text = "The first sentence is here. The second one follows it. A third closes the text."
    job = client.post(
        "/api/generate", json={"voice_id": voice_id, "text": text, "language": "English", "seed": 4}
    ).json()
    task = wait_task(client, job["task_id"])
    assert task["status"] == "completed" and task["chunks_total"] == 3  # chunk_chars=40
    gen = client.get(f"/api/generations/{job['generation_id']}").json()
    studio_audio, _ = sf.read(io.BytesIO(client.get(gen["audio_url"]).content), dtype="float32")
    body = {"input": text, "voice": voice_id, "language": "English", "seed": 4, "response_format": "wav"}
    r = client.post("/tts/v1/audio/speech", json=body)
    assert r.status_code == 200, r.text
    api_audio, _ = sf.read(io.BytesIO(r.content), dtype="float32")
    assert len(api_audio) == len(studio_audio)
    np.testing.assert_allclose(api_audio, studio_audio, atol=2e-3)


def test_voices_of_the_old_service_folder_are_taken_in(tmp_path, tiny_checkpoint, engine, ref_wav) -> None:
    from utter.server.voices.store import VoiceStore

    data = tmp_path / "data"
    old = VoiceStore(data / "tts" / "voices")
    prompt = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    reference, _ = sf.read(ref_wav, dtype="float32")
    legacy = old.create("Old API voice", "English", prompt, reference, "tiny")
    server = StudioServer(studio_settings(data, tiny_checkpoint)).start()
    try:
        client = server.client
        voices = client.get("/api/voices").json()["voices"]
        taken = [v for v in voices if v["name"] == "Old API voice"]
        assert len(taken) == 1 and taken[0]["reference_transcript"] == REF_TEXT
        assert client.get(f"/tts/v1/voices/{legacy['id']}").json()["id"] == taken[0]["id"]  # old id works
        r = client.post(
            "/tts/v1/audio/speech",
            json={"input": "Still here.", "voice": legacy["id"], "response_format": "wav", "max_frames": 3},
        )
        assert r.status_code == 200, r.text
    finally:
        server.stop()
    again = StudioServer(studio_settings(data, tiny_checkpoint)).start()  # a restart imports nothing twice
    try:
        names = [v["name"] for v in again.client.get("/api/voices").json()["voices"]]
        assert names.count("Old API voice") == 1
    finally:
        again.stop()
