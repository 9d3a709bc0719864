"""Decoder stacks that run their decode steps in one native call (``utter_stack_run``).

It serves CPU engines in the ``int8`` and ``float16`` weight modes whose products read int8
weights (per-row scales) or float16 weights against float32 activations: engines that decode
one stream at a time, and engines serving small batches (see ``quant.native_max_batch``). Every
call (decode steps of any batch, prefills, right-padded batched prefills) runs natively, each
row at its own positions in its own row of the KV cache, with the same numbers for a row
whatever the others. ``DecoderStack.run`` picks the path per call.
"""

from __future__ import annotations

import ctypes
import logging

import torch
from torch import nn

from ..model.layers import DecoderStack
from . import native
from .native import PRODUCTS, LayerStruct, StackStruct
from .quant import Fp16Linear, Int8Linear

logger = logging.getLogger(__name__)


def _packed(linear: nn.Module) -> native.PackedWeight:
    """A layer product's native weights (the stack kernel adds no bias), else ValueError."""
    if (
        isinstance(linear, (Int8Linear, Fp16Linear))
        and linear.native is not None
        and linear.native.bias is None
    ):
        return linear.native
    raise ValueError(f"{linear} has no native weights")


class NativeStack:
    """A :class:`DecoderStack`'s weights laid out for ``utter_stack_run`` (kept alive here)."""

    def __init__(self, lib: ctypes.CDLL, stack: DecoderStack) -> None:
        cfg = stack.cfg
        self.lib = lib
        self.keep: list[torch.Tensor] = []
        layers = (LayerStruct * len(stack.layers))()
        kinds = set()
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
                packed = _packed(linear)
                kinds.add(packed.kind)
                fields[name] = packed.packed
                if packed.scales is not None:
                    fields[name + "_s"] = packed.scales
            for name, tensor in fields.items():
                tensor = tensor.detach().contiguous()
                if tensor.is_floating_point() and tensor.dtype != torch.float16:
                    tensor = tensor.float().contiguous()
                self.keep.append(tensor)
                setattr(layers[i], name, tensor.data_ptr())
        if len(kinds) != 1:
            raise ValueError(f"mixed weight types {kinds}")
        # Prefills (more than one position per row) go through the layers' PyTorch path when
        # every product there has an int8 x int8 kernel for them (quant's rows_kernel): decided
        # by the call's kind, never by how many rows share it.
        products = [m for layer in stack.layers for m in layer.modules() if isinstance(m, Int8Linear)]
        self.steps_only = bool(products) and all(m.rows_kernel is not None for m in products)
        final = stack.norm.weight.detach().float().contiguous()
        self.keep.append(final)
        self.layers = layers
        self.struct = StackStruct(
            cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size, kinds.pop(),
            cfg.rms_norm_eps, final.data_ptr(), layers,
        )  # fmt: skip

    def run(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        starts: list[int],
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x [B, S, D] float32, row b at positions starts[b] .. starts[b]+S-1 -> final-normed
        [B, S, D]; writes those positions of row b of ``cache`` (k, v of [layers, B, kv_heads,
        T, head_dim], rows and layers at any stride). Each token's numbers are the same whatever
        the other rows."""
        k, v = cache
        x = x.contiguous()
        out = torch.empty_like(x)
        first = (ctypes.c_int32 * len(starts))(*starts)  # host ints: no framework op per call
        cos, sin = rope
        rc = self.lib.utter_stack_run(
            ctypes.byref(self.struct), x.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1],
            k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), k.shape[3], first,
            cos.data_ptr(), sin.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"utter_stack_run failed ({rc}) for {tuple(x.shape)} at {starts}")
        return out

    def accepts(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Whether a call fits this kernel: float32 rows on the CPU (any number of positions: a
        decode step or a prefill, unless ``steps_only`` leaves prefills to the int8 x int8 kernel), with a
        float32 cache of as many rows whose (layer, row) parts are contiguous and laid out alike
        in k and v."""
        k, v = cache
        _, _, _, t, dim = k.shape
        return (
            (not self.steps_only or x.shape[1] == 1)
            and x.is_cpu
            and x.dtype == torch.float32
            and k.dtype == torch.float32
            and v.dtype == torch.float32
            and k.shape[1] == x.shape[0]
            and k.shape == v.shape
            and k.stride() == v.stride()
            and k.stride()[2:] == (t * dim, dim, 1)
            and not x.requires_grad
        )


def attach(talker: nn.Module) -> bool:
    """Give the talker's and the code predictor's stacks a native decode step when every product
    in them has native weights (``kernel="native"`` int8, or float16 converted for one stream).
    Returns whether they got it."""
    lib = native.library()
    if lib is None:
        return False
    stacks = [talker.model, talker.code_predictor.model]
    try:
        natives = [NativeStack(lib, stack) for stack in stacks]
    except ValueError as exc:
        logger.info("native decode step not used: %s", exc)
        return False
    for stack, fast in zip(stacks, natives):
        stack.native = fast
    return True
