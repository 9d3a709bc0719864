"""Transcribe a reference recording with Whisper, so a voice can be cloned without typing.

Qwen3-TTS clones best with the exact words of the reference ("ICL" mode); asking people to type
them is the main friction of cloning. Whisper (via ``transformers``, already a dependency) covers
all ten of the model's languages with small multilingual checkpoints (``openai/whisper-base``,
``-small``, ``-large-v3-turbo``), runs on CPU or GPU, and detects the spoken language, which
becomes the voice's default language.

References are at most a minute long, so audio is cut into 30 s windows (Whisper's input size)
and transcribed one after another in the language detected from the first window; greedy
decoding keeps a transcript reproducible.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.io import resample
from ..engine.checkpoint import (
    CheckpointError,
    _cached_snapshot,
    _download,
    _local_folder,
    looks_like_hub_id,
)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what every Whisper feature extractor expects
WINDOW_SECONDS = 30
KNOWN_ASR_MODELS = (
    "openai/whisper-tiny",
    "openai/whisper-base",
    "openai/whisper-small",
    "openai/whisper-medium",
    "openai/whisper-large-v3",
    "openai/whisper-large-v3-turbo",
)
# Only the files transformers reads: Whisper repos also carry PyTorch, TensorFlow and Flax weights.
ALLOW_PATTERNS = ["*.json", "*.txt", "model.safetensors", "model-*.safetensors"]
REQUIRED_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json")

# Whisper's codes for the languages Qwen3-TTS speaks, and the names the engine uses for them.
LANGUAGE_NAMES = {
    "zh": "Chinese",
    "en": "English",
    "ja": "Japanese",
    "ko": "Korean",
    "de": "German",
    "fr": "French",
    "ru": "Russian",
    "pt": "Portuguese",
    "es": "Spanish",
    "it": "Italian",
}
_CODES = {name.lower(): code for code, name in LANGUAGE_NAMES.items()}


class AsrError(RuntimeError):
    """A transcription model that cannot be used; the message is written for the end user."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language_code: str  # Whisper's code of the detected (or given) language: "en", "nl" ...
    seconds: float

    @property
    def language(self) -> str:
        """The engine's name for the language ("English"), or "Auto" for one it does not speak."""
        return LANGUAGE_NAMES.get(self.language_code, "Auto")


def whisper_code(language: str | None) -> str | None:
    """Whisper's code for a language given by name ("English") or code ("en"); None for Auto."""
    key = (language or "").strip().lower()
    if key in ("", "auto"):
        return None
    if key in _CODES:
        return _CODES[key]
    if key in LANGUAGE_NAMES or (len(key) <= 3 and key.isalpha()):
        return key
    raise ValueError(f"Unknown language {language!r} for transcription.")


def _check_folder(folder: Path, model: str) -> Path:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    has_weights = any(folder.glob("model*.safetensors")) or (folder / "pytorch_model.bin").is_file()
    if missing or not has_weights:
        what = ", ".join(missing + ([] if has_weights else ["model.safetensors"]))
        raise AsrError(f"The transcription model {model!r} is incomplete: {what} missing in {folder}.")
    return folder


def resolve_asr_model(
    model: str, cache_dir: str | None = None, progress: Callable[[float], None] | None = None
) -> Path:
    """The local folder of a Whisper checkpoint: a folder as is, a hub id from the cache first,
    else downloaded (safetensors and settings only) with ``progress``; :class:`AsrError` when it
    cannot be had, saying how to get it."""
    model = model.strip()
    try:
        folder = _local_folder(model)
        if folder is not None:
            return _check_folder(folder, model)
        if not looks_like_hub_id(model):
            raise AsrError(f"There is no folder {model!r} and it is not a hub id like {KNOWN_ASR_MODELS[2]}.")
        cached = _cached_snapshot(model, cache_dir)
        if cached is not None:
            try:
                return _check_folder(cached, model)
            except AsrError:
                logger.info("the cached copy of %s is incomplete; downloading the rest", model)
        folder = _download(
            model, cache_dir, None, progress, known=KNOWN_ASR_MODELS, allow_patterns=ALLOW_PATTERNS
        )
        return _check_folder(folder, model)
    except CheckpointError as exc:
        message = str(exc).replace("`--model /path/to/folder`", "UTTER_ASR_MODEL=/path/to/folder")
        raise AsrError(f"Transcription is unavailable: {message}") from exc


