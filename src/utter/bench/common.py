"""Helpers shared by both sides of the benchmark: the machine, memory, timers, checkpoints, imports.

Nothing here imports torch at module level: the parent process of ``utter bench`` stays light and
each measured system runs in its own worker process (see ``worker.py``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import types
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

MIB = 1024 * 1024

logger = logging.getLogger("utter.bench.worker")


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The CPU features that decide which matmul kernels are fast (Linux only)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """CPU, cores, RAM, load, Python and torch versions. GPU details come from the workers."""
    import torch

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(ram / 1024**3, 1),
        "load_average_at_start": load,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }


def device_info(device: str) -> dict:
    """GPU name, memory and CUDA version when ``device`` is a CUDA device (called in a worker)."""
    import torch

    if not device.startswith("cuda"):
        return {}
    props = torch.cuda.get_device_properties(torch.device(device))
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 1024**3, 1),
        "cuda": torch.version.cuda,
    }


# ----------------------------------------------------------------------------- memory
def rss_mib() -> float | None:
    """Current resident set size of this process (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / MIB, 1)


def _peak_rss_bytes() -> int:
    """This program's peak resident memory. On Linux ``VmHWM``: ``ru_maxrss`` survives fork and
    exec, so a worker spawned by a large parent (one that has just built a random checkpoint)
    reported the parent's peak as its own (three sides of one run once all read 5789 MiB)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def peak_memory(device: str) -> dict:
    """Peak resident memory of this process (so run one system per process), and peak CUDA memory."""
    import torch

    out = {"peak_rss_mib": round(_peak_rss_bytes() / MIB, 1)}
    if device.startswith("cuda"):
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(torch.device(device)) / MIB, 1)
    return out


# ----------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    """Wait for queued GPU work so a wall-clock reading covers it (no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


class Probe:
    """Times calls to methods of live objects by wrapping them on the instance; undone on exit.

    ``totals[key]`` is the summed wall time of the wrapped calls and ``calls[key]`` one duration per
    call (in order). Each wrapped call ends with a device sync, so on GPUs the time covers the work
    it queued. Nested probes (a step that calls the code predictor) simply overlap.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.active = True  # False: wrapped calls run untimed and unsynced
        self.calls: dict[str, list[float]] = defaultdict(list)
        self._undo: list[tuple[object, str, object, bool]] = []

    @property
    def totals(self) -> dict[str, float]:
        return {k: sum(v) for k, v in self.calls.items()}

    def wrap(self, obj: object, name: str, key: str | None = None) -> bool:
        """Time ``obj.name(...)``; returns False (and times nothing) when the method is missing."""
        original = getattr(obj, name, None)
        if original is None:
            return False
        calls, device = self.calls[key or name], self.device

        @functools.wraps(original)  # keeps the signature: HF generate inspects forward's parameters
        def timed(*args, **kwargs):
            if not self.active:
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync(device)
                calls.append(time.perf_counter() - start)

        self.patch(obj, name, timed)
        return True

    def patch(self, obj: object, name: str, value: object) -> None:
        """Set ``obj.name = value`` on the instance until the probe exits."""
        had_own = name in vars(obj)
        self._undo.append((obj, name, vars(obj).get(name), had_own))
        setattr(obj, name, value)

    def reset(self) -> None:
        for v in self.calls.values():
            v.clear()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        for obj, name, own, had_own in reversed(self._undo):
            if had_own:
                setattr(obj, name, own)
            else:
                delattr(obj, name)
        self._undo.clear()


@contextlib.contextmanager
def timed(item: str) -> Iterator[None]:
    """Log an item's start and its duration: the worker log shows where a slow run spends its time."""
    logger.info("%s ...", item)
    start = time.perf_counter()
    yield
    logger.info("%s: %.1f s", item, time.perf_counter() - start)


def save_partial(spec: dict, out: dict) -> None:
    """Write the figures measured so far where the worker's result goes (replaced by the full
    result at the end): a worker killed at its timeout, or by a stopped benchmark, still gives
    the items it finished (``commands._worker`` reads them back, marked ``incomplete``)."""
    import json

    path = Path(spec["out"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**out, "partial": True}, indent=2, default=str))
    os.replace(tmp, path)


