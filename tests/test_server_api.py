"""The seed's API (/clone, /clone-batch, /health, /languages), bad input, auth and limits, over a
real uvicorn server on loopback with the tiny checkpoint."""

from __future__ import annotations

import base64
import io
import json
import tempfile

import pytest
import soundfile as sf

from tests.conftest import REF_TEXT, speechlike
from tests.server_support import API_KEY, b64, read_wav, start_server
from utter.audio import to_wav_bytes

FRAMES = 4  # max_new_tokens=5 -> at most 4 frames (the official off-by-one)


@pytest.fixture(scope="module")
def private_tmp(tmp_path_factory):
    """Temporary files made while the server runs land here, so the test can see they are gone."""
    path = tmp_path_factory.mktemp("tmpdir")
    old = tempfile.tempdir
    tempfile.tempdir = str(path)
    yield path
    tempfile.tempdir = old


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory, private_tmp):
    srv = start_server(engine, tmp_path_factory.mktemp("data"), allow_ref_audio_url=True)
    yield srv
    srv.stop()


def clone_body(ref_b64: str, **extra) -> dict:
    body = {
        "text": "Hello from the test.",
        "language": "English",
        "ref_audio_base64": ref_b64,
        "ref_text": REF_TEXT,
        "max_new_tokens": FRAMES + 1,
        "seed": 7,
    }
    body.update(extra)
    return body


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"] == body["error"]["message"]
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]


def test_health_languages_and_docs(server, http) -> None:
    open_client = server.client(api_key=None)
    health = open_client.get("/health")  # open without a key
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy" and body["model"] == "tiny"
    assert body["device"] == "cpu" and body["dtype"] == "float32"
    assert "English" in body["supported_languages"] and body["queue"]["max_queue"] == 64
    langs = http.get("/languages").json()
    assert langs["default"] == "Auto" and "Auto" in langs["languages"] and langs["note"]
    docs = open_client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Offline: every script and style of the pages comes from this server, never a CDN.
    assert "cdn." not in docs.text and "/docs/assets/swagger-ui-bundle.js" in docs.text
    bundle = open_client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
    assert open_client.get("/docs/assets/swagger-ui.css").status_code == 200
    redoc = open_client.get("/redoc")
    assert redoc.status_code == 200 and "cdn." not in redoc.text and "fonts.googleapis" not in redoc.text
    assert open_client.get("/docs/assets/redoc.standalone.js").status_code == 200
    spec = open_client.get("/openapi.json").json()
    for path in (
        "/clone",
        "/clone-batch",
        "/submit-job",
        "/v1/audio/speech",
        "/v1/voices",
        "/v1/audio/voices",
    ):
        assert path in spec["paths"]
    assert health.headers["x-request-id"]
    assert http.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_clone_returns_24k_mono_pcm16_wav(http, ref_b64) -> None:
    r = http.post("/clone", json=clone_body(ref_b64))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert "attachment" in r.headers["content-disposition"] and ".wav" in r.headers["content-disposition"]
    samples, sr, subtype = read_wav(r.content)
    assert sr == 24000 and subtype == "PCM_16" and samples.ndim == 1
    assert 0 < len(samples) <= FRAMES * 1920
    # Same request, same seed: the same audio (x-vector-only mode too, without a transcript).
    assert http.post("/clone", json=clone_body(ref_b64)).content == r.content
    xvec = http.post("/clone", json=clone_body(ref_b64, ref_text=None))
    assert xvec.status_code == 200 and xvec.content != r.content


def test_clone_streams_in_chunks(http, ref_b64) -> None:
    body = clone_body(ref_b64, stream=True, max_new_tokens=8)
    with http.stream("POST", "/clone", json=body) as r:
        assert r.status_code == 200
        chunks = [c for c in r.iter_raw() if c]
    data = b"".join(chunks)
    assert len(chunks) > 1
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"  # streaming: unknown length
    samples, sr, _ = read_wav(data)
    assert sr == 24000 and len(samples) == (len(data) - 44) // 2
    whole = http.post("/clone", json=clone_body(ref_b64, max_new_tokens=8)).content
    assert data[44:] == whole[44:]  # same samples as the non-streamed answer


