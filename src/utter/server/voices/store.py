"""Stored voices: a folder per voice under the data dir, so they survive restarts.

``<voices_dir>/<id>/`` holds ``meta.json`` (name, language, transcript, which model made it),
``voice.safetensors`` (the computed prompt: never re-encoded) and ``reference.wav`` (24 kHz
mono, kept so a voice can be rebuilt for another model). A voice folder is written under a
temporary name and renamed into place, so a crash never leaves half a voice behind, and a
listing never shows one.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import threading
import time
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...audio import SAMPLE_RATE, write_wav
from ...engine.voice import VoicePrompt

logger = logging.getLogger(__name__)

_ID = re.compile(r"^voice_[0-9a-f]{16}$")
_PROMPT_CACHE = 64  # loaded prompts kept in memory (a few KB each in x-vector mode, ~100 KB in ICL)


class VoiceLibrary(Protocol):
    """Where the service's stored voices live: :class:`VoiceStore` (files) when it runs alone;
    the studio's library (``studio/voice_library.py``) when the studio serves it, so both see
    one set of voices. Voices are JSON-able dicts in the shape of ``schemas.VoiceInfo``."""

    def list(self) -> list[dict[str, Any]]: ...
    def get(self, voice_id: str) -> dict[str, Any]: ...
    def resolve(self, voice: str) -> dict[str, Any]: ...
    def prompt(self, voice_id: str) -> VoicePrompt: ...
    def create(
        self, name: str, language: str, prompt: VoicePrompt, reference: np.ndarray, model: str
    ) -> dict[str, Any]: ...
    def delete(self, voice_id: str) -> None: ...


def fold(text: str | None) -> str:
    """How names (and the studio's searches) compare: NFKC-normalised, then case-folded in any
    script ("Élodie" = "ÉLODIE", "Straße" = "STRASSE")."""
    return unicodedata.normalize("NFKC", text or "").casefold()


class VoiceNameTaken(ValueError):
    """Another voice already has this name (compared folded): names must tell voices apart."""

    def __init__(self, name: str) -> None:
        super().__init__(f"A voice named {name!r} already exists; choose another name.")
        self.name = name


class VoiceNotFound(KeyError):
    def __init__(self, voice: str) -> None:
        super().__init__(voice)
        self.voice = voice


class VoiceStore:
    """File-based store of voice prompts; safe to use from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._prompts: OrderedDict[str, VoicePrompt] = OrderedDict()
        self._sweep_partial()

    def _sweep_partial(self) -> None:
        """Remove folders of voices whose creation was interrupted (temporary names)."""
        if not self.root.is_dir():
            return
        for path in self.root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)

    def create(
        self,
        name: str,
        language: str,
        prompt: VoicePrompt,
        reference: np.ndarray,
        model: str,
    ) -> dict[str, Any]:
        with self._lock:
            if any(fold(v.get("name")) == fold(name) for v in self.list()):
                raise VoiceNameTaken(name)
        voice_id = f"voice_{secrets.token_hex(8)}"
        meta = {
            "id": voice_id,
            "name": name,
            "object": "voice",
            "language": language,
            "ref_text": prompt.ref_text,
            "x_vector_only": prompt.x_vector_only,
            "reference_seconds": round(len(reference) / SAMPLE_RATE, 3),
            "model": model,
            "created_at": time.time(),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{voice_id}"
        tmp.mkdir()
        try:
            prompt.save(tmp / "voice.safetensors")
            write_wav(tmp / "reference.wav", reference, SAMPLE_RATE)
            (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
            tmp.rename(self.root / voice_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("stored voice %s (%r)", voice_id, name)
        return meta

    def _folder(self, voice_id: str) -> Path:
        if not _ID.match(voice_id):
            raise VoiceNotFound(voice_id)
        folder = self.root / voice_id
        if not (folder / "meta.json").is_file():
            raise VoiceNotFound(voice_id)
        return folder

    def get(self, voice_id: str) -> dict[str, Any]:
        return json.loads((self._folder(voice_id) / "meta.json").read_text(encoding="utf-8"))

    def list(self) -> list[dict[str, Any]]:
        """All voices, oldest first."""
        if not self.root.is_dir():
            return []
        voices = []
        for folder in self.root.iterdir():
            if _ID.match(folder.name) and (folder / "meta.json").is_file():
                try:
                    voices.append(json.loads((folder / "meta.json").read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    logger.warning("skipping unreadable voice %s", folder)
        return sorted(voices, key=lambda v: (v.get("created_at", 0), v["id"]))

    def resolve(self, voice: str) -> dict[str, Any]:
        """A voice by id, or by name when exactly one voice has that name."""
        try:
            return self.get(voice)
        except VoiceNotFound:
            named = [v for v in self.list() if fold(v.get("name")) == fold(voice)]
            if len(named) == 1:
                return named[0]
            raise

    def prompt(self, voice_id: str) -> VoicePrompt:
        with self._lock:
            if voice_id in self._prompts:
                self._prompts.move_to_end(voice_id)
                return self._prompts[voice_id]
        prompt = VoicePrompt.load(self._folder(voice_id) / "voice.safetensors")
        with self._lock:
            self._prompts[voice_id] = prompt
            while len(self._prompts) > _PROMPT_CACHE:
                self._prompts.popitem(last=False)
        return prompt

    def delete(self, voice_id: str) -> None:
        folder = self._folder(voice_id)
        with self._lock:
            self._prompts.pop(voice_id, None)
        # Rename first so the voice disappears at once, even if removing the files is slow.
        trash = self.root / f".tmp-deleted-{voice_id}"
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted voice %s", voice_id)
