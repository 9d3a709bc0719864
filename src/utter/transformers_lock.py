"""One lock around every import from transformers.

transformers' top-level module resolves its names lazily, and that is not safe from two threads
at once: while the speech encoder (then transformers' Mimi) was being built on its thread after
loading, a transcription loading Whisper on another failed with ``cannot import name
'WhisperForConditionalGeneration'``. The encoder is our own now; Whisper and the fallback text
tokenizer still import from transformers while serving, and take this lock first.
"""

from __future__ import annotations

import threading

TRANSFORMERS_IMPORT = threading.RLock()
