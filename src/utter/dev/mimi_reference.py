"""transformers' Mimi as the official package builds its speech encoder: the reference our own
encoder (``utter.engine.model.codec_encoder``) is tested against, and what the random-checkpoint
writer initialises encoders with (so the files it writes stay the same for a seed).

Development and tests only: serving never imports transformers for encoding.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import MimiConfig, MimiModel


class MimiReference(MimiModel):
    """``MimiModel`` without its decoder half, as ``Qwen3TTSTokenizerV2Encoder`` (same names)."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__(config)
        # Dropped exactly as in the official encoder: the checkpoint has no weights for them.
        self.upsample = None
        self.decoder_transformer = None
        self.decoder = None

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> MimiReference:
        """Build (with Mimi's own random init, from the global generator) from ``encoder_config``."""
        return cls(MimiConfig(**data))

    @torch.inference_mode()
    def encode_codes(self, wav: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """wav [B, S] -> codes [B, num_quantizers, frames], through Mimi's own encode path."""
        codes = super().encode(input_values=wav.unsqueeze(1), return_dict=True).audio_codes
        return codes[:, :num_quantizers]
