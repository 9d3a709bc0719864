"""Fixed-shape decode steps, replayed from CUDA graphs on GPUs.

On a GPU the decode loop is bound by kernel launches, not FLOPs: a frame is one talker step plus
15 code-predictor steps of about 10 small kernels per layer. Capturing each step once per
batch-size bucket and replaying it removes that overhead. Graphs need fixed shapes and fixed
addresses, so in this mode the runner allocates its caches once, pads the batch up to the
nearest bucket, and the talker attends over the whole cache length with a position mask.
Padding rows are free rows: whatever they compute lands in state that admission resets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .runner import Runner

logger = logging.getLogger(__name__)


def buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, ... up to max_batch (always included)."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


class StepGraphs:
    """The runner's two step functions at fixed shapes, captured per bucket when ``capture``."""

    def __init__(self, runner: Runner, capture: bool) -> None:
        self.runner = runner
        self.capture = capture
        batch, _ = runner.capacity
        self.sizes = buckets(batch)
        tc = runner.cfg.talker
        dev, dt = runner.device, runner.dtype
        # Static inputs and outputs of the graphs.
        self.codes_out = torch.zeros(batch, tc.num_code_groups, dtype=torch.long, device=dev)
        self.codes_in = torch.zeros(batch, tc.num_code_groups, dtype=torch.long, device=dev)
        self.text_in = torch.zeros(batch, tc.decoder.hidden_size, dtype=dt, device=dev)
        self.pos_in = torch.zeros(batch, dtype=torch.long, device=dev)
        self._frame_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._advance_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if capture:
            try:
                self._capture_all()
            except Exception:  # a driver or op that cannot be captured: run eagerly instead
                logger.exception("CUDA graph capture failed; using eager fixed-shape steps")
                self.capture = False
                self._frame_graphs.clear()
                self._advance_graphs.clear()

    def bucket(self, b: int) -> int:
        return next(s for s in self.sizes if s >= b)

    # ------------------------------------------------------------ the steps
    def _frame_fn(self, b: int) -> None:
        self.codes_out[:b] = self.runner._predict_codebooks(b)

    def _advance_fn(self, b: int) -> None:
        length = self.runner.capacity[1]
        self.runner._advance(b, self.codes_in[:b], self.text_in[:b], self.pos_in[:b], kv_len=length)

    def frame(self, b: int) -> torch.Tensor:
        """Codes [b, N] of the pending frame of rows [0, b)."""
        size = self.bucket(b)
        graph = self._frame_graphs.get(size)
        if graph is not None:
            graph.replay()
        else:
            self._frame_fn(size)
        return self.codes_out[:b].clone()

    def advance(self, b: int, codes: torch.Tensor, text: torch.Tensor, positions: torch.Tensor) -> None:
        size = self.bucket(b)
        self.codes_in[:b] = codes
        self.text_in[:b] = text
        self.pos_in[:b] = positions
        if size > b:  # padding rows write at the last cache position, which no request reaches
            self.pos_in[b:size] = self.runner.capacity[1] - 1
            self.codes_in[b:size] = 0
        graph = self._advance_graphs.get(size)
        if graph is not None:
            graph.replay()
        else:
            self._advance_fn(size)

    # ------------------------------------------------------------ capture
    def _capture_all(self) -> None:
        """Capture every bucket. Warm-up runs mutate row state, so it is saved and restored."""
        saved = {k: v.clone() for k, v in self.runner.rowvars.items()}
        self.pos_in.fill_(self.runner.capacity[1] - 1)
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            for fn, store in ((self._frame_fn, self._frame_graphs), (self._advance_fn, self._advance_graphs)):
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    fn(size)  # warm-up: lazy initialisation must not happen during capture
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    fn(size)
                store[size] = graph
        for k, v in saved.items():
            self.runner.rowvars[k].copy_(v)
        torch.cuda.synchronize()
        logger.info("captured decode-step CUDA graphs for batch sizes %s", self.sizes)
