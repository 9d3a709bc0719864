"""Write a randomly initialised Qwen3-TTS 12 Hz checkpoint in the official on-disk layout.

Any variant: Base (clones voices), CustomVoice (a table of preset speakers, two of them
speaking Chinese in a dialect) or VoiceDesign (neither speakers nor a speaker encoder).

No model hub is reachable in CI, so tests, benchmarks and offline development build their own
checkpoints: config.json, generation_config.json, model.safetensors, the real Qwen2 text
tokenizer files and a speech_tokenizer/ folder, exactly where the official loader looks for
them. Random weights make noise, not speech; the sizes can be tiny or the real published ones.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..engine.config import ModelConfig

logger = logging.getLogger(__name__)

# Codec control ids and language ids of the released 12 Hz Base checkpoints.
CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
LANGUAGE_IDS = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
    "beijing_dialect": 2074,
    "sichuan_dialect": 2062,
}


def _decoder(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000,
        "max_position_embeddings": 32768,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "num_code_groups": 16,
    }


# The released CustomVoice speakers (model card); the codec ids are this random checkpoint's own.
SPEAKERS = ("vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden", "ono_anna", "sohee")
DIALECTS = {"dylan": "beijing_dialect", "eric": "sichuan_dialect"}
VARIANTS = ("base", "custom_voice", "voice_design")


def _config(size: str, variant: str = "base") -> dict[str, Any]:
    """config.json for one of the sizes: tiny, tiny-wide (talker wider than the predictor), 0.6b, 1.7b."""
    if size == "tiny":
        talker, cp, text_hidden, se = (
            _decoder(64, 128, 2, 4, 2, 16),
            _decoder(64, 128, 2, 4, 2, 16),
            32,
            [32, 32, 32, 32, 96],
        )
        mrope = [4, 2, 2]
    elif size == "tiny-wide":
        talker, cp, text_hidden, se = (
            _decoder(96, 192, 2, 4, 2, 16),
            _decoder(64, 128, 2, 4, 2, 16),
            32,
            [32, 32, 32, 32, 96],
        )
        mrope = [4, 2, 2]
    elif size == "0.6b":
        talker, cp, text_hidden, se = (
            _decoder(1024, 3072, 28, 16, 8, 128),
            _decoder(1024, 3072, 5, 16, 8, 128),
            2048,
            [512, 512, 512, 512, 1536],
        )
        mrope = [24, 20, 20]
    elif size == "1.7b":
        talker, cp, text_hidden, se = (
            _decoder(2048, 6144, 28, 16, 8, 128),
            _decoder(1024, 3072, 5, 16, 8, 128),
            2048,
            [512, 512, 512, 512, 1536],
        )
        mrope = [24, 20, 20]
    else:
        raise ValueError(f"unknown size {size!r}; choose tiny, tiny-wide, 0.6b or 1.7b")
    cp.update(vocab_size=2048, max_position_embeddings=65536, use_sliding_window=False, sliding_window=None)
    talker.update(
        vocab_size=3072,
        text_vocab_size=151936,
        text_hidden_size=text_hidden,
        rope_scaling={"interleaved": True, "mrope_section": mrope, "rope_type": "default", "type": "default"},
        use_sliding_window=False,
        sliding_window=None,
        code_predictor_config=cp,
        codec_language_id=dict(LANGUAGE_IDS),
        pad_token_id=CODEC_IDS["codec_pad_id"],
        position_id_per_seconds=13,
        spk_id={name: 3000 + i for i, name in enumerate(SPEAKERS)} if variant == "custom_voice" else {},
        spk_is_dialect={name: DIALECTS.get(name, False) for name in SPEAKERS}
        if variant == "custom_voice"
        else {},
        **CODEC_IDS,
    )
    return {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": {"tiny": "tiny", "tiny-wide": "tiny", "0.6b": "0b6", "1.7b": "1b7"}[size],
        "tts_model_type": variant,
        "assistant_token_id": 77091,
        "im_start_token_id": 151644,
        "im_end_token_id": 151645,
        "tts_pad_token_id": 151671,
        "tts_bos_token_id": 151672,
        "tts_eos_token_id": 151673,
        "talker_config": talker,
        "speaker_encoder_config": {
            "mel_dim": 128,
            "enc_dim": talker["hidden_size"],
            "enc_channels": se,
            "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_dilations": [1, 2, 3, 4, 1],
            "enc_attention_channels": se[0] // 4,
            "enc_res2net_scale": 8,
            "enc_se_channels": se[0] // 4,
            "sample_rate": 24000,
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.3",
    }


GENERATION_CONFIG = {
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.9,
    "top_p": 1.0,
    "top_k": 50,
    "subtalker_dosample": True,
    "subtalker_temperature": 0.9,
    "subtalker_top_p": 1.0,
    "subtalker_top_k": 50,
    "max_new_tokens": 8192,
}


def _randomise(module: nn.Module, generator: torch.Generator, std: float) -> None:
    """Normal(0, std) weights, zero biases, unit norms: a stand-in for trained weights."""
    for name, p in module.named_parameters():
        if name.endswith("norm.weight") or ".q_norm." in name or ".k_norm." in name:
            p.data.fill_(1.0)
        elif name.endswith(".bias"):
            p.data.zero_()
        else:
            p.data.normal_(0.0, std, generator=generator)


def write_weights(folder: Path, config: dict[str, Any], seed: int, dtype: torch.dtype, std: float) -> None:
    from ..engine.model.qwen3_tts import Qwen3TTSWeights

    cfg = ModelConfig.from_dict(copy.deepcopy(config))
    torch.manual_seed(seed)
    model = Qwen3TTSWeights(cfg)
    gen = torch.Generator().manual_seed(seed)
    _randomise(model.talker, gen, std)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_checkpoint_files(folder: Path, config: dict[str, Any]) -> None:
    """Everything but the weights and the speech tokenizer: configs and text tokenizer."""
    from .vocab import write_text_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2), encoding="utf-8")
    write_text_tokenizer(folder)


def write_tiny_checkpoint(
    folder: str | Path, size: str = "tiny", seed: int = 0, variant: str = "base"
) -> Path:
    """Write a random checkpoint of ``size`` and ``variant`` to ``folder`` and return the folder."""
    from .random_speech_tokenizer import write_random_speech_tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose {', '.join(VARIANTS)}")
    folder = Path(folder)
    config = _config(size, variant)
    tiny = size.startswith("tiny")
    write_checkpoint_files(folder, config)
    # Tiny models get a larger weight scale so logits have clear winners (stable greedy parity).
    write_weights(folder, config, seed, torch.float32 if tiny else torch.bfloat16, 0.2 if tiny else 0.02)
    write_random_speech_tokenizer(folder / "speech_tokenizer", size="tiny" if tiny else "real", seed=seed)
    logger.warning("wrote a RANDOM %s %s checkpoint to %s: it makes noise, not speech", size, variant, folder)
    return folder
