"""A tiny random Whisper checkpoint in the hub's layout, for tests of transcription offline.

No hub is reachable where the tests run, so this writes what ``openai/whisper-*`` holds
(config.json, model.safetensors, generation_config.json, the feature extractor and a byte-level
BPE tokenizer with Whisper's special tokens) at toy sizes, and the real loading code
(:mod:`utter.asr.whisper`) reads it exactly as it reads a downloaded one.

The vocabulary is the 256 byte tokens (no merges) followed by Whisper's specials in their usual
order. ``generation_config.json`` suppresses every byte but ASCII letters and spaces, every
special token but the end of text, and the end at the first step, so the random model always
writes a non-empty line of letters: enough for a test to see text travel from the model to a
form field or a stored voice. Its weights come from a generator of its own (deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

# Language codes written into the tiny vocabulary: Qwen3-TTS's ten and two it does not speak
# (a detected language outside ours must map to "Auto").
TINY_LANGUAGES = ("en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "it", "nl", "sv")


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte (the byte-level BPE alphabet), in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tiny_whisper(folder: str | Path, seed: int = 0) -> Path:
    """Write a random Whisper checkpoint (a few MB) to ``folder`` and return it."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")

    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    specials += [f"<|{code}|>" for code in TINY_LANGUAGES]
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>"]
    specials += ["<|notimestamps|>"]
    ids = {token: 256 + i for i, token in enumerate(specials)}
    tokenizer = WhisperTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    assert [tokenizer.convert_tokens_to_ids(t) for t in specials] == [ids[t] for t in specials]
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)

    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(symbols) + len(specials),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        init_std=0.3,  # larger than trained models: the random text then depends on the audio
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    model = WhisperForConditionalGeneration(config).eval()
    # Weights from a generator of our own: other threads of a test session may draw from torch's
    # global one at any moment, and a different model could write different (or no) text.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:  # keep the encoder's sinusoids
                continue
            if name.endswith(".bias"):
                p.zero_()
            elif "layer_norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * config.init_std)
    letters = {ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ "}
    space = symbols[ord(" ")]
    generation = model.generation_config
    generation.decoder_start_token_id = sot
    generation.eos_token_id = generation.pad_token_id = eot
    generation.is_multilingual = True
    generation.lang_to_id = {f"<|{code}|>": ids[f"<|{code}|>"] for code in TINY_LANGUAGES}
    generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    generation.no_timestamps_token_id = ids["<|notimestamps|>"]
    # Only letters and spaces, then the end: never a special token (those decode to nothing).
    generation.suppress_tokens = [b for b in range(256) if b not in letters] + [
        i for i in range(257, config.vocab_size)
    ]
    generation.begin_suppress_tokens = [symbols.index(space), eot]
    generation.max_length = 24
    generation.forced_decoder_ids = None
    generation._from_model_config = False  # else transformers rebuilds it from config.json on load
    model.save_pretrained(folder)
    return folder
