"""``SplatStore``: ids, metadata, feedback, decay and consolidation over the splat kernels.

Layout. Splats occupy *slots*. Their vectors ``mu`` (float32[slots, d]) are held by a
:class:`m2m_gpu.tiers.TierManager`: by default all on the device as one dense matrix; with
tier budgets (``tiers=``) spread over device, host and a memory-mapped file and streamed
through the device by search and energy. ``params`` (float32[slots, 4]: alpha, kappa,
last_tick, -) stay on the device for every slot, plus ``||mu||^2`` on the cpu backend (its
kernels use the fast form). Ids, metadata and counters
live on the host. Deleting a splat sets its alpha to 0 on the device (every kernel then
ignores the row) and frees the slot; slots are compacted in one pass when more than a
quarter of them are free. All heavy work (ranking, energy, feedback, decay, finding
near-duplicates) runs in the backend's kernels; the host does bookkeeping proportional to
the ids a call names.

Index. ``index="flat"`` (default) ranks every splat exactly. ``index="hrm2"`` adds an HRM2
index (:mod:`m2m_gpu.store_index`) once the store holds ``index_options["train_min"]``
splats: searches then scan only the probed cells, and every change to a splat (add, upsert,
feedback that moves mu, delete, merge, decay) is passed on to the index, so a splat whose mu
crosses into another cell is re-assigned and stays findable. ``search(..., exact=True)``
ranks every splat whatever the index. With tier budgets the index's copy of the vectors
(the one searched) takes them, and the store's own copy stays in the cold tier.

Validation happens before the first change: a call that raises leaves the store as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import filters as _filters
from . import persist
from .backends import Backend, get_backend
from .backends.base import (
    MODE_DISTANCE,
    MODE_SPLAT,
    PARAM_ALPHA,
    PARAM_KAPPA,
    PARAM_TICK,
    PARAM_WIDTH,
    HebbianPlan,
    HebbianRates,
)
from .errors import (
    IntegrityError,
    InvalidInputError,
    StoreFormatError,
    UnknownIdError,
    UnknownMetricError,
)
from .inputs import check_k, prepare, row_sqnorms
from .locking import thread_safe
from .ops.splat import combine_energies
from .ops.topk import merge_by_key
from .store_index import IndexOptions, StoreIndex
from .tensor import host_array, to_native
from .tiers import HOT, TierManager, TierOptions

log = logging.getLogger("m2m_gpu")

SPLAT_METRICS = ("cosine", "l2")
COMPACT_MIN_FREE = 1024  # compact when more than this many slots and a quarter are free
CHECKPOINT_BYTES = 256 << 20  # a store on a path checkpoints when its log passes this
MERGE_ROUNDS_MAX = 64


class Hit(NamedTuple):
    id: Any
    score: float  # alpha * exp(-kappa d2)
    log_score: float  # log(alpha) - kappa d2, the ranking key of rank="splat"
    distance: float  # d2 (squared L2; 2 - 2 cos under cosine)
    metadata: dict


@dataclass
class SearchResult:
    """Results of :meth:`SplatStore.search`: row q holds query q's hits, best first.

    ``ids`` and ``metadata`` are lists of lists; ``scores``, ``log_scores`` and
    ``distances`` are float32 arrays of shape (queries, hits). Every query gets
    ``min(k, matching splats)`` hits. ``result[q]`` is a list of :class:`Hit`.
    """

    ids: list[list[Any]]
    scores: np.ndarray
    log_scores: np.ndarray
    distances: np.ndarray
    metadata: list[list[dict]]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, q: int) -> list[Hit]:
        return [Hit(i, float(s), float(ls), float(dd), m) for i, s, ls, dd, m in zip(
            self.ids[q], self.scores[q], self.log_scores[q], self.distances[q],
            self.metadata[q], strict=True)]

    def __iter__(self):
        return (self[q] for q in range(len(self)))


@dataclass
class EnergyResult:
    """``energy[q] = -log sum_i alpha_i exp(-kappa_i d2)`` (+inf for an empty store) and
    ``confidence = sigmoid(-energy) = mass / (1 + mass)``, where ``mass = exp(-energy)`` is
    the total score the store gives the query: 0.5 at the centre of a lone unit splat,
    towards 1 where memories agree, towards 0 far from every memory."""

    energy: np.ndarray
    confidence: np.ndarray
    gradient: np.ndarray | None = None


@dataclass
class ConsolidationReport:
    pruned: list[Any] = field(default_factory=list)  # ids removed for alpha < alpha_prune
    merged: list[tuple[Any, Any]] = field(default_factory=list)  # (absorbed id, survivor id)
    rounds: int = 0
    before: int = 0
    after: int = 0
    reason: str = "manual"


@dataclass
class DecayReport:
    """What ``decay`` did: the time that passed, the factor every alpha was multiplied by
    (for splats last touched at the previous clock), and the consolidation it triggered
    (``auto_consolidate``), if any: its ``pruned`` ids are gone from the store."""

    elapsed: float
    factor: float
    consolidation: ConsolidationReport | None = None

    @property
    def pruned(self) -> list:
        return list(self.consolidation.pruned) if self.consolidation else []


MAX_DECAY_HALF_LIVES = 100.0  # one decay() advancing the clock further is refused (2^-100)

_RATES = HebbianRates()  # the learning rates and clips have one set of defaults


@dataclass(frozen=True)
class StoreOptions:
    """The store options of SPEC sections 1-2, with their defaults."""

    kappa0: float = 10.0
    lr_alpha: float = _RATES.lr_alpha
    lr_kappa: float = _RATES.lr_kappa
    lr_mu: float = _RATES.lr_mu
    alpha_min: float = _RATES.alpha_min
    alpha_max: float = _RATES.alpha_max
    kappa_min: float = _RATES.kappa_min
    kappa_max: float = _RATES.kappa_max
    eps: float = _RATES.eps  # in kappa += lr_kappa / (d2 + eps)
    half_life: float = 30 * 86400.0  # decay half-life, in the units of `now` (30 days in s)
    alpha_prune: float = 0.01
    merge_radius: float = 0.0  # 0 disables merging; pairs with d2 < merge_radius^2 merge
    capacity: int | None = None  # auto-consolidate when the store grows past this
    prune_share: float = 0.25  # auto-consolidate when this share of alpha is under prune
    auto_consolidate: bool = True
    clock: float = 0.0  # the store's time origin; `now` values are relative to it
    dedup: bool = False  # content-hash deduplication: identical vectors stored once

    def check(self) -> None:
        pos = ("kappa0", "alpha_min", "alpha_max", "kappa_min", "kappa_max", "eps", "half_life")
        for name in pos:
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not v > 0 or not math.isfinite(v) and \
                    name != "half_life":
                raise InvalidInputError(f"option {name} must be a positive number, got {v!r}")
        for name in ("lr_alpha", "lr_kappa", "lr_mu", "alpha_prune", "merge_radius",
                     "prune_share"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not v >= 0 or not math.isfinite(v):
                raise InvalidInputError(f"option {name} must be a number >= 0, got {v!r}")
        if self.lr_alpha >= 1:
            raise InvalidInputError("option lr_alpha must be < 1 (alpha *= 1 - lr_alpha)")
        if self.alpha_min > self.alpha_max or self.kappa_min > self.kappa_max:
            raise InvalidInputError("clip ranges need alpha_min <= alpha_max and "
                                    "kappa_min <= kappa_max")
        if self.capacity is not None and (not isinstance(self.capacity, int)
                                          or self.capacity < 1):
            raise InvalidInputError(f"option capacity must be None or an int >= 1, "
                                    f"got {self.capacity!r}")

    def rates(self, renormalize: bool) -> HebbianRates:
        return HebbianRates(self.lr_alpha, self.lr_kappa, self.lr_mu, self.alpha_min,
                            self.alpha_max, self.kappa_min, self.kappa_max, self.eps,
                            renormalize)


def _no_lock() -> None:
    """The lock release of a store that holds none."""


def _writes(method):
    """A method that changes the store: refused once the store is closed."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if self._closed:
            raise InvalidInputError(f"SplatStore.{method.__name__}: the store is closed; "
                                    "reopen it (SplatStore.open) to write")
        if self._read_only:
            raise InvalidInputError(f"SplatStore.{method.__name__}: the store was opened "
                                    "read-only (SplatStore.open(path, mode='r'))")
        failed = self._failed
        if failed is not None:
            raise OSError(f"SplatStore.{method.__name__}: the store cannot write since a "
                          f"checkpoint failed after its commit ({failed}); reopen it") from failed
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
    :class:`StoreOptions`. Ids are ints or strings.
    """

    def __init__(self, dim: int, metric: str = "cosine", backend: str | Backend | None = None,
                 index: str = "flat", index_options: dict | None = None,
                 path: str | os.PathLike | None = None, fsync: str = "every",
                 tiers: dict | TierOptions | None = None, **options: Any) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidInputError(f"dim must be a positive integer, got {dim!r}")
        name = metric.lower() if isinstance(metric, str) else metric
        if name not in SPLAT_METRICS:
            hint = " (splat scores need a distance; use IndexFlatIP for inner product)" \
                if name == "ip" else ""
            raise UnknownMetricError(f"unknown splat metric {metric!r}; expected one of "
                                     f"{SPLAT_METRICS}{hint}")
        unknown = set(options) - set(StoreOptions.__dataclass_fields__)
        if unknown:
            raise InvalidInputError(f"unknown store options {sorted(unknown)}; known: "
                                    f"{sorted(StoreOptions.__dataclass_fields__)}")
        self.options = StoreOptions(**options)
        self.options.check()
        if index not in ("flat", "hrm2"):
            raise InvalidInputError(f"index must be 'flat' or 'hrm2', got {index!r}")
        if index == "flat" and index_options:
            raise InvalidInputError("index_options apply to index='hrm2' only")
        self.index_kind = index
        self._index_opts = IndexOptions.parse(index_options) if index == "hrm2" else None
        self.dim = int(dim)
        self.metric = name
        self.backend = get_backend(backend)
        self._rates = self.options.rates(renormalize=name == "cosine")
        self._lam = math.log(2.0) / self.options.half_life
        self.clock = float(self.options.clock)
        # writes are refused once closed, when opened read-only, or after a checkpoint
        # failed past its commit (see _writes)
        self._closed = self._read_only = False
        self._failed: BaseException | None = None
        if fsync not in persist.FSYNC_POLICIES:
            raise InvalidInputError(f"fsync must be one of {persist.FSYNC_POLICIES}, "
                                    f"got {fsync!r}")
        self._index_options_raw = dict(index_options or {})
        self._tier_opts = TierOptions.parse(tiers)
        self._wal: persist.Wal | None = None
        self._dir_lock = _no_lock  # releases the directory's writer lock (a store on a path)
        self.path: Path | None = None if path is None else Path(path)
        self.generation = 0
        self._reset()
        if path is not None:
            target = Path(path)
            if (target / "manifest.json").exists():
                raise InvalidInputError(f"{target} already holds a store; use "
                                        "SplatStore.open(path)")
            self._hold_lock(persist.lock_directory(target))
            try:
                self.generation = 1
                self._write_generation(target, 1)
                self._wal = persist.Wal(target / persist.wal_name(1), 1, fsync, create=False)
            except BaseException:
                self._dir_lock()
                raise
    # ---- storage ------------------------------------------------------------------------
    def _reset(self) -> None:
        be = self.backend
        if getattr(self, "_rows", None) is not None:
            self._rows.close()
        own = self._tier_opts
        if self._index_opts is not None and own.bounded:
            # the hrm2 index's cell-ordered copy is the one searched: it takes the budgets;
            # the store's slot-ordered copy (exact search, feedback, checkpoints) stays in
            # the memory-mapped cold tier
            own = dataclasses.replace(own, hot_bytes=0, warm_bytes=0)
        self._rows = TierManager(self.dim, be, own, cold_dir=self.path)
        self._params = be.row_store(PARAM_WIDTH, like=self._rows.hot_store)
        self._sq = be.row_store(1) if be.uses_sqnorms else None
        self._ids: list[Any] = []  # per slot: external id, or None when free
        self._meta: list[dict | None] = []
        self._live = np.zeros(0, dtype=bool)
        self._dirty = np.zeros(0, dtype=bool)  # added or moved since the last merge pass
        self._hits = np.zeros(0, dtype=np.int64)
        self._slot: dict[Any, int] = {}
        self._alias: dict[Any, Any] = {}  # merged (or deduplicated) id -> survivor id
        self._hashes: dict[bytes, Any] = {}  # dedup: vector digest -> id that stored it
        self._next_id = 0
        self._columns = _filters.Columns()
        if getattr(self, "_index", None) is not None:
            self._index.close()
        self._index = StoreIndex(self.dim, be, self._index_opts, self._tier_opts,
                                 cold_dir=self.path) if self._index_opts is not None else None

    @property
    def slots(self) -> int:
        return len(self._ids)

    def __len__(self) -> int:
        return len(self._slot)

    def ids(self) -> list:
        """The ids of the stored splats, in slot order (merged and deduplicated aliases are
        not listed: they resolve to a listed id)."""
        return [i for i, live in zip(self._ids, self._live.tolist(), strict=True) if live]

    def __iter__(self):
        """Iterate over a snapshot of :meth:`ids` (writes during the loop do not affect it)."""
        return iter(self.ids())

    def __contains__(self, id_: Any) -> bool:
        try:
            return self._resolve(id_) in self._slot
        except InvalidInputError:
            return False

    def __repr__(self) -> str:
        return (f"SplatStore(dim={self.dim}, metric={self.metric!r}, size={len(self)}, "
                f"backend={self.backend.name!r})")

    def _stage_rows(self, staged):
        """Validated rows in the form the backend's row stores take."""
        return self.backend.stage_rows(staged)

    def _resolve(self, id_: Any) -> Any:
        key = _check_id(id_)
        return self._alias.get(key, key)

    # ---- add / get / delete -------------------------------------------------------------
    @_writes
    def add(self, vectors: Any, ids: Any = None, metadata: Any = None) -> list[Any]:
        """Insert or replace (upsert) splats; returns their ids.

        ``ids``: one int or str per vector (an id already stored is replaced: new vector,
        alpha 1, kappa ``kappa0``, new metadata), or None to generate int ids.
        ``metadata``: one JSON-serialisable dict per vector, one dict for all, or None.
        """
        x, sq, _ = prepare(_as_matrix(vectors), "vectors", self.metric, dim=self.dim)
        n = x.shape[0]
        keys = self._new_ids(n) if ids is None else _check_ids(ids, n)
        meta = _check_metadata(metadata, n)
        if n == 0:
            return []
        if self._wal is not None:
            self._journal("add", {"ids": keys, "meta": meta, "next_id": self._next_id},
                          [host_array(x, np.float32)])
        out = self._apply_add(x, sq, keys, meta)
        self._after_write()
        return out

    def _apply_add(self, x, sq, keys: list, meta: list[dict]) -> list[Any]:
        all_keys = list(keys)
        if self.options.dedup:  # identical vectors stored once; later ids become aliases
            kept, dup = self._dedup(x, keys)
            if dup:
                for k, target in dup:
                    self._alias[k] = target
                idx = np.asarray(kept, dtype=np.int64)
                x, sq = x[idx], sq[idx]
                keys, meta = [keys[i] for i in kept], [meta[i] for i in kept]
                if not keys:
                    return all_keys
        n = x.shape[0]
        be = self.backend
        existing = np.array([self._slot.get(k, -1) for k in keys], dtype=np.int64)
        old = np.flatnonzero(existing >= 0)
        new = np.flatnonzero(existing < 0)
        params = np.zeros((n, PARAM_WIDTH), dtype=np.float32)
        params[:, PARAM_ALPHA] = 1.0
        params[:, PARAM_KAPPA] = self.options.kappa0
        params[:, PARAM_TICK] = self.clock - self.options.clock
        x_rows = self._stage_rows(x)
        sq_rows = self._stage_rows(sq.reshape(-1, 1)) if self._sq is not None else None
        if old.size:  # replace in place
            slots = existing[old]
            self._rows.scatter(slots, host_array(x_rows)[old])
            self._rows.reset(slots)
            be.scatter_rows(self._params.view(), slots, params[old])
            if self._sq is not None:
                be.scatter_rows(self._sq.view(), slots, host_array(sq_rows)[old])
        first = self.slots
        if new.size:
            take = new if new.size < n else slice(None)
            self._rows.place(x_rows[take])
            self._params.append(params[take])
            if self._sq is not None:
                self._sq.append(sq_rows[take])
        # host bookkeeping, after the device work succeeded
        for j, i in enumerate(new):
            self._ids.append(keys[i])
            self._meta.append(meta[i])
            self._slot[keys[i]] = first + j
        for i in old:
            self._meta[existing[i]] = meta[i]
        for k in keys:
            self._alias.pop(k, None)  # re-adding a merged id gives it its own splat again
        grow = lambda a, v: np.concatenate([a, np.full(new.size, v, a.dtype)])  # noqa: E731
        self._live, self._dirty, self._hits = (grow(self._live, True), grow(self._dirty, True),
                                               grow(self._hits, 0))
        if old.size:
            self._dirty[existing[old]] = True
            self._hits[existing[old]] = 0
        set_slots = np.concatenate([existing[old], first + np.arange(new.size)])
        self._columns.on_set(set_slots, [meta[i] for i in old] + [meta[i] for i in new],
                             self.slots)
        if self._index is not None:
            hx = host_array(x_rows, np.float32)
            self._index.moved(existing[old], hx[old])
            self._index.added(first + np.arange(new.size), hx[new])
            self._sync_index()
        cap = self.options.capacity
        if self.options.auto_consolidate and cap is not None and len(self) > cap:
            self.consolidate(reason=f"size {len(self)} passed capacity {cap}")
        return all_keys

    def _dedup(self, x, keys: list) -> tuple[list[int], list[tuple]]:
        """Rows of an add that are new ids with a vector identical (bit for bit) to a stored
        splat's or to an earlier row of the same add: ``(rows to store, [(id, alias
        target)])``. The hash map is checked lazily: a target that was deleted or has moved
        since is not used."""
        host = host_array(x, np.float32)
        kept, dup, batch = [], [], {}
        for i, k in enumerate(keys):
            h = hashlib.blake2b(host[i].tobytes(), digest_size=16).digest()
            if k in self._slot:  # an upsert replaces its own splat
                kept.append(i)
                continue
            if h in batch:
                dup.append((k, batch[h]))
                continue
            target = self._hashes.get(h)
            s = self._slot.get(target, -1) if target is not None else -1
            if s >= 0 and np.array_equal(self._rows.gather(np.array([s]))[0], host[i]):
                dup.append((k, target))
                continue
            batch[h] = k
            self._hashes[h] = k
            kept.append(i)
        return kept, dup

    def _sync_index(self) -> None:
        """Train (or retrain) the HRM2 index when the store has reached its size for it."""
        if self._index is not None and self._index.needs_training(len(self)):
            live = np.flatnonzero(self._live)
            rows = self._rows.gather(live)
            self._index.train(np.ascontiguousarray(rows, np.float32), live)
            log.info("hrm2 index trained on %d splats", live.size)

    def _new_ids(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self._next_id not in self._slot and self._next_id not in self._alias:
                out.append(self._next_id)
            self._next_id += 1
        return out

    def get(self, ids: Any) -> list[dict | None]:
        """Records ``{"id", "vector", "alpha", "kappa", "metadata", "hits"}`` for each id
        (a merged id gives its survivor's record); None for an id the store does not hold."""
        keys = _id_list(ids)
        resolved = [self._resolve(k) for k in keys]
        slots = np.array([self._slot.get(k, -1) for k in resolved], dtype=np.int64)
        found = np.flatnonzero(slots >= 0)
        out: list[dict | None] = [None] * len(keys)
        if found.size:
            vec = self._rows.gather(slots[found])
            par = self.backend.gather_rows(self._params.view(), slots[found])
            for j, i in enumerate(found):
                s = int(slots[i])
                out[i] = {"id": self._ids[s], "vector": np.asarray(vec[j], np.float32),
                          "alpha": float(par[j, PARAM_ALPHA]),
                          "kappa": float(par[j, PARAM_KAPPA]),
                          "metadata": dict(self._meta[s]), "hits": int(self._hits[s])}
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
            mask = self._live & _filters.evaluate(filter, self._meta, self._columns)
            checked = [self._ids[s] for s in np.flatnonzero(mask)]
        else:
            checked = [_check_id(k) for k in _id_list(ids)]
        if self._wal is not None and checked:
            self._journal("delete", {"ids": checked}, [])
        out = self._apply_delete(checked)
        self._after_write()
        return out

    @_writes
    def update_metadata(self, ids: Any, metadata: Any) -> int:
        """Replace the metadata of stored splats without re-adding them (vectors, alpha,
        kappa and hits are kept): one dict per id, or one dict for all. Unknown ids raise
        ``UnknownIdError`` and nothing changes. Returns how many were updated."""
        keys = [_check_id(k) for k in _id_list(ids)]
        meta = _check_metadata(metadata, len(keys))
        for k in keys:
            if self._resolve(k) not in self._slot:
                raise UnknownIdError(f"unknown id {k!r}: the store holds no such splat")
        if not keys:
            return 0
        if self._wal is not None:
            self._journal("meta", {"ids": keys, "meta": meta}, [])
        self._apply_metadata(keys, meta)
        self._after_write()
        return len(keys)

    def _apply_metadata(self, keys: list, meta: list) -> None:
        slots = np.array([self._slot[self._resolve(k)] for k in keys], dtype=np.int64)
        for s, m in zip(slots.tolist(), meta, strict=True):
            self._meta[s] = m
        self._columns.on_set(slots, [self._meta[s] for s in slots.tolist()], self.slots)

    def _apply_delete(self, checked: list) -> int:
        slots = []
        for k in checked:
            if k in self._alias:
                del self._alias[k]
            elif k in self._slot:
                slots.append(self._slot[k])
        slots = np.unique(np.array(slots, dtype=np.int64))
        if slots.size:
            self._free(slots)
        return int(slots.size)

    def _free(self, slots: np.ndarray) -> None:
        zero = np.zeros((slots.size, PARAM_WIDTH), dtype=np.float32)
        self.backend.scatter_rows(self._params.view(), slots, zero)  # alpha 0: ignored
        gone = {self._ids[s] for s in slots}
        for s in slots:
            del self._slot[self._ids[s]]
            self._ids[s] = None
            self._meta[s] = None
        for a in [a for a, t in self._alias.items() if t in gone]:
            del self._alias[a]
        self._live[slots] = False
        self._dirty[slots] = False
        if self._index is not None:
            self._index.freed(slots)
        free = self.slots - len(self)
        if free > COMPACT_MIN_FREE and free * 4 > self.slots:
            self._compact()

    @_writes
    def compact(self) -> None:
        """Drop free slots from the device matrices (one pass; runs by itself when more
        than a quarter of the slots are free)."""
        if self._wal is not None and self.slots != len(self):
            self._journal("compact", {}, [])
        self._compact()
        self._after_write()

    def _compact(self) -> None:
        keep = np.flatnonzero(self._live)
        if keep.size == self.slots:
            return
        before = self.slots
        idx = self.backend.index_array(keep)
        self._rows.keep(keep)
        self._params.keep(idx)
        if self._sq is not None:
            self._sq.keep(idx)
        self._ids = [self._ids[s] for s in keep]
        self._meta = [self._meta[s] for s in keep]
        self._live, self._dirty, self._hits = (self._live[keep], self._dirty[keep],
                                               self._hits[keep])
        self._slot = {k: i for i, k in enumerate(self._ids)}
        self._columns.on_keep(keep)
        if self._index is not None:
            self._index.compacted(keep, before)

    # ---- search and energy --------------------------------------------------------------
    def _queries(self, queries: Any):
        q, _, _ = prepare(_as_matrix(queries), "queries", self.metric, dim=self.dim)
        return q

    def _sq_view(self):
        return self._sq.view()[:, 0] if self._sq is not None else None

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
        mask = self._live if filter is None else \
            self._live & _filters.evaluate(filter, self._meta, self._columns)
        matches = int(mask.sum())
        m, kk = q.shape[0], min(k, matches)
        if m == 0 or kk == 0:
            z = np.zeros((m, 0), dtype=np.float32)
            return SearchResult([[] for _ in range(m)], z, z.copy(), z.copy(),
                                [[] for _ in range(m)])
        be = self.backend
        mode = MODE_SPLAT if rank == "splat" else MODE_DISTANCE
        if self._index is not None and self._index.ready and not exact:
            keys, slots, d2 = self._index_search(q, kk, mode, mask, filter is not None)
        else:
            keys, slots, d2 = self._flat_search(q, kk, mode, mask, filter is not None)
        if mode == MODE_SPLAT:
            log_scores = -keys
        else:
            uniq, inv = np.unique(slots, return_inverse=True)
            p = be.gather_rows(self._params.view(), uniq)[inv.reshape(slots.shape)]
            with np.errstate(divide="ignore"):
                log_scores = (np.log(p[..., PARAM_ALPHA]) - p[..., PARAM_KAPPA] * d2)
        log_scores = log_scores.astype(np.float32)
        self._rows.touch(slots.ravel())
        self._maybe_rebalance()
        ids = [[self._ids[s] for s in row] for row in slots.tolist()]
        meta = [[dict(self._meta[s]) for s in row] for row in slots.tolist()]
        return SearchResult(ids, np.exp(log_scores), log_scores, d2.astype(np.float32), meta)

    def _flat_search(self, q, kk: int, mode: int, mask: np.ndarray, filtered: bool):
        params = self._masked_params(mask) if filtered else self._params.view()
        return self._topk_all(q, kk, mode, params)

    def _topk_all(self, q, k: int, mode: int, params):
        """Top-k over every slot (host ``keys, slots, d2``, best first, ties by slot): one
        kernel call on the dense matrix when every row is hot, else one per tier block,
        merged. Device memory running out shrinks the hot tier and retries."""
        return self._retry_oom(lambda: self._topk_blocks(q, k, mode, params))

    def _retry_oom(self, fn):
        return self._rows.retry_out_of_memory(fn, self._rebalance)

    def _kernel_blocks(self, params):
        """``(slots, mu, params, sqnorms)`` to run a kernel on, covering every slot: the
        dense matrix once (slots None) when every row is hot, else each tier block with its
        rows of ``params`` and ``||mu||^2``. Lazy: on cuda a block's buffer is reused two
        blocks later, so its kernels must be queued before the next block is asked for."""
        mu = self._rows.dense()
        if mu is not None:
            yield None, mu, params, self._sq_view()
            return
        host_params = host_array(self.backend.to_host(params), np.float32)
        sq = self._sq_view()
        for blk in self._rows.blocks():
            prm = self._rows.upload(host_params[blk.slots], like=blk.rows)
            bsq = None if sq is None else np.ascontiguousarray(sq[blk.slots])
            yield blk.slots, blk.rows, prm, bsq

    def _topk_blocks(self, q, k: int, mode: int, params):
        be = self.backend
        qn = to_native(be, q)
        parts = []
        for slots, mu, prm, sq in self._kernel_blocks(params):  # queued block by block ...
            out = be.splat_topk(qn, mu, prm, k if slots is None else min(k, slots.size), mode,
                                sqnorms=sq)
            parts.append((slots, out))
        host = []
        for bslots, (kb, ib, db) in parts:  # ... and read back once all are queued
            ib = np.asarray(be.to_host(ib))
            if bslots is not None:
                ib = np.where(ib >= 0, bslots[np.maximum(ib, 0)], -1)
            host.append((be.to_host(kb), ib, be.to_host(db)))
        return merge_by_key(host, k)

    def _index_search(self, q, kk: int, mode: int, mask: np.ndarray, filtered: bool):
        host_q = host_array(q, np.float32)

        def host_params():  # read only when the index's copy is stale, or for a filter
            p = np.array(self.backend.to_host(self._params.view()), np.float32)
            if filtered:
                p[~mask, PARAM_ALPHA] = 0.0
            return p

        keys, slots, d2 = self._index.search(host_q, kk, mode, host_params, filtered)
        short = np.flatnonzero((slots < 0).any(axis=1))
        if short.size:  # too few matches in the probed cells: exact for those queries
            fk, fs, fd = self._flat_search(host_q[short], kk, mode, mask, filtered)
            keys[short], slots[short], d2[short] = fk, fs, fd
        return keys, slots, d2

    def _masked_params(self, mask: np.ndarray):
        """A copy of params with alpha = 0 outside ``mask`` (O(slots) on the device)."""
        be = self.backend
        view = self._params.view()
        if self._rows.dense() is None:  # the tier blocks upload their own rows of it
            host = np.array(be.to_host(view))
            host[~mask, PARAM_ALPHA] = 0.0
            return host
        return be.scale_column(view, PARAM_ALPHA, mask.astype(np.float32))

    def energy(self, queries: Any, grad: bool = False) -> EnergyResult:
        """Energy of each query under the whole store (fused; O(queries + splats) memory),
        its confidence, and with ``grad=True`` ``dE/dx`` (for cosine, with respect to the
        normalised query)."""
        q = self._queries(queries)
        m = q.shape[0]
        if m == 0 or len(self) == 0:
            E = np.full(m, np.inf, dtype=np.float32)
            G = np.zeros((m, self.dim), dtype=np.float32) if grad else None
        else:
            E, G = self._retry_oom(lambda: self._energy_blocks(q, grad))
        with np.errstate(over="ignore"):
            conf = (1.0 / (1.0 + np.exp(E.astype(np.float64)))).astype(np.float32)
        return EnergyResult(E, conf, G)

    def _energy_blocks(self, q, grad: bool):
        """Energy (and gradient) over every slot: one call on the dense matrix, or per tier
        block combined as ``E = -log sum_b exp(-E_b)``, ``G = sum_b exp(E - E_b) G_b``."""
        be = self.backend
        qn = to_native(be, q)
        Es, Gs = [], []
        for _, mu, prm, sq in self._kernel_blocks(self._params.view()):
            out = be.energy(qn, mu, prm, grad=grad, sqnorms=sq)
            Es.append(out[0] if grad else out)
            Gs.append(out[1] if grad else None)
        Es = [np.asarray(be.to_host(e), dtype=np.float32) for e in Es]
        Gs = [np.asarray(be.to_host(g), dtype=np.float32) for g in Gs] if grad else None
        return combine_energies(Es, Gs)

    # ---- learning -----------------------------------------------------------------------
    @_writes
    def feedback(self, queries: Any, relevant: Any = None, irrelevant: Any = None) -> int:
        """Hebbian feedback by external id (SPEC section 2); returns the events applied.

        One event: a 1-D query with lists of ids. A batch: a 2-D array of queries with one
        list of relevant and one of irrelevant ids per row, applied in row order (the
        result is that of applying them one by one). An unknown id, or an id both relevant
        and irrelevant in one event, raises before anything changes.
        """
        q_in = _as_matrix(queries)
        single = np.ndim(queries) == 1 if not hasattr(queries, "ndim") else queries.ndim == 1
        q = self._queries(q_in)
        m = q.shape[0]
        rel = _per_event(relevant, m, single, "relevant")
        irr = _per_event(irrelevant, m, single, "irrelevant")
        out = self._apply_feedback(q, rel, irr)
        self._after_write()
        return out

    def _apply_feedback(self, q, rel: list[list], irr: list[list]) -> int:
        m = q.shape[0]
        ev_q, ev_rows, ev_sign = [], [], []
        for e in range(m):
            r_slots = self._slots_for(rel[e])
            i_slots = self._slots_for(irr[e])
            both = set(r_slots) & set(i_slots)
            if both:
                raise InvalidInputError(f"event {e}: ids {self._ids_of(both)} are both "
                                        "relevant and irrelevant")
            for s in r_slots:
                ev_q.append(e), ev_rows.append(s), ev_sign.append(1)
            for s in i_slots:
                ev_q.append(e), ev_rows.append(s), ev_sign.append(-1)
        if not ev_rows:
            return 0
        if self._wal is not None:  # validated: every id known, no id on both sides
            self._journal("feedback", {"rel": [list(r) for r in rel],
                                       "irr": [list(r) for r in irr]},
                          [host_array(q, np.float32)])
        plan = HebbianPlan.build(np.array(ev_q), np.array(ev_rows), np.array(ev_sign))
        be = self.backend
        mu = self._rows.dense()
        if mu is not None:
            be.hebbian(mu, self._params.view(), to_native(be, q), plan, self._rates)
        else:  # the touched rows only, wherever they live: gathered, updated, written back
            self._hebbian_gathered(q, plan)
        rel_rows = np.array(ev_rows)[np.array(ev_sign) > 0]
        moved = np.unique(rel_rows)
        self._rows.touch(moved)
        if moved.size:
            np.add.at(self._hits, rel_rows, 1)
            self._dirty[moved] = True
            if self._sq is not None or self._index is not None:
                rows = self._rows.gather(moved)
            if self._sq is not None:  # cpu: keep ||mu||^2 in step with the moved rows
                be.scatter_rows(self._sq.view(), moved,
                                np.einsum("ij,ij->i", rows, rows).reshape(-1, 1))
            if self._index is not None:  # re-assigned if mu crossed into another cell
                self._index.moved(moved, np.asarray(rows, np.float32))
        if self._index is not None:
            self._index.params_changed()
        touched = np.unique(plan.rows)
        alpha = be.gather_rows(self._params.view(), touched)[:, PARAM_ALPHA]
        if self.options.auto_consolidate and (alpha < self.options.alpha_prune).any():
            self._maybe_consolidate_for_alpha()
        return m

    def _hebbian_gathered(self, q, plan: HebbianPlan) -> None:
        be = self.backend
        rows = plan.rows
        mu = self._rows.upload(self._rows.gather(rows))
        prm = self._rows.upload(be.gather_rows(self._params.view(), rows), like=mu)
        local = HebbianPlan(np.arange(rows.size, dtype=np.int64), plan.starts, plan.counts,
                            plan.ev_query, plan.ev_sign)
        be.hebbian(mu, prm, to_native(be, q), local, self._rates)
        self._rows.scatter(rows, host_array(be.to_host(mu), np.float32))
        be.scatter_rows(self._params.view(), rows, host_array(be.to_host(prm), np.float32))

    def _slots_for(self, ids: list) -> list[int]:
        out = []
        for k in ids:
            key = self._resolve(k)
            s = self._slot.get(key)
            if s is None:
                raise UnknownIdError(f"unknown id {k!r}: the store holds no such splat")
            out.append(s)
        return list(dict.fromkeys(out))  # an id named twice in one event counts once

    def _ids_of(self, slots) -> list:
        return sorted((self._ids[s] for s in slots), key=repr)

    def _advance(self, now: float) -> None:
        if not isinstance(now, numbers.Real) or not math.isfinite(now):
            raise InvalidInputError(f"now must be a finite number, got {now!r}")
        if now < self.clock:
            raise InvalidInputError(f"now={now} is before the store's clock {self.clock}; "
                                    "time only moves forward")

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
        self._advance(now)
        elapsed = float(now) - self.clock
        if elapsed > MAX_DECAY_HALF_LIVES * self.options.half_life and not force:
            hint = (" now looks like wall-clock time; create the store with "
                    "clock=time.time() (or pass time since it was created)"
                    if now > 1e8 and self.clock < 1e8 else "")
            raise InvalidInputError(
                f"decay(now={now}) advances the clock by {elapsed / self.options.half_life:.3g}"
                f" half-lives: every alpha would be multiplied by about 0.{hint} Pass "
                "force=True if that is meant")
        if self._wal is not None:
            self._journal("decay", {"now": float(now)}, [])
        report = DecayReport(elapsed, float(math.exp(-self._lam * elapsed)),
                             self._apply_decay(now))
        if report.pruned:
            log.warning("decay(now=%s) pruned %d splats whose alpha fell under alpha_prune "
                        "(auto_consolidate; create the store with auto_consolidate=False to "
                        "keep every memory)", now, len(report.pruned))
        self._after_write()
        return report

    def _apply_decay(self, now: float) -> ConsolidationReport | None:
        if self.slots:
            self.backend.decay(self._params.view(), float(now) - self.options.clock, self._lam)
            if self._index is not None:
                self._index.params_changed()
        self.clock = float(now)
        if self.options.auto_consolidate:
            return self._maybe_consolidate_for_alpha()
        return None

    def _alpha(self) -> np.ndarray:
        return np.asarray(self.backend.to_host(self._params.view()))[:, PARAM_ALPHA]

    def _maybe_consolidate_for_alpha(self) -> None:
        alpha = self._alpha()
        live = alpha[self._live]
        total = float(live.sum())
        low = float(live[live < self.options.alpha_prune].sum())
        if total > 0 and low > self.options.prune_share * total:
            return self._consolidate(f"{low / total:.0%} of total alpha is under alpha_prune",
                                     alpha)
        return None

    @_writes
    def consolidate(self, reason: str = "manual") -> ConsolidationReport:
        """Prune splats with ``alpha < alpha_prune``, then merge pairs closer than
        ``merge_radius`` (mutually nearest pairs, found with the k-NN kernel, in rounds
        until none is left); merged ids resolve to the survivor."""
        if self._wal is not None:
            self._journal("consolidate", {"reason": str(reason)}, [])
        out = self._consolidate(reason, self._alpha())
        self._after_write()
        return out

    def _consolidate(self, reason: str, alpha: np.ndarray) -> ConsolidationReport:
        report = ConsolidationReport(before=len(self), reason=reason)
        prune = np.flatnonzero(self._live & (alpha < self.options.alpha_prune))
        if prune.size:
            report.pruned = [self._ids[s] for s in prune]
            self._free(prune)
        if self.options.merge_radius > 0:
            self._merge(report)
        self._dirty[:] = False
        report.after = len(self)
        log.info("consolidate (%s): pruned %d, merged %d, %d -> %d splats", reason,
                 len(report.pruned), len(report.merged), report.before, report.after)
        return report

    def _merge(self, report: ConsolidationReport) -> None:
        r2 = np.float32(self.options.merge_radius) ** 2
        for _ in range(MERGE_ROUNDS_MAX):
            cand = np.flatnonzero(self._dirty & self._live)
            if cand.size == 0 or len(self) < 2:
                return
            qrows = self._rows.gather(cand)
            kk = min(3, len(self))
            _, nb, d2 = self._topk_all(qrows, kk, MODE_DISTANCE, self._params.view())
            other = nb != cand[:, None]
            first = np.argmax(other, axis=1)  # nearest neighbour that is not the row itself
            j = nb[np.arange(cand.size), first]
            dj = d2[np.arange(cand.size), first]
            ok = other.any(axis=1) & (dj < r2) & (j >= 0)
            a, b, dist = cand[ok], j[ok], dj[ok]
            self._dirty[cand[~ok]] = False
            if a.size == 0:
                return
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            pairs, idx = np.unique(np.stack([lo, hi], 1), axis=0, return_index=True)
            dist = dist[idx]
            # accept a pair when it is the closest candidate pair of both its ends
            best = np.full(self.slots, np.inf)
            np.minimum.at(best, pairs[:, 0], dist)
            np.minimum.at(best, pairs[:, 1], dist)
            take = (best[pairs[:, 0]] == dist) & (best[pairs[:, 1]] == dist)
            pairs = pairs[take]
            used = np.zeros(self.slots, dtype=bool)  # exact ties: keep pairs disjoint
            keep = []
            for p, (s1, s2) in enumerate(pairs):  # over accepted pairs only, not splats
                if not used[s1] and not used[s2]:
                    used[s1] = used[s2] = True
                    keep.append(p)
            pairs = pairs[keep]
            report.rounds += 1
            self._merge_pairs(pairs, report)

    def _merge_pairs(self, pairs: np.ndarray, report: ConsolidationReport) -> None:
        be = self.backend
        s1, s2 = pairs[:, 0], pairs[:, 1]
        p1 = be.gather_rows(self._params.view(), s1)
        p2 = be.gather_rows(self._params.view(), s2)
        a1, a2 = p1[:, PARAM_ALPHA], p2[:, PARAM_ALPHA]
        first_wins = a1 >= a2
        surv = np.where(first_wins, s1, s2)
        gone = np.where(first_wins, s2, s1)
        m1 = self._rows.gather(s1).astype(np.float64)
        m2 = self._rows.gather(s2).astype(np.float64)
        w1, w2 = a1.astype(np.float64), a2.astype(np.float64)
        mu = (w1[:, None] * m1 + w2[:, None] * m2) / (w1 + w2)[:, None]
        if self.metric == "cosine":
            mu /= np.linalg.norm(mu, axis=1, keepdims=True)
        mu = mu.astype(np.float32)
        params = np.where(first_wins[:, None], p1, p2).astype(np.float32)
        params[:, PARAM_ALPHA] = a1 + a2
        params[:, PARAM_KAPPA] = np.minimum(p1[:, PARAM_KAPPA], p2[:, PARAM_KAPPA])
        self._rows.scatter(surv, mu)
        be.scatter_rows(self._params.view(), surv, params)
        if self._sq is not None:
            be.scatter_rows(self._sq.view(), surv, np.einsum("ij,ij->i", mu, mu).reshape(-1, 1))
        if self._index is not None:
            self._index.moved(surv, mu)
        for g, s in zip(gone.tolist(), surv.tolist(), strict=True):
            gid, sid = self._ids[g], self._ids[s]
            report.merged.append((gid, sid))
            for a in [a for a, t in self._alias.items() if t == gid]:
                self._alias[a] = sid
        self._hits[surv] += self._hits[gone]
        self._dirty[surv] = True
        gone_ids = [self._ids[g] for g in gone.tolist()]
        surv_ids = [self._ids[s] for s in surv.tolist()]
        self._free(np.sort(gone))  # may compact: slots change, ids do not
        for gid, sid in zip(gone_ids, surv_ids, strict=True):
            self._alias[gid] = sid

    # ---- persistence (SPEC section 5; the format is described in m2m_gpu/persist.py) -------
    def _journal(self, op: str, header: dict, arrays: list[np.ndarray]) -> None:
        """Log a validated change before it is applied (write-through stores only)."""
        self._wal.append(op, header, arrays)

    def _after_write(self) -> None:
        """After an acknowledged write: the automatic checkpoint (never an exception for
        the write that triggered it: the write is in the log already) and placement."""
        if self._wal is not None and self._wal.bytes > CHECKPOINT_BYTES:
            try:
                self.checkpoint()
            except OSError as exc:
                log.warning("%s: automatic checkpoint failed (%s); the log keeps every write "
                            "and the next write tries again", self.path, exc)
        self._maybe_rebalance()

    # ---- tiers (SPEC section 4; m2m_gpu/tiers.py) -----------------------------------------
    def _maybe_rebalance(self) -> None:
        if self._rows.due():
            self._rebalance()

    def _rebalance(self) -> dict:
        alpha = self._alpha() if self.slots else np.zeros(0, np.float32)
        return self._rows.rebalance(alpha, self._live)

    def rebalance(self) -> dict:
        """Run the tier placement pass now (it also runs every ``rebalance_every`` calls
        and whenever a tier is over budget); returns the splats moved per direction."""
        return self._rebalance()

    def _manifest(self) -> dict:
        return {"library": "m2m-gpu", "dim": self.dim, "dtype": "float32",
                "metric": self.metric, "index": self.index_kind,
                "index_options": self._index_options_raw,
                "options": dict(self.options.__dict__),
                "counts": {"slots": self.slots, "live": len(self),
                           "aliases": len(self._alias)}}

    def _write_generation(self, path: Path, generation: int) -> dict:
        be = self.backend
        n = self.slots
        mu = self._vector_blocks()
        params = np.asarray(be.to_host(self._params.view()), np.float32) if n else \
            np.zeros((0, PARAM_WIDTH), np.float32)
        flags = self._live.astype(np.uint8) | (self._dirty.astype(np.uint8) << 1)
        records = [None if k is None else [k, m] for k, m in zip(self._ids, self._meta,
                                                                  strict=True)]
        state = {"clock": self.clock, "next_id": self._next_id,
                 "aliases": [[a, t] for a, t in self._alias.items()]}
        return persist.write_snapshot(path, generation, self._manifest(),
                                      {"vectors": mu, "params": params, "hits": self._hits,
                                       "flags": flags}, records, state)

    def _vector_blocks(self, rows: int = 1 << 16):
        """Every slot's vector in slot order, in host blocks of at most ``rows`` rows."""
        for a in range(0, self.slots, rows):
            yield self._rows.gather(np.arange(a, min(self.slots, a + rows)))

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole store to a new directory (``SplatStore.open(path)`` reads it).
        The store itself is unchanged and keeps writing where it did before, if anywhere."""
        target = Path(path)
        if (target / "manifest.json").exists():
            raise InvalidInputError(f"{target} already holds a store; save to a new path")
        self._write_generation(target, 1)

    @_writes
    def checkpoint(self) -> None:
        """Fold the write-ahead log into the data files (a new generation; the old one is
        removed once the new manifest is committed)."""
        if self.path is None:
            raise InvalidInputError("this store is not opened on a path (use save(path), or "
                                    "SplatStore(..., path=...) / SplatStore.open(path))")
        old = self._wal
        old.sync()  # everything acknowledged is on disk before the new generation is made
        # If writing the new generation fails (disk full, read-only directory), nothing has
        # switched: the old generation and its log stay in use and the error propagates.
        manifest = self._write_generation(self.path, self.generation + 1)
        try:  # committed: from here the new generation is the store on disk
            self.generation += 1
            self._wal = None
            if self._rows.counts()[2]:  # cold rows are read from the new checkpoint now
                self._rows.rebase(persist.map_vectors(self.path / manifest["files"]["vectors"]
                                                      ["name"], self.slots, self.dim))
            self._wal = persist.Wal(self.path / persist.wal_name(self.generation),
                                    self.generation, old.fsync, create=False)
        except BaseException as exc:
            self._failed = exc  # no log to write through: refuse writes rather than lose them
            raise
        finally:
            old.close()

    def close(self) -> None:
        """Flush and close the log (a store on a path). The store can still be searched;
        every write after this raises (it could not be made durable)."""
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        self._dir_lock()
        self._closed = True

    def _hold_lock(self, fd: int) -> None:
        """Keep the directory lock ``fd`` until close(), or until this store is collected
        (a store dropped without close() must not lock its directory forever)."""
        self._dir_lock = weakref.finalize(self, persist.unlock_directory, fd)

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
        is loaded, the log replayed (a torn or corrupt tail is cut off, with a warning),
        every later change logged. ``verify`` checks the CRC32 of every data file
        (streamed). With tier budgets (``tiers``), the vectors file is memory-mapped as
        the cold tier and only the splats the budgets and policy place in the hot and warm
        tiers are read.

        ``mode="r"``: read-only. Nothing in the directory is created, cut or removed (no
        lock file, no log opened, a torn tail ignored rather than cut, the cold tier's
        scratch kept elsewhere), no writer lock is taken, and every write raises.

        Only a torn *last* record (what a crash leaves) is cut. A record that fails its
        check with more of the log after it is damage: ``StoreFormatError`` with nothing
        changed, or with ``repair=True`` the good records are replayed and the rest is
        moved aside to ``wal-<g>.log.corrupt-<n>``."""
        if mode not in ("a", "r"):
            raise InvalidInputError(f"mode must be 'a' (read and write) or 'r', got {mode!r}")
        root = Path(path)
        manifest = persist.read_manifest(root)
        if mode == "r":
            return cls._open_locked(root, manifest, None, backend, fsync, verify, tiers,
                                    False)
        lock = persist.lock_directory(root)  # before the log is replayed or cut
        try:
            return cls._open_locked(root, manifest, lock, backend, fsync, verify, tiers,
                                    repair)
        except BaseException:
            persist.unlock_directory(lock)
            raise

    @classmethod
    def _open_locked(cls, root, manifest, lock, backend, fsync, verify, tiers,
                     repair) -> SplatStore:
        """Load and replay; ``lock`` None: read-only (see ``open``)."""
        read_only = lock is None
        try:
            store = cls(manifest["dim"], metric=manifest["metric"], backend=backend,
                        index=manifest.get("index", "flat"),
                        index_options=manifest.get("index_options") or None,
                        fsync=fsync, tiers=tiers, **manifest["options"])
        except (KeyError, TypeError) as e:
            raise StoreFormatError(f"{root}/manifest.json: bad field ({e})") from None
        arrays, records, state = persist.read_snapshot(root, manifest, verify=verify)
        if not read_only:
            for stale in root.glob(f"{persist.SPILL_PREFIX}*"):  # an earlier process's scratch
                stale.unlink(missing_ok=True)
            store._rows.set_cold_dir(root)
            if store._index is not None:
                store._index.set_cold_dir(root)
        store._restore(arrays, records, state)
        gen = int(manifest["generation"])
        wal_path = root / persist.wal_name(gen)
        if not wal_path.exists():
            raise StoreFormatError(f"{wal_path}: missing")
        recs, good, size = persist.read_wal(wal_path, gen)
        if good < size and persist.damage_in_the_middle(wal_path, good):
            if read_only or not repair:
                raise StoreFormatError(
                    f"{wal_path}: a record at byte {good} fails its check and {size - good} "
                    "bytes follow it (damage, not a torn write); nothing was changed. "
                    "SplatStore.open(path, repair=True) replays the good records and moves "
                    f"the rest aside to {wal_path.name}.corrupt-<n>")
            aside = persist.move_aside(wal_path, good)
            log.warning("%s: a corrupt record at byte %d; %d records replayed, the %d bytes "
                        "from it on moved to %s (repair=True)", wal_path, good, len(recs),
                        size - good, aside)
            size = good
        for rec in recs:
            store._replay(rec)
        if good < size and read_only:
            log.warning("%s: ignored a torn or corrupt log tail (%d of %d bytes read, %d "
                        "records replayed; read-only, nothing cut)", wal_path, good, size,
                        len(recs))
        elif good < size:
            log.warning("%s: cut a torn or corrupt log tail (%d of %d bytes kept, %d records "
                        "replayed)", wal_path, good, size, len(recs))
            with open(wal_path, "r+b") as f:
                f.truncate(max(good, persist._WAL_HEAD.size))
                os.fsync(f.fileno())
        store.path, store.generation = root, gen
        if read_only:
            store._sync_index()
            store._read_only = True
            return store
        store._wal = persist.Wal(wal_path, gen, fsync, create=good < persist._WAL_HEAD.size)
        store._sync_index()
        store._hold_lock(lock)  # last: until here a failure releases it in open()
        return store

    def _restore(self, arrays: dict, records: list, state: dict) -> None:
        n = len(records)
        vectors = arrays["vectors"]  # a memory map of the checkpoint's vectors file
        step = 1 << 16
        if n:
            if self._rows.bounded:  # cold until the placement pass below reads some
                self._rows.adopt(vectors)
            if not self._rows.bounded or self._sq is not None:
                for a in range(0, n, step):  # one pass over the file
                    x = np.ascontiguousarray(vectors[a:a + step], np.float32)
                    if not self._rows.bounded:
                        self._rows.place(self._stage_rows(x))
                    if self._sq is not None:
                        self._sq.append(np.einsum("ij,ij->i", x, x).reshape(-1, 1))
            self._params.append(self._stage_rows(np.ascontiguousarray(arrays["params"],
                                                                        np.float32)))
        flags = np.asarray(arrays["flags"])
        self._live = (flags & 1).astype(bool)
        self._dirty = (flags & 2).astype(bool)
        self._hits = np.asarray(arrays["hits"], np.int64).copy()
        self._ids = [None if r is None else r[0] for r in records]
        self._meta = [None if r is None else r[1] for r in records]
        self._slot = {k: i for i, k in enumerate(self._ids) if k is not None}
        if len(self._slot) != int(self._live.sum()):
            raise StoreFormatError("records and live flags disagree")
        self._alias = {a: t for a, t in state["aliases"]}
        self._next_id = int(state["next_id"])
        self.clock = float(state["clock"])
        live = np.flatnonzero(self._live)
        self._columns.on_set(live, [self._meta[s] for s in live], self.slots)
        if self.options.dedup and live.size:
            for s_ in live.tolist():
                row = np.asarray(vectors[s_], np.float32)
                self._hashes[hashlib.blake2b(row.tobytes(), digest_size=16).digest()] = \
                    self._ids[s_]
        if self._rows.bounded:
            self._rebalance()

    def _replay(self, rec: persist.Record) -> None:
        h = rec.header
        if rec.op == "add":
            x = rec.arrays[0]
            sq = np.ones(x.shape[0], np.float32) if self.metric == "cosine" \
                else row_sqnorms(x, "vectors")
            self._apply_add(x, sq, list(h["ids"]), list(h["meta"]))
            self._next_id = int(h["next_id"])
        elif rec.op == "delete":
            self._apply_delete(list(h["ids"]))
        elif rec.op == "feedback":
            self._apply_feedback(rec.arrays[0], h["rel"], h["irr"])
        elif rec.op == "decay":
            self._apply_decay(float(h["now"]))
        elif rec.op == "consolidate":
            self._consolidate(h["reason"], self._alpha())
        elif rec.op == "compact":
            self._compact()
        elif rec.op == "meta":
            self._apply_metadata(list(h["ids"]), list(h["meta"]))
        else:
            raise StoreFormatError(f"unknown log record {rec.op!r}")

    def check_integrity(self) -> dict:
        """Check that the store's parts agree (ids, slots, flags, parameters, aliases, the
        index); raises :class:`IntegrityError` listing every problem, else returns counts."""
        problems = []
        n = self.slots
        lens = {"ids": len(self._ids), "meta": len(self._meta), "live": self._live.size,
                "dirty": self._dirty.size, "hits": self._hits.size,
                "mu": self._rows.n, "params": self._params.view().shape[0]}
        if len(set(lens.values())) != 1:
            problems.append(f"per-slot arrays of different lengths: {lens}")
        problems += self._rows.check()
        if n and lens["mu"] == n and lens["params"] == n and not problems:
            mu = np.concatenate(list(self._vector_blocks()))
            par = np.asarray(self.backend.to_host(self._params.view()))
            live = self._live
            if not np.isfinite(mu[live]).all() or not np.isfinite(par[live]).all():
                problems.append("non-finite vectors or parameters in live slots")
            if (par[~live, PARAM_ALPHA] != 0).any():
                problems.append("free slots with alpha != 0")
            if (par[live, PARAM_ALPHA] < 0).any():
                problems.append("negative alpha")
            if self.metric == "cosine" and live.any():
                norms = np.linalg.norm(mu[live], axis=1)
                if np.abs(norms - 1).max() > 1e-3:
                    problems.append("cosine store with vectors off the unit sphere")
        for s, k in enumerate(self._ids):
            if (k is None) == bool(s < self._live.size and self._live[s]):
                problems.append(f"slot {s}: id {k!r} but live={bool(self._live[s])}")
                break
        if any(self._slot.get(k) != s for s, k in enumerate(self._ids) if k is not None) or \
                len(self._slot) != int(self._live.sum()):
            problems.append("id -> slot map disagrees with the slots")
        dangling = [a for a, t in self._alias.items() if t not in self._slot]
        if dangling:
            problems.append(f"aliases to missing ids: {dangling[:5]}")
        if self._index is not None and self._index.ready:
            h = self._index.hrm2
            pos = h.positions_of(np.flatnonzero(self._live))
            if (pos < 0).any() or (~h.dead).sum() != len(self):
                problems.append("the hrm2 index does not hold every live splat once")
        if problems:
            raise IntegrityError("; ".join(problems))
        return {"slots": n, "live": len(self), "aliases": len(self._alias)}

    # ---- introspection ------------------------------------------------------------------
    def stats(self) -> dict:
        """Counts, alpha and kappa distributions, backend and bytes on the device."""
        par = np.asarray(self.backend.to_host(self._params.view()))[self._live] \
            if self.slots else np.zeros((0, PARAM_WIDTH), np.float32)

        def dist(v: np.ndarray) -> dict:
            if v.size == 0:
                return {}
            p = np.percentile(v, [0, 10, 50, 90, 100])
            return {"min": float(p[0]), "p10": float(p[1]), "median": float(p[2]),
                    "p90": float(p[3]), "max": float(p[4]), "mean": float(v.mean())}

        nbytes = self._rows.nbytes(HOT) + self._params.nbytes + \
            (self._sq.nbytes if self._sq else 0)
        if self._index is not None:  # the index's hot copy of the vectors
            nbytes += self._index.hrm2.tiers.nbytes(HOT)
        return {
            "count": len(self), "slots": self.slots, "free_slots": self.slots - len(self),
            "aliases": len(self._alias), "dim": self.dim, "metric": self.metric,
            "alpha": dist(par[:, PARAM_ALPHA]), "kappa": dist(par[:, PARAM_KAPPA]),
            "alpha_total": float(par[:, PARAM_ALPHA].sum()) if par.size else 0.0,
            "below_alpha_prune": int((par[:, PARAM_ALPHA] < self.options.alpha_prune).sum()),
            "backend": self.backend.name, "device": self.backend.info.device,
            "device_bytes": int(nbytes), "clock": self.clock,
            "index": self._index.stats() if self._index is not None else {"kind": "flat"},
            "tiers": self._rows.stats(),
            "transfers": self.backend.transfers.snapshot(),
        }


# ---- argument checks ---------------------------------------------------------------------------
def _as_matrix(obj: Any) -> Any:
    """A 1-D vector becomes one row; anything else is passed on as it is."""
    if hasattr(obj, "ndim") and obj.ndim == 1:
        return obj.reshape(1, -1)
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], numbers.Number):
        return [list(obj)]
    return obj


