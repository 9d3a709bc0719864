"""Long realtime replies in parts (``server/realtime.py`` with ``textsplit.PartCutter``): cut
as the text arrives, each part spoken beside the one before and crossfaded; the same audio as
the parts spoken alone over the API, however the text is split into messages.

A module of its own: its server (cutting at 60 characters) and the realtime tests' server
share the session's engine, so they must not run at the same time."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
from websockets.sync.client import connect

from tests.server_support import API_KEY, start_server
from tests.test_server_realtime import _drain, _ws
from utter.audio.crossfade import crossfade_join
from utter.server.speech.textsplit import PartCutter, cost

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


def test_a_flush_at_a_long_enough_sentence_end_ends_the_part_at_once(parted, voice_id_parted) -> None:
    """An agent that flushes its sentence gets that part finished while it thinks: the part ends
    at the flush (nothing left waiting for text on the server), and the reply sounds the same
    as sent whole."""
    whole, _ = _session(parted, voice_id_parted, [REPLY], seed=4)
    first = _reply_parts()[0]
    assert REPLY.startswith(first) and REPLY[len(first)] == " "
    with _ws(parted) as ws:
        ws.send(json.dumps({"type": "start", "voice": voice_id_parted, "seed": 4}))
        ws.recv(30)
        ws.send(json.dumps({"type": "text", "text": first}))
        ws.send(json.dumps({"type": "flush"}))
        audio = b""
        while not audio:
            message = ws.recv(60)
            audio += message if isinstance(message, bytes) else b""
        _idle(parted)  # the first part ended: not parked waiting for the next message
        ws.send(json.dumps({"type": "text", "text": REPLY[len(first) :]}))
        ws.send(json.dumps({"type": "close"}))
        rest, events = _drain(ws)
        assert ws.close_code == 1000, events
    assert audio + rest == whole
