"""The studio's JSON API, one module per resource: ``voices``, ``transcribe``, ``generate``,
``generations``, ``languages`` and ``health``. The HTML pages are ``studio/pages.py``."""

from . import generate, generations, health, languages, transcribe, voices

__all__ = ["generate", "generations", "health", "languages", "transcribe", "voices"]
