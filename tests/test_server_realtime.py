"""``WS /v1/realtime/speech``: text in pieces, audio out as it is made; the same speech as the
whole text, first audio before the text is complete, and every way a client can misbehave."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.server_support import API_KEY, start_server

TEXT = "Realtime speech arrives in pieces, word by word, as a language model writes its reply."


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    srv = start_server(engine, tmp_path_factory.mktemp("realtime"), realtime_idle_timeout_s=2.0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def voice_id(server, ref_wav) -> str:
    with server.client() as http:
        files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
        r = http.post(
            "/v1/voices", files=files, data={"name": "Agent", "x_vector_only": "true", "language": "English"}
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]


def _ws(server, key: str | None = API_KEY, path: str = "/v1/realtime/speech"):
    url = server.url.replace("http", "ws") + path + (f"?api_key={key}" if key else "")
    return connect(url, open_timeout=30, close_timeout=30)


def _drain(ws) -> tuple[bytes, list[dict]]:
    audio, events = b"", []
    for message in ws:
        if isinstance(message, bytes):
            audio += message
        else:
            events.append(json.loads(message))
    return audio, events


def test_text_in_pieces_speaks_like_the_whole_text(server, voice_id) -> None:
    start = {"type": "start", "voice": voice_id, "seed": 5, "max_frames": 40}
    with _ws(server) as ws:
        ws.send(json.dumps(start))
        assert json.loads(ws.recv(30)) == {"type": "started", "format": "pcm", "sample_rate": 24000}
        words = TEXT.split(" ")
        for i in range(0, len(words), 3):
            ws.send(json.dumps({"type": "text", "text": (" " if i else "") + " ".join(words[i : i + 3])}))
            time.sleep(0.05)
        ws.send(json.dumps({"type": "close"}))
        audio, events = _drain(ws)
        assert ws.close_code == 1000
    assert events == [
        {"type": "done", "reason": "max_frames", "frames": 40, "audio_seconds": pytest.approx(3.2)}
    ]
    with server.client() as http:
        body = {
            "input": TEXT,
            "voice": voice_id,
            "response_format": "pcm",
            "seed": 5,
            "max_frames": 40,
        }
        whole = http.post("/v1/audio/speech", json=body).content
    got, want = np.frombuffer(audio, np.int16), np.frombuffer(whole, np.int16)
    assert len(got) == len(want) == 40 * 1920
    assert np.abs(got.astype(int) - want).max() <= 2


def test_a_reply_that_fits_one_part_reads_as_the_api_reads_it(server, voice_id) -> None:
    """Leading whitespace included: the realtime cutter strips only the parts after a cut."""
    text = "  " + TEXT
    with _ws(server) as ws:
        ws.send(json.dumps({"type": "start", "voice": voice_id, "seed": 6, "max_frames": 30}))
        ws.recv(30)
        for i in range(0, len(text), 7):
            ws.send(json.dumps({"type": "text", "text": text[i : i + 7]}))
        ws.send(json.dumps({"type": "close"}))
        audio, _ = _drain(ws)
    with server.client() as http:
        body = {"input": text, "voice": voice_id, "response_format": "pcm", "seed": 6, "max_frames": 30}
        whole = np.frombuffer(http.post("/v1/audio/speech", json=body).content, np.int16)
    got = np.frombuffer(audio, np.int16)
    assert len(got) == len(whole) > 0 and np.abs(got.astype(int) - whole).max() <= 2


def test_first_audio_comes_before_the_text_is_complete(server, voice_id) -> None:
    with _ws(server) as ws:
        ws.send(json.dumps({"type": "start", "voice": voice_id, "seed": 1, "max_frames": 200}))
        ws.recv(30)
        ws.send(json.dumps({"type": "text", "text": "Hello there and"}))
        first = ws.recv(60)  # audio for "Hello there", while the input is still open
        assert isinstance(first, bytes) and len(first) > 0
        ws.send(json.dumps({"type": "flush"}))  # "and" is final too
        ws.send(json.dumps({"type": "text", "text": " goodbye."}))
        ws.send(json.dumps({"type": "close"}))
        audio, events = _drain(ws)
    assert events[-1]["type"] == "done" and events[-1]["reason"] in ("eos", "max_frames")


def _error(ws) -> dict:
    while True:
        message = ws.recv(30)
        if isinstance(message, str) and json.loads(message)["type"] == "error":
            return json.loads(message)


@pytest.mark.parametrize(
    ("first", "code", "words"),
    [
        ("not json", 400, "first message"),
        (json.dumps({"type": "start"}), 400, "voice"),
        (json.dumps({"type": "start", "voice": "voice_0000000000000000"}), 404, "Unknown voice"),
        (json.dumps({"type": "start", "voice": "{voice}", "temperature": -1}), 400, "temperature"),
        (
            json.dumps({"type": "start", "voice": "{voice}", "response_format": "midi"}),
            400,
            "response_format",
        ),
    ],
)
def test_bad_starts_get_an_error_message(server, voice_id, first: str, code: int, words: str) -> None:
    with _ws(server) as ws:
        ws.send(first.replace("{voice}", voice_id))
        error = _error(ws)
        assert error["code"] == code and words in error["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(10)
        assert ws.close_code == 1008


def test_binary_frames_get_an_error_message(server, voice_id) -> None:
    """A binary frame where a JSON text frame belongs (first or later) is a 400 with a message,
    not Starlette's KeyError and an abnormal close."""
    start = json.dumps({"type": "start", "voice": voice_id, "max_frames": 30})
    for messages in ([b"\x00\x01"], [start, b'{"type": "close"}']):
        with _ws(server) as ws:
            for message in messages:
                ws.send(message)
            events = [json.loads(text) for text in _texts(ws)]  # until the server closes
            error = next(e for e in events if e["type"] == "error")
            assert error["code"] == 400 and "binary" in error["message"]
            assert ws.close_code == 1008


