"""Native int8 engines prefill with the int8 x int8 kernel (engine/cpu/quant.py, ``rows_kernel``)
and decode natively: prefills take that kernel and steps the native stack, each request's codes
do not depend on the other rows of its batch (nor on the engine's batch size), and a prefill's
hidden states stay close to the float32-input native prefill's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from utter.engine.cpu import native
from utter.engine.cpu.quant import Int8Linear, prefill_kernel
from utter.engine.engine import CPU_MAX_BATCH, Engine, Request
from utter.engine.model.layers import new_cache
from utter.engine.sampling import GenerationOptions, SamplingOptions

pytestmark = pytest.mark.skipif(
    native.library() is None or prefill_kernel("cpu") is None,
    reason="needs the native kernels and an int8 x int8 kernel (fbgemm or oneDNN)",
)


def _greedy(frames: int) -> GenerationOptions:
    greedy = SamplingOptions(do_sample=False)
    return GenerationOptions(greedy, greedy, 1.0, max_frames=frames)


@pytest.fixture(scope="module")
def engines(tiny_checkpoint: Path) -> tuple[Engine, Engine]:
    """(a single-stream engine as `utter say` loads it, a CPU server's engine)."""
    load = lambda batch: Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=batch)  # noqa: E731
    return load(1), load(CPU_MAX_BATCH)


def test_talker_layers_prefill_with_the_int8_kernel_and_decode_natively(engines, ref_wav) -> None:
    single, _ = engines
    talker = single.talker
    layers = [m for m in talker.model.layers.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.kernel == "native" and m.rows_kernel == prefill_kernel("cpu") for m in layers)
    others = [m for m in talker.code_predictor.modules() if isinstance(m, Int8Linear)]
    assert others and all(m.rows_kernel is None and m.packed is None for m in others)  # no second copy
    assert talker.model.native.steps_only and not talker.code_predictor.model.native.steps_only

    wide_rows, native_calls = [], []
    rows_of, run = Int8Linear._int8_rows, talker.model.native.run

    def spy_rows(self, x2):
        wide_rows.append(x2.shape[0])
        return rows_of(self, x2)

    def spy_run(x, *args, **kwargs):
        native_calls.append(tuple(x.shape[:2]))
        return run(x, *args, **kwargs)

    voice = single.create_voice(str(ref_wav), "A short reference sentence.")
    request = Request("Prefilled in int8, decoded natively.", voice, "English", _greedy(5))
    talker.model.native.run = spy_run
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Int8Linear, "_int8_rows", spy_rows)
            single.generate_codes([request])
    finally:
        talker.model.native.run = run
    assert wide_rows and min(wide_rows) > 1  # the prompt's positions, in one call per product
    assert native_calls and all(s == 1 for _, s in native_calls)  # every decode step natively


def test_each_request_prefills_as_alone_in_any_batch(engines, ref_wav) -> None:
    """A right-padded batched prefill (rows of other lengths) and the single-stream engine give a
    request the same codes bit for bit: each position's row is quantised on its own and which
    kernel runs depends on the call's kind, not on the rows beside it."""
    single, small = engines
    voice = single.create_voice(str(ref_wav), "A short reference sentence.")
    texts = ["Short.", "A somewhat longer sentence for the second row.", "Third row, middling.", "Four."]
    requests = [Request(t, voice, "English", _greedy(6 + 3 * i)) for i, t in enumerate(texts)]
    together = small.generate_codes(requests)
    for request, codes in zip(requests, together):
        assert torch.equal(codes, single.generate_codes([request])[0])
        assert torch.equal(codes, small.generate_codes([request])[0])


@torch.inference_mode()
def test_an_int8_prefill_stays_close_to_the_float32_input_prefill(engines, monkeypatch) -> None:
    """The same weights, prefilled with int8 inputs (per position) and with the native kernel's
    float32 inputs: the final hidden states agree to within the 8-bit steps."""
    single, _ = engines
    stack = single.talker.model
    cfg = stack.cfg
    torch.manual_seed(0)
    x = torch.randn(1, 40, cfg.hidden_size)
    outs = []
    for steps_only in (True, False):
        monkeypatch.setattr(stack.native, "steps_only", steps_only)
        cache = new_cache(cfg, 1, 48, torch.device("cpu"), torch.float32)
        outs.append(stack.run(x, cache, 0, kv_len=40))
    int8, fp32 = outs
    assert not torch.equal(int8, fp32)  # the two paths really differ ...
    cosine = torch.nn.functional.cosine_similarity(int8.flatten(1), fp32.flatten(1), dim=-1)
    # ... by rounding only (AVX2 CPUs: fbgemm's 7-bit inputs, cosine 0.9989 here; 8-bit 0.9995)
    assert cosine.min() > 0.998, cosine
    assert ((int8 - fp32).norm() / fp32.norm()) < 0.05


def test_it_can_be_turned_off_and_its_memory_is_counted(tiny_checkpoint: Path, monkeypatch) -> None:
    single = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=1)
    monkeypatch.setenv("UTTER_INT8_PREFILL", "0")
    engine = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8", max_batch=1)
    assert not engine.talker.model.native.steps_only
    linears = [m for m in engine.talker.modules() if isinstance(m, Int8Linear)]
    assert all(m.rows_kernel is None and m.qweight.numel() == 0 for m in linears)  # one copy: native
    # The prefill kernel's copy of the talker layers is what the engine holds more (at int8 size,
    # plus the kernel's small per-layer buffers).
    layers = [m for m in single.talker.model.layers.modules() if isinstance(m, Int8Linear)]
    extra = sum(m.out_features * m.in_features for m in layers)
    assert extra <= single.memory_bytes() - engine.memory_bytes() <= 1.1 * extra
