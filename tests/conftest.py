"""Shared fixtures: tiny random checkpoints in the official layout, written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from utter.audio import write_wav
from utter.bench.workload import reference_audio

# The default transcription model is a hub id: servers under test would try the (unreachable)
# hub on the first reference sent without words. Tests of transcription pass the tiny one.
os.environ.setdefault("UTTER_ASR_MODEL", "none")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from utter.dev.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_wide_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1.7B layout in small: the talker is wider than the code predictor."""
    from utter.dev.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-wide", size="tiny-wide", seed=1)


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Whisper checkpoint in the hub's layout (see utter.dev.tiny_whisper)."""
    from utter.dev.tiny_whisper import write_tiny_whisper

    return write_tiny_whisper(tmp_path_factory.mktemp("asr") / "tiny-whisper", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_checkpoint: Path):
    from utter.engine.engine import Engine

    return Engine.load(str(tiny_checkpoint), device="cpu", dtype="float32")


def speechlike(seconds: float, sr: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """The benchmark's deterministic voiced-sounding signal; ``channels=2`` adds a second channel."""
    sig = reference_audio(seconds, sr, seed)
    if channels == 2:
        return np.stack([sig, 0.8 * sig[::-1].copy()], axis=1)
    return sig


@pytest.fixture(scope="session")
def ref_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2.5 s reference recording at 24 kHz."""
    path = tmp_path_factory.mktemp("audio") / "ref.wav"
    write_wav(path, speechlike(2.5, 24000), 24000)
    return path


REF_TEXT = "Prosecutors have opened a massive investigation."


@pytest.fixture(scope="session")
def ref_b64(ref_wav: Path) -> str:
    """The reference recording as the seed API sends it (base64)."""
    import base64

    return base64.b64encode(ref_wav.read_bytes()).decode()


@pytest.fixture(scope="module")
def http(server):
    """A client of the test module's ``server`` fixture, sending the API key."""
    with server.client() as client:
        yield client


def streams_in_slots(codec, pool, codes, pasts: tuple[int, ...]) -> tuple[list, list[int]]:
    """For each past length: a codec stream pushed that past alone, and a slot of ``pool`` opened
    warm from another stream pushed the same codes (fresh for 0). ``codes(n)``: n frames."""
    alone, slots = [], []
    for n in pasts:
        a, warm = codec.stream(), codec.stream()
        if n:
            past = codes(n)
            a.push(past)
            warm.push(past)
        alone.append(a)
        slots.append(pool.open(warm if n else None))
    return alone, slots


# Float32 logits of one row differ by ~1e-6 between batch shapes (the BLAS picks other kernels
# and summation orders per shape and CPU kind), so a greedy choice whose top two logits are that
# close may go either way in a batch. Tests that compare a batch's rows with each row alone use
# requests whose every choice is decided by more than this.
DECISIVE_MARGIN = 1e-4


def decisive_requests(engine, candidates: list, count: int) -> tuple[list, list]:
    """The first ``count`` greedy ``candidates`` whose every token choice, generated alone, wins by
    more than ``DECISIVE_MARGIN``; returns them and the codes each makes alone. Fails the test if
    too few are decisive, rather than comparing rows whose result is down to rounding."""
    from unittest import mock

    from utter.engine.sched import runner as runner_module

    real = runner_module.sample
    margins: list[float] = []

    def spy(logits, *args, **kwargs):
        top = logits.float().topk(2, dim=-1).values
        margins.append(float((top[:, 0] - top[:, 1]).min()))
        return real(logits, *args, **kwargs)

    chosen, codes = [], []
    with mock.patch.object(runner_module, "sample", spy):
        for request in candidates:
            margins.clear()
            made = engine.generate_codes([request])[0]
            if min(margins) > DECISIVE_MARGIN:
                chosen.append(request)
                codes.append(made)
                if len(chosen) == count:
                    return chosen, codes
    pytest.fail(f"only {len(chosen)} of {len(candidates)} requests are decisive; {count} needed")
