"""The decode loop: prefill requests into rows of a static KV cache, then advance them all together.

One call to :meth:`Runner.step` moves every active sequence forward by one frame: the code
predictor fills codebooks 1..N-1 of the pending frame, the frame is handed out at once, and the
talker (one batched forward over all rows) predicts codebook 0 of the next frame. Requests can
join (``add``) or leave (end of speech, frame limit, ``cancel``) between steps; rows stay
contiguous so the batched step always works on ``rows[0:B]``. A request whose text is still
arriving and has run out of it is parked (``parking.py``) and comes back when text arrives.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import ModelConfig
from ..model.layers import new_cache
from ..model.talker import Talker
from ..prompt import TalkerPrompt
from .parking import ParkedRow, park, starved, unpark
from .prefill import PREFILL_CHUNK, Prefilling, advance, begin

if TYPE_CHECKING:
    from ..cuda.graphs import StepGraphs
    from .textfeed import TextFeed
from ..sampling import GenerationOptions, SamplingPlan, apply_repetition_penalty, sample

logger = logging.getLogger(__name__)

MIN_FRAMES = 2  # the official package forbids end-of-speech in the first two frames
INITIAL_CAPACITY = (1, 64)  # rows x positions of a fresh KV cache
RELEASE_ABOVE_BYTES = 256 * 2**20  # an idle runner keeps a KV cache up to this size


def _own_start(seq: Sequence, n: int) -> int:
    """Where a request's own prefill positions start: after its voice prefix when that prefix
    can come from (or go into) the prefix cache, else at 0."""
    key, start = seq.prompt.prefix_key, seq.prompt.prefix_len
    return start if key is not None and 0 < start < n else 0


def _take_out(order: list[int], row: int) -> None:
    """Update ``order`` (which row of a step's codes each batch row holds) for ``row`` leaving
    the batch: the last row moves into its place, as :meth:`Runner._remove` moves it."""
    order[row] = order[-1]
    order.pop()


def _rows_of(codes: torch.Tensor, order: list[int]) -> torch.Tensor:
    """The rows of ``codes`` that ``order`` names, in that order (a view when they lead)."""
    if order == list(range(len(order))):
        return codes if len(order) == codes.shape[0] else codes[: len(order)]
    return codes[order]


def _trim_heap() -> None:
    """Ask glibc to return freed heap pages to the OS (large frees may otherwise stay mapped)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclass(eq=False)
class Sequence:
    """Bookkeeping of one request inside the runner (CPU side only)."""

    prompt: TalkerPrompt
    options: GenerationOptions
    max_frames: int
    seed: int = 0  # sampling seed (see sampling.uniform_noise)
    frames: int = 0  # frames handed out so far
    position: int = 0  # next KV-cache position to write
    reason: str = ""  # why it ended: "eos", "max_frames" or "cancelled" ("" while running)
    feed: TextFeed | None = None  # text still arriving (see textfeed.py), else None
    text_closed: bool = True  # False while ``feed`` may bring more text
    text_tokens: int = 0  # text tokens received (for the frame limit of a fed request)
    pending: int = -1  # its pending codebook-0 token as the host last read it (-1: being read)


@dataclass
class StepOutput:
    sequence: Sequence
    codes: torch.Tensor | None  # [num_codebooks] int64 on CPU, or None when the sequence just ended


@dataclass
class _Reading:
    """A step's results on their way to the host: the frame's codes of ``made`` (in row order)
    and the next pending token of ``talked``; ``limited`` ended at this frame."""

    made: list[Sequence]
    talked: list[Sequence]
    limited: list[StepOutput]
    host: torch.Tensor  # codes then pending tokens, flat, on the host (pinned when pipelined)
    done: torch.cuda.Event | None  # recorded after the copy (pipelined CUDA steps), else None


class Runner:
    """Owns the device-side state: KV caches and the per-row pending token and hidden state."""

    def __init__(self, talker: Talker, cfg: ModelConfig) -> None:
        self.talker = talker
        self.cfg = cfg
        tc = cfg.talker
        self.device = talker.codec_head.weight.device
        self.dtype = talker.codec_head.weight.dtype
        self.groups = tc.num_code_groups
        self.vocab = tc.decoder.vocab_size
        self.eos = tc.codec_eos_id
        # Codec ids above the codebook are control tokens the talker must never emit (except EOS);
        # the official package suppresses the top 1024 ids of the talker vocabulary.
        suppress = torch.zeros(self.vocab, dtype=torch.bool)
        suppress[max(self.vocab - 1024, 0) :] = True
        suppress[self.eos] = False
        self.suppress = suppress.to(self.device)
        self.rows: list[Sequence] = []
        self.parked: list[ParkedRow] = []  # requests waiting for text, out of the batch
        self.prefilling: list[Prefilling] = []  # long prompts admitted a chunk per step (prefill.py)
        self.prefill_chunk = PREFILL_CHUNK
        # Pipelined steps: a step launches its frame before it waits for the previous step's
        # results, so the host's work overlaps the device's (see ``step``). On by default on
        # CUDA; UTTER_PIPELINE=0 turns it off, =1 on everywhere (on a CPU it only costs).
        switch = os.environ.get("UTTER_PIPELINE", "")
        self.pipelined = switch == "1" or (switch != "0" and self.device.type == "cuda")
        self.reading: _Reading | None = None  # the last step's results, still being copied
        self.capacity = (0, 0)
        # Voice prefix cache: KV of the prefill positions that depend only on (voice, language).
        self.prefix_cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.prefix_cache_size = 32
        self.prefix_hits = 0
        self.graphs: StepGraphs | None = None  # fixed-shape (CUDA graph) decode step, see enable_graphs
        # How the talker ("t_") and the code predictor ("s_") sample this step, from the rows'
        # options on the host (see SamplingPlan): no device reads to choose a path.
        self.plans: dict[str, SamplingPlan] = {"t_": SamplingPlan(), "s_": SamplingPlan()}
        self._allocate(*INITIAL_CAPACITY)

    # ----------------------------------------------------------------- memory
    @torch.inference_mode()
    def _allocate(self, batch: int, length: int) -> None:
        """(Re)allocate caches and per-row state for ``batch`` x ``length``, keeping live rows.

        Always inference tensors, whoever calls (the constructor, a load, a step): compiled
        layers guard on the kind of tensor they get, so one kind means one compiled variant."""
        tc = self.cfg.talker
        n = len(self.rows)
        old_cache, old_rows = getattr(self, "cache", None), getattr(self, "rowvars", None)
        cache = new_cache(tc.decoder, batch, length, self.device, self.dtype)
        dev = self.device
        rowvars = {
            "hidden": torch.zeros(batch, tc.decoder.hidden_size, device=dev, dtype=self.dtype),
            "pending": torch.zeros(batch, dtype=torch.long, device=dev),  # codebook-0 token to complete
            "seen": torch.zeros(batch, self.vocab, dtype=torch.bool, device=dev),  # for the penalty
            "frames": torch.zeros(batch, dtype=torch.long, device=dev),
            "position": torch.zeros(batch, dtype=torch.long, device=dev),  # next KV position, on the device
            "counter": torch.zeros(batch, dtype=torch.long, device=dev),  # random draws so far
            "seed": torch.zeros(batch, dtype=torch.long, device=dev),
            "penalty": torch.ones(batch, device=dev),
            "ignore_eos": torch.zeros(batch, dtype=torch.bool, device=dev),
        }
        for prefix in ("t_", "s_"):  # talker and sub-talker (code predictor) sampling options
            rowvars[prefix + "temperature"] = torch.ones(batch, device=dev)
            rowvars[prefix + "top_k"] = torch.zeros(batch, dtype=torch.long, device=dev)
            rowvars[prefix + "top_p"] = torch.ones(batch, device=dev)
            rowvars[prefix + "greedy"] = torch.ones(batch, dtype=torch.bool, device=dev)
        if old_cache is not None and n:
            t = min(old_cache[0].shape[3], length)
            cache[0][:, :n, :, :t] = old_cache[0][:, :n, :, :t]
            cache[1][:, :n, :, :t] = old_cache[1][:, :n, :, :t]
            for name, value in old_rows.items():
                rowvars[name][:n] = value[:n]
        self.cache, self.rowvars = cache, rowvars
        self.cp_cache = new_cache(tc.code_predictor, batch, self.groups, self.device, self.dtype)
        self.capacity = (batch, length)

    def _set_row(self, row: int, seq: Sequence) -> None:
        o, r = seq.options, self.rowvars
        r["seen"][row] = False
        r["frames"][row] = 0
        r["counter"][row] = 0
        r["seed"][row] = seq.seed
        r["penalty"][row] = o.repetition_penalty
        r["ignore_eos"][row] = o.ignore_eos
        for prefix, so in (("t_", o.talker), ("s_", o.subtalker)):
            r[prefix + "temperature"][row] = so.temperature
            r[prefix + "top_k"][row] = so.top_k
            r[prefix + "top_p"][row] = so.top_p
            r[prefix + "greedy"][row] = not so.do_sample

    def cache_bytes(self) -> int:
        """Bytes held by the talker's KV cache (the part that grows with batch and length)."""
        return sum(t.numel() * t.element_size() for t in self.cache)

    def release(self, keep_bytes: int = RELEASE_ABOVE_BYTES) -> bool:
        """With no live rows, shrink a KV cache larger than ``keep_bytes`` back to its initial
        size and hand the freed memory back to the OS. Returns whether it shrank.

        The cache grows to fit the largest batch and longest request seen; without this one
        long request would keep its peak for the life of the process. Fixed-shape (graph)
        runners keep their one allocation."""
        if self.rows or self.graphs is not None or self.cache_bytes() <= keep_bytes:
            return False
        logger.info("idle: KV cache of %.0f MiB released", self.cache_bytes() / 2**20)
        self._allocate(*INITIAL_CAPACITY)
        _trim_heap()
        return True

    def enable_graphs(self, max_batch: int, max_len: int, capture: bool | None = None) -> None:
        """Switch to fixed shapes: ``max_batch`` rows x ``max_len`` positions allocated once, the
        decode step run per batch-size bucket, and on CUDA replayed from captured graphs
        (``capture`` defaults to True on CUDA). On the CPU the same fixed-shape code runs eagerly."""
        from ..cuda.graphs import StepGraphs

        if self.rows:
            raise RuntimeError("enable graphs before the first request")
        self._allocate(max_batch, max_len)
        self.graphs = StepGraphs(self, capture=self.device.type == "cuda" if capture is None else capture)

    def reserve(self, batch: int, length: int) -> None:
        """Make room for ``batch`` rows of ``length`` positions (grows geometrically, never shrinks)."""
        cur_b, cur_t = self.capacity
        if batch <= cur_b and length <= cur_t:
            return
        if self.graphs is not None:
            raise RuntimeError(
                f"need {batch} rows x {length} positions; the runner is fixed at {cur_b} x {cur_t}"
            )
        new_b = cur_b if batch <= cur_b else max(batch, 2 * cur_b)
        new_t = cur_t if length <= cur_t else max(length, 2 * cur_t)
        logger.debug("KV cache grows to %d rows x %d positions", new_b, new_t)
        self._allocate(new_b, new_t)

    # ---------------------------------------------------------------- requests
    @property
    def active(self) -> int:
        """Rows in the batch (parked requests not counted); 1 when none is left but the last
        step's results are still to be handed out (a pipelined step whose rows were cancelled):
        while this is nonzero, ``step`` has work."""
        return len(self.rows) or int(self.reading is not None or bool(self.prefilling))

    @property
    def live(self) -> int:
        """Requests held: in the batch or parked (each needs a row when it runs)."""
        return len(self.rows) + len(self.parked) + len(self.prefilling)

    @torch.inference_mode()
    def extend_text(self, seq: Sequence, embeddings: torch.Tensor, close: torch.Tensor | None) -> None:
        """Append text positions [T, D] to a request whose text is arriving (and, with ``close``,
        the end-of-text embedding: its text is complete); a parked request then comes back."""
        prompt = seq.prompt
        parts = [prompt.trailing, embeddings.to(prompt.trailing)]
        if close is not None:
            parts.append(close.to(prompt.trailing)[None])
            seq.text_closed = True
        prompt.trailing = torch.cat(parts)

    @torch.inference_mode()
    def resume(self) -> int:
        """Bring back every parked request that can go on; returns how many came back."""
        ready = [p for p in self.parked if not starved(p.seq)]
        unpark(self, ready)
        return len(ready)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> None:
        """Prefill ``seq`` into the next free row and pick its first codebook-0 token."""
        self.add_many([seq])

    @torch.inference_mode()
    def add_many(self, seqs: list[Sequence]) -> None:
        """Prefill ``seqs`` into the next free rows in one call and pick their first tokens.

        The leading positions that depend only on the voice and language come from the prefix
        cache when the voice was used before (a miss computes them on their own first), so only
        each request's own positions are computed: all requests' together, right-padded, each row
        at its own positions (padding positions lie beyond the row's prompt: their keys and values
        are rewritten by the row's own steps before any query can see them). One host read for
        the lot. A request's numbers do not depend on the others it is admitted with."""
        if not seqs:
            return
        prefills = [seq.prompt.prefill.to(self.device, self.dtype) for seq in seqs]
        starts = [_own_start(seq, p.shape[0]) for seq, p in zip(seqs, prefills)]
        now = []
        for seq, p, start in zip(seqs, prefills, starts):
            if p.shape[0] - start > self.prefill_chunk:  # long: a chunk per step (prefill.py)
                begin(self, seq, p, start)
            else:
                now.append((seq, p, start))
        if not now:
            return
        seqs, prefills, starts = [list(t) for t in zip(*now)]
        first, b = len(self.rows), len(seqs)
        width = max(p.shape[0] - start for p, start in zip(prefills, starts))
        kv_len = max(start + width for start in starts)
        longest = max(p.shape[0] + seq.max_frames + 1 for seq, p in zip(seqs, prefills))
        self.reserve(first + b, max(longest, kv_len))  # once: growing copies only admitted rows
        for i, (seq, p) in enumerate(zip(seqs, prefills)):
            row = slice(first + i, first + i + 1)
            self._prefix((self.cache[0][:, row], self.cache[1][:, row]), seq, p, starts[i])
        rests = [p[start:] for p, start in zip(prefills, starts)]
        rows = slice(first, first + b)
        cache = (self.cache[0][:, rows], self.cache[1][:, rows])
        if b == 1:  # one sequence: aligned positions (and the native stack where it runs)
            out = self.talker.model.run(rests[0][None], cache, starts[0], kv_len=kv_len)[:, -1]
        else:
            x = prefills[0].new_zeros(b, width, prefills[0].shape[-1])
            for i, rest in enumerate(rests):
                x[i, : rest.shape[0]] = rest
            offsets = torch.arange(width, device=self.device)
            positions = torch.tensor(starts, device=self.device)[:, None] + offsets[None, :]
            out = self.talker.model.run(x, cache, positions, kv_len=kv_len)
            last = torch.tensor([r.shape[0] - 1 for r in rests], device=self.device)
            out = out[torch.arange(b, device=self.device), last]
        self._seat(seqs, [p.shape[0] for p in prefills], out)

    def _seat(self, seqs: list[Sequence], lengths: list[int], hidden: torch.Tensor) -> None:
        """Give ``seqs``, whose prompts (of ``lengths`` positions) are in the next free rows of
        the KV cache, their row state, and choose their first tokens from the prompts' last
        hidden states [n, D] (the admission's one host read)."""
        first = len(self.rows)
        rows = slice(first, first + len(seqs))
        for i, (seq, n) in enumerate(zip(seqs, lengths)):
            self.rows.append(seq)
            seq.position = n
            self._set_row(first + i, seq)
            self.rowvars["position"][first + i] = n
        self._plan(seqs)
        self.rowvars["hidden"][rows] = hidden
        tokens = self._choose(self.talker.codec_head(hidden), rows)
        self.rowvars["pending"][rows] = tokens
        for seq, token in zip(seqs, tokens.tolist()):
            seq.pending = token

    def _prefix(
        self, cache: tuple[torch.Tensor, torch.Tensor], seq: Sequence, prefill: torch.Tensor, start: int
    ) -> None:
        """Fill the voice prefix (positions < ``start``) of ``seq`` into its one-row ``cache``
        (k, v of [layers, 1, ...]) from the prefix cache, computing and caching it on a miss.

        The prefix is computed with eager layers always: the same keys and values whichever
        path admits the request (a chunked prefill's cache has a one-off shape that compiled
        layers would compile for), and a prefill is bound by its products anyway."""
        if start == 0:
            return
        k_row, v_row = cache
        key = seq.prompt.prefix_key
        # A miss computes the prefix on its own first, exactly as a hit then continues from
        # it: the request's own positions see bit-identical keys and values either way (one
        # prefill of all positions differs by float rounding, which 8-bit inputs can turn
        # into other codes, so a seeded request would sound different on a cache miss).
        cached = self.prefix_cache.get(key)
        if cached is None:
            self.talker.model.run(prefill[None, :start], (k_row, v_row), 0, kv_len=start, eager=True)
            cached = (k_row[:, :, :, :start].clone(), v_row[:, :, :, :start].clone())
            self.prefix_cache[key] = cached
            while len(self.prefix_cache) > self.prefix_cache_size:
                self.prefix_cache.popitem(last=False)
        else:
            k_row[:, :, :, :start], v_row[:, :, :, :start] = cached
            self.prefix_cache.move_to_end(key)
            self.prefix_hits += 1

    @torch.inference_mode()
    def cancel(self, seq: Sequence) -> None:
        """Drop a sequence now; it costs nothing from the next step on.

        Inference mode like ``add`` and ``step``: moving the last row into the hole writes the
        caches in place, and they were made in inference mode (a plain in-place write to an
        inference tensor raises, which once killed the serving thread on the first cancel)."""
        if seq in self.rows:
            seq.reason = "cancelled"
            self._remove(self.rows.index(seq))
        reading = self.reading
        if not self.rows and reading is not None and not reading.limited:
            if all(s.reason == "cancelled" for s in reading.made):  # nothing in it for anyone
                self.reading = None
        for p in self.parked:
            if p.seq is seq:
                seq.reason = "cancelled"
                self.parked.remove(p)
                break
        for p in self.prefilling:
            if p.seq is seq:
                seq.reason = "cancelled"
                self.prefilling.remove(p)
                break

    def reset(self, reason: str = "error") -> list[Sequence]:
        """Forget every row without touching device memory (the recovery after a failed step,
        when the caches may be in any state): returns the sequences that were dropped."""
        dropped = self.rows + [p.seq for p in self.parked] + [p.seq for p in self.prefilling]
        self.rows, self.parked, self.prefilling, self.reading = [], [], [], None
        for seq in dropped:
            seq.reason = reason
        return dropped

    def _remove(self, row: int) -> None:
        last = len(self.rows) - 1
        if row != last:  # keep rows contiguous: move the last row into the hole
            t = self.rows[last].position
            self.cache[0][:, row, :, :t] = self.cache[0][:, last, :, :t]
            self.cache[1][:, row, :, :t] = self.cache[1][:, last, :, :t]
            for value in self.rowvars.values():
                value[row] = value[last]
            self.rows[row] = self.rows[last]
        self.rows.pop()

    # ------------------------------------------------------------------ decode
    def _choose(self, logits: torch.Tensor, rows: slice) -> torch.Tensor:
        """Codebook-0 token per row from talker logits [B, V], in HF's processor order:
        repetition penalty, no end-of-speech in the first frames, suppressed control ids, sampling."""
        r = {name: value[rows] for name, value in self.rowvars.items()}
        logits = apply_repetition_penalty(logits.float(), r["seen"], r["penalty"])
        early = (r["frames"] < MIN_FRAMES) | r["ignore_eos"]
        logits[:, self.eos] = torch.where(early, float("-inf"), logits[:, self.eos])
        logits = logits.masked_fill(self.suppress, float("-inf"))
        tokens = self._sample(logits, r, "t_")
        self.rowvars["seen"][rows] = r["seen"].scatter(1, tokens[:, None], True)
        return tokens

    def _plan(self, rows: list[Sequence]) -> tuple[SamplingPlan, SamplingPlan]:
        """Set (and return) the sampling plans for a step of ``rows``."""
        self.plans = {
            "t_": SamplingPlan.of([s.options.talker for s in rows]),
            "s_": SamplingPlan.of([s.options.subtalker for s in rows]),
        }
        return self.plans["t_"], self.plans["s_"]

    def _sample(self, logits: torch.Tensor, r: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        tokens = sample(
            logits,
            r[prefix + "temperature"],
            r[prefix + "top_k"],
            r[prefix + "top_p"],
            r[prefix + "greedy"],
            r["seed"],
            r["counter"],
            self.plans[prefix],
        )
        r["counter"] += 1  # a view of the row state: advances it in place
        return tokens

    def _predict_codebooks(self, b: int) -> torch.Tensor:
        """Codebooks 1..N-1 for the pending frame of rows [0, b): returns codes [b, N]."""
        cp = self.talker.code_predictor
        r = {name: value[:b] for name, value in self.rowvars.items()}
        cache = (self.cp_cache[0][:, :b], self.cp_cache[1][:, :b])
        code0 = r["pending"]
        x = cp.small_to_mtp_projection(torch.stack([r["hidden"], self.talker.embed_codec(code0)], dim=1))
        out = cp.model.run(x, cache, 0, kv_len=2)  # every row is at the same code-predictor position
        codes = [code0, self._sample(cp.lm_head[0](out[:, -1]), r, "s_")]
        for j in range(1, self.groups - 1):
            x = cp.small_to_mtp_projection(cp.model.codec_embedding[j - 1](codes[-1]))[:, None]
            out = cp.model.run(x, cache, j + 1, kv_len=j + 2)
            codes.append(self._sample(cp.lm_head[j](out[:, -1]), r, "s_"))
        r["frames"] += 1
        return torch.stack(codes, dim=1)

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Advance every active sequence by one frame; finished sequences leave the batch.

        One read of the device per step, at its end: the frame's codes and the next pending
        tokens come back together (the host decides end of speech from the tokens it read the
        step before). Positions and text embeddings stay on the device.

        Pipelined (``self.pipelined``, CUDA by default) the read is asynchronous, into pinned
        memory, and the next step launches its frame before it waits for it: the device works
        on the new frame while the host takes the old one's codes and decides who ends. A step
        then returns the previous step's frames (and whatever ended with them); a row whose
        pending token turns out to be end-of-speech has its new frame, made in vain, dropped.
        The codes are the same either way."""
        outputs: list[StepOutput] = []
        codes = None
        if self.prefilling:  # long prompts: their next chunk first; complete ones join now
            advance(self)
        if self.pipelined:
            codes = self._frame() if self.rows else None  # queued before waiting on the device
            outputs = self._receive(self.reading)
            self.reading = None
        # 1. sequences whose pending token is end-of-speech are done.
        kept = list(range(len(self.rows)))  # which row of ``codes`` each remaining row holds
        for row in reversed(range(len(self.rows))):
            seq = self.rows[row]
            if seq.pending == self.eos:
                seq.reason = "eos"
                outputs.append(StepOutput(seq, None))
                _take_out(kept, row)
                self._remove(row)
        b = len(self.rows)
        if b == 0:
            return outputs
        # 2. complete the pending frame of every row (pipelined: drop those made in vain).
        codes = self._frame() if codes is None else _rows_of(codes, kept)
        made = list(self.rows)  # the rows of ``codes``
        for seq in made:
            seq.frames += 1
        # 3. rows at their frame limit leave, rows out of text are parked; one talker step for
        #    the rows that go on.
        order = list(range(b))  # which row of ``codes`` each remaining row holds
        limited: list[StepOutput] = []
        for row in reversed(range(b)):
            seq = self.rows[row]
            if seq.frames >= seq.max_frames:
                seq.reason = "max_frames"
                limited.append(StepOutput(seq, None))
            elif starved(seq):
                park(self, row, codes[order[row]])
            else:
                continue
            _take_out(order, row)
            if seq.reason:
                self._remove(row)
        n = len(self.rows)
        if n:
            self._talker_step(n, _rows_of(codes, order))
        # 4. the one host read: this frame's codes and the next pending tokens.
        reading = self._send(codes, made, limited)
        if self.pipelined and n:
            self.reading = reading  # taken by the next step, after it has queued its frame
            return outputs
        return outputs + self._receive(reading)

    def _frame(self) -> torch.Tensor:
        """Queue the code predictor for every row: codes [rows, N] of their pending frames."""
        b = len(self.rows)
        plans = self._plan(self.rows)
        return self.graphs.frame(b, plans) if self.graphs is not None else self._predict_codebooks(b)

    def _send(self, codes: torch.Tensor, made: list[Sequence], limited: list[StepOutput]) -> _Reading:
        """Start reading the frame's codes and the rows' next pending tokens: a blocking read,
        or, pipelined on CUDA, a copy into pinned memory that the next step waits for."""
        talked = list(self.rows)
        for seq in talked:
            seq.pending = -1
        flat = codes.reshape(-1)
        values = torch.cat([flat, self.rowvars["pending"][: len(talked)]]) if talked else flat
        done = None
        if self.pipelined and talked and values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:  # a blocking read (on a CPU, ``values`` itself: a fresh tensor, nothing to copy)
            host = values.cpu()
        return _Reading(made, talked, limited, host, done)

    def _receive(self, reading: _Reading | None) -> list[StepOutput]:
        """Wait for a step's results and hand them out: every frame made (a request cancelled
        meanwhile gets none), then the requests that ended at it."""
        if reading is None:
            return []
        if reading.done is not None:
            reading.done.synchronize()
        m = len(reading.made)
        codes = reading.host[: reading.host.numel() - len(reading.talked)].view(m, -1)
        for seq, token in zip(reading.talked, reading.host[codes.numel() :].tolist()):
            seq.pending = token
        made = enumerate(reading.made)
        return [StepOutput(seq, codes[i]) for i, seq in made if seq.reason != "cancelled"] + reading.limited

    def _talker_step(self, b: int, codes: torch.Tensor) -> None:
        """The talker step of rows [0, b) from their frame's codes [b, N] (fixed shapes or not)."""
        text = []
        for seq in self.rows:
            step = seq.frames - 1
            tr = seq.prompt.trailing
            text.append(tr[step] if step < tr.shape[0] else seq.prompt.pad)
        text_emb = torch.stack(text).to(self.device, self.dtype)
        positions = self.rowvars["position"][:b]
        plans = self._plan(self.rows)
        kv_len = max(s.position for s in self.rows) + 1
        if self.graphs is not None:
            self.graphs.advance(b, codes, text_emb, positions, plans, kv_len)
        else:
            self._advance(b, codes, text_emb, positions, kv_len=kv_len)
        positions += 1  # a view of the row state: advances it in place
        for seq in self.rows:
            seq.position += 1

    def _advance(
        self,
        b: int,
        codes: torch.Tensor,
        text_emb: torch.Tensor,
        positions: torch.Tensor,
        kv_len: int,
        start: int = 0,
    ) -> None:
        """One talker step for rows [start, start + b): codes [b, N] of the frame just made, the
        text embedding [b, D] that goes with it, positions [b]. Picks each row's next
        codebook-0 token."""
        rows = slice(start, start + b)
        x = (self.talker.embed_frame(codes) + text_emb)[:, None]
        cache = (self.cache[0][:, rows], self.cache[1][:, rows])
        out = self.talker.model.run(x, cache, positions[:, None], kv_len=kv_len)
        self.rowvars["hidden"][rows] = out[:, -1]
        self.rowvars["pending"][rows] = self._choose(self.talker.codec_head(out[:, -1]), rows)
