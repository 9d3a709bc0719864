"""ECAPA-TDNN speaker encoder of Qwen3-TTS Base, and the log-mel features it reads.

The Base model conditions the talker on an "x-vector": one embedding of the reference speaker computed by
this network from a 128-band log-mel spectrogram of the 24 kHz reference audio. The module layout (and
so every ``state_dict`` key) mirrors the official ``Qwen3TTSSpeakerEncoder``, whose weights live under
``speaker_encoder.`` in ``model.safetensors``; the arithmetic follows it operation by operation so the
embedding matches the official one to float rounding.

ECAPA-TDNN: Desplanques et al., 2020, https://arxiv.org/abs/2005.07143.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SpeakerEncoder",
    "SpeakerEncoderConfig",
    "extract_speaker_embedding",
    "slaney_mel_filterbank",
    "speaker_mel",
]

logger = logging.getLogger(__name__)

# Mel front end of the official ``extract_speaker_embedding`` (hard-coded there, not in the config).
MEL_SAMPLE_RATE = 24000
MEL_N_FFT = 1024
MEL_HOP = 256
MEL_WIN = 1024
MEL_BANDS = 128
MEL_FMIN = 0.0
MEL_FMAX = 12000.0
# Added under the square root of |STFT|^2 so silent bins have a finite gradient-free magnitude.
_MAG_EPS = 1e-9
# Floor of the mel energies before the log ("dynamic range compression"), i.e. about -11.5 in log units.
_LOG_FLOOR = 1e-5
# Floor of the variance in attentive statistics pooling, before the square root.
_STD_EPS = 1e-12


@dataclass(frozen=True)
class SpeakerEncoderConfig:
    """Hyper-parameters of the speaker encoder; the defaults are the official ones.

    Released checkpoints only set ``enc_dim`` (1024 for 0.6B, 2048 for 1.7B: the talker's hidden size)
    and ``sample_rate`` in ``config.json`` -> ``speaker_encoder_config``; everything else is a default.
    """

    mel_dim: int = 128
    enc_dim: int = 1024
    # Output channels of: the first TDNN, each SE-Res2Net block, and the multi-layer aggregation (MFA).
    enc_channels: tuple[int, ...] = (512, 512, 512, 512, 1536)
    enc_kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    enc_dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so that the frozen config stays hashable.
        for name in ("enc_channels", "enc_kernel_sizes", "enc_dilations"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.enc_channels)
        if n < 3 or len(self.enc_kernel_sizes) != n or len(self.enc_dilations) != n:
            raise ValueError(
                "enc_channels, enc_kernel_sizes and enc_dilations must have the same length (at least 3), "
                f"got {self.enc_channels}, {self.enc_kernel_sizes}, {self.enc_dilations}"
            )
        hidden = self.enc_channels[1:-1]
        if any(c % self.enc_res2net_scale for c in hidden):
            raise ValueError(f"SE-Res2Net channels {hidden} must be divisible by {self.enc_res2net_scale}")
        # The MFA layer reads the concatenated outputs of the SE-Res2Net blocks.
        if sum(hidden) != self.enc_channels[-1]:
            raise ValueError(
                f"enc_channels[-1] ({self.enc_channels[-1]}) must equal the sum of the SE-Res2Net "
                f"channels {hidden}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeakerEncoderConfig:
        """Build from ``config.json``'s ``speaker_encoder_config``, ignoring keys we do not use."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            logger.debug("speaker_encoder_config: ignoring unknown keys %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in names})


def _conv(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    # "same" length with reflect padding, as in the official network; for odd kernels the padding is
    # dilation * (kernel - 1) / 2 on each side.
    return nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding="same", padding_mode="reflect")


class _TDNN(nn.Module):
    """Conv1d + ReLU (the official ``TimeDelayNetBlock``; key: ``conv``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = _conv(in_ch, out_ch, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class _Res2Net(nn.Module):
    """Splits channels into ``scale`` groups; group i>0 is convolved after adding group i-1's output."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        width = channels // scale
        self.blocks = nn.ModuleList(_TDNN(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, len(self.blocks) + 1, dim=1)
        outs = [parts[0]]
        prev = None
        for block, part in zip(self.blocks, parts[1:], strict=True):
            prev = block(part if prev is None else part + prev)
            outs.append(prev)
        return torch.cat(outs, dim=1)


class _SqueezeExcite(nn.Module):
    """Channel gates from the time-averaged features."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, se_channels)
        self.conv2 = _conv(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return x * gate


class _SERes2NetBlock(nn.Module):
    """TDNN (1x1) -> Res2Net -> TDNN (1x1) -> squeeze-excitation, plus a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, scale: int, se_channels: int, kernel: int, dilation: int):
        super().__init__()
        if in_ch != out_ch:  # the official block adds the input unprojected, so this must hold
            raise ValueError(f"SE-Res2Net block needs in_channels == out_channels, got {in_ch} != {out_ch}")
        self.tdnn1 = _TDNN(in_ch, out_ch, 1, 1)
        self.res2net_block = _Res2Net(out_ch, scale, kernel, dilation)
        self.tdnn2 = _TDNN(out_ch, out_ch, 1, 1)
        self.se_block = _SqueezeExcite(out_ch, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _weighted_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``x`` [B, C, T] over time with weights ``w`` (summing to 1)."""
    mean = (w * x).sum(dim=2)
    var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=_STD_EPS).sqrt()


class _AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling: per-channel attention over time, returns [B, 2C, 1] (mean ++ std).

    The official layer carries a length mask that is always all ones (one utterance, no padding), so the
    uniform weights are simply 1/T.
    """

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.tdnn = _TDNN(channels * 3, attention_channels, 1, 1)
        self.conv = _conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        uniform = torch.full((x.shape[0], 1, frames), 1.0 / frames, dtype=x.dtype, device=x.device)
        mean, std = _weighted_stats(x, uniform)
        # The attention sees each frame next to the utterance-level statistics (global context).
        context = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        attention = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)
        mean, std = _weighted_stats(x, attention)
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN: log-mel frames [B, frames, mel_dim] -> speaker embedding [B, enc_dim].

    ``state_dict`` keys equal the official module's (``blocks.*``, ``mfa.*``, ``asp.*``, ``fc.*``).
    """

    def __init__(self, config: SpeakerEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SpeakerEncoderConfig()
        ch, ks, dil = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        self.blocks = nn.ModuleList([_TDNN(cfg.mel_dim, ch[0], ks[0], dil[0])])
        for i in range(1, len(ch) - 1):
            self.blocks.append(
                _SERes2NetBlock(ch[i - 1], ch[i], cfg.enc_res2net_scale, cfg.enc_se_channels, ks[i], dil[i])
            )
        # Multi-layer feature aggregation over the concatenated SE-Res2Net outputs.
        self.mfa = _TDNN(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = _AttentiveStatsPool(ch[-1], cfg.enc_attention_channels)
        self.fc = _conv(ch[-1] * 2, cfg.enc_dim)
        # Reflect padding of a "same" convolution must be shorter than its input: the widest dilated
        # kernel decides how many mel frames (hop 256 = 10.7 ms each) the shortest usable clip has.
        self.min_frames = max(-(-d * (k - 1) // 2) for k, d in zip(ks, dil, strict=True)) + 1

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[-1] != self.config.mel_dim:
            expected = f"[B, frames, {self.config.mel_dim}]"
            raise ValueError(f"expected mel shaped {expected}, got {tuple(mel.shape)}")
        if mel.shape[1] < self.min_frames:
            raise ValueError(
                f"audio too short for a speaker embedding: {mel.shape[1]} mel frames, need {self.min_frames}"
            )
        x = self.blocks[0](mel.transpose(1, 2))
        features = []
        for block in self.blocks[1:]:
            x = block(x)
            features.append(x)
        x = self.mfa(torch.cat(features, dim=1))
        return self.fc(self.asp(x)).squeeze(-1)


# --------------------------------------------------------------------------------------------------------
# Mel front end
# --------------------------------------------------------------------------------------------------------


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (Auditory Toolbox): linear below 1 kHz, logarithmic above."""
    hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
    f_sp = 200.0 / 3  # Hz per mel in the linear part
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = hz / f_sp
    log_part = hz >= min_log_hz
    mel[log_part] = min_log_mel + np.log(hz[log_part] / min_log_hz) / logstep
    return mel


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_slaney_mel`."""
    mel = np.atleast_1d(np.asarray(mel, dtype=np.float64))
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    hz = f_sp * mel
    log_part = mel >= min_log_mel
    hz[log_part] = min_log_hz * np.exp(logstep * (mel[log_part] - min_log_mel))
    return hz


@functools.lru_cache(maxsize=8)
def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters with Slaney area normalisation, [n_mels, n_fft // 2 + 1] float32.

    Equal to ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` (its
    defaults: Slaney scale, ``norm="slaney"``), which the official code uses, built here so librosa is not
    needed at run time. The result is cached and read-only.
    """
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    # n_mels + 2 band edges evenly spaced in mel: filter i rises from edge i to i+1 and falls to i+2.
    mel_min, mel_max = _hz_to_slaney_mel(np.array([fmin, fmax]))
    edges_mel = np.linspace(mel_min, mel_max, n_mels + 2)
    edges_hz = _slaney_mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    offsets = np.subtract.outer(edges_hz, fft_hz)  # [n_mels + 2, bins]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    # Same rounding path as librosa: triangles are stored as float32, then scaled in float64.
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    weights = (weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]).astype(np.float32)
    weights.flags.writeable = False
    return weights


def speaker_mel(wav: torch.Tensor, sample_rate: int = MEL_SAMPLE_RATE) -> torch.Tensor:
    """Log-mel features for the speaker encoder: [T] or [B, T] audio -> [B, frames, 128].

    Same computation as the official ``mel_spectrogram`` call in ``extract_speaker_embedding``: reflect
    padding of (n_fft - hop) / 2 on both sides, periodic Hann STFT without centering, magnitude
    ``sqrt(re^2 + im^2 + 1e-9)``, Slaney mel filters (0-12 kHz), ``log(max(x, 1e-5))``. Frames =
    ``(T - 256) // 256 + 1``. Runs on ``wav``'s device in ``wav``'s dtype (float32 in the official code).
    """
    if sample_rate != MEL_SAMPLE_RATE:
        raise ValueError(f"the speaker encoder needs {MEL_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    if wav.ndim == 1:
        wav = wav.unsqueeze(0)
    if wav.ndim != 2:
        raise ValueError(f"expected audio shaped [T] or [B, T], got {tuple(wav.shape)}")
    pad = (MEL_N_FFT - MEL_HOP) // 2
    # Reflect padding needs more samples than the pad itself (and then at least one full frame fits).
    if wav.shape[-1] <= pad:
        raise ValueError(f"audio too short for speaker features: {wav.shape[-1]} samples, need > {pad}")
    peak = wav.abs().max().item()
    if peak > 1.0:
        logger.warning("speaker encoder input peaks at %.3f, above full scale", peak)

    mel_basis = torch.from_numpy(
        slaney_mel_filterbank(MEL_SAMPLE_RATE, MEL_N_FFT, MEL_BANDS, MEL_FMIN, MEL_FMAX).copy()
    ).to(device=wav.device)
    window = torch.hann_window(MEL_WIN, device=wav.device)
    padded = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        padded,
        MEL_N_FFT,
        hop_length=MEL_HOP,
        win_length=MEL_WIN,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + _MAG_EPS)
    mel = torch.log(torch.clamp(torch.matmul(mel_basis, magnitude), min=_LOG_FLOOR))
    return mel.transpose(1, 2)


@torch.inference_mode()
def extract_speaker_embedding(encoder: SpeakerEncoder, wav_24k: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Speaker embedding [enc_dim] of one mono 24 kHz clip, as the official method computes it.

    The mel is computed in float32 where the audio lives (CPU for numpy input, as in the official code),
    then moved to the encoder's device and dtype (e.g. bf16 on GPU) before the network runs. The audio must
    already be at 24 kHz: the official wrapper resamples with soxr HQ (see ``utter.audio.resample``).
    """
    wav: torch.Tensor = torch.from_numpy(np.asarray(wav_24k)) if isinstance(wav_24k, np.ndarray) else wav_24k
    if wav.ndim != 1:
        raise ValueError(f"expected one mono clip shaped [T], got {tuple(wav.shape)}")
    mel = speaker_mel(wav.to(torch.float32), MEL_SAMPLE_RATE)
    param = next(encoder.parameters())
    return encoder(mel.to(device=param.device, dtype=param.dtype))[0]
