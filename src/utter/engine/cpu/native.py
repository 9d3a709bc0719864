"""The native CPU kernels (``kernels/decoder.c``): building, loading and their raw entry points.

Why C: a single-stream decode step on a CPU is memory-bound in its matrix-vector products and,
in PyTorch eager, dominated by the fixed cost of the ~20 tiny ops around them in every layer;
``utter_stack_run`` runs all layers of a stack for the tokens of a batch of sequences in one call (see
``native_stack.py`` for where it is used). The same library quantises and lays out weights at
load time in one parallel pass each.

It is compiled on first use with the machine's C compiler (``$CC``, else ``cc``/``gcc``;
``-O3 -march=native -fopenmp``; ``UTTER_NATIVE_MARCH`` names another target)
into ``~/.cache/utter/kernels`` (``UTTER_KERNEL_CACHE``) and
loaded with ctypes, so no Python or torch headers are needed. Where no compiler works the engine
logs one line and keeps the PyTorch path; ``UTTER_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from .isa import best_alternating

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "decoder.c"
BLOCK = 4  # output rows per weight block, BLOCK in decoder.c
FLAGS = ["-O3", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
INT8, FLOAT16 = 0, 1
BUILD_TIMEOUT_S = 300


NORMS = ("in_norm", "qk_norm", "post_norm")
PRODUCTS = ("qkv", "o", "gate_up", "down")


class LayerStruct(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (*NORMS, *PRODUCTS, *(p + "_s" for p in PRODUCTS))]


class StackStruct(ctypes.Structure):
    _fields_ = [
        *[
            (name, ctypes.c_int32)
            for name in ("n_layers", "hidden", "heads", "kv_heads", "head_dim", "inter", "weight_type")
        ],  # fmt: skip
        ("eps", ctypes.c_float),
        ("final_norm", ctypes.c_void_p),
        ("layers", ctypes.POINTER(LayerStruct)),
    ]


def cache_dir() -> Path:
    root = os.environ.get("UTTER_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "utter", "kernels"
    )
    return Path(root)


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: a library built for one CPU must not load on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def march() -> str:
    """The ``-march`` the kernels are built for: this CPU, or ``UTTER_NATIVE_MARCH`` (tests build
    the AVX2 code path on AVX-512 machines with ``x86-64-v3``, so both paths are checked anywhere)."""
    return os.environ.get("UTTER_NATIVE_MARCH") or "native"


def build(compiler: str | None = None) -> Path:
    """Compile decoder.c (once per source, compiler and CPU) and return the library's path.
    Raises RuntimeError with the compiler's message when it fails."""
    cc = compiler or _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    flags = [*FLAGS, f"-march={march()}"]
    parts = [source, cc.encode(), " ".join(flags).encode(), _cpu_signature().encode()]
    key = hashlib.sha256(b"\0".join(parts))
    target = cache_dir() / f"decoder-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        command = [cc, *flags, str(SOURCE), "-o", str(out), "-lm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{cc} took over {BUILD_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders never load a half-written file
    logger.info("built native decode kernels for -march=%s: %s", march(), target)
    return target


_LIBRARY_LOCK = threading.Lock()
_LIBRARY: list[ctypes.CDLL | None] = []  # the loaded library (or None), once loaded


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (logged once) when disabled or they cannot be built.

    Loaded once under a lock: the weight conversion asks from several threads at once, and each
    had built, loaded and timed the kernels itself (``library.cache_clear()`` forgets it)."""
    with _LIBRARY_LOCK:
        if not _LIBRARY:
            _LIBRARY.append(_load())
        return _LIBRARY[0]


library.cache_clear = _LIBRARY.clear  # type: ignore[attr-defined]


def _load() -> ctypes.CDLL | None:
    if os.environ.get("UTTER_NATIVE", "1") == "0":
        return None
    if platform.system() == "Windows":
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as exc:
        logger.warning("native decode kernels unavailable, using PyTorch ops: %s", exc)
        return None
    ptr = ctypes.c_void_p
    lib.utter_gemv.argtypes = [ptr, ptr, ctypes.c_int, ptr, ptr, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.utter_gemv.restype = None
    i64, i32, ints = ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_int32)
    lib.utter_stack_run.argtypes = [
        ctypes.POINTER(StackStruct), ptr, ptr, i32, i32, ptr, ptr, i64, i64, i64, ints, ptr, ptr
    ]  # fmt: skip
    lib.utter_stack_run.restype = ctypes.c_int
    lib.utter_quantize_rows.argtypes = [ptr, ctypes.c_int, i64, i64, ptr, ptr]
    lib.utter_quantize_rows.restype = None
    lib.utter_pack.argtypes = [ptr, ctypes.c_int, i64, i64, ptr]
    lib.utter_pack.restype = None
    lib.utter_lanes.restype = ctypes.c_int
    lib.utter_set_tile_rows.argtypes = [ctypes.c_int]
    lib.utter_set_tile_rows.restype = None
    if lib.utter_lanes() == 0:
        logger.warning("native decode kernels unavailable: this CPU has neither AVX-512 nor AVX2+FMA+F16C")
        return None
    set_tile_rows(lib, _chosen_tile_rows(lib))
    return lib


NEVER = 1 << 30  # a tile_rows that no call reaches


def set_tile_rows(lib: ctypes.CDLL, rows: int) -> None:
    """Calls of at least ``rows`` tokens convert weight blocks to float32 tiles first (see gemv
    in decoder.c); the results are the same either way."""
    lib.utter_set_tile_rows(min(rows, NEVER))


def _chosen_tile_rows(lib: ctypes.CDLL) -> int:
    """``UTTER_NATIVE_TILE_ROWS`` (0: never), else timed here: converting weights on the fly
    against tiles, at a decode batch (8 tokens) and a prefill (128), on one int8 weight of the
    0.6B talker's MLP (3072 x 1024, in L2/L3: the arithmetic, not memory, is compared).
    About 40 ms once per process."""
    forced = os.environ.get("UTTER_NATIVE_TILE_ROWS")
    if forced is not None:
        if not forced.strip().isdigit():
            raise ValueError(f"UTTER_NATIVE_TILE_ROWS must be a whole number >= 0 (0: never), got {forced!r}")
        return int(forced) or NEVER
    n, k = 3072, 1024
    gen = torch.Generator().manual_seed(0)
    weight = _blocked(torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen), lib.utter_lanes())
    scales = torch.ones(n)

    def call(rows: int, tile: bool) -> Callable[[], object]:
        x, y = torch.randn(rows, k, generator=gen), torch.empty(rows, n)

        def run() -> None:  # x and y are read here, so they live as long as this call does
            set_tile_rows(lib, rows if tile else NEVER)
            lib.utter_gemv(weight.data_ptr(), scales.data_ptr(), INT8, x.data_ptr(), y.data_ptr(), rows, n, k)

        return run

    def tiles_win(rows: int) -> bool:
        tiled, on_the_fly = best_alternating(call(rows, True), call(rows, False))
        return tiled < on_the_fly

    chosen = NEVER
    if tiles_win(128):
        chosen = 5 if tiles_win(8) else 33
    tiles = f"calls of {chosen}+ tokens" if chosen < NEVER else "no calls"
    logger.info("native products: weight blocks converted to float32 tiles first in %s", tiles)
    return chosen


def pack(weight: torch.Tensor, lanes: int) -> torch.Tensor:
    """Block an [n, k] weight for the kernel: per block of BLOCK rows, per run of ``lanes`` inputs,
    the rows' values side by side (so the kernel reads memory strictly in order)."""
    n, k = weight.shape
    if n % BLOCK or k % lanes:
        raise ValueError(f"weight [{n}, {k}] is not a multiple of [{BLOCK}, {lanes}]")
    lib = library()
    if lib is None or weight.element_size() not in (1, 2):
        return _blocked(weight, lanes)
    weight = weight.contiguous()
    out = torch.empty(n // BLOCK, k // lanes, BLOCK, lanes, dtype=weight.dtype)
    lib.utter_pack(weight.data_ptr(), weight.element_size(), n, k, out.data_ptr())
    return out


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The [n, k] weight of a blocked one (``pack``'s inverse)."""
    blocks, runs, block, lanes = packed.shape
    return packed.transpose(1, 2).reshape(blocks * block, runs * lanes)


def _blocked(weight: torch.Tensor, lanes: int) -> torch.Tensor:
    """The blocked layout with torch ops (what ``utter_pack`` writes in one parallel pass)."""
    n, k = weight.shape
    return weight.reshape(n // BLOCK, BLOCK, k // lanes, lanes).transpose(1, 2).contiguous()


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Symmetric per-row int8 of a float32 or bfloat16 CPU weight [n, k] in one parallel pass:
    (q int8 [n, k], scales float32 [n]) with scale = max|row| / 127 and q = round(w / scale).
    None where the kernels are unavailable or the weight is of another kind."""
    if not w.is_cpu or w.dim() != 2 or w.dtype not in (torch.float32, torch.bfloat16):
        return None  # checked first: a GPU engine's weights never build the CPU kernels
    lib = library()
    if lib is None:
        return None
    w = w.detach().contiguous()
    q = torch.empty(w.shape, dtype=torch.int8)
    scales = torch.empty(w.shape[0], dtype=torch.float32)
    lib.utter_quantize_rows(
        w.data_ptr(), int(w.dtype == torch.bfloat16), *w.shape, q.data_ptr(), scales.data_ptr()
    )
    return q, scales


class PackedWeight:
    """An int8 (with per-row scales) or float16 weight [n, k] (and a bias) in the kernel's blocked
    layout, as a function of float32 inputs [m, k] -> [m, n] (weights against float32 inputs)."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        weight: torch.Tensor,
        scales: torch.Tensor | None,
        bias: torch.Tensor | None = None,
    ) -> None:
        self.lib = lib
        self.bias = None if bias is None else bias.detach().float()
        self.n, self.k = weight.shape
        self.kind = INT8 if weight.dtype == torch.int8 else FLOAT16
        if (self.kind == INT8) != (scales is not None):
            raise ValueError("int8 weights need their scales; float16 weights have none")
        self.packed = pack(weight, lib.utter_lanes())
        self.scales = scales.float().contiguous() if scales is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] != self.k:
            raise ValueError(f"input {tuple(x.shape)} does not fit [rows, {self.k}]")
        x = x.float().contiguous()
        y = torch.empty(x.shape[0], self.n)
        scales = self.scales.data_ptr() if self.scales is not None else None
        self.lib.utter_gemv(
            self.packed.data_ptr(), scales, self.kind, x.data_ptr(), y.data_ptr(), x.shape[0], self.n, self.k
        )
        return y if self.bias is None else y.add_(self.bias)

    @staticmethod
    def takes(x: torch.Tensor) -> bool:
        """Whether ``x`` is an input of this kernel (float32 on the CPU); others take the layer's
        PyTorch path."""
        return x.dtype == torch.float32 and x.is_cpu


def gemv(weight: torch.Tensor, scales: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """x [m, k] float32 times an int8 (with per-row ``scales``) or float16 weight [n, k],
    with the native kernel: for tests and measurements."""
    lib = library()
    if lib is None:
        raise RuntimeError("native kernels are not available")
    return PackedWeight(lib, weight, scales)(x)
