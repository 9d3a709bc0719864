"""``utter bench``: measure our engine and the official package on the same checkpoint.

Each configuration (one of our weight modes, one official dtype) runs in its own worker process
(``python -m utter.bench.worker``), one after another, so cold start and peak memory are its own
and the timings do not compete for cores. The first weight mode and the first official dtype get
the whole suite (``say``, per-frame split, first audio, concurrency, the three texts); the others
get ``say``, the per-frame split and first audio. This module imports no torch at import time, so
registering the command costs the CLI nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger("utter.bench")


class Stopped(Exception):
    """SIGTERM or SIGINT while benchmarking: the running worker is stopped, what it finished is
    kept, and the document is written as it stands (``result``: that worker's entry)."""

    def __init__(self, result: dict | None = None) -> None:
        super().__init__("the benchmark was stopped")
        self.result = result


FULL_SUITE = ["say", "frame", "ttfa", "concurrency", "texts", "arrivals", "realtime", "longform"]
LIGHT_SUITE = ["say", "frame", "ttfa"]
OFFICIAL_DTYPES = ("bfloat16", "float32", "float16")


def _csv(kind):
    def parse(value: str) -> list:
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            return [kind(v) for v in items]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``utter`` subcommands; the handler is :func:`cmd_bench`."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark the engine (and the official qwen-tts, when installed) on random weights",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--model", default=None, help="checkpoint folder or hub id (default: a random one of --size)"
    )
    p.add_argument(
        "--size",
        default="0.6b",
        choices=["tiny", "0.6b", "1.7b"],
        help="random checkpoint size (default: 0.6b)",
    )
    p.add_argument(
        "--variant",
        default="base",
        choices=["base", "custom_voice", "voice_design"],
        help="random checkpoint kind: Base (a cloned voice), CustomVoice (a preset speaker with an "
        "instruction) or VoiceDesign (a described voice); the official comparison runs for Base",
    )
    p.add_argument(
        "--checkpoint-cache",
        default=None,
        help="where random checkpoints are kept (default: ~/.cache/utter/bench)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument(
        "--weight-mode",
        "--dtype",
        dest="weight_modes",
        type=_csv(str),
        default=None,
        help="our weight modes to compare; the first gets the full suite (default: all, default first); "
        "a mode with +compile (bfloat16+compile) runs with the decoder layers compiled",
    )
    p.add_argument(
        "--official-dtype",
        dest="official_dtypes",
        type=_csv(str),
        default=None,
        help="official dtypes, the first is the reference for ratios (default: bfloat16,float32)",
    )
    p.add_argument(
        "--official",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure the official qwen-tts (default: when it is installed)",
    )
    p.add_argument(
        "--frames", type=int, default=None, help="frames per request (default 60 = 4.8 s; --quick: 8)"
    )
    p.add_argument(
        "--concurrency",
        type=_csv(int),
        default=None,
        help="concurrent streams (default 1,4,8,16, and 32 on GPUs; --quick: 1,4)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="the serving engine's batch limit; more concurrent requests queue (default: the largest "
        "--concurrency, so all run together; a server's own default is 8 on CPUs, 16 on GPUs)",
    )
    p.add_argument(
        "--idle-models",
        type=int,
        default=0,
        help="more models (the same checkpoint) loaded beside the serving one, each serving one "
        "request and then idle, as a server's CustomVoice and VoiceDesign models (default: 0)",
    )
    p.add_argument(
        "--texts", type=_csv(str), default=None, help="seed texts to time: short,medium,long (default: all)"
    )
    p.add_argument(
        "--arrival-rates",
        type=_csv(float),
        default=None,
        help="requests per second arriving at random (Poisson) (default 1, and 4,10 on GPUs; --quick: 2)",
    )
    p.add_argument(
        "--arrival-seconds",
        type=float,
        default=None,
        help="how long each arrival pattern runs (default 30; --quick: 2)",
    )
    p.add_argument(
        "--text-frames-cap",
        type=int,
        default=None,
        help="cap the texts' frame budgets (47/667/2180 frames uncapped; --quick: --frames)",
    )
    p.add_argument(
        "--longform-frames",
        type=int,
        default=None,
        help="frames of the long text spoken whole and in parts (default 360; --quick: 2 per part)",
    )
    p.add_argument(
        "--ttfa-repeats", type=int, default=None, help="first-audio measurements, median reported (default 3)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's choice)"
    )
    p.add_argument(
        "--sample", action="store_true", help="sample with the checkpoint's defaults instead of greedy"
    )
    p.add_argument("--seed", type=int, default=0, help="random checkpoint and sampling seed")
    p.add_argument("--output", default="bench.json", help="JSON results (default: %(default)s)")
    p.add_argument("--plot", default="bench.png", help="PNG plot, '' for none (default: %(default)s)")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument(
        "--quick", action="store_true", help="small frame counts and fewer configurations (a smoke test)"
    )
    p.add_argument(
        "--timeout", type=float, default=7200.0, help="seconds allowed per worker (default: %(default)s)"
    )
    return p


