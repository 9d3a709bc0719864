"""ElevenLabs-style output formats (``mp3_44100_128``, ``pcm_16000``, ``ulaw_8000`` ...), streamed.

Agent frameworks ask for audio by these names: a codec, a sample rate and, for compressed
codecs, a bit rate. The model speaks at 24 kHz, so other rates go through FFmpeg's resampler,
which keeps its state from chunk to chunk: audio resampled piece by piece as it is generated is
the same as the whole resampled at once, with no clicks at chunk edges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import av
import numpy as np

from .encode import AudioEncoder, AvEncoder, PcmEncoder, float_frame
from .io import SAMPLE_RATE

PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
MP3_RATES = (22050, 24000, 44100)
MP3_KBPS = (32, 48, 64, 96, 128, 192)
OPUS_KBPS = (32, 64, 96, 128, 192)
_NAME = re.compile(r"^(mp3|pcm|ulaw|alaw|opus)_(\d+)(?:_(\d+))?$")


@dataclass(frozen=True)
class OutputFormat:
    codec: str  # mp3, pcm, ulaw, alaw, opus
    sample_rate: int
    kbps: int | None = None

    @property
    def content_type(self) -> str:
        return {
            "mp3": "audio/mpeg",
            "pcm": "audio/pcm",
            "ulaw": "audio/basic",
            "alaw": "audio/x-alaw-basic",
        }.get(self.codec, "audio/ogg")


def parse_output_format(name: str) -> OutputFormat:
    """The format an ElevenLabs name asks for; ValueError (listing what works) for any other."""
    m = _NAME.match((name or "").strip())
    supported = (
        "mp3_<22050|24000|44100>_<32..192>, pcm_<8000|16000|22050|24000|32000|44100|48000>, "
        "ulaw_8000, alaw_8000, opus_48000_<32|64|96|128|192>"
    )
    if m is None:
        raise ValueError(f"Unknown output_format {name!r}; supported: {supported}.")
    codec, rate, kbps = m.group(1), int(m.group(2)), int(m.group(3)) if m.group(3) else None
    ok = (
        (codec == "mp3" and rate in MP3_RATES and kbps in MP3_KBPS)
        or (codec == "pcm" and rate in PCM_RATES and kbps is None)
        or (codec in ("ulaw", "alaw") and rate == 8000 and kbps is None)
        or (codec == "opus" and rate == 48000 and kbps in OPUS_KBPS)
    )
    if not ok:
        raise ValueError(f"Unsupported output_format {name!r}; supported: {supported}.")
    return OutputFormat(codec, rate, kbps)


class Resampler:
    """24 kHz float mono in, ``rate`` out, chunk by chunk with state kept between chunks."""

    def __init__(self, rate: int, source: int = SAMPLE_RATE) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self._source, self._pts = source, 0

    def _run(self, frame: av.AudioFrame | None) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        if pcm.size == 0:
            return pcm
        frame = float_frame(pcm, self._source, self._pts)
        self._pts += pcm.shape[0]
        return self._run(frame)

    def flush(self) -> np.ndarray:
        return self._run(None)


class FormatEncoder(AudioEncoder):
    """Streaming encoder of an :class:`OutputFormat` (resampling first when its rate is not 24 kHz)."""

    def __init__(self, fmt: OutputFormat) -> None:
        self.content_type = fmt.content_type
        self._resampler = Resampler(fmt.sample_rate) if fmt.sample_rate != SAMPLE_RATE else None
        if fmt.codec == "pcm":
            self._inner: AudioEncoder = PcmEncoder()
        else:
            self._inner = AvEncoder(fmt.codec, fmt.sample_rate, bit_rate=(fmt.kbps or 0) * 1000 or None)

    def write(self, pcm: np.ndarray) -> bytes:
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        return self._inner.write(pcm)

    def close(self) -> bytes:
        tail = self._inner.write(self._resampler.flush()) if self._resampler is not None else b""
        return tail + self._inner.close()
