"""Batched, per-row token selection: repetition penalty, temperature, top-k, top-p, seeded draws.

Each row of a batch belongs to a different request with its own options and seed. Randomness
is counter-based (a hash of seed, draw number and token), so a request samples the same tokens
whether it runs alone or beside others, and the whole selection is plain tensor ops on the
device: no per-row Python loop, no host round trip, capturable in a CUDA graph.
The order of operations follows Hugging Face ``generate`` (which the official package uses),
so greedy decoding reproduces the official codes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_SEED = 2**63 - 1  # the largest seed the APIs take (a signed 64-bit integer, as databases store it)


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


_MASK32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32).

    Products overflow int64 and wrap, which keeps the low 32 bits exact on every device.
    """
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def uniform_noise(seed: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """Counter-based uniform noise in (0, 1): [B] seeds and draw counters -> [B, vocab] float32.

    Each value is a hash of (seed, counter, token index), so a request draws the same numbers
    whether it runs alone or in a batch, on any device, and the whole draw is a few tensor ops
    (no per-row generator, nothing that stops a CUDA graph from being captured).
    """
    return noise_at(seed, counter, torch.arange(vocab, device=seed.device, dtype=torch.int64)[None, :])


def noise_at(seed: torch.Tensor, counter: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """:func:`uniform_noise` at token ids ``index`` [B or 1, N] only: the same values."""
    lo = seed[:, None] & _MASK32
    hi = (seed[:, None] >> 32) & _MASK32
    h = _fmix32((counter[:, None] * 0x9E3779B9 + index) & _MASK32)
    h = _fmix32(h ^ lo)
    h = _fmix32(h ^ hi ^ 0x5BD1E995)
    return unit_interval(h)


def unit_interval(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes -> float32 strictly inside (0, 1): the top 23 bits, centred in their step.

    23 bits, not 24: (2**24 - 0.5) / 2**24 rounds to exactly 1.0 in float32, where the Gumbel
    noise -log(-log(u)) is infinite, the masked logits -inf + inf turn NaN, and argmax then picks
    a token that top-k or top-p had removed. With 23 bits the largest value is 1 - 2**-24."""
    return ((h >> 9).to(torch.float32) + 0.5) / float(1 << 23)


@dataclass(frozen=True)
class SamplingPlan:
    """What the caller knows on the host about a batch's options, so that :func:`sample` picks
    its path without reading the device (a host sync, and not allowed inside a CUDA graph).

    ``greedy``: every row is greedy (argmax, no sort, no noise). ``top_k``: every sampling row
    has 0 < top_k <= this and top_p == 1, so the k-th value comes from one ``topk`` instead of
    sorting the vocabulary. Neither: the full path. The runner derives it from its rows' options.
    """

    greedy: bool = False
    top_k: int | None = None

    @classmethod
    def of(cls, options: list[SamplingOptions]) -> SamplingPlan:
        sampling = [o for o in options if o.do_sample]
        if not sampling:
            return cls(greedy=True)
        if all(0 < o.top_k <= TOP_K_FAST_MAX and o.top_p >= 1.0 for o in sampling):
            return cls(top_k=max(o.top_k for o in sampling))
        return cls()


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    greedy: torch.Tensor,
    seed: torch.Tensor,
    counter: torch.Tensor,
    plan: SamplingPlan | None = None,
) -> torch.Tensor:
    """Pick one token per row of logits [B, V] with per-row options (all [B] tensors).

    Greedy rows take the argmax. Sampling rows apply temperature, top-k and top-p as HF's
    warpers do (ties at the k-th value are kept) and then draw with the Gumbel-max trick on
    :func:`uniform_noise`, which samples exactly from the softmax of the filtered logits.
    Every path draws the same token; ``plan`` (host knowledge of the options) only picks the
    cheapest one without looking at the device.
    """
    logits = logits.float()
    vocab = logits.shape[-1]
    if plan is not None and plan.greedy:
        return logits.argmax(-1)
    best = logits.argmax(-1)
    if logits.is_cpu and CPU_SHORTCUTS:  # data-dependent shortcuts: free on the CPU, not in CUDA graphs
        if plan is None and bool(greedy.all()):
            return best
        k_max = plan.top_k if plan is not None and plan.top_k is not None else int(top_k.max())
        if (plan is not None and plan.top_k is not None) or (int(top_k.min()) > 0 and k_max < TOP_K_FAST_MAX):
            if k_max < vocab:
                # greedy and padding rows may hold any top_k: keep their index in range
                k = top_k.clamp(min=1, max=k_max)
                drawn = _sample_top_k(logits, temperature, k, top_p, seed, counter, k_max)
                if drawn is not None:
                    return torch.where(greedy, best, drawn)
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    if plan is not None and plan.top_k is not None and plan.top_k < vocab:
        # top-k without top-p: the k-th value from one topk, no sort, no host sync (ties at the
        # k-th value are kept, as in HF); then the same noise over the whole vocabulary.
        k = top_k.clamp(min=1, max=plan.top_k)
        kth = scaled.topk(plan.top_k, dim=-1).values.gather(1, (k - 1)[:, None])
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        gumbel = -torch.log(-torch.log(uniform_noise(seed, counter, vocab)))
        return torch.where(greedy, best, (scaled + gumbel).argmax(-1))
    ordered = scaled.sort(-1, descending=True).values
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth = ordered.gather(1, (k - 1)[:, None])
    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    asc, order = scaled.sort(-1, descending=False)
    cum = asc.softmax(-1).cumsum(-1)
    drop = cum <= (1 - top_p)[:, None]
    drop[:, -1] = False  # the most likely token always stays
    scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    gumbel = -torch.log(-torch.log(uniform_noise(seed, counter, vocab)))
    drawn = (scaled + gumbel).argmax(-1)
    return torch.where(greedy, best, drawn)


# Below this top-k, sampling looks at the k best tokens only instead of sorting the vocabulary.
TOP_K_FAST_MAX = 256
# Tests turn the CPU-only shortcuts off to run the device path (what GPUs and graphs run) here.
CPU_SHORTCUTS = True


def _sample_top_k(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    counter: torch.Tensor,
    k_max: int,
) -> torch.Tensor | None:
    """:func:`sample`'s draw computed on each row's k best tokens only (every row has top_k > 0).

    The same candidates, scaled logits and noise values as the full path, so the same token:
    top-k keeps what top-k keeps, top-p's kept set is computed on the candidates in descending
    order (the mass above a token is what the ascending cumulative sum leaves out), and the
    Gumbel noise is drawn at the candidates' token ids. Returns None when some row has a tie at
    its k-th value (HF keeps all tied tokens): the caller then takes the full path.
    """
    values, index = logits.topk(k_max + 1, dim=-1)  # descending; one more to see ties at the k-th
    scaled = values / temperature[:, None]
    kth = scaled.gather(1, (top_k - 1)[:, None])
    if bool((scaled.gather(1, top_k[:, None]) == kth).any()):
        return None
    rank = torch.arange(k_max + 1, device=logits.device)[None, :]
    scaled = scaled.masked_fill(rank >= top_k[:, None], float("-inf"))
    probs = scaled.softmax(-1)
    above = probs.cumsum(-1) - probs  # probability mass of the better candidates
    scaled = scaled.masked_fill(above >= top_p[:, None], float("-inf"))
    gumbel = -torch.log(-torch.log(noise_at(seed, counter, index)))
    pick = (scaled + gumbel).argmax(-1, keepdim=True)
    return index.gather(1, pick)[:, 0]


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
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch's generators take
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}")

    @classmethod
    def greedy(cls, max_frames: int | None = None) -> GenerationOptions:
        """Deterministic decoding (argmax everywhere), as used by the parity tests."""
        off = SamplingOptions(do_sample=False)
        return cls(talker=off, subtalker=off, max_frames=max_frames)
