"""``utter drift``: how far each weight mode and int8 kernel moves the logits from float32, on
this CPU, with the kernel each engine really picks here (JSON and a table).

The numbers depend on the CPU: the int8 kernel of a serving engine is oneDNN with 8-bit inputs
on CPUs with VNNI or AMX and fbgemm with 7-bit inputs elsewhere (see ``quant.int8_kernel``), so
the README reports them per CPU kind, each with the ISA it was measured on. On an AVX-512
machine the AVX2 kernels can be measured too: run it with ``ONEDNN_MAX_CPU_ISA=AVX2
FBGEMM_ENABLE_INSTRUCTIONS=AVX2 UTTER_NATIVE_MARCH=x86-64-v3``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# (weight mode, most rows decoded at once): a single-stream engine (utter say) and a serving one
# sized past the native kernels (see quant.native_max_batch).
CASES = [("int8", 1), ("int8", 32), ("float16", 1), ("float16", 32), ("bfloat16", 32)]
CAPS = (
    "ONEDNN_MAX_CPU_ISA",
    "FBGEMM_ENABLE_INSTRUCTIONS",
    "UTTER_NATIVE_MARCH",
)  # kernels held below the CPU


def measure(model: str, batch: int = 2, length: int = 16, seed: int = 0) -> dict[str, Any]:
    """Drift of every case in ``CASES`` against the float32 talker of ``model`` (a folder)."""
    from ..engine.cpu import native_stack
    from ..engine.cpu.drift import logit_drift
    from ..engine.cpu.isa import cpu_isa
    from ..engine.cpu.quant import apply_weight_mode, int8_kernels, native_max_batch
    from ..engine.engine import Engine

    reference = Engine.load(model, device="cpu", weight_mode="float32", max_batch=1).talker
    rows = []
    for mode, max_batch in CASES:
        candidate = apply_weight_mode(copy.deepcopy(reference), mode, max_batch)
        if max_batch <= native_max_batch():  # as Engine.load: whole decoder stacks natively
            native_stack.attach(candidate)
        kernels, prefill = int8_kernels(candidate)
        kernels = [k + (f" (prefill {'/'.join(prefill)})" if prefill else "") for k in kernels]
        drift = logit_drift(reference, candidate, batch=batch, length=length, seed=seed)
        rows.append({"mode": mode, "max_batch": max_batch, "int8_kernel": "/".join(kernels), **asdict(drift)})
        logger.info("%s (max_batch %d): %s", mode, max_batch, drift)
        del candidate
    return {
        "cpu": platform.processor() or platform.machine(),
        "isa": cpu_isa(),
        "caps": {k: os.environ[k] for k in CAPS if os.environ.get(k)},
        "torch": torch.__version__,
        "model": Path(model).name,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    caps = ", ".join(f"{k}={v}" for k, v in result.get("caps", {}).items())
    lines = [
        f"CPU flags: {result['isa']}{'; kernels capped: ' + caps if caps else ''}; "
        f"torch {result['torch']}; model {result['model']}",
        "",
        "| mode | engine | int8 kernel | mean cosine talker / predictor | worst | top-1 talker / predictor "
        "| talker in decode steps: cosine, top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        engine = "single stream" if r["max_batch"] == 1 else f"serving ({r['max_batch']} rows)"
        lines.append(
            f"| {r['mode']} | {engine} | {r['int8_kernel'] or '-'} | "
            f"{r['talker_cosine']:.5f} / {r['predictor_cosine']:.5f} | "
            f"{r['talker_cosine_min']:.5f} / {r['predictor_cosine_min']:.5f} | "
            f"{r['talker_top1']:.0%} / {r['predictor_top1']:.0%} | "
            f"{r['talker_step_cosine']:.5f}, {r['talker_step_top1']:.0%} |"
        )
    return "\n".join(lines)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("drift", help="logit drift of each weight mode against float32 on this CPU")
    p.add_argument(
        "--model", required=True, help="checkpoint folder (utter dev tiny-checkpoint DIR --size 0.6b)"
    )
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.add_argument("--markdown", default=None, help="also write the table here")
    p.set_defaults(func=cmd_drift)
    return p


def cmd_drift(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    result = measure(args.model)
    text = table(result)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    logging.getLogger("utter").info("logit drift against float32\n%s", text)
    return result