# ----------------------------------------------------------------------------- settings
def _settings(args: argparse.Namespace) -> dict:
    import torch

    from .common import checkpoint_size, default_checkpoint_cache, ensure_checkpoint, official_installed
    from .longform import DEFAULT_FRAMES as LONGFORM_FRAMES
    from .longform import long_parts
    from .runner import COMPILED, available_modes
    from .workload import TEXTS, text_frames

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    quick = args.quick
    frames = args.frames or (8 if quick else 60)
    if frames < 2:
        raise ValueError("--frames must be at least 2")
    if args.model:
        from ..engine.checkpoint import resolve_checkpoint

        model = resolve_checkpoint(args.model)
    else:
        cache = Path(args.checkpoint_cache) if args.checkpoint_cache else default_checkpoint_cache()
        logger.info("random %s checkpoint in %s (written once, reused)", args.size, cache)
        model = ensure_checkpoint(args.size, cache, seed=args.seed, variant=args.variant)
    modes = args.weight_modes or available_modes(device)
    known = set(available_modes(device)) | {"int8"}
    # "<mode>+compile": the same weights with the decoder layers compiled (engine/cuda/fusion.py)
    unknown = [m for m in modes if m.removesuffix(COMPILED) not in known]
    if unknown:
        raise ValueError(
            f"unknown weight mode(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    texts = args.texts if args.texts is not None else list(TEXTS)
    bad = [t for t in texts if t not in TEXTS]
    if bad:
        raise ValueError(f"unknown text(s) {', '.join(bad)}; choose from {', '.join(TEXTS)}")
    cap = args.text_frames_cap or (frames if quick else None)
    text_budget = {t: min(text_frames(TEXTS[t]), cap) if cap else text_frames(TEXTS[t]) for t in texts}
    concurrency = args.concurrency or (
        [1, 4] if quick else [1, 4, 8, 16] + ([32] if device.startswith("cuda") else [])
    )
    if any(c < 1 for c in concurrency):
        raise ValueError("--concurrency values must be at least 1")
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError("--max-batch must be at least 1")
    if args.idle_models < 0:
        raise ValueError("--idle-models must be 0 or more")
    variant = _variant_of(Path(model))
    if args.official is False:
        status, official = "disabled (--no-official)", []
    elif variant != "base":
        status, official = f"not compared for {variant} models (the comparison runs the Base voice clone)", []
    elif not official_installed():
        status, official = "not installed (pip install qwen-tts to compare)", []
    else:
        status = "measured"
        official = args.official_dtypes or (["bfloat16"] if quick else ["bfloat16", "float32"])
        bad = [d for d in official if d not in OFFICIAL_DTYPES]
        if bad:
            raise ValueError(
                f"unknown official dtype(s) {', '.join(bad)}; choose from {', '.join(OFFICIAL_DTYPES)}"
            )
    return {
        "model": str(model),
        "size": checkpoint_size(Path(model)),
        "variant": variant,
        "random_weights": args.model is None,
        "device": device,
        "weight_modes": modes,
        "official_dtypes": official,
        "official_reference": official[0] if official else None,
        "official_status": status,
        "frames": frames,
        "concurrency": concurrency,
        "max_batch": args.max_batch or max(concurrency),
        "idle_models": args.idle_models,
        "arrival_rates": args.arrival_rates
        or ([2.0] if quick else [1.0] + ([4.0, 10.0] if device.startswith("cuda") else [])),
        "arrival_seconds": args.arrival_seconds or (2.0 if quick else 30.0),
        "text_frames": text_budget,
        "text_frames_capped": cap is not None,
        "longform_frames": args.longform_frames or (2 * len(long_parts()) if quick else LONGFORM_FRAMES),
        "ttfa_repeats": args.ttfa_repeats or (1 if quick else 3),
        "sample": args.sample,
        "threads": args.threads,
        "seed": args.seed,
        "quick": quick,
        "full_suite": FULL_SUITE,
        "light_suite": LIGHT_SUITE,
    }


def _variant_of(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text()).get("tts_model_type", "base")


# ----------------------------------------------------------------------------- workers
def _worker(spec: dict, workdir: Path, timeout: float) -> dict:
    """Run one configuration in a fresh process and return its JSON result (or an error entry).

    The worker's own output (library warnings, tracebacks) goes to a log file whose tail is shown
    when it fails; with ``--debug`` it goes straight to the terminal.
    """
    name, tag = f"{spec['system']} {spec['mode']}", f"{spec['system']}-{spec['mode']}"
    out, spec_path, log = (
        workdir / f"{kind}-{tag}.{ext}"
        for kind, ext in (("result", "json"), ("spec", "json"), ("log", "txt"))
    )
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the `utter` package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    logger.info("%s: %s", name, ", ".join(spec["suite"]))
    started = time.time()
    spec = dict(spec, out=str(out), spawned_at=started)
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "utter.bench.worker", str(spec_path)]
    stopped = False
    with open(log, "w") as sink:
        target = None if spec.get("debug") else sink
        try:  # (subprocess.run kills the worker when it times out or anything interrupts it)
            code = subprocess.run(
                cmd, env=env, timeout=timeout, check=False, stdout=target, stderr=target
            ).returncode
            result = _read_result(out, f"worker exited with status {code} before it finished")
        except subprocess.TimeoutExpired:
            result = _read_result(out, f"timed out after {timeout:.0f} s")
        except Stopped:
            result, stopped = _read_result(out, "stopped (SIGTERM or SIGINT) before it finished"), True
    result = {
        "system": spec["system"],
        "mode": spec["mode"],
        **result,
        "worker_wall_s": time.time() - started,
    }
    problem = result.get("error") or result.get("incomplete")
    if problem:
        tail = log.read_text(errors="replace").strip().splitlines()[-25:]
        logger.error("%s failed: %s\n%s", name, problem, "\n".join(tail))
    else:
        logger.info("%s: done in %.0f s", name, result["worker_wall_s"])
    if stopped:
        raise Stopped(result)
    return result


