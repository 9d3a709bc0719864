"""Our 12 Hz speech tokenizer equals the official ``Qwen3TTSTokenizer`` on a tiny random checkpoint.

The checkpoint is written by our own tool and loaded by both sides from the same files, so these
tests also prove the tool writes the official layout. Its weights are calibrated so that a wrong
codebook, mask or rope would show up far above the 1e-4 tolerance (float32 noise is ~4e-6).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.official import import_qwen_tts
from utter.dev.mimi_reference import MimiReference
from utter.dev.random_speech_tokenizer import (
    _randomize_encoder,
    speech_tokenizer_config_dict,
    write_random_speech_tokenizer,
)
from utter.engine.model.codec_decoder import CodecDecoder, transposed_conv1d
from utter.engine.model.codec_encoder import CodecEncoder, CodecEncoderConfig
from utter.engine.model.speech_tokenizer import SpeechTokenizer, SpeechTokenizerConfig, official_reference_cut

qwen_tts = import_qwen_tts()

ATOL = 1e-4
SR = 24000


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_speech_tokenizer(tmp_path_factory.mktemp("speech_tokenizer") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="module")
def official(folder: Path):
    return qwen_tts.Qwen3TTSTokenizer.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def ours(folder: Path) -> SpeechTokenizer:
    return SpeechTokenizer.load(folder, device="cpu", dtype=torch.float32)


def _codes(frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (frames, 16), generator=torch.Generator().manual_seed(seed))


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    return {
        "noise_1.3s": (0.3 * rng.standard_normal(int(1.3 * SR))).astype(np.float32),
        "sine_2s_exact_frames": (0.5 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 1.5 * t)).astype(
            np.float32
        ),
        "chirp_odd_length": (0.4 * np.sin(2 * np.pi * (100 + 900 * t[:12345]) * t[:12345])).astype(
            np.float32
        ),
    }


def test_config_is_read_from_the_file(folder: Path, ours: SpeechTokenizer) -> None:
    cfg = SpeechTokenizerConfig.from_folder(folder)
    assert cfg.to_dict() == speech_tokenizer_config_dict("tiny")
    assert ours.sample_rate == 24000 and ours.input_sample_rate == 24000
    assert ours.frame_samples == 1920 == ours.decoder.total_upsample
    assert ours.num_codebooks == 16 and ours.codebook_size == 2048
    assert cfg.decoder.sliding_window == 8 and cfg.decoder.head_dim == 8  # tiny values, not defaults


@pytest.mark.parametrize("name", list(_signals()))
def test_encode_matches_official(official, ours: SpeechTokenizer, name: str) -> None:
    wav = _signals()[name]
    expected = official.encode(wav, sr=SR).audio_codes[0]
    got = ours.encode(wav)
    assert got.dtype == torch.long
    assert got.shape == (ours.frames_for_samples(len(wav)), 16)
    assert torch.equal(got, expected.cpu())
    assert torch.equal(ours.encode(torch.from_numpy(wav)), got)  # tensors are accepted too
    # Guard against a degenerate random checkpoint on which any slicing would agree.
    assert sum(len(torch.unique(got[:, q])) > 1 for q in range(16)) >= 12


@pytest.mark.parametrize("frames", [1, 7, 40])
def test_decode_matches_official(official, ours: SpeechTokenizer, frames: int) -> None:
    codes = _codes(frames, seed=frames)
    wavs, sr = official.decode({"audio_codes": codes})
    got = ours.decode(codes)
    assert sr == ours.sample_rate
    assert got.dtype == np.float32 and got.shape == (frames * 1920,) == wavs[0].shape
    assert np.abs(got - wavs[0]).max() < ATOL
    assert got.std() > 0.02  # not the silent output of an un-randomised codebook


def test_decode_padding_and_clamp_rules_match_official(official, ours: SpeechTokenizer) -> None:
    # -1 is the official batch padding value: such frames are clamped to code 0 for decoding and
    # the output is shortened by one frame per -1 in codebook 0.
    codes = _codes(12, seed=3)
    codes[-3:] = -1
    codes[4, 5] = -1
    wavs, _ = official.decode({"audio_codes": codes})
    got = ours.decode(codes)
    assert got.shape == wavs[0].shape == (9 * 1920,)
    assert np.abs(got - wavs[0]).max() < ATOL


def test_chunked_decode_matches_official(official, ours: SpeechTokenizer) -> None:
    codes = _codes(37, seed=5).T[None]  # [1, 16, 37]
    with torch.inference_mode():
        expected = official.model.decoder.chunked_decode(codes, chunk_size=10, left_context_size=3)
        got = ours.decoder.chunked_decode(codes, chunk_size=10, left_context=3)
        one_shot = ours.decoder(codes)
    assert got.shape == expected.shape == (1, 1, 37 * 1920)
    assert (got - expected).abs().max() < ATOL
    # 3 frames of context is far below the receptive field, so chunking really changed the audio.
    assert (got - one_shot).abs().max() > 100 * ATOL


def test_windowed_decode_equals_one_shot(ours: SpeechTokenizer) -> None:
    dec = ours.decoder
    frames, u, ctx = 70, dec.total_upsample, dec.receptive_field_frames
    codes = _codes(frames, seed=7).T[None]
    with torch.inference_mode():
        full = dec(codes)
        window = dec.decode_window(codes[..., 40 - ctx : 55], ctx)
        assert (window - full[..., 40 * u : 55 * u]).abs().max() < ATOL
        streamed = torch.cat(list(dec.iter_chunked_decode(codes, chunk_size=9, left_context=ctx)), dim=-1)
        assert streamed.shape == full.shape
        assert (streamed - full).abs().max() < ATOL
        # The bound is tight: a change at frame 10 reaches exactly frame 10 + receptive field.
        changed = codes.clone()
        changed[..., 10] = (changed[..., 10] + 1) % 2048
        diff = (dec(changed) - full).abs()[0, 0].view(frames, u).amax(dim=1)
        touched = (diff > 0).nonzero().flatten()
        assert touched.min() == 10 and touched.max() == 10 + ctx


def test_real_size_builds_on_meta_with_official_keys() -> None:
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model

    data = speech_tokenizer_config_dict("real")
    cfg = SpeechTokenizerConfig.from_dict(data)
    assert cfg.decoder.total_upsample == 1920
    with torch.device("meta"):
        decoder = CodecDecoder(cfg.decoder)
        encoder = CodecEncoder.from_config_dict(cfg.encoder_config)
        official = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**data))
    ours = {f"encoder.{k}": v.shape for k, v in encoder.state_dict().items()}
    ours |= {f"decoder.{k}": v.shape for k, v in decoder.state_dict().items()}
    theirs = {k: v.shape for k, v in official.state_dict().items()}
    assert ours.keys() == theirs.keys()
    assert ours == theirs
    assert decoder.receptive_field_frames == 580  # 8 layers x 71 frames of attention, plus convs
    assert sum(p.numel() for p in decoder.parameters()) > 100_000_000


def test_official_reference_cut_formula() -> None:
    assert official_reference_cut(10, 20, 20 * 1920) == 10 * 1920
    assert official_reference_cut(15, 22, 22 * 1920) == 15 * 1920 - 1  # float rounding, as official
    assert official_reference_cut(0, 0, 0) == 0


@pytest.mark.parametrize("kernel, stride, length", [(16, 8, 13), (10, 5, 7), (4, 2, 1), (3, 2, 5)])
def test_transposed_conv_as_a_product_equals_the_convolution(kernel: int, stride: int, length: int) -> None:
    """The decoder's upsamplers run as one GEMM plus shifted adds (kernel a multiple of the
    stride; 3/2 takes the convolution itself): the same numbers as ConvTranspose1d."""
    torch.manual_seed(kernel)
    conv = torch.nn.ConvTranspose1d(24, 12, kernel, stride=stride)
    x = torch.randn(2, 24, length)
    with torch.no_grad():
        torch.testing.assert_close(transposed_conv1d(conv, x), conv(x), rtol=1e-6, atol=1e-6)
        conv16, x16 = conv.to(torch.bfloat16), x.bfloat16()
        got, want = transposed_conv1d(conv16, x16), conv16(x16)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_loading_and_encoding_import_no_transformers(folder: Path, ours: SpeechTokenizer) -> None:
    """The encoder is our own module: loading the codec and making a voice's codes import no
    transformers (its import was seconds of the first new voice), with the same codes."""
    import subprocess
    import sys

    wav = _signals()["chirp_odd_length"]
    probe = (
        "import sys, numpy as np, torch; from utter.engine.model.speech_tokenizer import SpeechTokenizer; "
        f"codec = SpeechTokenizer.load({str(folder)!r}); "
        f"wav = np.frombuffer(bytes.fromhex({wav.tobytes().hex()!r}), dtype=np.float32); "
        "sys.stdout.write(codec.encode(wav).numpy().tobytes().hex()); "
        "sys.exit('transformers was imported' if 'transformers' in sys.modules else 0)"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    codes = torch.from_numpy(np.frombuffer(bytes.fromhex(out), dtype=np.int64).copy())
    assert torch.equal(codes.view(-1, 16), ours.encode(wav))


def _reference_and_ours(
    size: str, seed: int, layer_scale: float | None = None
) -> tuple[MimiReference, CodecEncoder]:
    """transformers' Mimi with the random writer's weights, and our encoder loaded from its state.
    ``layer_scale``: the transformer's residual scales (Mimi's init: 0.01, where it barely matters)."""
    data = speech_tokenizer_config_dict(size)["encoder_config"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = MimiReference.from_config_dict(data).eval()
    if layer_scale is not None:
        with torch.no_grad():
            for name, param in reference.encoder_transformer.named_parameters():
                if name.endswith("layer_scale.scale"):
                    param.fill_(layer_scale)
    _randomize_encoder(reference, torch.Generator().manual_seed(seed + 1))
    with torch.device("meta"):
        ours = CodecEncoder.from_config_dict(data)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


@pytest.mark.parametrize("size", ["tiny", "real"])
def test_encoder_equals_transformers_mimi_bit_for_bit(size: str) -> None:
    """Every stage (conv encoder, transformer, downsampler) gives the same bits as transformers'
    Mimi, and so the codes, for one signal and a right-padded batch; at the real sizes too (where
    ``cdist`` takes its matrix-product path)."""
    reference, ours = _reference_and_ours(size, seed=3)
    gen = torch.Generator().manual_seed(4)
    wav = 0.3 * torch.randn(2, 3 * SR + 1234, generator=gen)
    wav[1, 2 * SR :] = 0.0
    with torch.inference_mode():
        emb_ref = reference.encoder(wav[:, None])
        emb = ours.encoder(wav[:, None])
        assert torch.equal(emb, emb_ref)
        hid_ref = reference.encoder_transformer(emb_ref.transpose(1, 2), return_dict=True)[0]
        hid = ours.encoder_transformer(emb.transpose(1, 2))
        assert torch.equal(hid, hid_ref)
        assert torch.equal(
            ours.downsample(hid.transpose(1, 2)), reference.downsample(hid_ref.transpose(1, 2))
        )
    for q in (16, 1, 3):
        expected = reference.encode_codes(wav, q)
        got = ours.encode(wav, q)
        assert got.shape == expected.shape == (2, q, math.ceil(wav.shape[1] / 1920))
        assert torch.equal(got, expected)
    assert len(torch.unique(got[0, 0])) > 1 and len(torch.unique(got[0, -1])) > 1
    for samples in (1, 500, 1921, 4000):  # one 25 Hz frame (no causal mask), partial strides
        short = wav[:1, :samples]
        assert torch.equal(ours.encode(short, 16), reference.encode_codes(short, 16))


def test_encoder_attends_over_the_whole_reference_as_transformers_does() -> None:
    """Mimi's config names a 250-frame sliding window that transformers' encode does not apply:
    a 12 s reference (300 frames at 25 Hz) gives transformers' codes, and a window would have
    changed the transformer's output (so the equality is not an accident of these weights)."""
    reference, ours = _reference_and_ours("tiny", seed=5, layer_scale=1.0)
    wav = 0.3 * torch.randn(1, 12 * SR, generator=torch.Generator().manual_seed(6))
    assert torch.equal(ours.encode(wav, 16), reference.encode_codes(wav, 16))
    with torch.inference_mode():
        x = ours.encoder(wav[:, None]).transpose(1, 2)
        full = ours.encoder_transformer(x)
        assert torch.equal(full, reference.encoder_transformer(x, return_dict=True)[0])
        t = x.shape[1]
        assert t > 250
        q, k = torch.arange(t)[:, None], torch.arange(t)[None, :]
        window = (k <= q) & (k > q - 250)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        patched = lambda q_, k_, v_, is_causal: sdpa(q_, k_, v_, attn_mask=window)  # noqa: E731
        try:
            torch.nn.functional.scaled_dot_product_attention = patched
            windowed = ours.encoder_transformer(x)
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
    assert torch.equal(full[:, :250], windowed[:, :250])
    assert (full[:, 250:] - windowed[:, 250:]).abs().max() > 1e-4  # float noise here: ~1e-6


def test_encoder_config_rejects_what_it_cannot_run() -> None:
    base = speech_tokenizer_config_dict("tiny")["encoder_config"]
    for change, message in [
        ({"audio_channels": 2}, "mono"),
        ({"hidden_act": "relu"}, "activation"),
        ({"num_semantic_quantizers": 18}, "num_semantic_quantizers"),
        ({"_frame_rate": 50.0}, "frame rate"),
    ]:
        with pytest.raises(ValueError, match=message):
            CodecEncoderConfig.from_dict(base | change)
    with pytest.raises(ValueError, match="num_quantizers"):
        CodecEncoder.from_config_dict(base).encode(torch.zeros(1, 1920), 19)
