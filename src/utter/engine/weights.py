"""Load the official ``model.safetensors`` into our modules.

Our module tree mirrors the official parameter names (``talker.model.layers.0.self_attn.q_proj``,
``speaker_encoder.blocks.0.conv`` ...), so the mapping is the identity and any name missing or
left over is an error. Modules are created on the meta device and the tensors assigned
directly, so a checkpoint is read once and never initialised twice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

logger = logging.getLogger(__name__)


def load_weights(
    module: nn.Module, files: list[Path], device: torch.device, dtype: torch.dtype | None
) -> None:
    """Assign every parameter of ``module`` from ``files``; fail loudly on missing or extra names.

    ``dtype`` None keeps each tensor as stored (a caller that converts the weights next, such as
    int8 quantisation, saves a full-size conversion pass)."""
    expected = dict(module.state_dict(keep_vars=True))
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    # On a GPU the tensors are read straight into device memory and converted there: no CPU
    # copy, and the dtype cast runs on the GPU (part of the cold start, issue #10).
    source = str(device) if device.type == "cuda" else "cpu"
    for path in files:
        with safe_open(str(path), framework="pt", device=source) as f:
            for name in f.keys():
                if name not in expected:
                    unexpected.append(name)
                    continue
                tensor = f.get_tensor(name)
                want = expected[name]
                if tuple(tensor.shape) != tuple(want.shape):
                    raise ValueError(
                        f"{path.name}: {name} has shape {tuple(tensor.shape)}, expected {tuple(want.shape)}"
                    )
                if tensor.is_floating_point() and dtype is not None:
                    tensor = tensor.to(dtype)
                loaded[name] = tensor.to(device)
    missing = sorted(set(expected) - set(loaded))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    module.load_state_dict(loaded, strict=True, assign=True)
    # Non-persistent buffers (rotary frequencies) were built on the CPU; move them along.
    for name, buf in list(module.named_buffers()):
        if buf.device != device:
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            owner._buffers[name.rsplit(".", 1)[-1]] = buf.to(device)


# A tensor at least this large that is still read from the checkpoint after loading is mapped on
# its own, lazily (a text embedding of 151,936 rows, of which a session reads a few hundred).
LAZY_MIN_BYTES = 64 << 20
# A file whose tensors still in use hold this share of it or more keeps its map (nothing to gain).
KEEP_MAP_SHARE = 0.5
_NUMPY = {
    "BF16": (np.uint16, torch.bfloat16),
    "F16": (np.float16, torch.float16),
    "F32": (np.float32, torch.float32),
}


def release_file_views(module: nn.Module, files: list[Path]) -> int:
    """Let go of the checkpoint files' memory maps once loading has converted what it converts.

    On a CPU the safetensors files are memory-mapped and tensors kept as stored are views of that
    map; one such view (the bfloat16 text embedding of an int8 engine, a codec encoder beside a
    decoder cast to bfloat16) keeps the whole map alive, and with it every page the conversion
    read: about 1.1 GB of the 0.6B checkpoint's stale bfloat16 layers stayed in the process's
    resident memory. Where the views left hold under half of a file, each is copied (small ones)
    or mapped on its own from its place in the file (large ones, read lazily as before), so the
    map closes; a file mostly still in use (weights kept as stored) keeps its map. Returns how
    many tensors were moved. Linux only (it finds the maps in /proc); elsewhere a no-op."""
    # The loader's maps are of the whole file; smaller ones are tensors' own (made here before).
    spans = [(path, rng) for path in files if (rng := _mapped_ranges(path, whole=True))]
    if not spans:
        return 0
    views: dict[Path, list[tuple[dict, str, str, torch.Tensor]]] = {path: [] for path, _ in spans}
    for prefix, sub in module.named_modules():
        for store in (sub._parameters, sub._buffers):
            for key, tensor in store.items():
                if tensor is None or tensor.device.type != "cpu" or tensor.numel() == 0:
                    continue
                ptr = tensor.data_ptr()
                path = next((p for p, rng in spans if any(lo <= ptr < hi for lo, hi in rng)), None)
                if path is not None:
                    views[path].append((store, key, f"{prefix}.{key}" if prefix else key, tensor))
    headers: dict[Path, tuple[int, dict]] = {}
    moved: dict[int, torch.Tensor] = {}  # by data pointer: tied tensors stay tied
    for path, held in views.items():
        in_use = sum({t.data_ptr(): t.nbytes for *_, t in held}.values())
        if not held or in_use >= KEEP_MAP_SHARE * path.stat().st_size:
            continue
        for store, key, name, tensor in held:
            ptr = tensor.data_ptr()
            if ptr not in moved:
                lazy = _own_map(path, name, tensor, headers) if tensor.nbytes >= LAZY_MIN_BYTES else None
                new = lazy if lazy is not None else tensor.detach().clone()
                if isinstance(tensor, nn.Parameter):
                    new = nn.Parameter(new, requires_grad=False)
                moved[ptr] = new
            store[key] = moved[ptr]
    if moved:
        logger.info("released the checkpoint's memory maps (%d tensors moved)", len(moved))
    return len(moved)


def _mapped_ranges(path: Path, whole: bool = False) -> list[tuple[int, int]]:
    """The address ranges this process maps from ``path`` (from Linux's /proc/self/maps),
    adjacent areas joined; with ``whole`` only those that span the file's size or more."""
    target = str(Path(path).resolve())
    ranges: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) == 6 and fields[5] == target:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    if ranges and ranges[-1][1] == lo:
                        ranges[-1] = (ranges[-1][0], hi)
                    else:
                        ranges.append((lo, hi))
        size = Path(path).stat().st_size if whole else 0
    except OSError:
        return []
    return [(lo, hi) for lo, hi in ranges if hi - lo >= size]


def _own_map(path: Path, name: str, tensor: torch.Tensor, headers: dict) -> torch.Tensor | None:
    """``tensor`` (named ``name`` in ``path``) as a private map of its own bytes in the file,
    or None when the file does not hold it as it is (another name, shape or dtype)."""
    if path not in headers:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            headers[path] = (8 + size, json.loads(f.read(size)))
    start, header = headers[path]
    entry = header.get(name)
    if not entry or entry.get("dtype") not in _NUMPY or not tensor.is_contiguous():
        return None
    np_dtype, dtype = _NUMPY[entry["dtype"]]
    if dtype != tensor.dtype or tuple(entry["shape"]) != tuple(tensor.shape):
        return None
    lo, _ = entry["data_offsets"]
    # Copy-on-write ("c"): writable as torch expects, and the file is never written.
    array = np.memmap(path, dtype=np_dtype, mode="c", offset=start + lo, shape=tuple(tensor.shape))
    lazy = torch.from_numpy(array).view(dtype)
    flat, want = lazy.reshape(-1), tensor.reshape(-1)
    if not (torch.equal(flat[:64], want[:64]) and torch.equal(flat[-64:], want[-64:])):
        return None  # not the bytes the view read: keep a copy instead
    return lazy
