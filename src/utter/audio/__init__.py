"""Audio input/output: decoding any common format, resampling and writing WAV files."""

from utter.audio.io import (
    SAMPLE_RATE,
    AudioError,
    TooLong,
    duration_seconds,
    load_audio,
    resample,
    to_wav_bytes,
    write_file,
    write_wav,
)

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "TooLong",
    "duration_seconds",
    "load_audio",
    "resample",
    "to_wav_bytes",
    "write_file",
    "write_wav",
]
