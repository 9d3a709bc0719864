"""Fused decoder layers: the work around attention compiled by torch.compile (inductor).

On a GPU a frame is ~110 layer passes (one talker step and 15 code-predictor steps), and in
eager PyTorch each pass is ~20 kernels (more on GPUs), most of them 1-3 us elementwise ops
(norms, rotary, residuals, the SiLU gate, cache writes) around four matrix products. CUDA graphs
remove the launch cost but not the kernels: the GPU still runs them one after another.
Compiling everything from one attention to the next (``layer_between``: o_proj, residual, post
norm, gate/up product, SiLU gate, down product, residual, then the next layer's input norm,
q/k/v product, q/k norms, rotary, and its k and v written into the KV cache; ``layer_qkv``
before the first attention, ``layer_last`` with the final norm after the last) fuses each run
of elementwise ops into one kernel beside the products: about 9 kernels per layer pass instead
of ~20 (0.6B sizes, counted on the CPU: 2110 -> 1052 per frame).

Attention (one SDPA kernel either way) stays eager between the regions. The cache write inside
a compiled region is in place: inductor writes the slice (or the rows' positions) of the cache
view it is given, it does not copy the cache (checked: the cost does not grow with its length).

Each region is one plain function of the layers (``model/layers.py``), compiled once per stack
shape and reused by every layer (the layers' weights are inputs of the compiled graph, not
constants), so compile time does not grow with depth. Batch and prompt length are dynamic;
the caches' shapes are not (a fixed-shape runner has one each), so the variants are compiled at
load on the runner's own caches (``warm``). Compiled layers need plain ``nn.Linear`` products
(the float weight modes; not int8 nor the CPU's packed float16) and the PyTorch path (not the
native CPU stack). ``fuse`` checks, and falls back to eager layers with one log line when compiling fails.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..model.layers import DecoderStack, layer_between, layer_last, layer_qkv

if TYPE_CHECKING:
    from ..sched.runner import Runner

logger = logging.getLogger(__name__)

# Variants per compiled function: 2 stacks (talker, code predictor) x batch 1 or more x one
# position or more (torch specialises sizes of 1), with room to spare.
RECOMPILE_LIMIT = 64


def wanted(asked: bool | None) -> bool:
    """Whether to compile: ``asked``, else ``UTTER_COMPILE`` (1/0), else off.

    Off by default until GPU measurements show it pays (issue #10): compiling costs start-up
    time (seconds to a minute on a cold inductor cache) and needs a working inductor backend
    (Triton on GPUs, a C++ compiler on CPUs)."""
    if asked is not None:
        return asked
    return os.environ.get("UTTER_COMPILE", "0").lower() in ("1", "true", "yes", "on")


def fusable(stack: DecoderStack) -> str | None:
    """Why ``stack``'s layers cannot be compiled, or None when they can."""
    if stack.native is not None:
        return "its decode steps run in the native CPU kernels"
    for layer in stack.layers:
        for module in layer.modules():  # Int8Linear, Fp16Linear (cpu/quant.py)
            if type(module) is not nn.Linear and type(module).__name__.endswith("Linear"):
                return f"its products use {type(module).__name__} weights (compile needs float weights)"
    return None


def prepare_thread() -> None:
    """Let compiled layers have their variants in the calling thread: torch's compiler settings
    are per thread, so a thread that runs compiled layers (the batcher's worker) sets this
    itself; in a thread left at torch's default (8) the layers would fall back to eager.

    Nothing to do when nothing was compiled in this process (compiling imports ``torch._dynamo``):
    importing it here cost a serving process 0.9 s of its worker thread's start for nothing."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        return
    config = dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across versions
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)


def fuse(stacks: list[DecoderStack]) -> bool:
    """Compile the layers of ``stacks``; returns whether they now run compiled.

    One set of compiled functions for all stacks: torch guards on each stack's shapes and
    compiles a variant per shape on first use (that first call is the slow one: run it before
    capturing CUDA graphs, which ``enable_graphs`` does in its warm-up)."""
    for stack in stacks:
        why = fusable(stack)
        if why is not None:
            logger.info("layers not compiled: %s", why)
            return False
    prepare_thread()
    try:
        # Not fullgraph: past the recompile limit a region runs eagerly instead of raising (the
        # kernel-count test catches a region that stops compiling whole).
        steps = tuple(torch.compile(fn, dynamic=True) for fn in (layer_qkv, layer_between, layer_last))
    except Exception as exc:  # noqa: BLE001 - no backend here: stay eager, say why once
        logger.warning("layers not compiled (torch.compile unavailable: %s)", exc)
        return False
    for stack in stacks:
        stack.fused = steps
    return True


def unfuse(stacks: list[DecoderStack]) -> None:
    """Back to eager layers (after a failed first compiled call)."""
    for stack in stacks:
        stack.fused = None


def warm(runner: Runner) -> bool:
    """Compile now, through each stack's own ``run`` on the runner's own KV caches (the talker's
    and the code predictor's), instead of inside the first request: one row and two, one
    position and three, aligned and per-row positions, every variant the runner uses. Torch
    guards on the caches' shapes, so a fixed-shape runner (CUDA graphs) compiles nothing more
    while serving; a runner whose caches grow compiles a variant per new size (CPUs). The
    caches' contents are scratch here (no request yet). On failure: eager layers, logged.
    Returns whether the layers run compiled."""
    talker = runner.talker
    pairs = [(talker.model, runner.cache), (talker.code_predictor.model, runner.cp_cache)]
    try:
        with torch.inference_mode():  # as the runner calls them: the variants compiled are its own
            for stack, (keys, values) in pairs:
                if stack.fused is None:
                    continue
                for b in sorted({1, min(2, keys.shape[1])}):
                    cache = (keys[:, :b], values[:, :b])
                    for s in (1, 3):
                        x = torch.zeros(b, s, stack.cfg.hidden_size, device=runner.device, dtype=runner.dtype)
                        for start in (0, 2):  # torch specialises an int of 0 (and of 1)
                            stack.run(x, cache, start, kv_len=start + s)
                        positions = torch.arange(s, device=runner.device).repeat(b, 1)  # contiguous
                        stack.run(x, cache, positions, kv_len=s)
    except Exception:  # noqa: BLE001 - a backend that fails here fails every step: stay eager
        logger.exception("compiling the decoder layers failed; they run eagerly")
        unfuse([stack for stack, _ in pairs])
        return False
    return True


def apply(runner: Runner) -> bool:
    """Compile the runner's two stacks (talker, code predictor) and their variants now, on its
    caches (:func:`fuse`, then :func:`warm`); returns whether the layers run compiled."""
    talker = runner.talker
    return fuse([talker.model, talker.code_predictor.model]) and warm(runner)


def profile_kernels() -> None:
    """Make compiled CPU kernels visible to the profiler (``opcount.count_kernels``): set before
    compiling. For measurements only: it adds a profiler hook to every generated kernel."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
