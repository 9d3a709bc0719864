"""A server with a Base model plus a CustomVoice and a VoiceDesign model (tiny, random, loaded
from folders through the real loading code): requests routed by model, preset speaker or
instructions; presets listed beside stored voices; design a voice and keep it in one call."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.server_support import start_server


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[Path, Path]:
    from utter.dev.tiny_checkpoint import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("family")
    return (
        write_tiny_checkpoint(root / "Tiny-CustomVoice", seed=3, variant="custom_voice"),
        write_tiny_checkpoint(root / "Tiny-VoiceDesign", seed=4, variant="voice_design"),
    )


@pytest.fixture(scope="module")
def server(engine, family, tmp_path_factory):
    cv, vd = family
    data = tmp_path_factory.mktemp("family-data")  # float32 extras: equal to the engines loaded below
    srv = start_server(engine, data, extra_models=f"{cv},{vd}", max_frames=12, dtype="float32", device="cpu")
    deadline = time.monotonic() + 120
    with srv.client() as http:
        while not all(m["state"] == "ready" for m in http.get("/health").json()["models"]):
            assert time.monotonic() < deadline, http.get("/health").json()["models"]
            time.sleep(0.1)
    yield srv
    srv.stop()


def _served(engine, request) -> np.ndarray:
    """What a server's batcher makes of ``request`` on ``engine`` (the prefix cache splits the
    prefill as a server does, which can move float32 rounding and so greedy choices)."""
    from utter.engine.sched.batcher import Batcher

    with Batcher(engine) as batcher:
        return batcher.submit(request).audio()


def _pcm(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, np.int16)


def test_models_and_presets_are_listed(server, ref_wav) -> None:
    with server.client() as http:
        models = http.get("/health").json()["models"]
        assert [m["variant"] for m in models] == ["base", "custom_voice", "voice_design"]
        assert all(m["memory_mib"] > 0 for m in models[1:])
        assert "Uncle_Fu" in models[1]["speakers"]
        listed = http.get("/v1/models").json()["data"]
        assert [m["kind"] for m in listed] == ["base", "custom_voice", "voice_design"]
        files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
        http.post("/v1/voices", files=files, data={"name": "Stored", "x_vector_only": "true"})
        voices = http.get("/v1/audio/voices").json()["voices"]
        kinds = {v["name"]: v["category"] for v in voices}
        assert kinds["Stored"] == "cloned" and kinds["Vivian"] == "premade" and kinds["Ono_Anna"] == "premade"


def test_speech_is_routed_to_the_model_that_can_serve_it(server, engine, family) -> None:
    from utter.engine.engine import Engine, Request

    cv_engine = Engine.load(str(family[0]), device="cpu", dtype="float32")
    vd_engine = Engine.load(str(family[1]), device="cpu", dtype="float32")
    from dataclasses import replace

    base = cv_engine.default_options()  # what the server uses: the checkpoint's, sampling off
    options = replace(
        base,
        talker=replace(base.talker, do_sample=False),
        subtalker=replace(base.subtalker, do_sample=False),
        max_frames=12,
    )
    body = {
        "input": "Hello there.",
        "response_format": "pcm",
        "do_sample": False,
        "subtalker_do_sample": False,
    }
    with server.client() as http:
        # A preset speaker's name picks the CustomVoice model; the instruction steers it.
        got = _pcm(http.post("/v1/audio/speech", json={**body, "voice": "vivian", "instructions": "gently"}))
        want = _served(
            cv_engine, Request("Hello there.", None, "Auto", options, speaker="Vivian", instruct="gently")
        )
        assert np.abs(got.astype(int) - np.rint(want * 32767).astype(int)).max() <= 2
        # `model` picks the VoiceDesign model; `instructions` is the voice.
        design = {**body, "voice": "any", "model": "voice_design", "instructions": "A bright young voice."}
        got = _pcm(http.post("/v1/audio/speech", json=design))
        want = _served(
            vd_engine, Request("Hello there.", None, "Auto", options, instruct="A bright young voice.")
        )
        assert np.abs(got.astype(int) - np.rint(want * 32767).astype(int)).max() <= 2
        # What a model cannot do: a clear 400 naming the model needed.
        r = http.post("/v1/audio/speech", json={**body, "voice": "Stored", "instructions": "whisper"})
        assert r.status_code == 400 and "1.7B-CustomVoice" in r.json()["detail"]
        r = http.post("/v1/audio/speech", json={**body, "voice": "x", "model": "Tiny-VoiceDesign"})
        assert r.status_code == 400 and "instructions" in r.json()["detail"]
        r = http.post("/v1/audio/speech", json={**body, "voice": "Nobody", "model": "custom_voice"})
        assert r.status_code == 400 and "unknown speaker" in r.json()["detail"]


def test_design_a_voice_then_keep_it(server) -> None:
    with server.client() as http:
        r = http.post("/v1/voice-design", json={"description": "A warm, low voice.", "language": "English"})
        assert r.status_code == 200, r.text
        take = r.json()
        assert take["voice"] is None and isinstance(take["seed"], int) and take["text"].startswith("Today")
        clip, sr = sf.read(io.BytesIO(base64.b64decode(take["audio_base64"])), dtype="int16")
        assert sr == 24000 and len(clip) > 0
        # The same seed is the same take; kept, it becomes a stored voice of the Base model.
        again = {
            "description": "A warm, low voice.",
            "language": "English",
            "seed": take["seed"],
            "save_as": "Warm",
        }
        kept = http.post("/v1/voice-design", json=again).json()
        assert kept["audio_base64"] == take["audio_base64"]
        voice = kept["voice"]
        assert voice["name"] == "Warm" and voice["ref_text"] == take["text"] and not voice["x_vector_only"]
        speech = {"input": "Now in the kept voice.", "voice": voice["id"], "response_format": "pcm"}
        assert len(_pcm(http.post("/v1/audio/speech", json=speech))) > 0
        assert http.post("/v1/voice-design", json=again).status_code == 409  # the name is taken


def test_a_server_without_the_model_says_which_to_add(engine, tmp_path) -> None:
    srv = start_server(engine, tmp_path)
    try:
        with srv.client() as http:
            r = http.post("/v1/voice-design", json={"description": "x"})
            assert (
                r.status_code == 400
                and "UTTER_EXTRA_MODELS=Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign" in r.json()["detail"]
            )
    finally:
        srv.stop()
