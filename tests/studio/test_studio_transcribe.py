"""The studio's transcription: ``/api/transcribe`` (the Clone page's button) and clones sent
without a transcript, with the tiny random Whisper through the real loading code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.studio.support import StudioServer, audio_bytes, studio_settings
from utter.asr import Transcriber, resolve_asr_model
from utter.audio import SAMPLE_RATE, load_audio


@pytest.fixture(scope="module")
def asr_studio(tmp_path_factory, tiny_checkpoint: Path, tiny_whisper: Path) -> Iterator[StudioServer]:
    settings = studio_settings(
        tmp_path_factory.mktemp("asr-studio"), tiny_checkpoint, asr_model=str(tiny_whisper)
    )
    server = StudioServer(settings).start()
    yield server
    server.stop()


def _heard(tiny_whisper: Path, data: bytes):
    wav, _ = load_audio(data, target_sr=SAMPLE_RATE)
    return Transcriber.load(resolve_asr_model(str(tiny_whisper)), device="cpu").transcribe(wav, SAMPLE_RATE)


def test_transcribe_fills_what_the_model_hears(asr_studio: StudioServer, tiny_whisper: Path) -> None:
    client = asr_studio.client
    assert client.get("/api/asr").json()["state"] == "idle"
    data = audio_bytes(3.0, "flac", sr=44100, seed=2)
    r = client.post("/api/transcribe", files={"audio": ("me.flac", data, "audio/flac")})
    assert r.status_code == 200, r.text
    heard = _heard(tiny_whisper, data)
    body = r.json()
    assert body["text"] == heard.text and body["language_code"] == heard.language_code
    assert body["language"] == heard.language and body["seconds"] == pytest.approx(3.0, abs=0.01)
    assert client.get("/api/health").json()["asr"]["state"] == "ready"
    r = client.post("/api/transcribe", files={"audio": ("me.flac", data)}, data={"language": "French"})
    assert r.status_code == 200 and r.json()["language_code"] == "fr"
    for files, status, word in (
        ({"audio": ("a.wav", b"junk" * 100)}, 422, "audio"),
        ({"audio": ("a.wav", audio_bytes(1.0))}, 422, "between"),
        ({"audio": ("a.wav", audio_bytes(9.0))}, 422, "9.0 s"),
    ):
        r = client.post("/api/transcribe", files=files)
        assert r.status_code == status and word in r.json()["detail"], r.text


def test_clone_without_a_transcript_is_transcribed(asr_studio: StudioServer, tiny_whisper: Path) -> None:
    client = asr_studio.client
    data = audio_bytes(3.0, seed=3)
    r = client.post("/api/clone", data={"name": "Heard"}, files={"audio": ("ref.wav", data, "audio/wav")})
    assert r.status_code == 201, r.text
    heard = _heard(tiny_whisper, data)
    body = r.json()
    assert body["transcribed"] is True and body["transcript"] == heard.text
    voice = client.get(f"/api/voices/{body['id']}").json()
    assert voice["reference_transcript"] == heard.text
    assert voice["language"] == (heard.language if heard.language != "Auto" else "Auto")
    # A language the user chose stays; a transcript the user typed is used as typed.
    r = client.post(
        "/api/clone",
        data={"name": "Typed", "transcript": "My own words.", "language": "German"},
        files={"audio": ("ref.wav", data, "audio/wav")},
    )
    body = r.json()
    assert (
        body["transcribed"] is False
        and body["transcript"] == "My own words."
        and body["language"] == "German"
    )


def test_without_transcription_a_clone_needs_words(client) -> None:
    """The shared studio runs with UTTER_ASR_MODEL=none: a clone without words asks for them."""
    assert client.get("/api/asr").json()["state"] == "off"
    r = client.post("/api/clone", data={"name": "n"}, files={"audio": ("a.wav", audio_bytes(3))})
    assert r.status_code == 422 and "transcript-free" in r.json()["detail"] and "off" in r.json()["detail"]
    r = client.post("/api/transcribe", files={"audio": ("a.wav", audio_bytes(3))})
    assert r.status_code == 503 and "off" in r.json()["detail"]
    assert client.post("/api/asr/retry").status_code == 409
