"""Text side of the prompt: the checkpoint's own tokenizer and the chat framing the model expects."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# The official package frames texts like a chat turn; the ids are sliced by position below.
_TARGET = "<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"
_REFERENCE = "<|im_start|>assistant\n{text}<|im_end|>\n"
_INSTRUCT = "<|im_start|>user\n{text}<|im_end|>\n"
ROLE_TOKENS = 3  # "<|im_start|>", "assistant", "\n"
TARGET_TAIL = 5  # "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"
REFERENCE_TAIL = 2  # "<|im_end|>", "\n"


class TextTokenizer:
    """Wraps the checkpoint's Qwen2 tokenizer (loaded with transformers, offline).

    ``fix_mistral_regex=False`` keeps the Qwen2 pre-tokenizer the model was trained with.
    transformers 4.57.3 would otherwise treat any local folder whose config.json says
    ``transformers_version: 4.57.3`` (the released checkpoints do) as a Mistral tokenizer; the
    official package asks for that "fix" and so splits words such as "iPhone" differently when
    loading from a folder than when loading by hub id. We follow the hub-id behaviour.
    """

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, fix_mistral_regex=False)

    def _ids(self, text: str) -> list[int]:
        return list(self._tok(text)["input_ids"])

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
        backend = self._tok.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        return backend.pre_tokenizer.pre_tokenize_str(text)

    def normalize(self, text: str) -> str:
        backend = self._tok.backend_tokenizer
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
