"""The ElevenLabs-compatible API driven by the official ElevenLabs Python SDK over loopback
(REST over HTTP; the realtime client only speaks wss://, so that server has a self-signed
certificate the test trusts through SSL_CERT_FILE)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server_support import API_KEY, self_signed, start_server

elevenlabs = pytest.importorskip("elevenlabs")
from elevenlabs.client import ElevenLabs  # noqa: E402
from elevenlabs.core.api_error import ApiError  # noqa: E402

TEXT = "Agents speak through ElevenLabs clients; this server answers them."


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("elevenlabs")
    srv = start_server(engine, tmp / "data", tls=self_signed(tmp), max_frames=60)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def trust(server, monkeypatch_module):
    """Make Python's default TLS context (the SDK's websockets client) trust the test certificate."""
    cert = server.app.state.service.settings.data_dir.parent / "cert.pem"
    monkeypatch_module.setenv("SSL_CERT_FILE", str(cert))
    return cert


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def client(server, trust) -> ElevenLabs:
    import httpx

    return ElevenLabs(
        base_url=server.url, api_key=API_KEY, httpx_client=httpx.Client(verify=_tls(trust), timeout=120)
    )


@pytest.fixture(scope="module")
def voice_id(server, trust, ref_wav) -> str:
    import httpx

    with httpx.Client(
        base_url=server.url, verify=_tls(trust), timeout=120, headers={"xi-api-key": API_KEY}
    ) as http:
        files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
        r = http.post(
            "/v1/voices", files=files, data={"name": "Eleven", "x_vector_only": "true", "language": "English"}
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]


def _tls(cert):
    import ssl

    return ssl.create_default_context(cafile=str(cert))


def _openai_pcm(server, trust, voice_id: str, seed: int, text: str = TEXT) -> np.ndarray:
    import httpx

    with httpx.Client(
        base_url=server.url, verify=_tls(trust), timeout=120, headers={"xi-api-key": API_KEY}
    ) as http:
        body = {"input": text, "voice": voice_id, "response_format": "pcm", "seed": seed}  # 60 frames at most
        return np.frombuffer(http.post("/v1/audio/speech", json=body).content, np.int16)


def test_sdk_lists_and_gets_voices(client, voice_id) -> None:
    voices = client.voices.get_all().voices
    assert voice_id in [v.voice_id for v in voices]
    voice = client.voices.get(voice_id)
    assert voice.voice_id == voice_id and voice.name == "Eleven" and voice.category == "cloned"


def test_sdk_convert_and_stream(client, server, trust, voice_id) -> None:
    """pcm_24000 is our own audio: equal to the OpenAI endpoint's with the same seed (``seed`` is
    honoured); other rates are resampled; mp3 decodes."""
    pcm = b"".join(
        client.text_to_speech.convert(
            voice_id, text=TEXT, model_id="eleven_flash_v2_5", output_format="pcm_24000", seed=11,
            voice_settings=elevenlabs.VoiceSettings(stability=0.5, similarity_boost=0.7),
        )
    )  # fmt: skip
    ours = _openai_pcm(server, trust, voice_id, 11)
    assert np.array_equal(np.frombuffer(pcm, np.int16), ours[: len(pcm) // 2]) and len(pcm) // 2 == len(ours)
    low = b"".join(client.text_to_speech.stream(voice_id, text=TEXT, output_format="pcm_16000", seed=11))
    assert abs(len(low) // 2 - len(ours) * 2 // 3) <= 16
    mp3 = b"".join(client.text_to_speech.convert(voice_id, text=TEXT, output_format="mp3_44100_128", seed=11))
    import av

    with av.open(io.BytesIO(mp3)) as container:
        sr = container.streams.audio[0].sample_rate
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert sr == 44100 and abs(decoded / sr - len(ours) / 24000) < 0.1
    ulaw = b"".join(client.text_to_speech.convert(voice_id, text=TEXT, output_format="ulaw_8000", seed=11))
    assert abs(len(ulaw) - len(ours) // 3) <= 16


def test_sdk_errors(server, trust, client, voice_id) -> None:
    import httpx

    with pytest.raises(ApiError) as err:
        b"".join(client.text_to_speech.convert("voice_0000000000000000", text=TEXT))
    assert err.value.status_code == 404
    with pytest.raises(ApiError) as err:
        b"".join(client.text_to_speech.convert(voice_id, text=TEXT, output_format="wma_44100"))
    assert err.value.status_code == 400
    with pytest.raises(ApiError) as err:
        b"".join(client.text_to_speech.convert(voice_id, text=TEXT, language_code="tlh"))
    assert err.value.status_code == 400
    wrong = ElevenLabs(base_url=server.url, api_key="wrong", httpx_client=httpx.Client(verify=_tls(trust)))
    with pytest.raises(ApiError) as err:
        wrong.voices.get_all()
    assert err.value.status_code == 401


def test_sdk_realtime_stream_input(client, voice_id) -> None:
    """The SDK's input-streaming client (``convert_realtime``) over wss://: text in pieces,
    audio back, a clean end."""

    def reply():
        yield from ["Hello ", "there, ", "this reply ", "is streamed ", "word by word."]

    audio = b"".join(
        client.text_to_speech.convert_realtime(voice_id, text=reply(), output_format="pcm_24000")
    )
    samples = np.frombuffer(audio, np.int16)
    assert 0 < len(samples) <= 60 * 1920 and len(samples) % 1920 == 0


def test_stream_input_equals_convert_with_a_seed(server, trust, voice_id) -> None:
    """ElevenLabs' stream-input protocol by hand (key in the first message, seed in the query):
    the same audio as the REST call with the same text and seed."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(trust))
    url = (
        server.url.replace("https", "wss")
        + f"/v1/text-to-speech/{voice_id}/stream-input?output_format=pcm_24000&seed=4"
    )
    with connect(url, ssl=ctx, open_timeout=30) as ws:
        assert ws.socket.version() == "TLSv1.2"  # see server_support._calm_tls
        ws.send(json.dumps({"text": " ", "xi_api_key": API_KEY, "voice_settings": {"stability": 0.3}}))
        for word in TEXT.split(" "):
            ws.send(json.dumps({"text": word + " ", "try_trigger_generation": True}))
        ws.send(json.dumps({"text": ""}))
        audio, final = b"", None
        for message in ws:
            data = json.loads(message)
            if data.get("audio"):
                audio += base64.b64decode(data["audio"])
            if data.get("isFinal"):
                final = data
        assert final == {"isFinal": True} and ws.close_code == 1000
    ours = _openai_pcm(server, trust, voice_id, 4, TEXT + " ")
    assert np.array_equal(np.frombuffer(audio, np.int16), ours)
    with connect(url.replace("seed=4", "seed=x"), ssl=ctx, open_timeout=30) as ws:  # a wrong key
        ws.send(json.dumps({"text": " ", "xi_api_key": "wrong"}))
        error = json.loads(ws.recv(30))
        assert error["code"] == 401 and "key" in error["message"]


