"""The cell layout's rows in the memory tiers: position ``p`` is slot ``p`` of a
:class:`m2m_gpu.tiers.TierManager`, and a re-layout builds a new one.

Besides reading, searches write two things here: access counts (the placement policy's
input) and, when the device runs out of memory, a cap on the hot tier. Both go through a
small lock, so any number of searches may run at once; rows move only in :meth:`rebalance`,
which is a writer's.
"""

from __future__ import annotations

import numpy as np

from ..locking import ForkSafeLock
from ..tiers import HOT, TierManager, TierOptions


class CellRows:
    def __init__(self, d: int, backend, options: TierOptions, cold_dir=None) -> None:
        self.d, self.backend, self.options, self.cold_dir = d, backend, options, cold_dir
        self._lock = ForkSafeLock()
        self.tm = self._new()

    def _new(self, clock: int = 0) -> TierManager:
        return TierManager(self.d, self.backend, self.options, cold_dir=self.cold_dir,
                           clock=clock)

    # ---- whole layouts ----------------------------------------------------------------------
    def clear(self) -> None:
        self.tm.close()
        self.tm = self._new()

    def close(self) -> None:
        self.tm.close()

    def set_cold_dir(self, directory) -> None:
        """Where the spill file of this and every later layout goes."""
        self.cold_dir = directory
        self.tm.set_cold_dir(directory)

    def history(self, old_pos: np.ndarray):
        """Access history of old positions (-1: none) for :meth:`append`; None when the
        tiers are unbounded (no placement policy runs)."""
        if not self.tm.bounded:
            return None
        ok = old_pos >= 0
        return ok, self.tm.history(np.where(ok, old_pos, 0))

    @staticmethod
    def append(tm: TierManager, n: int, rows_of, history=None) -> None:
        """Append rows ``rows_of(s, e)`` for ``s, e`` covering ``0 .. n`` to ``tm`` a block
        at a time (bounded host memory), with their access ``history``."""
        for s in range(0, n, tm.block_rows):
            e = min(n, s + tm.block_rows)
            slots = tm.place(rows_of(s, e))
            if history is not None:
                ok, hist = history
                sel = np.flatnonzero(ok[s:e])
                if sel.size:
                    tm.set_history(slots[sel], tuple(a[s:e][sel] for a in hist))

    def rebuild(self, n: int, rows_of, history=None) -> None:
        """A new tier manager holding ``rows_of`` (see :meth:`append`; ``rows_of`` may still
        read the old one), on the old one's clock; the old one is closed."""
        old = self.tm
        tm = self._new(clock=old.clock)
        self.append(tm, n, rows_of, history)
        old.close()
        self.tm = tm

    # ---- what searches write ----------------------------------------------------------------
    def touch(self, pos: np.ndarray | None) -> None:
        """Count an access to each of the distinct positions ``pos`` (None: only the clock
        advances, as it does when the tiers are unbounded: one call, without this lock,
        which guards the tier budgets that a bounded touch reads)."""
        tm = self.tm
        if pos is None or not tm.bounded:
            tm.tick()
            return
        with self._lock:
            self.tm.touch(pos, unique=True)

    def stream_block(self) -> int | None:
        """None, or (while the hot tier holds more rows than it may after running out of
        device memory, until the next :meth:`rebalance`) the rows per block a scan should
        fetch instead of reading the hot tier in place."""
        tm = self.tm
        if tm.hot_limit is None or tm.hot_slots.size <= tm.hot_limit:
            return None
        return max(1, min(tm.block_rows, tm.hot_limit))

    def out_of_memory(self, exc: BaseException, block: int | None) -> int:
        """A scan ran out of device memory reading ``block`` rows at a time (None: the hot
        tier in place): the hot tier is capped (halved; no row moves until the writer's next
        :meth:`rebalance`) and the retry fetches smaller blocks. Returns their rows."""
        tm = self.tm
        if block is not None:
            return max(1, block // 2)
        with self._lock:
            if tm.hot_slots.size and self.stream_block() is None:
                tm.shrink_hot(exc)
        return self.stream_block() or max(1, tm.block_rows // 2)

    # ---- placement (writers only) -----------------------------------------------------------
    def rebalance_due(self) -> bool:
        return self.tm.due()

    def rebalance(self, alpha: np.ndarray, live: np.ndarray) -> dict:
        return self.tm.rebalance(alpha, live)

    def device_bytes(self) -> int:
        """Bytes of rows in the hot tier (device memory)."""
        return self.tm.nbytes(HOT)