def _texts(ws):
    """The text frames a session sends until it closes."""
    try:
        while True:
            message = ws.recv(30)
            if isinstance(message, str):
                yield message
    except ConnectionClosed:
        return


def test_misbehaving_clients(server, voice_id) -> None:
    start = json.dumps({"type": "start", "voice": voice_id, "max_frames": 30})
    with pytest.raises(InvalidStatus):  # no key: the handshake is refused
        _ws(server, key=None).close()
    with pytest.raises(InvalidStatus):
        _ws(server, key="wrong").close()
    with _ws(server) as ws:  # a silent client is closed after the idle timeout (2 s here)
        ws.send(start)
        ws.recv(30)
        ws.send(json.dumps({"type": "text", "text": "Then nothing more"}))
        error = _error(ws)
        assert error["code"] == 408 and "No text" in error["message"]
    with _ws(server) as ws:
        ws.send(start)
        ws.recv(30)
        ws.send(json.dumps({"type": "dance"}))
        assert "Unknown message type" in _error(ws)["message"]
    with _ws(server) as ws:
        ws.send(start)
        ws.recv(30)
        ws.send(json.dumps({"type": "text", "text": "x" * 301}))  # the test server allows 300
        assert "over 300 characters" in _error(ws)["message"]
    with _ws(server) as ws:  # text after close
        ws.send(start)
        ws.recv(30)
        ws.send(json.dumps({"type": "close"}))
        error = _error(ws)
        assert "empty" in error["message"]


def test_clients_that_leave_cost_nothing(server, voice_id) -> None:
    """Clients hang up at every point (before starting, while parked, mid-audio); the batcher
    ends with no rows and nothing parked, and the server stays healthy."""
    start = json.dumps({"type": "start", "voice": voice_id, "max_frames": 400})

    def leave(when: int) -> None:
        with _ws(server) as ws:
            if when == 0:
                return
            ws.send(start)
            ws.recv(30)
            ws.send(json.dumps({"type": "text", "text": "A reply that never ends, because"}))
            if when == 2:
                ws.recv(60)

    threads = [threading.Thread(target=leave, args=(i % 3,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    runner = server.holder.batcher.engine.runner
    deadline = time.monotonic() + 30
    while runner.active or runner.parked or server.holder.batcher.queued:
        assert time.monotonic() < deadline, (runner.active, len(runner.parked))
        time.sleep(0.05)
    with server.client() as http:
        assert http.get("/health").json()["status"] == "healthy"


def test_client_realtime_pipes_stdin(server, voice_id, tmp_path, monkeypatch, capsys) -> None:
    """`utter client realtime` sends stdin as it comes and writes a WAV whose audio is the
    session's (the same seed over the API gives the same samples)."""
    import io
    import os

    import soundfile as sf

    from utter.cli import main

    read, write = os.pipe()
    os.write(write, TEXT.encode())
    os.close(write)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(os.fdopen(read, "rb")))
    out = tmp_path / "reply.wav"
    args = ["client", "--endpoint", server.url, "--api-key", API_KEY, "realtime", "--voice", voice_id]
    assert main([*args, "--seed", "5", "--max-frames", "40", "-o", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["done"]["frames"] == 40 and result["size_bytes"] == 40 * 1920 * 2
    audio, sr = sf.read(out, dtype="int16")
    assert sr == 24000 and len(audio) == 40 * 1920
    with server.client() as http:
        body = {"input": TEXT, "voice": voice_id, "response_format": "pcm", "seed": 5, "max_frames": 40}
        whole = np.frombuffer(http.post("/v1/audio/speech", json=body).content, np.int16)
    assert np.abs(audio.astype(int) - whole).max() <= 2
    assert main([*args[:4], "wrong", *args[5:], "-o", str(tmp_path / "x.wav")]) == 2
    assert "refused" in capsys.readouterr().err
