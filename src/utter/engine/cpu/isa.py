"""What this CPU has, and which of torch's int8 kernels compute right and fast on it.

The weight modes (``quant.py``) pick kernels from these answers. Flags alone are not trusted:
oneDNN and fbgemm can be capped below the CPU (``ONEDNN_MAX_CPU_ISA``,
``FBGEMM_ENABLE_INSTRUCTIONS``), and on some CPUs a kernel saturates its sums (AVX2's 16-bit
pair sums) or runs oneDNN's reference loops (int8 x int8 without AMX), so each int8 kernel is
checked on itself once per process: exact on full-range operands, and (oneDNN) timed.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@functools.cache
def fbgemm_available() -> bool:
    """fbgemm's packed int8 and float16 CPU kernels (x86 builds of torch)."""
    engines = torch.backends.quantized.supported_engines
    return "fbgemm" in engines and hasattr(torch.ops.quantized, "linear_dynamic")


def has_int8_dot() -> bool:
    """Whether the CPU adds u8 x s8 products in 32 bits (VNNI, or AMX tiles). Without it the
    int8 GEMMs of fbgemm and oneDNN sum pairs of products in 16 bits (AVX2 ``vpmaddubsw``),
    which saturates for full-range inputs; see :func:`fbgemm_full_range` and
    :func:`onednn_int8_input`, which check the kernels themselves."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags())


_ISA_FLAGS = (
    *("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"),
)


def has_amx_int8() -> bool:
    """Whether this CPU multiplies int8 tiles in AMX (where oneDNN's batched product is flat up to
    16 rows, see ``quant.native_max_batch``)."""
    return "amx_int8" in _cpu_flags()


def cpu_isa() -> str:
    """The vector features of this CPU that pick kernels, for logs and benchmark reports."""
    flags = _cpu_flags()
    return " ".join(f for f in _ISA_FLAGS if f in flags) or "none of " + "/".join(_ISA_FLAGS[:4])


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)


# oneDNN's instruction set names below AVX512_CORE_BF16, its first with bfloat16 products. Capped
# to one of them (ONEDNN_MAX_CPU_ISA, as the tests set to act as an AVX2-only CPU), oneDNN runs
# bfloat16 in its reference code: a codec convolution took 1.25 s instead of 8 ms on a Zen 5
# EPYC capped to AVX2, and a stream made 0.05 audio s per s instead of 1.5.
_ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def onednn_capped_below_bfloat16() -> bool:
    """Whether oneDNN is told to use no instructions with bfloat16 products (ONEDNN_MAX_CPU_ISA,
    or its older name DNNL_MAX_CPU_ISA)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper() in _ONEDNN_ISAS_WITHOUT_BF16


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (GPUs; CPUs with AVX512-BF16 or AMX whose
    oneDNN is not capped below them)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or onednn_capped_below_bfloat16():
        return False
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def int8pack_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def full_range_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights [16, 64] and inputs [4, 64] whose pair sums overflow 16 bits: rows of all
    +-127 (the worst case) and random full-range ones. A kernel that sums in 16 bits somewhere
    gets the all-127 products (64 x 127 x 127) badly wrong; a 2x2 product of ones never shows it."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (16, 64), generator=gen).to(torch.int8)
    x = torch.randint(-127, 128, (4, 64), generator=gen).to(torch.int8)
    w[0], w[1], x[0], x[1] = 127, -127, 127, -127
    return w, x