_INT64 = np.iinfo(np.int64)


def _check_id(id_: Any) -> Any:
    if isinstance(id_, (bool, np.bool_)):
        raise InvalidInputError(f"ids must be ints or strings, got {id_!r}")
    if isinstance(id_, (int, np.integer)):
        if not _INT64.min <= int(id_) <= _INT64.max:
            raise InvalidInputError(f"int ids must fit in int64, got {int(id_)}")
        return int(id_)
    if isinstance(id_, str):
        return id_
    raise InvalidInputError(f"ids must be ints or strings, got {type(id_).__name__} {id_!r}")


def _is_single_id(obj: Any) -> bool:
    return isinstance(obj, (int, np.integer, str)) and not isinstance(obj, bool)


def _id_list(obj: Any, what: str = "ids") -> list:
    """One id, or an iterable of ids, as a list. Objects that iterate but are not lists of
    ids are refused: bytes would be taken as a sequence of small ints, a dict as its keys."""
    if _is_single_id(obj):
        return [obj]
    if obj is None or isinstance(obj, (bytes, bytearray, memoryview, dict, float)):
        raise InvalidInputError(f"{what} must be an int or str id or a list of them, got "
                                f"{type(obj).__name__} {obj!r:.60}")
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
        if _is_single_id(obj):
            return [obj]
    try:
        return list(obj)
    except TypeError:
        raise InvalidInputError(f"{what} must be an int or str id or a list of them, got "
                                f"{type(obj).__name__}") from None


