"""Weight modes: every mode generates through the real engine; the int8 kernels equal the
dequantised product up to 8-bit input rounding, quantise each row on its own (a request's numbers
do not depend on its batch), route outlier rows to the weight-only kernel and really run on the
CPU's int8 units; logits stay close to float32."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from utter.engine.cpu import native, quant
from utter.engine.cpu.drift import logit_drift
from utter.engine.cpu.isa import (
    fbgemm_available,
    full_range_operands,
    has_int8_dot,
    onednn_int8_available,
    onednn_int8_input,
)
from utter.engine.cpu.quant import (
    OUTLIER_CREST,
    WEIGHT_MODES,
    Fp16Linear,
    Int8Linear,
    activation_dtype,
    apply_weight_mode,
    default_weight_mode,
    int8_kernel,
)
from utter.engine.engine import Engine, Request
from utter.engine.sampling import GenerationOptions
from utter.engine.voice import VoicePrompt

logger = logging.getLogger(__name__)

CPU_KERNELS = ["fbgemm", "onednn", "int8pack", "dequantize"]


def _voice(engine: Engine) -> VoicePrompt:
    dim = engine.config.talker.decoder.hidden_size
    return VoicePrompt(speaker_embedding=torch.randn(dim, generator=torch.Generator().manual_seed(3)))


def _linear(n_in: int = 96, n_out: int = 80, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(n_in, n_out, bias=bias)


def _skip_unavailable(kernel: str) -> None:
    if kernel == "fbgemm" and not fbgemm_available():
        pytest.skip("this torch build has no fbgemm")
    if kernel == "onednn" and not onednn_int8_available():
        pytest.skip("this torch build has no oneDNN int8 linear")


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("mode", WEIGHT_MODES)
def test_every_mode_generates_through_the_engine(tiny_checkpoint: Path, engine: Engine, mode: str) -> None:
    moded = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode=mode)
    act = activation_dtype(mode, "cpu")
    assert moded.runner.dtype == act and moded.talker.codec_head.weight.dtype == act
    assert moded.talker.model.rotary.inv_freq.dtype == torch.float32  # buffers are not cast
    request = Request("Weight modes must all speak.", _voice(moded), "English", GenerationOptions.greedy(4))
    codes = moded.generate_codes([request])[0]
    assert 2 <= codes.shape[0] <= 4 and codes.shape[1] == engine.config.talker.num_code_groups
    assert int(codes.min()) >= 0 and int(codes.max()) < engine.config.talker.code_predictor.vocab_size
    if mode == "float32":  # the same weights and arithmetic as the float32 engine
        assert torch.equal(codes, engine.generate_codes([request])[0])
    assert any(isinstance(m, Int8Linear) for m in moded.talker.modules()) == (mode == "int8")
    if fbgemm_available():
        assert any(isinstance(m, Fp16Linear) for m in moded.talker.modules()) == (mode == "float16")


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_int8_linear_is_the_dequantized_product_up_to_input_rounding(kernel: str) -> None:
    _skip_unavailable(kernel)
    linear = _linear()
    q = Int8Linear.from_linear(linear, kernel)
    w = linear.weight.detach()
    # Symmetric per-channel rounding: every weight within half a step of its original value.
    assert ((q.dequantized() - w).abs() <= 0.5 * q.scales[:, None] + 1e-7).all()
    x = torch.randn(2, 3, 96)
    want = F.linear(x, q.dequantized(), linear.bias.detach())
    got = q(x)
    assert got.shape == (2, 3, 80) and got.dtype == torch.float32
    # fbgemm/oneDNN round inputs to 8 bits per row (about 1% error); weight-only kernels compute
    # in bfloat16 (int8pack) or exactly (dequantize).
    limit = {"fbgemm": 0.03, "onednn": 0.03, "int8pack": 0.01, "dequantize": 1e-6}[kernel]
    assert _rel_err(got, want) < limit
    assert _rel_err(q(x[:1, :1]), want[:1, :1]) < limit  # the one-row path too


@pytest.mark.parametrize("kernel", [*CPU_KERNELS, "native"])
def test_int8_kernels_are_right_onfull_range_operands(kernel: str) -> None:
    """Rows of +-127 against weights of +-127: where a kernel sums pairs of products in 16 bits
    (oneDNN's and fbgemm's AVX2 paths without VNNI) they saturate, 255 instead of 32258 for two
    products. Whatever kernel a layer ends up with on this CPU must get them right."""
    _skip_unavailable(kernel)
    w, x = full_range_operands()
    layer = Int8Linear(w, torch.ones(w.shape[0]), None, kernel)
    want = x.float() @ w.float().T
    got = layer(x.float())
    assert float((got - want).abs().max() / want.abs().max()) < 0.02, layer.kernel
    if layer.kernel in ("onednn", "dequantize"):  # rows whose peak is 127 quantise exactly
        torch.testing.assert_close(got[:2], want[:2], rtol=1e-6, atol=0)


def test_int8_kernel_choice_follows_what_the_cpu_computes_right() -> None:
    if not fbgemm_available():
        pytest.skip("this torch build has no fbgemm")
    serving = int8_kernel("cpu", max_batch=32)  # past the native kernels on every CPU
    assert serving == ("onednn" if has_int8_dot() and onednn_int8_input() is not None else "fbgemm")
    if onednn_int8_input() is None:  # asked for by name, it is replaced rather than computing wrong numbers
        w, _ = full_range_operands()
        assert Int8Linear(w, torch.ones(w.shape[0]), None, "onednn").kernel != "onednn"


def test_onednn_takes_int8_or_shifted_uint8_inputs_with_the_same_numbers() -> None:
    """Without AMX oneDNN has no fast int8 x int8 kernel, so VNNI CPUs get the same integers
    shifted to uint8 with a zero point (``onednn_int8_input``); the sums are exact integers, so
    a layer's output is the same bit for bit whichever input type this CPU is given."""
    if onednn_int8_input() is None:
        pytest.skip("oneDNN's int8 product is not exact and fast on this CPU")
    layer = Int8Linear.from_linear(_linear(256, 48), "onednn")
    torch.manual_seed(4)
    x = torch.randn(5, 256) * torch.tensor([0.01, 1.0, 50.0, 3.0, 0.5])[:, None]
    got = {}
    for dtype in (torch.int8, torch.uint8):  # the reference loops run int8 here without AMX: small
        layer.onednn_input = dtype
        got[dtype] = layer(x)
    assert torch.equal(got[torch.int8], got[torch.uint8])
    exact = F.linear(x, layer.dequantized(), layer.bias)
    assert _rel_err(got[torch.uint8], exact) < 0.03


