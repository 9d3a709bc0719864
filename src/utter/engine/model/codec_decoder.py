"""The 12 Hz speech tokenizer's decoder: 16 codebooks of codes -> 24 kHz waveform.

Plain-PyTorch equivalent of the official ``Qwen3TTSTokenizerV2Decoder``. Module and parameter
names mirror the official ones, so the ``decoder.*`` tensors of a checkpoint's
``speech_tokenizer/model.safetensors`` load with ``load_state_dict(strict=True)`` once the
``decoder.`` prefix is stripped.

The pipeline, per batch item (T = frames, U = samples per frame = 1920 for the real model)::

    codes [B, K, T] -> split RVQ decode -> [B, codebook_dim, T]
      -> causal conv (k=3) -> [B, latent, T]
      -> sliding-window causal transformer -> [B, latent, T]
      -> 2 x (causal transposed conv x2 + ConvNeXt) -> [B, latent, 4T]
      -> causal conv (k=7) -> [B, decoder_dim, 4T]
      -> 4 SEANet blocks (SnakeBeta, transposed conv x r, 3 dilated residual units), r = 8, 5, 4, 3
      -> SnakeBeta, causal conv (k=7) -> [B, 1, T*U], clamped to [-1, 1]

Every layer is causal, so the waveform of frame t depends only on frames t - R .. t, where R is
:attr:`CodecDecoder.receptive_field_frames` (580 for the real model: the transformer alone sees
8 x 71 frames back). That is what streaming relies on: decoding a window of codes whose first
``left_context`` frames are at least R frames of real history, and dropping those frames'
samples, reproduces the one-shot decode (:meth:`CodecDecoder.decode_window`); cheaper still,
:class:`utter.engine.streaming.StreamingDecoder` carries each layer's state from chunk to chunk
and needs no context frames at all. The official package decodes long sequences with only 25
frames of context (:meth:`CodecDecoder.chunked_decode`), which is an approximation we reproduce
exactly because parity with it is what counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import apply_rotary

# The official wrapper's ``decode`` calls ``chunked_decode`` with these defaults.
OFFICIAL_CHUNK_FRAMES = 300
OFFICIAL_LEFT_CONTEXT_FRAMES = 25

# Structural constants of the official architecture (fixed in its code, not in config.json).
_SEMANTIC_QUANTIZERS = 1  # the official code passes n_q_semantic=1 whatever the config says
_PRE_CONV_KERNEL = 3
_CONV_KERNEL = 7  # decoder input/output convs, ConvNeXt depthwise conv, residual-unit convs
_RESIDUAL_DILATIONS = (1, 3, 9)
_CODEBOOK_EPS = 1e-5
_LAYER_NORM_EPS = 1e-6
_SNAKE_EPS = 1e-9

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


@dataclass(frozen=True)
class CodecDecoderConfig:
    """The ``decoder_config`` block of the speech tokenizer's ``config.json``.

    Defaults are those of the official ``Qwen3TTSTokenizerV2DecoderConfig``, so a file that omits a
    key means here what it means to the official loader. ``codebook_dim`` has no official default
    (the official decoder fails without it), so it is required here too.
    """

    codebook_dim: int
    codebook_size: int = 2048
    num_quantizers: int = 16
    latent_dim: int = 1024
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 8
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 64
    sliding_window: int = 72
    decoder_dim: int = 1536
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    upsampling_ratios: tuple[int, ...] = (2, 2)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention_bias: bool = False
    hidden_act: str = "silu"
    layer_scale_initial_scale: float = 0.01
    max_position_embeddings: int = 8000

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecDecoderConfig:
        if "codebook_dim" not in data:
            raise ValueError("decoder_config has no 'codebook_dim'")
        scaling = data.get("rope_scaling") or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"decoder rope_scaling type {rope_type!r} is not supported")
        nsq = data.get("num_semantic_quantizers", _SEMANTIC_QUANTIZERS)
        if nsq != _SEMANTIC_QUANTIZERS:
            # The official decoder ignores this key and always splits 1 + rest; refuse rather than
            # silently decode differently from what the file claims.
            raise ValueError(f"num_semantic_quantizers={nsq} is not supported (official decoder uses 1)")
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("head_dim") is None:
            kwargs["head_dim"] = data.get("hidden_size", cls.hidden_size) // data.get(
                "num_attention_heads", cls.num_attention_heads
            )
        for key in ("upsample_rates", "upsampling_ratios"):
            if key in kwargs:
                kwargs[key] = tuple(int(x) for x in kwargs[key])
        cfg = cls(**kwargs)
        if cfg.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"decoder hidden_act {cfg.hidden_act!r} is not supported")
        if cfg.codebook_dim % 2:
            raise ValueError("decoder codebook_dim must be even (each RVQ half uses codebook_dim // 2)")
        if cfg.decoder_dim % 2 ** len(cfg.upsample_rates):
            raise ValueError("decoder_dim must halve cleanly at every upsampling block")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["upsample_rates"] = list(self.upsample_rates)
        data["upsampling_ratios"] = list(self.upsampling_ratios)
        data["num_semantic_quantizers"] = _SEMANTIC_QUANTIZERS
        return data

    @property
    def total_upsample(self) -> int:
        """Waveform samples produced per frame of codes."""
        return math.prod(self.upsample_rates) * math.prod(self.upsampling_ratios)


# --------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------


class CausalConv1d(nn.Module):
    """Conv1d padded on the left only, so output t sees inputs <= t; length is ceil(L / stride)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, dilation=dilation, groups=groups)
        self.stride = stride
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.left_pad = self.effective_kernel - stride

    def extra_right_pad(self, length: int) -> int:
        # Enough zeros on the right that the last window is complete (0 when stride == 1).
        n_frames = math.ceil((length - self.effective_kernel + self.left_pad) / self.stride + 1)
        ideal = (n_frames - 1) * self.stride + (self.effective_kernel - self.left_pad)
        return ideal - length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, L] -> [B, C_out, ceil(L / stride)]
        x = F.pad(x, (self.left_pad, self.extra_right_pad(x.shape[-1])))
        return conv1d(self.conv, x)


