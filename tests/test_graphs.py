"""The fixed-shape decode step (what CUDA graphs replay) equals the dynamic one, on the CPU."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REF_TEXT
from utter.engine.cuda.graphs import buckets
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions, SamplingOptions
from utter.engine.sched.runner import Runner


def test_buckets() -> None:
    assert buckets(1) == [1]
    assert buckets(6) == [1, 2, 4, 6]
    assert buckets(16) == [1, 2, 4, 8, 16]


def _dynamic_codes(engine, reqs) -> list[torch.Tensor]:
    """The same requests' codes on a fresh dynamic (non-fixed-shape) runner."""
    saved, engine.runner = engine.runner, Runner(engine.talker, engine.config)
    try:
        return engine.generate_codes(reqs)
    finally:
        engine.runner = saved


def assert_same_codes(fixed: list[torch.Tensor], dynamic: list[torch.Tensor]) -> None:
    for a, b in zip(fixed, dynamic, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


@pytest.fixture
def fixed_runner(engine):
    saved = engine.runner
    engine.runner = Runner(engine.talker, engine.config)
    engine.runner.enable_graphs(max_batch=4, max_len=512, capture=False)
    yield engine.runner
    engine.runner = saved


def test_fixed_shape_step_equals_dynamic(engine, ref_wav, fixed_runner) -> None:
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    xvec = engine.create_voice(ref_wav, x_vector_only=True)
    sampled = SamplingOptions(do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    reqs = [
        Request("One, the first.", voice, "English", GenerationOptions.greedy(max_frames=9)),
        Request("两个。", xvec, "Chinese", GenerationOptions.greedy(max_frames=4)),
        Request(
            "Three is sampled.", voice, "Auto", GenerationOptions(sampled, sampled, seed=3, max_frames=7)
        ),
    ]
    fixed = engine.generate_codes(reqs)  # 3 rows run in the bucket of 4, then 2 ...
    assert fixed_runner.active == 0
    dynamic = _dynamic_codes(engine, reqs)
    assert_same_codes(fixed, dynamic)


def test_fixed_runner_refuses_requests_that_do_not_fit(engine, ref_wav, fixed_runner) -> None:
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    with pytest.raises(RuntimeError, match="fixed at"):
        engine.generate_codes(
            [Request("Too long.", voice, "English", GenerationOptions.greedy(max_frames=600))]
        )


def test_fixed_shape_steps_follow_each_steps_sampling_plan(engine, ref_wav, fixed_runner) -> None:
    """Graphs are kept per (bucket, sampling plan): batches that are all greedy, all top-k, or
    need the full path, and batches whose plan changes as rows leave, give the dynamic codes."""
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    top_k = SamplingOptions(do_sample=True, temperature=0.9, top_k=30, top_p=1.0)
    top_p = SamplingOptions(do_sample=True, temperature=0.9, top_k=30, top_p=0.7)
    reqs = [
        Request("Greedy and longest.", voice, "English", GenerationOptions.greedy(max_frames=8)),
        Request("Top k only.", voice, "English", GenerationOptions(top_k, top_k, seed=8, max_frames=5)),
        Request("Top p too.", voice, "English", GenerationOptions(top_p, top_k, seed=9, max_frames=3)),
    ]
    plans_seen = set()
    original = fixed_runner._plan

    def spy(rows):
        plans = original(rows)
        plans_seen.add(plans)
        return plans

    fixed_runner._plan = spy
    fixed = engine.generate_codes(reqs)
    dynamic = _dynamic_codes(engine, reqs)
    assert len(plans_seen) == 3  # full, then top-k once the top-p row has left, then greedy
    assert_same_codes(fixed, dynamic)


def test_fixed_shape_steps_attend_over_the_live_length_only(engine, ref_wav, fixed_runner) -> None:
    """The talker attends over the length bucket of the longest live row, not the whole cache:
    requests that grow across buckets give the dynamic codes."""
    from utter.engine.cuda.graphs import length_buckets

    assert length_buckets(512) == [64, 128, 256, 512] and length_buckets(64) == [64]
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    reqs = [
        Request("A request that runs on.", voice, "English", GenerationOptions.greedy(max_frames=90)),
        Request("Short.", voice, "English", GenerationOptions.greedy(max_frames=5)),
    ]
    lengths = []
    run = fixed_runner.graphs._run
    fixed_runner.graphs._run = lambda key, fn, length=None: (lengths.append(length), run(key, fn, length))
    fixed = engine.generate_codes(reqs)
    dynamic = _dynamic_codes(engine, reqs)
    used = sorted({n for n in lengths if n is not None})
    assert len(used) >= 2 and used[-1] < 512, used  # grew across buckets, never the whole cache
    assert_same_codes(fixed, dynamic)
