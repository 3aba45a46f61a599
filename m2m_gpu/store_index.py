"""The approximate index behind ``SplatStore(index="hrm2")``.

The store keeps its splats in slot order (the source of truth for mu, alpha and kappa); the
index keeps an HRM2 layout of the same rows, cell by cell, whose ids are store slots. The
store tells it about every change:

* new slots and moved rows (upserts, Hebbian feedback, merges): :meth:`HRM2.add_rows` and
  :meth:`HRM2.relocate` (a row whose mu crossed into another cell is re-assigned, so it stays
  findable);
* freed slots (delete, prune, merge) and compaction (slot renumbering);
* any change of alpha or kappa: the index's position-ordered copy of the parameters is
  marked stale and gathered again (O(n), once) before the next search.

Searches may run in several threads at once (the store's lock keeps writes out meanwhile):
the stale copy is gathered once, under a small lock, by whichever search needs it first;
searches move no row between tiers, and the tier placement pass runs at the end of a write
when it is due (:meth:`StoreIndex.rebalance_if_due`), or on :meth:`StoreIndex.rebalance`.

Until the store holds ``train_min`` splats the index is untrained and searches are exact;
it trains on the splats present then, and again when the store has grown ``RETRAIN_GROWTH``
times since (the default cell counts depend on n) or when its cells become unbalanced
(HRM2's own rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .hrm2 import HRM2, ProbeReport
from .inputs import check_count
from .locking import ForkSafeLock

RETRAIN_GROWTH = 4.0  # retrain when the store has grown this many times since training
RELAYOUT_DEAD = 0.25  # after a compaction, lay the rows out again past this share of holes


@dataclass
class IndexOptions:
    """``index_options`` of ``SplatStore(index="hrm2")``.

    ``train_min``: splats needed before the index is trained (searches are exact before);
    ``n1``, ``n2``: HRM2 shape (None: from n, see :func:`m2m_gpu.hrm2.default_shape`);
    ``p1``, ``p2``: probes (None: :func:`m2m_gpu.hrm2.default_probes`); ``adaptive``,
    ``ratio``: adaptive probing as in :class:`m2m_gpu.IndexHRM2`; ``seed``: k-means seed.
    """

    train_min: int = 10_000
    n1: int | None = None
    n2: int | None = None
    p1: int | None = None
    p2: int | None = None
    adaptive: bool = False
    ratio: float | None = None
    seed: int = 0

    @classmethod
    def parse(cls, raw: dict | None) -> IndexOptions:
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInputError(f"unknown index_options {sorted(unknown)}; known: "
                                    f"{sorted(cls.__dataclass_fields__)}")
        opts = cls(**raw)
        for name in ("n1", "n2", "p1", "p2"):
            check_count(f"index_options {name}", getattr(opts, name), allow_none=True)
        check_count("index_options train_min", opts.train_min)
        if opts.ratio is not None and not opts.ratio >= 1:
            raise InvalidInputError(f"index_options ratio must be >= 1, got {opts.ratio!r}")
        return opts


class StoreIndex:
    """HRM2 over a store's slots (see the module docstring)."""

    def __init__(self, dim: int, backend, options: IndexOptions, tiers=None,
                 cold_dir=None) -> None:
        self.opts = options
        self.hrm2 = HRM2(dim, backend, options.n1, options.n2, seed=options.seed,
                         tiers=tiers, cold_dir=cold_dir)
        self.trained_on = 0
        self._params = None  # position-ordered params (host; HRM2 keeps the device copy)
        self._params_lock = ForkSafeLock()  # searches build a stale _params once
        self.last_report: ProbeReport | None = None  # of the last search to finish

    @property
    def ready(self) -> bool:
        return self.hrm2.trained and self.hrm2.ntotal > 0

    def probes(self) -> tuple[int, int]:
        return self.hrm2.probes(self.opts.p1, self.opts.p2)

    # ---- keeping in step with the store ----------------------------------------------------
    def train(self, rows: np.ndarray, slots: np.ndarray) -> None:
        """(Re)train on the store's live rows and lay them out."""
        self.hrm2.train(rows)
        self.hrm2.set_rows(rows, slots)
        self.trained_on = rows.shape[0]
        self._params = None

    def needs_training(self, live: int) -> bool:
        if not self.hrm2.trained:
            return live >= self.opts.train_min
        return live > RETRAIN_GROWTH * max(1, self.trained_on)

    def added(self, slots: np.ndarray, rows: np.ndarray) -> None:
        if self.hrm2.trained and slots.size:
            self.hrm2.add(rows, slots)
        self._params = None
        self.rebalance_if_due()

    def moved(self, slots: np.ndarray, rows: np.ndarray) -> None:
        if self.hrm2.trained and slots.size:
            pos = self.hrm2.positions_of(slots)
            ok = pos >= 0
            self.hrm2.relocate(pos[ok], rows[ok])
        self._params = None
        self.rebalance_if_due()

    def freed(self, slots: np.ndarray) -> None:
        if self.hrm2.trained and slots.size and self.hrm2.ntotal:
            # masked now; dropped at the next re-layout
            self.hrm2.mark_dead(self.hrm2.positions_of(slots))
        self._params = None
        self.rebalance_if_due()

    def compacted(self, keep: np.ndarray, slots_before: int) -> None:
        """Slots were renumbered: old slot ``keep[i]`` is now slot ``i``."""
        if self.hrm2.trained and self.hrm2.ntotal:
            new = np.full(slots_before, -1, np.int64)
            new[keep] = np.arange(keep.size)
            self.hrm2.renumber(new)
            if self.hrm2.dead_share() > RELAYOUT_DEAD:  # many holes: lay the rows out again
                self.hrm2.remove_positions(np.zeros(0, np.int64))
        self._params = None
        self.rebalance_if_due()

    def params_changed(self) -> None:
        self._params = None

    def set_cold_dir(self, directory) -> None:
        """Where the index's spill file goes (the store's directory once it has one)."""
        self.hrm2.set_cold_dir(directory)

    def close(self) -> None:
        self.hrm2.close()

    # ---- tiers (writers only) --------------------------------------------------------------
    def rebalance_due(self) -> bool:
        """Whether the index's tier placement pass is due."""
        return self.hrm2.trained and self.hrm2.rebalance_due()

    def rebalance(self) -> dict:
        """The index's tier placement pass now (a write); rows moved per direction."""
        return self.hrm2.rebalance() if self.hrm2.trained else {}

    def rebalance_if_due(self) -> dict:
        return self.rebalance() if self.rebalance_due() else {}

    # ---- search ----------------------------------------------------------------------------
    def _position_params(self, host_params: np.ndarray):
        return self.hrm2.params_by_position(host_params)

    def _unmasked_params(self, host_params):
        """The cached position-ordered params, gathered once (double-checked) when stale."""
        params = self._params
        if params is None:
            with self._params_lock:
                params = self._params
                if params is None:
                    params = self._params = self._position_params(host_params())
        return params

    def search(self, q: np.ndarray, k: int, mode: int, host_params, masked: bool):
        """``(keys, slots, d2)`` host arrays, -1 slots where fewer than k were found.
        ``host_params()``: the store's params in slot order, on the host (alpha 0 where
        filtered out when ``masked``; such params are used once and not cached)."""
        params = self._position_params(host_params()) if masked else \
            self._unmasked_params(host_params)
        p1, p2 = self.probes()
        keys, pos, d2, report = self.hrm2.search(q, k, p1, p2, adaptive=self.opts.adaptive,
                                                 ratio=self.opts.ratio, mode=mode,
                                                 params=params, cache=not masked)
        self.last_report = report
        keys, pos, d2 = (np.asarray(self.hrm2.backend.to_host(a)) for a in (keys, pos, d2))
        return keys, self.hrm2.ids_of(pos), d2

    def check(self, live_slots: np.ndarray) -> list[str]:
        """Problems of the index's layout, and whether it holds each of ``live_slots``
        at exactly one live position (the store's integrity check); [] when untrained."""
        if not self.ready:
            return []
        return self.hrm2.check(np.asarray(live_slots, np.int64))

    def device_bytes(self) -> int:
        """Device bytes of the index's hot copy of the vectors."""
        return self.hrm2.device_bytes()

    def stats(self) -> dict:
        h = self.hrm2
        out = {"kind": "hrm2", "trained": bool(h.trained), "train_min": self.opts.train_min}
        if h.trained:
            out.update({"coarse_cells": int(h.coarse.shape[0]),
                        "fine_cells": int(h.fine.shape[0]), "probes": list(self.probes()),
                        "positions": int(h.ntotal), "dead_positions": int(h.dead.sum()),
                        "rebuilds": int(h.rebuilds), "trained_on": int(self.trained_on),
                        "tiers": h.tiers.stats()})
        return out
