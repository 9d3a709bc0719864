"""One voice library for the studio and the TTS service it serves under ``/tts``.

A voice cloned on the Clone page is a voice of the OpenAI-compatible API on the same server
(``/tts/v1/audio/voices`` lists it, ``/tts/v1/audio/speech`` speaks with it), and a voice made
through ``POST /tts/v1/voices`` is a studio voice (Voices page, Generate): one store, the
studio's database and data folder, one id per voice. :class:`StudioVoiceLibrary` is what the
mounted service uses instead of its own file store (``server.voices.VoiceLibrary``).

Voices that an earlier version stored in the service's own folder (``<data>/tts/voices``) are
taken into the library once, at start-up; their old ids keep working (``imported.json`` maps
them), so API clients that kept an id lose nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..audio import SAMPLE_RATE
from ..server.runtime import public_text
from ..server.voices.store import VoiceNameTaken, VoiceNotFound, VoiceStore, fold
from .models import Generation, Task, Voice, new_id
from .provider import VoiceSource
from .schemas import ACTIVE

if TYPE_CHECKING:
    from ..engine.voice import VoicePrompt
    from .deps import Studio
    from .provider import LocalProvider  # noqa: F401 - the type of self.provider

logger = logging.getLogger(__name__)

IMPORTED = "imported.json"  # in the service's old voice folder: {old id: studio id}


def remove_voice(studio: Studio, voice_id: str) -> bool:
    """Delete a voice and its files (False when there is none). Its unfinished jobs are
    cancelled first (a job that then trips over the vanished voice ends cancelled, not failed);
    finished audio is kept, its generations forget the voice."""
    with studio.db.sessions() as s:
        voice = s.get(Voice, voice_id)
        if voice is None:
            return False
        active = s.scalars(
            select(Task.id).join(Generation).where(Generation.voice_id == voice_id, Task.status.in_(ACTIVE))
        ).all()
    for task_id in active:
        studio.queue.request_cancel(task_id, "the voice was deleted")
        studio.runner.cancel_local(task_id)
    with studio.db.sessions.begin() as s:
        voice = s.get(Voice, voice_id)
        if voice is not None:
            s.delete(voice)
        s.execute(update(Generation).where(Generation.voice_id == voice_id).values(voice_id=None))
    studio.storage.delete_voice(voice_id)
    return True


def name_taken(session: Session, name: str, except_id: str | None = None) -> bool:
    """Whether another voice has ``name``, compared folded ("anna" = "ANNA" = "Anna")."""
    query = select(Voice.id).where(Voice.name_key == fold(name))
    if except_id is not None:
        query = query.where(Voice.id != except_id)
    return session.scalar(query.limit(1)) is not None


class StudioVoiceLibrary:
    """The studio's voices as the TTS service's voice library (see the module doc)."""

    def __init__(self, studio: Studio, provider: LocalProvider, legacy_dir: Path | None = None) -> None:
        self.studio = studio
        self.provider = provider
        self.legacy_dir = legacy_dir
        self._aliases: dict[str, str] = {}
        if legacy_dir is not None:
            self._aliases = self._import(legacy_dir)

    # ------------------------------------------------------------------ reads
    def _info(self, voice: Voice) -> dict[str, Any]:
        return {
            "id": voice.id,
            "name": voice.name,
            "object": "voice",
            "language": voice.language,
            "ref_text": voice.reference_transcript,
            "x_vector_only": voice.reference_transcript is None,
            "reference_seconds": voice.reference_seconds,
            "model": public_text(self.provider.holder.model) or "",
            "created_at": voice.created_at.timestamp(),
        }

    def list(self) -> list[dict[str, Any]]:
        """All voices, oldest first."""
        with self.studio.db.sessions() as s:
            rows = s.scalars(select(Voice).order_by(Voice.created_at, Voice.id)).all()
            return [self._info(v) for v in rows]

    def get(self, voice_id: str) -> dict[str, Any]:
        voice_id = self._aliases.get(voice_id, voice_id)
        with self.studio.db.sessions() as s:
            voice = s.get(Voice, voice_id) if len(voice_id) <= 32 else None
            if voice is None:
                raise VoiceNotFound(voice_id)
            return self._info(voice)

    def resolve(self, voice: str) -> dict[str, Any]:
        """A voice by id (an imported voice's old id too), or by name when exactly one has it."""
        try:
            return self.get(voice)
        except VoiceNotFound:
            with self.studio.db.sessions() as s:
                named = s.scalars(select(Voice).where(Voice.name_key == fold(voice))).all()
                if len(named) == 1:
                    return self._info(named[0])
            raise

    def prompt(self, voice_id: str) -> VoicePrompt:
        """The voice's prompt for the loaded model, made and cached as for the studio's jobs."""
        meta = self.get(voice_id)
        with self.studio.db.sessions() as s:
            audio = self.studio.storage.resolve(s.get(Voice, meta["id"]).audio_path)
        return self.provider.prompt_for(VoiceSource(meta["id"], audio, meta["ref_text"]))

    # ----------------------------------------------------------------- writes
    def create(
        self, name: str, language: str, prompt: VoicePrompt, reference: np.ndarray, model: str
    ) -> dict[str, Any]:
        """Store a voice made through the API: its recording, its prompt for this model, its row."""
        with self.studio.db.sessions() as s:
            if name_taken(s, name):
                raise VoiceNameTaken(name)
        voice_id = new_id()
        storage = self.studio.storage
        try:
            path = storage.save_voice_audio(voice_id, reference)
            if self.provider.holder.engine is not None:
                prompt.save(storage.voice_prompt(voice_id, self.provider.model_key()))
            with self.studio.db.sessions.begin() as s:
                s.add(
                    Voice(
                        id=voice_id,
                        name=name,
                        language=language,
                        reference_transcript=None if prompt.x_vector_only else prompt.ref_text,
                        reference_seconds=round(len(reference) / SAMPLE_RATE, 3),
                        audio_path=storage.relative(path),
                    )
                )
        except BaseException:
            storage.delete_voice(voice_id)
            raise
        logger.info("stored voice %s (%r) through the API", voice_id, name)
        return self.get(voice_id)

    def delete(self, voice_id: str) -> None:
        voice_id = self._aliases.get(voice_id, voice_id)
        if len(voice_id) > 32 or not remove_voice(self.studio, voice_id):
            raise VoiceNotFound(voice_id)

    # ---------------------------------------------------------------- import
    def _import(self, folder: Path) -> dict[str, str]:
        """Take the voices of the service's old file store into the library (once each)."""
        mapping_file = folder / IMPORTED
        try:
            aliases: dict[str, str] = json.loads(mapping_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            aliases = {}
        old = VoiceStore(folder)
        for meta in old.list():
            if meta["id"] in aliases:
                continue
            reference = old.root / meta["id"] / "reference.wav"
            if not reference.is_file():
                continue
            voice_id = new_id()
            target = self.studio.storage.voice_audio(voice_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(reference, target)
            with self.studio.db.sessions.begin() as s:
                s.add(
                    Voice(
                        id=voice_id,
                        name=str(meta.get("name") or meta["id"])[:100],
                        language=str(meta.get("language") or "Auto"),
                        reference_transcript=None if meta.get("x_vector_only") else meta.get("ref_text"),
                        reference_seconds=float(meta.get("reference_seconds") or 0.0),
                        audio_path=self.studio.storage.relative(target),
                    )
                )
            aliases[meta["id"]] = voice_id
            logger.info(
                "took voice %s (%r) into the studio's library as %s", meta["id"], meta.get("name"), voice_id
            )
        if aliases:
            mapping_file.write_text(json.dumps(aliases, indent=1), encoding="utf-8")
        return aliases
