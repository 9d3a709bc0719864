"""``WS /v1/realtime/speech``: text in pieces, audio out as it is made; the same speech as the
whole text, first audio before the text is complete, and every way a client can misbehave."""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.server_support import API_KEY, start_server
from utter.audio.crossfade import crossfade_join
from utter.server.textsplit import PartCutter, cost

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


# A reply long enough to be spoken in parts on a server that cuts at 60 (sentence ends after 40):
# sentences of at most 20 characters keep every part within 60, so the API speaks each part
# whole and the test can compare with it.
REPLY = (
    "It rained all day. The roads were wet. We stayed inside. Tea was hot. "
    "Then the sun came. Birds sang again. We went for a walk. The air was cool. All was well."
)


@pytest.fixture(scope="module")
def parted(engine, tmp_path_factory):
    srv = start_server(engine, tmp_path_factory.mktemp("realtime-parts"), split_chars=60, split_parallel=2)
    yield srv
    srv.stop()


def _reply_parts() -> list[str]:
    cutter, parts = PartCutter(60), [""]
    for text, ends in cutter.push(REPLY):
        parts[-1] += text
        if ends:
            parts.append("")
    return [p for p in parts if p.strip()]


def _session(server, voice: str, pieces: list[str], **start) -> tuple[bytes, list[dict]]:
    with _ws(server) as ws:
        ws.send(json.dumps({"type": "start", "voice": voice, **start}))
        ws.recv(30)
        for piece in pieces:
            ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "close"}))
        audio, events = _drain(ws)
        assert ws.close_code == 1000, events
    return audio, events


def test_a_long_reply_is_spoken_in_parts_joined_as_the_api_joins_them(parted, ref_wav) -> None:
    """Each part ends at a sentence end, is a request of its own (the same seed), and the audio
    is the parts spoken alone, crossfaded: what the API answers for the same parts."""
    parts = _reply_parts()
    assert len(parts) >= 3 and all(cost(p) <= 60 for p in parts)
    with parted.client() as http:
        files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
        data = {"name": "Parts", "x_vector_only": "true", "language": "English"}
        voice = http.post("/v1/voices", files=files, data=data).json()["id"]
        alone = []
        for part in parts:
            body = {"input": part, "voice": voice, "response_format": "pcm", "seed": 3}
            r = http.post("/v1/audio/speech", json=body)
            assert r.status_code == 200, r.text
            alone.append(np.frombuffer(r.content, np.int16).astype(np.float32) / 32767)
    want = crossfade_join(alone, 24000, 40.0)
    words = REPLY.split(" ")
    pieces = [(" " if i else "") + " ".join(words[i : i + 2]) for i in range(0, len(words), 2)]
    audio, events = _session(parted, voice, pieces, seed=3)
    got = np.frombuffer(audio, np.int16)
    assert len(got) == len(want)
    assert np.abs(got.astype(int) - np.round(want * 32767).astype(int)).max() <= 3
    done = events[-1]
    assert done["type"] == "done" and done["frames"] == sum(len(a) for a in alone) // 1920
    # The same text in one message, or a character at a time, is cut the same way.
    assert np.array_equal(np.frombuffer(_session(parted, voice, [REPLY], seed=3)[0], np.int16), got)
    assert np.array_equal(np.frombuffer(_session(parted, voice, list(REPLY), seed=3)[0], np.int16), got)


def test_a_frame_limit_holds_for_the_whole_reply(parted, voice_id_parted) -> None:
    audio, events = _session(parted, voice_id_parted, [REPLY], seed=3, max_frames=30)
    assert len(audio) == 30 * 1920 * 2
    assert events[-1]["reason"] == "max_frames" and events[-1]["frames"] == 30
    _idle(parted)


def test_a_client_that_leaves_a_long_reply_stops_every_part(parted, voice_id_parted) -> None:
    for listen in (0, 1, 3):
        with _ws(parted) as ws:
            ws.send(json.dumps({"type": "start", "voice": voice_id_parted}))
            ws.recv(30)
            ws.send(json.dumps({"type": "text", "text": REPLY}))  # several parts start, input open
            for _ in range(listen):
                ws.recv(60)
    _idle(parted)
    with parted.client() as http:
        assert http.get("/health").json()["status"] == "healthy"


@pytest.fixture(scope="module")
def voice_id_parted(parted, ref_wav) -> str:
    with parted.client() as http:
        files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
        r = http.post("/v1/voices", files=files, data={"name": "P", "x_vector_only": "true"})
        return r.json()["id"]


def _idle(server) -> None:
    """Wait until the server's engine has no rows, nothing parked and nothing queued."""
    runner = server.holder.batcher.engine.runner
    deadline = time.monotonic() + 30
    while runner.active or runner.parked or server.holder.batcher.queued:
        assert time.monotonic() < deadline, (runner.active, len(runner.parked))
        time.sleep(0.05)


def test_elevenlabs_stream_input_cuts_a_long_first_message_the_same(parted, voice_id_parted) -> None:
    """ElevenLabs' stream-input takes text in its first message, before the session runs: a long
    one is cut there, and the reply sounds as over our protocol."""
    ours, _ = _session(parted, voice_id_parted, [REPLY], seed=9)
    url = parted.url.replace("http", "ws") + f"/v1/text-to-speech/{voice_id_parted}/stream-input"
    with connect(f"{url}?output_format=pcm_24000&seed=9", open_timeout=30) as ws:
        ws.send(json.dumps({"text": REPLY, "xi_api_key": API_KEY}))
        ws.send(json.dumps({"text": ""}))
        audio = b"".join(base64.b64decode(m["audio"]) for m in map(json.loads, ws) if m.get("audio"))
        assert ws.close_code == 1000
    assert len(_reply_parts()) >= 3 and audio == ours