# Where a float32 CPU convolution runs as one matrix product instead (``conv1d``): a weight of at
# least this many bytes over at most this many output steps. oneDNN's direct convolution reads such
# a weight poorly on short inputs: the decoder's first conv (1024 -> 1536 channels, kernel 7, 44 MB)
# took 34 ms for a 12-frame streaming push (48 steps) against 12 ms as a product, and 27 against 8.5
# ms at 16 steps, on a 2-core AVX2 EPYC (Zen 3); at 2,048 steps the two are even. Convs of 768
# channels (16.5 MB) run as fast as convolutions or faster, so they stay. Measured on float32 only:
# bfloat16 decoders (CPUs with bfloat16 units, GPUs) keep the convolution.
GEMM_CONV_MIN_WEIGHT_BYTES = 32 << 20
GEMM_CONV_MAX_STEPS = 512


def conv1d(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for x [B, C_in, L] already padded; as one matrix product where that is faster
    (see ``GEMM_CONV_MIN_WEIGHT_BYTES``), equal to float rounding.

    Output step t sums ``weight[:, c, j] * x[:, c, t + j * dilation]``: the inputs are gathered
    as rows [B, steps, C_in * kernel] in the weight's own (channel, tap) order, so the weight is
    used as stored, reshaped without a copy."""
    weight = conv.weight
    c_out, c_in, kernel = weight.shape
    dilation = conv.dilation[0]
    span = (kernel - 1) * dilation + 1
    steps = x.shape[-1] - span + 1
    if (
        not x.is_cpu
        or x.dtype != torch.float32
        or x.dim() != 3
        or conv.groups != 1
        or conv.stride[0] != 1
        or conv.padding[0] != 0
        or not 0 < steps <= GEMM_CONV_MAX_STEPS
        or weight.numel() * weight.element_size() < GEMM_CONV_MIN_WEIGHT_BYTES
    ):
        return conv(x)
    rows = x.unfold(2, span, 1)[..., ::dilation]  # [B, C_in, steps, kernel]
    rows = rows.transpose(1, 2).reshape(x.shape[0], steps, c_in * kernel)
    return F.linear(rows, weight.reshape(c_out, c_in * kernel), conv.bias).transpose(1, 2)


def transposed_conv1d(conv: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for x [B, C_in, L], as one matrix product and ``kernel / stride`` shifted adds.

    Why: torch's CPU transposed convolution takes a slow path in bfloat16 (about 45 ms for the
    decoder's first upsampler on 49 steps, 3.7 ms of every frame's decode); the product form is a
    plain GEMM. Output step t * stride + k gets x[:, :, t] @ W[:, :, k], so with the kernel cut
    into m = kernel / stride pieces of one stride each, piece j lands one stride later than piece
    j - 1. The adds run in float32 (the convolution's own accumulation) and the result is cast
    back. Other layouts (groups, dilation, padding, kernel not a multiple of the stride) use conv.
    """
    k, s = conv.kernel_size[0], conv.stride[0]
    if (
        conv.groups != 1
        or conv.dilation[0] != 1
        or conv.padding[0] != 0
        or conv.output_padding[0] != 0
        or k % s
        or x.dim() != 3
    ):
        return conv(x)
    b, c_in, length = x.shape
    c_out, m = conv.out_channels, k // s
    w = conv.weight.reshape(c_in, c_out * k)
    parts = (x.transpose(1, 2) @ w).float().view(b, length, c_out, m, s)  # [B, L, C_out, m, stride]
    out = torch.zeros(b, c_out, length + m - 1, s, dtype=torch.float32, device=x.device)
    for j in range(m):
        out[:, :, j : j + length] += parts[:, :, :, j].transpose(1, 2)
    out = out.view(b, c_out, (length + m - 1) * s)
    if conv.bias is not None:
        out += conv.bias.float()[None, :, None]
    return out.to(x.dtype)


class CausalTransposeConv1d(nn.Module):
    """Transposed conv whose right overhang (kernel - stride samples) is cut: L -> L * stride."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_ch, out_ch, kernel_size, stride=stride)
        self.kernel_size = kernel_size
        self.stride = stride
        self.right_trim = kernel_size - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, L] -> [B, C_out, L * stride]
        x = transposed_conv1d(self.conv, x)
        if self.right_trim > 0:
            x = x[..., : x.shape[-1] - self.right_trim]
        return x


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv + LayerNorm + pointwise MLP (x4), residual with a learnt per-channel gain."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, _CONV_KERNEL, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, L] -> [B, C, L]
        h = self.dwconv(x).transpose(1, 2)  # [B, L, C]
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class SnakeBeta(nn.Module):
    """x + sin^2(x * e^alpha) / e^beta per channel (alpha, beta stored as logs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self._scales: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def _per_channel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """e^alpha and 1 / (e^beta + eps) as [1, C, 1], computed once per set of parameters (the
        streaming decoder calls every activation once per chunk)."""
        key = (self.alpha.data_ptr(), self.alpha._version, self.beta.data_ptr(), self.beta._version)
        if self._scales is None or self._scales[0] != key:
            alpha = torch.exp(self.alpha)[None, :, None]
            inv_beta = 1.0 / (torch.exp(self.beta)[None, :, None] + _SNAKE_EPS)
            self._scales = (key, alpha, inv_beta)
        return self._scales[1], self._scales[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, L]
        alpha, inv_beta = self._per_channel()
        return torch.addcmul(x, inv_beta, torch.sin(x * alpha).square())


class ResidualUnit(nn.Module):
    """SnakeBeta -> dilated causal conv (k=7) -> SnakeBeta -> 1x1 conv, plus the input."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv1d(dim, dim, _CONV_KERNEL, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))


class UpsampleBlock(nn.Module):
    """SEANet decoder block: halves the channels and multiplies the length by ``rate``."""

    def __init__(self, in_dim: int, out_dim: int, rate: int) -> None:
        super().__init__()
        units: list[nn.Module] = [SnakeBeta(in_dim), CausalTransposeConv1d(in_dim, out_dim, 2 * rate, rate)]
        units += [ResidualUnit(out_dim, d) for d in _RESIDUAL_DILATIONS]
        self.block = nn.ModuleList(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, in_dim, L] -> [B, out_dim, L * rate]
        for unit in self.block:
            x = unit(x)
        return x


# --------------------------------------------------------------------------------------------
# Residual vector quantizer (decode side only)
# --------------------------------------------------------------------------------------------


class Codebook(nn.Module):
    """One codebook, stored as the running sums the official training used: entry = sum / usage."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.cluster_usage = nn.Parameter(torch.ones(size))
        self.embedding_sum = nn.Parameter(torch.zeros(size, dim))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        # codes: [B, T] -> [B, T, dim]
        table = self.embedding_sum / self.cluster_usage.clamp(min=_CODEBOOK_EPS)[:, None]
        return F.embedding(codes, table)


class _CodebookHolder(nn.Module):
    """Exists only so parameter names read ``layers.i._codebook.*`` as in the checkpoint."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self._codebook = Codebook(dim, size)


class _CodebookStack(nn.Module):
    def __init__(self, n: int, dim: int, size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_CodebookHolder(dim, size) for _ in range(n)])


class ResidualQuantizer(nn.Module):
    """Sum of ``n`` codebook lookups, projected from ``dim`` to ``out_dim`` channels.

    ``input_proj`` is only used when encoding; it is kept because the checkpoint has it.
    """

    def __init__(self, n: int, dim: int, out_dim: int, size: int) -> None:
        super().__init__()
        self.input_proj = nn.Conv1d(out_dim, dim, 1, bias=False)
        self.output_proj = nn.Conv1d(dim, out_dim, 1, bias=False)
        self.vq = _CodebookStack(n, dim, size)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        # codes: [B, n, T] -> [B, out_dim, T]
        total: torch.Tensor | None = None
        for i, holder in enumerate(self.vq.layers):
            part = holder._codebook.decode(codes[:, i]).transpose(1, 2)  # [B, dim, T]
            total = part if total is None else total + part
        assert total is not None
        return self.output_proj(total)


class SplitResidualQuantizer(nn.Module):
    """The first (semantic) codebook and the remaining acoustic ones have separate projections."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        dim = cfg.codebook_dim // 2
        self.n_semantic = _SEMANTIC_QUANTIZERS
        self.rvq_first = ResidualQuantizer(self.n_semantic, dim, cfg.codebook_dim, cfg.codebook_size)
        self.rvq_rest = ResidualQuantizer(
            cfg.num_quantizers - self.n_semantic, dim, cfg.codebook_dim, cfg.codebook_size
        )

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        # codes: [B, K, T] -> [B, codebook_dim, T]
        out = self.rvq_first.decode(codes[:, : self.n_semantic])
        if codes.shape[1] > self.n_semantic:
            out = out + self.rvq_rest.decode(codes[:, self.n_semantic :])
        return out


# --------------------------------------------------------------------------------------------
# Sliding-window transformer
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMS norm computed in float32 and cast back, as the official one does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class SlidingAttention(nn.Module):
    """Causal attention where each frame sees itself and the ``window - 1`` frames before it."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values with rotary positions applied; keys/values keep ``n_kv`` heads.

        Split from :meth:`attend` so the streaming decoder can put cached keys/values in between.
        """
        # x: [B, T, H]; cos, sin: [T, head_dim] -> q [B, nh, T, hd], k and v [B, nkv, T, hd]
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # q: [B, nh, Tq, hd]; k, v: [B, nkv, Tk, hd]; mask: [Tq, Tk] bool (True = may attend) -> [B, Tq, H]
        b, _, t, _ = q.shape
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        # x: [B, T, H]; cos, sin: [T, head_dim]; mask: [T, T] bool (True = may attend)
        return self.attend(*self.project(x, cos, sin), mask)


class GatedMLP(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.self_attn = SlidingAttention(cfg)
        self.mlp = GatedMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class SlidingTransformer(nn.Module):
    """Projects latent -> hidden, runs the layers, projects back. Positions restart at 0 per call."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.latent_dim)

    def rope(
        self, t: int, device: torch.device, dtype: torch.dtype, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cos/sin for positions ``start .. start + t - 1``: each [T, head_dim].

        Computed per call (no buffer) so the module has no non-persistent state to rebuild after a
        meta-device load. Float32 throughout, cast at the end, like the official rotary embedding;
        a position gets bit-identical values whatever ``start`` it is computed from.
        """
        return self.rope_at(torch.arange(start, start + t, device=device), dtype)

    def rope_at(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cos/sin at the given positions (any shape [...] of integers): each [..., head_dim].

        The tensor form lets streams at different positions share one call, and lets a captured
        graph take the positions as an input.
        """
        d = self.cfg.head_dim
        exponent = torch.arange(0, d, 2, dtype=torch.int64, device=positions.device).float() / d
        inv_freq = 1.0 / (self.cfg.rope_theta**exponent)
        freqs = positions.to(torch.float32)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)  # [..., head_dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, latent] -> [B, T, latent]
        t = x.shape[1]
        h = self.input_proj(x)
        cos, sin = self.rope(t, x.device, h.dtype)
        pos = torch.arange(t, device=x.device)
        mask = sliding_window_mask(pos, pos, self.cfg.sliding_window)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.output_proj(self.norm(h))


def sliding_window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int) -> torch.Tensor:
    """[Tq, Tk] bool: a query sees the keys at its own position and the ``window - 1`` before it."""
    delta = query_pos[:, None] - key_pos[None, :]
    return (delta >= 0) & (delta < window)


# --------------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------------


class CodecDecoder(nn.Module):
    """Codes [B, K, T] -> waveform [B, 1, T * total_upsample], with streaming-friendly helpers."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.total_upsample = cfg.total_upsample
        self.quantizer = SplitResidualQuantizer(cfg)
        self.pre_conv = CausalConv1d(cfg.codebook_dim, cfg.latent_dim, _PRE_CONV_KERNEL)
        self.pre_transformer = SlidingTransformer(cfg)
        self.upsample = nn.ModuleList(
            nn.ModuleList(
                [CausalTransposeConv1d(cfg.latent_dim, cfg.latent_dim, f, f), ConvNeXtBlock(cfg.latent_dim)]
            )
            for f in cfg.upsampling_ratios
        )
        stages: list[nn.Module] = [CausalConv1d(cfg.latent_dim, cfg.decoder_dim, _CONV_KERNEL)]
        for i, rate in enumerate(cfg.upsample_rates):
            stages.append(UpsampleBlock(cfg.decoder_dim // 2**i, cfg.decoder_dim // 2 ** (i + 1), rate))
        out_dim = cfg.decoder_dim // 2 ** len(cfg.upsample_rates)
        stages += [SnakeBeta(out_dim), CausalConv1d(out_dim, 1, _CONV_KERNEL)]
        self.decoder = nn.ModuleList(stages)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        # codes: [B, K, T] long, every value in [0, codebook_size) -> wav [B, 1, T * U] in [-1, 1]
        if codes.shape[1] != self.cfg.num_quantizers:
            raise ValueError(f"expected {self.cfg.num_quantizers} codebooks, got {codes.shape[1]}")
        h = self.quantizer.decode(codes)  # [B, codebook_dim, T]
        h = self.pre_conv(h)  # [B, latent, T]
        h = self.pre_transformer(h.transpose(1, 2)).transpose(1, 2)  # [B, latent, T]
        for up in self.upsample:
            for stage in up:
                h = stage(h)  # [B, latent, T * prod(upsampling_ratios so far)]
        for stage in self.decoder:
            h = stage(h)
        return h.clamp(min=-1.0, max=1.0)

    def decode_window(self, codes: torch.Tensor, left_context: int) -> torch.Tensor:
        """Decode ``codes`` [B, K, T] and drop the first ``left_context`` frames' samples.

        With ``left_context >= receptive_field_frames`` (and that many frames of real history at
        the window start) the result equals the matching slice of a one-shot decode.
        """
        if not 0 <= left_context <= codes.shape[-1]:
            raise ValueError(f"left_context {left_context} outside [0, {codes.shape[-1]}]")
        return self(codes)[..., left_context * self.total_upsample :]

    def iter_chunked_decode(
        self,
        codes: torch.Tensor,
        chunk_size: int = OFFICIAL_CHUNK_FRAMES,
        left_context: int = OFFICIAL_LEFT_CONTEXT_FRAMES,
        start: int = 0,
    ) -> Iterator[torch.Tensor]:
        """Yield the waveform of frames [start, T) chunk by chunk, each decoded with up to
        ``left_context`` earlier frames as context (fewer at the very beginning).

        Chunk boundaries fall at ``start + n * chunk_size``; with ``start=0`` and the official
        defaults this is exactly the official ``chunked_decode``.
        """
        if chunk_size <= 0 or left_context < 0:
            raise ValueError("chunk_size must be > 0 and left_context >= 0")
        total = codes.shape[-1]
        begin = start
        while begin < total:
            end = min(begin + chunk_size, total)
            ctx = min(left_context, begin)
            yield self.decode_window(codes[..., begin - ctx : end], ctx)
            begin = end

    def chunked_decode(
        self,
        codes: torch.Tensor,
        chunk_size: int = OFFICIAL_CHUNK_FRAMES,
        left_context: int = OFFICIAL_LEFT_CONTEXT_FRAMES,
    ) -> torch.Tensor:
        """Equal to the official ``Qwen3TTSTokenizerV2Decoder.chunked_decode``: [B, K, T] -> [B, 1, T*U]."""
        parts = list(self.iter_chunked_decode(codes, chunk_size, left_context))
        if not parts:
            return codes.new_zeros(
                (codes.shape[0], 1, 0), dtype=self.quantizer.rvq_first.output_proj.weight.dtype
            )
        return torch.cat(parts, dim=-1)

    @property
    def receptive_field_frames(self) -> int:
        """How many earlier frames can influence a frame's samples (an exact bound, from the config).

        Walks the network from the output back to the codes, tracking how far left (in samples at
        each stage's rate) the first sample of a frame can reach.
        """
        cfg = self.cfg
        reach = _CONV_KERNEL - 1  # final conv
        for rate in reversed(cfg.upsample_rates):
            reach += sum((_CONV_KERNEL - 1) * d for d in _RESIDUAL_DILATIONS)
            reach = _transpose_reach(reach, 2 * rate, rate)
        reach += _CONV_KERNEL - 1  # conv latent -> decoder_dim
        for factor in reversed(cfg.upsampling_ratios):
            reach += _CONV_KERNEL - 1  # ConvNeXt depthwise conv
            reach = _transpose_reach(reach, factor, factor)
        reach += cfg.num_hidden_layers * (cfg.sliding_window - 1)
        reach += _PRE_CONV_KERNEL - 1
        return reach


def _transpose_reach(reach: int, kernel: int, stride: int) -> int:
    """Input-side reach of a right-trimmed transposed conv whose outputs need ``reach`` samples back.

    Output n (after trimming) sums inputs i with 0 <= n - i*stride < kernel. Take the worst case
    over the output phase n mod stride.
    """
    base = stride * (reach + kernel + 1)  # large offset keeps every index non-negative
    worst = 0
    for phase in range(stride):
        n = base + phase
        lo = -((-(n - reach - kernel + 1)) // stride)  # ceil((n - reach - kernel + 1) / stride)
        worst = max(worst, n // stride - lo)
    return worst
