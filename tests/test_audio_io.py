"""Tests for utter.audio.io: decoding, mixdown, resampling parity with librosa, errors, WAV writing."""

from __future__ import annotations

import io
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utter.audio import (
    SAMPLE_RATE,
    AudioError,
    duration_seconds,
    load_audio,
    resample,
    to_wav_bytes,
    write_wav,
)

TONE_HZ = 440.0


def _tone(sr: int, seconds: float = 1.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A 440 Hz tone plus a little noise, (samples,) or (samples, channels), float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    base = 0.5 * np.sin(2 * np.pi * TONE_HZ * t)
    if channels == 1:
        return (base + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
    # Different content per channel so a wrong mixdown (e.g. taking one channel) is visible.
    cols = [base * (0.9 - 0.3 * c) + 0.05 * rng.standard_normal(t.shape) for c in range(channels)]
    return np.stack(cols, axis=1).clip(-1, 1).astype(np.float32)


def _encode(audio: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _dominant_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1.0 / sr)[np.argmax(spectrum)])


def _m4a_bytes(audio: np.ndarray, sr: int) -> bytes:
    av = pytest.importorskip("av")
    try:
        av.codec.Codec("aac", "w")
    except Exception:  # noqa: BLE001 - no AAC encoder in this FFmpeg build
        pytest.skip("PyAV has no AAC encoder")
    out = io.BytesIO()
    with av.open(out, "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sr)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("fmt", "subtype", "ext", "lossless"),
    [
        ("WAV", "PCM_16", "wav", True),
        ("WAV", "FLOAT", "wav", True),
        ("FLAC", "PCM_24", "flac", True),
        ("OGG", "VORBIS", "ogg", False),
        ("MP3", "MPEG_LAYER_III", "mp3", False),
    ],
)
def test_decodes_common_formats_from_path_and_bytes(tmp_path, fmt, subtype, ext, lossless):
    sr = 22050
    tone = _tone(sr)
    data = _encode(tone, sr, fmt, subtype)
    path = tmp_path / f"ref.{ext}"
    path.write_bytes(data)

    audio, out_sr = load_audio(path, target_sr=None)
    assert out_sr == sr
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.flags.c_contiguous
    assert np.abs(audio).max() <= 1.0
    if lossless:
        tol = 1.0 / 2**15 if subtype == "PCM_16" else 1.0 / 2**23
        np.testing.assert_allclose(audio, tone, atol=tol)
    else:
        assert abs(len(audio) - len(tone)) < 0.05 * sr
        assert abs(_dominant_hz(audio, sr) - TONE_HZ) < 5

    # str path and in-memory bytes decode to exactly the same samples.
    np.testing.assert_array_equal(load_audio(str(path), None)[0], audio)
    np.testing.assert_array_equal(load_audio(data, None)[0], audio)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_matches_official_librosa_load_and_resample(tmp_path, ext):
    """The official wrapper does librosa.load(sr=None, mono=True) then librosa.resample to 24 kHz."""
    librosa = pytest.importorskip("librosa")
    sr = 44100
    path = tmp_path / f"stereo.{ext}"
    sf.write(path, _tone(sr, 0.7, channels=2), sr)

    ref, ref_sr = librosa.load(path, sr=None, mono=True)
    native, native_sr = load_audio(path, target_sr=None)
    assert native_sr == ref_sr
    np.testing.assert_array_equal(native, ref.astype(np.float32))

    ref24 = librosa.resample(ref.astype(np.float32), orig_sr=ref_sr, target_sr=SAMPLE_RATE)
    audio24, sr24 = load_audio(path)
    assert sr24 == SAMPLE_RATE
    np.testing.assert_array_equal(audio24, ref24)


def test_stereo_and_multichannel_mixdown_is_channel_mean():
    sr = 16000
    for channels in (2, 3):
        stereo = _tone(sr, 0.5, channels=channels, seed=channels)
        data = _encode(stereo, sr, "WAV", "FLOAT")
        audio, out_sr = load_audio(data, target_sr=None)
        assert out_sr == sr
        np.testing.assert_array_equal(audio, np.mean(stereo.T, axis=0).astype(np.float32))
        # ...and really a mix, not one of the channels.
        assert not np.allclose(audio, stereo[:, 0], atol=1e-3)


def test_m4a_decodes_through_pyav():
    sr = 24000
    tone = _tone(sr, 1.0)
    audio, out_sr = load_audio(_m4a_bytes(tone, sr), target_sr=None)
    assert out_sr == sr and audio.dtype == np.float32 and audio.ndim == 1
    # AAC adds encoder priming/padding (a few 1024-sample frames), so compare loosely.
    assert abs(len(audio) - len(tone)) <= 4096
    assert abs(_dominant_hz(audio, sr) - TONE_HZ) < 5
    assert 0.2 < np.abs(audio).max() <= 1.0


def test_m4a_resampled_to_target_rate(tmp_path):
    path = tmp_path / "ref.m4a"
    path.write_bytes(_m4a_bytes(_tone(16000, 1.0), 16000))
    audio, sr = load_audio(path)
    assert sr == SAMPLE_RATE
    assert abs(duration_seconds(audio, sr) - 1.0) < 0.2
    assert abs(_dominant_hz(audio, sr) - TONE_HZ) < 5


def test_decoding_never_creates_temp_files(monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("load_audio must decode from memory")

    for name in ("mkstemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, forbidden)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    load_audio(_encode(_tone(16000, 0.3), 16000, "OGG", "VORBIS"))
    load_audio(_m4a_bytes(_tone(16000, 0.3), 16000))
    assert list(tmp_path.iterdir()) == []


def test_target_rate_resamples_and_keeps_length_rule():
    sr = 16000
    tone = _tone(sr, 0.5)
    audio, out_sr = load_audio(_encode(tone, sr, "WAV", "FLOAT"), target_sr=SAMPLE_RATE)
    assert out_sr == SAMPLE_RATE
    assert len(audio) == int(np.ceil(len(tone) * SAMPLE_RATE / sr))
    same, same_sr = load_audio(_encode(tone, sr, "WAV", "FLOAT"), target_sr=sr)
    assert same_sr == sr
    np.testing.assert_array_equal(same, tone)


# -------------------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(("orig_sr", "n"), [(44100, 44100), (16000, 12345), (22050, 999), (48000, 48001)])
def test_resample_matches_librosa_default(orig_sr, n):
    librosa = pytest.importorskip("librosa")
    audio = (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    expected = librosa.resample(audio, orig_sr=orig_sr, target_sr=SAMPLE_RATE)
    got = resample(audio, orig_sr, SAMPLE_RATE)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_resample_keeps_float64_and_identity():
    librosa = pytest.importorskip("librosa")
    audio = np.random.default_rng(1).standard_normal(3000) * 0.1
    np.testing.assert_array_equal(
        resample(audio, 8000, 24000), librosa.resample(audio, orig_sr=8000, target_sr=24000)
    )
    assert resample(audio, 8000, 24000).dtype == np.float64
    assert resample(audio, 24000, 24000) is audio


def test_resample_rejects_bad_arguments():
    with pytest.raises(ValueError):
        resample(np.zeros(10, np.float32), 0, 24000)
    with pytest.raises(ValueError):
        resample(np.zeros((10, 2), np.float32), 16000, 24000)
    with pytest.raises(ValueError):
        resample(np.zeros(10, np.int16), 16000, 24000)


# ---------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_folder_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is definitely not audio " * 40,
        bytes(np.random.default_rng(3).integers(0, 256, 4096, np.uint8)),
    ],
    ids=["empty-bytes", "text", "random-bytes"],
)
def test_bytes_that_are_not_audio(data):
    with pytest.raises(AudioError):
        load_audio(data)


def test_not_audio_file_on_disk(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("hello, I am a text file with a .wav name\n" * 20)
    with pytest.raises(AudioError, match="not a supported audio format"):
        load_audio(path)


def test_zero_sample_audio():
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(_encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"))


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")],
)
def test_truncated_audio(fmt, subtype):
    data = _encode(_tone(16000, 2.0), 16000, fmt, subtype)
    with pytest.raises(AudioError, match="truncated") as caught:
        load_audio(data[: len(data) // 2])
    # libsndfile knows these formats: the error must say "broken", not "unknown format" (FFmpeg fallback).
    assert "not a supported" not in str(caught.value)


def test_mp3_without_length_header_is_not_called_truncated():
    """Without a Xing/Info header libsndfile only estimates an MP3 length: no proof of truncation."""
    av = pytest.importorskip("av")
    try:
        av.codec.Codec("libmp3lame", "w")
    except Exception:  # noqa: BLE001
        pytest.skip("PyAV has no MP3 encoder")
    sr = 16000
    tone = _tone(sr, 2.0)
    out = io.BytesIO()
    with av.open(out, "w", format="mp3", options={"write_xing": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=sr)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = out.getvalue()
    assert b"Xing" not in data[:200] and b"Info" not in data[:200]
    audio, out_sr = load_audio(data, target_sr=None)
    assert out_sr == sr and abs(len(audio) - len(tone)) < 0.1 * sr  # no gapless info: delay + padding
    assert abs(_dominant_hz(audio, sr) - TONE_HZ) < 5


def test_truncated_header():
    data = _encode(_tone(16000, 0.5), 16000, "WAV", "PCM_16")
    with pytest.raises(AudioError):
        load_audio(data[:30])


def test_corrupt_payload():
    data = bytearray(_encode(_tone(16000, 1.0), 16000, "FLAC", "PCM_16"))
    mid = len(data) // 2
    data[mid : mid + 512] = bytes(np.random.default_rng(4).integers(0, 256, 512, np.uint8))
    with pytest.raises(AudioError):
        load_audio(bytes(data))


def test_streamed_wav_with_unknown_length_is_accepted():
    """Writers piping WAV set the data size to 0xFFFFFFFF; that is not truncation."""
    tone = _tone(16000, 0.25)
    data = bytearray(_encode(tone, 16000, "WAV", "PCM_16"))
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    audio, _ = load_audio(bytes(data), target_sr=None)
    np.testing.assert_allclose(audio, tone, atol=1.0 / 2**15)


def test_non_finite_samples():
    bad = _tone(16000, 0.2)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        load_audio(_encode(bad, 16000, "WAV", "FLOAT"))


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


# ----------------------------------------------------------------------------------------------- writing


def test_to_wav_bytes_round_trip():
    tone = _tone(SAMPLE_RATE, 0.5)
    data = to_wav_bytes(tone)
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, SAMPLE_RATE)
    assert info.frames == len(tone)
    back, sr = load_audio(data, target_sr=None)
    assert sr == SAMPLE_RATE
    np.testing.assert_allclose(back, tone, atol=2.0 / 2**15)
    pcm, _ = sf.read(io.BytesIO(data), dtype="int16")
    np.testing.assert_array_equal(pcm, np.rint(tone * 32767).astype(np.int16))


def test_to_wav_bytes_clips_instead_of_wrapping():
    pcm, _ = sf.read(io.BytesIO(to_wav_bytes(np.array([1.5, -1.5, 0.0], np.float32), 8000)), dtype="int16")
    assert pcm.tolist() == [32767, -32767, 0]


def test_to_wav_bytes_rejects_bad_input():
    with pytest.raises(ValueError):
        to_wav_bytes(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError):
        to_wav_bytes(np.array([np.nan], np.float32))


def test_write_wav_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.wav"
    tone = _tone(SAMPLE_RATE, 0.2)
    assert write_wav(target, tone) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
    assert target.read_bytes() == to_wav_bytes(tone)
    assert (target.stat().st_mode & 0o777) == 0o644

    # Overwrite in place.
    write_wav(str(target), tone * 0.5, 16000)
    assert sf.info(target).samplerate == 16000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_write_wav_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    write_wav(target, _tone(SAMPLE_RATE, 0.1))
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_wav(target, _tone(SAMPLE_RATE, 0.3, seed=9))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_duration_seconds():
    assert duration_seconds(np.zeros(48000, np.float32), 24000) == pytest.approx(2.0)
    assert duration_seconds(np.zeros(0, np.float32), 16000) == 0.0
    with pytest.raises(ValueError):
        duration_seconds(np.zeros(10), 0)


def test_path_like_string_and_path_agree(tmp_path):
    path = Path(tmp_path) / "a.flac"
    sf.write(path, _tone(24000, 0.2), 24000)
    a, _ = load_audio(path)
    b, _ = load_audio(str(path))
    np.testing.assert_array_equal(a, b)
