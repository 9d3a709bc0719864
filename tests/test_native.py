"""The native decode step (engine/cpu/native.py, kernels/decoder.c) computes what the PyTorch path
computes with the same weights, is used where it should be, and steps aside cleanly where it
cannot be built."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_layers import _unfused
from utter.engine.cpu import native, native_stack
from utter.engine.cpu.quant import Fp16Linear, Int8Linear, _quantize_rows, apply_weight_mode, native_max_batch
from utter.engine.engine import CPU_MAX_BATCH, Engine, Request
from utter.engine.model.layers import DecoderStack, fuse_projections, new_cache
from utter.engine.sampling import GenerationOptions, SamplingOptions

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels cannot be built here")


@pytest.fixture(autouse=True)
def native_prefills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefills in the native kernels too, as float16 engines and CPUs without an int8 x int8
    kernel run them (int8 engines here prefill with it: tests/test_int8_prefill.py)."""
    monkeypatch.setenv("UTTER_INT8_PREFILL", "0")


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7])
def test_gemv_equals_the_dequantized_product(rows: int) -> None:
    torch.manual_seed(rows)
    w = torch.randn(96, 80)
    x = torch.randn(rows, 80)
    q, scales = _quantize_rows(w)
    want = x @ (q.float() * scales[:, None]).T
    torch.testing.assert_close(native.gemv(q, scales, x), want, rtol=1e-5, atol=1e-4)
    half = w.half()
    torch.testing.assert_close(native.gemv(half, None, x), x @ half.float().T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 5, 8, 37])
def test_weight_tiles_give_the_same_bits_as_converting_on_the_fly(rows: int) -> None:
    """Whether a call converts weight blocks to float32 tiles first is chosen by timing on each
    CPU (native._chosen_tile_rows): both ways must give the same numbers to the bit, or a
    request's audio would depend on the machine's timing."""
    lib = native.library()
    torch.manual_seed(rows)
    w, x = torch.randn(96, 160), torch.randn(rows, 160)
    q, scales = _quantize_rows(w)
    try:
        for weight, s in ((q, scales), (w.half(), None)):
            native.set_tile_rows(lib, 1)
            tiled = native.gemv(weight, s, x)
            native.set_tile_rows(lib, native.NEVER)
            assert torch.equal(native.gemv(weight, s, x), tiled)
    finally:
        native.set_tile_rows(lib, native._chosen_tile_rows(lib))


def test_pack_rejects_shapes_the_kernel_cannot_block() -> None:
    with pytest.raises(ValueError, match="multiple"):
        native.pack(torch.zeros(6, 32, dtype=torch.int8), 16)
    blocked = native.pack(torch.arange(8 * 32).reshape(8, 32), 16)  # [blocks, runs, rows, lanes]
    assert blocked.shape == (2, 2, 4, 16) and blocked[0, 1, 2, 0] == 2 * 32 + 16


def _pytorch_only(module: torch.nn.Module) -> torch.nn.Module:
    """The same weights on the PyTorch path: stacks without their native step, int8 layers
    computing in float32 with the dequantized weight (the native kernel's math)."""
    for sub in module.modules():
        if isinstance(sub, Int8Linear):
            sub.qweight = sub.int8_weight()  # the plain copy back (native engines keep none)
            sub.kernel, sub.native, sub.rows_kernel = "dequantize", None, None
        if isinstance(sub, Fp16Linear):
            sub.native = None
        if isinstance(sub, DecoderStack):
            sub.native = None
    return module


@pytest.mark.parametrize("mode", ["int8", "float16"])
@torch.inference_mode()
def test_native_stack_equals_the_pytorch_stack(engine: Engine, mode: str) -> None:
    """Prefill, a two-token step and a one-token step (tensor position) through every layer."""
    talker = apply_weight_mode(fuse_projections(_unfused(engine)), mode, max_batch=1)
    assert native_stack.attach(talker)
    reference = _pytorch_only(apply_weight_mode(fuse_projections(_unfused(engine)), mode, max_batch=1))
    pairs = [(talker.model, reference.model), (talker.code_predictor.model, reference.code_predictor.model)]
    for fast, slow in pairs:
        assert fast.native is not None and slow.native is None
        cfg = fast.cfg
        torch.manual_seed(0)
        x = torch.randn(1, 8, cfg.hidden_size)
        outs, caches = [], []
        for stack in (slow, fast):
            cache = new_cache(cfg, 1, 11, torch.device("cpu"), torch.float32)
            parts = [stack.run(x[:, :5], cache, 0, kv_len=5)]  # a prefill of five positions
            parts.append(stack.run(x[:, 5:7], cache, 5, kv_len=7))  # two tokens (code predictor start)
            parts.append(stack.run(x[:, 7:], cache, torch.tensor([[7]]), kv_len=8))  # one, tensor position
            outs.append(torch.cat(parts, dim=1))
            caches.append(cache)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
        for i in range(2):  # keys and values as cached
            torch.testing.assert_close(
                caches[1][i][..., :8, :], caches[0][i][..., :8, :], rtol=1e-4, atol=1e-4
            )


