"""The :class:`TierManager`: the one interface of the memory tiers (see :mod:`m2m_gpu.tiers`).
It coordinates the slot map (:mod:`.slotmap`), the row stores (:mod:`.stores`) and the
placement policy (:mod:`.policy`)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from ..tensor import host_array
from .options import COLD, HOT, TIER_NAMES, WARM, Block, TierOptions
from .policy import AccessStats, plan
from .slotmap import SlotMap
from .stores import ColdRows, HotRows, WarmRows
from .stream import Streamer
from .traffic import Traffic


class TierManager:
    """Places the rows (vectors) of slots ``0 .. n-1`` in the hot, warm and cold tiers.
    ``clock``: the access clock to start from (a new layout of the same rows carries it on,
    and the rows' history with :meth:`history` and :meth:`set_history`).

    Threads: the read path (dense, blocks, gather, fetch, upload, touch, due, counts, nbytes,
    stats, check) never moves rows and may run in several threads at once; touches and the
    streamed counters take internal locks. What moves rows or changes slots (place,
    promote, demote, scatter, keep, rebalance, adopt, rebase, shrink_hot) needs the
    caller's exclusive lock: no read may run meanwhile."""

    def __init__(self, dim: int, backend, options: TierOptions | None = None,
                 cold_dir: str | os.PathLike | None = None, clock: int = 0) -> None:
        self.dim = int(dim)
        self.backend = backend
        self.options = options or TierOptions()
        self.row_bytes = 4 * self.dim
        rows = lambda b: None if b is None else int(b) // self.row_bytes  # noqa: E731
        self.block_rows = max(1, self.options.block_bytes // self.row_bytes)
        self._hot = HotRows(backend, self.dim, rows(self.options.hot_bytes), self.block_rows)
        self._warm = WarmRows(self.dim, rows(self.options.warm_bytes))
        directory = self.options.cold_dir or (str(cold_dir) if cold_dir else None)
        self._cold = ColdRows(self.dim, directory)
        self._stores = (self._hot, self._warm, self._cold)  # indexed by tier
        self._map = SlotMap((self._hot, self._warm))
        self.access = AccessStats(self.options.tau, clock)
        self.traffic = Traffic(self.row_bytes)
        self._stream = Streamer(backend, self._map, self._hot, self._warm, self._cold,
                                self.traffic, self.block_rows)

    # ---- sizes and state ----------------------------------------------------------------
    @property
    def n(self) -> int:
        return self._map.n

    # read only: the tier of each slot, its row in that tier, the hot layout's version
    # (bumped whenever the hot tier's rows change; callers cache by it), the budgets in
    # rows, device out-of-memory shrinks, spill compactions, the access clock (calls)
    tier = property(lambda self: self._map.tier)
    pos = property(lambda self: self._map.pos)
    version = property(lambda self: self._map.version)
    hot_limit = property(lambda self: self._hot.limit)
    warm_limit = property(lambda self: self._warm.limit)
    shrinks = property(lambda self: self._hot.shrinks)
    spill_compactions = property(lambda self: self._cold.compactions)
    clock = property(lambda self: self.access.tick)
    moves = property(lambda self: self.traffic.moves)
    streamed = property(lambda self: self.traffic.streamed)

    @property
    def spill_compact_min(self) -> int:
        """Spill rows before compaction is considered."""
        return self._cold.compact_min

    @spill_compact_min.setter
    def spill_compact_min(self, rows: int) -> None:
        self._cold.compact_min = int(rows)

    def counts(self) -> list[int]:
        return self._map.counts()

    @property
    def bounded(self) -> bool:
        return self.hot_limit is not None or self.warm_limit is not None

    def dense(self):
        """The native (n, dim) matrix in slot order when every row is hot, else None."""
        return self._hot.view() if self._map.count(HOT) == self.n else None

    @property
    def hot_slots(self) -> np.ndarray:
        """The hot tier's slots, ascending: row ``i`` of :attr:`hot_store` is slot
        ``hot_slots[i]``."""
        return self._map.slots(HOT)

    @property
    def hot_store(self):
        """The hot tier's row store (vulkan: the store's params share its chunking)."""
        return self._hot.store

    # ---- place / move -------------------------------------------------------------------
    def place(self, rows) -> np.ndarray:
        """Append rows (host or native float32[r, dim]) as new slots; they fill the hot tier
        up to its budget, then warm, then cold. Returns the new slots."""
        first = self.n
        slots = self._map.grow(int(rows.shape[0]))
        self.access.grow(slots.size)
        try:
            self._fill(slots, rows)
        except BaseException:  # undo: drop the new slots from every tier
            self._map.truncate(first)
            self.access.keep(np.arange(first, dtype=np.int64))
            raise
        return slots

    def _room(self, tier: int) -> float:
        limit = (self._hot if tier == HOT else self._warm).limit
        return math.inf if limit is None else max(0, limit - self._map.count(tier))

    def _fill(self, slots: np.ndarray, rows) -> None:
        """Put rows of new or moving slots into tiers by remaining room, hot first."""
        done = 0
        for tier in (HOT, WARM):
            take = int(min(self._room(tier), slots.size - done))
            if take > 0:
                done += self._insert(tier, slots[done : done + take], rows[done : done + take])
        if done < slots.size:
            self._insert(COLD, slots[done:], rows[done:])

    def _insert(self, tier: int, slots: np.ndarray, rows) -> int:
        """Insert rows into one tier; returns how many were placed (all: what the hot
        tier cannot take when the device runs out of memory goes on to host memory)."""
        if tier == HOT:
            taken = self._hot.append(rows)
            if taken:
                self._map.added(HOT, slots[:taken])
            if taken < slots.size:
                self._fill(slots[taken:], rows[taken:])
            return slots.size
        host = host_array(rows, np.float32)
        if tier == WARM:
            self._warm.append(host)
            self._map.added(WARM, slots)
        else:
            self._map.place_cold(slots, self._cold.append(host))
            self._cold.compact_sparse(self._map, self.block_rows)
        return slots.size

    def shrink_hot(self, exc: BaseException, fraction: float = 0.5) -> None:
        """Device memory ran out elsewhere (a kernel's workspace): cap the hot tier at
        ``fraction`` of what it holds; the caller's :meth:`rebalance` then demotes the rows
        the policy values least, and the call is retried."""
        self._hot.shrink(exc, fraction)

    def retryable(self, exc: BaseException) -> bool:
        """Whether a call that raised ``exc`` may succeed after :meth:`shrink_hot` and a
        placement pass (device memory ran out, and rows are hot). The caller retries, under
        its exclusive lock for the shrink (SplatStore does, between read-locked tries)."""
        return self._hot.retryable(exc)

    def promote(self, slots, to: int = HOT) -> None:
        """Move ``slots`` up to tier ``to`` (one batch)."""
        self._move(np.asarray(slots, np.int64), to)

    def demote(self, slots, to: int | None = None) -> None:
        """Move ``slots`` down to tier ``to`` (default: warm, or cold past the warm budget)."""
        slots = np.asarray(slots, np.int64)
        if to is None:
            room = int(min(self._room(WARM), slots.size))
            self._move(slots[:room], WARM)
            self._move(slots[room:], COLD)
        else:
            self._move(slots, to)

    def _move(self, slots: np.ndarray, dest: int) -> None:
        slots = np.unique(slots)
        slots = slots[self._map.tier[slots] != dest]
        if slots.size == 0:
            return
        src = self._map.tier[slots].copy()
        rows = self.gather(slots)
        self._map.remove(slots)
        self._insert(dest, slots, rows)  # hot may hand rows on to warm (out of memory)
        self.traffic.moved(src, self._map.tier[slots])

    # ---- rows by slot -------------------------------------------------------------------
    def gather(self, slots) -> np.ndarray:
        """Host float32 rows of ``slots``, in that order."""
        slots = np.asarray(slots, np.int64)
        out = np.empty((slots.size, self.dim), dtype=np.float32)
        for tier, sel, pos in self._map.by_tier(slots):
            out[sel] = self._stores[tier].read(pos)
        return out

    def scatter(self, slots, rows) -> None:
        """In place: rows of ``slots`` = ``rows`` (host). A cold row that is written moves to
        the warm tier (the cold files are not rewritten in place)."""
        slots = np.asarray(slots, np.int64)
        rows = host_array(rows, np.float32)
        for tier, sel, pos in list(self._map.by_tier(slots)):  # before cold rows move
            if tier != COLD:
                self._stores[tier].write(pos, rows[sel])
            else:
                self._insert(WARM, slots[sel], rows[sel])
                self.traffic.moved(np.full(sel.size, COLD), np.full(sel.size, WARM))

    def reset(self, slots) -> None:
        """New splats in existing slots (upserts): their access history starts again."""
        self.access.reset(np.asarray(slots, np.int64))

    def keep(self, keep: np.ndarray) -> None:
        """Compaction: keep slots ``keep`` (ascending), renumbered 0 .. len(keep) - 1."""
        keep = np.asarray(keep, np.int64)
        self._map.keep(keep)
        self.access.keep(keep)

    # ---- access history (carried across a re-layout of the same rows) -------------------
    def history(self, slots) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A copy of the access history of ``slots``, for :meth:`set_history`."""
        return self.access.take(np.asarray(slots, np.int64))

    def set_history(self, slots, history) -> None:
        """``slots`` take the access ``history`` (from :meth:`history`)."""
        self.access.assign(np.asarray(slots, np.int64), history)

    # ---- cold base (store files) --------------------------------------------------------
    def adopt(self, base: np.ndarray) -> None:
        """Take ``base`` (float32[n, dim], typically a read-only memory map of a checkpoint's
        vectors file) as the rows of slots 0 .. n-1 of an empty manager, all cold; nothing is
        read until :meth:`rebalance` (or a search) needs it."""
        n = int(base.shape[0])
        self._map.adopt(n)  # raises unless empty
        self._cold.reset_spill()
        self._cold.set_base(base)
        self.access.grow(n)

    def rebase(self, base: np.ndarray) -> None:
        """After a checkpoint wrote every row (slot order) to ``base``: cold rows are read
        from it from now on, and the spill file is dropped."""
        cold = self._map.cold()
        self._map.place_cold(cold, cold)
        self._cold.reset_spill()
        self._cold.set_base(base if cold.size else None)

    def close(self) -> None:
        self._cold.close()

    def set_cold_dir(self, directory) -> None:
        """Where a spill file is created (unless the options name one)."""
        if self.options.cold_dir is None:
            self._cold.directory = str(directory)

    # ---- placement policy ---------------------------------------------------------------
    def touch(self, slots, unique: bool = False) -> None:
        """Count one access to each of ``slots`` and advance the clock by one call
        (``unique``: the slots are distinct and in range, as HRM2's cell ranges are).
        Safe from several threads at once."""
        self.access.touch(slots if self.bounded else None, unique)

    def tick(self) -> None:
        """Advance the clock by one call, counting no access (what :meth:`touch` does when
        the tiers are unbounded), in fewer steps: a search of one query calls it."""
        self.access.touch(None, True)

    def over_budget(self) -> bool:
        return (self.hot_limit is not None and self._map.count(HOT) > self.hot_limit) or \
            (self.warm_limit is not None and self._map.count(WARM) > self.warm_limit)

    def due(self) -> bool:
        """Whether a placement pass is due (over a budget, or ``rebalance_every`` calls)."""
        return self.bounded and (self.over_budget() or
                                 self.access.since_pass >= self.options.rebalance_every)

    def rebalance(self, alpha: np.ndarray, live: np.ndarray) -> dict:
        """Place every slot by the policy (:func:`~m2m_gpu.tiers.policy.plan`): the
        best-scored live slots fill the hot budget, the next ones the warm budget, the rest
        go cold. Returns the splats moved per direction by this pass."""
        self.access.start_pass()
        before = self.traffic.splats_moved()
        if self.n == 0:
            return {}
        score = self.access.scores(self.options.policy, np.asarray(alpha))
        want = plan(score, np.asarray(live), self.hot_limit, self.warm_limit)
        for dest in (COLD, WARM, HOT):  # in this order, every move finds room
            moving = np.flatnonzero((want == dest) & (self._map.tier != dest))
            for s in range(0, moving.size, self.block_rows):
                self._move(moving[s : s + self.block_rows], dest)
        return {k: v - before[k] for k, v in self.traffic.splats_moved().items()
                if v != before[k]}

    # ---- streaming ----------------------------------------------------------------------
    def blocks(self) -> Iterator[Block]:
        """Every row once, as device blocks: the hot tier in one block, then warm and cold
        rows in blocks of at most ``block_bytes``, each block's slots ascending."""
        return self._stream.blocks()

    def fetch(self, slots, like=None):
        """The rows of ``slots`` (any tiers, in that order) as one device block: what HRM2
        uses for the probed cells that are not hot. Counted as streamed. ``like``: as in
        ``Backend.from_host``."""
        return self._stream.fetch(self.gather(slots), like)

    def upload(self, host: np.ndarray, like=None):
        """A host block on the device (cpu: the block itself, no copy)."""
        return self._stream.upload(host, like)

    # ---- introspection ------------------------------------------------------------------
    def nbytes(self, tier: int) -> int:
        return self.counts()[tier] * self.row_bytes

    def check(self) -> list[str]:
        """Disagreements between the slot -> tier map and the tiers (for integrity checks)."""
        return self._map.check()

    def stats(self) -> dict:
        c = self.counts()
        budget = {HOT: self.hot_limit, WARM: self.warm_limit, COLD: None}
        out = {name: {"splats": c[t], "bytes": c[t] * self.row_bytes,
                      "budget_bytes": None if budget[t] is None else budget[t] * self.row_bytes}
               for t, name in enumerate(TIER_NAMES)}
        out.update({"policy": self.options.policy, **self.traffic.snapshot(),
                    "device_memory_shrinks": self.shrinks,
                    "cold_file_rows": self._cold.file_rows,
                    "spill_compactions": self.spill_compactions})
        return out
