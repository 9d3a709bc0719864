"""Building blocks of the Qwen3-style decoders used by the talker and the code predictor.

Parameter names follow the official checkpoint (``self_attn.q_proj``, ``mlp.gate_proj`` ...), so
weights load by name. Attention reads and writes a static, preallocated KV cache by position
index: shapes stay fixed from step to step, which is what lets the decode step be batched and,
on GPUs, captured as a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig

if TYPE_CHECKING:
    from ..native_stack import NativeStack


class RMSNorm(nn.Module):
    """RMS norm computed in float32, as the official model does, then cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim in float32, cast back, times ``weight`` (the official order)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:  # one fused op, same values
        if weight.dim() == 1:
            return F.rms_norm(x, weight.shape, weight, eps)
        return F.rms_norm(x, x.shape[-1:], None, eps) * weight
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


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

        self._tables: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [B, S] -> cos, sin: [B, 1, S, head_dim]
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]

    def table(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [>= length, head_dim] for positions 0.., for :func:`rotate`.

        Built once (regrown by doubling): the decode loop indexes it instead of recomputing
        angles at every step. The values are those :meth:`forward` computes for each position.
        """
        cached = self._tables.get(dtype)
        if cached is None or cached[0].shape[0] < length:
            n = max(length, 2 * cached[0].shape[0] if cached is not None else 64)
            positions = torch.arange(n, device=self.inv_freq.device)[None]
            cos, sin = self.forward(positions, dtype)
            cos, sin = cos[0, 0], sin[0, 0]
            half = sin.shape[-1] // 2
            cached = (cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1))
            self._tables[dtype] = cached
        return cached


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` with the sign of ``rotate_half`` folded into the sine (see
    ``Rotary.table``): fewer ops, the same products and sums."""
    half = x.shape[-1] // 2
    return torch.addcmul(x * cos, torch.cat((x[..., half:], x[..., :half]), dim=-1), signed_sin)


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
        self.qkv: nn.Linear | None = None  # q, k and v in one product after ``fuse``
        self.qk_norm_weight: nn.Parameter | None = None  # [heads + kv heads, head_dim] after ``fuse``

    def fuse(self) -> None:
        """Replace q/k/v by one Linear (one product, one input quantisation, instead of three),
        and normalise and rotate q and k as one tensor (their heads side by side)."""
        self.qkv = _concat_linears([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj
        w = torch.cat(
            [
                self.q_norm.weight.detach().expand(self.n_heads, -1),
                self.k_norm.weight.detach().expand(self.n_kv, -1),
            ]
        )
        self.qk_norm_weight = nn.Parameter(w.contiguous(), requires_grad=False)
        self.qk_norm_eps = self.q_norm.eps
        del self.q_norm, self.k_norm

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of x [B, S, D] as [B, heads, S, head_dim]: projected, q and k normalised per
        head and rotated (cos and signed sin broadcastable to [B, 1, S, head_dim])."""
        b, s, _ = x.shape
        if self.qk_norm_weight is not None:  # fused
            heads = self.n_heads + self.n_kv
            qk, v = self.qkv(x).split([heads * self.head_dim, self.n_kv * self.head_dim], dim=-1)
            qk = rms_norm(qk.view(b, s, heads, self.head_dim), self.qk_norm_weight, self.qk_norm_eps)
            qk = rotate(qk.transpose(1, 2), cos, sin)  # [B, heads, S, head_dim]
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            q = self.q_norm(q.view(b, s, self.n_heads, self.head_dim)).transpose(1, 2)
            k = self.k_norm(k.view(b, s, self.n_kv, self.head_dim)).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return q, k, v.view(b, s, self.n_kv, self.head_dim).transpose(1, 2)

    def store(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        where: int | torch.Tensor,
    ) -> None:
        """Write k, v [B, n_kv, S, head_dim] into the cache (k, v of [B, n_kv, T, head_dim]) at
        ``where``: the first position of every row (an int: all rows aligned, the common case)
        or positions [B, S]. In place, also inside a compiled layer (inductor writes the slice
        of the cache, it does not copy the cache)."""
        b, _, s, _ = k.shape
        k_cache, v_cache = cache
        if isinstance(where, int):  # aligned rows: a plain slice write
            k_cache[:, :, where : where + s] = k
            v_cache[:, :, where : where + s] = v
        else:  # cache[b, :, pos[b, s]] = k[b, :, s]
            rows = torch.arange(b, device=k.device)[:, None]
            k_cache[rows, :, where] = k.transpose(1, 2).to(k_cache.dtype)
            v_cache[rows, :, where] = v.transpose(1, 2).to(v_cache.dtype)

    def attend(
        self,
        q: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        kv_len: int,
    ) -> torch.Tensor:
        """Attention of q [B, heads, S, head_dim] over the cache's first ``kv_len`` slots:
        returns [B, S, heads * head_dim] (before o_proj). mask: [B or 1, 1, S, kv_len] or None
        (every query sees all kv_len slots)."""
        b, _, s, _ = q.shape
        k_cache, v_cache = cache
        out = F.scaled_dot_product_attention(
            q,
            k_cache[:, :, :kv_len],
            v_cache[:, :, :kv_len],
            attn_mask=mask,
            enable_gqa=self.n_heads != self.n_kv,
        )
        return out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up: nn.Linear | None = None  # gate and up in one product after ``fuse``

    def fuse(self) -> None:
        self.gate_up = _concat_linears([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate).mul_(up))


def _concat_linears(linears: list[nn.Linear]) -> nn.Linear:
    """One Linear whose outputs are the given Linears' outputs side by side (same input)."""
    first = linears[0]
    out = sum(lin.out_features for lin in linears)
    fused = nn.Linear(first.in_features, out, bias=first.bias is not None, device="meta")
    weight = torch.cat([lin.weight.detach() for lin in linears])
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if first.bias is not None:
        fused.bias = nn.Parameter(torch.cat([lin.bias.detach() for lin in linears]), requires_grad=False)
    return fused


def fuse_projections(module: nn.Module) -> nn.Module:
    """Fuse q/k/v and gate/up of every decoder layer under ``module`` (after loading weights by
    their official names). Each fused output equals the separate ones: the same dot products."""
    for sub in list(module.modules()):
        if isinstance(sub, Attention) and sub.qkv is None or isinstance(sub, MLP) and sub.gate_up is None:
            sub.fuse()
    return module


class DecoderLayer(nn.Module):
    """One layer's weights. It has no forward of its own: the stack runs it in regions from one
    attention to the next (``layer_qkv``, ``layer_between``, ``layer_last``), which is also what
    compiled layers compile."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def layer_qkv(
    layer: DecoderLayer,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    where: int | torch.Tensor,
) -> torch.Tensor:
    """A layer's work before attention: input norm, q/k/v, q/k norms, rotary, and k and v
    written into the cache; returns q.

    A plain function of the layer so that one compiled version serves every layer of a stack
    (see ``engine/cuda/fusion.py``); attention itself stays outside it."""
    q, k, v = layer.self_attn.project(layer.input_layernorm(x), cos, sin)
    layer.self_attn.store(k, v, (k_cache, v_cache), where)
    return q


def layer_out(layer: DecoderLayer, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """A layer's work after attention: o_proj, residual, post norm, MLP, residual."""
    x = x + layer.self_attn.o_proj(attended)
    return x + layer.mlp(layer.post_attention_layernorm(x))


def layer_between(
    layer: DecoderLayer,
    following: DecoderLayer,
    x: torch.Tensor,
    attended: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    where: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Everything from one attention to the next: :func:`layer_out` of ``layer``, then
    :func:`layer_qkv` of ``following`` (its cache given). Returns (x, the next q). One region,
    so a compiled version fuses the last residual with the next input norm."""
    x = layer_out(layer, x, attended)
    return x, layer_qkv(following, x, cos, sin, k_cache, v_cache, where)


def layer_last(layer: DecoderLayer, norm: RMSNorm, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The last layer's work after attention, and the stack's final norm."""
    return norm(layer_out(layer, x, attended))


class DecoderStack(nn.Module):
    """Layers + final norm over input embeddings; the caller owns embeddings and heads."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)
        # A whole-stack decode step in C (engine/cpu/native_stack.py), set after loading.
        self.native: NativeStack | None = None
        # Compiled (fused) layer_qkv, layer_between and layer_last (engine/cuda/fusion.py), or None.
        self.fused: tuple[Callable, Callable, Callable] | None = None

    def run(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        positions: int | torch.Tensor,
        kv_len: int,
        eager: bool = False,
    ) -> torch.Tensor:
        """Run all layers on x [B, S, D], attending to cache slots < kv_len (``eager``: not the
        compiled layers, for caches of one-off shapes that would each compile a variant).

        ``positions``: an int p when every row is at positions p..p+S-1 (prefill of one row, the
        code predictor), else a tensor [B, S] (talker rows at different lengths). cache: k, v of
        [layers, B, n_kv, T, head_dim]. A query at position p sees keys at 0..p.
        """
        b, s, _ = x.shape
        cos, sin = self.rotary.table(kv_len, x.dtype)
        if self.native is not None and self.native.accepts(x, cache):
            # Row b at consecutive positions from starts[b], attending to its keys 0 .. position
            # (the mask below, for any kv_len).
            starts = [positions] * b if isinstance(positions, int) else positions[:, 0].tolist()
            return self.native.run(x, cache, starts, (cos, sin))
        fused = None if eager else self.fused
        if fused is not None and x.stride() != (s * x.shape[2], x.shape[2], 1):
            # One memory layout for the compiled regions (torch guards on strides, also those of
            # size-1 dims, which .contiguous() leaves as they are): fewer variants to compile.
            x = x.clone(memory_format=torch.contiguous_format)
        if isinstance(positions, int):  # rope as [1, 1, S, head_dim] (the same rank either way)
            rope = (cos[positions : positions + s][None, None], sin[positions : positions + s][None, None])
            mask = None
            if s > 1 or positions + s < kv_len:
                keys = torch.arange(kv_len, device=x.device)
                queries = torch.arange(positions, positions + s, device=x.device)
                mask = (keys[None, :] <= queries[:, None])[None, None]  # [1, 1, S, kv_len]
        else:
            rope = (cos[positions][:, None], sin[positions][:, None])
            keys = torch.arange(kv_len, device=x.device)
            mask = keys[None, None, None, :] <= positions[:, None, :, None]  # [B, 1, S, kv_len]
        k_all, v_all = cache
        first, between, last = fused or (layer_qkv, layer_between, layer_last)
        layers = self.layers
        q = first(layers[0], x, *rope, k_all[0], v_all[0], positions)
        for i, layer in enumerate(layers):  # attention, then all up to the next one
            attended = layer.self_attn.attend(q, (k_all[i], v_all[i]), mask, kv_len)
            if i + 1 == len(layers):
                return last(layer, self.norm, x, attended)
            x, q = between(layer, layers[i + 1], x, attended, *rope, k_all[i + 1], v_all[i + 1], positions)
        raise AssertionError("a stack has at least one layer")


def new_cache(
    cfg: DecoderConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """A preallocated KV cache: k, v of [layers, batch, n_kv, length, head_dim]."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, length, cfg.head_dim)
    return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