def test_native_kernel_is_really_called(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefill, a step and a batch of two rows at their own positions all go through
    utter_stack_run (a cache of another dtype would not: ``accepts``)."""
    talker = apply_weight_mode(fuse_projections(_unfused(engine)), "int8", max_batch=1)
    assert native_stack.attach(talker)
    calls = []
    real = native_stack.NativeStack.run

    def counting(self, *args, **kwargs):
        calls.append(tuple(args[0].shape))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(native_stack.NativeStack, "run", counting)
    stack = talker.model
    d = stack.cfg.hidden_size
    cache = new_cache(stack.cfg, 1, 9, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        stack.run(torch.randn(1, 5, d), cache, 0, kv_len=5)
        stack.run(torch.randn(1, 1, d), cache, torch.tensor([[5]]), kv_len=6)
        batch = new_cache(stack.cfg, 2, 9, torch.device("cpu"), torch.float32)
        stack.run(torch.randn(2, 1, d), batch, torch.tensor([[3], [4]]), kv_len=5)
    assert calls == [(1, 5, d), (1, 1, d), (2, 1, d)]
    half = tuple(t.half() for t in batch)
    assert not stack.native.accepts(torch.randn(2, 1, d), half)
    assert not stack.native.accepts(torch.randn(3, 1, d), batch)  # rows must match the cache's


def _greedy(max_frames: int = 12) -> GenerationOptions:
    off = SamplingOptions(do_sample=False, top_k=0, top_p=1.0, temperature=1.0)
    return GenerationOptions(talker=off, subtalker=off, max_frames=max_frames, ignore_eos=True)


def test_single_stream_engines_decode_natively_and_match_the_pytorch_path(
    tiny_checkpoint: Path, ref_wav: Path
) -> None:
    single = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=1)
    large = Engine.load(
        str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=native_max_batch() + 1
    )
    fp16 = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="float16", max_batch=1)
    assert single.talker.model.native is not None and single.talker.code_predictor.model.native is not None
    assert fp16.talker.model.native is not None
    assert large.talker.model.native is None  # large batches: oneDNN/fbgemm, one kernel for any row count

    linears = [m for m in single.talker.modules() if isinstance(m, Int8Linear)]
    assert linears and all(
        m.kernel == "native" and m.packed is None for m in linears
    )  # no oneDNN/fbgemm packs
    assert all(m.native is not None for m in fp16.talker.modules() if isinstance(m, Fp16Linear))

    voice = single.create_voice(str(ref_wav), "A short reference sentence.")
    request = Request("Native kernels speak the same words.", voice, "English", _greedy())
    with_native = single.generate_codes([request])[0]
    _pytorch_only(single.talker)
    assert torch.equal(single.generate_codes([request])[0], with_native)


@pytest.mark.parametrize("mode", ["int8", "float16"])
def test_small_batch_engines_decode_natively_and_each_row_as_alone(
    tiny_checkpoint: Path, ref_wav: Path, mode: str
) -> None:
    """An engine serving up to native_max_batch() rows runs every call natively: batched steps
    (rows at their own positions in their own cache rows), a right-padded batched prefill, the
    code predictor's rows. Each row's codes are bit for bit those it gets alone, and those of the
    single-stream engine (`utter say`): a token's arithmetic does not depend on the other rows."""
    single = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode=mode, max_batch=1)
    small = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode=mode, max_batch=native_max_batch())
    assert small.talker.model.native is not None and small.talker.code_predictor.model.native is not None
    voice = single.create_voice(str(ref_wav), "A short reference sentence.")
    texts = ["Short.", "A somewhat longer sentence for the second row.", "Third row, middling.", "Four."]
    requests = [Request(t, voice, "English", _greedy(6 + 3 * i)) for i, t in enumerate(texts)]
    calls = 0
    run = small.talker.model.native.run

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return run(*args, **kwargs)

    small.talker.model.native.run = counted
    together = small.generate_codes(requests)
    assert calls > 0
    for request, codes in zip(requests, together):
        assert torch.equal(codes, single.generate_codes([request])[0])
        assert torch.equal(codes, small.generate_codes([request])[0])


