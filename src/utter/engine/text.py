"""Text side of the prompt: the checkpoint's own tokenizer and the chat framing the model expects."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

logger = logging.getLogger(__name__)

# The official package frames texts like a chat turn; the ids are sliced by position below.
_TARGET = "<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"
_REFERENCE = "<|im_start|>assistant\n{text}<|im_end|>\n"
_INSTRUCT = "<|im_start|>user\n{text}<|im_end|>\n"
ROLE_TOKENS = 3  # "<|im_start|>", "assistant", "\n"
TARGET_TAIL = 5  # "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"
REFERENCE_TAIL = 2  # "<|im_end|>", "\n"


# The Qwen2 pre-tokenizer split (transformers' Qwen2 converter uses the same pattern).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")


class TextTokenizer:
    """The checkpoint's Qwen2 byte-level BPE tokenizer, built with ``tokenizers`` directly.

    The released checkpoints ship ``vocab.json``, ``merges.txt`` and a ``tokenizer_config.json``
    (no ``tokenizer.json``). Loading them through transformers cost 5-8 s of a cold start here
    (importing transformers, then converting the slow files); building the same fast tokenizer
    from the files takes under half a second, and ``tests/test_vocab.py`` checks that it is
    transformers' own, to the last field, with the same ids. Other tokenizer classes load
    through transformers' ``AutoTokenizer``.

    The Qwen2 pre-tokenizer is kept on purpose: transformers 4.57.3 treats any local folder whose
    config.json says ``transformers_version: 4.57.3`` (the released checkpoints do) as a
    Mistral tokenizer unless told ``fix_mistral_regex=False``; the official package asks for that
    "fix" and so splits words such as "iPhone" differently when loading from a folder than when
    loading by hub id. We follow the hub-id behaviour.
    """

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        slow_files = all((folder / name).is_file() for name in ("vocab.json", "merges.txt"))
        qwen2 = config.get("tokenizer_class") in QWEN2_CLASSES
        self._backend: Tokenizer | None = None
        if qwen2 and slow_files and not (folder / "tokenizer.json").exists():
            try:
                self._backend = qwen2_tokenizer(folder, config)
            except ValueError as exc:
                logger.warning("%s; loading it through transformers instead", exc)
        if self._backend is None:
            from ..transformers_lock import TRANSFORMERS_IMPORT

            with TRANSFORMERS_IMPORT:
                from transformers import AutoTokenizer

            logger.info("loading the %s tokenizer through transformers", config.get("tokenizer_class"))
            auto = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, fix_mistral_regex=False)
            self._backend = auto.backend_tokenizer

    def _ids(self, text: str) -> list[int]:
        return self._backend.encode(text).ids

    def target_ids(self, text: str) -> list[int]:
        """Ids of the framed target text: 3 role tokens, the text, 5 tail tokens."""
        ids = self._ids(_TARGET.format(text=text))
        if len(ids) <= ROLE_TOKENS + TARGET_TAIL:
            raise ValueError("text is empty")
        return ids

    def text_ids(self, text: str) -> list[int]:
        """Ids of ``text`` as they stand inside the framed target (between role and tail)."""
        return self._ids(_TARGET.format(text=text))[ROLE_TOKENS:-TARGET_TAIL]

    def pre_tokenize(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """The tokenizer's pre-tokens of ``text`` (normalised as the tokenizer does) with their
        character spans: no token ever crosses a pre-token boundary (see ``textfeed.py``)."""
        backend = self._backend
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        return backend.pre_tokenizer.pre_tokenize_str(text)

    def normalize(self, text: str) -> str:
        backend = self._backend
        return backend.normalizer.normalize_str(text) if backend.normalizer is not None else text

    def instruct_ids(self, text: str) -> list[int]:
        """Ids of an instruction as its own framed user turn (all of them go in the prompt)."""
        return self._ids(_INSTRUCT.format(text=text))

    def reference_ids(self, text: str) -> list[int]:
        """Ids of the reference transcript without its framing."""
        ids = self._ids(_REFERENCE.format(text=text))
        return ids[ROLE_TOKENS:-REFERENCE_TAIL]

    @staticmethod
    def text_token_count(target_ids: list[int]) -> int:
        """How many tokens of a framed target are the text itself."""
        return len(target_ids) - ROLE_TOKENS - TARGET_TAIL


def invalid_unicode_at(text: str) -> int | None:
    """Where ``text`` stops being Unicode the tokenizer can take (a lone surrogate: bytes that
    were not UTF-8, passed on by Python's command line or sent as JSON's ``"\\ud800"``), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def qwen2_tokenizer(folder: Path, config: dict[str, Any]) -> Tokenizer:
    """The fast tokenizer transformers converts a Qwen2 folder to (NFC, the Qwen2 split, byte-level
    BPE with no unknown token, the config's added tokens at their ids), built from the files."""
    bpe = models.BPE.from_file(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    added = sorted((int(i), t) for i, t in config.get("added_tokens_decoder", {}).items())
    options = ("single_word", "lstrip", "rstrip", "normalized", "special")
    tok.add_tokens(
        [AddedToken(t["content"], **{k: bool(t.get(k, False)) for k in options}) for _, t in added]
    )
    wrong = [(i, t["content"]) for i, t in added if tok.token_to_id(t["content"]) != i]
    if wrong:  # added tokens take the next free ids: a config with gaps cannot be built this way
        raise ValueError(
            f"{folder}: added tokens would get other ids than the config gives them: {wrong[:3]}"
        )
    return tok
