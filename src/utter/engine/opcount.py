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
