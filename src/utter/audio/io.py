"""Reading, resampling and writing audio, matching what the official Qwen3-TTS wrapper does.

The official ``qwen-tts`` package reads reference audio with ``librosa.load(path, sr=None, mono=True)``
(soundfile underneath), averages channels, keeps float32 and resamples with ``librosa.resample``, whose
default is soxr at "HQ" quality followed by a fix to ``ceil(n * target_sr / orig_sr)`` samples. We do the
same steps with ``soundfile`` and ``soxr`` directly so that librosa is not a run-time dependency, and use
PyAV (FFmpeg) for the formats libsndfile cannot open (m4a/AAC, webm, ...).

Everything is decoded from memory (``io.BytesIO``): no temporary files are ever created while reading.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger(__name__)

# The 12 Hz codec and the speaker encoder both work at 24 kHz, and the model generates 24 kHz audio.
SAMPLE_RATE = 24000

# soxr quality preset used by librosa.resample's default ``res_type="soxr_hq"``.
_SOXR_QUALITY = "HQ"

# libsndfile error code meaning "this is a format I know, but the file is broken". For such files we
# report corruption instead of handing them to FFmpeg, which would happily decode a truncated prefix.
_SF_ERR_MALFORMED_FILE = 3

# A RIFF ``data`` chunk size of 0 or 0xFFFFFFFF is what streaming writers (ffmpeg to a pipe, recorders)
# leave when the final length was unknown; libsndfile then reads to the end, which is correct.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)

# 16-bit PCM full scale used when writing: libsndfile (and thus ``sf.write`` of float data, which is
# how the official examples save their output) scales float by 0x7FFF, so we do the same.
_PCM16_SCALE = 32767.0


class AudioError(ValueError):
    """Audio that cannot be used: missing, not audio, corrupt, truncated or empty.

    The message is meant to be shown to a person as is.
    """


class TooLong(AudioError):
    """The audio is longer than the caller allows; ``seconds`` is its length, at least as far as
    it was decoded (decoding stops just past the limit)."""

    def __init__(self, message: str, seconds: float, limit: float) -> None:
        super().__init__(message)
        self.seconds, self.limit = seconds, limit


def load_audio(
    src: str | Path | bytes, target_sr: int | None = SAMPLE_RATE, max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode an audio file (path) or an in-memory file (bytes) into mono float32.

    Multi-channel audio is averaged to mono exactly as ``librosa.load(mono=True)`` does, and samples stay
    on the usual [-1, 1] full-scale convention (PCM is divided by 2**(bits-1); float files are passed
    through unchanged, so a float file that peaks above 1 stays above 1, as in the official code).

    Args:
        src: a path to an audio file, or the bytes of one. A ``str`` is always a path.
        target_sr: resample to this rate (soxr HQ, same as ``librosa.resample``); ``None`` keeps the
            file's own rate.
        max_seconds: refuse longer audio (:class:`TooLong`) from the length the container declares,
            before decoding, and never decode more than this (a small compressed file can hold
            hours of audio: 1.5 MB of FLAC silence is 3 hours, 2.5 GB as float32).

    Returns:
        ``(audio, sample_rate)``: a 1-D C-contiguous float32 array and its sample rate.

    Raises:
        AudioError: the file is missing, is not audio, is corrupt or truncated, or has no samples.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, what = bytes(src), "the uploaded audio"
    else:
        data, what = _read_file(Path(src)), f"audio file {str(src)!r}"
    if not data:
        raise AudioError(f"Cannot use {what}: it is empty (0 bytes).")

    audio, sr = _decode_with_soundfile(data, what, max_seconds)
    if audio is None:
        audio, sr = _decode_with_pyav(data, what, max_seconds)

    if audio.shape[0] == 0:
        raise AudioError(f"Cannot use {what}: it contains no audio samples (it may be empty or truncated).")
    if not np.isfinite(audio).all():
        raise AudioError(f"Cannot use {what}: it contains invalid (NaN or infinite) sample values.")

    # librosa's layout is (channels, samples) and it averages over axis 0; we do exactly the same so the
    # float32 rounding of the mixdown is identical to the official pipeline.
    mono = audio[:, 0] if audio.shape[1] == 1 else np.mean(audio.T, axis=0)
    mono = np.ascontiguousarray(mono, dtype=np.float32)

    peak = float(np.max(np.abs(mono)))
    if peak > 1.0:
        logger.warning("%s peaks at %.3f, above full scale; it is used unchanged", what, peak)
    logger.debug(
        "decoded %s: %d Hz, %d channel(s), %.2f s", what, sr, audio.shape[1], duration_seconds(mono, sr)
    )

    if target_sr is not None and target_sr != sr:
        mono = resample(mono, sr, target_sr)
        sr = target_sr
    return mono, int(sr)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample 1-D audio with soxr "HQ", giving the same result as ``librosa.resample``'s default.

    librosa calls ``soxr.resample(quality="soxr_hq")`` and then pads with zeros or trims the result to
    exactly ``ceil(len(audio) * target_sr / orig_sr)`` samples; the dtype of the input is kept.

    Raises:
        ValueError: non-positive rates, a non-float array, or an array that is not 1-D.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"resample expects 1-D (mono) audio, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"resample expects floating point audio in [-1, 1], got dtype {audio.dtype}")
    if orig_sr == target_sr:
        return audio

    # Same arithmetic as librosa, so the length matches to the sample.
    n_out = int(np.ceil(audio.shape[0] * (float(target_sr) / orig_sr)))
    if audio.shape[0] == 0:
        return np.zeros(0, dtype=audio.dtype)
    out = soxr.resample(np.ascontiguousarray(audio), orig_sr, target_sr, quality=_SOXR_QUALITY)
    if out.shape[0] > n_out:
        out = out[:n_out]
    elif out.shape[0] < n_out:
        out = np.pad(out, (0, n_out - out.shape[0]))
    return np.ascontiguousarray(out, dtype=audio.dtype)


def to_wav_bytes(audio: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """Encode mono float audio as a 16-bit PCM WAV file in memory.

    Samples are clipped to [-1, 1] first: libsndfile does not clip by default, so an overshoot would
    wrap around to the opposite sign and click loudly.
    """
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected 1-D (mono) audio, got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    pcm = np.rint(np.clip(audio, -1.0, 1.0) * _PCM16_SCALE).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write a 16-bit PCM mono WAV file atomically (see :func:`write_file`); returns its path."""
    return write_file(path, to_wav_bytes(audio, sr))


