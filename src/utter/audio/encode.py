"""Output encoders: float32 mono PCM in, the bytes of a wav/pcm/flac/mp3/opus/aac file out.

Every encoder works piece by piece (``write`` each chunk of audio as it is generated, then
``close``), so a server can send audio while it is still being made; a whole file is the same
thing with one ``write``. Compressed formats go through PyAV (FFmpeg) into an in-memory sink
that is drained after every write: no temporary files.

Streaming and headers: WAV and FLAC normally put the total length in their header, which is
not known while streaming. A streamed WAV therefore uses the usual convention for an unknown
length, RIFF and ``data`` sizes of 0xFFFFFFFF ("read to the end"), which FFmpeg, libsndfile,
browsers and Python's ``wave`` (for the samples) accept; a streamed FLAC leaves the total
sample count 0 (allowed by the FLAC spec, though libsndfile refuses such files). Whole files
get exact headers. mp3, opus (in Ogg) and aac (ADTS) stream naturally; pcm is raw s16le.
"""

from __future__ import annotations

import io
import struct

import av
import numpy as np
from av.filter import Graph

from .io import SAMPLE_RATE

# Same scaling as the WAV writer in io.py (libsndfile's float -> int16 convention).
_PCM16_SCALE = 32767.0
_UNKNOWN_SIZE = 0xFFFFFFFF

# format -> (MIME type, file extension)
FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("audio/wav", "wav"),
    "pcm": ("audio/pcm", "pcm"),
    "flac": ("audio/flac", "flac"),
    "mp3": ("audio/mpeg", "mp3"),
    "opus": ("audio/ogg", "opus"),
    "aac": ("audio/aac", "aac"),
}

# Formats whose header holds the total length: sent whole unless streaming is asked for.
LENGTH_IN_HEADER = frozenset({"wav", "flac"})

# format -> (FFmpeg muxer, encoder, sample format it takes, bit rate, muxer options)
_AV_FORMATS: dict[str, tuple[str, str, str, int | None, dict[str, str]]] = {
    "flac": ("flac", "flac", "s16", None, {}),
    "mp3": ("mp3", "libmp3lame", "fltp", 64_000, {}),
    # Ogg holds pages back for up to a second by default; 20 ms pages let audio flow as made.
    "opus": ("ogg", "libopus", "flt", 32_000, {"page_duration": "20000"}),
    "aac": ("adts", "aac", "fltp", 64_000, {}),
    # G.711 telephone audio (8 kHz), raw: what ElevenLabs' ulaw_8000 / alaw_8000 carry.
    "ulaw": ("mulaw", "pcm_mulaw", "s16", None, {}),
    "alaw": ("alaw", "pcm_alaw", "s16", None, {}),
}

SPEED_RANGE = (0.25, 4.0)


def pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> int16, clipped first so an overshoot cannot wrap around."""
    return np.rint(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * _PCM16_SCALE).astype(np.int16)


def wav_header(sr: int = SAMPLE_RATE, data_bytes: int | None = None) -> bytes:
    """A 44-byte 16-bit mono PCM WAV header; ``data_bytes=None`` means unknown (streaming)."""
    data = _UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff = _UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    fmt_chunk = (b"fmt ", 16, 1, 1, sr, sr * 2, 2, 16)  # PCM, mono, rate, bytes/s, block align, bits
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", *fmt_chunk, b"data", data)


class AudioEncoder:
    """Turns successive chunks of float32 mono audio into successive pieces of one file."""

    content_type = "application/octet-stream"

    def write(self, pcm: np.ndarray) -> bytes:
        raise NotImplementedError

    def close(self) -> bytes:
        """Flush what the codec holds back; the returned bytes end the file."""
        return b""


class PcmEncoder(AudioEncoder):
    """Raw signed 16-bit little-endian samples, no header."""

    content_type = FORMATS["pcm"][0]

    def write(self, pcm: np.ndarray) -> bytes:
        return pcm16(pcm).astype("<i2").tobytes()


class WavStreamEncoder(PcmEncoder):
    """PCM behind a WAV header that declares an unknown length (see the module docstring)."""

    content_type = FORMATS["wav"][0]

    def __init__(self, sr: int = SAMPLE_RATE) -> None:
        self.sr, self._started = sr, False

    def _header(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return wav_header(self.sr)

    def write(self, pcm: np.ndarray) -> bytes:
        return self._header() + super().write(pcm)

    def close(self) -> bytes:
        return self._header()  # an empty stream is still a valid (empty) WAV file


class _Sink:
    """A write-only, non-seekable file for PyAV: collects what the muxer writes until drained."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def seekable(self) -> bool:
        return False

    def drain(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class AvEncoder(AudioEncoder):
    """flac/mp3/opus/aac through PyAV. ``seekable=True`` (whole files) lets FLAC finish its header."""

    def __init__(
        self, fmt: str, sr: int = SAMPLE_RATE, seekable: bool = False, bit_rate: int | None = None
    ) -> None:
        muxer, codec, self._sample_fmt, default_rate, options = _AV_FORMATS[fmt]
        bit_rate = bit_rate or default_rate
        self.content_type = FORMATS[fmt][0] if fmt in FORMATS else f"audio/{fmt}"
        self._file: io.BytesIO | _Sink = io.BytesIO() if seekable else _Sink()
        self._container = av.open(self._file, mode="w", format=muxer, options=options)
        self._stream = self._container.add_stream(codec, rate=sr, layout="mono")
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._sr, self._pts, self._closed = sr, 0, False

    def _drain(self) -> bytes:
        if isinstance(self._file, _Sink):
            return self._file.drain()
        return b""  # a seekable file is read whole at close

    def write(self, pcm: np.ndarray) -> bytes:
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.size == 0:
            return b""
        data = pcm16(pcm)[None] if self._sample_fmt == "s16" else np.clip(pcm, -1.0, 1.0)[None]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=self._sample_fmt, layout="mono")
        frame.sample_rate, frame.pts = self._sr, self._pts
        self._pts += pcm.shape[0]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._drain()

    def close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        if isinstance(self._file, io.BytesIO):
            return self._file.getvalue()
        return self._drain()


