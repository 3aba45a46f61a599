"""``SplatStore``: the public face of a store, a thin layer over its parts.

- :class:`~m2m_gpu.store.state.StoreState`: the slot table (ids, aliases, metadata,
  flags), the splat arrays on the device, the optional HRM2 index, the clock;
- :mod:`~m2m_gpu.store.ops`: every change as an operation (build = validate and decide,
  record, apply), :mod:`~m2m_gpu.store.consolidation` for prune and merge rounds;
- :mod:`~m2m_gpu.store.reader`: search and energy;
- :class:`~m2m_gpu.store.durable.Journal` and :mod:`~m2m_gpu.store.snapshots`: the log,
  checkpoints, opening a directory; :mod:`~m2m_gpu.store.integrity`: checks and stats.

A write runs as ``commit(op)``: the operation is logged (a store on a path), then applied;
what it triggers (an automatic consolidation) is committed after it as operations of its
own. Threads: reads hold the store's read lock and run side by side, writes hold the
write lock (:mod:`m2m_gpu.locking`); device work also holds the backend's
``device_lock`` (a real lock on GPU backends, none on cpu).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import filters as _filters
from .. import persist
from ..backends import Backend, get_backend
from ..backends.base import PARAM_ALPHA
from ..errors import InvalidInputError
from ..inputs import check_k, prepare
from ..locking import holding, shared, thread_safe, unlocked
from ..store_index import IndexOptions
from ..tiers import TierOptions
from . import integrity, learning, ops, reader, snapshots
from .args import as_matrix, id_list, per_event
from .consolidation import consolidate
from .durable import Journal
from .options import check_store_args
from .results import ConsolidationReport, DecayReport, EnergyResult, SearchResult
from .state import StoreState

log = logging.getLogger("m2m_gpu")




def _writes(method):
    """A method that changes the store: refused once the store cannot make it durable."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        self._journal.refuse(method.__name__)
        return method(self, *args, **kwargs)

    return guarded


