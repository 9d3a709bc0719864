"""Weight modes for the decode hot path: 32-bit, 16-bit and 8-bit Linear layers.

Decoding is memory-bound: every frame reads all talker weights once and the code predictor's
weights 15 times, at batch sizes of 1-16, so each Linear is a skinny matrix product and the time
per frame is about (weight bytes) / (bandwidth the kernel reaches) plus per-op overhead. A mode
picks the weight format and the activation dtype together, because on CPUs the kernel speed
depends on the pair. Measured on a 2-core AVX-512 CPU (torch 2.13, one 3072x1024 product, 1 / 8
rows): bfloat16 ``F.linear`` 0.24 / 0.25 ms; float16 ``F.linear`` 0.20 / 0.49 ms; fbgemm's
packed float16 weights with float32 activations 0.15 / 0.22 ms; ``_weight_int8pack_mm`` (int8
weights, bfloat16 activations) 0.10 / 0.35 ms; fbgemm's int8 x int8 product 0.04 / 0.08 ms;
oneDNN's 0.07 / 0.07 ms (flat up to 16 rows, with AMX; on an AVX-512 VNNI CPU without AMX
oneDNN takes uint8 inputs and costs what fbgemm does, 0.45 ms at 16 rows with the input
quantisation, see ``onednn_int8_input``).

Engines that decode at most ``native_max_batch()`` rows at once (16 or 8 by the CPU) on CPUs
where our kernels build (``native.py``) keep float32 activations and multiply by int8 (per-row
scales) or float16 weights in those kernels, with no input quantisation: the products stream the
weights at memory speed, and ``native_stack.py`` runs whole decoder stacks around them in one call.

Otherwise, on x86 CPUs (where fbgemm is built in):

- ``float16`` stores weights as packed float16 for fbgemm and keeps activations in float32:
  1.5x faster than bfloat16 and more precise (10 mantissa bits instead of 7, float32 sums), with
  no float16 overflow risk because activations never are float16.
- ``int8`` stores weights as int8 with one scale per output channel, and quantises each input
  row to int8 on the fly with its own scale (symmetric, max-abs / 127), so the product runs on
  the int8 dot-product units: the fastest mode, and the CPU default. oneDNN serves engines that
  batch, fbgemm single-stream engines without the native kernels (see ``int8_kernel``). Rows
  are quantised independently (fbgemm's one-row call over the row's own range), so a request's
  numbers do not depend on the other rows of the batch. A row with an outlier (largest value
  above ``OUTLIER_CREST`` times its RMS, where 8-bit steps would swallow its small values) is
  computed with the weight-only kernel instead.

Elsewhere (GPUs, CPUs without fbgemm) ``float16`` is plain float16 and ``int8`` is weight-only
int8 with bfloat16 activations (``_weight_int8pack_mm`` on CPUs, dequantise-on-the-fly on GPUs).

Only Linear layers change format. Embeddings and norms follow the activation dtype (norms
compute in float32 internally anyway, see ``RMSNorm``); rotary frequencies stay float32.
``codec_head`` stays a plain Linear in the activation dtype in every mode: the runner and the
prompt builder read the activation dtype from ``codec_head.weight``, and the head is 0.2% of the
bytes read per frame. Which kernels this CPU runs right and fast is checked in ``isa.py``;
``drift.py`` reports how far each mode moves the logits.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .isa import (
    cpu_isa,
    fbgemm_available,
    fbgemm_full_range,
    has_amx_int8,
    has_int8_dot,
    int8pack_available,
    onednn_int8_input,
    onednn_qlinear,
)

logger = logging.getLogger(__name__)

WEIGHT_MODES = ("float32", "bfloat16", "float16", "int8")

_FLOAT_MODES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Linear layers left in the activation dtype: ``codec_head`` (the runner reads the activation
# dtype from its weight) and ``text_projection`` (prefill only, not in the frame loop).
_KEEP_FLOAT = ("codec_head", "text_projection")

# A row whose largest |value| exceeds this many times its RMS goes through the weight-only
# kernel. With per-row 8-bit steps of max/127, the row's typical values carry a quantisation
# noise of about crest / 440 of its RMS (4.5% at 20). Random-weight activations stay below it
# (the heavy-tailed inputs of down_proj reach about 15); a row where a few channels hold most of
# the energy (the attention-sink tokens of real LLMs: crest up to sqrt(width) = 32-55) crosses it.
OUTLIER_CREST = 20.0


def _check_mode(mode: str) -> None:
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight mode {mode!r}; choose one of {', '.join(WEIGHT_MODES)}")


def _packed_cpu(mode: str, device: str | torch.device) -> bool:
    """Whether ``mode`` uses fbgemm's packed kernels on ``device``."""
    return mode in ("int8", "float16") and torch.device(device).type == "cpu" and fbgemm_available()


