"""Weight modes: every mode generates through the real engine, int8 is exact to its dequantised
weights and uses the CPU kernel, and logits stay close to float32.

Engine hook used here (until Engine.load takes a weight mode): load the engine in
``activation_dtype(mode)``, then ``apply_weight_mode(engine.talker, mode)`` in place. The runner
and prompt builder read the activation dtype from ``codec_head.weight``, which every mode keeps
in the activation dtype.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from utter.engine.engine import Engine, Request
from utter.engine.quant import (
    WEIGHT_MODES,
    Int8Linear,
    activation_dtype,
    apply_weight_mode,
    default_weight_mode,
    logit_drift,
)
from utter.engine.sampling import GenerationOptions
from utter.engine.voice import VoicePrompt

logger = logging.getLogger(__name__)

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def load_in_mode(checkpoint: Path, mode: str) -> Engine:
    """The integration hook in test form: load in the mode's activation dtype, then convert."""
    engine = Engine.load(str(checkpoint), device="cpu", dtype=DTYPE_NAMES[activation_dtype(mode, "cpu")])
    apply_weight_mode(engine.talker, mode)
    return engine


def _voice(engine: Engine) -> VoicePrompt:
    dim = engine.config.talker.decoder.hidden_size
    return VoicePrompt(speaker_embedding=torch.randn(dim, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("mode", WEIGHT_MODES)
def test_every_mode_generates_through_the_engine(tiny_checkpoint: Path, engine: Engine, mode: str) -> None:
    moded = load_in_mode(tiny_checkpoint, mode)
    act = activation_dtype(mode, "cpu")
    assert moded.runner.dtype == act and moded.talker.codec_head.weight.dtype == act
    assert moded.talker.model.rotary.inv_freq.dtype == torch.float32  # buffers are not cast
    request = Request("Weight modes must all speak.", _voice(moded), "English", GenerationOptions.greedy(4))
    codes = moded.generate_codes([request])[0]
    assert 2 <= codes.shape[0] <= 4 and codes.shape[1] == engine.config.talker.num_code_groups
    assert int(codes.min()) >= 0 and int(codes.max()) < engine.config.talker.code_predictor.vocab_size
    if mode == "float32":  # converting to the loaded dtype changes nothing
        assert torch.equal(codes, engine.generate_codes([request])[0])
    linears = [m for m in moded.talker.modules() if isinstance(m, Int8Linear)]
    assert bool(linears) == (mode == "int8")


def test_int8_linear_equals_dequantized_matmul() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 80, bias=True)
    q = Int8Linear.from_linear(linear, torch.bfloat16)
    w = linear.weight.detach()
    # Symmetric per-channel rounding: every weight within half a step of its original value.
    step = q.scales.float()[:, None]
    assert ((q.dequantized() - w).abs() <= 0.5 * step + 1e-7).all()
    x = torch.randn(2, 3, 96).bfloat16()
    expected = F.linear(x.float(), q.dequantized(), linear.bias.detach().bfloat16().float())
    got = q(x)
    assert got.shape == (2, 3, 80) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)
    # The fallback used off CPU (dequantise on the fly) gives the same result.
    q.use_kernel = False
    torch.testing.assert_close(q(x).float(), got.float(), rtol=1e-2, atol=1e-2)
    # In float32 the fallback is exact to float rounding.
    q32 = Int8Linear.from_linear(linear, torch.float32)
    x32 = torch.randn(5, 96)
    torch.testing.assert_close(q32(x32), F.linear(x32, q32.dequantized(), linear.bias), rtol=1e-5, atol=1e-5)


def test_int8_uses_the_cpu_kernel(engine: Engine) -> None:
    assert hasattr(torch.ops.aten, "_weight_int8pack_mm")
    talker = apply_weight_mode(copy.deepcopy(engine.talker), "int8")
    layer = talker.code_predictor.model.layers[0].mlp.gate_proj
    assert isinstance(layer, Int8Linear) and layer.use_kernel
    assert isinstance(talker.code_predictor.lm_head[0], Int8Linear)
    assert type(talker.codec_head) is nn.Linear  # stays float: the runner reads the dtype from it
    x = torch.randn(1, 1, layer.in_features).bfloat16()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x)
    assert "aten::_weight_int8pack_mm" in {e.key for e in prof.key_averages()}


@pytest.mark.parametrize(("mode", "min_cosine"), [("bfloat16", 0.999), ("float16", 0.999), ("int8", 0.99)])
def test_logit_drift_against_float32(
    engine: Engine, mode: str, min_cosine: float, record_property: pytest.RecordProperty
) -> None:
    candidate = apply_weight_mode(copy.deepcopy(engine.talker), mode)
    drift = logit_drift(engine.talker, candidate)
    logger.info("%s drift vs float32: %s", mode, drift)
    record_property("drift", drift)
    assert drift.talker_cosine_min > min_cosine and drift.predictor_cosine_min > min_cosine
    # Random tiny weights give near-flat logits, so argmax ties flip easily; this is a loose floor.
    assert drift.talker_top1 >= 0.75 and drift.predictor_top1 >= 0.75


def test_default_weight_mode_and_bad_modes() -> None:
    assert default_weight_mode("cpu") == "int8"
    assert default_weight_mode("cpu", batch=16) == "int8"  # larger batches use the dense copy
    assert default_weight_mode("cuda") == "bfloat16"
    assert activation_dtype("int8", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown weight mode"):
        apply_weight_mode(nn.Linear(2, 2), "int4")


def test_int8_serving_layers_use_their_dense_copy_for_large_batches() -> None:
    """With a dense copy (servers), batches above INT8_MAX_BATCH use it; small ones use int8."""
    from utter.engine.quant import INT8_MAX_BATCH, Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    q = Int8Linear.from_linear(linear, torch.bfloat16, keep_dense=True)
    assert q.dense is not None and q.dense.dtype == torch.bfloat16
    big = torch.randn(INT8_MAX_BATCH + 1, 64).to(torch.bfloat16)
    dense = linear.weight.detach().to(torch.bfloat16)
    dense_out = torch.nn.functional.linear(big, dense) + linear.bias.detach().to(torch.bfloat16)
    torch.testing.assert_close(q(big), dense_out, atol=0, rtol=0)
    small = big[:INT8_MAX_BATCH]
    plain = Int8Linear.from_linear(linear, torch.bfloat16)
    assert plain.dense is None
    torch.testing.assert_close(q(small), plain(small), atol=0, rtol=0)
