"""Reference audio from a request (base64 or URL) -> a checked, cached :class:`VoicePrompt`.

Encoding a reference (speaker encoder + codec encoder) costs far more than a short generation,
and seed clients send the same reference with every /clone call, so prompts are cached by the
hash of (audio bytes, transcript, mode). Encoding runs in a worker thread, one at a time, so the
event loop keeps serving and a burst of uploads cannot pile up on the device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
from collections import OrderedDict

import numpy as np
from starlette.concurrency import run_in_threadpool

from ..audio import SAMPLE_RATE, TooLong, duration_seconds, load_audio
from ..engine.engine import Engine
from ..engine.voice import VoicePrompt
from .errors import ApiError
from .fetch import FetchError, fetch_audio
from .settings import ServerSettings

logger = logging.getLogger(__name__)


def decode_base64_audio(value: str, field: str = "ref_audio_base64") -> bytes:
    """Strict base64 (a ``data:audio/...;base64,`` prefix is allowed); ApiError 400 otherwise."""
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())  # line breaks from `base64` tools
    text = text.replace("-", "+").replace("_", "/")  # the URL-safe alphabet too
    text += "=" * (-len(text) % 4)  # and missing padding
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field} is not valid base64.", param=field) from None
    if not data:
        raise ApiError(400, f"{field} is empty.", param=field)
    return data


class ReferenceService:
    """Turns uploaded/fetched reference audio into voice prompts, with limits and a cache."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._cache: OrderedDict[str, VoicePrompt] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._encode_lock = threading.Lock()  # one encode at a time on the device

    async def audio_bytes(self, b64: str | None, url: str | None) -> bytes:
        """The reference file's bytes from exactly one of base64 or URL."""
        if b64 and url:
            raise ApiError(
                400, "Give either ref_audio_base64 or ref_audio_url, not both.", param="ref_audio_url"
            )
        if b64:
            return decode_base64_audio(b64)
        if url:
            s = self.settings
            if not s.allow_ref_audio_url:
                raise ApiError(
                    400,
                    "ref_audio_url is disabled on this server (UTTER_ALLOW_REF_AUDIO_URL); "
                    "send the audio as ref_audio_base64.",
                    param="ref_audio_url",
                )
            try:
                return await fetch_audio(
                    url, s.ref_audio_url_max_bytes, s.ref_audio_url_timeout_s, s.ref_audio_url_allow_private
                )
            except FetchError as exc:
                raise ApiError(400, str(exc), param="ref_audio_url") from exc
        message = "Reference audio is required: give ref_audio_base64 (or ref_audio_url)."
        raise ApiError(400, message, param="ref_audio_base64")

    def load_checked(self, data: bytes) -> tuple[np.ndarray, float]:
        """Decode to 24 kHz mono and enforce the length limits (AudioError/ApiError -> 400)."""
        lo, hi = self.settings.ref_min_seconds, self.settings.ref_max_seconds
        try:  # refused from the container's header, or decoded no further than the limit
            wav, _ = load_audio(data, target_sr=SAMPLE_RATE, max_seconds=hi)
        except TooLong as exc:
            message = f"The reference audio is {exc.seconds:.1f} s long; at most {hi:g} s is allowed."
            raise ApiError(400, message, param="ref_audio") from exc
        seconds = duration_seconds(wav, SAMPLE_RATE)
        if seconds < lo:
            message = f"The reference audio is {seconds:.2f} s long; it must be at least {lo:g} s."
            raise ApiError(400, message, param="ref_audio")
        if seconds > hi:
            message = f"The reference audio is {seconds:.1f} s long; at most {hi:g} s is allowed."
            raise ApiError(400, message, param="ref_audio")
        return wav, seconds

    def _encode(
        self, engine: Engine, data: bytes, ref_text: str | None, x_vector_only: bool
    ) -> tuple[VoicePrompt, np.ndarray]:
        wav, _ = self.load_checked(data)
        with self._encode_lock:
            prompt = engine.create_voice((wav, SAMPLE_RATE), ref_text=ref_text, x_vector_only=x_vector_only)
        return prompt, wav

    @staticmethod
    def _mode(ref_text: str | None, x_vector_only: bool) -> tuple[str | None, bool]:
        """No transcript means x-vector-only mode, as in the seed API; that mode ignores any text."""
        ref_text = ref_text.strip() if ref_text and ref_text.strip() else None
        x_vector_only = x_vector_only or ref_text is None
        return (None if x_vector_only else ref_text), x_vector_only

    async def encode(
        self, engine: Engine, data: bytes, ref_text: str | None, x_vector_only: bool = False
    ) -> tuple[VoicePrompt, np.ndarray]:
        """A fresh prompt and the decoded 24 kHz reference (for storing); 400 for bad audio."""
        ref_text, x_vector_only = self._mode(ref_text, x_vector_only)
        try:
            return await run_in_threadpool(self._encode, engine, data, ref_text, x_vector_only)
        except ValueError as exc:  # AudioError and the engine's checks: the client's input
            raise ApiError(400, str(exc), param="ref_audio") from exc

    async def voice(
        self, engine: Engine, data: bytes, ref_text: str | None, x_vector_only: bool = False
    ) -> VoicePrompt:
        """A prompt for this reference, from the cache when the same one was seen recently."""
        ref_text, x_vector_only = self._mode(ref_text, x_vector_only)
        key = hashlib.sha256(data + b"\0" + (ref_text or "").encode() + (b"\1" if x_vector_only else b"\0"))
        digest = key.hexdigest()
        with self._cache_lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                return self._cache[digest]
        prompt, _ = await self.encode(engine, data, ref_text, x_vector_only)
        if self.settings.voice_cache_size > 0:
            with self._cache_lock:
                self._cache[digest] = prompt
                while len(self._cache) > self.settings.voice_cache_size:
                    self._cache.popitem(last=False)
        return prompt