def test_native_stack_rows_are_each_their_own_sequence(engine: Engine) -> None:
    """utter_stack_run over three rows at different positions, in a cache with spare rows (row
    and layer strides), equals each row run alone in a one-row cache, bit for bit."""
    talker = apply_weight_mode(fuse_projections(_unfused(engine)), "int8", max_batch=1)
    assert native_stack.attach(talker)
    stack, cfg = talker.model, talker.model.cfg
    torch.manual_seed(5)
    starts = [0, 5, 11]
    k, v = new_cache(cfg, 5, 32, torch.device("cpu"), torch.float32)
    alone = []
    for r, start in enumerate(starts):  # each row alone: its prefix, then 2 tokens at start
        k1, v1 = new_cache(cfg, 1, 32, torch.device("cpu"), torch.float32)
        if start:
            stack.run(torch.randn(1, start, cfg.hidden_size), (k1, v1), 0, kv_len=start)
        k[:, r + 1], v[:, r + 1] = k1[:, 0], v1[:, 0]  # rows 1..3 of the shared cache
        x = torch.randn(1, 2, cfg.hidden_size)
        alone.append((x, stack.run(x, (k1, v1), start, kv_len=start + 2), k1[:, 0, :, : start + 2].clone()))
    x = torch.cat([a[0] for a in alone])
    rows = (k[:, 1:4], v[:, 1:4])
    positions = torch.tensor(starts)[:, None] + torch.arange(2)[None, :]
    out = stack.run(x, rows, positions, kv_len=max(starts) + 2)
    for r, (start, (_, want, keys)) in enumerate(zip(starts, alone)):
        assert torch.equal(out[r], want[0])
        assert torch.equal(k[:, r + 1, :, : start + 2], keys)
    assert not k[:, 0].any() and not k[:, 4].any()  # the spare rows are untouched


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
        with caplog.at_level(logging.WARNING, logger="utter.engine.cpu.native"):
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


def test_int8_linear_takes_the_native_path_for_float32_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 48, bias=True)
    want = Int8Linear.from_linear(linear, "dequantize")
    layer = Int8Linear.from_linear(linear, "native")
    assert layer.kernel == "native" and layer.native is not None and layer.packed is None
    rows = []
    real = native.PackedWeight.__call__

    def counting(self, x2):
        rows.append(x2.shape[0])
        return real(self, x2)

    monkeypatch.setattr(native.PackedWeight, "__call__", counting)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(layer(x), want(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[0, :1]), want(x[0, :1]), rtol=1e-5, atol=1e-5)
    assert rows == [6, 1]
    torch.testing.assert_close(layer(x.bfloat16()), want(x.bfloat16()), rtol=2e-2, atol=2e-2)  # other inputs
    assert rows == [6, 1]
    odd = Int8Linear.from_linear(torch.nn.Linear(64, 6), "native")  # 6 rows: no blocked layout
    assert odd.native is None and odd.kernel in ("fbgemm", "dequantize")
    with pytest.raises(ValueError, match="int8 weights need"):
        native.PackedWeight(native.library(), layer.int8_weight(), None)


def test_cancels_in_a_full_native_batch_leave_the_others_exact(
    tiny_checkpoint: Path, ref_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU server's default engine (CPU_MAX_BATCH rows, native kernels): rows cancelled one
    per step while the batch is full leave every other request's audio bit for bit as alone
    (the native arithmetic is row-independent, so no near-tie filtering is needed)."""
    from tests.test_batcher_cancel import cancel_between_steps
    from utter.engine.sched.batcher import Batcher

    engine = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=CPU_MAX_BATCH)
    assert engine.talker.model.native is not None
    voice = engine.create_voice(str(ref_wav), "A short reference sentence.")
    reqs = [Request(f"Row {i} keeps talking.", voice, "English", _greedy(8)) for i in range(CPU_MAX_BATCH)]
    # Chunked as cancel_between_steps chunks (2, then 3 frames): a chunking's audio equals
    # another's to float rounding only (bit for bit where the codec runs in bfloat16)
    with Batcher(engine, max_batch=CPU_MAX_BATCH, first_chunk_frames=2, chunk_frames=3) as batcher:
        alone = [batcher.submit(r).audio() for r in reqs]
    order = [0, CPU_MAX_BATCH - 1, 3]
    streams, audios = cancel_between_steps(engine, CPU_MAX_BATCH, reqs, order, monkeypatch)
    for i, stream in enumerate(streams):
        if i in order:
            assert stream.finish_reason == "cancelled"
        else:
            assert stream.finish_reason == "max_frames", stream.error
            assert np.array_equal(audios[i], alone[i])


def test_a_bad_tile_rows_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UTTER_NATIVE_TILE_ROWS", "lots")
    with pytest.raises(ValueError, match="UTTER_NATIVE_TILE_ROWS must be a whole number"):
        native._chosen_tile_rows(native.library())
    monkeypatch.setenv("UTTER_NATIVE_TILE_ROWS", "0")
    assert native._chosen_tile_rows(native.library()) == native.NEVER