@pytest.mark.parametrize("kernel", ["fbgemm", "onednn"])
def test_int8_rows_are_quantised_on_their_own(kernel: str) -> None:
    """A row's result does not depend on the other rows of its call, one row alone included:
    bit for bit with fbgemm, to float rounding with oneDNN (its kernels differ by the number of
    rows); a shared input scale would move it by about 1%."""
    _skip_unavailable(kernel)
    q = Int8Linear.from_linear(_linear(256, 64), kernel)
    torch.manual_seed(1)
    x = torch.randn(6, 256) * torch.tensor([0.01, 1.0, 50.0, 3.0, 0.5, 7.0])[:, None]
    full = q(x)
    tol = {"rtol": 0, "atol": 0} if q.kernel == "fbgemm" else {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(q(x[2:4]), full[2:4], **tol)
    torch.testing.assert_close(q(torch.cat([x[3:5], torch.randn(3, 256) * 100]))[:2], full[3:5], **tol)
    torch.testing.assert_close(q(x[1:2]), full[1:2], **tol)


@pytest.mark.parametrize("kernel", ["fbgemm", "onednn"])
def test_outlier_rows_take_the_weight_only_kernel(kernel: str) -> None:
    _skip_unavailable(kernel)
    q = Int8Linear.from_linear(_linear(1024, 64), kernel)
    torch.manual_seed(2)
    x = torch.randn(3, 1024)
    x[1] *= 0.01
    x[1, 7] = 100.0  # one channel holds nearly all the energy (an attention-sink token)
    assert float(x[1].abs().max() / x[1].pow(2).mean().sqrt()) > OUTLIER_CREST
    got = q(x)
    assert torch.equal(got[1], q._weight_only(x[1:2])[0])
    assert torch.equal(got[[0, 2]], q(x[[0, 2]]))  # the other rows: the int8 kernel as usual
    # 8-bit input steps of 100/127 would zero the row's small values: the weight-only row is
    # closer to the exact product than the int8 kernel's answer for it.
    exact = F.linear(x[1:2], q.dequantized(), q.bias)
    q.crest_limit = float("inf")  # no guard
    assert _rel_err(got[1:2], exact) < _rel_err(q(x[1:2]), exact)


def test_int8_kernels_run_where_expected() -> None:
    """The fast paths really run their kernels (profiled), chosen by the batch an engine serves."""
    assert int8_kernel("cuda") == "dequantize"
    if not fbgemm_available():
        pytest.skip("this torch build has no fbgemm")
    single = "native" if native.library() is not None else "fbgemm"
    assert int8_kernel("cpu", max_batch=1) == single
    expected = {"fbgemm": "quantized::linear_dynamic"}
    if onednn_int8_input() is not None:
        expected["onednn"] = "onednn::qlinear_pointwise"
    for kernel, op in expected.items():
        layer = Int8Linear.from_linear(_linear(128, 64), kernel)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(torch.randn(1, 1, 128))
            layer(torch.randn(3, 128))
        names = {e.key for e in prof.key_averages()}
        assert op in names and "aten::_weight_int8pack_mm" not in names


def test_native_max_batch_follows_the_cpu_and_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """The native kernels serve engines of up to 16 rows on AVX-512 CPUs without AMX (measured
    faster than oneDNN's int8 kernel there at 1-16 streams), 8 elsewhere; UTTER_NATIVE_MAX_BATCH
    overrides, and a value that is not a whole number >= 1 is refused by name."""

    class Lib:
        def __init__(self, lanes: int) -> None:
            self.utter_lanes = lambda: lanes

    real = quant.native.library
    cases = [(Lib(16), False, 16), (Lib(16), True, 8), (Lib(8), False, 8), (None, False, 8)]
    for lib, amx, want in cases:
        monkeypatch.setattr(quant.native, "library", lambda lib=lib: lib)
        monkeypatch.setattr(quant, "has_amx_int8", lambda amx=amx: amx)
        assert quant.native_max_batch() == want, (lib, amx)
        if lib is not None:
            assert int8_kernel("cpu", want) == "native" and int8_kernel("cpu", want + 1) != "native"
    monkeypatch.setattr(quant.native, "library", real)
    monkeypatch.setenv("UTTER_NATIVE_MAX_BATCH", "12")
    assert quant.native_max_batch() == 12
    if real() is not None:
        assert int8_kernel("cpu", 12) == "native" and int8_kernel("cpu", 13) != "native"
    for bad in ("0", "-1", "many", ""):
        monkeypatch.setenv("UTTER_NATIVE_MAX_BATCH", bad)
        with pytest.raises(ValueError, match="UTTER_NATIVE_MAX_BATCH must be a whole number >= 1"):
            quant.native_max_batch()


def test_int8_serving_engine_batches_like_single_requests(tiny_checkpoint: Path) -> None:
    """Greedy codes of a request are the same alone and in a batch, in int8 as in float."""
    engine = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=4)
    linears = [m for m in engine.talker.modules() if isinstance(m, Int8Linear)]
    assert linears and {m.kernel for m in linears} == {int8_kernel("cpu", 4)}
    voice = _voice(engine)
    texts = ["The first request is short.", "A second, longer request speaks for a while.", "Third."]
    requests = [Request(t, voice, "English", GenerationOptions.greedy(6)) for t in texts]
    batched = engine.generate_codes(requests)
    for request, codes in zip(requests, batched):
        assert torch.equal(engine.generate_codes([request])[0], codes)