def write_file(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    The data goes to a temporary file in the same folder, which then replaces ``path`` with
    ``os.replace``: readers (a web player, a concurrent request) see either the old file or the complete
    new one, never a half-written one, and a crash leaves no partial file behind.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it the permissions a normal file would have.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path


def duration_seconds(audio: np.ndarray, sr: int) -> float:
    """Length of 1-D audio (or of the last axis of batched audio) in seconds."""
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    return np.shape(audio)[-1] / float(sr)


# --------------------------------------------------------------------------------------------------------
# Decoding helpers
# --------------------------------------------------------------------------------------------------------


def _read_file(path: Path) -> bytes:
    """Read a whole file, turning OS errors into AudioError with a readable message."""
    if not path.exists():
        raise AudioError(f"Audio file not found: {str(path)!r}.")
    if not path.is_file():
        raise AudioError(f"Not an audio file (it is a folder or a device): {str(path)!r}.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AudioError(f"Cannot read audio file {str(path)!r}: {exc.strerror or exc}.") from exc


def _too_long(what: str, seconds: float, limit: float, at_least: bool = False) -> TooLong:
    more = "more than " if at_least else ""
    message = f"Cannot use {what}: it is {more}{seconds:.1f} s long; at most {limit:g} s is allowed."
    return TooLong(message, seconds, limit)


def _decode_with_soundfile(
    data: bytes, what: str, max_seconds: float | None = None
) -> tuple[np.ndarray | None, int]:
    """Decode with libsndfile, as librosa does; returns ``(None, 0)`` if libsndfile does not know the format.

    Returns audio shaped (samples, channels).
    """
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except sf.LibsndfileError as exc:
        if exc.code == _SF_ERR_MALFORMED_FILE:
            raise AudioError(f"Cannot use {what}: the file is corrupt or truncated.") from exc
        logger.debug("libsndfile cannot open %s (%s); trying FFmpeg", what, exc.error_string)
        return None, 0
    except (RuntimeError, TypeError) as exc:  # soundfile raises these for odd inputs in older versions
        logger.debug("libsndfile cannot open %s (%s); trying FFmpeg", what, exc)
        return None, 0

    with f:
        declared, sr, fmt = f.frames, f.samplerate, f.format
        limit = None if max_seconds is None else int(max_seconds * sr) + 1
        if limit is not None and declared > limit and fmt != "MP3":  # MP3 lengths are estimates
            raise _too_long(what, declared / sr, max_seconds)
        try:
            audio = f.read(frames=-1 if limit is None else limit + 1, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"Cannot use {what}: the file is corrupt or truncated ({exc}).") from exc
        if limit is not None and audio.shape[0] > limit:
            raise _too_long(what, max(declared, audio.shape[0]) / sr, max_seconds, at_least=declared <= limit)

    truncated = audio.shape[0] < declared
    if fmt == "MP3" and truncated and not _mp3_has_frame_count(data):
        # Without a Xing/Info header libsndfile only estimates the length from the file size, so a
        # shortfall does not prove truncation (ID3 tags and encoder padding also count).
        logger.debug("%s: decoded %d of ~%d estimated frames", what, audio.shape[0], declared)
        truncated = False
    if truncated or (fmt in ("WAV", "WAVEX") and _wav_data_chunk_truncated(data)):
        raise AudioError(f"Cannot use {what}: the file is truncated (it ends before its header says).")
    return audio, int(sr)


def _decode_with_pyav(data: bytes, what: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode with FFmpeg (PyAV) for formats libsndfile lacks; returns (samples, channels) float32."""
    chunks: list[np.ndarray] = []
    decoded = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"Cannot use {what}: it contains no audio track.")
            stream = container.streams.audio[0]
            sr = stream.codec_context.sample_rate
            declared = _declared_seconds(container, stream)
            if max_seconds is not None and declared is not None and declared > max_seconds + 0.5:
                raise _too_long(what, declared, max_seconds)
            # Converting every frame to planar float at the stream's own layout and rate changes nothing
            # but the sample format (int PCM is divided by 2**(bits-1), like libsndfile), and it keeps the
            # output consistent if the layout changes mid-stream.
            resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=sr)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    decoded += out.samples
                if max_seconds is not None and sr and decoded > max_seconds * sr + sr // 2:
                    raise _too_long(what, decoded / sr, max_seconds, at_least=True)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except AudioError:
        raise
    except (av.FFmpegError, EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise AudioError(
            f"Cannot use {what}: it is not a supported audio format, or the file is corrupt or truncated."
        ) from exc
    if not chunks or not sr:
        raise AudioError(f"Cannot use {what}: it contains no audio samples (it may be empty or truncated).")
    # (channels, samples) -> (samples, channels), the soundfile layout used by load_audio.
    return np.ascontiguousarray(np.concatenate(chunks, axis=1).T, dtype=np.float32), int(sr)


def _declared_seconds(container: av.container.InputContainer, stream: av.audio.AudioStream) -> float | None:
    """The length the container or stream header declares, if any (not trusted to be exact:
    used only to refuse at once what is far too long)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds (av.time_base)
    return None


def _wav_data_chunk_truncated(data: bytes) -> bool:
    """True when a RIFF/WAVE file's ``data`` chunk claims more bytes than the file holds.

    libsndfile silently shortens such files, which would give a reference clip that no longer matches its
    transcript; an upload cut off half-way is better reported than used.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            return size not in _WAV_UNKNOWN_SIZES and pos + 8 + size > len(data)
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return False


def _mp3_has_frame_count(data: bytes) -> bool:
    """True when an MP3 starts with a Xing/Info (LAME) header, i.e. its exact length is known."""
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        # ID3v2 size is a 28-bit "syncsafe" integer (7 bits per byte), plus the 10-byte header.
        size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
        start = 10 + size
    # The tag sits right after the first frame's side information (at most 36 bytes in).
    head = data[start : start + 64]
    return b"Xing" in head or b"Info" in head