def activation_dtype(mode: str, device: str | torch.device) -> torch.dtype:
    """The dtype of hidden states, KV caches, embeddings and norms for ``mode`` on ``device``.

    fbgemm's packed kernels take float32 inputs, so both packed CPU modes compute in float32.
    Elsewhere int8 computes in bfloat16 (the dtype the official model runs in, and the one the
    weight-only CPU kernel is fast with) and the float modes in their own dtype.
    """
    _check_mode(mode)
    if _packed_cpu(mode, device):
        return torch.float32
    return torch.bfloat16 if mode == "int8" else _FLOAT_MODES[mode]


def default_weight_mode(device: str | torch.device) -> str:
    """The fastest safe mode on ``device`` (at any batch size: every mode's kernel serves 1-16 rows).

    Measured on the 2-core AVX-512 CPU, 0.6B sizes, random weights: see the README's benchmark
    table. int8 keeps logit cosine > 0.999 against float32 (see ``logit_drift``) and guards
    outlier rows, so it is the CPU default. GPUs: bfloat16, the dtype the model was released in
    (int8 has no fast GPU kernel here, only the dequantising fallback).
    """
    kind = torch.device(device).type
    if kind == "cpu" and (fbgemm_available() or int8pack_available()):
        return "int8"
    return "bfloat16"


