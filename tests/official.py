"""Import the official ``qwen_tts`` package (a test-only dependency) for parity tests.

``qwen_tts`` imports torchaudio (and sox/onnxruntime) at import time for its 25 Hz tokenizer,
which 12 Hz models never use. PyPI's torchaudio does not load next to our torch, so we put
stand-in modules in ``sys.modules`` before importing; any real use of them would fail loudly.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

import pytest


def _stub(name: str) -> None:
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except Exception:  # noqa: BLE001 - any import failure means "use the stub"
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            mod = types.ModuleType(sub)
            mod.__path__ = []  # type: ignore[attr-defined]
            mod.__spec__ = importlib.machinery.ModuleSpec(sub, None, is_package=True)
            sys.modules[sub] = mod
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], mod)


def import_qwen_tts():
    """Return the ``qwen_tts`` module, skipping the test when it is not installed."""
    import transformers  # noqa: F401 - let transformers probe the real environment before the stubs exist

    for name in ("torchaudio.compliance.kaldi", "sox", "onnxruntime"):
        _stub(name)
    return pytest.importorskip("qwen_tts")
