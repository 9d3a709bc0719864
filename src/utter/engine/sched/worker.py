"""The threads that run batchers: one per GPU batcher, one for every CPU batcher of a process.

A batcher's work is a loop of turns (admit, drop the cancelled, one decode step, hand out
audio) run by one thread that owns its engine's state. On a GPU each batcher keeps a thread
of its own: its kernels run asynchronously and the threads only queue them. On a CPU the
threads would compute, and each one that has computed keeps an OpenMP team of helpers for
its whole life; with more helpers in a process than cores, GNU OpenMP stops spinning between
parallel regions and every one of a decode step's hundreds of short regions pays a wake-up
(``engine/cpu/threads.py``). A server holding a Base, a CustomVoice and a VoiceDesign model
decoded a lone stream on 2 cores 35% slower with the other batchers idle than with none. So
every CPU batcher in a process is served by one :class:`Worker`, which takes a turn of each
in order: one team for all of them, and while one model decodes the others cost a few
microseconds a turn. Two busy models share the cores step by step, as they would anyway.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import torch

from ..cuda import fusion

if TYPE_CHECKING:
    from .batcher import Batcher

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # with nothing to do, look again this often even if nobody wakes the worker

_cpu_lock = threading.Lock()
_cpu_worker: Worker | None = None


def worker_for(device: torch.device) -> Worker:
    """The worker a batcher on ``device`` joins: the process's CPU worker, or a new one."""
    global _cpu_worker
    if device.type != "cpu":
        return Worker(f"utter-batcher-{device.type}")
    with _cpu_lock:
        if _cpu_worker is None:
            _cpu_worker = Worker("utter-batcher-cpu")
        return _cpu_worker


class Worker:
    """One thread taking turns of its batchers until each is stopped or gives up.

    The thread starts with the first batcher and ends when the last one has left, so a process
    that stops its batchers keeps no thread (nor its OpenMP team); a batcher that joins later
    starts a new one. Each batcher's failures stay its own (``Batcher._turn_safely``): one
    model's broken step never ends the others' service.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._members: list[Batcher] = []
        self._thread: threading.Thread | None = None
        self.wakeup = threading.Event()  # set by any member with new work (its ``_wake``)

    @property
    def members(self) -> int:
        return len(self._members)

    def attach(self, batcher: Batcher) -> threading.Thread:
        """Serve ``batcher`` from the next round on; returns the thread that serves it."""
        with self._lock:
            batcher._wakeup = self.wakeup
            self._members.append(batcher)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            thread = self._thread
        self.wakeup.set()
        return thread

    def _run(self) -> None:
        """Rounds of one turn per batcher; waits when none of them stepped.

        Inference mode for the whole thread: the runners' tensors are inference tensors, and
        any in-place update outside inference mode raises. Compiled layers run here, so the
        compiler's per-thread settings are made here too."""
        torch.set_grad_enabled(False)
        fusion.prepare_thread()
        with torch.inference_mode():
            while True:
                with self._lock:
                    if not self._members:
                        self._thread = None  # under the lock: a batcher attaching now starts another
                        return
                    members = list(self._members)
                busy = False
                for batcher in members:
                    try:
                        if not batcher._stop.is_set() and batcher.dead is None:
                            busy |= batcher._turn_safely()
                    except BaseException as exc:  # noqa: BLE001 - its recovery failed: it alone is done for
                        logger.critical("a batcher failed to recover and stops serving", exc_info=True)
                        batcher.dead = f"recovery failed: {type(exc).__name__}: {exc}"
                    if batcher._stop.is_set() or batcher.dead is not None:
                        self._leave(batcher)
                if not busy:
                    self.wakeup.wait(timeout=IDLE_WAIT_S)
                    self.wakeup.clear()  # the next round looks at every batcher before waiting again

    def _leave(self, batcher: Batcher) -> None:
        """End a stopped (or dead) batcher's requests from this thread, then let it go."""
        try:
            batcher._drain_for_exit()
        except Exception:  # noqa: BLE001 - the others must go on being served
            logger.exception("ending the requests of a stopped batcher failed")
        finally:
            with self._lock:
                if batcher in self._members:
                    self._members.remove(batcher)
            batcher._left.set()
