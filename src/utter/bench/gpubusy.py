"""GPU busy share: the part of a window in which at least one kernel runs on the GPU.

Sampled from the CUDA profiler's kernel trace while a concurrency run is under way (a second
or so in its middle); overlapping kernels (several CUDA streams) count once. The window is that
of the trace, first kernel to last, so it measures how busy the GPU is while the run is on.
"""

from __future__ import annotations

import threading


def busy_share(intervals: list[tuple[float, float]]) -> float | None:
    """Covered length of the union of ``intervals`` over their span (None when empty)."""
    if not intervals:
        return None
    spans = sorted(intervals)
    start, end = spans[0][0], max(e for _, e in spans)
    if end <= start:
        return None
    covered, cur_start, cur_end = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_end:
            covered += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    covered += cur_end - cur_start
    return covered / (end - start)


class BusySampler:
    """``with BusySampler(device) as s: run()`` then ``s.share``: on CUDA, a thread waits
    ``delay_s`` into the run and traces kernels for ``window_s`` (or until the run ends); on
    other devices it does nothing (``share`` stays None)."""

    def __init__(self, device: str, delay_s: float = 0.5, window_s: float = 1.0) -> None:
        self.enabled = device.startswith("cuda")
        self.delay_s, self.window_s = delay_s, window_s
        self.share: float | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BusySampler:
        if self.enabled:
            self._thread = threading.Thread(target=self._sample, name="gpu-busy", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _sample(self) -> None:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        if self._done.wait(self.delay_s):
            return  # the run ended first
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            self._done.wait(self.window_s)
            torch.cuda.synchronize()
        kernels = [
            (e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA
        ]
        self.share = busy_share(kernels)
