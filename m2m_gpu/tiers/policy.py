"""The placement policy: per-slot access history (:class:`AccessStats`), the scores the
policies rank by, and :func:`plan`, the tier each slot wants under the budgets."""

from __future__ import annotations

import numpy as np

from ..locking import ForkSafeLock
from .options import COLD, HOT, WARM


class AccessStats:
    """Per-slot accesses for the placement policies (lazily decayed hotness) and the clock
    (``tick``: calls, i.e. searches and feedback events; ``since_pass``: calls since the
    last placement pass).

    Several threads may :meth:`touch` at once (concurrent searches): every method holds one
    lock, so no access is lost and the arrays are never read half-updated. The other
    methods change the slots (grow, keep) and run under the caller's exclusive lock; they
    take the lock too, which costs nothing there."""

    def __init__(self, tau: float, clock: int = 0) -> None:
        self.tau = float(tau)
        self.tick = int(clock)
        self.since_pass = 0
        self.h = np.zeros(0)
        self.last = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)
        self._lock = ForkSafeLock()

    def grow(self, n: int) -> None:
        with self._lock:
            self.h = np.concatenate([self.h, np.zeros(n)])
            self.last = np.concatenate([self.last, np.full(n, self.tick, np.int64)])
            self.count = np.concatenate([self.count, np.zeros(n, np.int64)])

    def reset(self, slots: np.ndarray) -> None:  # a new splat in an old slot (upsert)
        with self._lock:
            self.h[slots], self.last[slots], self.count[slots] = 0.0, self.tick, 0

    def keep(self, keep: np.ndarray) -> None:
        with self._lock:
            self.h, self.last, self.count = self.h[keep], self.last[keep], self.count[keep]

    def take(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A copy of the history of ``slots`` (to carry it across a re-layout)."""
        with self._lock:
            return self.h[slots], self.last[slots], self.count[slots]

    def assign(self, slots: np.ndarray, history) -> None:
        with self._lock:
            self.h[slots], self.last[slots], self.count[slots] = history

    def touch(self, slots: np.ndarray | None, unique: bool = False) -> None:
        """One access to each of ``slots`` (repeats count once per call; ``unique``: the
        caller knows there are none, and that they are in range) at the current tick, then
        the clock advances by one call. ``None``: the clock only."""
        s = None if slots is None else np.asarray(slots, np.int64)
        if s is not None and not unique:
            s = np.unique(s)
        with self._lock:
            if s is not None:
                if not unique:
                    s = s[(s >= 0) & (s < self.h.size)]
                self.h[s] = self._hotness(s) + 1.0
                self.last[s] = self.tick
                self.count[s] += 1
            self.tick += 1
            self.since_pass += 1

    def start_pass(self) -> None:
        """A placement pass starts: :attr:`since_pass` counts from zero again."""
        with self._lock:
            self.since_pass = 0

    def hotness(self, slots=slice(None)) -> np.ndarray:
        with self._lock:
            return self._hotness(slots)

    def _hotness(self, slots) -> np.ndarray:
        return self.h[slots] * np.exp(-(self.tick - self.last[slots]) / self.tau)

    def scores(self, policy: str, alpha: np.ndarray) -> np.ndarray:
        """Higher is hotter."""
        with self._lock:
            if policy == "hotness":
                return alpha.astype(np.float64) * (1.0 + self._hotness(slice(None)))
            if policy == "lru":
                return self.last.astype(np.float64)
            return self.count.astype(np.float64)


def plan(score: np.ndarray, live: np.ndarray, hot_rows: int | None,
         warm_rows: int | None) -> np.ndarray:
    """The tier each slot wants (uint8): the best-scored ``live`` slots fill the hot budget
    (``hot_rows``; None: unbounded), the next ones the warm budget, the rest go cold; free
    slots rank last, ties go to the smaller slot."""
    n = int(score.size)
    score = np.where(live, score, -np.inf)
    order = np.lexsort((np.arange(n), -score))  # best first, ties by slot
    want = np.full(n, COLD, dtype=np.uint8)
    h = n if hot_rows is None else min(n, hot_rows)
    w = n - h if warm_rows is None else min(n - h, warm_rows)
    want[order[:h]] = HOT
    want[order[h : h + w]] = WARM
    return want
