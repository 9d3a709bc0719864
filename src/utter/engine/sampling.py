"""Batched, per-row token selection: repetition penalty, suppression, temperature, top-k, top-p.

Each row of a batch belongs to a different request with its own options and its own random
generator, so a request samples the same tokens whether it runs alone or beside others.
The order of operations follows Hugging Face ``generate`` (which the official package uses),
so greedy decoding reproduces the official codes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick one token from logits. ``do_sample=False`` means greedy (argmax)."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise ValueError("temperature must be > 0 when sampling")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Penalise tokens already generated: logits [B, V]; seen [B, V] bool; penalty [B] (1.0 = off)."""
    p = penalty[:, None].to(logits.dtype)
    penalised = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalised, logits)


def _filter(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Temperature, top-k and top-p on one row [V], as HF's warpers do."""
    if opts.temperature != 1.0:
        logits = logits / opts.temperature
    if opts.top_k > 0:
        k = min(opts.top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= (1 - opts.top_p)
        remove[-1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return logits


def select(
    logits: torch.Tensor, options: list[SamplingOptions], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """Pick one token per row of logits [B, V] (already penalised/suppressed). Returns [B] int64."""
    logits = logits.float()
    greedy = logits.argmax(-1)
    if not any(o.do_sample for o in options):
        return greedy
    out = greedy.clone()
    for row, (opts, gen) in enumerate(zip(options, generators)):
        if not opts.do_sample:
            continue
        probs = _filter(logits[row], opts).softmax(-1)
        if gen is not None and gen.device != probs.device:
            probs_for_draw = probs.cpu()
        else:
            probs_for_draw = probs
        out[row] = torch.multinomial(probs_for_draw, 1, generator=gen).to(out.device)[0]
    return out


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request decoding options; the defaults come from the checkpoint's generation_config.json.

    ``talker`` picks codebook 0 of each frame, ``subtalker`` the remaining codebooks (the official
    package exposes them separately as ``subtalker_*``). ``max_frames`` caps the audio length
    (one frame is 1920 samples, 80 ms); None means a limit derived from the text length.
    """

    talker: SamplingOptions = SamplingOptions()
    subtalker: SamplingOptions = SamplingOptions()
    repetition_penalty: float = 1.05
    seed: int | None = None
    max_frames: int | None = None
    ignore_eos: bool = False  # benchmarks only: never stop early, always make max_frames frames

    def __post_init__(self) -> None:
        if not self.repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError("max_frames must be >= 1")

    @classmethod
    def greedy(cls, max_frames: int | None = None) -> GenerationOptions:
        """Deterministic decoding (argmax everywhere), as used by the parity tests."""
        off = SamplingOptions(do_sample=False)
        return cls(talker=off, subtalker=off, max_frames=max_frames)