def download_asr_model(model: str, target_dir: str | None = None) -> Path:
    """``utter download --asr MODEL [--dir DIR]``: fetch a Whisper checkpoint (the files
    transformers reads) into the cache, or into ``target_dir`` to copy to an offline machine."""
    if target_dir is None:
        return resolve_asr_model(model)
    if not looks_like_hub_id(model.strip()):
        raise AsrError(f"{model!r} is not a hub id (like {KNOWN_ASR_MODELS[2]}).")
    try:
        folder = _download(
            model.strip(), None, target_dir, None, known=KNOWN_ASR_MODELS, allow_patterns=ALLOW_PATTERNS
        )
    except CheckpointError as exc:
        raise AsrError(str(exc)) from exc
    return _check_folder(folder, model)


class Transcriber:
    """One loaded Whisper model; :meth:`transcribe` is safe to call from several threads
    (calls run one at a time: the model is small and the GPU or CPU is shared with TTS)."""

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.device = model.device
        self._lock = threading.Lock()
        generation = model.generation_config
        self._lang_ids: dict[int, str] = {
            token_id: token.strip("<|>")
            for token, token_id in (getattr(generation, "lang_to_id", None) or {}).items()
        }
        if not self._lang_ids:
            raise AsrError(
                f"{name} is not a multilingual Whisper model (its generation config has no languages)."
            )

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None, name: str | None = None) -> Transcriber:
        """Load a checkpoint folder on ``device`` (cuda when present; float16 there, float32 on CPU)."""
        from ..transformers_lock import TRANSFORMERS_IMPORT

        with TRANSFORMERS_IMPORT:  # the whole load: building the model imports more of it
            return cls._load(folder, device, name)

    @classmethod
    def _load(cls, folder: str | Path, device: str | None, name: str | None) -> Transcriber:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        # Whisper's generate() builds its own token-suppression processors and transformers then
        # warns on every call that they replace the generic ones: noise in a server's log.
        logging.getLogger("transformers.generation.utils").setLevel(logging.ERROR)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        try:
            processor = WhisperProcessor.from_pretrained(str(folder))
            model = WhisperForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
        except (OSError, ValueError) as exc:
            raise AsrError(f"Cannot load the transcription model from {folder}: {exc}") from exc
        model.to(device).eval()
        return cls(model, processor, name or Path(folder).name)

    @property
    def languages(self) -> list[str]:
        """Whisper codes this model can detect."""
        return sorted(self._lang_ids.values())

    def _features(self, wav16k: np.ndarray) -> tuple[Any, Any]:
        features = self.processor.feature_extractor(
            wav16k, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
        )
        return features.input_features.to(self.device, self.model.dtype), features.attention_mask.to(
            self.device
        )

    def detect_language(self, features: Any) -> str:
        ids = self.model.detect_language(features[:1])
        return self._lang_ids[int(ids[0])]

    def transcribe(self, wav: np.ndarray, sample_rate: int, language: str | None = None) -> Transcript:
        """The words spoken in ``wav`` (mono float), in ``language`` (name or code) or the detected one."""
        import torch

        audio = np.asarray(wav, dtype=np.float32).reshape(-1)
        if sample_rate != SAMPLE_RATE:
            audio = resample(audio, sample_rate, SAMPLE_RATE)
        seconds = len(audio) / SAMPLE_RATE
        step = WINDOW_SECONDS * SAMPLE_RATE
        windows = [audio[i : i + step] for i in range(0, max(len(audio), 1), step)] or [audio]
        code = whisper_code(language)
        if code is not None and f"<|{code}|>" not in self.model.generation_config.lang_to_id:
            raise ValueError(f"{self.name} cannot transcribe {language!r}.")
        texts: list[str] = []
        with self._lock, torch.inference_mode():
            for window in windows:
                features, mask = self._features(window)
                if code is None:
                    code = self.detect_language(features)
                ids = self.model.generate(
                    features, attention_mask=mask, language=code, task="transcribe", return_timestamps=False
                )
                texts.append(self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        text = " ".join(" ".join(t for t in texts if t).split())
        logger.info("transcribed %.1f s of audio (%s): %d characters", seconds, code, len(text))
        return Transcript(text=text, language_code=code or "en", seconds=seconds)
