"""Pipelined steps (the CUDA default): a step queues its frame before it waits for the previous
step's results. Run on the CPU, where the same code runs without the asynchronous copy: the
outputs equal the plain steps' for requests that end by end-of-speech, by frame limit, join
mid-run or are cancelled, on the dynamic and the fixed-shape (CUDA graph) path."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest
import torch

from tests.conftest import REF_TEXT
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions, SamplingOptions
from utter.engine.sched.batcher import Batcher
from utter.engine.sched.runner import Runner


@pytest.fixture
def eager_to_stop(engine):
    """The tiny model made to end some requests by end-of-speech, at different frames."""
    eos = engine.config.talker.codec_eos_id
    weight = engine.talker.codec_head.weight
    saved = weight[eos].clone()
    with torch.no_grad():
        weight[eos] *= 2.5
    yield engine
    with torch.no_grad():
        weight[eos] = saved


def _requests(engine, ref_wav) -> list[Request]:
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    xvec = engine.create_voice(ref_wav, x_vector_only=True)
    sampled = SamplingOptions(do_sample=True, temperature=0.9, top_k=30, top_p=0.9)
    texts = ["A first request, greedy.", "Second one here.", "The third is longer than the others are."]
    reqs = [Request(t, voice, "English", GenerationOptions.greedy(max_frames=14)) for t in texts]
    reqs += [
        Request(
            "Sampled with a seed.",
            xvec,
            "English",
            GenerationOptions(sampled, sampled, seed=5, max_frames=16),
        ),
        Request(
            "Another sampled one.", voice, "Auto", GenerationOptions(sampled, sampled, seed=6, max_frames=9)
        ),
        Request("Joins late, greedy.", xvec, "English", GenerationOptions.greedy(max_frames=12)),
    ]
    return reqs


def _drive(engine, reqs: list[Request], pipelined: bool, fixed: bool):
    """Run ``reqs`` on a fresh runner: four at once, one more at step 3, the last at step 5,
    request 1 cancelled at step 4. Returns per request its frames, its end and the order of
    outputs (an end never before a frame of the same request)."""
    runner = Runner(engine.talker, engine.config)
    if fixed:
        runner.enable_graphs(max_batch=8, max_len=256, capture=False)
    runner.pipelined = pipelined
    seqs = [engine._sequence(r) for r in reqs]
    index = {id(s): i for i, s in enumerate(seqs)}
    frames: dict[int, list[torch.Tensor]] = defaultdict(list)
    ends: dict[int, str] = {}
    steps = 0
    with torch.inference_mode():
        runner.add_many(seqs[:4])
        while runner.active or steps < 6:
            if steps == 3:
                runner.add(seqs[4])
            if steps == 5:
                runner.add(seqs[5])
            if steps == 4:
                runner.cancel(seqs[1])
            for out in runner.step():
                i = index[id(out.sequence)]
                assert i not in ends, "an output after the request ended"
                if out.codes is None:
                    ends[i] = out.sequence.reason
                else:
                    frames[i].append(out.codes.clone())
            steps += 1
            assert steps < 100
    assert runner.reading is None and not runner.rows
    return frames, ends


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed-shape"])
def test_pipelined_steps_give_the_plain_steps_outputs(eager_to_stop, ref_wav, fixed: bool) -> None:
    engine = eager_to_stop
    reqs = _requests(engine, ref_wav)
    plain_frames, plain_ends = _drive(engine, reqs, pipelined=False, fixed=fixed)
    piped_frames, piped_ends = _drive(engine, reqs, pipelined=True, fixed=fixed)
    assert {"eos", "max_frames"} <= set(plain_ends.values())  # both ways of ending are covered
    for i in range(len(reqs)):
        if i == 1:  # cancelled: its last frame may have been in flight (a client that left)
            got, want = piped_frames[i], plain_frames[i]
            assert len(want) - 1 <= len(got) <= len(want)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert i not in piped_ends and i not in plain_ends
            continue
        assert piped_ends[i] == plain_ends[i]
        assert len(piped_frames[i]) == len(plain_frames[i])
        assert all(torch.equal(a, b) for a, b in zip(piped_frames[i], plain_frames[i]))


def test_a_pipelined_step_queues_its_frame_before_it_waits(engine, ref_wav, monkeypatch) -> None:
    runner = Runner(engine.talker, engine.config)
    runner.pipelined = True
    calls: list[str] = []
    for name in ("_frame", "_receive"):
        real = getattr(runner, name)

        def spy(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(runner, name, spy)
    opts = dataclasses.replace(GenerationOptions.greedy(max_frames=4), ignore_eos=True)
    voice = engine.create_voice(ref_wav, x_vector_only=True)
    with torch.inference_mode():
        runner.add(engine._sequence(Request("Four frames.", voice, "English", opts)))
        delivered = []
        for _ in range(4):
            calls.clear()
            delivered.append(len(runner.step()))
            assert calls[:2] == ["_frame", "_receive"], calls
    # Each step hands out the frame before it; the last, with no row left, its own and the end.
    assert delivered == [0, 1, 1, 3] and runner.active == 0


def test_a_frame_in_flight_still_reaches_a_request_that_ended(engine, ref_wav) -> None:
    """Request A ends at its frame limit in a step; B, the last row, is cancelled before the
    next: A's last frame and its end are still handed out, and then nothing is left."""
    runner = Runner(engine.talker, engine.config)
    runner.pipelined = True
    voice = engine.create_voice(ref_wav, x_vector_only=True)
    short = dataclasses.replace(GenerationOptions.greedy(max_frames=2), ignore_eos=True)
    long = dataclasses.replace(short, max_frames=20)
    a = engine._sequence(Request("A.", voice, "English", short))
    b = engine._sequence(Request("B.", voice, "English", long))
    with torch.inference_mode():
        runner.add_many([a, b])
        first = runner.step()
        second = runner.step()  # A makes its last frame and leaves; its results are in flight
        assert [o.sequence for o in first] == [] and [o.codes is None for o in second] == [False, False]
        runner.cancel(b)
        assert runner.active == 1
        last = runner.step()
    assert [(o.sequence is a, o.codes is None) for o in last] == [(True, False), (True, True)]
    assert a.reason == "max_frames" and runner.active == 0
    with torch.inference_mode():  # a cancel that leaves nothing for anyone drops the reading
        c = engine._sequence(Request("C.", voice, "English", long))
        runner.add(c)
        runner.step()
        runner.cancel(c)
    assert runner.active == 0 and runner.reading is None


def test_a_pipelined_batcher_streams_the_same_audio(engine, ref_wav) -> None:
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    sampled = SamplingOptions(do_sample=True, temperature=0.9, top_k=30, top_p=0.9)
    reqs = [
        Request(
            "Streaming while the next frame is made.",
            voice,
            "English",
            GenerationOptions.greedy(max_frames=30),
        ),
        Request(
            "Sampled and shorter.",
            voice,
            "English",
            GenerationOptions(sampled, sampled, seed=2, max_frames=17),
        ),
    ]

    def audio(pipelined: bool) -> list:
        saved, engine.runner = engine.runner, Runner(engine.talker, engine.config)
        engine.runner.pipelined = pipelined
        try:
            with Batcher(engine, max_batch=4) as batcher:
                streams = [batcher.submit(r) for r in reqs]
                return [(s.audio(), s.finish_reason) for s in streams]
        finally:
            engine.runner = saved

    for (a, ra), (b, rb) in zip(audio(False), audio(True), strict=True):
        assert ra == rb == "max_frames" and a.shape == b.shape and (a == b).all()