def _check_ids(ids: Any, n: int) -> list:
    ids = [_check_id(i) for i in _id_list(ids)]
    if len(ids) != n:
        raise InvalidInputError(f"got {len(ids)} ids for {n} vectors")
    if len(set(ids)) != len(ids):
        raise InvalidInputError("ids repeat within one add(); each id may appear once")
    return ids


def _check_metadata(metadata: Any, n: int) -> list[dict]:
    if metadata is None:
        return [{} for _ in range(n)]
    if isinstance(metadata, dict):
        metadata = [metadata] * n
    metadata = list(metadata)
    if len(metadata) != n:
        raise InvalidInputError(f"got {len(metadata)} metadata records for {n} vectors")
    out = []
    for i, m in enumerate(metadata):
        if m is None:
            m = {}
        if not isinstance(m, dict):
            raise InvalidInputError(f"metadata {i} must be a dict, got {type(m).__name__}")
        try:
            out.append(json.loads(json.dumps(_plain(m, i))))  # a deep copy, and JSON-safe
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata {i} is not JSON-serialisable: {exc}") from exc
    return out


def _plain(value: Any, i: int) -> Any:
    """Metadata with NumPy scalars as the Python numbers they are, and numbers a filter
    could not compare refused (an int beyond float range used to break every later filter
    on its key, for good)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {k: _plain(v, i) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, i) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise InvalidInputError(f"metadata {i}: the int {str(value)[:20]}... is beyond "
                                    "float range; filters could not compare it") from None
    return value


def _per_event(ids: Any, m: int, single: bool, what: str) -> list[list]:
    if ids is None:
        return [[] for _ in range(m)]
    if single:
        return [_id_list(ids, what)]
    ids = _id_list(ids, what)
    if len(ids) != m:
        raise InvalidInputError(f"{what}: got {len(ids)} lists for {m} queries")
    return [_id_list(x, what) for x in ids]
