"""The native decode step (engine/native.py, kernels/decoder.c) computes what the PyTorch path
computes with the same weights, is used where it should be, and steps aside cleanly where it
cannot be built."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.test_layers import _unfused
from utter.engine import native, native_stack
from utter.engine.engine import Engine, Request
from utter.engine.model.layers import fuse_projections, new_cache
from utter.engine.quant import Int8Linear, _quantize_rows, apply_weight_mode
from utter.engine.sampling import GenerationOptions, SamplingOptions

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels cannot be built here")


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_gemv_equals_the_dequantized_product(rows: int) -> None:
    torch.manual_seed(rows)
    w = torch.randn(96, 80)
    x = torch.randn(rows, 80)
    q, scales = _quantize_rows(w)
    want = x @ (q.float() * scales[:, None]).T
    torch.testing.assert_close(native.gemv(q, scales, x), want, rtol=1e-5, atol=1e-4)
    half = w.half()
    torch.testing.assert_close(native.gemv(half, None, x), x @ half.float().T, rtol=1e-5, atol=1e-4)


def test_pack_rejects_shapes_the_kernel_cannot_block() -> None:
    with pytest.raises(ValueError, match="multiple"):
        native.pack(torch.zeros(6, 32, dtype=torch.int8), 16)
    blocked = native.pack(torch.arange(8 * 32).reshape(8, 32), 16)  # [blocks, runs, rows, lanes]
    assert blocked.shape == (2, 2, 4, 16) and blocked[0, 1, 2, 0] == 2 * 32 + 16


def _as_weight_only(module: torch.nn.Module) -> torch.nn.Module:
    """int8 layers computing in float32 with the dequantized weight: the native kernel's math."""
    for sub in module.modules():
        if isinstance(sub, Int8Linear):
            sub.kernel = "dequantize"
    return module


@pytest.mark.parametrize("mode", ["int8", "float16"])
@torch.inference_mode()
def test_native_stack_step_equals_the_pytorch_step(engine: Engine, mode: str) -> None:
    talker = apply_weight_mode(fuse_projections(_unfused(engine)), mode, max_batch=1)
    _as_weight_only(talker)
    assert native_stack.attach(talker)
    for stack in (talker.model, talker.code_predictor.model):
        cfg = stack.cfg
        torch.manual_seed(0)
        x = torch.randn(1, 6, cfg.hidden_size)
        caches = []
        outs = []
        for use_native in (False, True):
            saved, stack.native = stack.native, stack.native if use_native else None
            cache = new_cache(cfg, 1, 9, torch.device("cpu"), torch.float32)
            parts = [stack.run(x[:, :3], cache, 0, kv_len=3)]  # prefill: always the PyTorch path
            parts.append(stack.run(x[:, 3:5], cache, 3, kv_len=5))  # two tokens (code predictor start)
            parts.append(stack.run(x[:, 5:], cache, torch.tensor([[5]]), kv_len=6))  # one, tensor position
            stack.native = saved
            outs.append(torch.cat(parts, dim=1))
            caches.append(cache)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(caches[1][0][:, :, :, :6], caches[0][0][:, :, :, :6], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(caches[1][1][:, :, :, :6], caches[0][1][:, :, :, :6], rtol=1e-4, atol=1e-4)


def test_native_kernel_is_really_called(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stacks of a single-stream int8 engine go through utter_stack_run for decode steps."""
    talker = apply_weight_mode(fuse_projections(_unfused(engine)), "int8", max_batch=1)
    assert native_stack.attach(talker)
    calls = []
    real = native_stack.NativeStack.run

    def counting(self, *args, **kwargs):
        calls.append(args[0].shape)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(native_stack.NativeStack, "run", counting)
    stack = talker.model
    cache = new_cache(stack.cfg, 1, 9, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        stack.run(torch.randn(1, 5, stack.cfg.hidden_size), cache, 0, kv_len=5)  # prefill: PyTorch
        stack.run(torch.randn(1, 1, stack.cfg.hidden_size), cache, torch.tensor([[5]]), kv_len=6)
        batch = new_cache(stack.cfg, 2, 9, torch.device("cpu"), torch.float32)
        stack.run(torch.randn(2, 1, stack.cfg.hidden_size), batch, torch.tensor([[3], [4]]), kv_len=5)
    assert calls == [torch.Size([1, 1, stack.cfg.hidden_size])]


def _greedy(max_frames: int = 12) -> GenerationOptions:
    off = SamplingOptions(do_sample=False, top_k=0, top_p=1.0, temperature=1.0)
    return GenerationOptions(talker=off, subtalker=off, max_frames=max_frames, ignore_eos=True)


def test_single_stream_engines_decode_natively_and_match_the_pytorch_path(
    tiny_checkpoint: Path, ref_wav: Path
) -> None:
    single = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=1)
    serving = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=4)
    fp16 = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="float16", max_batch=1)
    assert single.talker.model.native is not None and single.talker.code_predictor.model.native is not None
    assert fp16.talker.model.native is not None
    assert serving.talker.model.native is None  # batches keep one kernel for every row count

    voice = single.create_voice(str(ref_wav), "A short reference sentence.")
    request = Request("Native kernels speak the same words.", voice, "English", _greedy())
    _as_weight_only(single.talker)  # prefill in float32 products too: only the decode step differs
    with_native = single.generate_codes([request])[0]
    for stack in (single.talker.model, single.talker.code_predictor.model):
        stack.native = None
    assert torch.equal(single.generate_codes([request])[0], with_native)


def test_disabled_or_unbuildable_kernels_leave_the_pytorch_path(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("UTTER_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        native.build()
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="internal error"):
        native.build(str(broken))
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="utter.engine.native"):
            assert native.library() is None
        assert "native decode kernels unavailable" in caplog.text
        monkeypatch.undo()
        monkeypatch.setenv("UTTER_NATIVE", "0")
        native.library.cache_clear()
        assert native.library() is None
        talker = apply_weight_mode(fuse_projections(_unfused(engine)), "int8", max_batch=1)
        assert not native_stack.attach(talker) and talker.model.native is None
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
    assert native.library() is not None
