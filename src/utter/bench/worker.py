"""One measured system in its own process: ``python -m utter.bench.worker SPEC.json``.

A fresh process per system and weight mode keeps peak memory (``VmHWM``) and cold-start time
honest: nothing is shared or already warm. The spec names the system ("utter" or "official"), the
mode and what to measure; the result (or the error) is written as JSON to ``spec["out"]``.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path


def run(spec: dict) -> dict:
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    if spec["system"] == "utter":
        from .runner import measure
    elif spec["system"] == "official":
        from .official import measure
    else:
        raise ValueError(f"unknown system {spec['system']!r}")
    return measure(spec)


def _saved(spec: dict) -> dict | None:
    """The figures the measurement saved as it went (``common.save_partial``), if any."""
    try:
        saved = json.loads(Path(spec["out"]).read_text())
    except (OSError, ValueError):
        return None
    saved.pop("partial", None)
    return saved


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m utter.bench.worker SPEC.json\n")
        return 2
    spec = json.loads(Path(args[0]).read_text())
    logging.basicConfig(
        level=logging.DEBUG if spec.get("debug") else logging.WARNING,
        format=f"%(asctime)s [{spec['system']} {spec['mode']}] %(levelname)s %(name)s: %(message)s",
    )
    # Each item's start and duration go to the worker log: a slow or stuck item shows itself there.
    logging.getLogger("utter.bench").setLevel(logging.DEBUG if spec.get("debug") else logging.INFO)
    try:
        result, status = run(spec), 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which keeps going
        traceback.print_exc()
        problem = f"{type(exc).__name__}: {exc}"
        result, status = _saved(spec) or {"system": spec["system"], "mode": spec["mode"], "error": problem}, 1
        if "error" not in result:  # the items before the failure were saved as they finished
            result["incomplete"] = f"failed: {problem}"
    Path(spec["out"]).write_text(json.dumps(result, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