@pytest.mark.parametrize(
    ("first", "query", "code", "words"),
    [
        ({"text": " ", "xi_api_key": 5}, "", 401, "key"),  # was an AttributeError: an abnormal close
        ({"text": " ", "xi_api_key": ["k"]}, "", 401, "key"),
        ({"text": " ", "authorization": 5}, "", 401, "key"),  # was a TypeError
        ({"text": " ", "xi_api_key": API_KEY}, "seed=%C2%B2", 400, "seed"),  # "²" passes isdigit()
        ({"text": " ", "xi_api_key": API_KEY}, "seed=" + "9" * 5000, 400, "seed"),
        ({"text": " ", "xi_api_key": API_KEY}, "seed=9223372036854775808", 400, "seed"),
        (b"\x00binary", "", 400, "binary"),  # was Starlette's KeyError: an abnormal close
    ],
)
def test_stream_input_refuses_odd_first_messages_with_a_message(
    server, trust, voice_id, first, query, code, words
):
    import ssl

    ctx = ssl.create_default_context(cafile=str(trust))
    url = server.url.replace("https", "wss") + f"/v1/text-to-speech/{voice_id}/stream-input?{query}"
    with connect(url, ssl=ctx, open_timeout=30) as ws:
        ws.send(first if isinstance(first, bytes) else json.dumps(first))
        error = json.loads(ws.recv(30))
        assert error["code"] == code and words in error["message"], error
        with pytest.raises(ConnectionClosed):
            ws.recv(30)
        assert ws.close_code == 1008
