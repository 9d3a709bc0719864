"""One lock around every import from transformers.

transformers' top-level module resolves its names lazily, and that is not safe from two threads
at once: while the speech encoder was being built on its thread after loading, a transcription
loading Whisper on another failed with ``cannot import name 'WhisperForConditionalGeneration'``.
Every place that imports from transformers while serving takes this lock first.
"""

from __future__ import annotations

import threading

TRANSFORMERS_IMPORT = threading.RLock()
