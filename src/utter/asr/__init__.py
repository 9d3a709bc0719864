"""Speech recognition for references: transcribe a recording so a voice clones without typing."""

from .whisper import AsrError, Transcriber, Transcript, resolve_asr_model

__all__ = ["AsrError", "Transcriber", "Transcript", "resolve_asr_model"]
