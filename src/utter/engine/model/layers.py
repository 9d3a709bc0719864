"""Building blocks of the Qwen3-style decoders used by the talker and the code predictor.

Parameter names follow the official checkpoint (``self_attn.q_proj``, ``mlp.gate_proj`` ...), so
weights load by name. Attention reads and writes a static, preallocated KV cache by position
index: shapes stay fixed from step to step, which is what lets the decode step be batched and,
on GPUs, captured as a graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig


class RMSNorm(nn.Module):
    """RMS norm computed in float32, as the official model does, then cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Rotary(nn.Module):
    """Rotary embedding for integer positions.

    The talker's "multimodal" rope gives its three sections the same position for text and
    codec tokens alike, which reduces exactly to this plain rope.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # Built on the CPU explicitly so it is real even when the model is created on the meta device.
        steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float()
        inv_freq = 1.0 / (theta ** (steps / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [B, S] -> cos, sin: [B, 1, S, head_dim]
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query attention with per-head RMS norm on q and k and a static KV cache."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: tuple[torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, S, D]; cache: k, v of [B, n_kv, T, head_dim]; positions: [B, S]; mask: [B, 1, S, T]."""
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, s, self.n_kv, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k_cache, v_cache = cache
        rows = torch.arange(b, device=x.device)[:, None]  # [B, 1]
        # Write this step's keys/values at their positions: cache[b, :, pos[b, s]] = k[b, :, s].
        k_cache[rows, :, positions] = k.transpose(1, 2).to(k_cache.dtype)
        v_cache[rows, :, positions] = v.transpose(1, 2).to(v_cache.dtype)
        t = mask.shape[-1]
        out = F.scaled_dot_product_attention(
            q, k_cache[:, :, :t], v_cache[:, :, :t], attn_mask=mask, enable_gqa=self.n_heads != self.n_kv
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, cache, positions, mask) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, positions, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """Layers + final norm over input embeddings; the caller owns embeddings and heads."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    def run(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
        kv_len: int,
    ) -> torch.Tensor:
        """Run all layers on x [B, S, D] at ``positions`` [B, S], attending to cache slots < kv_len.

        cache: k, v of [layers, B, n_kv, T, head_dim]. A query at position p sees keys at 0..p.
        """
        rope = self.rotary(positions, x.dtype)
        keys = torch.arange(kv_len, device=x.device)
        mask = keys[None, None, None, :] <= positions[:, None, :, None]  # [B, 1, S, kv_len]
        k_all, v_all = cache
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, (k_all[i], v_all[i]), positions, mask)
        return self.norm(x)


def new_cache(
    cfg: DecoderConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """A preallocated KV cache: k, v of [layers, batch, n_kv, length, head_dim]."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, length, cfg.head_dim)
    return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
