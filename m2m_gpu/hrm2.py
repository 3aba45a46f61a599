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

Memory tiers: the rows live in a :class:`m2m_gpu.tiers.TierManager` keyed by position
(``tiers=``; default: all on the device, one dense matrix). Each tier keeps its rows in
position order, so the hot rows of a cell are one range of the hot tier and are scanned in
place; the probed rows that are not hot are fetched to the device in blocks and scanned by
the same kernel, and the parts are merged by (key, position), the order every layout
returns. The rows of every probed cell count as accessed, so the placement policy keeps the
cells that queries probe hot. Re-layouts stream the rows through host memory a block at a
time (no full host copy is kept).

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
from .inputs import check_count, check_ids, check_result_size
from .kmeans import kmeans, rng_for
from .locking import thread_safe
from .ops.topk import merge_by_key
from .tensor import host_array
from .tiers import HOT, TierManager, TierOptions

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
                 max_points_per_centroid: int = 256, refine_iters: int = REFINE_ITERS,
                 tiers: TierOptions | None = None, cold_dir=None) -> None:
        self.d = d
        self.backend = get_backend(backend)
        self.tier_options = tiers or TierOptions()
        self.cold_dir = cold_dir
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
    def _new_tiers(self, clock: int = 0) -> TierManager:
        return TierManager(self.d, self.backend, self.tier_options, cold_dir=self.cold_dir,
                           clock=clock)

    def _clear_rows(self) -> None:
        old = getattr(self, "_tm", None)
        if old is not None:
            old.close()
        self._tm = self._new_tiers()  # the rows by position, in the memory tiers
        self.sqnorms = np.zeros(0, np.float32)  # |x|^2 per position (cpu ranks with it)
        self.ids = np.zeros(0, np.int64)  # per position
        self.cell_of = np.zeros(0, np.int64)  # per position
        self.dead = np.zeros(0, bool)  # per position: left behind by relocate(), masked
        self.main_end = 0
        self.ranges = np.zeros((0, 2), np.int64)
        self.radius = np.zeros(0, np.float32)
        self._cache: dict = {}  # device copies of params / sqnorms, see _cached()
        self._alpha_params = None  # the last unfiltered params (the hotness policy's alpha)

    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    @property
    def tiers(self) -> TierManager:
        """Where the rows live: position ``p`` is slot ``p`` of this tier manager."""
        return self._tm

    def set_cold_dir(self, directory) -> None:
        """Where the spill file of this and every later layout goes."""
        self.cold_dir = directory
        self._tm.set_cold_dir(directory)

    def rows_at(self, pos) -> np.ndarray:
        """Host float32 rows at positions ``pos``."""
        return self._tm.gather(np.asarray(pos, np.int64))

    def set_rows(self, x: np.ndarray, ids: np.ndarray, cells: np.ndarray | None = None) -> None:
        """Lay out all rows grouped by fine cell (a full re-layout). A row whose id was
        already indexed keeps its access history (the tier placement policy's input)."""
        x = np.asarray(x, np.float32)
        ids = np.asarray(ids, np.int64)
        if cells is None:
            cells = self.assign(x) if x.shape[0] else np.zeros(0, np.int64)
        history = None
        if self._tm.bounded and self.ntotal and ids.size and ids.min() >= 0:
            history = self._history(self.positions_of(ids))
        self._relayout(-1 - np.arange(x.shape[0], dtype=np.int64), x, ids, cells, history)

    def _history(self, old_pos: np.ndarray):
        """Access history of old positions (-1: none) for :meth:`_append`; None when the
        tiers are unbounded (no policy runs)."""
        if not self._tm.bounded:
            return None
        ok = old_pos >= 0
        return ok, self._tm.history(np.where(ok, old_pos, 0))

    def _append(self, tm: TierManager, n: int, rows_of, history=None) -> None:
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

    def _relayout(self, src: np.ndarray, new_rows: np.ndarray, ids: np.ndarray,
                  cells: np.ndarray, history=None) -> None:
        """A fresh layout of the rows ``src`` (``>= 0``: a current position; ``< 0``: row
        ``-1 - src`` of ``new_rows``), grouped by cell; rows stream through host memory a
        block at a time, and cell radii are measured on the way."""
        order = np.argsort(cells, kind="stable")
        src, ids, cells = src[order], ids[order], cells[order]
        if history is not None:
            history = (history[0][order], tuple(a[order] for a in history[1]))
        old = self._tm
        new_rows = np.asarray(new_rows, np.float32)
        mine = src >= 0
        sq = np.empty(src.size, np.float32)
        sq[mine] = self.sqnorms[src[mine]]
        fresh = new_rows[-1 - src[~mine]]
        sq[~mine] = np.einsum("ij,ij->i", fresh, fresh)
        self.radius = np.zeros(self.fine.shape[0], np.float32)

        def rows_of(s: int, e: int) -> np.ndarray:
            part = src[s:e]
            out = np.empty((part.size, self.d), np.float32)
            o = part >= 0
            if o.any():
                out[o] = old.gather(part[o])
            if not o.all():
                out[~o] = new_rows[-1 - part[~o]]
            self._grow_radius(out, cells[s:e])
            return out

        tm = self._new_tiers(clock=old.clock)
        self._append(tm, src.size, rows_of, history)
        old.close()
        self._tm = tm
        self.ids, self.cell_of, self.sqnorms = ids, cells, sq
        self.main_end = self.ntotal
        self.dead = np.zeros(self.ntotal, bool)
        self._index_ranges()
        self._cache.clear()

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Rows into an empty index are laid out; into a filled one they go via add_rows."""
        if self.ntotal == 0:
            self.set_rows(x, ids)
        else:
            self.add_rows(x, ids)

    def add_rows(self, x: np.ndarray, ids: np.ndarray) -> None:
        """New rows go to their nearest fine cell now, via the sorted overflow region: the
        old overflow rows and the new ones are written again in cell order after the main
        region (which does not move)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        ids = np.asarray(ids, np.int64)
        r = x.shape[0]
        cells = self.assign(x)
        tail = np.arange(self.main_end, self.ntotal, dtype=np.int64)
        tail_cells = np.concatenate([self.cell_of[tail], cells])
        if tail_cells.size > REBUILD_OVERFLOW * max(1, self.main_end):
            live = np.flatnonzero(~self.dead)
            self.rebuild(np.concatenate([live, -1 - np.arange(r, dtype=np.int64)]), x,
                         np.concatenate([self.ids[live], ids]),
                         np.concatenate([self.cell_of[live], cells]))
            return
        order = np.argsort(tail_cells, kind="stable")
        tail_rows = np.concatenate([self._tm.gather(tail), x])[order]
        history = self._history(np.concatenate([tail, np.full(r, -1, np.int64)])[order])
        self._tm.keep(np.arange(self.main_end, dtype=np.int64))  # a prefix: nothing moves
        self._append(self._tm, order.size, lambda s, e: tail_rows[s:e], history)
        m = self.main_end
        self.ids = np.concatenate([self.ids[:m], np.concatenate([self.ids[m:], ids])[order]])
        self.cell_of = np.concatenate([self.cell_of[:m], tail_cells[order]])
        self.dead = np.concatenate([self.dead[:m], np.concatenate(
            [self.dead[m:], np.zeros(r, bool)])[order]])
        tail_sq = np.concatenate([self.sqnorms[m:], np.einsum("ij,ij->i", x, x)])
        self.sqnorms = np.concatenate([self.sqnorms[:m], tail_sq[order]])
        self._grow_radius(x, cells)  # radii only grow with new members
        self._index_ranges()
        self._cache.clear()

    def remove_positions(self, drop: np.ndarray) -> None:
        """Drop positions (and any left dead by ``relocate``): a full re-layout."""
        keep = np.setdiff1d(np.flatnonzero(~self.dead), drop)
        self._relayout(keep, np.zeros((0, self.d), np.float32), self.ids[keep],
                       self.cell_of[keep], self._history(keep))

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
            self._tm.scatter(p, r)
            self.sqnorms[p] = np.einsum("ij,ij->i", r, r)
            self._grow_radius(r, cells[same])
            self._cache.clear()
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

    def mask_params(self) -> np.ndarray | None:
        """Host params that only mask the dead positions (alpha 0), for scans without
        splat parameters; None when nothing is dead."""
        if not self.dead.any():
            return None
        host = np.zeros((self.ntotal, PARAM_WIDTH), np.float32)
        host[:, PARAM_ALPHA] = (~self.dead).astype(np.float32)
        host[:, PARAM_KAPPA] = 1.0
        return host

    def rebuild(self, src: np.ndarray, new_rows: np.ndarray, ids: np.ndarray,
                cells: np.ndarray) -> None:
        """Re-layout of ``src`` (as in :meth:`_relayout`); retrain first when cells are
        unbalanced past REBUILD_IMBALANCE (training reads every row into host memory)."""
        self.rebuilds += 1
        sizes = np.bincount(cells, minlength=self.fine.shape[0])
        if src.size and sizes.max() > REBUILD_IMBALANCE * max(1.0, sizes.mean()):
            x = np.empty((src.size, self.d), np.float32)
            mine = src >= 0
            x[mine] = self._tm.gather(src[mine])
            x[~mine] = new_rows[-1 - src[~mine]]
            self.train(x)
            self.set_rows(x, ids)
            return
        self._relayout(src, new_rows, ids, cells, self._history(src))

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
               cache: bool = True):
        """``(keys, positions, d2, report)`` (host) for validated float32 queries ``q``,
        best first, ties by position. ``params``: host float32[ntotal, PARAM_WIDTH] in
        position order (None: alpha = kappa = 1, dead positions masked); its device copy is
        kept for the next search with the same array unless ``cache=False`` (a filter's
        one-off mask). Device memory running out shrinks the hot tier and retries."""
        return self._tm.retry_out_of_memory(
            lambda: self._search(q, k, p1, p2, adaptive, ratio, mode, params, cache),
            self.rebalance)

    def _search(self, q, k, p1, p2, adaptive, ratio, mode, params, cache):
        be = self.backend
        cells, cdist = self.route(q, p1, p2)
        C = self.fine.shape[0]
        if adaptive and ratio is not None:
            far = cdist > (ratio**2) * cdist[:, :1]
            cells = np.where(far, -1, cells)
        sizes = self.ranges[:C, 1] - self.ranges[:C, 0] + self.ranges[C:, 1] - self.ranges[C:, 0]
        qn = be.from_host(q)
        if params is None:
            params, cache = self.mask_params(), False
        elif cache:
            self._alpha_params = params

        def scan(c):
            probes = np.concatenate([c, np.where(c >= 0, c + C, -1)], 1)
            return self._scan(qn, probes, k, mode, params, cache)

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
                keys, pos, d2 = merge_by_key([(keys, pos, d2), scan(rest)], k)
        counted = np.where(scanned >= 0, sizes[np.where(scanned >= 0, scanned, 0)], 0)
        report = ProbeReport((scanned >= 0).sum(1), counted.sum(1))
        self._touch(scanned)
        if self._tm.due():
            self.rebalance()
        return keys, pos, d2, report

    def _cached(self, name: str, source, make):
        """``make()``, kept while ``source`` is the same object and the hot tier has not
        changed (the cache is cleared when rows or their norms change)."""
        version = self._tm.version
        hit = self._cache.get(name)
        if hit is not None and hit[0] is source and hit[1] == version:
            return hit[2]
        value = make()
        self._cache[name] = (source, version, value)
        return value

    def _scan(self, qn, probes: np.ndarray, k: int, mode: int, params, cache: bool):
        """Top-k over the probed ranges: in place on the dense matrix when every row is
        hot; else the hot rows in place (ranges mapped into the hot store) and the probed
        rows that are not hot fetched to the device in blocks; merged by (key, position)."""
        be, tm = self.backend, self._tm
        sq_all = self.sqnorms if be.uses_sqnorms else None

        def upload(host, like):
            return tm.upload(host, like)

        keep = self._cached if cache else (lambda name, source, make: make())

        dense = tm.dense()
        if dense is not None:
            prm = None if params is None else keep("params", params,
                                                   lambda: upload(params, dense))
            sq = None if sq_all is None else self._cached("sq", None,
                                                          lambda: be.from_host(sq_all))
            return merge_by_key([be.scan_cells(qn, dense, self.ranges, probes, k, mode, prm,
                                                sq)], k)
        parts = []
        hot = tm.hot_slots
        hot_ranges = np.searchsorted(hot, self.ranges)  # hot rows are in position order
        if hot.size:
            rows = tm.hot_store.view()
            prm = None if params is None else keep(
                "hot_params", params, lambda: upload(params[hot], rows))
            sq = None if sq_all is None else self._cached(
                "hot_sq", None, lambda: be.from_host(np.ascontiguousarray(sq_all[hot])))
            kk, pp, dd = be.scan_cells(qn, rows, hot_ranges, probes, k, mode, prm, sq)
            parts.append((kk, np.where(pp >= 0, hot[np.maximum(pp, 0)], -1), dd))
        used = np.unique(probes[probes >= 0])
        rest = (self.ranges[used, 1] - self.ranges[used, 0]) - \
            (hot_ranges[used, 1] - hot_ranges[used, 0])
        used, rest = used[rest > 0], rest[rest > 0]
        start = 0
        while start < used.size:  # ranges in groups of about block_rows non-hot rows
            stop = start + max(1, int(np.searchsorted(np.cumsum(rest[start:]), tm.block_rows,
                                                      side="right")))
            group, count = used[start:stop], rest[start:stop]
            pos = _expand(self.ranges[group])
            pos = pos[tm.tier[pos] != HOT]  # per range, in position order
            local = np.zeros_like(self.ranges)
            local[group, 1] = np.cumsum(count)
            local[group, 0] = local[group, 1] - count
            rows = tm.fetch(pos, like=tm.hot_store)
            prm = None if params is None else upload(params[pos], rows)
            sq = None if sq_all is None else be.from_host(np.ascontiguousarray(sq_all[pos]))
            kk, pp, dd = be.scan_cells(qn, rows, local, probes, k, mode, prm, sq)
            parts.append((kk, np.where(pp >= 0, pos[np.maximum(pp, 0)], -1), dd))
            start = stop
        if not parts:
            m = probes.shape[0]
            return (np.full((m, k), np.inf, np.float32), np.full((m, k), -1, np.int64),
                    np.full((m, k), np.inf, np.float32))
        return merge_by_key(parts, k)

    # ---- tiers -----------------------------------------------------------------------------
    def _touch(self, scanned: np.ndarray) -> None:
        """The rows of the scanned cells (main and overflow) count as accessed."""
        tm = self._tm
        if not tm.bounded:
            tm.touch(np.zeros(0, np.int64))  # the clock only
            return
        C = self.fine.shape[0]
        cells = np.unique(scanned[scanned >= 0])
        tm.touch(_expand(self.ranges[np.concatenate([cells, cells + C])]), unique=True)

    def rebalance(self) -> dict:
        """Place rows by the tier policy now (alpha from the last unfiltered params)."""
        p = self._alpha_params
        alpha = p[:, PARAM_ALPHA] if p is not None and p.shape[0] == self.ntotal else \
            np.ones(self.ntotal, np.float32)
        return self._tm.rebalance(alpha, ~self.dead)