def _read_result(out: Path, problem: str) -> dict:
    """The worker's result; after a kill, the items it saved as it went (``incomplete`` says
    why the rest is missing: the table and ratios use what is there), or only the error."""
    try:
        result = json.loads(out.read_text()) if out.is_file() else None
    except ValueError:  # cut off while written
        result = None
    if result is None:
        return {"error": problem}
    if result.get("partial"):
        del result["partial"]
        result["incomplete"] = problem
    return result


def run(settings: dict, timeout: float = 7200.0, progress: Callable[[dict], None] | None = None) -> dict:
    """Measure every configuration in ``settings``; returns the finished benchmark document.

    ``progress`` gets the document after each configuration (the command writes it out, so a
    run cut short keeps what it measured). A :class:`Stopped` raised meanwhile (the command's
    SIGTERM handler) ends the run early with the figures so far."""
    from .. import __version__
    from ..audio import write_wav
    from .common import machine_info, read_through
    from .report import finish
    from .workload import SAMPLE_RATE, reference_audio

    machine = machine_info()
    doc: dict = {
        "utter_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "settings": settings,
        "utter": {},
        "official": {},
    }
    if Path(settings["model"]).is_dir():
        size, seconds = read_through(Path(settings["model"]))
        logger.info(
            "read the checkpoint once (%.1f GB in %.1f s): every worker finds it in memory",
            size / 1e9,
            seconds,
        )
    with tempfile.TemporaryDirectory(prefix="utter-bench-") as tmp:
        workdir = Path(tmp)
        ref_wav = workdir / "reference.wav"
        write_wav(ref_wav, reference_audio(), SAMPLE_RATE)
        base = {
            "model": settings["model"],
            "device": settings["device"],
            "frames": settings["frames"],
            "concurrency": settings["concurrency"],
            "max_batch": settings["max_batch"],
            "idle_models": settings.get("idle_models", 0),
            "arrival_rates": settings["arrival_rates"],
            "arrival_seconds": settings["arrival_seconds"],
            "texts": settings["text_frames"],
            "longform_frames": settings["longform_frames"],
            "ttfa_repeats": settings["ttfa_repeats"],
            "sample": settings["sample"],
            "threads": settings["threads"],
            "seed": settings["seed"],
            "ref_wav": str(ref_wav),
            "workdir": str(workdir),
            "debug": logger.isEnabledFor(logging.DEBUG),
        }
        configurations = [
            (system, mode, FULL_SUITE if i == 0 else LIGHT_SUITE)
            for system, modes in (
                ("utter", settings["weight_modes"]),
                ("official", settings["official_dtypes"]),
            )
            for i, mode in enumerate(modes)
        ]
        for system, mode, suite in configurations:
            try:
                result = _worker(dict(base, system=system, mode=mode, suite=suite), workdir, timeout)
                doc[system][mode] = result
                for key, value in (result.get("device_info") or {}).items():
                    machine.setdefault(key, value)
                if progress is not None:
                    progress(finish(doc))
            except Stopped as stop:  # keep what was measured; the rest is not run
                if stop.result is not None:
                    doc[system][mode] = stop.result
                settings["stopped"] = f"stopped during {system} {mode}; the configurations after it not run"
                logger.warning("%s", settings["stopped"])
                break
    if settings["official_dtypes"] and not doc["official"]:  # stopped before it ran
        settings["official_status"] = "not run (the benchmark was stopped)"
    elif settings["official_dtypes"] and all("error" in r for r in doc["official"].values()):
        settings["official_status"] = "failed (see the errors)"
    return finish(doc)


