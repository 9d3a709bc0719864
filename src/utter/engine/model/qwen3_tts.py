"""The module tree of ``model.safetensors``: talker and speaker encoder under their official names."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .speaker_encoder import SpeakerEncoder, SpeakerEncoderConfig
from .talker import Talker


class Qwen3TTSWeights(nn.Module):
    """The parts of a 12 Hz checkpoint used for speech: the talker, and on Base models (the ones
    that clone) the speaker encoder; CustomVoice and VoiceDesign checkpoints have none."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.talker = Talker(cfg.talker)
        self.speaker_encoder = (
            SpeakerEncoder(SpeakerEncoderConfig.from_dict(cfg.speaker_encoder))
            if cfg.variant == "base"
            else None
        )
