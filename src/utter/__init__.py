"""Utter: voice-cloning studio and fast Qwen3-TTS engine."""

__version__ = "0.1.0"
