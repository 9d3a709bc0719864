"""Preset speakers in the studio: with a CustomVoice model among its models (tiny, random,
loaded from a folder), a job speaks as a preset speaker with an instruction, exactly as the
TTS API does on the same model; and every wrong combination is a clear 4xx."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.studio.support import StudioServer, clone, studio_settings, unique, wait_task


@pytest.fixture(scope="module")
def preset_studio(tmp_path_factory, tiny_checkpoint: Path) -> Iterator[StudioServer]:
    from utter.dev.tiny_checkpoint import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("presets")
    cv = write_tiny_checkpoint(root / "Tiny-CustomVoice", seed=3, variant="custom_voice")
    server = StudioServer(studio_settings(root / "data", tiny_checkpoint, extra_models=str(cv))).start()
    client = server.client
    import time

    deadline = time.monotonic() + 120
    while not all(m["state"] == "ready" for m in client.get("/tts/health").json()["models"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield server
    server.stop()


def test_a_job_speaks_as_a_preset_speaker(preset_studio: StudioServer) -> None:
    client = preset_studio.client
    models = client.get("/api/health").json()["models"]
    assert [m["variant"] for m in models] == ["base", "custom_voice"] and models[1]["memory_mib"] > 0
    presets = [v for v in client.get("/tts/v1/audio/voices").json()["voices"] if v["category"] == "premade"]
    assert {"Vivian", "Uncle_Fu"} <= {v["name"] for v in presets} and all(v["instructions"] for v in presets)
    body = {
        "speaker": "vivian",
        "instruct": "calmly",
        "text": "Hello from a preset.",
        "seed": 5,
        "max_frames": 10,
    }
    r = client.post("/api/generate", json=body)
    assert r.status_code == 202, r.text
    task = wait_task(client, r.json()["task_id"])
    assert task["status"] == "completed", task
    gen = client.get(f"/api/generations/{r.json()['generation_id']}").json()
    assert gen["voice_name"] == "Vivian" and gen["voice_id"] is None
    assert gen["options"] == {"max_frames": 10, "speaker": "Vivian", "instruct": "calmly"}
    audio, sr = sf.read(io.BytesIO(client.get(gen["audio_url"]).content), dtype="int16")
    speech = {"input": "Hello from a preset.", "voice": "Vivian", "instructions": "calmly", "seed": 5,
              "max_frames": 10, "response_format": "pcm"}  # fmt: skip
    same = np.frombuffer(client.post("/tts/v1/audio/speech", json=speech).content, np.int16)
    assert sr == 24000 and len(audio) == len(same) == 10 * 1920
    assert np.abs(audio.astype(int) - same).max() <= 2


def test_wrong_combinations_are_refused(preset_studio: StudioServer) -> None:
    client = preset_studio.client
    voice = clone(client, unique("cloned"))
    for body, status, words in [
        ({"voice_id": voice, "speaker": "Vivian", "text": "x"}, 422, "either voice_id"),
        ({"text": "x"}, 422, "either voice_id"),
        ({"speaker": "Nobody", "text": "x"}, 404, "Vivian"),
        ({"voice_id": voice, "instruct": "whisper", "text": "x"}, 422, "Design page"),
    ]:
        r = client.post("/api/generate", json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.text)
