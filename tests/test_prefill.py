"""Chunked prefill (engine/sched/prefill.py): a long prompt is computed a chunk per step while
the running requests keep making a frame every step; chunks fall at fixed positions, so its
codes do not depend on what else runs, and equal the one-shot prefill's (float32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import REF_TEXT
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions
from utter.engine.sched.batcher import Batcher
from utter.engine.sched.runner import Runner, _own_start

LONG = "A long request, whose prompt takes several chunks to prefill while the others run on. " * 2
CHUNK = 8


@pytest.fixture
def voice(engine, ref_wav):
    return engine.create_voice(ref_wav, ref_text=REF_TEXT)


def _opts(frames: int) -> GenerationOptions:
    return dataclasses.replace(GenerationOptions.greedy(max_frames=frames), ignore_eos=True)


def _runner(engine, chunk: int, pipelined: bool = False) -> Runner:
    runner = Runner(engine.talker, engine.config)
    runner.prefill_chunk, runner.pipelined = chunk, pipelined
    return runner


def _own(seq) -> int:
    return seq.prompt.prefill.shape[0] - _own_start(seq, seq.prompt.prefill.shape[0])


def _run(runner, seqs: list, late=None, join_at: int = 0) -> dict:
    """Step until done; ``late`` is admitted before step ``join_at``. Returns per sequence the
    steps at which it got a frame, and its frames."""
    got: dict[int, list[tuple[int, torch.Tensor]]] = {id(s): [] for s in seqs + ([late] if late else [])}
    with torch.inference_mode():
        runner.add_many(seqs)
        step = 0
        while runner.active or (late is not None and step <= join_at):
            if late is not None and step == join_at:
                runner.add(late)
            for out in runner.step():
                if out.codes is not None:
                    got[id(out.sequence)].append((step, out.codes.clone()))
            step += 1
    return got


@pytest.mark.parametrize("pipelined", [False, True], ids=["plain", "pipelined"])
def test_running_streams_keep_their_cadence_while_a_long_prompt_is_prefilled(
    engine, voice, pipelined: bool
) -> None:
    runner = _runner(engine, CHUNK, pipelined)
    short = engine._sequence(Request("Running.", voice, "English", _opts(30)))
    long = engine._sequence(Request(LONG, voice, "English", _opts(6)))
    chunks = -(-_own(long) // CHUNK)
    assert chunks >= 4, "the long prompt must take several chunks"
    got = _run(runner, [short], late=long, join_at=2)
    steps_short = [step for step, _ in got[id(short)]]
    lag = 1 if pipelined else 0  # a pipelined step hands out the step before's frame
    # A frame every step, the prefill steps too (a pipelined run's last step hands out two).
    assert len(steps_short) == 30 and sorted(set(steps_short)) == list(range(lag, 30))
    first_long = got[id(long)][0][0]
    assert first_long == 2 + chunks - 1 + lag  # joined with its last chunk, made a frame that step
    assert len(got[id(long)]) == 6 and not runner.prefilling


def test_chunked_codes_do_not_depend_on_the_load_and_equal_one_shot(engine, voice) -> None:
    def codes(chunk: int, busy: bool) -> torch.Tensor:
        runner = _runner(engine, chunk)
        long = engine._sequence(Request(LONG, voice, "English", _opts(12)))
        others = [engine._sequence(Request("Busy.", voice, "English", _opts(20)))] if busy else []
        got = _run(runner, others, late=long, join_at=1)
        return torch.stack([c for _, c in got[id(long)]])

    alone = codes(CHUNK, busy=False)  # no row running: every chunk at once
    busy = codes(CHUNK, busy=True)  # a chunk per step between another request's frames
    one_shot = codes(10_000, busy=False)
    assert torch.equal(alone, busy)
    assert torch.equal(alone, one_shot)  # float rounding apart, the same computation


def test_a_request_cancelled_while_prefilling_leaves_nothing(engine, voice) -> None:
    runner = _runner(engine, CHUNK)
    short = engine._sequence(Request("Running.", voice, "English", _opts(4)))
    long = engine._sequence(Request(LONG, voice, "English", _opts(6)))
    with torch.inference_mode():
        runner.add(short)  # a prompt over the chunk too: with nothing running, all chunks at once
        runner.step()
        runner.add(long)
        assert [p.seq for p in runner.prefilling] == [long] and runner.live == 2
        runner.step()
        runner.cancel(long)
        assert not runner.prefilling and long.reason == "cancelled" and runner.live == 1
        while runner.active:
            runner.step()
    assert short.reason == "max_frames" and runner.live == 0


def test_a_batcher_serves_long_prompts_in_chunks(engine, voice) -> None:
    saved, engine.runner = engine.runner, _runner(engine, CHUNK)
    try:
        with Batcher(engine, max_batch=4) as batcher:
            streams = [batcher.submit(Request(t, voice, "English", _opts(8))) for t in ("Short.", LONG)]
            audio = [s.audio() for s in streams]
        assert all(s.finish_reason == "max_frames" and s.frames == 8 for s in streams)
        assert all(a.size > 0 for a in audio)
    finally:
        engine.runner = saved