def cmd_bench(args: argparse.Namespace) -> dict:
    """Handler of ``utter bench``: measure, then write JSON, print the table, write the plot."""
    from .report import plot, table, write_json

    def save(doc: dict) -> None:  # after each configuration: a run cut short keeps what it had
        write_json(doc, Path(args.output))
        if args.markdown:
            Path(args.markdown).write_text(table(doc) + "\n")

    with _stop_on_signals():
        doc = run(_settings(args), timeout=args.timeout, progress=save)
    save(doc)
    text = table(doc)
    sys.stdout.write(text + "\n")  # the table is the command's output
    if args.plot:
        if plot(doc, Path(args.plot)):
            logger.info("wrote %s and %s", args.output, args.plot)
    return doc


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stopped` in the main thread while benchmarking (an outer
    ``timeout`` or Ctrl-C): the running worker is killed and the figures so far are written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m utter.bench ...`` (the same options as ``utter bench``)."""
    parser = argparse.ArgumentParser(prog="utter")
    parser.add_argument("--debug", action="store_true")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        doc = cmd_bench(args)
    except ValueError as exc:
        sys.stderr.write(f"utter: error: {exc}\n")
        return 2
    failed = [
        r for side in ("utter", "official") for r in doc[side].values() if "error" in r or "incomplete" in r
    ]
    return 1 if failed or doc["settings"].get("stopped") else 0
