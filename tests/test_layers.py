"""The decoder's fast paths compute what the plain ones do: fused projections, the joint q/k
norm and rotation, rotary tables, and the aligned-rows path of ``DecoderStack.run``."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import torch

from utter.engine.engine import Engine
from utter.engine.model.layers import Rotary, apply_rotary, fuse_projections, new_cache, rotate


def test_rotary_table_and_rotate_equal_the_plain_rotation() -> None:
    rotary = Rotary(64, 10000.0)
    positions = torch.tensor([[0, 5, 17], [3, 3, 40]])
    cos, sin = rotary(positions, torch.float32)  # [B, 1, S, D]
    table_cos, signed_sin = rotary.table(41, torch.float32)
    assert table_cos.shape[0] >= 41
    torch.testing.assert_close(table_cos[positions][:, None], cos, rtol=0, atol=0)
    x = torch.randn(2, 4, 3, 64)
    want = apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotate(x, table_cos[positions][:, None], signed_sin[positions][:, None]), want)
    assert rotary.table(10, torch.float32)[0] is table_cos  # built once, reused


def _unfused(engine: Engine) -> torch.nn.Module:
    """The talker as loaded by name, before fusion: rebuilt from the checkpoint's own tensors."""
    from utter.engine.checkpoint import weight_files
    from utter.engine.model.qwen3_tts import Qwen3TTSWeights
    from utter.engine.weights import load_weights

    with torch.device("meta"):
        weights = Qwen3TTSWeights(engine.config)
    load_weights(weights, weight_files(engine.folder), torch.device("cpu"), torch.float32)
    return weights.talker.eval()


@torch.inference_mode()
def test_fused_projections_compute_what_the_separate_ones_do(engine: Engine) -> None:
    plain = _unfused(engine)
    fused = fuse_projections(copy.deepcopy(plain))
    assert fused.model.layers[0].self_attn.qkv is not None and not hasattr(
        fused.model.layers[0].mlp, "up_proj"
    )
    cfg = plain.model.cfg
    x = torch.randn(2, 5, cfg.hidden_size)
    outs = []
    for talker in (plain, fused):
        cache = new_cache(cfg, 2, 8, torch.device("cpu"), torch.float32)
        outs.append((talker.model.run(x, cache, 0, kv_len=5), cache))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1][0], outs[1][1][0], rtol=1e-5, atol=1e-5)  # keys as cached


@torch.inference_mode()
def test_aligned_rows_path_equals_the_per_row_positions_path(engine: Engine) -> None:
    """``run`` with an int start (slice-written cache, no mask for one query) equals ``run``
    with a positions tensor (indexed writes, explicit mask), prefill and decode steps alike."""
    stack = engine.talker.code_predictor.model
    cfg = stack.cfg
    caches = [new_cache(cfg, 3, 8, torch.device("cpu"), torch.float32) for _ in range(2)]
    x = torch.randn(3, 2, cfg.hidden_size)
    a = stack.run(x, caches[0], 0, kv_len=2)
    b = stack.run(x, caches[1], torch.arange(2).expand(3, 2), kv_len=2)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for pos in range(2, 6):
        x = torch.randn(3, 1, cfg.hidden_size)
        a = stack.run(x, caches[0], pos, kv_len=pos + 1)
        b = stack.run(x, caches[1], torch.full((3, 1), pos), kv_len=pos + 1)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(caches[0][0], caches[1][0], rtol=0, atol=0)


def test_codec_decoder_dtype_follows_the_mode(tiny_checkpoint: Path, engine: Engine) -> None:
    from utter.engine.cpu.isa import fast_bfloat16

    assert engine.codec.dtype == torch.float32  # float32 stays exact (parity with the official one)
    fast = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8")
    want = torch.bfloat16 if fast_bfloat16(torch.device("cpu")) else torch.float32
    assert fast.codec.dtype == want
    assert next(fast.codec.encoder.parameters()).dtype == torch.float32  # voices do not change


def test_importing_the_engine_does_not_import_transformers() -> None:
    """Start-up: transformers (seconds to import) loads with the speech tokenizer, not before."""
    code = "import sys, utter.engine.engine, utter.cli; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
