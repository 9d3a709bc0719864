"""deploy/modal_app.py imports with the ``modal`` package (no network) and wires our app."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

MODAL_APP = Path(__file__).resolve().parent.parent / "deploy" / "modal_app.py"


def load_modal_app(name: str):
    spec = importlib.util.spec_from_file_location(name, MODAL_APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def test_modal_app_wires_the_service(tmp_path, monkeypatch) -> None:
    modal = pytest.importorskip("modal")
    monkeypatch.delenv("UTTER_MODAL_SIZE", raising=False)
    monkeypatch.delenv("UTTER_MODAL_GPU", raising=False)
    mod = load_modal_app("utter_modal_app_test")
    assert isinstance(mod.app, modal.App)
    assert (mod.MODEL, mod.GPU) == ("Qwen/Qwen3-TTS-12Hz-1.7B-Base", "A10G")
    assert mod.SCALEDOWN_WINDOW_S > 0 and mod.MAX_INPUTS > 1
    assert isinstance(mod.Service, modal.Cls) and isinstance(mod.download, modal.Function)

    from utter.server.runtime import EngineHolder

    web = mod.build_app(EngineHolder("tiny"), data_dir=tmp_path)
    paths = set(web.openapi()["paths"])
    assert {"/clone", "/clone-batch", "/health", "/submit-job", "/v1/audio/speech", "/v1/voices"} <= paths
    assert web.state.service.settings.manage_holder is False

    monkeypatch.setenv("UTTER_MODAL_SIZE", "0.6B")
    small = load_modal_app("utter_modal_app_small")
    assert (small.MODEL, small.GPU) == ("Qwen/Qwen3-TTS-12Hz-0.6B-Base", "T4")