def _expand(ranges: np.ndarray) -> np.ndarray:
    """Every position of the ``[start, stop)`` ranges, range by range."""
    lens = ranges[:, 1] - ranges[:, 0]
    total = int(lens.sum())
    offsets = np.cumsum(lens) - lens
    return np.repeat(ranges[:, 0] - offsets, lens) + np.arange(total, dtype=np.int64)


@thread_safe
class IndexHRM2:
    """A FAISS-shaped approximate index over HRM2 (``train``, ``add``, ``add_with_ids``,
    ``search``, ``remove_ids``, ``reset``, ``ntotal``, ``is_trained``).

    ``metric``: ``"l2"`` (D = squared distance) or ``"cosine"`` (D = similarity, rows and
    queries normalised). Probing: ``p1`` coarse and ``p2`` fine cells (None: the defaults
    of :func:`default_probes`); ``nprobe`` is FAISS's name for ``p2``. ``adaptive=True``
    turns on the early stop; ``last_report`` says what each query of the last search
    scanned.
    ``tiers``: byte budgets of the memory tiers for the index's rows
    (:class:`m2m_gpu.tiers.TierOptions`; default: all on the device). Hot cells are scanned
    in place, probed rows that are not hot are fetched to the device per search, and the
    placement policy counts the rows of every probed cell as accessed.
    """

    def __init__(self, d: int, n1: int | None = None, n2: int | None = None,
                 metric: str = "l2", backend: str | Backend | None = None, *, seed: int = 0,
                 p1: int | None = None, p2: int | None = None, adaptive: bool = False,
                 ratio: float | None = None, tiers: dict | TierOptions | None = None) -> None:
        from .errors import InvalidInputError, UnknownMetricError

        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InvalidInputError(f"dimension d must be a positive integer, got {d!r}")
        if metric not in ("l2", "cosine"):
            raise UnknownMetricError(f"IndexHRM2 supports 'l2' and 'cosine', got {metric!r}")
        self.d, self.metric = int(d), metric
        self.hrm2 = HRM2(self.d, backend, n1, n2, seed=seed, tiers=TierOptions.parse(tiers))
        self._next_id = 0  # one past the largest id ever held: add() never reuses an id
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
        self.p2 = value

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

    def probes(self) -> tuple[int, int]:
        if not self.is_trained:
            return 0, 0
        return self.hrm2.probes(self.p1, self.p2)

    def __len__(self) -> int:
        return self.ntotal

    def _rows(self, x, what="vectors"):
        from .inputs import prepare

        rows, _, _ = prepare(x, what, self.metric, dim=self.d)
        return host_array(rows)

    def train(self, x) -> None:
        """Train the two levels of centroids on ``x``. On an index that already holds
        vectors this retrains and lays every stored vector out again in the new cells,
        keeping its id (FAISS would keep the old assignment; HRM2's cells are its layout)."""
        rows = self._rows(x)  # validated before anything changes
        h = self.hrm2
        held_ids = held = None
        if h.ntotal:
            live = np.flatnonzero(~h.dead) if h.dead.size else np.arange(h.ntotal)
            held, held_ids = h.rows_at(live), h.ids[live].copy()
            h._clear_rows()
        h.train(rows)
        if held is not None and held.shape[0]:
            self._add(held, held_ids)

    def copy_training(self, other: IndexHRM2) -> None:
        """Take ``other``'s trained centroids instead of training (no k-means): for the
        same data held in another layout or tier budget, or on another backend. Only an
        empty index can take them."""
        from .errors import InvalidInputError

        if other.d != self.d or not other.is_trained:
            raise InvalidInputError(f"copy_training needs a trained index of d={self.d}")
        if self.ntotal:
            raise InvalidInputError("copy_training needs an empty index (reset() first)")
        h, o = self.hrm2, other.hrm2
        h.coarse, h.fine = o.coarse.copy(), o.fine.copy()
        h.parent, h.fine_ranges = o.parent.copy(), o.fine_ranges.copy()
        h.trained = True

    def _need_trained(self) -> None:
        from .errors import InvalidInputError

        if not self.is_trained:
            raise InvalidInputError("IndexHRM2 must be trained (train(x)) before add/search")

    def add(self, x) -> None:
        """Sequential ids from one past the largest id held so far: never reused after
        ``remove_ids`` (see ``IndexFlat.add``)."""
        self._need_trained()
        rows = self._rows(x)
        self._add(rows, np.arange(self._next_id, self._next_id + rows.shape[0]))

    def add_with_ids(self, x, ids) -> None:
        self._need_trained()
        self._add(self._rows(x), np.asarray(ids))

    def _add(self, rows: np.ndarray, ids: np.ndarray) -> None:
        from .errors import InvalidInputError
        if ids.shape != (rows.shape[0],):
            raise InvalidInputError(f"ids must be {rows.shape[0]} integers, got {ids.shape}")
        ids = check_ids(ids)
        if rows.shape[0] == 0:
            return
        self.hrm2.add(rows, ids)
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def remove_ids(self, ids) -> int:
        drop = np.flatnonzero(np.isin(self.hrm2.ids, np.asarray(ids).ravel()))
        if drop.size:
            self.hrm2.remove_positions(drop)
        return int(drop.size)

    def reset(self) -> None:
        self.hrm2._clear_rows()  # the next add lays the rows out again
        self._next_id = 0

    def search(self, x, k: int):
        from .knn import check_k, empty_result

        k = check_k(k)
        self._need_trained()
        q = self._rows(x, "queries")
        m = q.shape[0]
        check_result_size(m, k, self.ntotal)
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