def _quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w [out, in] -> (q int8 [out, in], scales float32 [out]).

    The native kernel does it in one parallel pass (most of int8 start-up otherwise); the torch
    ops below compute the same thing elsewhere."""
    fast = native.quantize_rows(w)
    if fast is not None:
        return fast
    peak = w.detach().abs().amax(dim=1).float()  # exact in the stored dtype, and cheaper there
    w = w.detach().float()
    scales = peak.clamp(min=1e-12) / 127.0
    if w.is_cpu:  # one vectorised pass (round half to even, as torch.round)
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # "quantized tensors are deprecated": only the ints are kept
            warnings.simplefilter("ignore", UserWarning)
            q = torch.quantize_per_channel(w, scales.double(), zero, 0, torch.qint8).int_repr()
        return q.clamp_(-127, 127), scales
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


# How many rows at once the native kernels serve, by the CPU they run on (``native_max_batch``):
# engines sized for more take oneDNN's int8 kernel (fbgemm's without VNNI/AMX). The native
# products multiply float32 activations, the int8 kernels 8-bit ones, so the native kernels win
# while a step is bound by reading the weights and lose once it is bound by arithmetic, which
# comes earlier the narrower the vectors. Serving engines at 0.6B, int8, audio s per s through the
# batcher at 1 / 4 or 8 / 16 streams (60 frames each, this project's 2-core Zen 5 EPYC, AVX-512
# with VNNI, no AMX, int8 prefills in both): sized for 16 rows, natively 1.05 / 2.62 / 2.66-2.71,
# oneDNN 0.58-0.62 / 2.19 / 2.42-2.47; sized for 32, natively 2.75 at 32 streams against oneDNN's
# 2.90. The same CPU with every kernel capped to AVX2 (8-float vectors, fbgemm with 7-bit inputs),
# sized for 8: natively 0.76 / 1.18 (4) / 1.24 (8), fbgemm 0.64 / 1.25 / 1.40: one or two streams
# gain natively, four or more lose; 8 rows are kept there, as before this was measured. A real
# AVX2-only CPU (a 2-core Zen 3 EPYC, no VNNI), sized for 8: natively 0.56 / 0.80 (4) / 0.75 (8),
# fbgemm 0.30 / 0.70 / 0.75: the native kernels win or tie at every load there. With AMX,
# oneDNN's product is flat up to 16 rows at a third of a native row's time (see the top of this
# file): 8 rows, unmeasured since prefills became int8. One kernel per engine, chosen at load: a
# request's numbers never depend on the other rows of its batch (and on the native kernels equal
# those of `utter say`). ``UTTER_NATIVE_MAX_BATCH`` overrides.
NATIVE_MAX_BATCH_WIDE = 16  # AVX-512 without AMX
NATIVE_MAX_BATCH = 8  # elsewhere


def native_max_batch() -> int:
    """The most rows an engine may decode at once and still take the native kernels (see the note
    above); ``UTTER_NATIVE_MAX_BATCH`` (a whole number >= 1) overrides."""
    forced = os.environ.get("UTTER_NATIVE_MAX_BATCH")
    if forced is not None:
        if not forced.strip().isdigit() or int(forced) < 1:
            raise ValueError(f"UTTER_NATIVE_MAX_BATCH must be a whole number >= 1, got {forced!r}")
        return int(forced)
    lib = native.library()
    if lib is not None and lib.utter_lanes() == 16 and not has_amx_int8():
        return NATIVE_MAX_BATCH_WIDE
    return NATIVE_MAX_BATCH


# A native engine's talker layers also keep their weights packed for the int8 x int8 kernel
# (their ``rows_kernel``), which multiplies every call that reaches the layers' PyTorch path:
# the native stack sends prefills there (calls of more than one position per row, see
# ``native_stack``) and keeps decode steps. Prefills are compute-bound, and int8 dot products do
# 2-4x the float32 multiply-adds of the native kernel (0.6B shapes at 85 rows, a Zen 5 EPYC:
# 1024->6144 2.90 -> 0.75 ms, 3072->1024 1.48 -> 0.74 ms; a cloned voice's prefill 280 -> 81 ms);
# decode steps (a few rows, memory-bound) stay native. Each position's row is quantised on its
# own, as in every int8 x int8 product here, and which way a call goes depends on the call's
# kind only, so a request's numbers never depend on the other rows of its batch.


def _packed_bytes(layer: Int8Linear | Fp16Linear, element_size: int) -> int:
    """Bytes a layer's weight takes outside its tensors: the native layout (a plain object
    holding a tensor) and fbgemm's pack (an opaque object, counted at the weight's size; oneDNN's
    pack is a tensor attribute, which ``Engine.memory_bytes`` counts as such)."""
    total = 0 if layer.native is None else layer.native.packed.numel() * layer.native.packed.element_size()
    opaque = layer.packed is not None and not isinstance(layer.packed, torch.Tensor)
    return total + (element_size * layer.out_features * layer.in_features if opaque else 0)


class Int8Linear(nn.Module):
    """int8 Linear: y = x @ (qweight * scales[:, None]).T + bias.

    qweight [out, in] int8 with one float32 scale per output channel (symmetric, max-abs / 127).
    Kernels: ``native`` (CPUs where our kernels build: int8 weights against float32 inputs, any
    row count, see ``native.py``; engines decoding one stream), ``fbgemm`` and ``onednn`` (x86
    CPUs, float32 inputs: each input row is quantised to int8 with its own scale, products in
    int8; rows with outliers take the weight-only kernel), ``int8pack`` (CPUs:
    ``_weight_int8pack_mm``, int8 weights times bfloat16 inputs) and ``dequantize`` (anywhere:
    converts the whole weight on every call; also what ``native`` does with other inputs).
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        kernel: str | None = None,
        rows_kernel: str | None = None,
    ) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or qweight.shape[1] < 2:
            raise ValueError("qweight must be a 2-D int8 tensor [out, in >= 2]")
        if scales.shape != (qweight.shape[0],):
            raise ValueError(f"scales must have shape ({qweight.shape[0]},), got {tuple(scales.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.kernel = kernel or int8_kernel(qweight.device)
        if self.kernel == "onednn" and onednn_int8_input() is None:  # wrong numbers or reference loops here
            self.kernel = "fbgemm" if fbgemm_available() else "int8pack"
        # Rows whose max exceeds OUTLIER_CREST x RMS = OUTLIER_CREST / sqrt(in) x L2 norm.
        self.crest_limit = OUTLIER_CREST * self.in_features**-0.5
        self.packed = None
        self.native: native.PackedWeight | None = None  # the weight in the native kernel's layout
        if self.kernel == "native":
            lib = native.library()
            try:
                self.native = native.PackedWeight(lib, self.qweight, self.scales, self.bias) if lib else None
            except ValueError:  # a shape the blocked layout does not take
                pass
            if self.native is None:
                self.kernel = "fbgemm" if fbgemm_available() else "dequantize"
        # The int8 x int8 kernel: this layer's own, or, beside native weights, the one that
        # multiplies the prefills the native stack leaves to the PyTorch path (see above).
        self.rows_kernel = self.kernel if self.kernel in ("fbgemm", "onednn") else None
        if self.native is not None and rows_kernel in ("fbgemm", "onednn"):
            self.rows_kernel = rows_kernel
        if self.rows_kernel == "fbgemm":
            zero = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():  # "quantized tensors are deprecated": fbgemm's packing needs one
                warnings.simplefilter("ignore", UserWarning)
                qt = torch._make_per_channel_quantized_tensor(self.qweight, self.scales.double(), zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(qt, None)
            self.reduce_range = not fbgemm_full_range()
            # A row of [1, 0, ..., -1] fixes fbgemm's per-call input range to [-1, 1]; real rows
            # are divided by their own max-abs first, so each row's steps are its own max / 127.
            self.register_buffer("span_row", torch.zeros(1, self.in_features), persistent=False)
            self.span_row[0, 0], self.span_row[0, -1] = 1.0, -1.0
        elif self.rows_kernel == "onednn":
            self.onednn_input = onednn_int8_input()
            self.packed = torch.ops.onednn.qlinear_prepack(self.qweight, None)
            self.register_buffer(
                "zero_points", torch.zeros(self.out_features, dtype=torch.int32), persistent=False
            )
        if self.native is not None:  # the native layout holds the weight: no plain copy kept
            self.qweight = torch.empty(0, dtype=torch.int8)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, kernel: str | None = None, rows_kernel: str | None = None
    ) -> Int8Linear:
        q, scales = _quantize_rows(linear.weight)
        return cls(q, scales, None if linear.bias is None else linear.bias.detach(), kernel, rows_kernel)

    def packed_bytes(self) -> int:
        """Bytes of the weight copies held outside this module's tensors (see ``_packed_bytes``)."""
        return _packed_bytes(self, element_size=1)

    def int8_weight(self) -> torch.Tensor:
        """The int8 weight [out, in] (from the native layout where that is the only copy)."""
        if self.qweight.numel() or self.native is None:
            return self.qweight
        return native.unpack(self.native.packed)

    def dequantized(self) -> torch.Tensor:
        """The weight [out, in] this layer multiplies by, in float32."""
        return self.int8_weight().float() * self.scales[:, None]

    def _weight_only(self, x2: torch.Tensor) -> torch.Tensor:
        qweight = self.int8_weight()
        if x2.is_cpu and int8pack_available():
            xb = x2.to(torch.bfloat16).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(xb, qweight, self.scales_bf16).to(x2.dtype)
        else:
            y = F.linear(x2, qweight.to(x2.dtype)) * self.scales.to(x2.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _int8_rows(self, x2: torch.Tensor) -> torch.Tensor:
        """Each row quantised with its own scale (max-abs / 127), int8 products, scaled back."""
        x2 = x2.float()
        peak = torch.linalg.vector_norm(x2, float("inf"), dim=1, keepdim=True)  # [M, 1]
        norm = torch.linalg.vector_norm(x2, 2, dim=1, keepdim=True)
        outlier = peak > self.crest_limit * norm
        peak.clamp_(min=1e-30)
        if self.rows_kernel == "fbgemm":
            # Every call, one row included, quantises the same way (never fbgemm's own range for
            # a lone row): a request's numbers must not depend on how many rows share its step.
            scaled = torch.cat([x2 / peak, self.span_row])
            y = torch.ops.quantized.linear_dynamic(scaled, self.packed, self.reduce_range)[:-1]
        else:
            xq = torch.round(x2 * (127.0 / peak))
            y = onednn_qlinear(xq, 1 / 127, self.packed, self.scales, self.zero_points, self.onednn_input)
        y = y * peak if self.bias is None else torch.addcmul(self.bias, y, peak)
        if outlier.any():  # with float32 inputs: natively where the layer has native weights
            rows = outlier[:, 0].nonzero()[:, 0]
            y[rows] = self.native(x2[rows]) if self.native is not None else self._weight_only(x2[rows])
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.rows_kernel is not None:  # with native weights too: the stack sent a prefill
            y = self._int8_rows(x2)
        elif self.native is not None and self.native.takes(x2):
            y = self.native(x2)
        elif self.kernel == "int8pack":
            y = self._weight_only(x2)
        else:
            y = F.linear(x2, self.int8_weight().to(x2.dtype)) * self.scales.to(x2.dtype)
            y = y if self.bias is None else y + self.bias.to(y.dtype)
        return y.to(x.dtype).view(*lead, self.out_features)

    def extra_repr(self) -> str:
        rows = f", rows_kernel={self.rows_kernel}" if self.rows_kernel not in (None, self.kernel) else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}{rows}"


def int8_kernels(module: nn.Module) -> tuple[list[str], list[str]]:
    """The kernels of a module's int8 layers, sorted: (their own, and the prefills' where those
    differ, see ``rows_kernel``), for logs and reports."""
    layers = [m for m in module.modules() if isinstance(m, Int8Linear)]
    own = sorted({m.kernel for m in layers})
    prefills = sorted({m.rows_kernel for m in layers if m.rows_kernel not in (None, m.kernel)})
    return own, prefills


def int8_kernel(device: str | torch.device, max_batch: int = 1) -> str:
    """The int8 kernel for an engine on ``device`` serving up to ``max_batch`` rows at once.

    oneDNN serves batches only where it is both exact and fast: CPUs with VNNI or AMX, checked
    on the kernel itself (:func:`onednn_int8_input`). Without them its AVX2 path saturates and was
    the slowest kernel measured (2.8 s for one 0.6B step at batch 1, against 0.24 s with fbgemm
    on an AVX2-only EPYC), so fbgemm (7-bit inputs there, see :func:`fbgemm_full_range`) serves.
    """
    if torch.device(device).type != "cpu":
        return "dequantize"
    native_rows = native_max_batch()
    if max_batch <= native_rows and native.library() is not None:
        return "native"
    if max_batch > native_rows and has_int8_dot() and onednn_int8_input() is not None:
        return "onednn"
    if fbgemm_available():
        return "fbgemm"
    if onednn_int8_input() is not None:
        return "onednn"
    return "int8pack" if int8pack_available() else "dequantize"


def prefill_kernel(device: str | torch.device) -> str | None:
    """The int8 x int8 kernel for a native engine's talker prefills (see ``rows_kernel``):
    oneDNN where it is exact and fast here (int8 dot-product units, checked on the kernel),
    else fbgemm; None without either (or with ``UTTER_INT8_PREFILL=0``: prefills stay native)."""
    if torch.device(device).type != "cpu" or os.environ.get("UTTER_INT8_PREFILL", "1") == "0":
        return None
    if has_int8_dot() and onednn_int8_input() is not None:
        return "onednn"
    return "fbgemm" if fbgemm_available() else None


class Fp16Linear(nn.Module):
    """float16 weights, float32 inputs and outputs (x86 CPUs): packed for fbgemm, or with
    ``native`` (engines decoding one stream) in the native kernel's layout, which needs no
    fbgemm packing (other inputs then go through fbgemm, packed on first use)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, native_kernel: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().float()
        self.weight = weight.detach().half().contiguous()
        self.native: native.PackedWeight | None = None
        lib = native.library() if native_kernel else None
        if lib is not None:
            try:
                self.native = native.PackedWeight(lib, self.weight, None, self.bias)
            except ValueError:  # a shape the blocked layout does not take
                pass
        self.packed = None if self.native is not None else self._pack()

    def _pack(self) -> torch.ScriptObject:
        packed = torch.ops.quantized.linear_prepack_fp16(self.weight.float(), self.bias)
        if self.native is None:
            self.weight = None  # fbgemm holds its own copy
        return packed

    @classmethod
    def from_linear(cls, linear: nn.Linear, native_kernel: bool = False) -> Fp16Linear:
        return cls(linear.weight, linear.bias, native_kernel)

    def packed_bytes(self) -> int:
        """Bytes of the weight copies held outside this module's tensors (see ``_packed_bytes``)."""
        return _packed_bytes(self, element_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.native is not None and self.native.takes(x2):
            y = self.native(x2)
        else:
            if self.packed is None:
                self.packed = self._pack()
            y = torch.ops.quantized.linear_dynamic_fp16(x2.float(), self.packed)
        return y.to(x.dtype).view(*lead, self.out_features)

    def extra_repr(self) -> str:
        kernel = "native" if self.native is not None else "fbgemm-fp16"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={kernel}"


def _cast_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters (not buffers: rotary frequencies stay float32) to ``dtype``.

    The text embedding table keeps the dtype it was loaded in (``Talker.embed_text`` casts the
    rows it looks up): it is read a few rows per request, and 311M values at 0.6B."""
    for name, sub in module.named_modules():
        if isinstance(sub, (Int8Linear, Fp16Linear)):
            continue  # their biases stay float32 (the kernels add them in float32)
        if name.endswith("text_embedding"):
            continue
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                sub._parameters[name] = nn.Parameter(p.detach().to(dtype), requires_grad=False)


def _convert_linears(module: nn.Module, make: Callable[[str, nn.Linear], nn.Module]) -> int:
    """Replace every nn.Linear under ``module`` (except ``_KEEP_FLOAT``) by ``make(name, linear)``."""
    targets = [
        (name, sub)
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Linear) and not any(part in _KEEP_FLOAT for part in name.split("."))
    ]
    # Packing is single-threaded C++ that releases the GIL: one worker per core halves load time.
    workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(workers, thread_name_prefix="utter-pack") as pool:
        made = list(pool.map(lambda item: make(*item), targets))
    for (name, _), new in zip(targets, made):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, new)
    return len(targets)


@torch.no_grad()
def apply_weight_mode(
    module: nn.Module, mode: str, max_batch: int = 1, kernel: str | None = None
) -> nn.Module:
    """Convert a talker (or any module holding Linear layers) to ``mode`` in place; returns it.

    Conversion reads the weights as loaded, so load in float32 (or the checkpoint's bfloat16)
    for int8 and float16. Afterwards every floating parameter is in ``activation_dtype(mode,
    device)``, which the caller must use for KV caches and hidden states (the runner reads it
    from ``codec_head.weight.dtype``, which this function keeps true). ``max_batch`` (the most rows
    the engine decodes at once) picks the int8 kernel, see ``int8_kernel``, unless ``kernel`` names one.
    """
    _check_mode(mode)
    param = next(module.parameters())
    dtype = activation_dtype(mode, param.device)
    converted = 0
    if mode == "int8":
        kernel = kernel or int8_kernel(param.device, max_batch)
        if dtype != torch.float32 and kernel in ("fbgemm", "onednn"):
            kernel = "int8pack"  # activations are not float32 here (no fbgemm): weight-only int8
        # A native engine's talker layers (not the code predictor's: its prompts are 2 rows) also
        # get the int8 x int8 kernel for their prefills (see rows_kernel).
        wide = prefill_kernel(param.device) if kernel == "native" else None

        def make(name: str, linear: nn.Linear) -> Int8Linear:
            rows = wide if name.startswith("model.layers.") else None
            return Int8Linear.from_linear(linear, kernel, rows)

        converted = _convert_linears(module, make)
        kernels, _ = int8_kernels(module)
        prefill = f", {wide} for prefills" if wide else ""
        logger.info(
            "int8 kernel %s for up to %d rows%s (CPU: %s)", "/".join(kernels), max_batch, prefill, cpu_isa()
        )
    elif _packed_cpu(mode, param.device):
        small = max_batch <= native_max_batch()  # small batches: the native kernels where they build
        converted = _convert_linears(module, lambda _, linear: Fp16Linear.from_linear(linear, small))
    _cast_parameters(module, dtype)
    logger.info("weight mode %s: activations in %s, %d Linear layers converted", mode, dtype, converted)
    return module
