"""The 12 Hz speech tokenizer's encoder: 24 kHz waveform -> 16 codebooks of codes.

The official ``Qwen3TTSTokenizerV2Encoder`` *is* transformers' ``MimiModel`` with its decoder half
removed, and only the first ``encoder_valid_num_quantizers`` (16) of Mimi's 32 codebooks kept.
We do the same, so the checkpoint's ``encoder.*`` tensors load with ``strict=True`` once the
``encoder.`` prefix is stripped, and codes match the official ones bit for bit (same code runs).

Encoding is used once per reference voice, so it is not on the latency path; no need for our own
implementation of Mimi.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import MimiConfig, MimiModel


class CodecEncoder(MimiModel):
    """Mimi's encoder, transformer, downsampler and quantizer (no decoder weights).

    Subclasses ``MimiModel`` like the official encoder does, which keeps the parameter names of
    the checkpoint and reuses Mimi's own encode path.
    """

    def __init__(self, config: MimiConfig) -> None:
        super().__init__(config)
        # Dropped exactly as in the official encoder: the checkpoint has no weights for them.
        self.upsample = None
        self.decoder_transformer = None
        self.decoder = None

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> CodecEncoder:
        """Build (with whatever init the surrounding context gives) from ``encoder_config``."""
        return cls(MimiConfig(**data))

    @torch.inference_mode()
    def encode_codes(
        self,
        wav: torch.Tensor,
        num_samples: Sequence[int] | None,
        valid_quantizers: int,
        downsample_rate: int,
    ) -> list[torch.Tensor]:
        """Encode a right-padded batch the way the official ``Qwen3TTSTokenizerV2Model.encode`` does.

        wav: [B, S] float in the model's dtype; ``num_samples[b]`` is item b's real length (all
        of S when None). Returns one LongTensor [ceil(num_samples[b] / downsample_rate), Q] per item.

        Mimi is run on the whole padded batch without a padding mask (as the official code does),
        then each item's codes are cut to its own frame count.
        """
        if wav.dim() != 2:
            raise ValueError(f"expected wav [B, S], got shape {tuple(wav.shape)}")
        codes = super().encode(input_values=wav.unsqueeze(1), return_dict=True).audio_codes  # [B, 32, F]
        codes = codes[:, :valid_quantizers]  # [B, Q, F]
        lengths = [wav.shape[-1]] * wav.shape[0] if num_samples is None else list(num_samples)
        return [
            c[:, : math.ceil(n / downsample_rate)].transpose(0, 1)
            for c, n in zip(codes, lengths, strict=True)
        ]
