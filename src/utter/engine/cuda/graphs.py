"""Fixed-shape decode steps, replayed from CUDA graphs on GPUs.

On a GPU the decode loop is bound by kernel launches, not FLOPs: a frame is one talker step plus
15 code-predictor steps of about 10 small kernels per layer. Capturing each step once and
replaying it removes that overhead. Graphs need fixed shapes and fixed addresses, so in this
mode the runner allocates its caches once and each step is run at a bucket of shapes:

- the batch is padded up to the nearest batch bucket (1, 2, 4, ... max_batch). Padding rows are
  free rows: whatever they compute lands in state that admission resets;
- the talker attends over the nearest length bucket (64, 128, ... the cache length) at or above
  the longest live row, with a position mask, instead of the whole preallocated cache;
- the sampling path (greedy, top-k, full: see ``SamplingPlan``) is fixed too.

Graphs are kept per (batch bucket, length bucket, plans), each captured the first time a step
needs it, between two steps, with the row state saved and restored (capture runs write KV only
at the last position of the length bucket, which a live row has either not reached, and masks,
or writes itself in the same step). Nothing is captured at start: a server pays only for the
shapes its traffic uses (capturing every batch bucket's graphs up front cost seconds of cold
start, mostly for sampling paths greedy traffic never ran), and a capture costs about two steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..sampling import SamplingPlan

if TYPE_CHECKING:
    from ..sched.runner import Runner

logger = logging.getLogger(__name__)

Plans = tuple[SamplingPlan, SamplingPlan]
FULL: Plans = (SamplingPlan(), SamplingPlan())
MIN_LENGTH_BUCKET = 64


def buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, ... up to max_batch (always included)."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


def length_buckets(max_len: int) -> list[int]:
    """64, 128, 256, ... up to the cache length (always included)."""
    out, n = [], MIN_LENGTH_BUCKET
    while n < max_len:
        out.append(n)
        n *= 2
    return out + [max_len]


def capture(fn: Callable[[], None], pool: tuple | None = None) -> torch.cuda.CUDAGraph:
    """``fn`` (which reads and writes fixed tensors only) run once to warm up, then captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up: lazy initialisation must not happen during capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # Thread-local: captures happen while serving (first use of a shape), and other threads
    # may use the GPU meanwhile (transcription, the studio's encoders); a global capture
    # would make their CUDA calls fail or invalidate it.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        fn()
    torch.cuda.synchronize()
    return graph


class StepGraphs:
    """The runner's two step functions at fixed shapes, captured per bucket when ``capture``."""

    def __init__(self, runner: Runner, capture: bool) -> None:
        self.runner = runner
        self.capture = capture
        batch, length = runner.capacity
        self.sizes = buckets(batch)
        self.lengths = length_buckets(length)
        tc = runner.cfg.talker
        dev, dt = runner.device, runner.dtype
        # Static inputs and outputs of the graphs; inference tensors like every other runner
        # tensor (compiled layers guard on the kind of tensor they get).
        with torch.inference_mode():
            self.codes_out = torch.zeros(batch, tc.num_code_groups, dtype=torch.long, device=dev)
            self.codes_in = torch.zeros(batch, tc.num_code_groups, dtype=torch.long, device=dev)
            self.text_in = torch.zeros(batch, tc.decoder.hidden_size, dtype=dt, device=dev)
            self.pos_in = torch.zeros(batch, dtype=torch.long, device=dev)
        self._graphs: dict[tuple, torch.cuda.CUDAGraph | None] = {}
        # One memory pool for every graph: they replay one at a time, never side by side.
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    def bucket(self, b: int) -> int:
        return next(s for s in self.sizes if s >= b)

    def length_bucket(self, kv_len: int) -> int:
        return next((n for n in self.lengths if n >= kv_len), self.lengths[-1])

    # ------------------------------------------------------------ the steps
    def _frame_fn(self, b: int) -> None:
        self.codes_out[:b] = self.runner._predict_codebooks(b)

    def _advance_fn(self, b: int, kv_len: int) -> None:
        self.runner._advance(b, self.codes_in[:b], self.text_in[:b], self.pos_in[:b], kv_len=kv_len)

    def frame(self, b: int, plans: Plans | None = None) -> torch.Tensor:
        """Codes [b, N] of the pending frame of rows [0, b), sampled as ``plans`` say."""
        size = self.bucket(b)
        self._run(("frame", size, plans or FULL), lambda: self._frame_fn(size))
        return self.codes_out[:b].clone()

    def advance(
        self,
        b: int,
        codes: torch.Tensor,
        text: torch.Tensor,
        positions: torch.Tensor,
        plans: Plans | None = None,
        kv_len: int | None = None,
    ) -> None:
        """The talker step of rows [0, b); ``kv_len``: one more than the largest live position."""
        size = self.bucket(b)
        length = self.length_bucket(kv_len or self.runner.capacity[1])
        self.codes_in[:b] = codes
        self.text_in[:b] = text
        self.pos_in[:b] = positions
        if size > b:  # padding rows (free rows) write at the bucket's last position
            self.pos_in[b:size] = length - 1
            self.codes_in[b:size] = 0
        self._run(("advance", size, length, plans or FULL), lambda: self._advance_fn(size, length), length)

    def _run(self, key: tuple, fn: Callable[[], None], length: int | None = None) -> None:
        """Replay the graph of ``key``, capturing it first if it is new; eager without graphs."""
        if self.capture and key not in self._graphs:
            saved = self._save_rows(length)
            try:
                self._graphs[key] = capture(fn, self._pool)
            except Exception:  # noqa: BLE001 - that one step runs eagerly from now on
                logger.exception("capturing the decode step %s failed; it runs eagerly", key)
                self._graphs[key] = None
            finally:
                self._restore_rows(saved)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
        else:
            fn()

    # ------------------------------------------------------------ capture
    def _inputs(self) -> list[tuple[str, torch.Tensor]]:
        return [("_codes_in", self.codes_in), ("_text_in", self.text_in), ("_pos_in", self.pos_in)]

    def _save_rows(self, length: int | None) -> dict[str, torch.Tensor]:
        """Row state (warm-up and capture runs advance it) and the inputs they overwrite."""
        saved = {k: v.clone() for k, v in self.runner.rowvars.items()}
        saved.update({name: buffer.clone() for name, buffer in self._inputs()})
        # Capture runs write KV at the length bucket's last position only (see the module doc).
        self.pos_in.fill_((length or self.runner.capacity[1]) - 1)
        return saved

    def _restore_rows(self, saved: dict[str, torch.Tensor]) -> None:
        for name, buffer in self._inputs():
            buffer.copy_(saved.pop(name))
        for k, v in saved.items():
            self.runner.rowvars[k].copy_(v)
