"""Our 12 Hz speech tokenizer equals the official ``Qwen3TTSTokenizer`` on a tiny random checkpoint.

The checkpoint is written by our own tool and loaded by both sides from the same files, so these
tests also prove the tool writes the official layout. Its weights are calibrated so that a wrong
codebook, mask or rope would show up far above the 1e-4 tolerance (float32 noise is ~4e-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.official import import_qwen_tts
from utter.dev.random_speech_tokenizer import speech_tokenizer_config_dict, write_random_speech_tokenizer
from utter.engine.model.codec_decoder import CodecDecoder, transposed_conv1d
from utter.engine.model.codec_encoder import CodecEncoder
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


def test_a_lazy_encoder_is_built_on_first_use_and_encodes_the_same(
    folder: Path, ours: SpeechTokenizer
) -> None:
    """The engine loads the codec with its encoder built later (transformers' import was seconds
    of every cold start): loading it and the text side imports no transformers, and the encoder,
    once built (in the background or at first use), encodes exactly as one built at load."""
    import subprocess
    import sys
    import time

    probe = (
        "import sys; from utter.engine.model.speech_tokenizer import SpeechTokenizer; "
        f"SpeechTokenizer.load({str(folder)!r}, lazy_encoder=True); "
        "sys.exit('transformers was imported' if 'transformers' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)

    wav = _signals()["chirp_odd_length"]
    lazy = SpeechTokenizer.load(folder, lazy_encoder=True)
    assert lazy._encoder is None
    assert torch.equal(lazy.encode(wav), ours.encode(wav))
    soon = SpeechTokenizer.load(folder, lazy_encoder=True)
    soon.build_encoder_soon()
    deadline = time.monotonic() + 60
    while soon._encoder is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert soon._encoder is not None and torch.equal(soon.encode(wav), ours.encode(wav))


def test_the_background_encoder_and_a_whisper_load_import_transformers_one_at_a_time(
    folder: Path, tiny_whisper: Path
) -> None:
    """In a fresh process (transformers not imported yet), the encoder built on its thread and
    Whisper loaded on another at the same moment both succeed: transformers' lazy names are not
    safe to import from two threads at once (CI saw Whisper's load fail so), hence one lock."""
    import subprocess
    import sys

    probe = f"""
import threading
from utter.asr import Transcriber
from utter.engine.model.speech_tokenizer import SpeechTokenizer
codec = SpeechTokenizer.load({str(folder)!r}, lazy_encoder=True)
errors = []
def whisper():
    try:
        Transcriber.load({str(tiny_whisper)!r}, device="cpu")
    except Exception as exc:
        errors.append(repr(exc))
t = threading.Thread(target=whisper)
codec.build_encoder_soon()
t.start()
t.join()
codec.encoder
assert not errors, errors
"""
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=300)
