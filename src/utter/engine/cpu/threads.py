"""Compute off the decode loop runs in threads that end: one long-lived OpenMP team per process.

PyTorch's CPU ops and our native kernels run in parallel through GNU OpenMP (libgomp), which
gives every thread that starts a parallel region a team of its own: helper threads that live as
long as that thread does. Once the process holds more of them than it has CPUs, libgomp stops
waiting for the next region by spinning (about 3 ms by default) and spins some 100 times before it
sleeps in the kernel instead; a decode step is hundreds of short regions, and each then pays for
waking its helpers. Measured on 2 cores with 0.6B int8: a batcher whose process also kept the
team of the thread that had loaded the engine made 0.90 audio s/s with one stream and 2.52 with
eight, against 1.44 and 3.19 when the batcher's team was the only one; a generation in a second
thread was 1.6x as slow as the same one in the thread that had loaded the engine.

So a serving process keeps one long-lived team, its batcher worker's, and the rest of its CPU
work (loading, voice prompts, transcription) runs in a thread of its own that ends with the call
and takes its team with it: :func:`call_in_own_thread` blocks, :func:`in_own_thread` is awaited
from asyncio (at most ``MAX_AT_ONCE`` at a time per event loop, as a thread pool would bound
them). A thread costs some 100 us to start, nothing beside a voice prompt or a load. Threads of a
pool (``asyncio.to_thread``, Starlette's ``run_in_threadpool``) are kept for reuse, and with them
their teams: those stay for work that computes nothing (files, databases).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

MAX_AT_ONCE = 8  # calls of in_own_thread running at once per event loop; the rest wait their turn

_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
_limits_lock = threading.Lock()


def _runner(fn: Callable[..., T], args: tuple, kwargs: dict) -> Callable[[], T]:
    """``fn(*args, **kwargs)`` for another thread, with this thread's context variables and
    autograd modes (both are per thread: a load called under ``torch.inference_mode`` makes
    inference tensors, as it would have in place)."""
    context = contextvars.copy_context()
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run() -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return context.run(fn, *args, **kwargs)

    return run


def call_in_own_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new thread that ends when it returns; its result, or its
    exception raised here. Blocks the caller (Ctrl-C still interrupts the wait)."""
    run = _runner(fn, args, kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = run()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"utter-compute-{_name(fn)}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def in_own_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new thread that ends when it returns, awaited from asyncio.

    A caller that is cancelled stops waiting; the call runs to its end (as in a thread pool) and
    holds its place among the ``MAX_AT_ONCE`` until then."""
    loop = asyncio.get_running_loop()
    with _limits_lock:
        limit = _limits.get(loop)
        if limit is None:
            limit = _limits[loop] = asyncio.Semaphore(MAX_AT_ONCE)
    await limit.acquire()
    future: asyncio.Future = loop.create_future()
    run = _runner(fn, args, kwargs)

    def settle(ok: bool, value: Any) -> None:  # on the loop
        limit.release()
        if future.done():  # the caller was cancelled
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            outcome = (True, run())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    try:
        threading.Thread(target=target, name=f"utter-compute-{_name(fn)}", daemon=True).start()
    except BaseException:
        limit.release()
        raise
    return await future


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
