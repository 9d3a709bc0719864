"""Stored voices and the OpenAI-compatible /v1/audio/speech, over a real server; voices survive a
restart of the app."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import REF_TEXT
from tests.server_support import read_wav, start_server, store_voice
from utter.audio import load_audio
from utter.audio.encode import FORMATS

FRAMES = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def server(engine, data_dir):
    srv = start_server(engine, data_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def voice_id(http, ref_wav) -> str:
    info = store_voice(http, ref_wav)
    assert info["id"].startswith("voice_") and info["name"] == "Ada" and info["language"] == "English"
    assert info["ref_text"] == REF_TEXT and not info["x_vector_only"] and info["reference_seconds"] == 2.5
    return info["id"]


def speech(voice: str, **extra) -> dict:
    return {
        "model": "tts-1",
        "input": "Hello there.",
        "voice": voice,
        "max_frames": FRAMES,
        "seed": 3,
        **extra,
    }


def test_voice_listing_for_clients(http, voice_id) -> None:
    listed = http.get("/v1/audio/voices").json()["voices"]
    assert [(v["id"], v["name"]) for v in listed] == [(voice_id, "Ada")]
    assert http.get(f"/v1/voices/{voice_id}").json()["name"] == "Ada"
    assert http.get("/v1/audio/models").json()["models"][0]["id"] == "tiny"
    assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_speech_in_every_format(http, voice_id, fmt) -> None:
    r = http.post("/v1/audio/speech", json=speech(voice_id, response_format=fmt))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FORMATS[fmt][0])
    if fmt == "pcm":
        assert len(r.content) == FRAMES * 1920 * 2
        return
    audio, sr = load_audio(r.content, target_sr=None)
    assert sr == 24000 and abs(len(audio) - FRAMES * 1920) <= 2048  # codec padding for mp3/aac
    if fmt == "wav":
        assert r.content[4:8] != b"\xff\xff\xff\xff"  # whole file: exact header


def test_speech_streams_and_sse(http, voice_id) -> None:
    with http.stream(
        "POST", "/v1/audio/speech", json=speech(voice_id, response_format="pcm", max_frames=6)
    ) as r:
        assert r.status_code == 200
        chunks = [c for c in r.iter_raw() if c]
    assert len(chunks) > 1 and sum(map(len, chunks)) == 6 * 1920 * 2

    body = speech(voice_id, response_format="wav", stream_format="sse", max_frames=6)
    with http.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 1 and events[-1]["type"] == "speech.audio.done"
    wav = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert read_wav(wav)[1] == 24000 and (len(wav) - 44) == 6 * 1920 * 2


def test_speed_changes_duration(http, voice_id) -> None:
    normal = http.post("/v1/audio/speech", json=speech(voice_id, response_format="wav", max_frames=8))
    fast = http.post(
        "/v1/audio/speech", json=speech(voice_id, response_format="wav", max_frames=8, speed=2.0)
    )
    n, f = len(read_wav(normal.content)[0]), len(read_wav(fast.content)[0])
    assert abs(f - n / 2) < 0.05 * n


def test_voice_errors(http, ref_wav) -> None:
    r = http.post("/v1/voices", data={"name": "No audio"})
    assert r.status_code == 422 and "audio" in r.json()["detail"]
    files = {"audio": ("x.wav", b"not audio at all" * 10, "audio/wav")}
    assert http.post("/v1/voices", files=files, data={"name": "X"}).status_code == 400
    files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
    r = http.post("/v1/voices", files=files, data={"name": "X", "language": "Elvish"})
    assert r.status_code == 400 and "unknown language" in r.json()["detail"].lower()
    assert http.delete("/v1/voices/voice_0000000000000000").status_code == 404
    assert http.delete("/v1/voices/../../etc").status_code == 404
    assert http.post("/v1/audio/speech", json=speech("voice_0000000000000000")).status_code == 404


def test_voices_survive_a_restart_and_can_be_deleted(server, engine, data_dir, voice_id, ref_wav) -> None:
    files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
    xvec = server.client().post("/v1/voices", files=files, data={"name": "Bob"}).json()
    assert xvec["x_vector_only"] and xvec["ref_text"] is None
    before = server.client().post("/v1/audio/speech", json=speech(voice_id, response_format="wav")).content
    server.stop()
    again = start_server(engine, data_dir)
    try:
        with again.client() as http:
            names = [v["name"] for v in http.get("/v1/audio/voices").json()["voices"]]
            assert names == ["Ada", "Bob"]
            after = http.post("/v1/audio/speech", json=speech(voice_id, response_format="wav")).content
            assert after == before
            assert http.delete(f"/v1/voices/{xvec['id']}").json()["deleted"] is True
            assert [v["name"] for v in http.get("/v1/audio/voices").json()["voices"]] == ["Ada"]
            by_name = http.post("/v1/audio/speech", json=speech("Ada", response_format="wav")).content
            assert by_name == before
    finally:
        again.stop()
