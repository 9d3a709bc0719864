"""Fixed-shape decode steps, replayed from CUDA graphs on GPUs.

On a GPU the decode loop is bound by kernel launches, not FLOPs: a frame is one talker step plus
15 code-predictor steps of about 10 small kernels per layer. Capturing each step once per
batch-size bucket and replaying it removes that overhead. Graphs need fixed shapes and fixed
addresses, so in this mode the runner allocates its caches once, pads the batch up to the
nearest bucket, and the talker attends over the whole cache length with a position mask.
Padding rows are free rows: whatever they compute lands in state that admission resets.

A graph also fixes the sampling path (greedy, top-k, full: see ``SamplingPlan``), so graphs are
kept per (bucket, plans): the full path for every bucket is captured up front, the others the
first time a step needs them (between two steps, with the row state saved and restored).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from .sampling import SamplingPlan

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
        self._frame_graphs: dict[tuple, torch.cuda.CUDAGraph | None] = {}
        self._advance_graphs: dict[tuple, torch.cuda.CUDAGraph | None] = {}
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

    def frame(self, b: int, plans: tuple[SamplingPlan, SamplingPlan] | None = None) -> torch.Tensor:
        """Codes [b, N] of the pending frame of rows [0, b), sampled as ``plans`` say."""
        size = self.bucket(b)
        graph = self._graph(self._frame_graphs, self._frame_fn, size, plans)
        if graph is not None:
            graph.replay()
        else:
            self._frame_fn(size)
        return self.codes_out[:b].clone()

    def advance(
        self,
        b: int,
        codes: torch.Tensor,
        text: torch.Tensor,
        positions: torch.Tensor,
        plans: tuple[SamplingPlan, SamplingPlan] | None = None,
    ) -> None:
        size = self.bucket(b)
        self.codes_in[:b] = codes
        self.text_in[:b] = text
        self.pos_in[:b] = positions
        if size > b:  # padding rows write at the last cache position, which no request reaches
            self.pos_in[b:size] = self.runner.capacity[1] - 1
            self.codes_in[b:size] = 0
        graph = self._graph(self._advance_graphs, self._advance_fn, size, plans)
        if graph is not None:
            graph.replay()
        else:
            self._advance_fn(size)

    def _graph(self, store: dict, fn, size: int, plans: tuple | None) -> torch.cuda.CUDAGraph | None:
        """The captured graph for (size, plans), capturing it now if it is new; None: eager."""
        if not self.capture:
            return None
        key = (size, plans or (SamplingPlan(), SamplingPlan()))
        if key not in store:
            saved = self._save_rows()
            try:
                store[key] = self._capture(fn, size)
            except Exception:  # noqa: BLE001 - that one step runs eagerly from now on
                logger.exception("capturing the decode step for %s failed; it runs eagerly", key)
                store[key] = None
            finally:
                self._restore_rows(saved)
        return store[key]

    # ------------------------------------------------------------ capture
    def _inputs(self) -> list[tuple[str, torch.Tensor]]:
        return [("_codes_in", self.codes_in), ("_text_in", self.text_in), ("_pos_in", self.pos_in)]

    def _save_rows(self) -> dict[str, torch.Tensor]:
        """Row state (warm-up and capture runs advance it) and the inputs they overwrite."""
        saved = {k: v.clone() for k, v in self.runner.rowvars.items()}
        saved.update(
            _codes_in=self.codes_in.clone(), _text_in=self.text_in.clone(), _pos_in=self.pos_in.clone()
        )
        # Capture runs write KV at these positions: the last cache position, which no request reaches.
        self.pos_in.fill_(self.runner.capacity[1] - 1)
        return saved

    def _restore_rows(self, saved: dict[str, torch.Tensor]) -> None:
        for name, buffer in (
            ("_codes_in", self.codes_in),
            ("_text_in", self.text_in),
            ("_pos_in", self.pos_in),
        ):
            buffer.copy_(saved.pop(name))
        for k, v in saved.items():
            self.runner.rowvars[k].copy_(v)

    def _capture(self, fn, size: int) -> torch.cuda.CUDAGraph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn(size)  # warm-up: lazy initialisation must not happen during capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            fn(size)
        torch.cuda.synchronize()
        return graph

    def _capture_all(self) -> None:
        """Capture every bucket with the full sampling path (what any mix of options can take)."""
        self._pool = torch.cuda.graph_pool_handle()
        plans = (SamplingPlan(), SamplingPlan())
        saved = self._save_rows()
        try:
            self.runner.plans = {"t_": plans[0], "s_": plans[1]}
            for size in reversed(self.sizes):
                self._frame_graphs[(size, plans)] = self._capture(self._frame_fn, size)
                self._advance_graphs[(size, plans)] = self._capture(self._advance_fn, size)
        finally:
            self._restore_rows(saved)
        logger.info("captured decode-step CUDA graphs for batch sizes %s", self.sizes)
