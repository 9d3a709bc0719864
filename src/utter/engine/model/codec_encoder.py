"""The 12 Hz speech tokenizer's encoder: 24 kHz waveform -> 16 codebooks of codes (a voice's reference).

The official ``Qwen3TTSTokenizerV2Encoder`` is transformers' ``MimiModel`` with its decoder half
removed, keeping the first ``encoder_valid_num_quantizers`` (16) of Mimi's 32 codebooks. This is
our own module for the same network: a SEANet conv encoder (25 Hz), a causal transformer, a
strided conv down to 12.5 Hz and a split residual vector quantizer. Parameter names mirror the
checkpoint's ``encoder.*`` tensors, so they load by name onto modules built on the meta device.

Why our own: building transformers' model meant importing transformers (seconds of Python) the
first time a voice was made, which `utter say` with a recording and a server's first new voice
waited for. The arithmetic is transformers 4.57's op for op (same convolutions and paddings, the
same SDPA call, the same ``cdist`` nearest-entry search), so the codes are the official ones bit
for bit (tested against the official package and against transformers' Mimi).

One behaviour to know: Mimi's config names a 250-frame sliding window, but transformers' encode
path builds a plain causal mask (``create_causal_mask``), so the official codes come from full
causal attention over the whole reference. We do the same (tested with references longer than the
window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .codec_decoder import LayerScale
from .layers import Rotary, apply_rotary

CODEBOOK_EPSILON = 1e-5  # Mimi's clamp of a codebook entry's usage count


@dataclass(frozen=True)
class CodecEncoderConfig:
    """The ``encoder_config`` of a speech tokenizer's ``config.json`` (a ``MimiConfig`` dict).

    Defaults are ``MimiConfig``'s, so a missing key means the same to both loaders.
    """

    sampling_rate: int = 24000
    audio_channels: int = 1
    hidden_size: int = 512
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "constant"
    compress: int = 2
    codebook_size: int = 2048
    codebook_dim: int | None = 256
    num_quantizers: int = 32
    num_semantic_quantizers: int = 1
    use_conv_shortcut: bool = False
    vector_quantization_hidden_dimension: int = 256
    num_hidden_layers: int = 8
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int | None = None
    hidden_act: str = "gelu"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention_bias: bool = False
    frame_rate: float | None = None  # stored as "_frame_rate"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecEncoderConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if data.get("_frame_rate") is not None:
            values["frame_rate"] = data["_frame_rate"]
        if values.get("upsampling_ratios"):
            values["upsampling_ratios"] = tuple(values["upsampling_ratios"])
        else:
            values.pop("upsampling_ratios", None)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.audio_channels != 1:
            raise ValueError(
                f"the speech encoder takes mono audio; its config says {self.audio_channels} channels"
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"unsupported speech encoder activation {self.hidden_act!r} (Mimi's is gelu)")
        if not 1 <= self.num_semantic_quantizers < self.num_quantizers:
            raise ValueError(
                f"num_semantic_quantizers must be in [1, {self.num_quantizers}), "
                f"got {self.num_semantic_quantizers}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.code_frame_rate > self.conv_frame_rate:
            raise ValueError(
                f"frame rate {self.code_frame_rate} is above the conv encoder's {self.conv_frame_rate}"
            )

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def conv_frame_rate(self) -> int:
        """Frames per second after the conv encoder (Mimi's ``encodec_frame_rate``: 25)."""
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def code_frame_rate(self) -> float:
        """Code frames per second (12.5): ``_frame_rate`` when given, else Mimi's default of half the
        conv encoder's rate."""
        return self.frame_rate if self.frame_rate is not None else self.sampling_rate / (self.hop_length * 2)

    @property
    def downsample_kernel(self) -> int:
        """Kernel of Mimi's stride-2 downsampler (4), 0 when codes run at the conv encoder's rate."""
        if self.code_frame_rate == self.conv_frame_rate:
            return 0
        return 2 * int(self.conv_frame_rate / self.code_frame_rate)

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


class CausalConv1d(nn.Module):
    """Mimi's padded conv: left padding of (effective kernel - stride), and on the right what makes
    the length a whole number of strides; ``replicate`` or zero padding."""

    def __init__(
        self,
        cfg: CodecEncoderConfig,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = True,
        pad_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride, dilation=dilation, bias=bias)
        self.stride = stride
        self.padding_total = (kernel - 1) * dilation + 1 - stride
        self.causal = cfg.use_causal_conv
        self.pad_mode = pad_mode or cfg.pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        extra = -(-length // self.stride) * self.stride - length  # to a whole number of strides
        if self.causal:
            left, right = self.padding_total, extra
        else:
            right = self.padding_total // 2
            left, right = self.padding_total - right, right + extra
        if self.pad_mode == "constant":
            x = F.pad(x, (left, right), "constant", 0.0)
        else:
            x = F.pad(x, (left, right), self.pad_mode)
        return self.conv(x)


class ResnetBlock(nn.Module):
    """SEANet residual unit: ELU, dilated conv to dim / compress, ELU, 1x1 conv back, plus the input."""

    def __init__(self, cfg: CodecEncoderConfig, dim: int, dilation: int) -> None:
        super().__init__()
        hidden = dim // cfg.compress
        # Indexes 1 and 3 hold the convs, as in the checkpoint (0 and 2 are the ELUs). In place
        # where the ELU's input is a fresh conv output (x itself is the residual): a 60 s
        # reference's convs 3.45 -> 3.0 s here, the same numbers.
        self.block = nn.ModuleList(
            [
                nn.ELU(),
                CausalConv1d(cfg, dim, hidden, cfg.residual_kernel_size, dilation=dilation),
                nn.ELU(inplace=True),
                CausalConv1d(cfg, hidden, dim, 1),
            ]
        )
        self.shortcut = CausalConv1d(cfg, dim, dim, 1) if cfg.use_conv_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.block:
            h = layer(h)
        residual = x if self.shortcut is None else self.shortcut(x)
        return h.add_(residual)  # h is the last conv's fresh output (x + h: the same bits)


class ConvEncoder(nn.Module):
    """SEANet encoder: waveform [B, 1, S] -> [B, hidden, ceil(S / hop)] at 25 Hz."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(cfg, cfg.audio_channels, cfg.num_filters, cfg.kernel_size)]
        scale = 1
        for ratio in reversed(cfg.upsampling_ratios):
            dim = scale * cfg.num_filters
            for j in range(cfg.num_residual_layers):
                layers.append(ResnetBlock(cfg, dim, cfg.dilation_growth_rate**j))
            layers += [nn.ELU(inplace=True), CausalConv1d(cfg, dim, dim * 2, ratio * 2, stride=ratio)]
            scale *= 2
        layers += [
            nn.ELU(inplace=True),
            CausalConv1d(cfg, scale * cfg.num_filters, cfg.hidden_size, cfg.last_kernel_size),
        ]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Attention(nn.Module):
    """Causal multi-head attention with rotary positions; one SDPA call (``is_causal``)."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.attention_head_dim,
        )
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_heads != self.heads:  # each key/value head serves heads / kv_heads query heads
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        return self.o_proj(out.transpose(1, 2).contiguous().view(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, 0.0)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, 0.0)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    """[B, T, hidden] -> [B, T, hidden], causal over all T (see the module docstring)."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        # inv_freq made on the CPU, as Mimi makes it (a GPU's pow may round differently); float32
        # tables whatever the dtype, as Mimi's (the same products: the same bits).
        self.rotary = Rotary(cfg.attention_head_dim, cfg.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)[None]
        cos, sin = self.rotary(positions, x.dtype)  # [1, 1, T, head_dim]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


class Codebook(nn.Module):
    """Euclidean codebook stored as Mimi's running sums (``embed_sum / cluster_usage``)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.empty(1))
        self.register_buffer("cluster_usage", torch.empty(size))
        self.register_buffer("embed_sum", torch.empty(size, dim))
        self._embed: torch.Tensor | None = None

    @property
    def embed(self) -> torch.Tensor:
        if self._embed is None:
            self._embed = self.embed_sum / self.cluster_usage.clamp(min=CODEBOOK_EPSILON)[:, None]
        return self._embed

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> index of each row's nearest entry [N] (Mimi's ``cdist`` then ``argmin``)."""
        return torch.cdist(x[None].float(), self.embed[None].float(), p=2)[0].argmin(dim=-1)


class VectorQuantization(nn.Module):
    """One codebook, named as in the checkpoint (``layers.N.codebook.*``)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.codebook = Codebook(size, dim)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig, count: int) -> None:
        super().__init__()
        dim = cfg.vector_quantization_hidden_dimension
        book_dim = cfg.codebook_dim if cfg.codebook_dim is not None else cfg.hidden_size
        self.layers = nn.ModuleList([VectorQuantization(cfg.codebook_size, book_dim) for _ in range(count)])
        self.input_proj: nn.Conv1d | None = None
        self.output_proj: nn.Conv1d | None = None
        if dim != cfg.hidden_size:  # output_proj is only for decoding; loaded to keep the layout
            self.input_proj = nn.Conv1d(cfg.hidden_size, dim, 1, bias=False)
            self.output_proj = nn.Conv1d(dim, cfg.hidden_size, 1, bias=False)

    def encode(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """x [B, hidden, T] -> codes [count, B, T]: each codebook quantizes what the ones before left."""
        residual = self.input_proj(x) if self.input_proj is not None else x
        codes = []
        for layer in self.layers[:count]:
            b, d, t = residual.shape
            book = layer.codebook
            index = book.nearest(residual.permute(0, 2, 1).reshape(-1, d)).view(b, t)
            residual = residual - F.embedding(index, book.embed).permute(0, 2, 1)
            codes.append(index)
        return torch.stack(codes)


class SplitResidualVectorQuantizer(nn.Module):
    """The semantic codebook(s), then the acoustic ones, each chain from the same embedding."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.num_semantic = cfg.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVectorQuantizer(cfg, cfg.num_semantic_quantizers)
        self.acoustic_residual_vector_quantizer = ResidualVectorQuantizer(
            cfg, cfg.num_quantizers - cfg.num_semantic_quantizers
        )

    def encode(self, x: torch.Tensor, count: int) -> torch.Tensor:
        codes = self.semantic_residual_vector_quantizer.encode(x, self.num_semantic)
        if count > self.num_semantic:
            acoustic = self.acoustic_residual_vector_quantizer.encode(x, count - self.num_semantic)
            codes = torch.cat([codes, acoustic])
        return codes[:count]


class CodecEncoder(nn.Module):
    """Mimi's encoder, transformer, downsampler and quantizer, under the checkpoint's names."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg)
        self.encoder_transformer = Transformer(cfg)
        self.downsample: CausalConv1d | None = None
        if cfg.downsample_kernel:
            self.downsample = CausalConv1d(
                cfg,
                cfg.hidden_size,
                cfg.hidden_size,
                cfg.downsample_kernel,
                stride=2,
                bias=False,
                pad_mode="replicate",
            )
        self.quantizer = SplitResidualVectorQuantizer(cfg)

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> CodecEncoder:
        return cls(CodecEncoderConfig.from_dict(data))

    @property
    def frame_samples(self) -> int:
        """Input samples per code frame (1920 for the published tokenizer)."""
        return self.cfg.hop_length * (1 if self.downsample is None else 2)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """wav [B, S] (float, the model's dtype) -> codes [B, num_quantizers, ceil(S / frame_samples)].

        A batch is encoded as one padded signal per row, with no padding mask (as the official
        batched encode does): a row shorter than the batch's longest can get a different last code.
        """
        if wav.dim() != 2:
            raise ValueError(f"expected wav [B, S], got shape {tuple(wav.shape)}")
        if not 1 <= num_quantizers <= self.cfg.num_quantizers:
            raise ValueError(
                f"num_quantizers must be in [1, {self.cfg.num_quantizers}], got {num_quantizers}"
            )
        x = self.encoder(wav[:, None])  # [B, hidden, T25]
        x = self.encoder_transformer(x.transpose(1, 2)).transpose(1, 2)
        if self.downsample is not None:
            x = self.downsample(x)
        return self.quantizer.encode(x, num_quantizers).transpose(0, 1)  # [B, Q, T]
