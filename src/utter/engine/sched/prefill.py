"""Chunked prefill: a long prompt is computed a chunk per decode step, so running streams keep
their cadence while it is admitted.

A prompt's own positions (after the voice prefix the prefix cache holds) above
``Runner.prefill_chunk`` are not prefilled in the admission call: the request waits out of the
batch, in a KV cache of its own, and each decode step first computes its next chunk of
positions (with no rows running, all of them at once). With its last chunk it joins the batch
like an admitted request: its KV copied into a free row, its first token chosen.

Chunks fall at fixed positions of the prompt, whatever else runs, so a request's numbers do
not depend on the load. They differ from a one-shot prefill of the same prompt by float
rounding only (the same products in other shapes); prompts up to the chunk size, the common
case, are prefilled in one call as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..model.layers import new_cache

if TYPE_CHECKING:
    from .runner import Runner, Sequence

PREFILL_CHUNK = 256  # own prompt positions computed per decode step


@dataclass(eq=False)
class Prefilling:
    seq: Sequence
    prefill: torch.Tensor  # [S, D] the whole prompt, on the device
    cache: tuple[torch.Tensor, torch.Tensor]  # its own: [layers, 1, kv heads, S, head dim]
    done: int  # positions computed (or filled from the prefix cache) so far
    last: torch.Tensor | None = None  # hidden state of the last position, once computed


def begin(runner: Runner, seq: Sequence, prefill: torch.Tensor, start: int) -> None:
    """Set ``seq`` aside to be prefilled in chunks, its voice prefix (< ``start``) filled now."""
    cfg = runner.cfg.talker.decoder
    cache = new_cache(cfg, 1, prefill.shape[0], runner.device, runner.dtype)
    runner._prefix(cache, seq, prefill, start)
    runner.prefilling.append(Prefilling(seq, prefill, cache, start))


def advance(runner: Runner) -> None:
    """One chunk for every prompt being prefilled (all of them when no row is running, since
    no stream waits); prompts that are complete join the batch together."""
    complete = []
    for p in runner.prefilling:
        while True:
            end = min(p.done + runner.prefill_chunk, p.prefill.shape[0])
            # Eager layers: the cache's length is this prompt's, a shape compiled layers would
            # compile anew for every long prompt (prefill is bound by its products anyway).
            x = p.prefill[None, p.done : end]
            out = runner.talker.model.run(x, p.cache, p.done, kv_len=end, eager=True)
            p.done = end
            if end == p.prefill.shape[0]:
                p.last = out[0, -1]
                complete.append(p)
                break
            if runner.rows:
                break
    if complete:
        join(runner, complete)


def join(runner: Runner, complete: list[Prefilling]) -> None:
    """Move prefilled prompts into free rows and choose their first tokens (one host read)."""
    first = len(runner.rows)
    longest = max(p.prefill.shape[0] + p.seq.max_frames + 1 for p in complete)
    runner.reserve(first + len(complete), longest)
    for i, p in enumerate(complete):
        row, n = first + i, p.prefill.shape[0]
        runner.cache[0][:, row : row + 1, :, :n] = p.cache[0]
        runner.cache[1][:, row : row + 1, :, :n] = p.cache[1]
        runner.prefilling.remove(p)
    hidden = torch.stack([p.last for p in complete])
    runner._seat([p.seq for p in complete], [p.prefill.shape[0] for p in complete], hidden)
