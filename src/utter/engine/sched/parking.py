"""Parking: a request waiting for more text leaves the batch and costs nothing until it comes.

A request whose text arrives in pieces (``textfeed.py``) may consume every text position it has
before the next piece arrives. Its frame is made and handed out as usual, but the talker step
that reads the next text position cannot run, so the runner parks it: its KV cache rows and
per-row state are copied aside, the frame's codes kept, and its row given up (rows stay
contiguous, so the batched step never sees it). When text (or the end of it) arrives, the row
comes back at the end of the batch, its deferred talker step runs for it alone, and it joins
the next step with exactly the state it would have had without the pause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .runner import Runner, Sequence


@dataclass(eq=False)
class ParkedRow:
    seq: Sequence
    keys: torch.Tensor  # [layers, 1, kv heads, position, head dim]
    values: torch.Tensor
    rowvars: dict[str, torch.Tensor]  # the row's per-row state
    codes: torch.Tensor  # [num_codebooks]: the frame whose talker step waits for text


def starved(seq: Sequence) -> bool:
    """Whether the talker step after ``seq``'s latest frame needs a text position not yet
    received (the text is still open and every position it has was read)."""
    return seq.feed is not None and not seq.text_closed and seq.frames - 1 >= seq.prompt.trailing.shape[0]


def park(runner: Runner, row: int, codes: torch.Tensor) -> None:
    """Move ``row`` out of the batch, keeping everything its next talker step needs."""
    seq = runner.rows[row]
    t = seq.position
    keys = runner.cache[0][:, row : row + 1, :, :t].clone()
    values = runner.cache[1][:, row : row + 1, :, :t].clone()
    state = {name: value[row].clone() for name, value in runner.rowvars.items()}
    runner.parked.append(ParkedRow(seq, keys, values, state, codes.clone()))
    runner._remove(row)


def unpark(runner: Runner, ready: list[ParkedRow]) -> None:
    """Bring ``ready`` rows back at the end of the batch and run their deferred talker steps
    (together: one forward and one host read for the lot)."""
    if not ready:
        return
    first = len(runner.rows)
    longest = max(p.seq.position + (p.seq.max_frames - p.seq.frames) + 1 for p in ready)
    runner.reserve(first + len(ready), longest)
    for i, p in enumerate(ready):
        row, t = first + i, p.seq.position
        runner.cache[0][:, row : row + 1, :, :t] = p.keys
        runner.cache[1][:, row : row + 1, :, :t] = p.values
        for name, value in runner.rowvars.items():
            value[row] = p.rowvars[name]
        runner.rows.append(p.seq)
        runner.parked.remove(p)
    rows = runner.rows[first:]
    codes = torch.stack([p.codes for p in ready])
    text = [seq.prompt.trailing[seq.frames - 1] if not starved(seq) else seq.prompt.pad for seq in rows]
    text_emb = torch.stack(text).to(runner.device, runner.dtype)
    positions = runner.rowvars["position"][first : first + len(ready)]
    kv_len = max(seq.position for seq in rows) + 1
    runner._plan(rows)
    runner._advance(len(ready), codes, text_emb, positions, kv_len=kv_len, start=first)
    positions += 1
    for seq in rows:
        seq.position += 1
    for seq, token in zip(rows, runner.rowvars["pending"][first : first + len(ready)].tolist()):
        seq.pending = token
