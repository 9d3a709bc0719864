"""``utter bench``: how fast our engine is, next to the official ``qwen-tts``, on the same machine.

- ``workload.py``: the fixed inputs (the seed's three text lengths, a reference recording).
- ``runner.py``: measures our engine; ``official.py``: measures the official package.
- ``worker.py``: one configuration per process, so cold start and peak memory are its own.
- ``report.py``: ratios, issue #3's targets, the table and the plot; ``commands.py``: the CLI.

Random weights make every run the same length: end of speech is disabled on both sides.
"""
