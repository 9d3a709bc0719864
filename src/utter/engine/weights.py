"""Load the official ``model.safetensors`` into our modules.

Our module tree mirrors the official parameter names (``talker.model.layers.0.self_attn.q_proj``,
``speaker_encoder.blocks.0.conv`` ...), so the mapping is the identity and any name missing or
left over is an error. Modules are created on the meta device and the tensors assigned
directly, so a checkpoint is read once and never initialised twice.
"""

from __future__ import annotations

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


# Stretches of a file still in use are mapped on their own (read lazily, nothing copied): a
# text embedding of 151,936 rows, of which a session reads a few hundred; a codec encoder. Views
# closer than SPAN_GAP_BYTES share a map; a stretch under SPAN_MIN_BYTES is copied instead.
SPAN_GAP_BYTES = 1 << 20
SPAN_MIN_BYTES = 1 << 20
# A file whose tensors still in use hold this share of it or more keeps its map (nothing to gain).
KEEP_MAP_SHARE = 0.5


def release_file_views(module: nn.Module, files: list[Path]) -> int:
    """Let go of the checkpoint files' memory maps once loading has converted what it converts.

    On a CPU the safetensors files are memory-mapped and tensors kept as stored are views of that
    map; one such view (the bfloat16 text embedding of an int8 engine, a codec encoder beside a
    decoder cast to bfloat16) keeps the whole map alive, and with it every page the conversion
    read: about 1.5 GB of the 0.6B checkpoint's stale pages stayed in the process's resident
    memory. Where the views left hold under half of a file, the stretches of the file they lie
    in are mapped on their own (each tensor a view of its stretch, read lazily as before; tiny
    stretches copied), so the whole file's map closes; a file mostly still in use (weights kept
    as stored) keeps its map. Returns how many tensors were moved. Linux only (it finds the maps
    in /proc); elsewhere a no-op."""
    on_cpu = [
        (store, key, tensor)
        for sub in module.modules()
        for store in (sub._parameters, sub._buffers)
        for key, tensor in store.items()
        if tensor is not None and tensor.device.type == "cpu" and tensor.numel() > 0
    ]
    if not on_cpu:  # a GPU load reads straight into device memory: no map, no /proc read
        return 0
    # The loader maps each file whole, from its first byte: a view's place in the file is its
    # address minus the map's start. Smaller maps of a file are stretches made here before.
    spans = [(path, rng) for path in files if (rng := _mapped_ranges(path, whole=True))]
    if not spans:
        return 0
    # path -> (offset in the file, dtype, shape, strides) -> where that tensor is held
    held: dict[Path, dict[tuple, list[tuple[dict, str, torch.Tensor]]]] = {path: {} for path, _ in spans}
    for store, key, tensor in on_cpu:
        ptr = tensor.data_ptr()
        for path, ranges in spans:
            base = next((lo for lo, hi in ranges if lo <= ptr < hi), None)
            if base is not None:
                view = (ptr - base, tensor.dtype, tuple(tensor.shape), tensor.stride())
                held[path].setdefault(view, []).append((store, key, tensor))
                break
    moved = 0
    for path, views in held.items():
        sizes: dict[int, int] = {}
        for view, uses in views.items():
            sizes[view[0]] = max(sizes.get(view[0], 0), uses[0][2].nbytes)
        if not views or sum(sizes.values()) >= KEEP_MAP_SHARE * path.stat().st_size:
            continue
        for lo, hi in _stretches(sizes):
            stretch = _map_stretch(path, lo, hi) if hi - lo >= SPAN_MIN_BYTES else None
            for view in (v for v in views if lo <= v[0] < hi):
                uses = views[view]
                tensor = uses[0][2]
                new = _view_in(stretch, view[0] - lo, tensor) if stretch is not None else None
                if new is None:
                    new = tensor.detach().clone()
                if isinstance(tensor, nn.Parameter):
                    new = nn.Parameter(new, requires_grad=False)
                for store, key, _ in uses:  # tied tensors stay one tensor
                    store[key] = new
                moved += 1
    if moved:
        logger.info("released the checkpoint's memory maps (%d tensors moved)", moved)
    return moved


def _stretches(sizes: dict[int, int]) -> list[tuple[int, int]]:
    """File byte ranges covering the tensors at ``sizes`` (offset -> bytes), joined across gaps
    under SPAN_GAP_BYTES."""
    out: list[tuple[int, int]] = []
    for offset in sorted(sizes):
        end = offset + sizes[offset]
        if out and offset - out[-1][1] < SPAN_GAP_BYTES:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((offset, end))
    return out


def _map_stretch(path: Path, lo: int, hi: int) -> torch.Tensor:
    # Copy-on-write ("c"): writable as torch expects, and the file is never written.
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", offset=lo, shape=(hi - lo,)))


def _view_in(stretch: torch.Tensor, start: int, tensor: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` as a view of ``stretch`` from byte ``start``, or None where that cannot be (a
    layout or alignment a view cannot take, or other bytes than the tensor's)."""
    if not tensor.is_contiguous():
        return None
    raw = stretch[start : start + tensor.nbytes]
    try:
        view = raw.view(tensor.dtype).view(tensor.shape)
        want = tensor.reshape(-1).view(torch.uint8)
    except RuntimeError:
        return None
    if not (torch.equal(raw[:256], want[:256]) and torch.equal(raw[-256:], want[-256:])):
        return None
    return view


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
