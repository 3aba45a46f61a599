"""``StoreState``: what a store holds, in memory, and the changes several operations share.

The state is the slot table (host), the splat arrays (device), the optional HRM2 index and
the clock. Operations (:mod:`m2m_gpu.store.ops`) change it only through their ``apply``,
the same code for a live write and for the replay of its log record. Freeing slots and
compaction live here because deletes, prunes and merges all do them.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from ..store_index import IndexOptions, StoreIndex
from ..tiers import TierOptions
from .arrays import SplatArrays
from .options import StoreOptions
from .slots import SlotTable, digest

log = logging.getLogger("m2m_gpu")

COMPACT_MIN_FREE = 1024  # compact when more than this many slots and a quarter are free


class StoreState:
    def __init__(self, dim: int, metric: str, backend, options: StoreOptions,
                 index_options: IndexOptions | None, tiers: TierOptions) -> None:
        self.dim, self.metric, self.backend, self.options = dim, metric, backend, options
        self.rates = options.rates(renormalize=metric == "cosine")
        self.lam = math.log(2.0) / options.half_life
        self.index_options, self.tiers = index_options, tiers
        self.clock = float(options.clock)
        self.arrays: SplatArrays | None = None
        self.index: StoreIndex | None = None
        self.reset(None)

    def reset(self, cold_dir) -> None:
        """Empty, with the cold tier's files (if any) under ``cold_dir``."""
        if self.arrays is not None:
            self.arrays.close()
        if self.index is not None:
            self.index.close()
        own = self.tiers
        if self.index_options is not None and own.bounded:
            # the hrm2 index's cell-ordered copy is the one searched: it takes the budgets;
            # the store's slot-ordered copy (exact search, feedback, checkpoints) stays in
            # the memory-mapped cold tier
            own = dataclasses.replace(own, hot_bytes=0, warm_bytes=0)
        self.table = SlotTable()
        self.arrays = SplatArrays(self.dim, self.backend, own, cold_dir=cold_dir)
        self.index = None if self.index_options is None else StoreIndex(
            self.dim, self.backend, self.index_options, self.tiers, cold_dir=cold_dir)

    def set_cold_dir(self, directory) -> None:
        self.arrays.rows.set_cold_dir(directory)
        if self.index is not None:
            self.index.set_cold_dir(directory)

    @property
    def tick(self) -> float:
        """The clock relative to the store's origin, as stored in params."""
        return self.clock - self.options.clock

    # ---- shared changes ------------------------------------------------------------------
    def free(self, slots: np.ndarray) -> None:
        """Free ``slots`` (sorted, unique): alpha 0 on the device, ids and their aliases
        gone; compacts when more than a quarter of the slots are free."""
        self.arrays.zero(slots)
        self.table.free(slots)
        if self.index is not None:
            self.index.freed(slots)
        free = self.table.n - len(self.table)
        if free > COMPACT_MIN_FREE and free * 4 > self.table.n:
            self.compact()

    def compact(self) -> None:
        """Drop free slots (one pass); slots are renumbered, ids stay."""
        keep = np.flatnonzero(self.table.live)
        before = self.table.n
        if keep.size == before:
            return
        self.arrays.keep(keep)
        self.table.keep(keep)
        if self.index is not None:
            self.index.compacted(keep, before)

    def moved(self, slots: np.ndarray, mu: np.ndarray) -> None:
        """``slots`` now hold the host rows ``mu`` (a merge): arrays and index follow."""
        self.arrays.set_vectors(slots, mu)
        self.rehash(slots, mu)
        if self.index is not None:
            self.index.moved(slots, mu)

    def rehash(self, slots: np.ndarray, mu: np.ndarray) -> None:
        """Dedup: the digests of ``slots``, whose vectors are now ``mu``, so the map always
        says what a checkpoint's rebuild of it would say."""
        if self.options.dedup:
            for s, row in zip(slots.tolist(), mu, strict=True):
                self.table.remember(self.table.ids[s], digest(row))

    def params_changed(self) -> None:
        if self.index is not None:
            self.index.params_changed()

    def sync_index(self) -> None:
        """Train (or retrain) the HRM2 index when the store has reached its size for it."""
        if self.index is not None and self.index.needs_training(len(self.table)):
            live = np.flatnonzero(self.table.live)
            rows = self.arrays.mu(live)
            self.index.train(np.ascontiguousarray(rows, np.float32), live)
            log.info("hrm2 index trained on %d splats", live.size)
