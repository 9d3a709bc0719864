"""Files under the data directory: reference recordings, voice prompts and generated audio.

Layout::

    <data_dir>/
      utter.db                                 SQLite database (unless --database-url)
      voices/<voice_id>/reference.wav          the uploaded recording, decoded to 24 kHz mono
      voices/<voice_id>/prompt-<model>.safetensors   the computed voice (a cache per model)
      generations/<generation_id>.wav          finished audio
      generations/<generation_id>.parts/       chunk-0000.wav ... while a job runs (lets it resume)

No path is ever built from request text: ids are 32 hex characters (checked here), and every
path is resolved and required to stay inside the data directory.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, load_audio, write_wav

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{32}$")


class UnsafePathError(ValueError):
    """A path or id that would leave the data directory or is not one of ours."""


def check_id(value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise UnsafePathError(f"not a valid id: {value!r}")
    return value


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        for sub in ("voices", "generations"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths
    def resolve(self, relative: str) -> Path:
        """Absolute path of a stored relative path; refuses anything that leaves the data directory."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise UnsafePathError(f"path outside the data directory: {relative!r}")
        return path

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def voice_dir(self, voice_id: str) -> Path:
        return self.root / "voices" / check_id(voice_id)

    def voice_audio(self, voice_id: str) -> Path:
        return self.voice_dir(voice_id) / "reference.wav"

    def voice_prompt(self, voice_id: str, model_key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{1,64}", model_key):
            raise UnsafePathError(f"not a valid model key: {model_key!r}")
        return self.voice_dir(voice_id) / f"prompt-{model_key}.safetensors"

    def generation_audio(self, generation_id: str) -> Path:
        return self.root / "generations" / f"{check_id(generation_id)}.wav"

    def parts_dir(self, generation_id: str) -> Path:
        return self.root / "generations" / f"{check_id(generation_id)}.parts"

    def chunk_audio(self, generation_id: str, index: int) -> Path:
        return self.parts_dir(generation_id) / f"chunk-{int(index):04d}.wav"

    def running_chunk_audio(self, generation_id: str, index: int) -> Path:
        """What a running chunk has made so far (rewritten every few seconds of audio), so a job
        that stops keeps its audio up to a few seconds before the stop."""
        return self.parts_dir(generation_id) / f"chunk-{int(index):04d}.partial.wav"

    # ------------------------------------------------------------------ writes
    def save_voice_audio(self, voice_id: str, audio: np.ndarray) -> Path:
        path = self.voice_audio(voice_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_wav(path, audio, SAMPLE_RATE)

    def save_chunk(self, generation_id: str, index: int, audio: np.ndarray) -> Path:
        path = self.chunk_audio(generation_id, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = write_wav(path, audio, SAMPLE_RATE)
        self.running_chunk_audio(generation_id, index).unlink(missing_ok=True)
        return written

    def save_running_chunk(self, generation_id: str, index: int, audio: np.ndarray) -> Path:
        path = self.running_chunk_audio(generation_id, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_wav(path, audio, SAMPLE_RATE)

    def made_so_far(self, generation_id: str, chunks: int) -> list[np.ndarray]:
        """The audio of a job that stopped: its finished chunks in order, then what the first
        unfinished one had made (empty when nothing was made)."""
        parts: list[np.ndarray] = []
        for index in range(chunks):
            audio = self.load_chunk(generation_id, index)
            if audio is None:
                running = self.running_chunk_audio(generation_id, index)
                if running.is_file():
                    try:
                        parts.append(load_audio(running, target_sr=SAMPLE_RATE)[0])
                    except ValueError:
                        logger.warning("ignoring unreadable partial chunk %s", running)
                break
            parts.append(audio)
        return [p for p in parts if len(p)]

    def load_chunk(self, generation_id: str, index: int) -> np.ndarray | None:
        """A finished chunk from an earlier run of the job, or None when there is none (or it is bad)."""
        path = self.chunk_audio(generation_id, index)
        if not path.is_file():
            return None
        try:
            return load_audio(path, target_sr=SAMPLE_RATE)[0]
        except ValueError:
            logger.warning("ignoring unreadable chunk %s", path)
            return None

    def save_generation(self, generation_id: str, audio: np.ndarray) -> Path:
        return write_wav(self.generation_audio(generation_id), audio, SAMPLE_RATE)

    # ------------------------------------------------------------------ deletes
    def delete_voice(self, voice_id: str) -> None:
        shutil.rmtree(self.voice_dir(voice_id), ignore_errors=True)

    def delete_voice_prompts(self, voice_id: str) -> None:
        """Forget computed voices (after the transcript changed) so they are computed again."""
        for path in self.voice_dir(voice_id).glob("prompt-*.safetensors"):
            path.unlink(missing_ok=True)

    def delete_parts(self, generation_id: str) -> None:
        shutil.rmtree(self.parts_dir(generation_id), ignore_errors=True)

    def delete_generation(self, generation_id: str) -> None:
        self.generation_audio(generation_id).unlink(missing_ok=True)
        self.delete_parts(generation_id)
