"""Long texts over HTTP: spoken in parts at once, answered as one audio (server/longform.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import REF_TEXT
from tests.server_support import b64, start_server, store_voice
from utter.audio import SAMPLE_RATE, load_audio
from utter.audio.crossfade import crossfade_join
from utter.server.speech.longform import FADE_MS
from utter.server.speech.textsplit import split_text

TEXT = "One is here. Two is there. Three, now. Then four. And five ends it."
SPLIT = 16


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    srv = start_server(
        engine, tmp_path_factory.mktemp("data"), split_chars=SPLIT, split_parallel=3, max_batch=4
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def voice_id(http, ref_wav) -> str:
    return store_voice(http, ref_wav)["id"]


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def speak(http, voice_id: str, text: str, seed: int) -> np.ndarray:
    body = {"input": text, "voice": voice_id, "seed": seed, "language": "English", "response_format": "pcm"}
    r = http.post("/v1/audio/speech", json=body)
    assert r.status_code == 200, r.text
    return pcm(r.content)


def test_a_long_text_is_its_parts_spoken_alone_and_crossfaded(server, http, voice_id, ref_wav) -> None:
    parts = split_text(TEXT, SPLIT)
    assert len(parts) >= 4 and all(len(p) <= SPLIT for p in parts)  # each part alone is not split
    alone = [speak(http, voice_id, part, 5) for part in parts]
    whole = speak(http, voice_id, TEXT, 5)
    want = crossfade_join(alone, SAMPLE_RATE, FADE_MS)
    assert len(whole) == len(want)
    np.testing.assert_allclose(whole, want, atol=2e-3)  # engine rounding + 16-bit steps

    # The seed API and its jobs split the same way (from the reference, not a stored voice).
    body = {
        "text": TEXT,
        "language": "English",
        "ref_audio_base64": b64(ref_wav.read_bytes()),
        "ref_text": REF_TEXT,
    }
    r = http.post("/clone", json={**body, "seed": 5})
    assert r.status_code == 200, r.text
    assert r.headers["X-Finish-Reason"] in ("eos", "max_frames")
    cloned, _ = load_audio(r.content)
    np.testing.assert_allclose(cloned, whole, atol=2e-3)
    job = http.post("/submit-job", json={**body, "seed": 5}).json()["job_id"]
    deadline = time.monotonic() + 60
    while (result := http.get("/job-result", params={"job_id": job})).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert result.status_code == 200, result.text
    np.testing.assert_allclose(load_audio(result.content)[0], whole, atol=2e-3)


def test_a_frame_limit_holds_for_the_whole_text(http, voice_id) -> None:
    body = {"input": TEXT, "voice": voice_id, "seed": 5, "response_format": "pcm", "max_frames": 7}
    r = http.post("/v1/audio/speech", json=body)
    assert r.status_code == 200, r.text
    assert len(r.content) == 7 * 1920 * 2


def test_a_client_that_leaves_a_long_text_stops_every_part(server, http, voice_id) -> None:
    body = {"input": TEXT * 3, "voice": voice_id, "response_format": "pcm"}
    with http.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        next(r.iter_bytes())
    batcher = server.holder.batcher
    deadline = time.monotonic() + 10
    while (batcher.active or batcher.queued) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert batcher.active == 0 and batcher.queued == 0
