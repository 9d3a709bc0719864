"""A decode step reads the device once: the frame's codes and the next pending tokens together.

On a GPU every read of a device value (``.cpu()``, ``.item()``, ``bool(t)``, ``.tolist()``) waits
for all queued work, so reads in the middle of a step leave the GPU idle while the host catches
up. Counted on the CPU, on the path GPUs run (the CPU-only sampling shortcuts off), for the
dynamic and the fixed-shape (CUDA graph) step, with rows leaving at their frame limit.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch

import utter.engine.sampling as sampling
from utter.engine.engine import Request
from utter.engine.sched.runner import Runner
from utter.engine.voice import VoicePrompt

READS = ("cpu", "item", "tolist", "__bool__", "__int__", "__float__")


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed-shape"])
def test_one_device_read_per_step(engine, monkeypatch, fixed: bool) -> None:
    monkeypatch.setattr(sampling, "CPU_SHORTCUTS", False)
    runner = Runner(engine.talker, engine.config)
    if fixed:
        runner.enable_graphs(max_batch=4, max_len=256, capture=False)
    voice = VoicePrompt(speaker_embedding=torch.randn(engine.config.talker.decoder.hidden_size))
    base = dataclasses.replace(engine.default_options(), seed=1, ignore_eos=True)
    for i, frames in enumerate((3, 6, 6)):
        runner.add(
            engine._sequence(
                Request(f"Row {i}.", voice, "English", dataclasses.replace(base, max_frames=frames))
            )
        )
    calls: collections.Counter[str] = collections.Counter()
    order: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            order.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = 0
    with torch.inference_mode():
        while runner.active:
            order.clear()
            runner.step()
            steps += 1
            # .cpu() of the step's results, then .tolist() of that host copy (no device wait).
            assert order == ["cpu", "tolist"], order
    assert steps == 6 and calls["cpu"] == steps and calls["item"] == calls["__bool__"] == 0
