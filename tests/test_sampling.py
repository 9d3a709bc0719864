"""Batched sampling: HF-equivalent filtering, exact draws from the softmax, batch-independent seeds."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from utter.engine.sampling import apply_repetition_penalty, sample, uniform_noise


def _rows(b: int, **kw):
    base = dict(temperature=1.0, top_k=0, top_p=1.0, greedy=False, seed=0, counter=0)
    base.update(kw)
    return {
        "temperature": torch.full((b,), float(base["temperature"])),
        "top_k": torch.full((b,), int(base["top_k"])),
        "top_p": torch.full((b,), float(base["top_p"])),
        "greedy": torch.full((b,), bool(base["greedy"])),
        "seed": torch.full((b,), int(base["seed"])),
        "counter": torch.full((b,), int(base["counter"])),
    }


def test_noise_is_uniform_deterministic_and_row_independent() -> None:
    seeds = torch.tensor([1, 2, 2**40 + 7])
    counters = torch.tensor([0, 5, 9])
    u = uniform_noise(seeds, counters, 4096)
    assert u.shape == (3, 4096) and bool(((u > 0) & (u < 1)).all())
    assert abs(u.mean().item() - 0.5) < 0.01
    assert torch.equal(u, uniform_noise(seeds, counters, 4096))
    # A row's numbers depend only on its own seed and counter, not on its neighbours.
    assert torch.equal(u[1], uniform_noise(seeds[1:2], counters[1:2], 4096)[0])
    assert not torch.equal(u[1], uniform_noise(torch.tensor([2]), torch.tensor([6]), 4096)[0])


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, **_rows(4, greedy=True)), logits.argmax(-1))
    assert torch.equal(sample(logits, **_rows(4, top_k=1, temperature=0.7)), logits.argmax(-1))


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.9, 50, 1.0), (0.7, 5, 0.8), (1.3, 0, 0.5)])
def test_filtering_matches_hf_warpers(temperature: float, top_k: int, top_p: float) -> None:
    """The tokens that can be drawn are exactly those HF's warpers leave finite."""
    torch.manual_seed(0)
    logits = torch.randn(3, 300) * 3
    hf = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        hf = TopKLogitsWarper(top_k)(None, hf)
    hf = TopPLogitsWarper(top_p)(None, hf) if top_p < 1 else hf
    allowed = torch.isfinite(hf)
    rows = _rows(3, temperature=temperature, top_k=top_k, top_p=top_p)
    drawn = torch.zeros_like(allowed)
    for counter in range(400):
        rows["counter"] = torch.full((3,), counter)
        tok = sample(logits, **rows)
        drawn[torch.arange(3), tok] = True
    assert not (drawn & ~allowed).any()  # nothing outside the allowed set
    if top_k and top_k <= 5:
        assert torch.equal(drawn, allowed)  # and, for small sets, everything in it


def test_draws_follow_the_softmax() -> None:
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    logits = probs.log()[None].expand(20000, -1)
    rows = _rows(20000, seed=3)
    rows["counter"] = torch.arange(20000)
    counts = torch.bincount(sample(logits, **rows), minlength=4).float() / 20000
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)


def test_repetition_penalty_matches_hf() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 30)
    history = torch.tensor([[1, 5, 5, 9], [0, 2, 3, 29]])
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    seen = torch.zeros(2, 30, dtype=torch.bool).scatter(1, history, True)
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3])), expected)


