"""Output encoders: whole files and streams in every format decode back to the same length."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from tests.conftest import speechlike
from utter.audio import load_audio, to_wav_bytes
from utter.audio.encode import FORMATS, Tempo, encode_audio, make_encoder, wav_header

SR = 24000
AUDIO = speechlike(1.0, SR)


def stream(fmt: str, audio: np.ndarray = AUDIO, piece: int = 1920 * 3) -> list[bytes]:
    enc = make_encoder(fmt)
    return [enc.write(audio[i : i + piece]) for i in range(0, len(audio), piece)] + [enc.close()]


def test_whole_wav_matches_the_wav_writer() -> None:
    assert encode_audio(AUDIO, "wav") == to_wav_bytes(AUDIO)
    assert wav_header(SR, 10)[4:8] == (46).to_bytes(4, "little")


def test_streamed_wav_declares_unknown_length_and_reads_back() -> None:
    parts = stream("wav")
    data = b"".join(parts)
    assert data[4:8] == data[40:44] == b"\xff\xff\xff\xff"
    assert parts[0][:4] == b"RIFF" and len(parts[1]) == 1920 * 3 * 2
    with wave.open(io.BytesIO(data)) as w:  # Python's reader takes the samples that are there
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
        assert len(w.readframes(10**9)) == len(AUDIO) * 2
    decoded, _ = load_audio(data, target_sr=None)
    assert np.abs(decoded - AUDIO).max() < 1e-4
    assert make_encoder("wav").close()[:4] == b"RIFF"  # no audio: still a valid header


def test_pcm_is_raw_s16le() -> None:
    data = b"".join(stream("pcm"))
    samples = np.frombuffer(data, dtype="<i2")
    assert np.array_equal(samples, np.rint(np.clip(AUDIO, -1, 1) * 32767).astype(np.int16))


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus", "aac"])
def test_compressed_formats(fmt: str) -> None:
    whole = encode_audio(AUDIO, fmt)
    decoded, sr = load_audio(whole, target_sr=None)
    assert sr == SR and abs(len(decoded) - len(AUDIO)) <= 2048  # encoder delay/padding
    parts = stream(fmt)
    assert sum(1 for p in parts if p) > 2  # bytes come out while audio goes in
    if fmt == "flac":  # a streamed FLAC has no total length; libsndfile refuses it, FFmpeg reads it
        assert whole[:4] == b"fLaC" and b"".join(parts)[:4] == b"fLaC"
    else:
        streamed, _ = load_audio(b"".join(parts), target_sr=None)
        assert abs(len(streamed) - len(AUDIO)) <= 2048


def test_speed() -> None:
    for speed in (0.25, 0.5, 2.0, 4.0):
        out = encode_audio(AUDIO, "pcm", speed=speed)
        assert abs(len(out) / 2 * speed - len(AUDIO)) < 0.05 * SR  # atempo's window loses a few ms
    with pytest.raises(ValueError, match="speed"):
        Tempo(5.0)
    with pytest.raises(ValueError, match="unknown audio format"):
        make_encoder("ogg")
    assert set(FORMATS) == {"wav", "pcm", "flac", "mp3", "opus", "aac"}