@thread_safe
class SplatStore:
    """A store of splats on one backend (SPEC sections 1-2).

    ``SplatStore(dim, metric="cosine", backend=None, index="flat", index_options=None,
    **options)``; ``metric`` is ``"cosine"`` (vectors and queries are normalised on the way
    in) or ``"l2"``. ``index`` is ``"flat"`` (exact) or ``"hrm2"`` (approximate, with
    ``index_options`` of :class:`m2m_gpu.store_index.IndexOptions`). ``path`` and
    ``fsync``: write through to a store directory (:mod:`m2m_gpu.persist`). ``tiers``: byte
    budgets and placement policy of the memory tiers (:class:`m2m_gpu.tiers.TierOptions`;
    default: every vector on the device). Options and defaults are those of
    :class:`StoreOptions`. Ids are ints or strings. A call that raises leaves the store
    as it was.
    """

    def __init__(self, dim: int, metric: str = "cosine", backend: str | Backend | None = None,
                 index: str = "flat", index_options: dict | None = None,
                 path: str | os.PathLike | None = None, fsync: str = "every",
                 tiers: dict | TierOptions | None = None, **options: Any) -> None:
        self.dim, self.metric, self.options = check_store_args(dim, metric, index,
                                                               index_options, options)
        self.index_kind = index
        self._index_options_raw = dict(index_options or {})
        self.backend = get_backend(backend)
        self._journal = Journal(fsync)
        self._st = StoreState(self.dim, self.metric, self.backend, self.options,
                              IndexOptions.parse(index_options) if index == "hrm2" else None,
                              TierOptions.parse(tiers))
        if path is not None:
            snapshots.create(self, Path(path))

    # ---- what the store holds -------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return self._journal.path

    @property
    def generation(self) -> int:
        return self._journal.generation

    @property
    def clock(self) -> float:
        return self._st.clock

    @property
    def slots(self) -> int:
        return self._st.table.n

    @shared
    def __len__(self) -> int:
        return len(self._st.table)

    @shared
    def ids(self, filter: dict | None = None) -> list:
        """The ids of the stored splats, in slot order (merged and deduplicated aliases are
        not listed: they resolve to a listed id); with ``filter``, those whose metadata
        match it (:mod:`m2m_gpu.filters`, evaluated on the store's columns)."""
        if filter is None:
            return self._st.table.live_ids()
        _filters.check(filter)
        table = self._st.table
        return [table.ids[s] for s in np.flatnonzero(table.mask(filter)).tolist()]

    @shared
    def aliases(self) -> dict:
        """Merged or deduplicated id -> the stored id it resolves to."""
        return dict(self._st.table.alias)

    @shared
    def __iter__(self):
        """Iterate over a snapshot of :meth:`ids` (writes during the loop do not affect it)."""
        return iter(self._st.table.live_ids())

    @shared
    def __contains__(self, id_: Any) -> bool:
        try:
            return self._st.table.resolve(id_) in self._st.table.slot
        except InvalidInputError:
            return False

    def __repr__(self) -> str:
        return (f"SplatStore(dim={self.dim}, metric={self.metric!r}, size={len(self)}, "
                f"backend={self.backend.name!r})")

    # ---- writes -----------------------------------------------------------------------------
    def _commit(self, op: ops.Op):
        """Log ``op`` (a store on a path), then apply it: live writes and replay run the
        same ``apply`` (see :meth:`Journal.commit` for what a failure leaves)."""
        return self._journal.commit(op, lambda: op.apply(self._st))

    def _write(self, op: ops.Op) -> int:
        """Commit an operation on ids (nothing to do for none); returns its count."""
        if not op.ids:
            return 0
        out = self._commit(op)
        self._after_write()
        return out

    def _auto_consolidate(self, reason: str | None) -> ConsolidationReport | None:
        """The automatic consolidation after a write (its own group in the log). The write
        that triggered it is logged and applied already: a failure here never turns it
        into an exception. It is logged, the group is cut from the log, and, if the group
        had changed memory, writes are refused until the store is reopened."""
        if reason is None or not self.options.auto_consolidate:
            return None
        try:
            with self._journal.group():
                return consolidate(self._st, self._commit, reason)
        except Exception as exc:  # noqa: BLE001 - the write itself is acknowledged
            log.warning("%s: the automatic consolidation (%s) failed (%s: %s); the write "
                        "that triggered it is kept", self.path or "store", reason,
                        type(exc).__name__, exc)
            return None

    def _after_write(self) -> None:
        """After an acknowledged write: the automatic checkpoint and placement. Neither
        turns the write into an exception (it is in the log already)."""
        if self._journal.checkpoint_due(self.slots * (4 * self.dim + 24)):
            try:
                self.checkpoint()
            except Exception as exc:  # noqa: BLE001 - the write itself is acknowledged
                log.warning("%s: automatic checkpoint failed (%s: %s); the log keeps every "
                            "write%s", self.path, type(exc).__name__, exc,
                            "; writes are refused until the store is reopened"
                            if self._journal.failed is not None else
                            " and the next write tries again")
        try:
            self._rebalance_if_due()
        except Exception as exc:  # noqa: BLE001 - placement is derived state
            log.warning("tier placement after a write failed (%s: %s); the next write or "
                        "search tries again", type(exc).__name__, exc)

    @_writes
    def add(self, vectors: Any, ids: Any = None, metadata: Any = None) -> list[Any]:
        """Insert or replace (upsert) splats; returns their ids.

        ``ids``: one int or str per vector (an id already stored is replaced: new vector,
        alpha 1, kappa ``kappa0``, new metadata), or None to generate int ids.
        ``metadata``: one JSON-serialisable dict per vector, one dict for all, or None.
        """
        op = ops.Add.build(self._st, vectors, ids, metadata)
        if not op.keys and not op.aliases:
            return []
        out = self._commit(op)
        cap = self.options.capacity
        if cap is not None and len(self._st.table) > cap:
            self._auto_consolidate(f"size {len(self._st.table)} passed capacity {cap}")
        self._after_write()
        return out

    @_writes
    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int:
        """Remove splats by id (missing ids are ignored), or every splat whose metadata
        matches ``filter`` (see :mod:`m2m_gpu.filters`); returns how many were removed.
        Deleting a merged id removes only that alias; deleting a survivor removes the
        splat and every id that resolves to it."""
        if (ids is None) == (filter is None):
            raise InvalidInputError("delete takes ids or filter=, not both and not neither")
        if filter is not None:
            _filters.check(filter)
        return self._write(ops.Delete.build(self._st, ids, filter))

    @_writes
    def update_metadata(self, ids: Any, metadata: Any) -> int:
        """Replace the metadata of stored splats without re-adding them (vectors, alpha,
        kappa and hits are kept): one dict per id, or one dict for all. Unknown ids raise
        ``UnknownIdError`` and nothing changes. Returns how many were updated."""
        return self._write(ops.SetMetadata.build(self._st, ids, metadata))

    @_writes
    def compact(self) -> None:
        """Drop free slots from the device matrices (one pass; runs by itself when more
        than a quarter of the slots are free)."""
        if self.slots != len(self._st.table):
            self._commit(ops.Compact())
        self._after_write()

    @_writes
    def feedback(self, queries: Any, relevant: Any = None, irrelevant: Any = None) -> int:
        """Hebbian feedback by external id (SPEC section 2); returns the events applied.

        One event: a 1-D query with lists of ids. A batch: a 2-D array of queries with one
        list of relevant and one of irrelevant ids per row, applied in row order (the
        result is that of applying them one by one). An unknown id, or an id both relevant
        and irrelevant in one event, raises before anything changes.
        """
        single = np.ndim(queries) == 1 if not hasattr(queries, "ndim") else queries.ndim == 1
        q = self._queries(queries)
        m = q.shape[0]
        op = ops.Feedback.build(self._st, q, per_event(relevant, m, single, "relevant"),
                                per_event(irrelevant, m, single, "irrelevant"))
        if op.empty:
            return 0
        out = self._commit(op)
        alpha = self._st.arrays.params_of(np.unique(op.events[1]))[:, PARAM_ALPHA]
        if self.options.auto_consolidate and (alpha < self.options.alpha_prune).any():
            self._auto_consolidate(learning.prune_share_reached(self._st))
        self._after_write()
        return out

    @_writes
    def decay(self, now: float, *, force: bool = False) -> DecayReport:
        """``alpha *= exp(-ln2 / half_life * (now - last_tick))`` for every splat; time is
        the caller's (seconds, ticks, ...: the unit of ``half_life``). Returns a
        :class:`DecayReport`; splats it pruned (through ``auto_consolidate``) are also
        logged at WARNING. To keep every memory, create the store with
        ``auto_consolidate=False`` (decay then only lowers alpha).

        A step of more than ``MAX_DECAY_HALF_LIVES`` half-lives (every alpha times 2^-100)
        is refused unless ``force=True``: it is what passing wall-clock time
        (``time.time()``) to a store created without ``clock=`` does."""
        op = ops.Decay.build(self._st, now, force)
        elapsed = op.now - self.clock
        self._commit(op)
        due = learning.prune_share_reached(self._st) if self.options.auto_consolidate \
            else None
        report = DecayReport(elapsed, float(math.exp(-self._st.lam * elapsed)),
                             self._auto_consolidate(due))
        if report.pruned:
            log.warning("decay(now=%s) pruned %d splats whose alpha fell under alpha_prune "
                        "(auto_consolidate; create the store with auto_consolidate=False to "
                        "keep every memory)", now, len(report.pruned))
        self._after_write()
        return report

    @_writes
    def consolidate(self, reason: str = "manual") -> ConsolidationReport:
        """Prune splats with ``alpha < alpha_prune``, then merge pairs closer than
        ``merge_radius`` (mutually nearest pairs, found with the k-NN kernel, in rounds
        until none is left); merged ids resolve to the survivor."""
        with self._journal.group():
            out = consolidate(self._st, self._commit, str(reason))
        self._after_write()
        return out

    # ---- reads ------------------------------------------------------------------------------
    def _queries(self, queries: Any):
        q, _, _ = prepare(as_matrix(queries), "queries", self.metric, dim=self.dim)
        return q

    def _read(self, fn):
        """``fn()`` under the read lock (device work under the backend's lock). When the
        device runs out of memory inside it, the hot tier is halved and rebalanced under
        the write lock, and ``fn`` runs again (three tries in all)."""
        rows = self._st.arrays.rows
        for attempt in range(3):
            with holding(self, "read"):
                try:
                    return fn()
                except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                    if attempt == 2 or not rows.retryable(exc):
                        raise
                    failure = exc
            with holding(self):
                rows.shrink_hot(failure)
                self._rebalance()

    @unlocked
    def search(self, queries: Any, k: int = 10, filter: dict | None = None,
               rank: str = "splat", exact: bool = False) -> SearchResult:
        """The ``k`` best splats for each query row (a 1-D vector is one query).

        ``rank="splat"`` orders by ``score = alpha exp(-kappa d2)``; ``rank="distance"`` by
        ``d2`` alone. ``filter`` (see :mod:`m2m_gpu.filters`) is applied before the top-k,
        so each query gets ``min(k, matching splats)`` hits.

        With ``index="hrm2"`` (once trained) only the probed cells are ranked, unless
        ``exact=True``; a query whose probed cells hold fewer than ``min(k, matches)``
        matching splats (a selective filter) is answered by the exact ranking instead.
        """
        k = check_k(k)
        if rank not in ("splat", "distance"):
            raise InvalidInputError(f"rank must be 'splat' or 'distance', got {rank!r}")
        if filter is not None:
            _filters.check(filter)
        q = self._queries(queries)
        out = self._read(lambda: reader.search(self._st, q, k, filter, rank, exact))
        self._rebalance_if_due()
        return out

    @unlocked
    def energy(self, queries: Any, grad: bool = False) -> EnergyResult:
        """Energy of each query under the whole store (fused; O(queries + splats) memory),
        its confidence, and with ``grad=True`` ``dE/dx`` (for cosine, with respect to the
        normalised query)."""
        q = self._queries(queries)
        return self._read(lambda: reader.energy(self._st, q, grad))

    @shared
    def get(self, ids: Any) -> list[dict | None]:
        """Records ``{"id", "vector", "alpha", "kappa", "metadata", "hits"}`` for each id
        (a merged id gives its survivor's record); None for an id the store does not hold."""
        return integrity.records(self._st, id_list(ids))

    @shared
    def check_integrity(self) -> dict:
        """Check that the store's parts agree (ids, slots, flags, parameters, aliases, the
        index); raises :class:`IntegrityError` listing every problem, else returns counts."""
        return integrity.check(self._st)

    @shared
    def stats(self) -> dict:
        """Counts, alpha and kappa distributions, backend and bytes on the device."""
        return integrity.stats(self._st)

    # ---- tiers (SPEC section 4; m2m_gpu/tiers) ------------------------------------------------
    def _rebalance(self) -> dict:
        """The placement pass of the store's tiers and of its index's; moves per direction."""
        st = self._st
        alpha = st.arrays.alpha() if self.slots else np.zeros(0, np.float32)
        moved = st.arrays.rows.rebalance(alpha, st.table.live)
        if st.index is not None:
            for k, v in st.index.rebalance().items():
                moved[k] = moved.get(k, 0) + v
        return moved

    def _placement_due(self) -> bool:
        index = self._st.index
        return self._st.arrays.rows.due() or (index is not None and index.rebalance_due())

    def _rebalance_if_due(self) -> None:
        if self._placement_due():
            with holding(self):
                if self._placement_due():
                    self._rebalance()

    def rebalance(self) -> dict:
        """Run the tier placement pass now (it also runs every ``rebalance_every`` calls
        and whenever a tier is over budget); returns the splats moved per direction."""
        return self._rebalance()

    # ---- persistence (SPEC section 5; the format is described in m2m_gpu/persist.py) -------
    def _manifest(self) -> dict:
        return snapshots.manifest(self)

    @shared
    def save(self, path: str | os.PathLike) -> None:
        """Write the whole store to a new directory (``SplatStore.open(path)`` reads it).
        The store itself is unchanged and keeps writing where it did before, if anywhere."""
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise InvalidInputError(f"{target} is a file; save to a new directory")
        if (target / "manifest.json").exists():
            raise InvalidInputError(f"{target} already holds a store; save to a new path")
        snapshots.write_generation(self._st, self._manifest(), target, 1)

    @_writes
    def checkpoint(self) -> None:
        """Fold the write-ahead log into the data files (a new generation; the old one is
        removed once the new manifest is committed)."""
        if self.path is None:
            raise InvalidInputError("this store is not opened on a path (use save(path), or "
                                    "SplatStore(..., path=...) / SplatStore.open(path))")
        st = self._st

        def rebase(manifest):  # cold rows are read from the new checkpoint now
            if st.arrays.rows.counts()[2]:
                st.arrays.rows.rebase(persist.map_vectors(
                    self.path / manifest["files"]["vectors"]["name"], self.slots, self.dim))

        self._journal.switch(
            lambda path, g: snapshots.write_generation(st, self._manifest(), path, g), rebase)

    def close(self) -> None:
        """Flush and close the log (a store on a path). The store can still be searched;
        every write after this raises (it could not be made durable)."""
        self._journal.close()

    def __enter__(self) -> SplatStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def open(cls, path: str | os.PathLike, backend: str | Backend | None = None,
             fsync: str = "every", verify: bool = True,
             tiers: dict | TierOptions | None = None, mode: str = "a",
             repair: bool = False) -> SplatStore:
        """Open a store directory and write through to it from now on: the last checkpoint
        is loaded, the log replayed (a torn tail is cut off, with a warning), every later
        change logged. ``verify`` checks the CRC32 of every data file (streamed). With tier
        budgets (``tiers``), the vectors file is memory-mapped as the cold tier and only the
        splats the budgets and policy place in the hot and warm tiers are read.

        ``mode="r"``: read-only. Nothing in the directory is created, cut or removed (no
        lock file, no log opened, a torn tail ignored rather than cut, the cold tier's
        scratch kept elsewhere), no writer lock is taken, and every write raises.

        Only a torn *last* record (what a crash leaves) is cut. A record that fails its
        check with more of the log after it is damage: ``StoreFormatError`` with nothing
        changed, or with ``repair=True`` the good records are replayed and the rest is
        moved aside to ``wal-<g>.log.corrupt-<n>``."""
        return snapshots.open_store(cls, Path(path), backend, fsync, verify, tiers, mode,
                                    repair)