def test_top_k_fast_path_draws_what_the_full_path_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPUs, rows that all have top-k look at their k best tokens only: the same tokens as
    sorting the whole vocabulary, for mixed per-row options, and ties at the k-th value (HF
    keeps every tied token) fall back to the full path."""
    import utter.engine.sampling as sampling

    torch.manual_seed(4)
    b, v = 48, 2048
    logits = torch.randn(b, v) * 3
    logits[0, :10] = 9.0  # row 0: ten tokens tied at the top, with top_k 5 -> full path
    rows = {
        "temperature": torch.rand(b) + 0.3,
        "top_k": torch.randint(1, 80, (b,)),
        "top_p": torch.where(torch.rand(b) < 0.5, torch.ones(b), torch.rand(b) * 0.9 + 0.05),
        "greedy": torch.rand(b) < 0.2,
        "seed": torch.randint(0, 2**40, (b,)),
        "counter": torch.randint(0, 1000, (b,)),
    }
    rows["top_k"][0] = 5
    calls = []
    fast_path = sampling._sample_top_k
    monkeypatch.setattr(sampling, "_sample_top_k", lambda *a: calls.append(1) or fast_path(*a))
    fast = sample(logits, **rows)
    args = [rows[k] for k in ("temperature", "top_k", "top_p", "seed", "counter")]
    assert calls and fast_path(logits, *args, int(rows["top_k"].max())) is None  # the tie
    monkeypatch.setattr(sampling, "TOP_K_FAST_MAX", 0)
    full = sample(logits, **rows)
    assert torch.equal(fast, full)
    rows["top_k"][0] = 50  # no tie now: the fast path answers, and agrees
    monkeypatch.setattr(sampling, "TOP_K_FAST_MAX", 256)
    fast = sample(logits, **rows)
    monkeypatch.setattr(sampling, "TOP_K_FAST_MAX", 0)
    assert torch.equal(fast, sample(logits, **rows))


def test_noise_stays_strictly_inside_zero_and_one() -> None:
    """The extreme hashes map inside (0, 1) in float32: at exactly 1.0 the Gumbel noise is
    infinite and a token removed by top-k (logit -inf) becomes NaN, which argmax picks."""
    from utter.engine.sampling import unit_interval

    u = unit_interval(torch.tensor([0, 1, 2**32 - 1, 2**32 - 2**8], dtype=torch.int64))
    assert bool(((u > 0) & (u < 1)).all()), u.tolist()
    assert bool(torch.isfinite(-torch.log(-torch.log(u))).all())


@pytest.mark.parametrize("fast", [True, False], ids=["top-k path", "full path"])
def test_a_draw_never_leaves_the_top_k(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    import utter.engine.sampling as sampling

    if not fast:
        monkeypatch.setattr(sampling, "TOP_K_FAST_MAX", 0)
    torch.manual_seed(9)
    b, v = 512, 3072
    logits = torch.randn(b, v)
    rows = _rows(b, temperature=1.5, top_k=50)
    rows["seed"] = torch.randint(0, 2**62, (b,))
    rows["counter"] = torch.randint(0, 10_000, (b,))
    top = logits.topk(50, dim=-1).indices
    for step in range(4):
        rows["counter"] += step
        drawn = sample(logits, **rows)
        assert bool((top == drawn[:, None]).any(-1).all())


def test_a_row_draws_the_same_beside_a_row_with_ties() -> None:
    """A row with tied logits at its k-th value sends the whole batch down the full path; every
    other row must still draw what it draws alone (the fast path), for sampled rows."""
    torch.manual_seed(12)
    b, v = 6, 3072
    logits = torch.randn(b, v) * 2
    logits[0, :20] = 5.0  # twenty tokens tied at the top, top_k 8: a tie at the k-th value
    rows = _rows(b, temperature=0.9, top_k=8, top_p=0.8)
    rows["seed"] = torch.arange(100, 100 + b)
    rows["counter"] = torch.arange(7, 7 + b)
    together = sample(logits, **rows)
    for i in range(1, b):
        alone = sample(logits[i : i + 1], **{k: t[i : i + 1] for k, t in rows.items()})
        assert int(alone) == int(together[i])


@pytest.mark.parametrize("shortcuts", [True, False], ids=["cpu shortcuts", "device path"])
def test_plans_pick_cheaper_paths_that_draw_the_same(
    monkeypatch: pytest.MonkeyPatch, shortcuts: bool
) -> None:
    """A plan (host knowledge of the options) never changes a draw: greedy batches take a bare
    argmax, top-k batches without top-p one topk instead of two sorts (ties at the k-th value
    kept), on the CPU and on the device path GPUs and CUDA graphs run (forced here)."""
    import utter.engine.sampling as sampling
    from utter.engine.opcount import count_ops
    from utter.engine.sampling import SamplingOptions, SamplingPlan

    monkeypatch.setattr(sampling, "CPU_SHORTCUTS", shortcuts)
    torch.manual_seed(21)
    b, v = 32, 3072
    logits = torch.randn(b, v) * 3
    logits[0, :30] = 8.0  # tied at the top: k-th value ties for top_k <= 30
    logits[1, 100:] = float("-inf")  # masked tokens, as the talker's control ids are
    options = [SamplingOptions(True, 0.5 + (i % 5) / 5, 1 + (i * 7) % 60, 1.0) for i in range(b)]
    options[3] = SamplingOptions(do_sample=False)
    rows = {
        "temperature": torch.tensor([o.temperature for o in options]),
        "top_k": torch.tensor([o.top_k for o in options]),
        "top_p": torch.tensor([o.top_p for o in options]),
        "greedy": torch.tensor([not o.do_sample for o in options]),
        "seed": torch.arange(b) * 1000 + 5,
        "counter": torch.arange(b) + 3,
    }
    plan = SamplingPlan.of(options)
    assert plan == SamplingPlan(top_k=max(o.top_k for o in options if o.do_sample))
    free, free_ops = count_ops(lambda: sample(logits, **rows))
    planned, planned_ops = count_ops(lambda: sample(logits, **rows, plan=plan))
    assert torch.equal(free, planned)
    if not shortcuts:  # the device path: no sort at all with the plan
        assert "aten.sort.default" in free_ops.ops and "aten.sort.default" not in planned_ops.ops
    greedy_rows = {**rows, "greedy": torch.ones(b, dtype=torch.bool)}
    greedy_plan = SamplingPlan.of([SamplingOptions(do_sample=False)] * b)
    assert greedy_plan.greedy
    argmax, ops = count_ops(lambda: sample(logits, **greedy_rows, plan=greedy_plan))
    assert torch.equal(argmax, logits.argmax(-1)) and ops.kernels <= 3
    with_top_p = [*options[:-1], SamplingOptions(True, 0.9, 40, 0.8)]
    assert SamplingPlan.of(with_top_p) == SamplingPlan()  # top-p needs the sorted path
