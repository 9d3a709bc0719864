"""Load the official ``model.safetensors`` into our modules.

Our module tree mirrors the official parameter names (``talker.model.layers.0.self_attn.q_proj``,
``speaker_encoder.blocks.0.conv`` ...), so the mapping is the identity and any name missing or
left over is an error. Modules are created on the meta device and the tensors assigned
directly, so a checkpoint is read once and never initialised twice.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
