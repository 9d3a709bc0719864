"""References without a transcript: transcribed by the server's Whisper (tiny, random), or cloned
by x-vector when it has none; and OpenAI's /v1/audio/transcriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server_support import b64, start_server
from utter.asr import Transcriber, resolve_asr_model
from utter.asr.whisper import LANGUAGE_NAMES
from utter.audio import SAMPLE_RATE, load_audio


@pytest.fixture(scope="module")
def server(engine, tiny_whisper, tmp_path_factory):
    srv = start_server(engine, tmp_path_factory.mktemp("asr"), asr_model=str(tiny_whisper), asr_device="cpu")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def expected(tiny_whisper: Path, ref_wav: Path):
    """What the tiny Whisper hears in the reference, decoded as the server decodes it."""
    wav, _ = load_audio(ref_wav.read_bytes(), target_sr=SAMPLE_RATE)
    return Transcriber.load(resolve_asr_model(str(tiny_whisper)), device="cpu").transcribe(wav, SAMPLE_RATE)


def test_the_model_loads_on_first_use(server) -> None:
    with server.client() as http:
        assert http.get("/health").json()["asr"]["state"] == "idle"  # nothing loaded at start
        r = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"")})
        assert r.status_code == 400 and "empty" in r.json()["detail"]
        assert http.get("/health").json()["asr"]["state"] == "idle"  # a bad request loads nothing


def test_openai_transcriptions(server, ref_wav: Path, expected) -> None:
    files = {"file": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
    with server.client() as http:
        r = http.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"})
        assert r.status_code == 200, r.text
        assert r.json() == {"text": expected.text}
        asr = http.get("/health").json()["asr"]
        assert asr["state"] == "ready" and asr["model"] == "tiny-whisper" and "en" in asr["languages"]
        r = http.post("/v1/audio/transcriptions", files=files, data={"response_format": "text"})
        assert r.text == expected.text + "\n" and r.headers["content-type"].startswith("text/plain")
        r = http.post("/v1/audio/transcriptions", files=files, data={"response_format": "verbose_json"})
        body = r.json()
        assert body["text"] == expected.text and body["duration"] == pytest.approx(2.5, abs=0.01)
        code = expected.language_code
        assert body["language"] == LANGUAGE_NAMES.get(code, code).lower()
        r = http.post("/v1/audio/transcriptions", files=files, data={"language": "de"})
        assert r.status_code == 200
        r = http.post("/v1/audio/transcriptions", files=files, data={"language": "Klingon"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "language"
        r = http.post("/v1/audio/transcriptions", files=files, data={"response_format": "srt"})
        assert r.status_code == 400 and "srt" in r.json()["detail"]
        r = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"not audio" * 40)})
        assert r.status_code == 400
    with server.client(api_key=None) as anonymous:
        assert anonymous.post("/v1/audio/transcriptions", files=files).status_code == 401


def test_a_voice_without_words_is_transcribed(server, ref_wav: Path, expected, engine) -> None:
    files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
    with server.client() as http:
        made = http.post("/v1/voices", files=files, data={"name": "Heard"}).json()
        assert made["ref_text"] == expected.text and made["x_vector_only"] is False
        language = expected.language if expected.language in engine.languages else "Auto"
        assert made["language"] == language
        given = http.post("/v1/voices", files=files, data={"name": "Told", "ref_text": "Exact words."}).json()
        assert given["ref_text"] == "Exact words." and given["language"] == "Auto"
        xvec = http.post("/v1/voices", files=files, data={"name": "Timbre", "x_vector_only": "true"}).json()
        assert xvec["ref_text"] is None and xvec["x_vector_only"] is True


def test_clone_without_words_speaks_as_with_the_transcript(server, ref_wav: Path, expected) -> None:
    body = {
        "text": "Hello there.",
        "ref_audio_base64": b64(ref_wav.read_bytes()),
        "max_new_tokens": 6,
        "seed": 3,
    }
    with server.client() as http:
        heard = http.post("/clone", json=body)
        told = http.post("/clone", json={**body, "ref_text": expected.text})
        xvec = http.post("/clone", json={**body, "x_vector_only": True})
    assert heard.status_code == told.status_code == xvec.status_code == 200
    assert heard.content == told.content  # the transcript made by the server is used as given text
    assert heard.content != xvec.content


@pytest.mark.parametrize("asr_model", ["none", "/no/such/whisper/folder"])
def test_without_a_transcription_model_voices_clone_by_x_vector(engine, tmp_path, ref_wav, asr_model) -> None:
    srv = start_server(engine, tmp_path, asr_model=asr_model)
    try:
        with srv.client() as http:
            files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
            made = http.post("/v1/voices", files=files, data={"name": "Timbre"}).json()
            assert made["ref_text"] is None and made["x_vector_only"] is True
            r = http.post("/v1/audio/transcriptions", files={"file": files["audio"]})
            assert r.status_code == 503
            asr = http.get("/health").json()["asr"]
            if asr_model == "none":
                assert "off" in r.json()["detail"] and asr["state"] == "off"
            else:  # one clear reason, and no path of the server's disk
                assert (
                    asr["state"] == "failed" and "folder" in asr["error"] and "/no/such" not in asr["error"]
                )
                assert "unavailable" in r.json()["detail"]
    finally:
        srv.stop()
