"""Joining separately generated pieces of speech: a short linear crossfade at each seam.

A long text is spoken in parts (each a request of its own), so their seams do not line up; a
short crossfade hides the step without eating speech (the edges of a part are near-silent), and
its gains sum to one, so a seam never gets louder than its sides. :class:`Crossfader` does it
as the parts stream in (a server sends a long text's audio as it is made); :func:`crossfade_join`
joins whole parts (the studio's saved chunks) with the same code, so both give the same samples.
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.zeros(0, dtype=np.float32)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _EMPTY
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Crossfader:
    """The crossfade join of parts that arrive in pieces: ``push`` a part's samples as they
    come, ``seam()`` where one part ends and the next begins, ``finish()`` after the last; each
    returns the samples that are final now. Together they are exactly :func:`crossfade_join`'s.

    Why it holds samples back: a seam overlaps the last ``min(fade, len(tail))`` samples of the
    part before with the first ``min(fade, len(tail), len(part))`` of the part after, so the
    last ``fade`` samples of a part wait for the seam, and after a seam the new part's first
    samples wait until there are as many as the held ones (or the part ends shorter).
    """

    def __init__(self, fade: int) -> None:
        if fade < 0:
            raise ValueError("fade must be >= 0 samples")
        self.fade = fade
        self._held = _EMPTY  # the current part's last samples (at most fade), not yet final
        self._prev: np.ndarray | None = None  # at a seam: the part before's held samples
        self._head: list[np.ndarray] = []  # at a seam: the new part's first samples so far

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Samples of the current part; returns the samples that are final now."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if self._prev is None:
            return self._keep(pcm)
        self._head.append(pcm)
        head = _cat(self._head)
        if len(head) < len(self._prev):
            self._head = [head]
            return _EMPTY
        return self._blend(head, len(self._prev))

    def seam(self) -> np.ndarray:
        """The current part has ended and the next begins; returns what is final now."""
        if self._prev is None:
            self._prev, self._held, self._head = self._held, _EMPTY, []
            return _EMPTY
        head = _cat(self._head)
        if not len(head):  # an empty part: as if it were not there
            return _EMPTY
        out = self._blend(head, len(head))  # a part shorter than the held samples, all of it mixed
        self._prev, self._held, self._head = self._held, _EMPTY, []
        return out

    def finish(self) -> np.ndarray:
        """After the last part: the samples still held."""
        if self._prev is None:
            out, self._held = self._held, _EMPTY
            return out
        head = _cat(self._head)
        out = self._blend(head, len(head)) if len(head) else self._prev
        self._prev, self._head = None, []
        return np.concatenate([out, self._take_held()]) if len(self._held) else out

    def _take_held(self) -> np.ndarray:
        out, self._held = self._held, _EMPTY
        return out

    def _keep(self, pcm: np.ndarray) -> np.ndarray:
        """Add samples to the current part: all but its last ``fade`` are final."""
        data = _cat([self._held, pcm])
        cut = max(0, len(data) - self.fade)
        self._held = data[cut:]
        return data[:cut]

    def _blend(self, head: np.ndarray, n: int) -> np.ndarray:
        """Mix the held samples' last ``n`` with the new part's first ``n``; the rest of
        ``head`` goes on as the new part's samples."""
        prev = self._prev
        assert prev is not None
        self._prev, self._head = None, []
        ramp = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]  # strictly between 0 and 1
        mixed = (prev[len(prev) - n :] * (1.0 - ramp) + head[:n] * ramp).astype(np.float32)
        return _cat([prev[: len(prev) - n], mixed, self._keep(head[n:])])


def crossfade_join(parts: list[np.ndarray], sample_rate: int, fade_ms: float = 40.0) -> np.ndarray:
    """Concatenate whole parts, overlapping each seam by ``fade_ms`` with a linear crossfade.

    The result is ``sum(len) - (n - 1) * overlap`` samples long (overlaps shrink for very short
    parts; empty parts are skipped)."""
    fader = Crossfader(int(sample_rate * fade_ms / 1000))
    out: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i:
            out.append(fader.seam())
        out.append(fader.push(part))
    out.append(fader.finish())
    return _cat(out).astype(np.float32, copy=False)