def test_fp16_linear_is_close_to_float32() -> None:
    if not fbgemm_available():
        pytest.skip("this torch build has no fbgemm")
    linear = _linear()
    layer = Fp16Linear.from_linear(linear)
    x = torch.randn(4, 96)
    want = F.linear(x, linear.weight.detach().half().float(), linear.bias.detach())
    torch.testing.assert_close(layer(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("mode", "max_batch", "min_cosine"),
    [("bfloat16", 1, 0.999), ("float16", 1, 0.999), ("int8", 1, 0.99), ("int8", 32, 0.99)],
    ids=["bfloat16", "float16", "int8-single-stream", "int8-serving"],
)
def test_logit_drift_against_float32(
    engine: Engine, mode: str, max_batch: int, min_cosine: float, record_property: pytest.RecordProperty
) -> None:
    """Every mode, including the serving engine's int8 kernel (the one that computed wrong
    numbers on CPUs without VNNI), keeps the logits of the float32 model."""
    candidate = apply_weight_mode(copy.deepcopy(engine.talker), mode, max_batch)
    drift = logit_drift(engine.talker, candidate)
    logger.info("%s (max_batch %d) drift vs float32: %s", mode, max_batch, drift)
    record_property("drift", drift)
    assert drift.talker_cosine_min > min_cosine and drift.predictor_cosine_min > min_cosine
    # Random tiny weights give near-flat logits, so argmax ties flip easily; this is a loose floor.
    assert drift.talker_top1 >= 0.75 and drift.predictor_top1 >= 0.75


def test_default_weight_mode_and_bad_modes() -> None:
    assert default_weight_mode("cpu") == "int8"
    assert default_weight_mode("cuda") == "bfloat16"
    if fbgemm_available():
        assert activation_dtype("int8", "cpu") == torch.float32
        assert activation_dtype("float16", "cpu") == torch.float32
    assert activation_dtype("int8", "cuda") == torch.bfloat16
    assert activation_dtype("float16", "cuda") == torch.float16
    with pytest.raises(ValueError, match="unknown weight mode"):
        apply_weight_mode(nn.Linear(2, 2), "int4")


def test_seeded_sampling_is_the_same_on_a_prefix_cache_miss_and_hit(
    tiny_checkpoint: Path, engine: Engine, ref_wav: Path
) -> None:
    """A voice's first request (prefix-cache miss) and later ones (hit) compute the request's
    positions from bit-identical keys and values, so a seeded request sounds the same whether or
    not its voice was used before, alone or in a batch, with the serving engine's int8 kernel."""
    from tests.conftest import REF_TEXT

    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)

    def fresh() -> Engine:
        return Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=4)

    request = Request(
        "Sampled, and the same every time.", voice, "English", GenerationOptions(seed=21, max_frames=8)
    )
    others = [
        Request(f"Another row {i}.", voice, "English", GenerationOptions(seed=i, max_frames=6))
        for i in range(3)
    ]
    served = fresh()
    miss = served.generate_codes([request])[0]
    assert served.runner.prefix_hits == 0 and len(served.runner.prefix_cache) == 1
    hit = served.generate_codes([request])[0]
    assert served.runner.prefix_hits == 1
    assert torch.equal(miss, hit)
    assert torch.equal(fresh().generate_codes([*others, request])[-1], miss)  # first use, in a batch