def float_frame(pcm: np.ndarray, sr: int, pts: int) -> av.AudioFrame:
    """Mono float32 samples as an FFmpeg frame at ``pts`` (in samples): what filters take."""
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm, dtype=np.float32)[None], format="flt", layout="mono"
    )
    frame.sample_rate, frame.pts = sr, pts
    return frame


class Tempo:
    """Changes speed without changing pitch (FFmpeg ``atempo``), chunk by chunk.

    One atempo stage covers 0.5x to 2x well, so slower or faster speeds chain two.
    """

    def __init__(self, speed: float, sr: int = SAMPLE_RATE) -> None:
        lo, hi = SPEED_RANGE
        if not lo <= speed <= hi:
            raise ValueError(f"speed must be between {lo} and {hi}, got {speed}")
        stages = [speed] if 0.5 <= speed <= 2.0 else [speed**0.5, speed**0.5]
        self._graph = Graph()
        node = self._graph.add_abuffer(format="flt", sample_rate=sr, layout="mono", time_base=f"1/{sr}")
        for factor in stages:
            stage = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(stage)
            node = stage
        node.link_to(self._graph.add("abuffersink"))
        self._graph.configure()
        self._sr, self._pts = sr, 0

    def _pull(self) -> np.ndarray:
        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        if pcm.size == 0:
            return pcm
        self._graph.push(float_frame(pcm, self._sr, self._pts))
        self._pts += pcm.shape[0]
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()


class _TempoEncoder(AudioEncoder):
    """An encoder behind a :class:`Tempo` stage."""

    def __init__(self, inner: AudioEncoder, speed: float) -> None:
        self.inner, self.tempo = inner, Tempo(speed)
        self.content_type = inner.content_type

    def write(self, pcm: np.ndarray) -> bytes:
        return self.inner.write(self.tempo.process(pcm))

    def close(self) -> bytes:
        return self.inner.write(self.tempo.flush()) + self.inner.close()


def make_encoder(fmt: str, speed: float = 1.0, sr: int = SAMPLE_RATE) -> AudioEncoder:
    """A streaming encoder for ``fmt`` (one of :data:`FORMATS`), optionally changing the speed."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "pcm":
        encoder: AudioEncoder = PcmEncoder()
    elif fmt == "wav":
        encoder = WavStreamEncoder(sr)
    else:
        encoder = AvEncoder(fmt, sr)
    return encoder if speed == 1.0 else _TempoEncoder(encoder, speed)


def encode_audio(audio: np.ndarray, fmt: str, speed: float = 1.0, sr: int = SAMPLE_RATE) -> bytes:
    """A whole file of ``fmt`` with exact headers (WAV sizes, FLAC sample count)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if speed != 1.0:
        tempo = Tempo(speed, sr)
        audio = np.concatenate([tempo.process(audio), tempo.flush()])
    if fmt == "wav":
        data = pcm16(audio).astype("<i2").tobytes()
        return wav_header(sr, len(data)) + data
    if fmt == "pcm":
        return PcmEncoder().write(audio)
    encoder = AvEncoder(fmt, sr, seekable=(fmt == "flac"))
    return encoder.write(audio) + encoder.close()