def median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


# ----------------------------------------------------------------------------- checkpoints
def default_checkpoint_cache() -> Path:
    env = os.environ.get("UTTER_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "utter" / "bench"


def read_through(folder: Path) -> tuple[int, float]:
    """Read every file under ``folder`` once (bytes, seconds), so each worker finds the checkpoint
    in the OS page cache: every side then measures a cold process, not a cold disk. Without it
    the first worker of a run could read the checkpoint from disk (its cold start once 6.9 s
    against 2.4, its `say` 14.3 against 8.4 s) and the sides after it from memory."""
    started, total = time.perf_counter(), 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                total += len(block)
    return total, time.perf_counter() - started


def ensure_checkpoint(size: str, cache: Path, seed: int = 0, variant: str = "base") -> Path:
    """A random checkpoint of ``size`` under ``cache``, written once and reused.

    It is written to a temporary folder and renamed into place, so a half-written checkpoint
    (an interrupted run) is never mistaken for a complete one.
    """
    from ..dev.tiny_checkpoint import write_tiny_checkpoint

    kind = "" if variant == "base" else f"-{variant}"
    folder = cache / f"random-{size}{kind}-seed{seed}"
    if (folder / "config.json").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".random-{size}-"))
    try:
        write_tiny_checkpoint(tmp / "ckpt", size=size, seed=seed, variant=variant)
        os.replace(tmp / "ckpt", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def checkpoint_size(folder: Path) -> str:
    """'0.6b', '1.7b' or 'tiny' from a checkpoint's config.json (targets apply to 0.6b)."""
    import json

    cfg = json.loads((Path(folder) / "config.json").read_text())
    return {"0b6": "0.6b", "1b7": "1.7b"}.get(cfg.get("tts_model_size", ""), cfg.get("tts_model_size", "?"))


# ----------------------------------------------------------------------------- official package
def official_installed() -> bool:
    """Cheap check (no import) that the official ``qwen_tts`` package is installed."""
    return importlib.util.find_spec("qwen_tts") is not None


def _stub(name: str) -> None:
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except Exception:  # noqa: BLE001 - any import failure means "use the stub"
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            mod = types.ModuleType(sub)
            mod.__path__ = []  # type: ignore[attr-defined]
            mod.__spec__ = importlib.machinery.ModuleSpec(sub, None, is_package=True)
            sys.modules[sub] = mod
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], mod)


def import_qwen_tts():
    """Import the official ``qwen_tts`` (raises ImportError when it is not installed).

    ``qwen_tts`` imports torchaudio, sox and onnxruntime at import time for its 25 Hz tokenizer,
    which 12 Hz models never use; PyPI's torchaudio does not load next to our torch. So stand-in
    modules go into ``sys.modules`` first; any real use of them would fail loudly. (The same logic
    as the parity tests use, through ``tests/official.py``.)
    """
    import transformers  # noqa: F401 - let transformers probe the real environment before the stubs exist

    for name in ("torchaudio.compliance.kaldi", "sox", "onnxruntime"):
        _stub(name)
    return importlib.import_module("qwen_tts")


def result_head(system: str, mode: str, device: str, spawned: float, imported: float, ready: float) -> dict:
    """The first fields of a worker's result: who ran, where, and its cold start split into
    imports (``spawned`` -> ``imported``) and loading (-> ``ready``), wall-clock seconds."""
    return {
        "system": system,
        "mode": mode,
        "device": device,
        "device_info": device_info(device),
        "load": {"cold_start_s": ready - spawned, "import_s": imported - spawned, "load_s": ready - imported},
        "memory": {"rss_after_load_mib": rss_mib()},
    }