def test_a_kernel_far_slower_than_its_reference_is_not_fast() -> None:
    """The oneDNN check times the int8 product and float32 in alternation: a candidate 50x
    slower is refused, one as fast accepted."""
    import time

    from utter.engine.cpu.isa import _within

    def wait(seconds: float):
        def call() -> None:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        return call

    assert not _within(wait(0.01), wait(0.0002), factor=8.0)
    assert _within(wait(0.0002), wait(0.0002), factor=8.0)


def test_onednn_takes_int8_inputs_only_with_amx(monkeypatch) -> None:
    """Without AMX oneDNN has no int8 x int8 kernel (its reference loops ran a minute a frame), so
    only uint8 inputs are tried, whatever a timing would say."""
    from utter.engine.cpu import isa

    if not onednn_int8_available():
        pytest.skip("no oneDNN int8 product in this torch")
    tried: list[torch.dtype] = []
    monkeypatch.setattr(isa, "_cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))
    monkeypatch.setattr(isa, "_onednn_exact_and_fast", lambda dtype: tried.append(dtype) or False)
    isa.onednn_int8_input.cache_clear()
    try:
        assert isa.onednn_int8_input() is None and tried == [torch.uint8]
        tried.clear()
        monkeypatch.setattr(isa, "_cpu_flags", lambda: frozenset({"avx512_vnni", "amx_int8"}))
        isa.onednn_int8_input.cache_clear()
        assert isa.onednn_int8_input() is None and tried == [torch.int8, torch.uint8]
    finally:
        isa.onednn_int8_input.cache_clear()
