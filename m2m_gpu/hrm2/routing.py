"""Queries and rows to fine cells, over one set of :class:`~.train.Centroids`.

A query scores the coarse centroids, keeps the best ``p1`` coarse cells, scores their fine
centroids and keeps the best ``p2`` fine cells, nearest first. A row goes to its nearest
fine centroid among those of its ``assign_p1()`` nearest coarse cells (the route a query
takes, wider). On cpu with Numba the routing is one compiled loop on the host, whatever the
backend; otherwise the backend's k-NN and NumPy. A router only reads its centroids, so any
number of threads may use one at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..backends import Backend, _jit
from .train import default_probes

if TYPE_CHECKING:
    from .train import Centroids

ASSIGN_P1_MIN = 4  # a row's fine cell is searched in at least this many coarse cells
SPILL_CANDIDATES = 8  # a row's second cell is chosen among its this many nearest fine cells
SPILL_LAMBDA = 1.5  # SOAR's weight on the residuals' alignment (see Router.second_cells)


class Router:
    def __init__(self, centroids: Centroids, backend: Backend) -> None:
        self.centroids = centroids
        self.backend = backend
        self._probes: dict = {}  # (p1, p2) asked -> given: a lone query asks every call

    def probes(self, p1: int | None, p2: int | None) -> tuple[int, int]:
        """``(p1, p2)`` with the defaults of :func:`default_probes` for what is None."""
        hit = self._probes.get((p1, p2))
        if hit is None:
            n1 = self.centroids.coarse.shape[0]
            d1, d2 = default_probes(n1, max(1, self.centroids.cells // n1), p2)
            if len(self._probes) >= 64:  # callers sweeping nprobe: stay small
                self._probes.clear()
            hit = self._probes[(p1, p2)] = (p1 or d1, d2)
        return hit

    def assign_p1(self) -> int:
        """Coarse cells searched for a row's fine cell (adds, training)."""
        n1 = self.centroids.coarse.shape[0]
        return min(n1, max(ASSIGN_P1_MIN, n1 // 4))

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The fine cell of each row (int64)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        cells = np.empty(x.shape[0], dtype=np.int64)
        step = 16384 if _jit.available() else 512  # the NumPy route holds rows x cells x d
        for s in range(0, x.shape[0], step):
            c, _ = self.route(x[s : s + step], self.assign_p1(), 1)
            cells[s : s + step] = c[:, 0]
        return cells

    def second_cells(self, x: np.ndarray, first: np.ndarray,
                     lam: float = SPILL_LAMBDA) -> np.ndarray:
        """A second fine cell for each row of ``x`` (first cells ``first``), as SOAR
        (Sun et al., 2023) spills: among the row's ``SPILL_CANDIDATES`` nearest cells
        other than its first, the one minimising ``|r'|^2 + lam <r, r'>^2 / |r|^2`` (``r``,
        ``r'``: the row minus each cell's centroid). The penalty favours a cell whose
        residual is orthogonal to the first one's, so a query that the first cell's
        centroid misleads is not misled the same way by the second. -1 where the row has
        no other cell."""
        return self._two_cells(x, first, lam)[1]

    def assign_two(self, x: np.ndarray, lam: float = SPILL_LAMBDA):
        """``(first, second)``: :meth:`assign`'s cell and :meth:`second_cells`' of each row,
        from one routing pass (the first is the nearest of the second's candidates)."""
        return self._two_cells(x, None, lam)

    def _two_cells(self, x: np.ndarray, first: np.ndarray | None, lam: float):
        x = np.ascontiguousarray(x, dtype=np.float32)
        given = first is not None
        first = first if given else np.empty(x.shape[0], np.int64)
        out = np.full(x.shape[0], -1, np.int64)
        fine = self.centroids.fine
        step = 4096
        for s in range(0, x.shape[0], step):
            xb = x[s : s + step]
            cand, _ = self.route(xb, self.assign_p1(), SPILL_CANDIDATES + 1)
            if not given:
                first[s : s + step] = cand[:, 0]
            fb = first[s : s + step]
            r = xb - fine[fb]
            rn = np.maximum(np.einsum("ij,ij->i", r, r), np.float32(1e-30))
            rp = xb[:, None, :] - fine[np.maximum(cand, 0)]
            along = np.einsum("ij,ikj->ik", r, rp)
            score = np.einsum("ikj,ikj->ik", rp, rp) + lam * along * along / rn[:, None]
            score[(cand < 0) | (cand == fb[:, None])] = np.inf
            best = score.argmin(1)
            pick = cand[np.arange(xb.shape[0]), best]
            out[s : s + step] = np.where(np.isfinite(score.min(1)), pick, -1)
        return first, out

    def route(self, q: np.ndarray, p1: int, p2: int):
        """Fine cells to scan per query, nearest first: ``(cells int64[m, p2] (-1 pad),
        squared centroid distances)``."""
        c = self.centroids
        if _jit.available():  # one compiled loop on the host, whatever the backend
            return _jit.route(q, c.coarse, c.fine, c.fine_ranges, p1, p2)
        be = self.backend
        m = q.shape[0]
        p1 = min(p1, c.coarse.shape[0])
        _, C = be.knn(be.from_host(q), be.from_host(c.coarse), p1, "l2")
        C = np.asarray(be.to_host(C))
        width = int((c.fine_ranges[:, 1] - c.fine_ranges[:, 0]).max())
        cand = np.full((m, p1 * width), -1, dtype=np.int64)
        span = np.arange(width)[None, :]
        for j in range(p1):  # at most width fine cells per coarse cell
            a = c.fine_ranges[C[:, j], 0]
            cnt = c.fine_ranges[C[:, j], 1] - a
            cand[:, j * width : (j + 1) * width] = np.where(span < cnt[:, None],
                                                            a[:, None] + span, -1)
        safe = np.where(cand >= 0, cand, 0)
        diff = c.fine[safe] - q[:, None, :]
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
