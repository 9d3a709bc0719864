"""Weight modes for the decode hot path: 32-bit, 16-bit and weight-only 8-bit Linear layers.

Decoding is memory-bound: every frame reads all talker weights once and the code predictor's
weights 15 times, at batch sizes of 1-16, so each Linear is a skinny matrix-vector product and
the time per frame is about (weight bytes) / (bandwidth the matmul kernel reaches). A mode picks
both the weight format and the activation dtype, because on CPUs the kernel speed depends on the
pair, not on the bytes alone (measured on a 2-core AVX-512 CPU with torch 2.13, see
``default_weight_mode``):

- ``torch.ops.aten._weight_int8pack_mm`` is fast only with bfloat16 activations: one 3072x1024
  product at B=1 takes 0.41 ms with bfloat16 inputs, 2.6 ms with float32 and 4.8 ms with
  float16 (a reference loop). So "int8" means int8 weights with bfloat16 activations.
  Its cost grows with the rows of the input (it re-reads the weight per small block of rows),
  so int8 only wins for small batches (see ``INT8_MAX_BATCH``). When a model serves larger
  batches, its int8 layers also keep a dense bfloat16 copy of the weight for those (more
  memory, the best kernel at every batch size).
- float16 weights run at the same speed with float16 activations as with float32 or bfloat16
  activations cast at each Linear; the mode uses float16 activations: one dtype and half the
  KV-cache bytes of float32. Real weights can overflow float16 activations where bfloat16 ones
  do not, one reason float16 is never a default.

Only Linear layers are converted to 8-bit. Embeddings and norms follow the activation dtype
(norms compute in float32 internally anyway, see ``RMSNorm``); rotary frequencies (buffers) stay
float32. ``codec_head`` stays a plain Linear in the activation dtype in every mode: the runner and
the prompt builder read the activation dtype from ``codec_head.weight``, and the head is 0.2% of
the bytes read per frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

WEIGHT_MODES = ("float32", "bfloat16", "float16", "int8")

_FLOAT_MODES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Linear layers left in the activation dtype in int8 mode: ``codec_head`` (the runner reads the
# activation dtype from its weight) and ``text_projection`` (prefill only, not in the frame loop).
_KEEP_FLOAT = ("codec_head", "text_projection")


def _int8_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def _check_mode(mode: str) -> None:
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight mode {mode!r}; choose one of {', '.join(WEIGHT_MODES)}")


def activation_dtype(mode: str, device: str | torch.device) -> torch.dtype:
    """The dtype of hidden states, KV caches, embeddings and norms for ``mode`` on ``device``.

    16- and 32-bit modes compute in their weight dtype. int8 computes in bfloat16: the only
    activation dtype for which the CPU int8 kernel is fast, and the dtype the official model
    runs in, so it adds no overflow risk on real weights.
    """
    _check_mode(mode)
    return torch.bfloat16 if mode == "int8" else _FLOAT_MODES[mode]


# Largest batch for which int8 beats bfloat16 on CPUs (0.6B, per frame, one thread: B=4 int8
# 478 ms vs bfloat16 520 ms; B=8 int8 760 ms vs bfloat16 566 ms).
INT8_MAX_BATCH = 4
# The int8 kernel's cost grows linearly with rows (3072 x 1024, bfloat16 inputs, one thread:
# 0.20 ms at 1 row, 1.34 ms at 16, 5.3 ms at 64), while dequantising the weight and using a
# bfloat16 matmul costs about 1.3 ms flat: above this many rows (prefills) dequantise instead.
INT8_KERNEL_MAX_ROWS = 16


def default_weight_mode(device: str | torch.device, batch: int = 1) -> str:
    """The fastest safe mode on ``device`` (``batch``: the most rows decoded at once).

    Measured on the 2-core AVX-512 CPU, 0.6B sizes, random weights, B=1, one thread, modes
    interleaved (milliseconds per frame, code predictor's 15 steps + talker step):
    float32 572 (423 + 150), bfloat16 506 (376 + 134), float16 606 (461 + 150),
    int8 319 (235 + 86). int8 keeps logit cosine > 0.999 against float32 (see ``logit_drift``)
    and computes in bfloat16 like the official model, so it is the CPU default; above
    ``INT8_MAX_BATCH`` rows its layers use a dense bfloat16 copy (see ``apply_weight_mode``).
    GPUs: bfloat16, the dtype the model was released in (Int8Linear has no fast GPU kernel here,
    only the dequantising fallback).
    """
    kind = torch.device(device).type
    if kind == "cpu" and _int8_kernel_available():
        return "int8"
    return "bfloat16"


class Int8Linear(nn.Module):
    """Weight-only int8 Linear: y = x @ (qweight * scales[:, None]).T + bias.

    qweight [out, in] int8 with one scale per output channel (symmetric, max-abs / 127). On CPUs
    with bfloat16 inputs it calls ``torch.ops.aten._weight_int8pack_mm`` (A: 2-D, last dim
    contiguous, float32/bfloat16/float16 but the same dtype as scales; B: int8 [N, K]; scales:
    1-D [N]; no alignment needed on N or K in torch 2.13). Elsewhere it dequantises on the fly,
    which is correct on any device but converts the whole weight on every call.
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        dense: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError("qweight must be a 2-D int8 tensor [out, in]")
        if scales.shape != (qweight.shape[0],):
            raise ValueError(f"scales must have shape ({qweight.shape[0]},), got {tuple(scales.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.to(scales.dtype), requires_grad=False)
        self.use_kernel = qweight.device.type == "cpu" and _int8_kernel_available()
        # Optional dense copy [out, in] in the activation dtype, for inputs of many rows.
        self.register_buffer("dense", None if dense is None else dense.contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype, keep_dense: bool = False) -> Int8Linear:
        """Quantise ``linear`` (scales computed in float32), computing in ``dtype`` afterwards;
        ``keep_dense`` also keeps the weight in ``dtype`` for inputs of more than
        ``INT8_MAX_BATCH`` rows."""
        w = linear.weight.detach().float()
        # Round the scales to ``dtype`` first (the kernel takes them in the input dtype), so every
        # weight is within half a quantisation step of its dequantised value.
        scales = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(dtype)  # [out]
        q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scales, bias, linear.weight.detach().to(dtype) if keep_dense else None)

    def dequantized(self) -> torch.Tensor:
        """The weight [out, in] this layer multiplies by, in float32 (exact: 8-bit x 8-bit mantissas)."""
        return self.qweight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [M, K]: the kernel takes 2-D inputs only
        fast = x2.is_cpu and x2.dtype == torch.bfloat16 and self.scales.dtype == torch.bfloat16
        rows = x2.shape[0]
        if self.dense is not None and (rows > INT8_MAX_BATCH or not (self.use_kernel and fast)):
            y = F.linear(x2, self.dense.to(x2.dtype))
        elif self.use_kernel and fast and rows <= INT8_KERNEL_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
        else:
            y = F.linear(x2, self.qweight.to(x2.dtype)) * self.scales.to(x2.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        kernel = "int8pack_mm" if self.use_kernel else "dequantize"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={kernel}"


def _cast_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters (not buffers: rotary frequencies stay float32) to ``dtype``."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                sub._parameters[name] = nn.Parameter(p.detach().to(dtype), requires_grad=False)


def _quantise_linears(module: nn.Module, dtype: torch.dtype, keep_dense: bool) -> int:
    """Replace every nn.Linear under ``module`` (except ``_KEEP_FLOAT``) by an Int8Linear."""
    targets = [
        (name, sub)
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Linear) and not any(part in _KEEP_FLOAT for part in name.split("."))
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, Int8Linear.from_linear(linear, dtype, keep_dense))
    return len(targets)


@torch.no_grad()
def apply_weight_mode(module: nn.Module, mode: str, max_batch: int = 1) -> nn.Module:
    """Convert a talker (or any module holding Linear layers) to ``mode`` in place; returns it.

    With int8 and ``max_batch`` above ``INT8_MAX_BATCH`` (a server batching requests), each
    layer keeps a dense copy for those larger batches: about 1.5x the int8 weight memory.

    Quantisation reads the weights as loaded, so load in float32 or the checkpoint's bfloat16
    for int8. Afterwards every floating parameter is in ``activation_dtype(mode, device)``, which
    the caller must use for KV caches and hidden states (the runner reads it from
    ``codec_head.weight.dtype``, which this function keeps true).
    """
    _check_mode(mode)
    param = next(module.parameters())
    dtype = activation_dtype(mode, param.device)
    keep_dense = max_batch > INT8_MAX_BATCH
    quantised = _quantise_linears(module, dtype, keep_dense) if mode == "int8" else 0
    _cast_parameters(module, dtype)
    logger.info("weight mode %s: activations in %s, %d Linear layers in int8", mode, dtype, quantised)
    return module


# ---------------------------------------------------------------------------- logit drift
@dataclass(frozen=True)
class Drift:
    """How far a candidate's logits move from a reference's on the same inputs.

    Cosines are per logit row (mean and worst); top-1 is the share of rows whose argmax agrees.
    """

    talker_cosine: float
    talker_cosine_min: float
    talker_top1: float
    predictor_cosine: float
    predictor_cosine_min: float
    predictor_top1: float


def _compare(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float, float]:
    ref, cand = ref.float().flatten(0, -2), cand.float().flatten(0, -2)  # [rows, V]
    cos = F.cosine_similarity(ref, cand, dim=-1)
    top1 = (ref.argmax(-1) == cand.argmax(-1)).float().mean()
    return cos.mean().item(), cos.min().item(), top1.item()


def _talker_logits(talker: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Talker over input embeddings x [B, S, D] from position 0: logits [B, S, V], hidden [B, S, D]."""
    from .model.layers import new_cache  # local import: no model import at module load

    dtype, device = talker.codec_head.weight.dtype, talker.codec_head.weight.device
    b, s, _ = x.shape
    cache = new_cache(talker.model.cfg, b, s, device, dtype)
    hidden = talker.model.run(x.to(dtype), cache, torch.arange(s, device=device).expand(b, s), kv_len=s)
    return talker.codec_head(hidden), hidden


def _predictor_logits(talker: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Code predictor over x [B, G, D] (talker hidden, then one embedding per codebook) -> [B, G-1, V]."""
    from .model.layers import new_cache

    dtype, device = talker.codec_head.weight.dtype, talker.codec_head.weight.device
    cp = talker.code_predictor
    b, g, _ = x.shape
    cache = new_cache(cp.model.cfg, b, g, device, dtype)
    h = cp.small_to_mtp_projection(x.to(dtype))
    out = cp.model.run(h, cache, torch.arange(g, device=device).expand(b, g), kv_len=g)
    # Head j predicts codebook j+1 from the position holding codebook j (position j+1), as in decoding.
    return torch.stack([head(out[:, j + 1]) for j, head in enumerate(cp.lm_head)], dim=1)


@torch.inference_mode()
def logit_drift(
    reference: nn.Module, candidate: nn.Module, batch: int = 2, length: int = 16, seed: int = 0
) -> Drift:
    """Compare talker and code-predictor logits of two talkers on the same random inputs.

    Inputs are the reference's own embeddings of random text and codec ids, so they have the
    scale the model sees, and both stacks run them through all layers with causal attention
    (drift accumulates as in decoding). The code predictor's input is the reference talker's
    last hidden state followed by embeddings of random codes, one position per codebook.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = reference.cfg
    device = reference.codec_head.weight.device
    codebook = cfg.code_predictor.vocab_size

    def ids(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen).to(device)

    text = reference.embed_text(ids(cfg.text_vocab_size, batch, length))
    talker_in = reference.embed_codec(ids(codebook, batch, length)) + text  # [B, S, D]
    ref_talker, hidden = _talker_logits(reference, talker_in)
    codes = ids(codebook, batch, cfg.num_code_groups - 1)  # codebooks 0..G-2 feed the predictor
    embeds = [reference.embed_codec(codes[:, :1])]
    embeds += [
        emb(codes[:, j + 1 : j + 2])
        for j, emb in enumerate(reference.code_predictor.model.codec_embedding[:-1])
    ]
    cp_in = torch.cat([hidden[:, -1:], *embeds], dim=1)  # [B, G, D]
    t = _compare(ref_talker, _talker_logits(candidate, talker_in)[0])
    p = _compare(_predictor_logits(reference, cp_in), _predictor_logits(candidate, cp_in))
    return Drift(t[0], t[1], t[2], p[0], p[1], p[2])
