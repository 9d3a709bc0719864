"""Reference audio from a request (base64 or URL) -> a checked, cached :class:`VoicePrompt`.

Encoding a reference (speaker encoder + codec encoder) costs far more than a short generation,
and seed clients send the same reference with every /clone call, so prompts are cached by the
hash of (audio bytes, transcript, mode). Encoding runs in a worker thread, one at a time, so the
event loop keeps serving and a burst of uploads cannot pile up on the device.

A reference without a transcript is transcribed first when the server has a transcription
model (``asr.py``), so it clones in ICL mode like one sent with its words; without one (or
when it cannot be loaded) it clones from the speaker embedding alone (x-vector), as the seed did.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from ...asr import Transcriber, Transcript
from ...audio import SAMPLE_RATE, TooLong, duration_seconds, load_audio
from ...engine.cpu.threads import in_own_thread
from ...engine.engine import Engine
from ...engine.voice import VoicePrompt
from ..http.errors import ApiError
from ..settings import ServerSettings
from .asr import AsrHolder
from .fetch import FetchError, fetch_audio

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


@dataclass(frozen=True)
class Encoded:
    """A fresh prompt, the decoded 24 kHz reference (for storing) and the transcript made for it
    (None when the client gave one or asked for x-vector mode)."""

    prompt: VoicePrompt
    reference: np.ndarray
    transcript: Transcript | None


class ReferenceService:
    """Turns uploaded/fetched reference audio into voice prompts, with limits and a cache."""

    def __init__(self, settings: ServerSettings, asr: AsrHolder) -> None:
        self.settings = settings
        self.asr = asr
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
        self, engine: Engine, wav: np.ndarray, ref_text: str | None, transcriber: Transcriber | None
    ) -> Encoded:
        transcript = None
        if ref_text is None and transcriber is not None:
            transcript = transcriber.transcribe(wav, SAMPLE_RATE)
            ref_text = transcript.text or None  # silence or noise: nothing to align, x-vector
        with self._encode_lock:
            prompt = engine.create_voice(
                (wav, SAMPLE_RATE), ref_text=ref_text, x_vector_only=ref_text is None
            )
        return Encoded(prompt, wav, transcript)

    def _mode(self, ref_text: str | None, x_vector_only: bool) -> tuple[str | None, bool]:
        """(transcript, transcribe?): x-vector mode ignores any text; no transcript means one is
        made when the server can transcribe, else x-vector mode (as in the seed API)."""
        ref_text = ref_text.strip() if ref_text and ref_text.strip() else None
        if x_vector_only:
            return None, False
        return ref_text, ref_text is None and self.asr.enabled

    async def encode(
        self, engine: Engine, data: bytes, ref_text: str | None, x_vector_only: bool = False
    ) -> Encoded:
        """A fresh prompt for this reference; 400 for bad audio, 503 while the transcription
        model it needs is still on its way."""
        ref_text, transcribe = self._mode(ref_text, x_vector_only)
        try:
            wav, _ = await run_in_threadpool(self.load_checked, data)  # bad audio: 400 before any wait
            transcriber = await self.asr.wait_ready(self.settings.ready_timeout_s) if transcribe else None
            # computed in a thread that ends with it (its OpenMP team would slow the batcher's)
            return await in_own_thread(self._encode, engine, wav, ref_text, transcriber)
        except ValueError as exc:  # AudioError and the engine's checks: the client's input
            raise ApiError(400, str(exc), param="ref_audio") from exc

    async def voice(
        self, engine: Engine, data: bytes, ref_text: str | None, x_vector_only: bool = False
    ) -> VoicePrompt:
        """A prompt for this reference, from the cache when the same one was seen recently."""
        text, transcribe = self._mode(ref_text, x_vector_only)
        mode = b"\2" if transcribe else b"\0" if text else b"\1"
        digest = hashlib.sha256(data + b"\0" + (text or "").encode() + mode).hexdigest()
        with self._cache_lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                return self._cache[digest]
        prompt = (await self.encode(engine, data, ref_text, x_vector_only)).prompt
        if self.settings.voice_cache_size > 0:
            with self._cache_lock:
                self._cache[digest] = prompt
                while len(self._cache) > self.settings.voice_cache_size:
                    self._cache.popitem(last=False)
        return prompt
