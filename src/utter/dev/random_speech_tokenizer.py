"""Write a randomly initialised 12 Hz speech tokenizer folder in the official layout.

Tests need a speech tokenizer that both our code and the official ``Qwen3TTSTokenizer`` can load,
without downloading the published weights. This writes ``config.json``, ``model.safetensors`` and
``preprocessor_config.json`` exactly as a checkpoint's ``speech_tokenizer/`` folder has them.

Weights are random but chosen to be *useful* for parity tests: a freshly initialised official
model decodes to exact silence (its codebooks are zero) and encodes everything to code 0, which
would make any comparison pass trivially. So codebooks are random and calibrated to the signal
they quantize, layer scales are large enough that the transformer matters, and the output level
is set to roughly 0.3 RMS so the [-1, 1] clamp rarely hides differences.

    python -m utter.dev.random_speech_tokenizer OUT_DIR [--size tiny|real] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..engine.model.codec_decoder import (
    CodecDecoder,
    CodecDecoderConfig,
    LayerScale,
    ResidualUnit,
    RMSNorm,
    SnakeBeta,
)
from ..engine.model.speech_tokenizer import (
    CONFIG_FILE,
    DECODER_PREFIX,
    ENCODER_PREFIX,
    PREPROCESSOR_FILE,
    WEIGHTS_FILE,
    SpeechTokenizerConfig,
)
from .mimi_reference import MimiReference

logger = logging.getLogger(__name__)

_SAMPLE_RATE = 24000
_FRAME_SAMPLES = 1920

# Mimi settings shared by both sizes (the published encoder is Mimi's defaults at 12.5 Hz).
_MIMI_COMMON: dict[str, Any] = {
    "sampling_rate": _SAMPLE_RATE,
    "audio_channels": 1,
    "upsampling_ratios": [8, 6, 5, 4],
    "kernel_size": 7,
    "last_kernel_size": 3,
    "residual_kernel_size": 3,
    "num_residual_layers": 1,
    "dilation_growth_rate": 2,
    "compress": 2,
    "use_causal_conv": True,
    "pad_mode": "constant",
    "trim_right_ratio": 1.0,
    "use_conv_shortcut": False,
    "codebook_size": 2048,
    "num_semantic_quantizers": 1,
    "hidden_act": "gelu",
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 8000,
    "sliding_window": 250,
    "layer_scale_initial_scale": 0.01,
    "attention_bias": False,
    "use_streaming": False,
    "_frame_rate": 12.5,
}

_ENCODER_SIZES: dict[str, dict[str, Any]] = {
    # Published sizes (Qwen3-TTS-Tokenizer-12Hz speech_tokenizer/config.json).
    "real": {
        "hidden_size": 512,
        "num_filters": 64,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "intermediate_size": 2048,
        "num_quantizers": 32,
        "codebook_dim": 256,
        "vector_quantization_hidden_dimension": 256,
        "upsample_groups": 512,
    },
    # More codebooks than the 16 kept, so dropping the rest is exercised.
    "tiny": {
        "hidden_size": 16,
        "num_filters": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "intermediate_size": 32,
        "num_quantizers": 18,
        "codebook_dim": 8,
        "vector_quantization_hidden_dimension": 8,
        "upsample_groups": 16,
    },
}

_DECODER_COMMON: dict[str, Any] = {
    "codebook_size": 2048,
    "num_quantizers": 16,
    "num_semantic_quantizers": 1,
    "upsample_rates": [8, 5, 4, 3],
    "upsampling_ratios": [2, 2],
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000,
    "layer_scale_initial_scale": 0.01,
    "max_position_embeddings": 8000,
    "attention_bias": False,
}

_DECODER_SIZES: dict[str, dict[str, Any]] = {
    "real": {
        "codebook_dim": 512,
        "latent_dim": 1024,
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 64,
        "sliding_window": 72,
        "decoder_dim": 1536,
    },
    # heads * head_dim != hidden_size and kv heads < heads, like the published model's quirks and
    # grouped-query attention; a window of 8 frames so short test inputs already exceed it.
    "tiny": {
        "codebook_dim": 16,
        "latent_dim": 16,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": 8,
        "decoder_dim": 32,
    },
}

PREPROCESSOR_CONFIG: dict[str, Any] = {
    "chunk_length_s": None,
    "feature_extractor_type": "EncodecFeatureExtractor",
    "feature_size": 1,
    "overlap": None,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": _SAMPLE_RATE,
}


def speech_tokenizer_config_dict(size: str = "tiny") -> dict[str, Any]:
    """The ``config.json`` content for ``size`` ("tiny" or "real")."""
    if size not in _DECODER_SIZES:
        raise ValueError(f"size must be one of {sorted(_DECODER_SIZES)}, got {size!r}")
    return {
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "model_type": "qwen3_tts_tokenizer_12hz",
        "encoder_valid_num_quantizers": 16,
        "input_sample_rate": _SAMPLE_RATE,
        "output_sample_rate": _SAMPLE_RATE,
        "encode_downsample_rate": _FRAME_SAMPLES,
        "decode_upsample_rate": _FRAME_SAMPLES,
        "encoder_config": {**_MIMI_COMMON, **_ENCODER_SIZES[size]},
        "decoder_config": {**_DECODER_COMMON, **_DECODER_SIZES[size]},
    }


def _calibration_signal(seconds: float, gen: torch.Generator) -> torch.Tensor:
    """Noise plus a few sines, [1, 1, S]: something for the codebooks to be fitted to."""
    n = int(seconds * _SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float32) / _SAMPLE_RATE
    wav = 0.1 * torch.randn(n, generator=gen)
    for hz in (110.0, 220.0, 445.0, 1234.0):
        wav += 0.15 * torch.sin(2 * math.pi * hz * t + float(torch.rand(1, generator=gen)) * 6.28)
    return wav[None, None]


@torch.no_grad()
def _randomize_encoder(encoder: MimiReference, gen: torch.Generator) -> None:
    """Give Mimi's codebooks random entries at the scale of the residual each one quantizes.

    Mimi's own init leaves every codebook at zero (all codes 0). Walking the residual chain on a
    calibration signal, each codebook gets Gaussian entries with the residual's per-dimension
    spread, which makes every one of the 32 (or 18) codebooks produce varied codes.
    """
    wav = _calibration_signal(4.0, gen)
    emb = encoder.encoder(wav)
    emb = encoder.encoder_transformer(emb.transpose(1, 2), return_dict=True)[0].transpose(1, 2)
    emb = encoder.downsample(emb)  # [1, hidden, F]
    quantizer = encoder.quantizer
    for rvq in (quantizer.semantic_residual_vector_quantizer, quantizer.acoustic_residual_vector_quantizer):
        residual = rvq.input_proj(emb) if rvq.input_proj is not None else emb  # [1, D, F]
        for layer in rvq.layers:
            book = layer.codebook
            size, dim = book.embed_sum.shape
            std = residual.std(dim=(0, 2)).clamp(min=1e-4)  # [D]
            mean = residual.mean(dim=(0, 2))
            usage = 0.5 + 1.5 * torch.rand(size, generator=gen)
            entries = mean + std * torch.randn(size, dim, generator=gen)
            book.cluster_usage.copy_(usage)
            book.embed_sum.copy_(entries * usage[:, None])
            book._embed = None  # Mimi caches entries; drop the stale zero table
            residual = residual - layer.decode(layer.encode(residual))


def _normal(shape: torch.Size, std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


@torch.no_grad()
def _randomize_decoder(decoder: CodecDecoder, gen: torch.Generator) -> None:
    """Unit-scale random weights; see the module docstring for why not the official init."""
    for module in decoder.modules():
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(_normal(module.weight.shape, fan_in**-0.5, gen))
        elif isinstance(module, nn.ConvTranspose1d):
            # weight [in, out, k]; each output sample sums in * k / stride products.
            fan_in = module.weight.shape[0] * module.weight.shape[2] / module.stride[0]
            module.weight.copy_(_normal(module.weight.shape, fan_in**-0.5, gen))
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            module.weight.copy_(1.0 + _normal(module.weight.shape, 0.1, gen))
        elif isinstance(module, LayerScale):
            module.scale.copy_(0.3 + _normal(module.scale.shape, 0.05, gen))
        elif isinstance(module, SnakeBeta):
            module.alpha.copy_(_normal(module.alpha.shape, 0.2, gen))
            module.beta.copy_(_normal(module.beta.shape, 0.2, gen))
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear, nn.LayerNorm)):
            if module.bias is not None:
                module.bias.copy_(_normal(module.bias.shape, 0.02, gen))
    for module in decoder.modules():
        if isinstance(module, ResidualUnit):
            # Keep each residual branch small: 12 unit-gain branches in a row would grow the signal
            # to ~200, where sin(alpha * x) turns float32 rounding into 1e-4 output noise.
            module.conv2.conv.weight.mul_(0.3)
    for name, param in decoder.named_parameters():
        if name.endswith(".gamma"):  # ConvNeXt residual gain
            param.copy_(0.3 + _normal(param.shape, 0.05, gen))
        elif name.endswith("_codebook.cluster_usage"):
            param.copy_(0.5 + 1.5 * torch.rand(param.shape, generator=gen))
    for name, param in decoder.named_parameters():
        if name.endswith("_codebook.embedding_sum"):
            usage = decoder.get_parameter(name.replace("embedding_sum", "cluster_usage"))
            param.copy_(_normal(param.shape, 1.0, gen) * usage[:, None])

    # Set the output level: scale the last conv so the pre-clamp waveform has about 0.3 RMS.
    codes = torch.randint(0, decoder.cfg.codebook_size, (1, decoder.cfg.num_quantizers, 12), generator=gen)
    seen: list[torch.Tensor] = []
    last = decoder.decoder[-1].conv
    hook = last.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        decoder(codes)
    finally:
        hook.remove()
    rms = float(seen[0].pow(2).mean().sqrt())
    if not math.isfinite(rms) or rms == 0.0:
        raise RuntimeError(f"random decoder produced a degenerate output (rms={rms})")
    last.weight.mul_(0.3 / rms)
    last.bias.mul_(0.3 / rms)


def _state_dict(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {
        prefix + k: v.detach().to(torch.float32).contiguous().clone() for k, v in module.state_dict().items()
    }


def write_random_speech_tokenizer(folder: Path | str, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random speech tokenizer of ``size`` ("tiny" or "real") into ``folder``.

    The same (size, seed) always gives the same files. Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = speech_tokenizer_config_dict(size)
    config = SpeechTokenizerConfig.from_dict(data)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # Mimi's own init draws from the global generator
        encoder = MimiReference.from_config_dict(config.encoder_config).eval()
    _randomize_encoder(encoder, torch.Generator().manual_seed(seed + 1))

    decoder = CodecDecoder(CodecDecoderConfig.from_dict(data["decoder_config"])).eval()
    _randomize_decoder(decoder, torch.Generator().manual_seed(seed + 2))

    tensors = {**_state_dict(encoder, ENCODER_PREFIX), **_state_dict(decoder, DECODER_PREFIX)}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (folder / PREPROCESSOR_FILE).write_text(
        json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8"
    )
    n_params = sum(t.numel() for t in tensors.values())
    logger.info(
        "wrote random %s speech tokenizer (%d tensors, %d values) to %s", size, len(tensors), n_params, folder
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", choices=sorted(_DECODER_SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    write_random_speech_tokenizer(args.folder, args.size, args.seed)


if __name__ == "__main__":
    main()
