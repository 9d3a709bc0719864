"""Voice prompts: what a reference recording contributes to every generation in its voice.

A prompt holds the reference's speaker embedding and, in ICL mode, its transcript and speech
codes. It is computed once per voice and saved, so a stored voice is never re-encoded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ..audio.io import write_file

FORMAT_VERSION = 1


@dataclass(frozen=True)
class VoicePrompt:
    """speaker_embedding: [D] float32; ref_codes: [T, num_codebooks] int64 (ICL mode only)."""

    speaker_embedding: torch.Tensor
    ref_codes: torch.Tensor | None = None
    ref_text: str | None = None

    @property
    def x_vector_only(self) -> bool:
        """True when only the speaker embedding is used (no transcript): lower quality."""
        return self.ref_codes is None

    @cached_property
    def key(self) -> str:
        """Content hash: equal prompts share cached prefills, whatever object holds them."""
        h = hashlib.sha1(self.speaker_embedding.detach().float().cpu().numpy().tobytes())
        if self.ref_codes is not None:
            h.update(self.ref_codes.detach().to(torch.int64).cpu().numpy().tobytes())
            h.update((self.ref_text or "").encode("utf-8"))
        return h.hexdigest()

    @property
    def ref_frames(self) -> int:
        return 0 if self.ref_codes is None else int(self.ref_codes.shape[0])

    def __post_init__(self) -> None:
        if self.speaker_embedding.dim() != 1:
            raise ValueError("speaker_embedding must be a 1-D tensor")
        if (self.ref_codes is None) != (self.ref_text is None):
            raise ValueError("ref_codes and ref_text go together (ICL mode) or are both absent")
        if self.ref_codes is not None and self.ref_codes.dim() != 2:
            raise ValueError("ref_codes must be [frames, codebooks]")

    def save(self, path: str | Path) -> None:
        """Write the prompt to one safetensors file, atomically."""
        path = Path(path)
        tensors = {"speaker_embedding": self.speaker_embedding.detach().float().cpu().contiguous()}
        if self.ref_codes is not None:
            tensors["ref_codes"] = self.ref_codes.detach().to(torch.int64).cpu().contiguous()
        meta = {
            "format": "utter-voice",
            "version": str(FORMAT_VERSION),
            "ref_text": json.dumps(self.ref_text),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        # Serialised here and written by write_file: a full disk raises an OSError (ENOSPC) that
        # callers can tell apart, not safetensors' own error with the cause in its text.
        write_file(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> VoicePrompt:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"voice prompt file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise ValueError(f"{path} is not a voice prompt file: {exc}") from exc
        if meta.get("format") != "utter-voice":
            raise ValueError(f"{path} is not a voice prompt file")
        return cls(
            speaker_embedding=tensors["speaker_embedding"],
            ref_codes=tensors.get("ref_codes"),
            ref_text=json.loads(meta.get("ref_text", "null")),
        )
