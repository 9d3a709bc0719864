"""Model configuration read from a checkpoint's own ``config.json`` and ``generation_config.json``.

Every size, vocabulary and special id the engine uses comes from these files, so the same code
serves the 0.6B and 1.7B checkpoints and the tiny random ones the tests build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# The ten languages of the 12 Hz Base models, as shown to users; "Auto" lets the model decide.
LANGUAGES = (
    "Auto",
    "Chinese",
    "English",
    "Japanese",
    "Korean",
    "German",
    "French",
    "Russian",
    "Portuguese",
    "Spanish",
    "Italian",
)


def _pick(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class DecoderConfig:
    """A Qwen3-style decoder stack: the talker or the code predictor."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    attention_bias: bool = False
    hidden_act: str = "silu"
    num_code_groups: int = 16

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        data = dict(data)
        if data.get("head_dim") is None:
            data["head_dim"] = data["hidden_size"] // data["num_attention_heads"]
        scaling = data.get("rope_scaling") or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"unsupported rope_scaling type {rope_type!r}")
        if data.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported activation {data['hidden_act']!r}")
        if data.get("use_sliding_window"):
            raise ValueError("sliding-window talkers are not supported")
        return cls(**_pick(cls, data))


@dataclass(frozen=True)
class TalkerConfig:
    """The talker (codebook 0) plus the ids it needs to build prompts."""

    decoder: DecoderConfig
    code_predictor: DecoderConfig
    text_vocab_size: int
    text_hidden_size: int
    codec_pad_id: int
    codec_bos_id: int
    codec_eos_id: int
    codec_think_id: int
    codec_nothink_id: int
    codec_think_bos_id: int
    codec_think_eos_id: int
    language_ids: dict[str, int] = field(default_factory=dict)
    # CustomVoice checkpoints: preset speakers (lower-case name -> codec id) and the dialect
    # some of them speak Chinese in (name -> dialect language key).
    speakers: dict[str, int] = field(default_factory=dict)
    speaker_dialects: dict[str, str] = field(default_factory=dict)

    @property
    def num_code_groups(self) -> int:
        return self.decoder.num_code_groups

    @property
    def codebook_size(self) -> int:
        return self.code_predictor.vocab_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TalkerConfig:
        return cls(
            decoder=DecoderConfig.from_dict(data),
            code_predictor=DecoderConfig.from_dict(data["code_predictor_config"]),
            text_vocab_size=data["text_vocab_size"],
            text_hidden_size=data["text_hidden_size"],
            codec_pad_id=data["codec_pad_id"],
            codec_bos_id=data["codec_bos_id"],
            codec_eos_id=data["codec_eos_token_id"],
            codec_think_id=data["codec_think_id"],
            codec_nothink_id=data["codec_nothink_id"],
            codec_think_bos_id=data["codec_think_bos_id"],
            codec_think_eos_id=data["codec_think_eos_id"],
            language_ids={k.lower(): int(v) for k, v in (data.get("codec_language_id") or {}).items()},
            speakers={k.lower(): int(v) for k, v in (data.get("spk_id") or {}).items()},
            speaker_dialects={k.lower(): str(v) for k, v in (data.get("spk_is_dialect") or {}).items() if v},
        )


@dataclass(frozen=True)
class ModelConfig:
    """Everything in ``config.json`` that inference needs."""

    talker: TalkerConfig
    speaker_encoder: dict[str, Any]
    tts_model_type: str
    tokenizer_type: str
    tts_model_size: str | None
    im_start_id: int
    im_end_id: int
    tts_pad_id: int
    tts_bos_id: int
    tts_eos_id: int
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(
            talker=TalkerConfig.from_dict(data["talker_config"]),
            speaker_encoder=dict(data.get("speaker_encoder_config") or {}),
            tts_model_type=str(data.get("tts_model_type", "")),
            tokenizer_type=str(data.get("tokenizer_type", "")),
            tts_model_size=data.get("tts_model_size"),
            im_start_id=data.get("im_start_token_id", 151644),
            im_end_id=data.get("im_end_token_id", 151645),
            tts_pad_id=data["tts_pad_token_id"],
            tts_bos_id=data["tts_bos_token_id"],
            tts_eos_id=data["tts_eos_token_id"],
            raw=data,
        )

    @classmethod
    def load(cls, folder: Path) -> ModelConfig:
        with open(Path(folder) / "config.json", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @property
    def languages(self) -> list[str]:
        """User-facing language names this checkpoint knows, "Auto" first (dialects excluded)."""
        known = {name.lower(): name for name in LANGUAGES}
        names = ["Auto"]
        for key in self.talker.language_ids:
            if "dialect" in key:
                continue
            names.append(known.get(key, key.capitalize()))
        return names

    @property
    def variant(self) -> str:
        """base (clones voices), custom_voice (preset speakers) or voice_design (described voices)."""
        return self.tts_model_type

    @property
    def supports_instruct(self) -> bool:
        """Natural-language instructions: VoiceDesign, and CustomVoice except at 0.6B (the official
        package drops them there)."""
        return self.variant == "voice_design" or (
            self.variant == "custom_voice" and self.tts_model_size != "0b6"
        )

    @property
    def speaker_names(self) -> list[str]:
        """Preset speakers as the model card writes them ("Vivian", "Uncle_Fu", "Ono_Anna")."""
        return ["_".join(part.capitalize() for part in key.split("_")) for key in self.talker.speakers]

    def speaker_key(self, speaker: str) -> str:
        """The table key of a preset speaker (any case); ValueError naming the ones there are."""
        key = speaker.strip().lower()
        if key not in self.talker.speakers:
            names = ", ".join(self.speaker_names) or "none (this model clones voices instead)"
            raise ValueError(f"unknown speaker {speaker!r}; this model's speakers: {names}")
        return key

    def language_id(self, language: str) -> int | None:
        """Codec id of ``language`` (None for Auto); raises ValueError for an unknown one."""
        key = language.strip().lower()
        if key == "auto":
            return None
        if key not in self.talker.language_ids or "dialect" in key:
            raise ValueError(f"unknown language {language!r}; choose one of: {', '.join(self.languages)}")
        return self.talker.language_ids[key]


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults from ``generation_config.json`` (the official package's hard defaults otherwise)."""

    do_sample: bool = True
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 0.9
    repetition_penalty: float = 1.05
    subtalker_dosample: bool = True
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    subtalker_temperature: float = 0.9
    max_new_tokens: int = 2048

    @classmethod
    def load(cls, folder: Path) -> GenerationDefaults:
        path = Path(folder) / "generation_config.json"
        if not path.exists():
            return cls()
        with open(path, encoding="utf-8") as f:
            return cls(**_pick(cls, json.load(f)))
