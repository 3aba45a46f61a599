"""HRM2: hierarchical routing over two levels of k-means (SPEC section 3).

``n1`` coarse centroids over the data; ``n1 * n2`` fine centroids in all, each coarse cell
getting a share in proportion to its rows (so fine cells are of similar size where the data
is dense and where it is sparse), trained by k-means on that cell's rows and then refined
together (``REFINE_ITERS`` Lloyd iterations over all fine centroids, each fine centroid
joining its nearest coarse cell), so that fine cells follow the data, not the coarse
boundaries.
Rows are stored on the device grouped by fine cell, so a probe reads one contiguous range.
A query scores the coarse centroids, keeps the best ``p1`` coarse cells, scores their fine
centroids, keeps the best ``p2`` fine cells, and scans their rows exactly
(``Backend.scan_cells``; on cpu a compiled loop that reads each probed cell once for
all the queries of a batch that probe it).

Adaptive probing (``adaptive=True``): the fine cells are scanned nearest first in two
rounds; after the first quarter, a cell is skipped when it cannot hold anything better
than the query's current k-th result (lower bound ``(|q - c| - radius_c)^2`` from the
cell's radius: exact for l2), or when its centroid is more than ``ratio`` times farther than
the nearest one (the query sits deep inside its cell). Every search reports how many cells
and vectors each query scanned.

Adds go to their nearest fine cell at once, into an overflow region kept sorted by cell
(each cell = its main range + its overflow range). When the overflow passes
``REBUILD_OVERFLOW`` of the rows, the layout is rebuilt; when the largest cell passes
``REBUILD_IMBALANCE`` times the mean, the centroids are retrained too.

Defaults from n (``default_shape``): about ``4 sqrt(n)`` fine cells in total (the usual IVF
rule), as ``n1 = round(sqrt(4 sqrt(n)))`` coarse cells and ``n2 = n1`` fine cells per coarse
cell on average;
``p2 = max(16, total // 256)`` (recall@10 about 0.99 on the clustered benchmark data at
100K and 1M) and ``p1 = clamp(ceil(16 p2 / n2), max(2, n1 // 8), n1)`` (about 16 fine
candidates per fine cell probed: on real embeddings a query's best fine cells are spread
over many coarse cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backends import Backend, _jit, get_backend
from .backends.base import MODE_DISTANCE, PARAM_ALPHA, PARAM_KAPPA, PARAM_WIDTH
from .kmeans import kmeans, rng_for
from .tensor import host_array

REBUILD_OVERFLOW = 0.25  # share of rows living in the overflow region before a re-layout
REBUILD_IMBALANCE = 8.0  # largest cell / mean cell size before the centroids are retrained
MIN_ROWS_PER_FINE_CELL = 8
REFINE_ITERS = 3  # Lloyd iterations over all fine centroids together after the two levels
ASSIGN_P1_MIN = 4  # a row's fine cell is searched in at least this many coarse cells


def default_shape(n: int) -> tuple[int, int]:
    total = max(1, int(round(4 * math.sqrt(max(n, 1)))))
    n1 = max(1, int(round(math.sqrt(total))))
    return n1, max(1, total // n1)


def default_probes(n1: int, n2: int, p2: int | None = None) -> tuple[int, int]:
    """``(p1, p2)``: ``p2`` (when not given) ``max(16, n1 n2 / 256)``; ``p1`` enough coarse
    cells to offer about 16 fine candidates per probed fine cell, ``ceil(16 p2 / n2)``,
    at least ``max(2, n1 / 8)``, at most ``n1``."""
    p2 = p2 or max(16, (n1 * n2) // 256)
    p1 = min(n1, max(2, n1 // 8, -(-16 * p2 // max(1, n2))))
    return p1, p2


def split_cells(sizes: np.ndarray, total: int) -> np.ndarray:
    """Fine cells per coarse cell: ``total`` in all (more only if there are more non-empty
    coarse cells than that), in proportion to ``sizes``, at least one per non-empty cell;
    the remainders go to the largest fractional parts (ties: lower index)."""
    sizes = np.asarray(sizes, np.int64)
    live = sizes > 0
    if not live.any():
        return np.zeros_like(sizes)
    ideal = sizes * (total / sizes.sum())
    share = np.where(live, np.maximum(1, np.floor(ideal)), 0).astype(np.int64)
    left = total - int(share.sum())
    if left > 0:
        order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
        share[order[:left]] += 1
    return share


@dataclass
class ProbeReport:
    cells: np.ndarray  # int64[m]: fine cells scanned per query
    vectors: np.ndarray  # int64[m]: rows scanned per query


class HRM2:
    """The routing structure and the cell-ordered rows on one backend (squared L2).

    Positions are row indexes in the cell-ordered layout; ``ids[pos]`` maps them back to
    the caller's ids (int64).
    """

    def __init__(self, d: int, backend: str | Backend | None = None, n1: int | None = None,
                 n2: int | None = None, *, seed: int = 0, kmeans_iters: int = 10,
                 max_points_per_centroid: int = 256, refine_iters: int = REFINE_ITERS) -> None:
        self.d = d
        self.backend = get_backend(backend)
        self.n1_opt, self.n2_opt = n1, n2
        self.seed = seed
        self.kmeans_iters = kmeans_iters
        self.mppc = max_points_per_centroid
        self.refine_iters = refine_iters
        self.trained = False
        self.rebuilds = 0
        self._clear_rows()

    # ---- training -------------------------------------------------------------------------
    def train(self, x: np.ndarray) -> None:
        """Coarse k-means, fine k-means inside each coarse cell, then ``refine_iters``
        Lloyd iterations of all fine centroids together (on the backend)."""
        n = x.shape[0]
        n1, n2 = default_shape(n)
        n1 = min(self.n1_opt or n1, n)
        n2 = self.n2_opt or n2
        be = self.backend
        coarse = kmeans(x, n1, iters=self.kmeans_iters, seed=self.seed,
                        max_points_per_centroid=self.mppc, backend=be).centroids
        _, cid = self._nearest(x, coarse)
        # n1 * n2 fine cells in all, shared among coarse cells in proportion to their rows,
        # so fine cells hold about the same number of rows wherever the data is dense
        share = split_cells(np.bincount(cid, minlength=n1), n1 * n2)
        fine, parent = [], []
        for c in range(n1):  # a loop over coarse cells, not rows
            members = x[cid == c]
            kc = int(min(share[c], max(1, members.shape[0] // MIN_ROWS_PER_FINE_CELL)))
            if members.shape[0] == 0:
                continue
            if kc == 1:
                f = members.mean(axis=0, keepdims=True).astype(np.float32)
            else:
                f = kmeans(members, kc, iters=self.kmeans_iters, seed=self.seed + 1 + c,
                           max_points_per_centroid=self.mppc, backend=be).centroids
            fine.append(f)
            parent.append(np.full(f.shape[0], c))
        self.coarse = coarse
        self._set_fine(np.concatenate(fine).astype(np.float32), np.concatenate(parent))
        self.trained = True
        self._refine(x)

    def _set_fine(self, fine: np.ndarray, parent: np.ndarray) -> None:
        order = np.argsort(parent, kind="stable")  # fine cells grouped by coarse cell
        self.fine, self.parent = np.ascontiguousarray(fine[order]), parent[order]
        counts = np.bincount(self.parent, minlength=self.coarse.shape[0])
        self.fine_ranges = np.stack([np.cumsum(counts) - counts, np.cumsum(counts)], 1)

    def _refine(self, x: np.ndarray) -> None:
        """Lloyd iterations over all fine centroids at once: each training row goes to its
        nearest fine centroid among those of its ``assign_p1`` nearest coarse cells (not
        only its own coarse cell), each fine centroid moves to the mean of its rows and
        joins the coarse cell nearest to it. Fine cells then stop at the data's own
        boundaries instead of the coarse cells' (on real embeddings this is what brings
        recall per scanned vector up to that of a flat IVF)."""
        if self.refine_iters < 1 or self.fine.shape[0] < 2:
            return
        be = self.backend
        total = self.fine.shape[0]
        rng = rng_for(self.seed + 7919)
        sample = x
        if x.shape[0] > self.mppc * total:
            sample = x[np.sort(rng.choice(x.shape[0], self.mppc * total, replace=False))]
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        native = be.from_host(sample)
        for _ in range(self.refine_iters):
            cells = self.assign(sample)
            sums, counts = be.kmeans_sums(native, cells, total)
            fine = self.fine.copy()
            full = counts > 0
            fine[full] = (sums[full] / counts[full, None]).astype(np.float32)
            _, parent = self._nearest(fine, self.coarse)
            self._set_fine(fine, parent)
    def _nearest(self, x: np.ndarray, centroids: np.ndarray):
        be = self.backend
        D, I = be.knn(be.from_host(np.ascontiguousarray(x, dtype=np.float32)),
                      be.from_host(np.ascontiguousarray(centroids)), 1, "l2")
        return np.asarray(be.to_host(D))[:, 0], np.asarray(be.to_host(I))[:, 0]

    def probes(self, p1: int | None, p2: int | None) -> tuple[int, int]:
        """``(p1, p2)`` with the defaults of :func:`default_probes` for what is None."""
        n1 = self.coarse.shape[0]
        d1, d2 = default_probes(n1, max(1, self.fine.shape[0] // n1), p2)
        return p1 or d1, d2

    def assign_p1(self) -> int:
        """Coarse cells searched for a row's fine cell (adds, training)."""
        return min(self.coarse.shape[0], max(ASSIGN_P1_MIN, self.coarse.shape[0] // 4))

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The fine cell of each row: its nearest fine centroid among those of its
        ``assign_p1()`` nearest coarse cells (the route a query takes, wider)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        cells = np.empty(x.shape[0], dtype=np.int64)
        step = 16384 if _jit.available() else 512  # the NumPy route holds rows x cells x d
        for s in range(0, x.shape[0], step):
            c, _ = self.route(x[s : s + step], self.assign_p1(), 1)
            cells[s : s + step] = c[:, 0]
        return cells

    # ---- rows ------------------------------------------------------------------------------
    def _clear_rows(self) -> None:
        self._rows = self.backend.row_store(self.d)
        self.host_rows = np.zeros((0, self.d), np.float32)  # host copy, for re-layouts
        self.sqnorms = np.zeros(0, np.float32)  # |x|^2 per position (cpu ranks with it)
        self.ids = np.zeros(0, np.int64)  # per position
        self.cell_of = np.zeros(0, np.int64)  # per position
        self.dead = np.zeros(0, bool)  # per position: left behind by relocate(), masked
        self.main_end = 0
        self.ranges = np.zeros((0, 2), np.int64)
        self.radius = np.zeros(0, np.float32)

    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    def set_rows(self, x: np.ndarray, ids: np.ndarray, cells: np.ndarray | None = None) -> None:
        """Lay out all rows grouped by fine cell (a full re-layout)."""
        if cells is None:
            cells = self.assign(x) if x.shape[0] else np.zeros(0, np.int64)
        order = np.argsort(cells, kind="stable")
        self.host_rows = np.ascontiguousarray(x[order], dtype=np.float32)
        self.ids = np.asarray(ids, np.int64)[order]
        self.cell_of = cells[order]
        self._rows = self.backend.row_store(self.d)
        if x.shape[0]:
            self._rows.append(self.host_rows)
        self.main_end = self.ntotal
        self.dead = np.zeros(self.ntotal, bool)
        self.sqnorms = np.einsum("ij,ij->i", self.host_rows, self.host_rows)
        self.radius = np.zeros(self.fine.shape[0], np.float32)
        self._grow_radius(self.host_rows, self.cell_of)
        self._index_ranges()

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Rows into an empty index are laid out; into a filled one they go via add_rows."""
        if self.ntotal == 0:
            self.set_rows(x, ids)
        else:
            self.add_rows(x, ids)

    def add_rows(self, x: np.ndarray, ids: np.ndarray) -> None:
        """New rows go to their nearest fine cell now, via the sorted overflow region."""
        cells = self.assign(x)
        tail_cells = np.concatenate([self.cell_of[self.main_end :], cells])
        tail_rows = np.concatenate([self.host_rows[self.main_end :], x])
        tail_ids = np.concatenate([self.ids[self.main_end :], ids])
        tail_dead = np.concatenate([self.dead[self.main_end :], np.zeros(x.shape[0], bool)])
        if tail_cells.size > REBUILD_OVERFLOW * max(1, self.main_end):
            live = ~np.concatenate([self.dead[: self.main_end], tail_dead])
            self.rebuild(np.concatenate([self.host_rows[: self.main_end], tail_rows])[live],
                         np.concatenate([self.ids[: self.main_end], tail_ids])[live],
                         np.concatenate([self.cell_of[: self.main_end], tail_cells])[live])
            return
        order = np.argsort(tail_cells, kind="stable")
        old_tail = self.ntotal - self.main_end
        self.host_rows = np.concatenate([self.host_rows[: self.main_end], tail_rows[order]])
        self.ids = np.concatenate([self.ids[: self.main_end], tail_ids[order]])
        self.cell_of = np.concatenate([self.cell_of[: self.main_end], tail_cells[order]])
        self.dead = np.concatenate([self.dead[: self.main_end], tail_dead[order]])
        tail_sq = np.concatenate([self.sqnorms[self.main_end :], np.einsum("ij,ij->i", x, x)])
        self.sqnorms = np.concatenate([self.sqnorms[: self.main_end], tail_sq[order]])
        self._grow_radius(x, cells)  # radii only grow with new members
        be = self.backend
        if old_tail:  # rewrite the old tail in its new order, then append the rest
            pos = np.arange(self.main_end, self.main_end + old_tail)
            be.scatter_rows(self._rows.view(), pos, self.host_rows[pos])
        self._rows.append(self.host_rows[self.main_end + old_tail :])
        self._index_ranges()

    def remove_positions(self, drop: np.ndarray) -> None:
        """Drop positions (and any left dead by ``relocate``): a full re-layout."""
        keep = np.setdiff1d(np.flatnonzero(~self.dead), drop)
        self.set_rows(self.host_rows[keep], self.ids[keep], self.cell_of[keep])

    def relocate(self, pos: np.ndarray, x: np.ndarray) -> int:
        """Rows at positions ``pos`` now hold ``x`` (a splat's mu moved). A row still
        nearest its cell is rewritten in place; one that crossed into another cell is left
        dead at its old position (masked from then on) and added to its new cell, so it
        is found where queries now look. Dead positions go at the next re-layout. Returns
        how many rows changed cell."""
        pos = np.asarray(pos, np.int64)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if pos.size == 0:
            return 0
        cells = self.assign(x)
        same = cells == self.cell_of[pos]
        if same.any():
            p, r = pos[same], x[same]
            self.host_rows[p] = r
            self.sqnorms[p] = np.einsum("ij,ij->i", r, r)
            self.backend.scatter_rows(self._rows.view(), p, r)
            self._grow_radius(r, cells[same])
        moved = ~same
        if moved.any():
            self.dead[pos[moved]] = True
            self.add_rows(x[moved], self.ids[pos[moved]])
        return int(moved.sum())

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """The live position of each id (-1 where absent); ids are non-negative ints."""
        live = np.flatnonzero(~self.dead)
        ids = np.asarray(ids, np.int64)
        top = int(max(ids.max(initial=-1), self.ids.max(initial=-1))) + 1
        where = np.full(top, -1, np.int64)
        where[self.ids[live]] = live
        return where[ids]

    def mask_params(self):
        """Params that only mask the dead positions (alpha 0), for scans without splat
        parameters; None when nothing is dead."""
        if not self.dead.any():
            return None
        host = np.zeros((self.ntotal, PARAM_WIDTH), np.float32)
        host[:, PARAM_ALPHA] = (~self.dead).astype(np.float32)
        host[:, PARAM_KAPPA] = 1.0
        return self.upload_like_rows(host)

    def upload_like_rows(self, host: np.ndarray):
        """A host array laid out on the device like the rows (vulkan: same chunks)."""
        be = self.backend
        if be.name == "vulkan":
            return be.from_host(host, chunk_rows=self._rows.chunk_rows)
        return be.from_host(host)

    def rebuild(self, x: np.ndarray, ids: np.ndarray, cells: np.ndarray) -> None:
        """Re-layout; retrain first when cells are unbalanced past REBUILD_IMBALANCE."""
        self.rebuilds += 1
        sizes = np.bincount(cells, minlength=self.fine.shape[0])
        if x.shape[0] and sizes.max() > REBUILD_IMBALANCE * max(1.0, sizes.mean()):
            self.train(x)
            cells = None
        self.set_rows(x, ids, cells)

    def _grow_radius(self, x: np.ndarray, cells: np.ndarray) -> None:
        diff = x - self.fine[cells]
        np.maximum.at(self.radius, cells, np.sqrt(np.einsum("ij,ij->i", diff, diff)))

    def _index_ranges(self) -> None:
        """Main range of cell c: ranges[c]; overflow range: ranges[C + c]."""
        C = self.fine.shape[0]
        main = np.bincount(self.cell_of[: self.main_end], minlength=C)
        tail = np.bincount(self.cell_of[self.main_end :], minlength=C)
        ms = np.cumsum(main) - main
        ts = self.main_end + np.cumsum(tail) - tail
        self.ranges = np.concatenate([np.stack([ms, ms + main], 1),
                                      np.stack([ts, ts + tail], 1)]).astype(np.int64)

    # ---- search ----------------------------------------------------------------------------
    def route(self, q: np.ndarray, p1: int, p2: int):
        """Fine cells to scan per query, nearest first: ``(cells int64[m, p2] (-1 pad),
        squared centroid distances)``."""
        if _jit.available():  # one compiled loop on the host, whatever the backend
            return _jit.route(q, self.coarse, self.fine, self.fine_ranges, p1, p2)
        be = self.backend
        m = q.shape[0]
        p1 = min(p1, self.coarse.shape[0])
        D, C = be.knn(be.from_host(q), be.from_host(self.coarse), p1, "l2")
        C = np.asarray(be.to_host(C))
        width = int((self.fine_ranges[:, 1] - self.fine_ranges[:, 0]).max())
        cand = np.full((m, p1 * width), -1, dtype=np.int64)
        for j in range(p1):  # at most width fine cells per coarse cell
            a = self.fine_ranges[C[:, j], 0]
            cnt = self.fine_ranges[C[:, j], 1] - a
            span = np.arange(width)[None, :]
            cand[:, j * width : (j + 1) * width] = np.where(span < cnt[:, None],
                                                            a[:, None] + span, -1)
        safe = np.where(cand >= 0, cand, 0)
        diff = self.fine[safe] - q[:, None, :]
        dist = np.einsum("ijk,ijk->ij", diff, diff)
        dist[cand < 0] = np.inf
        p2 = min(p2, cand.shape[1])
        best = np.argpartition(dist, p2 - 1, axis=1)[:, :p2] if p2 < cand.shape[1] \
            else np.broadcast_to(np.arange(cand.shape[1]), dist.shape)
        bd = np.take_along_axis(dist, best, 1)
        order = np.argsort(bd, axis=1, kind="stable")
        cells = np.take_along_axis(np.take_along_axis(cand, best, 1), order, 1)
        bd = np.take_along_axis(bd, order, 1)
        return np.where(np.isfinite(bd), cells, -1), bd

    def search(self, q: np.ndarray, k: int, p1: int, p2: int, *, adaptive: bool = False,
               ratio: float | None = None, mode: int = MODE_DISTANCE, params=None,
               sqnorms=None):
        """``(keys, positions, d2, report)`` for validated float32 queries ``q``."""
        be = self.backend
        cells, cdist = self.route(q, p1, p2)
        C = self.fine.shape[0]
        if adaptive and ratio is not None:
            far = cdist > (ratio**2) * cdist[:, :1]
            cells = np.where(far, -1, cells)
        sizes = self.ranges[:C, 1] - self.ranges[:C, 0] + self.ranges[C:, 1] - self.ranges[C:, 0]
        qn = be.from_host(q)
        rows = self._rows.view()
        if params is None:
            params = self.mask_params()
        if sqnorms is None and be.uses_sqnorms:  # kept per position, not recomputed per scan
            sqnorms = be.from_host(self.sqnorms)

        def scan(c):
            probes = np.concatenate([c, np.where(c >= 0, c + C, -1)], 1)
            return be.scan_cells(qn, rows, self.ranges, probes, k, mode, params, sqnorms)

        if not adaptive or cells.shape[1] < 4:
            keys, pos, d2 = scan(cells)
            scanned = cells
        else:
            first = max(1, cells.shape[1] // 4)
            keys, pos, d2 = scan(cells[:, :first])
            kth = d2[:, -1]  # +inf while fewer than k found
            rad = self.radius[np.where(cells >= 0, cells, 0)]
            lower = np.maximum(np.sqrt(cdist) - rad, 0) ** 2
            rest = cells[:, first:]
            rest = np.where(lower[:, first:] < kth[:, None], rest, -1)
            scanned = np.concatenate([cells[:, :first], rest], 1)
            if (rest >= 0).any():
                k2, p2_, d2_ = scan(rest)
                keys, pos, d2 = _merge_sorted(keys, pos, d2, k2, p2_, d2_, k)
        counted = np.where(scanned >= 0, sizes[np.where(scanned >= 0, scanned, 0)], 0)
        report = ProbeReport((scanned >= 0).sum(1), counted.sum(1))
        return keys, pos, d2, report


def _merge_sorted(k1, p1, d1, k2, p2, d2, k):
    keys = np.concatenate([k1, k2], 1)
    pos = np.concatenate([p1, p2], 1)
    dd = np.concatenate([d1, d2], 1)
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
    return take(keys), take(pos), take(dd)


class IndexHRM2:
    """A FAISS-shaped approximate index over HRM2 (``train``, ``add``, ``add_with_ids``,
    ``search``, ``remove_ids``, ``reset``, ``ntotal``, ``is_trained``).

    ``metric``: ``"l2"`` (D = squared distance) or ``"cosine"`` (D = similarity, rows and
    queries normalised). Probing: ``p1`` coarse and ``p2`` fine cells (None: the defaults
    of :func:`default_probes`); ``nprobe`` is FAISS's name for ``p2``. ``adaptive=True``
    turns on the early stop; ``last_report`` says what each query of the last search
    scanned.
    """

    def __init__(self, d: int, n1: int | None = None, n2: int | None = None,
                 metric: str = "l2", backend: str | Backend | None = None, *, seed: int = 0,
                 p1: int | None = None, p2: int | None = None, adaptive: bool = False,
                 ratio: float | None = None) -> None:
        from .errors import InvalidInputError, UnknownMetricError

        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InvalidInputError(f"dimension d must be a positive integer, got {d!r}")
        if metric not in ("l2", "cosine"):
            raise UnknownMetricError(f"IndexHRM2 supports 'l2' and 'cosine', got {metric!r}")
        self.d, self.metric = int(d), metric
        self.hrm2 = HRM2(self.d, backend, n1, n2, seed=seed)
        self.p1, self.p2, self.adaptive, self.ratio = p1, p2, adaptive, ratio
        self.last_report: ProbeReport | None = None

    @property
    def backend(self) -> Backend:
        return self.hrm2.backend

    @property
    def is_trained(self) -> bool:
        return self.hrm2.trained

    @property
    def ntotal(self) -> int:
        return self.hrm2.ntotal

    @property
    def nprobe(self) -> int:
        return self.probes()[1]

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.p2 = int(value)

    def probes(self) -> tuple[int, int]:
        if not self.is_trained:
            return 0, 0
        return self.hrm2.probes(self.p1, self.p2)

    def __len__(self) -> int:
        return self.ntotal

    def _rows(self, x, what="vectors"):
        from .knn import prepare

        rows, _, _ = prepare(x, what, self.metric, dim=self.d)
        return host_array(rows)

    def train(self, x) -> None:
        self.hrm2.train(self._rows(x))

    def _need_trained(self) -> None:
        from .errors import InvalidInputError

        if not self.is_trained:
            raise InvalidInputError("IndexHRM2 must be trained (train(x)) before add/search")

    def add(self, x) -> None:
        self._need_trained()
        rows = self._rows(x)
        self._add(rows, np.arange(self.ntotal, self.ntotal + rows.shape[0]))

    def add_with_ids(self, x, ids) -> None:
        self._need_trained()
        self._add(self._rows(x), np.asarray(ids))

    def _add(self, rows: np.ndarray, ids: np.ndarray) -> None:
        from .errors import InvalidInputError

        if ids.shape != (rows.shape[0],) or (ids.size and ids.dtype.kind not in "iu"):
            raise InvalidInputError(f"ids must be {rows.shape[0]} integers, got {ids.shape}")
        if rows.shape[0] == 0:
            return
        self.hrm2.add(rows, ids.astype(np.int64))

    def remove_ids(self, ids) -> int:
        drop = np.flatnonzero(np.isin(self.hrm2.ids, np.asarray(ids).ravel()))
        if drop.size:
            self.hrm2.remove_positions(drop)
        return int(drop.size)

    def reset(self) -> None:
        self.hrm2._clear_rows()  # the next add lays the rows out again

    def search(self, x, k: int):
        from .knn import check_k, empty_result

        k = check_k(k)
        self._need_trained()
        q = self._rows(x, "queries")
        m = q.shape[0]
        if m == 0 or self.ntotal == 0:
            D, I = empty_result(m, k, "l2" if self.metric == "l2" else "ip")
            self.last_report = ProbeReport(np.zeros(m, np.int64), np.zeros(m, np.int64))
            return D, I
        p1, p2 = self.probes()
        keys, pos, d2, report = self.hrm2.search(q, k, p1, p2, adaptive=self.adaptive,
                                                 ratio=self.ratio)
        self.last_report = report
        I = np.where(pos >= 0, self.hrm2.ids[np.where(pos >= 0, pos, 0)], -1)
        if self.metric == "l2":
            return d2.astype(np.float32), I
        D = np.where(pos >= 0, 1.0 - d2 / 2.0, -np.inf).astype(np.float32)
        return D, I
