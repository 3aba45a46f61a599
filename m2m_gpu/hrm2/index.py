"""``IndexHRM2``: the FAISS-shaped approximate index over :class:`~.core.HRM2`."""

from __future__ import annotations

import numpy as np

from ..backends import Backend
from ..codecs import Codec
from ..errors import InvalidInputError
from ..inputs import check_count, check_ids, check_k, check_result_size
from ..locking import read_then_place, shared, thread_safe, unlocked
from ..tensor import host_array
from ..tiers import TierOptions
from .calibrate import REGROW, calibrate, held_out
from .core import HRM2
from .mips import MipsLift
from .search import RERANK, ProbeReport
from .train import REFINE_ITERS

_F32 = np.dtype(np.float32)


@thread_safe
class IndexHRM2:
    """A FAISS-shaped approximate index over HRM2 (``train``, ``add``, ``add_with_ids``,
    ``search``, ``remove_ids``, ``reset``, ``ntotal``, ``is_trained``).

    ``metric``: ``"l2"`` (D = squared distance) or ``"cosine"`` (D = similarity, rows and
    queries normalised). Probing: ``p1`` coarse and ``p2`` fine cells (None: the defaults
    of :func:`default_probes`); ``nprobe`` is FAISS's name for ``p2``. ``adaptive=True``
    turns on the early stop; ``last_report`` says what each query of the last search
    scanned.
    ``target_recall``: after the adds that change its size by more than a quarter, the
    index sets ``nprobe`` to the smallest value whose recall@10 on a held-out sample of its
    training rows reaches the target (``calibration`` says what was measured; see
    :mod:`.calibrate`; ``calibrate()`` runs it on demand).
    ``codec``: ``"fp16"`` or ``"sq8"`` (:mod:`m2m_gpu.codecs`) keeps a compressed copy of
    every row, held whole on the device, and scans it instead of the float32 rows; the best
    ``rerank * k`` rows per query (FAISS's ``k_factor``) are then ranked again exactly on
    their float32 rows, from whatever tier holds them. ``"pcaN,sq8"`` / ``"pcaN,fp16"``
    code each row's ``N`` leading principal coordinates instead: a scan reads ``N / d``
    of the values, and needs a deeper ``rerank`` (4 to 8) for the same recall. SQ8's
    ranges and the principal directions are trained with the centroids.
    ``spill=True`` (with a codec) also files each row's code in a second cell, chosen as
    SOAR does (:meth:`~.routing.Router.second_cells`) at each full re-layout: a row missed
    by a query whose nearest centroids point away from it is often found in its second
    cell, so the same recall needs far fewer probed cells, at the cost of a second copy of
    the codes (not of the float32 rows). A row found in both cells counts once.
    ``refine_iters``: joint Lloyd iterations over all fine centroids after the two levels
    of k-means (default 3; 0 skips them: a faster build, less recall per scanned row).
    ``tiers``: byte budgets of the memory tiers for the index's rows
    (:class:`m2m_gpu.tiers.TierOptions`; default: all on the device). Hot cells are scanned
    in place, probed rows that are not hot are fetched to the device per search, and the
    placement policy counts the rows of every probed cell as accessed. Searches move no
    row: the placement pass runs after a write (``add``, ``add_with_ids``,
    ``remove_ids``) when it is due, or on :meth:`rebalance`.

    One query is a first-class case: on the cpu backend with compiled loops and every row
    hot, a float32 C-contiguous ``(1, d)`` query under l2 with fixed probing goes from
    :meth:`search` to one compiled call (routing, the scan of the float32 rows or of the
    codes with their exact re-rank, ids and report), with the batch path's answer.

    Searches may run in several threads at once (``last_report`` is then that of the last
    one to finish); writes must not overlap a search or each other.
    """

    def __init__(self, d: int, n1: int | None = None, n2: int | None = None,
                 metric: str = "l2", backend: str | Backend | None = None, *, seed: int = 0,
                 p1: int | None = None, p2: int | None = None, adaptive: bool = False,
                 ratio: float | None = None, tiers: dict | TierOptions | None = None,
                 target_recall: float | None = None, codec: str | None = None,
                 rerank: int = RERANK, refine_iters: int = REFINE_ITERS,
                 spill: bool = False) -> None:
        from ..errors import UnknownMetricError

        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InvalidInputError(f"dimension d must be a positive integer, got {d!r}")
        from ..inputs import check_metric

        metric = check_metric(metric)
        if metric not in ("l2", "ip", "cosine"):
            raise UnknownMetricError(f"IndexHRM2 supports 'l2', 'ip' and 'cosine', got "
                                     f"{metric!r}")
        self.d, self.metric = int(d), metric
        self._lift = MipsLift() if metric == "ip" else None  # ip: an L2 index on d + 1
        from ..codecs import check_name

        self._codec = check_name(codec, self.d)
        self.rerank = rerank
        if isinstance(refine_iters, bool) or not isinstance(refine_iters, (int, np.integer)) \
                or refine_iters < 0:
            raise InvalidInputError(f"refine_iters must be an integer >= 0, got "
                                    f"{refine_iters!r}")
        self.hrm2 = HRM2(self.d + (metric == "ip"), backend, n1, n2, seed=seed,
                         tiers=TierOptions.parse(tiers), codec=self._codec,
                         refine_iters=int(refine_iters), spill=spill)
        self._next_id = 0  # one past the largest id ever held: add() never reuses an id
        self.p1, self.p2, self.adaptive, self.ratio = p1, p2, adaptive, ratio
        self.last_report: ProbeReport | None = None
        if target_recall is not None and not (isinstance(target_recall, (int, float)) and
                                              0 < target_recall <= 1):
            raise InvalidInputError(f"target_recall must be in (0, 1], got {target_recall!r}")
        self.target_recall = target_recall
        self.calibration = None  # hrm2.calibrate.Calibration, once measured
        self._sample: np.ndarray | None = None  # held-out training rows, for calibration
        self._seed = seed

    @property
    def backend(self) -> Backend:
        return self.hrm2.backend

    @property
    def is_trained(self) -> bool:
        return self.hrm2.trained

    @property
    def metric_type(self) -> int:
        """FAISS's metric constant: METRIC_L2 (1), or METRIC_INNER_PRODUCT (0) for cosine."""
        from ..inputs import METRIC_INNER_PRODUCT, METRIC_L2

        return METRIC_L2 if self.metric == "l2" else METRIC_INNER_PRODUCT

    @property
    def nlist(self) -> int | None:
        """The number of (fine) cells, IVF's lists; None before training."""
        return self.hrm2.centroids.cells if self.is_trained else None

    @classmethod
    def from_nlist(cls, d: int, nlist: int, metric: str = "l2", **kwargs) -> IndexHRM2:
        """An index of about ``nlist`` fine cells, as ``faiss.IndexIVFFlat(q, d, nlist)``
        would have lists: ``n1 = round(sqrt(nlist))`` coarse cells of ``nlist / n1`` fine
        cells each."""
        from ..inputs import check_count

        nlist = check_count("nlist", nlist)
        n1 = max(1, int(round(nlist ** 0.5)))
        return cls(d, n1, max(1, int(round(nlist / n1))), metric, **kwargs)

    def __reduce__(self):
        from ..serialize import _from_bytes, index_bytes

        return _from_bytes, (index_bytes(self),)

    @property
    def ntotal(self) -> int:
        return self.hrm2.ntotal

    @property
    def nprobe(self) -> int:
        return self.probes()[1]

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.p2 = value

    @property
    def codec(self) -> str | None:
        """``"fp16"``, ``"sq8"`` or None (fixed when the index is made)."""
        return self._codec

    @property
    def spill(self) -> bool:
        """Whether each row's code is also held in a second cell (SOAR spilling)."""
        return self.hrm2.spill

    @property
    def rerank(self) -> int:
        """With a codec: candidates re-ranked exactly per result wanted."""
        return self._rerank

    @rerank.setter
    def rerank(self, value: int) -> None:
        self._rerank = check_count("rerank", value)

    @property
    def p1(self) -> int | None:
        return self._p1

    @p1.setter
    def p1(self, value: int | None) -> None:
        self._p1 = check_count("p1", value, allow_none=True)

    @property
    def p2(self) -> int | None:
        return self._p2

    @p2.setter
    def p2(self, value: int | None) -> None:
        self._p2 = check_count("p2 (nprobe)", value, allow_none=True)

    @shared
    def probes(self) -> tuple[int, int]:
        if not self.is_trained:
            return 0, 0
        return self.hrm2.probes(self.p1, self.p2)

    @shared
    def __len__(self) -> int:
        return self.ntotal

    def _rows(self, x, what="vectors"):
        from ..inputs import prepare

        rows, _, _ = prepare(x, what, self.metric, dim=self.d)
        return host_array(rows)

    def _lifted(self, rows: np.ndarray) -> np.ndarray:
        """Rows as the inner HRM2 holds them: lifted under ip (raising M first if a row
        is longer than every row so far: the stored rows are lifted again)."""
        if self._lift is None:
            return rows
        grow = self._lift.needs(rows)
        if grow is not None:
            h = self.hrm2
            live = h.live_positions() if h.ntotal else np.zeros(0, np.int64)
            held = self._lift.strip(h.rows_at(live)) if live.size else None
            held_ids = h.ids[live].copy() if live.size else None
            self._lift.norm = grow
            lifted = self._lift.rows(rows)
            again = None if held is None else self._lift.rows(held)
            if held is not None or h.layout.codec is not None:
                h.clear_rows()
            if h.layout.codec is not None:  # the lift coordinate's range changed
                h.layout.set_codec(Codec.train(
                    h.layout.codec.spec, lifted if again is None else np.vstack([again, lifted])))
            if again is not None:
                self._add(again, held_ids)
            return lifted
        return self._lift.rows(rows)

    def train(self, x) -> None:
        """Train the two levels of centroids on ``x``. On an index that already holds
        vectors this retrains and lays every stored vector out again in the new cells,
        keeping its id (FAISS would keep the old assignment; HRM2's cells are its layout)."""
        rows = self._rows(x)  # validated before anything changes
        h = self.hrm2
        held_ids = held = None
        if h.ntotal:
            live = h.live_positions()
            held, held_ids = h.rows_at(live), h.ids[live].copy()
            h.clear_rows()
        if self._lift is not None:  # M from the training rows and every row held
            plain = held if held is None else self._lift.strip(held)
            self._lift.norm = None
            self._lift.norm = self._lift.needs(rows if plain is None else
                                               np.vstack([rows, plain]))
            held = None if plain is None else self._lift.rows(plain)
            rows = self._lift.rows(rows)
        if self.target_recall is not None:
            self._sample = held_out(rows if self._lift is None else self._lift.strip(rows),
                                    self._seed)
        h.train(rows)
        if held is not None and held.shape[0]:
            self._add(held, held_ids)

    def copy_training(self, other: IndexHRM2) -> None:
        """Take ``other``'s trained centroids instead of training (no k-means): for the
        same data held in another layout or tier budget, or on another backend. Only an
        empty index can take them."""
        if other.d != self.d or not other.is_trained:
            raise InvalidInputError(f"copy_training needs a trained index of d={self.d}")
        if self.ntotal:
            raise InvalidInputError("copy_training needs an empty index (reset() first)")
        self.hrm2.set_centroids(other.hrm2.centroids.copy())
        theirs = other.hrm2.layout.codec
        if self.codec is not None and theirs is not None and theirs.spec == self.codec and \
                theirs.d_in == self.hrm2.d:  # SQ8's ranges, the projection: theirs
            self.hrm2.layout.set_codec(theirs)

    def _need_trained(self) -> None:
        if not self.hrm2.trained:
            raise InvalidInputError("IndexHRM2 must be trained (train(x)) before add/search")

    def add(self, x) -> None:
        """Sequential ids from one past the largest id held so far: never reused after
        ``remove_ids`` (see ``IndexFlat.add``)."""
        self._need_trained()
        rows = self._rows(x)
        self._add(self._lifted(rows), np.arange(self._next_id, self._next_id + rows.shape[0]))

    def add_with_ids(self, x, ids) -> None:
        self._need_trained()
        rows = self._rows(x)
        ids = np.asarray(ids)
        if ids.shape != (rows.shape[0],):
            raise InvalidInputError(f"ids must be {rows.shape[0]} integers, got {ids.shape}")
        self._add(self._lifted(rows), check_ids(ids))

    def _add(self, rows: np.ndarray, ids: np.ndarray) -> None:
        if ids.shape != (rows.shape[0],):
            raise InvalidInputError(f"ids must be {rows.shape[0]} integers, got {ids.shape}")
        ids = check_ids(ids)
        if rows.shape[0] == 0:
            return
        self.hrm2.add(rows, ids)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        self.hrm2.rebalance_if_due()
        self._calibrate_if_due()

    def _calibrate_if_due(self) -> None:
        if self.target_recall is None or self._sample is None or not self.ntotal:
            return
        cal = self.calibration
        if cal is None or abs(self.ntotal - cal.ntotal) > REGROW * cal.ntotal:
            self.calibrate()

    def calibrate(self, queries=None, k: int = 10):
        """Set ``nprobe`` to the smallest value whose recall@k on ``queries`` (default:
        the held-out training sample) reaches ``target_recall`` (default 0.95); returns
        the :class:`~.calibrate.Calibration`."""
        self._need_trained()
        q = self._sample if queries is None else self._rows(queries, "queries")
        if q is None:
            raise InvalidInputError("calibrate() needs queries: this index kept no sample "
                                    "(it was trained without target_recall)")
        self.calibration = calibrate(self, q, self.target_recall or 0.95, k)
        self.p2 = self.calibration.nprobe
        return self.calibration

    def remove_ids(self, ids) -> int:
        drop = np.flatnonzero(np.isin(self.hrm2.ids, np.asarray(ids).ravel()))
        if drop.size:
            self.hrm2.remove_positions(drop)
            self.hrm2.rebalance_if_due()
        return int(drop.size)

    def reset(self) -> None:
        self.hrm2.clear_rows()  # the next add lays the rows out again
        self._next_id = 0

    @shared
    def rebalance_due(self) -> bool:
        """Whether the tier placement pass is due (``rebalance_every`` searches since the
        last one, or the hot tier over its budget after the device ran out of memory)."""
        return self.hrm2.rebalance_due()

    def rebalance(self) -> dict:
        """Place the rows by the tier policy now (a write: no search may run meanwhile);
        returns the rows moved per direction."""
        return self.hrm2.rebalance()

    @unlocked
    def search(self, x, k: int, *, params=None, D=None, I=None):  # noqa: E741 - FAISS's
        """``(D, I)`` of the ``k`` nearest stored vectors per query row, FAISS-style.
        ``params``: an object with ``nprobe`` (FAISS's ``SearchParametersIVF``) sets the
        probes of this call only; ``D`` / ``I`` are filled if given."""
        p2 = getattr(params, "nprobe", None)
        if params is not None and p2 is None:
            raise InvalidInputError("IndexHRM2.search params take nprobe (like FAISS's "
                                    "SearchParametersIVF)")
        p2 = None if p2 is None else check_count("nprobe", p2)
        Dn, In = self._search_locked(x, k, p2)
        if D is None and I is None:
            return Dn, In
        from ..index import _into

        return _into(Dn, D), _into(In, I)

    def _search_locked(self, x, k: int, p2: int | None):
        """``(D, I)`` of the ``k`` nearest stored vectors per query row, FAISS-style.
        Searches run side by side (read lock); a tier placement pass that has fallen due
        runs after, under the write lock."""
        return read_then_place(self, lambda: self._search(x, k, p2), self.hrm2.rebalance_due,
                               self.rebalance)

    def _search(self, x, k: int, p2_call: int | None = None):
        k = check_k(k)
        one = self._one_query_for(x)
        if one is not None:  # one query, first-class: one compiled call, few steps
            check_result_size(1, k, self.ntotal)
            p1, p2 = self.hrm2.probes(self.p1, self.p2 if p2_call is None else p2_call)
            found = one(x, k, p1, p2, self.rerank)
            if found is not None:  # else a value is NaN, inf or huge: see _rows below
                d2, _, ids, self.last_report = found
                return d2, ids
        self._need_trained()
        q = self._rows(x, "queries")
        m = q.shape[0]
        check_result_size(m, k, self.ntotal)
        if m == 0 or self.ntotal == 0:
            from ..knn import empty_result

            D, I = empty_result(m, k, "l2" if self.metric == "l2" else "ip")
            self.last_report = ProbeReport(np.zeros(m, np.int64), np.zeros(m, np.int64))
            return D, I
        p1, p2 = self.hrm2.probes(self.p1, self.p2 if p2_call is None else p2_call)
        keys, pos, d2, report = self.hrm2.search(
            q if self._lift is None else self._lift.queries(q), k, p1, p2,
            adaptive=self.adaptive, ratio=self.ratio, rerank=self.rerank)
        self.last_report = report
        I = self.hrm2.ids_of(pos)
        if self.metric == "l2":
            return d2.astype(np.float32, copy=False), I
        pad = pos < 0
        if self._lift is not None:
            return np.where(pad, -np.inf, self._lift.similarity(q, d2)).astype(
                np.float32), I
        D = np.where(pad, -np.inf, 1.0 - d2 / 2.0).astype(np.float32)
        return D, I

    def _one_query_for(self, x):
        """The single-query search (:meth:`HRM2.one_query`) when ``x`` is one query it
        takes as it is: a float32 C-contiguous NumPy row of this index's dimension, under
        l2, with fixed probing and rows held (so trained). Else None: the general path
        converts, validates and searches."""
        if type(x) is not np.ndarray or x.dtype is not _F32 or x.shape != (1, self.d) or \
                not x.flags.c_contiguous or self.metric != "l2" or self.adaptive:
            return None
        return self.hrm2.one_query()
