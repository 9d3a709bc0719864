"""Import the official ``qwen_tts`` package (a test-only dependency) for parity tests.

The import itself (stand-in modules for the torchaudio/sox/onnxruntime imports that 12 Hz
models never use) lives in ``utter.bench.common``, which the benchmark shares.
"""

from __future__ import annotations

import pytest

from utter.bench.common import import_qwen_tts as _import_qwen_tts
from utter.bench.common import official_installed


def import_qwen_tts():
    """Return the ``qwen_tts`` module, skipping the test when it is not installed."""
    if not official_installed():
        pytest.skip("the official qwen-tts package is not installed")
    return _import_qwen_tts()


class Spy:
    """Records what the official model.generate returns (its codes) without changing anything."""

    def __init__(self, model) -> None:
        self.model, self.original, self.codes = model, model.generate, []

    def __enter__(self):
        def spy(*args, **kwargs):
            out = self.original(*args, **kwargs)
            self.codes = [c.clone() for c in out[0]]
            return out

        self.model.generate = spy
        return self

    def __exit__(self, *exc) -> None:
        self.model.generate = self.original