def onednn_qlinear(
    xq: torch.Tensor,
    src_scale: float,
    packed: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """oneDNN's int8 product in float32 of integer rows ``xq`` (float, values in [-127, 127];
    consumed: shifted in place for uint8) times a packed int8 weight with per-channel ``scales``.
    ``dtype`` is the input type (:func:`onednn_int8_input`): uint8 takes the same integers
    shifted by 128 with a zero point of 128. The layers and the kernel check both call it."""
    zero = 0
    if dtype == torch.uint8:
        xq, zero = xq.add_(128.0), 128
    return torch.ops.onednn.qlinear_pointwise(
        xq.to(dtype), src_scale, zero, packed, scales, zero_points,
        None, 1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip


def _onednn_exact_and_fast(dtype: torch.dtype) -> bool:
    """Whether oneDNN's int8 product with inputs of ``dtype`` is exact on full-range operands and
    runs a real kernel rather than oneDNN's reference loops (timed against float32 ``F.linear``
    of the same shape: a real int8 kernel is about as fast or faster, the reference ~500x slower)."""

    def product(x: torch.Tensor, w: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        ones, zeros = torch.ones(w.shape[0]), torch.zeros(w.shape[0], dtype=torch.int32)
        return onednn_qlinear(x.float(), 1.0, packed, ones, zeros, dtype)

    w, x = full_range_operands()
    if not torch.equal(
        product(x, w, torch.ops.onednn.qlinear_prepack(w, None)), (x.long() @ w.long().T).float()
    ):
        return False
    gen = torch.Generator().manual_seed(0)
    wide = torch.randint(-127, 128, (512, 256), generator=gen).to(torch.int8)
    rows = torch.randint(-127, 128, (16, 256), generator=gen).to(torch.int8)
    packed, wide_f, rows_f = torch.ops.onednn.qlinear_prepack(wide, None), wide.float(), rows.float()
    return _within(lambda: product(rows, wide, packed), lambda: F.linear(rows_f, wide_f), factor=8.0)


def _within(candidate: Callable[[], object], reference: Callable[[], object], factor: float) -> bool:
    """Whether ``candidate`` runs within ``factor`` times ``reference`` (plus 0.2 ms)."""
    best_c, best_r = best_alternating(candidate, reference)
    return best_c < factor * best_r + 2e-4


def best_alternating(
    a: Callable[[], object], b: Callable[[], object], rounds: int = 5
) -> tuple[float, float]:
    """The best seconds of ``rounds`` calls of ``a`` and of ``b``, timed in alternation after a
    warm-up of each. Timing one after the other once let a busy machine (a test suite beside it)
    slow the reference's calls and pass oneDNN's reference loops as a fast kernel; alternating,
    whatever slows one slows the other."""
    a(), b()
    best_a = best_b = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        a()
        middle = time.perf_counter()
        b()
        best_a, best_b = min(best_a, middle - start), min(best_b, time.perf_counter() - middle)
    return best_a, best_b


@functools.cache
def onednn_int8_input() -> torch.dtype | None:
    """The input type under which oneDNN's int8 product is exact and fast on this CPU, or None.

    int8 inputs run AMX's int8 x int8 kernels; without AMX, oneDNN (3.12, as torch 2.13 packs its
    weights) has no int8 x int8 kernel and runs its reference loops: 0.55 s for one 16 x 1024 x
    3072 product on an AVX-512 VNNI Xeon, 1000x its fast kernels. VNNI multiplies uint8 by int8,
    so there the same integers go in shifted by 128 with a zero point of 128 (its brgemm kernel,
    32 us where float32 takes 46; the sums are exact integers either way, so both inputs give
    the same numbers). Without VNNI or AMX (AVX2), or with ``ONEDNN_MAX_CPU_ISA`` capped there,
    its product sums pairs in 16 bits and saturates (127 x 127 + 127 x 127 gives 255): neither
    input is exact, and oneDNN is not used. Checked on the kernel itself, once per process."""
    if not onednn_int8_available():
        return None
    # int8 inputs only with AMX: elsewhere oneDNN has no int8 x int8 kernel, and a timing that
    # misjudged would serve from its reference loops (a minute a frame).
    inputs = (torch.int8, torch.uint8) if has_amx_int8() else (torch.uint8,)
    for dtype in inputs:
        if _onednn_exact_and_fast(dtype):
            return dtype
    logger.info("oneDNN's int8 product is not exact and fast on this CPU (%s): not used", cpu_isa())
    return None


@functools.cache
def fbgemm_full_range() -> bool:
    """Whether fbgemm's int8 product takes 8-bit inputs without saturating (VNNI or AVX-512
    kernels). If not, inputs are quantised to 7 bits (``reduce_range``), which its 16-bit pair
    sums hold exactly. Checked on the kernel, not guessed from the CPU's flags (fbgemm can be
    capped below what the CPU has, with ``FBGEMM_ENABLE_INSTRUCTIONS``)."""
    if not fbgemm_available():
        return False
    w, x = full_range_operands()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qt = torch._make_per_channel_quantized_tensor(w, torch.ones(w.shape[0], dtype=torch.double), zero, 0)
    packed = torch.ops.quantized.linear_prepack(qt, None)
    xf = x.float()
    want = xf @ w.float().T
    got = torch.ops.quantized.linear_dynamic(xf, packed, False)
    return float((got - want).abs().max() / want.abs().max()) < 0.02


@functools.cache
def onednn_int8_available() -> bool:
    """oneDNN's int8 x int8 Linear (x86 builds of torch; AMX or VNNI when the CPU has them)."""
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return False
    try:
        w = torch.ops.onednn.qlinear_prepack(torch.ones(2, 2, dtype=torch.int8), None)
        x = torch.ones(1, 2, dtype=torch.int8)
        y = torch.ops.onednn.qlinear_pointwise(
            x,
            1.0,
            0,
            w,
            torch.ones(2),
            torch.zeros(2, dtype=torch.int32),
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        return bool(torch.equal(y, torch.full((1, 2), 2.0)))
    except (RuntimeError, NotImplementedError):
        return False
