"""The service's HTTP and WebSocket endpoints, one module per API: ``seed`` (the original
``/clone`` contract), ``jobs`` (its job queue), ``openai``, ``elevenlabs``, ``voices``,
``transcribe``, ``family`` (CustomVoice and VoiceDesign), ``realtime`` (text in, audio out over a
WebSocket) and ``health``. Each holds request parsing and the answer's shape only; the work is
done by the modules one level up (speech, voices, jobs, realtime)."""

from . import elevenlabs, family, health, jobs, openai, realtime, seed, transcribe, voices

__all__ = ["elevenlabs", "family", "health", "jobs", "openai", "realtime", "seed", "transcribe", "voices"]
