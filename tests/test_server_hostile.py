"""The service against hostile clients: unbounded numbers, broken text, huge references, slow
and idle connections, bodies sent without a key, log forging, and failures inside the server.

Each test names what it attacks; every answer must be a clear 4xx (or a closed connection for
a client that never finishes its request), and the server must go on serving.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import time

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REF_TEXT
from tests.server_support import API_KEY, b64, start_server
from utter.engine.engine import MAX_FRAMES, Engine
from utter.server.http.errors import STORAGE_FULL_MESSAGE
from utter.server.http.middleware import SingleLineFormatter
from utter.server.runtime import EngineHolder
from utter.server.voices import store as voice_store


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    srv = start_server(
        engine,
        tmp_path_factory.mktemp("data"),
        max_frames=200,
        header_timeout_s=1.0,
        body_timeout_s=1.0,
        max_connections=8,
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ref(ref_b64) -> str:
    return ref_b64


def body(ref: str, **extra) -> dict:
    return {"text": "Hello.", "language": "English", "ref_audio_base64": ref, "ref_text": REF_TEXT, **extra}


def assert_status(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"].lower()
    for word in words:
        assert word.lower() in detail, detail


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/clone", "max_new_tokens", 2**70),
        ("/clone", "max_new_tokens", MAX_FRAMES + 2),
        ("/clone", "top_k", 2**70),
        ("/clone", "subtalker_top_k", 2**64),
        ("/clone", "seed", 2**70),
        ("/clone-batch", "max_new_tokens", 2**70),
        ("/submit-job", "max_new_tokens", 2**70),
    ],
)
def test_huge_numbers_get_a_clean_422(http, ref, path, field, value) -> None:
    payload = body(ref, **{field: value})
    if path == "/clone-batch":
        payload["texts"] = [payload.pop("text")]
    assert_status(http.post(path, json=payload), 422, field)


def test_frames_above_the_servers_cap_are_refused_and_memory_is_not_taken(server, http, ref) -> None:
    runner = server.holder.engine.runner
    runner.release(keep_bytes=0)  # earlier tests on this engine may have grown it
    response = http.post("/clone", json=body(ref, max_new_tokens=1000))  # the server allows 200 frames
    assert_status(response, 400, "at most 200 frames")
    speech = http.post("/v1/audio/speech", json={"input": "Hi.", "voice": "x", "max_frames": 10**9})
    assert_status(speech, 422, "max_frames")
    assert runner.capacity[1] < 1000


LONE = '"\\ud800"'  # JSON's escape for a lone surrogate: valid JSON, not valid Unicode text


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/clone", '{"text": %s, "ref_audio_base64": "%s"}'),
        ("/clone", '{"text": "Hi.", "ref_text": %s, "ref_audio_base64": "%s"}'),
        ("/clone", '{"text": "Hi.", "language": %s, "ref_audio_base64": "%s"}'),
        ("/clone-batch", '{"texts": ["ok", %s], "ref_audio_base64": "%s"}'),
        ("/submit-job", '{"text": %s, "ref_audio_base64": "%s"}'),
        ("/v1/audio/speech", '{"input": %s, "voice": "v", "x": "%s"}'),
        ("/cancel-job", '{"job_id": %s, "x": "%s"}'),
    ],
)
def test_lone_surrogates_get_400_at_the_door(server, http, ref, path, raw) -> None:
    jobs_before = len(server.app.state.service.jobs.jobs)
    response = http.post(
        path, content=(raw % (LONE, ref)).encode(), headers={"Content-Type": "application/json"}
    )
    assert_status(response, 400, "not valid unicode")
    assert len(server.app.state.service.jobs.jobs) == jobs_before  # no job was accepted


def _flac_of_silence(seconds: int, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, 1, format="FLAC") as f:
        minute = np.zeros(sr * 60, dtype=np.float32)
        for _ in range(seconds // 60):
            f.write(minute)
    return buf.getvalue()


def test_a_long_reference_is_refused_from_its_header_without_decoding(http) -> None:
    data = _flac_of_silence(3 * 3600)  # 3 hours in about half a megabyte
    started = time.perf_counter()
    response = http.post("/clone", json={"text": "Hi.", "ref_audio_base64": b64(data), "x_vector_only": True})
    assert_status(response, 400, "10800.0 s long", "at most 5 s")
    assert time.perf_counter() - started < 2.0  # decoding 3 hours would take far longer (and 2.5 GB)


def _raw(server, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_the_api_key_is_checked_before_the_body_is_read(server) -> None:
    # A 50 MB body is announced and never sent: the answer must come at once, from the headers.
    head = (
        b"POST /clone HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n"
    )
    started = time.perf_counter()
    answer = _raw(server, head + b"Authorization: Bearer wrong\r\n\r\n", timeout=3.0)
    assert answer.startswith(b"HTTP/1.1 401") and time.perf_counter() - started < 1.0  # and closed
    assert b"x-request-id" in answer.lower()


def test_headers_that_never_finish_are_cut_off(server) -> None:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert s.recv(1024) == b""  # closed by the server
    assert 0.9 < time.perf_counter() - started < 5.0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # nothing at all
        assert s.recv(1024) == b""


def test_a_body_that_trickles_gets_408(server) -> None:
    head = (
        "POST /clone HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
    ).encode()
    answer = _raw(server, head + b'{"text": ', timeout=5.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_connections_beyond_the_cap_get_503(server, http) -> None:
    idle = [
        socket.create_connection(("127.0.0.1", server.port)) for _ in range(server.settings.max_connections)
    ]
    try:
        time.sleep(0.2)
        answer = _raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert http.get("/health").status_code == 200


def test_clients_cannot_write_log_lines(server, http) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SingleLineFormatter("%(name)s %(message)s"))
    access = logging.getLogger("utter.server.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        http.get("/nothing%0D%0AFORGED%20line%0Aanother")
        http.post("/clone", json={"text": "Hi.", "language": "Elvish\nFORGED", "ref_audio_base64": "x"})
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("utter.server.access ") for line in lines), lines
    assert "\\r\\nFORGED" in stream.getvalue()


def test_a_500_carries_its_request_id_and_is_logged_once(server, http, monkeypatch, caplog) -> None:
    def broken() -> list:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(server.app.state.service.voices, "list", broken)
    with caplog.at_level(logging.INFO):
        response = http.get("/v1/voices", headers={"X-Request-ID": "trace-me-42"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-me-42"
    assert "trace-me-42" in response.json()["detail"] and "fire" not in response.json()["detail"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "fire" in (errors[0].exc_text or str(errors[0].exc_info))
    assert http.get("/health").status_code == 200


def test_a_full_disk_gets_507_leaves_no_half_voice_and_keeps_the_connection(
    server, http, ref_wav, monkeypatch
) -> None:
    """Storing a voice when the disk is full: 507 with a sentence saying so (not a 500, not a
    dropped connection), no temporary folder left, the next request on the connection served."""

    def full(path, audio, sr):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(voice_store, "write_wav", full)
    root = server.settings.voices_dir
    before = sorted(p.name for p in root.iterdir()) if root.exists() else []
    files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
    r = http.post("/v1/voices", files=files, data={"name": "Full", "ref_text": REF_TEXT})
    assert r.status_code == 507 and r.json()["detail"] == STORAGE_FULL_MESSAGE, r.text
    assert r.json()["error"]["type"] == "insufficient_storage" and str(root) not in r.text
    assert sorted(p.name for p in root.iterdir()) == before
    assert "Full" not in [v["name"] for v in http.get("/v1/audio/voices").json()["voices"]]
    health = http.get("/health").json()
    assert set(health["storage"]) == {"free_mib", "low"} and "/" not in str(health["storage"])


def test_health_shows_no_paths_and_the_real_weight_mode(tiny_checkpoint) -> None:
    engine = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=2)
    holder = EngineHolder.from_engine(engine, model=str(tiny_checkpoint))
    try:
        status = holder.status()
        assert status["model"] == tiny_checkpoint.name and "/" not in str(status["model"])
        assert status["dtype"] == "int8" and status["activation_dtype"] == "float32"
        assert status["worker"]["alive"] is True and status["worker"]["healthy"] is True
    finally:
        holder.stop()
    failed = EngineHolder("/srv/secret/models/missing-model")
    failed._error = "no config.json in /srv/secret/models/missing-model"
    assert "/srv" not in str(failed.status())


def test_a_dead_worker_makes_health_503_and_requests_503(engine, ref, tmp_path) -> None:
    srv = start_server(engine, tmp_path)
    try:
        with srv.client() as http:
            assert http.get("/health").status_code == 200
            srv.holder.batcher.dead = "broken for the test"
            health = http.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "unhealthy"
            assert "broken for the test" in health.json()["error"]
            assert_status(http.post("/clone", json=body(ref, max_new_tokens=3)), 503, "down")
    finally:
        srv.stop()
