"""The models one server holds: its main model and extras (a CustomVoice, a VoiceDesign).

A studio that clones with a Base model and also speaks with preset speakers or designs voices
holds several models at once, each an :class:`EngineHolder` loading in the background. A
request reaches the right one by its ``model`` field (a served model's id, its folder name, or
a kind: ``base``, ``custom_voice``, ``voice_design``), by naming a preset speaker as its voice,
or else the main model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .http.errors import ApiError
from .runtime import EngineHolder

logger = logging.getLogger(__name__)

KINDS = {
    "base": "base",
    "custom_voice": "custom_voice",
    "customvoice": "custom_voice",
    "voice_design": "voice_design",
    "voicedesign": "voice_design",
}
KIND_MODEL = {
    "base": "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
    "custom_voice": "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",
    "voice_design": "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",
}


class ModelSet:
    def __init__(self, main: EngineHolder, extras: list[EngineHolder] | None = None) -> None:
        self.main = main
        self.extras = list(extras or [])

    @property
    def all(self) -> list[EngineHolder]:
        return [self.main, *self.extras]

    def start_extras(self) -> None:
        for holder in self.extras:
            holder.start()

    def stop_extras(self) -> None:
        for holder in self.extras:
            holder.stop()

    def named(self, name: str | None) -> EngineHolder | None:
        """The served model ``name`` means: its id or folder name (any case), or a kind."""
        key = (name or "").strip().lower()
        if not key:
            return None
        for holder in self.all:
            model = holder.model.strip().rstrip("/")
            if key in (model.lower(), Path(model).name.lower()):
                return holder
        kind = KINDS.get(key.replace("-", "_"))
        return self.of_kind(kind) if kind else None

    def of_kind(self, kind: str) -> EngineHolder | None:
        for holder in self.all:
            if holder.variant == kind:
                return holder
        return None

    def require_kind(self, kind: str, what: str) -> EngineHolder:
        holder = self.of_kind(kind)
        if holder is None:
            needed = KIND_MODEL[kind]
            raise ApiError(
                400,
                f"{what} needs a {needed.rsplit('-', 1)[-1]} model and this server has none; start it "
                f"with UTTER_EXTRA_MODELS={needed} (or --extra-models).",
            )
        return holder

    def speaker_of(self, voice: str | None) -> EngineHolder | None:
        """A loaded CustomVoice model with a preset speaker named ``voice`` (any case)."""
        key = (voice or "").strip().lower()
        for holder in self.all:
            engine = holder.engine
            if key and engine is not None and engine.variant == "custom_voice":
                if key in engine.config.talker.speakers:
                    return holder
        return None

    def presets(self) -> list[dict[str, Any]]:
        """The preset speakers of the loaded CustomVoice models, as voice listings."""
        out = []
        for holder in self.all:
            engine = holder.engine
            if engine is None or engine.variant != "custom_voice":
                continue
            for name in engine.speakers:
                out.append(
                    {
                        "id": name,
                        "name": name,
                        "object": "voice",
                        "category": "premade",
                        "language": "Auto",
                        "ref_text": None,
                        "x_vector_only": False,
                        "reference_seconds": 0.0,
                        "model": holder.model,
                        "created_at": 0.0,
                        "instructions": engine.config.supports_instruct,
                    }
                )
        return out

    def status(self) -> list[dict[str, Any]]:
        return [holder.status() for holder in self.all]
