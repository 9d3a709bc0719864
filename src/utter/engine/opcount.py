"""Counting the framework ops a decode step dispatches: the CPU-side proxy for GPU kernels.

On a GPU the decode loop is bound by launches (thousands of 1-3 us kernels per frame), and
every aten op that reaches a device kernel is at least one launch. Counting the aten ops of a
step on the CPU is deterministic and needs no GPU, so tests can hold the line and the benchmark
can report it beside the GPU's own kernel count. Work done inside our native C kernels, or
inside a replayed CUDA graph, dispatches nothing and counts nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only describe a tensor (no data moves, no kernel on any device).
VIEW_OPS = frozenset(
    {
        "aten.view.default",
        "aten._unsafe_view.default",
        "aten.slice.Tensor",
        "aten.select.int",
        "aten.unsqueeze.default",
        "aten.squeeze.dim",
        "aten.squeeze.dims",
        "aten.expand.default",
        "aten.permute.default",
        "aten.transpose.int",
        "aten.t.default",
        "aten.alias.default",
        "aten.as_strided.default",
        "aten.detach.default",
        "aten.split.Tensor",
        "aten.unbind.int",
        "aten.split_with_sizes.default",
        "aten.reshape.default",
        "aten._reshape_alias.default",
        "aten.lift_fresh.default",
    }
)


class OpCounter(TorchDispatchMode):
    """Inside ``with OpCounter() as c:``, ``c.ops`` counts every aten op by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        """Ops that do work on a device (views excluded): what would be launches on a GPU."""
        return sum(n for name, n in self.ops.items() if name not in VIEW_OPS)


def count_ops(fn: Callable[[], Any]) -> tuple[Any, OpCounter]:
    """Run ``fn()`` and count the ops it dispatches; returns (its result, the counter)."""
    with OpCounter() as counter:
        result = fn()
    return result, counter


# Profiler events that do no work of their own (views, allocations, type queries).
_NO_WORK = frozenset("aten::" + name.split(".")[1] for name in VIEW_OPS) | {
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::result_type",
}


def _outermost_op(event: Any) -> bool:
    """Whether no aten op encloses ``event`` (it was called from Python or compiled code)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def count_kernels(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` under the profiler and count what it launches on the CPU: the outermost aten
    ops that do work (as :func:`count_ops` counts them; views, allocations and a ``to`` that
    converts nothing excluded) plus the kernels that compiled code generated. Unlike
    :func:`count_ops` this sees into compiled code (dispatch modes and torch.compile do not
    mix), so eager and fused layers compare on one scale. Compiled CPU kernels are seen only
    when compiled with ``torch._inductor.config.cpp.enable_kernel_profile`` on (see
    ``cuda.fusion.profile_kernels``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    count = 0
    for event in prof.events():
        if "cpp_fused" in event.name or "triton_" in event.name:
            count += 1
        elif event.name.startswith("aten::") and event.name not in _NO_WORK and _outermost_op(event):
            count += event.name != "aten::to" or bool(event.cpu_children)
    return result, count
