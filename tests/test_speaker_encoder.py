"""Parity of our ECAPA-TDNN speaker encoder and its mel front end with the official qwen-tts code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.official import import_qwen_tts
from utter.engine.model.speaker_encoder import (
    SpeakerEncoder,
    SpeakerEncoderConfig,
    extract_speaker_embedding,
    slaney_mel_filterbank,
    speaker_mel,
)

SMALL = {
    "enc_channels": [32, 32, 32, 32, 96],
    "enc_dim": 64,
    "enc_attention_channels": 16,
    "enc_se_channels": 16,
}
# 1280 samples is the shortest clip the default network accepts (5 mel frames); 3 s is a typical prompt.
LENGTHS = [1280, 24000 + 77, 3 * 24000]


@pytest.fixture(scope="module")
def official():
    qwen_tts = import_qwen_tts()
    from qwen_tts.core.models import configuration_qwen3_tts, modeling_qwen3_tts

    assert qwen_tts is not None
    return modeling_qwen3_tts, configuration_qwen3_tts.Qwen3TTSSpeakerEncoderConfig


def _official_mel(modeling, wav: np.ndarray) -> torch.Tensor:
    """Exactly the call in the official Qwen3TTSForConditionalGeneration.extract_speaker_embedding."""
    return modeling.mel_spectrogram(
        torch.from_numpy(wav).unsqueeze(0),
        n_fft=1024,
        num_mels=128,
        sampling_rate=24000,
        hop_size=256,
        win_size=1024,
        fmin=0,
        fmax=12000,
    ).transpose(1, 2)


def _audio(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 24000
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.1 * rng.standard_normal(n)
    return wav.clip(-1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def small_pair(official):
    modeling, official_config = official
    torch.manual_seed(1234)
    theirs = modeling.Qwen3TTSSpeakerEncoder(official_config(**SMALL)).eval()
    # Default init leaves biases small; make every parameter clearly non-trivial so a wrong wiring shows.
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = SpeakerEncoder(SpeakerEncoderConfig.from_dict(SMALL)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


# ------------------------------------------------------------------------------------------------- mel


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [(24000, 1024, 128, 0.0, 12000.0), (16000, 512, 80, 20.0, 7600.0), (22050, 2048, 64, 0.0, 11025.0)],
)
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    ours = slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", LENGTHS)
def test_speaker_mel_equals_official(official, n):
    modeling, _ = official
    wav = _audio(n, seed=n)
    ref = _official_mel(modeling, wav)
    ours = speaker_mel(torch.from_numpy(wav))
    assert ours.shape == ref.shape == (1, (n - 256) // 256 + 1, 128)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_speaker_mel_batched_and_checks(official):
    modeling, _ = official
    a, b = _audio(5000, 1), _audio(5000, 2)
    batch = speaker_mel(torch.from_numpy(np.stack([a, b])))
    torch.testing.assert_close(batch[1:], _official_mel(modeling, b), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="24000"):
        speaker_mel(torch.from_numpy(a), sample_rate=16000)
    with pytest.raises(ValueError, match="too short"):
        speaker_mel(torch.zeros(300))


# --------------------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("n", LENGTHS)
def test_embedding_matches_official_small_config(official, small_pair, n):
    modeling, _ = official
    theirs, ours = small_pair
    wav = _audio(n, seed=10 + n)
    with torch.inference_mode():
        ref = theirs(_official_mel(modeling, wav))[0]
    got = extract_speaker_embedding(ours, wav)
    assert got.shape == (SMALL["enc_dim"],) and got.dtype == torch.float32
    assert ref.abs().max() > 1e-2  # a meaningful comparison, not zeros against zeros
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # Tensor input gives the same result as numpy input.
    torch.testing.assert_close(extract_speaker_embedding(ours, torch.from_numpy(wav)), got, rtol=0, atol=0)


def test_batched_forward_matches_official(official, small_pair):
    modeling, _ = official
    theirs, ours = small_pair
    mel = torch.cat([_official_mel(modeling, _audio(9000, s)) for s in (5, 6)])
    with torch.inference_mode():
        torch.testing.assert_close(ours(mel), theirs(mel), rtol=0, atol=1e-5)


def test_encoder_dtype_is_used(small_pair):
    _, ours = small_pair
    wav = _audio(24000, 3)
    ref = extract_speaker_embedding(ours, wav)
    half = SpeakerEncoder(ours.config).to(torch.bfloat16).eval()
    half.load_state_dict(ours.state_dict())
    got = extract_speaker_embedding(half, wav)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=0.1, atol=0.1)


def test_too_short_audio_is_a_clear_error(small_pair):
    _, ours = small_pair
    with pytest.raises(ValueError, match="too short"):
        extract_speaker_embedding(ours, _audio(1279, 0))  # 4 mel frames; dilation-4 padding needs 5


def test_full_size_default_config_matches_official_keys(official):
    modeling, official_config = official
    theirs = modeling.Qwen3TTSSpeakerEncoder(official_config())
    ours = SpeakerEncoder()
    their_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == their_shapes
    assert len(our_shapes) == 76
    ours.load_state_dict(theirs.state_dict(), strict=True)


def test_config_defaults_and_from_dict(official):
    _, official_config = official
    theirs = official_config()
    ours = SpeakerEncoderConfig()
    for field in (
        "mel_dim",
        "enc_dim",
        "enc_channels",
        "enc_kernel_sizes",
        "enc_dilations",
        "enc_attention_channels",
        "enc_res2net_scale",
        "enc_se_channels",
        "sample_rate",
    ):
        their_value = getattr(theirs, field)
        assert getattr(ours, field) == (tuple(their_value) if isinstance(their_value, list) else their_value)

    # What the released checkpoints' config.json holds, plus a key we do not know.
    cfg = SpeakerEncoderConfig.from_dict({"enc_dim": 2048, "sample_rate": 24000, "something_new": 1})
    assert cfg.enc_dim == 2048 and cfg.enc_channels == (512, 512, 512, 512, 1536)
    assert SpeakerEncoder(cfg).fc.out_channels == 2048
    assert hash(SpeakerEncoderConfig.from_dict(SMALL)) == hash(SpeakerEncoderConfig.from_dict(dict(SMALL)))


@pytest.mark.parametrize(
    "bad",
    [
        {"enc_channels": [32, 32, 96], "enc_kernel_sizes": [5, 3, 3, 1]},
        {"enc_channels": [32, 32, 32, 32, 64]},
        {"enc_channels": [30, 30, 30, 30, 90]},
    ],
)
def test_config_rejects_inconsistent_shapes(bad):
    with pytest.raises(ValueError):
        SpeakerEncoderConfig.from_dict(bad)
