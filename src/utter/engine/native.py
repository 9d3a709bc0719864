"""The native decode step: a whole decoder stack for one sequence in one C call (CPU).

Why: a single-stream decode step on a CPU is memory-bound in its matrix-vector products and,
in PyTorch eager, dominated by the fixed cost of the ~20 tiny ops around them in every layer.
``kernels/decoder.c`` runs all layers of a stack for one to four tokens of one sequence in one
call (see its header for the math). It is compiled on first use with the machine's C compiler
(``$CC``, else ``cc``/``gcc``; ``-O3 -march=native``) into ``~/.cache/utter/kernels`` and loaded
with ctypes, so no Python or torch headers are needed. Where no compiler works the engine logs
one line and keeps the PyTorch path; ``UTTER_NATIVE=0`` turns it off.

It serves engines that decode one stream at a time (``max_batch == 1``) in the ``int8`` and
``float16`` weight modes on the CPU: their products read int8 weights (per-row scales) or float16
weights against float32 activations. Prefill (many positions at once) stays on the PyTorch path,
which writes the same KV-cache layout.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from .model.layers import DecoderStack
from .quant import Fp16Linear, Int8Linear

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "decoder.c"
MAX_TOKENS = 4  # tokens per call, MAX_ROWS in decoder.c
BLOCK = 4  # output rows per weight block, BLOCK in decoder.c
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
INT8, FLOAT16 = 0, 1


NORMS = ("in_norm", "qk_norm", "post_norm")
PRODUCTS = ("qkv", "o", "gate_up", "down")


class _Layer(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (*NORMS, *PRODUCTS, *(p + "_s" for p in PRODUCTS))]


class _Stack(ctypes.Structure):
    _fields_ = [
        *[
            (name, ctypes.c_int32)
            for name in ("n_layers", "hidden", "heads", "kv_heads", "head_dim", "inter", "weight_type")
        ],  # fmt: skip
        ("eps", ctypes.c_float),
        ("final_norm", ctypes.c_void_p),
        ("layers", ctypes.POINTER(_Layer)),
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


def build(compiler: str | None = None) -> Path:
    """Compile decoder.c (once per source, compiler and CPU) and return the library's path.
    Raises RuntimeError with the compiler's message when it fails."""
    cc = compiler or _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    parts = [source, cc.encode(), " ".join(FLAGS).encode(), _cpu_signature().encode()]
    key = hashlib.sha256(b"\0".join(parts))
    target = cache_dir() / f"decoder-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        command = [cc, *FLAGS, str(SOURCE), "-o", str(out), "-lm"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders never load a half-written file
    logger.info("built native decode kernels: %s", target)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (logged once) when disabled or they cannot be built."""
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
    lib.utter_stack_run.argtypes = [
        ctypes.POINTER(_Stack), ptr, ptr, ctypes.c_int, ptr, ptr, ctypes.c_int64, ctypes.c_int, ptr, ptr
    ]  # fmt: skip
    lib.utter_stack_run.restype = ctypes.c_int
    lib.utter_lanes.restype = ctypes.c_int
    if lib.utter_lanes() == 0:
        logger.warning("native decode kernels unavailable: this CPU has neither AVX-512 nor AVX2+FMA+F16C")
        return None
    return lib


def pack(weight: torch.Tensor, lanes: int) -> torch.Tensor:
    """Block an [n, k] weight for the kernel: per block of BLOCK rows, per run of ``lanes`` inputs,
    the rows' values side by side (so the kernel reads memory strictly in order)."""
    n, k = weight.shape
    if n % BLOCK or k % lanes:
        raise ValueError(f"weight [{n}, {k}] is not a multiple of [{BLOCK}, {lanes}]")
    return weight.reshape(n // BLOCK, BLOCK, k // lanes, lanes).transpose(1, 2).contiguous()


def gemv(weight: torch.Tensor, scales: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """x [m <= 4, k] float32 times an int8 (with per-row ``scales``) or float16 weight [n, k],
    with the native kernel: for tests and measurements."""
    lib = library()
    if lib is None:
        raise RuntimeError("native kernels are not available")
    n, k = weight.shape
    x = x.float().contiguous()
    y = torch.empty(x.shape[0], n)
    kind = INT8 if weight.dtype == torch.int8 else FLOAT16
    s = scales.float().contiguous() if scales is not None else None
    packed = pack(weight, lib.utter_lanes())  # held in a name: the kernel reads its memory
    lib.utter_gemv(
        packed.data_ptr(), s.data_ptr() if s is not None else None, kind,
        x.data_ptr(), y.data_ptr(), x.shape[0], n, k,
    )  # fmt: skip
    return y


def _weights(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(linear, Int8Linear) and linear.bias is None:
        return linear.qweight, linear.scales
    if isinstance(linear, Fp16Linear):
        weight, bias = torch.ops.quantized.linear_unpack_fp16(linear.packed)
        if bias is None:
            return weight.half().contiguous(), None
    raise ValueError(f"no native kernel for {type(linear).__name__}")


class NativeStack:
    """A :class:`DecoderStack`'s weights laid out for ``utter_stack_run`` (kept alive here)."""

    def __init__(self, lib: ctypes.CDLL, stack: DecoderStack) -> None:
        cfg = stack.cfg
        self.lib = lib
        self.keep: list[torch.Tensor] = []
        layers = (_Layer * len(stack.layers))()
        kinds = set()
        lanes = lib.utter_lanes()
        for i, layer in enumerate(stack.layers):
            attn, mlp = layer.self_attn, layer.mlp
            if attn.qk_norm_weight is None or mlp.gate_up is None:
                raise ValueError("fuse projections before building the native stack")
            fields = {
                "in_norm": layer.input_layernorm.weight,
                "qk_norm": attn.qk_norm_weight,
                "post_norm": layer.post_attention_layernorm.weight,
            }
            linears = (attn.qkv, attn.o_proj, mlp.gate_up, mlp.down_proj)
            for name, linear in zip(PRODUCTS, linears):
                weight, scales = _weights(linear)
                kinds.add(weight.dtype)
                fields[name] = pack(weight, lanes)
                if scales is not None:
                    fields[name + "_s"] = scales
            for name, tensor in fields.items():
                tensor = tensor.detach().contiguous()
                if tensor.is_floating_point() and tensor.dtype != torch.float16:
                    tensor = tensor.float().contiguous()
                self.keep.append(tensor)
                setattr(layers[i], name, tensor.data_ptr())
        if len(kinds) != 1:
            raise ValueError(f"mixed weight types {kinds}")
        final = stack.norm.weight.detach().float().contiguous()
        self.keep.append(final)
        self.layers = layers
        self.struct = _Stack(
            cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size, INT8 if torch.int8 in kinds else FLOAT16,
            cfg.rms_norm_eps, final.data_ptr(), layers,
        )  # fmt: skip

    def run(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        position: int,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x [1, S <= 4, D] float32 at positions position..position+S-1 -> final-normed [1, S, D];
        writes those positions of ``cache`` (k, v of [layers, 1, kv_heads, T, head_dim])."""
        k, v = cache
        x = x.contiguous()
        out = torch.empty_like(x)
        cos, sin = rope
        rc = self.lib.utter_stack_run(
            ctypes.byref(self.struct), x.data_ptr(), out.data_ptr(), x.shape[1], k.data_ptr(), v.data_ptr(),
            k.shape[3], position, cos.data_ptr(), sin.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"utter_stack_run failed ({rc}) for {x.shape[1]} tokens at {position}")
        return out

    def accepts(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Whether a call fits this kernel: one float32 sequence of at most MAX_TOKENS tokens on
        the CPU, with a contiguous float32 cache."""
        k, v = cache
        return (
            x.shape[0] == 1
            and x.shape[1] <= MAX_TOKENS
            and x.dtype == torch.float32
            and k.dtype == torch.float32
            and k.is_contiguous()
            and v.is_contiguous()
            and not x.requires_grad
        )


def attach(talker: nn.Module) -> bool:
    """Give the talker's and the code predictor's stacks a native decode step (see module
    docstring for when it applies). Returns whether both got one."""
    lib = library()
    if lib is None:
        return False
    stacks = [talker.model, talker.code_predictor.model]
    try:
        natives = [NativeStack(lib, stack) for stack in stacks]
    except ValueError as exc:
        logger.info("native decode step not used: %s", exc)
        return False
    for stack, native in zip(stacks, natives):
        stack.native = native
    return True
