"""HRM2's centroids: the default shape and probes from n, two levels of k-means, and the
joint refinement of the fine level (free functions, as FAISS's ``two_level_clustering``).

Training reads only the rows it is given and returns a new :class:`Centroids`; nothing here
holds state between calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backends import Backend
from ..kmeans import kmeans, rng_for

MIN_ROWS_PER_FINE_CELL = 8
REFINE_ITERS = 3  # Lloyd iterations over all fine centroids together after the two levels
# rows per fine centroid the refinement reads (a sample beyond that): it starts from
# centroids k-means already placed, so fewer rows than k-means' own 256 suffice
REFINE_POINTS_PER_CENTROID = 64


PROGRESS_ROWS = 100_000  # builds on at least this many rows show a bar (on a terminal)


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


@dataclass(frozen=True)
class Centroids:
    """The two levels: ``coarse[n1]``, ``fine[C]`` grouped by coarse cell, ``parent[c]``
    (the coarse cell of fine cell c) and ``fine_ranges[j] = [start, stop)`` (the fine cells
    of coarse cell j). Replaced, never changed in place: readers may hold one safely."""

    coarse: np.ndarray
    fine: np.ndarray
    parent: np.ndarray
    fine_ranges: np.ndarray

    @classmethod
    def grouped(cls, coarse: np.ndarray, fine: np.ndarray, parent: np.ndarray) -> Centroids:
        """Fine cells sorted (stably) by their coarse cell, with the ranges."""
        order = np.argsort(parent, kind="stable")
        parent = parent[order]
        counts = np.bincount(parent, minlength=coarse.shape[0])
        ranges = np.stack([np.cumsum(counts) - counts, np.cumsum(counts)], 1)
        return cls(coarse, np.ascontiguousarray(fine[order]), parent, ranges)

    @property
    def cells(self) -> int:
        """Fine cells in all."""
        return int(self.fine.shape[0])

    def copy(self) -> Centroids:
        return Centroids(self.coarse.copy(), self.fine.copy(), self.parent.copy(),
                         self.fine_ranges.copy())


def nearest(backend: Backend, x: np.ndarray, centroids: np.ndarray):
    """``(squared distance, index)`` of each row's nearest centroid (host arrays)."""
    be = backend
    D, I = be.knn(be.from_host(np.ascontiguousarray(x, dtype=np.float32)),
                  be.from_host(np.ascontiguousarray(centroids)), 1, "l2")
    return np.asarray(be.to_host(D))[:, 0], np.asarray(be.to_host(I))[:, 0]


def two_level_kmeans(x: np.ndarray, n1: int, n2: int, backend: Backend, *, seed: int,
                     iters: int, max_points_per_centroid: int, advance=None) -> Centroids:
    """Coarse k-means, then k-means inside each coarse cell: ``n1 * n2`` fine cells in all,
    shared among the coarse cells in proportion to their rows (so fine cells hold about
    the same number of rows wherever the data is dense)."""
    be, mppc = backend, max_points_per_centroid
    advance = advance or (lambda n=1: None)
    coarse = kmeans(x, n1, iters=iters, seed=seed, max_points_per_centroid=mppc,
                    backend=be).centroids
    advance()
    _, cid = nearest(be, x, coarse)
    share = split_cells(np.bincount(cid, minlength=n1), n1 * n2)
    fine, parent = [], []
    for c in range(n1):  # a loop over coarse cells, not rows
        advance()
        members = x[cid == c]
        kc = int(min(share[c], max(1, members.shape[0] // MIN_ROWS_PER_FINE_CELL)))
        if members.shape[0] == 0:
            continue
        if kc == 1:
            f = members.mean(axis=0, keepdims=True).astype(np.float32)
        else:
            f = kmeans(members, kc, iters=iters, seed=seed + 1 + c,
                       max_points_per_centroid=mppc, backend=be).centroids
        fine.append(f)
        parent.append(np.full(f.shape[0], c))
    return Centroids.grouped(coarse, np.concatenate(fine).astype(np.float32),
                             np.concatenate(parent))


def refine(centroids: Centroids, x: np.ndarray, backend: Backend, *, iters: int, seed: int,
           max_points_per_centroid: int, advance=None) -> Centroids:
    """Lloyd iterations over all fine centroids at once: each training row goes to its
    nearest fine centroid among those of its ``assign_p1`` nearest coarse cells (not only
    its own coarse cell), each fine centroid moves to the mean of its rows and joins the
    coarse cell nearest to it. Fine cells then stop at the data's own boundaries instead of
    the coarse cells' (on real embeddings this is what brings recall per scanned vector up
    to that of a flat IVF)."""
    from .routing import Router

    c = centroids
    if iters < 1 or c.cells < 2:
        return c
    be = backend
    total = c.cells
    cap = min(max_points_per_centroid, REFINE_POINTS_PER_CENTROID) * total
    sample = x
    if x.shape[0] > cap:
        sample = x[np.sort(rng_for(seed + 7919).choice(x.shape[0], cap, replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    native = be.from_host(sample)
    for _ in range(iters):
        if advance is not None:
            advance()
        cells = Router(c, be).assign(sample)
        sums, counts = be.kmeans_sums(native, cells, total)
        fine = c.fine.copy()
        full = counts > 0
        fine[full] = (sums[full] / counts[full, None]).astype(np.float32)
        _, parent = nearest(be, fine, c.coarse)
        c = Centroids.grouped(c.coarse, fine, parent)
    return c


def train(x: np.ndarray, backend: Backend, n1: int | None = None, n2: int | None = None, *,
          seed: int = 0, kmeans_iters: int = 10, max_points_per_centroid: int = 256,
          refine_iters: int = REFINE_ITERS, progress=None) -> Centroids:
    """Both levels for the rows ``x`` (shape from :func:`default_shape` where not given),
    then ``refine_iters`` joint refinement iterations. ``progress(total)``: a context
    manager giving ``advance()`` (one step: the coarse k-means, each coarse cell's fine
    k-means, each refinement iteration)."""
    from ..progress import Progress

    n = x.shape[0]
    d1, d2 = default_shape(n)
    n1, n2 = min(n1 or d1, n), n2 or d2
    steps = 1 + n1 + (refine_iters if n1 * n2 >= 2 else 0)
    bar = progress(steps) if progress is not None else \
        Progress(steps, f"hrm2: k-means on {n} rows", wanted=n >= PROGRESS_ROWS)
    with bar as advance:
        c = two_level_kmeans(x, n1, n2, backend, seed=seed, iters=kmeans_iters,
                             max_points_per_centroid=max_points_per_centroid,
                             advance=advance)
        return refine(c, x, backend, iters=refine_iters, seed=seed,
                      max_points_per_centroid=max_points_per_centroid, advance=advance)