def test_clone_batch(http, ref_b64) -> None:
    body = clone_body(ref_b64, texts=["One.", "Two, a bit longer."], languages=["English", "Auto"])
    del body["text"], body["language"]
    r = http.post("/clone-batch", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "success" and out["count"] == 2
    for i, item in enumerate(out["audio_files"]):
        wav = base64.b64decode(item["audio_base64"])
        assert item["index"] == i and item["size_bytes"] == len(wav) and item["text"] == body["texts"][i]
        assert read_wav(wav)[1] == 24000
    bad = http.post("/clone-batch", json=body | {"languages": ["English"]})
    assert_error(bad, 400, "languages")


def test_bad_input_gets_clear_errors_and_server_stays_healthy(http, ref_b64, ref_wav) -> None:
    wav = ref_wav.read_bytes()
    short = b64(to_wav_bytes(speechlike(0.5, 24000)))
    long = b64(to_wav_bytes(speechlike(6.0, 24000)))
    blaring = io.BytesIO()  # a float WAV of raw values far past full scale
    sf.write(blaring, speechlike(1.5, 24000) * 1e30, 24000, format="WAV", subtype="FLOAT")
    cases = [
        (
            http.post("/clone", content=b"{not json", headers={"content-type": "application/json"}),
            400,
            "json",
        ),
        (http.post("/clone", json={"language": "English"}), 422, "text"),
        (http.post("/clone", json=clone_body(ref_b64, ref_audio_base64="%%%not base64%%%")), 400, "base64"),
        (http.post("/clone", json=clone_body(b64(b"this is plainly not audio" * 40))), 400, "audio"),
        (http.post("/clone", json=clone_body(b64(wav[: len(wav) // 2]))), 400, "truncated"),
        (http.post("/clone", json=clone_body(short)), 400, "at least 1 s"),
        (http.post("/clone", json=clone_body(long)), 400, "at most 5 s"),
        (http.post("/clone", json=clone_body(b64(blaring.getvalue()))), 400, "far beyond full scale"),
        (http.post("/clone", json=clone_body(ref_b64, text="   ")), 400, "empty"),
        (http.post("/clone", json=clone_body(ref_b64, text="x" * 301)), 400, "at most 300"),
        (http.post("/clone", json=clone_body(ref_b64, language="Klingon")), 400, "unknown language"),
        (http.post("/clone", json=clone_body(None)), 400, "reference audio is required"),
        (http.post("/clone", json=clone_body(ref_b64, temperature=-1)), 422, "temperature"),
        (
            http.post("/clone", content=b"x" * 2_100_000, headers={"content-type": "application/json"}),
            413,
            "",
        ),
        (http.post("/v1/audio/speech", json={"input": "Hi", "voice": "nobody"}), 404, "unknown voice"),
    ]
    for response, status, words in cases:
        assert_error(response, status, words)
    assert http.get("/health").json()["status"] == "healthy"
    assert http.post("/clone", json=clone_body(ref_b64)).status_code == 200


def test_api_key(server, ref_b64) -> None:
    with server.client(api_key=None) as anon:
        r = anon.post("/clone", json=clone_body(ref_b64))
        assert_error(r, 401, "api key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(anon.get("/v1/audio/voices", headers={"X-API-Key": "wrong"}), 401)
        assert anon.get("/v1/audio/voices", headers={"X-API-Key": API_KEY}).status_code == 200
        assert anon.get("/health").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.wav",
        "http://localhost:9/a.wav",  # a name that resolves to loopback
        "http://[::1]:9/a.wav",
        "http://10.1.2.3/a.wav",
        "http://192.168.0.10/a.wav",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/a.wav",
        "file:///etc/passwd",
        "ftp://example.com/a.wav",
        "gopher://example.com/",
    ],
)
def test_ref_audio_url_refuses_non_public_targets(http, url) -> None:
    r = http.post("/clone", json=clone_body(None, ref_audio_url=url))
    assert_error(r, 400, "ref_audio_url")


def test_client_commands(server, ref_wav, tmp_path, capsys) -> None:
    import argparse

    from utter.server.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> dict:
        args = parser.parse_args(["client", "--endpoint", server.url, "--api-key", API_KEY, *argv])
        args.func(args)
        return json.loads(capsys.readouterr().out)

    assert run("health")["status"] == "healthy"
    assert "English" in run("languages")["languages"]
    common = ["--ref", str(ref_wav), "--ref-text", REF_TEXT, "--max-new-tokens", "4", "--seed", "1"]
    out = run("clone", *common, "--text", "Hi there.", "-o", str(tmp_path / "a.wav"), "--stream")
    assert read_wav((tmp_path / "a.wav").read_bytes())[1] == 24000 and out["size_bytes"] > 44
    out = run("batch", *common, "--text", "One.", "--text", "Two.", "--out-dir", str(tmp_path / "b"))
    assert out["count"] == 2 and all(read_wav(open(f, "rb").read())[1] == 24000 for f in out["files"])


def test_no_temporary_files_left(server, private_tmp) -> None:
    """Runs last in this module: nothing under the temp dir, no partial files in the data dir."""
    assert list(private_tmp.iterdir()) == []
    leftovers = [
        p for p in server.settings.data_dir.rglob("*") if p.name.startswith(".") or p.suffix == ".part"
    ]
    assert leftovers == []


def test_mounted_under_a_prefix(tmp_path) -> None:
    """The studio mounts the app under /tts and manages the holder itself."""
    from fastapi import FastAPI

    from tests.server_support import LiveServer
    from utter.server.app import create_app
    from utter.server.runtime import EngineHolder
    from utter.server.settings import ServerSettings

    settings = ServerSettings(data_dir=tmp_path, manage_holder=False)
    holder = EngineHolder("tiny")  # never started: the parent app would manage it
    parent = FastAPI()
    parent.mount("/tts", create_app(settings, holder))
    srv = LiveServer(settings, holder, app=parent).start()
    try:
        with srv.client(api_key=None) as http:
            assert http.get("/tts/health").json()["status"] == "loading"
            docs = http.get("/tts/docs").text
            assert "/tts/openapi.json" in docs and "/tts/docs/assets/swagger-ui-bundle.js" in docs
            assert http.get("/tts/docs/assets/swagger-ui-bundle.js").status_code == 200
            assert "/clone" in http.get("/tts/openapi.json").json()["paths"]
            r = http.get("/tts/v1/audio/voices/")  # no redirect to an absolute URL
            assert r.status_code == 404 and "location" not in r.headers
    finally:
        srv.stop()


def test_base64_forms() -> None:
    from utter.server.http.errors import ApiError
    from utter.server.voices.references import decode_base64_audio

    data = bytes(range(256)) * 3
    std = base64.b64encode(data).decode()
    assert decode_base64_audio(std) == data
    assert decode_base64_audio("data:audio/wav;base64," + std) == data
    assert decode_base64_audio("\n".join(std[i : i + 76] for i in range(0, len(std), 76))) == data
    assert decode_base64_audio(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    for bad in ("a", "ab$c", "", "===="):
        with pytest.raises(ApiError):
            decode_base64_audio(bad)
