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
from ..backends.base import MODE_DISTANCE
from ..errors import InvalidInputError
from ..kmeans import INIT_POINTS_PER_CENTROID, kmeans, kmeans_pp, rng_for

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
    """Coarse k-means, then k-means inside every coarse cell at once
    (:func:`fine_kmeans`): ``n1 * n2`` fine cells in all, shared among the coarse cells in
    proportion to their rows (so fine cells hold about the same number of rows wherever
    the data is dense)."""
    be, mppc = backend, max_points_per_centroid
    advance = advance or (lambda n=1: None)
    coarse = kmeans(x, n1, iters=iters, seed=seed, max_points_per_centroid=mppc,
                    backend=be).centroids
    advance()
    _, cid = nearest(be, x, coarse)
    sizes = np.bincount(cid, minlength=n1)
    kc = np.minimum(split_cells(sizes, n1 * n2),
                    np.maximum(1, sizes // MIN_ROWS_PER_FINE_CELL))
    kc[sizes == 0] = 0
    fine = fine_kmeans(x, cid, kc, be, seed=seed + 1, iters=iters,
                       max_points_per_centroid=mppc, advance=advance)
    return Centroids.grouped(coarse, fine, np.repeat(np.arange(n1), kc))


def fine_kmeans(x: np.ndarray, cid: np.ndarray, kc: np.ndarray, backend: Backend, *,
                seed: int, iters: int, max_points_per_centroid: int,
                advance=None) -> np.ndarray:
    """``kc[j]`` centroids for the rows of each coarse cell ``j`` (``cid``: each row's
    coarse cell), grouped by coarse cell: float32[kc.sum(), d].

    Every cell's Lloyd iterations run together, one pass over the sample per iteration:
    a row is compared only with its own cell's centroids, which is HRM2's cell scan with
    k = 1 (``Backend.scan_cells``: the centroids are the cells' rows and each sample row
    a query probing its coarse cell), and one ``kmeans_sums`` moves them all. Each cell
    trains on at most ``max_points_per_centroid * kc[j]`` of its rows and is seeded by
    k-means++ on at most ``INIT_POINTS_PER_CENTROID * kc[j]`` of those; an emptied centroid
    is re-seeded with its cell's row farthest from its centroid that no other re-seed
    took (a cell whose rows all already sit on centroids, fewer distinct rows than
    ``kc[j]``, keeps its emptied centroids where they are). Stops after ``iters``
    iterations, or once an iteration re-seeds nothing and no centroid's squared shift
    exceeds 1e-6 of the sample's mean squared norm. A cell with one centroid gets the
    mean of all its rows, not of a sample."""
    be = backend
    advance = advance or (lambda n=1: None)
    rng = rng_for(seed)
    cid, kc, sizes = _check_cells(x, cid, kc)
    n1 = kc.size
    # the sample: per coarse cell, its rows in a random order cut at the cell's cap
    order = np.lexsort((rng.random(cid.size), cid))
    first = np.cumsum(sizes) - sizes
    cell = cid[order]
    rank = np.arange(cid.size) - first[cell]
    keep = rank < (max_points_per_centroid * kc)[cell]
    sample, scell, srank = order[keep], cell[keep], rank[keep]
    xs = np.ascontiguousarray(x[sample], dtype=np.float32)  # grouped by coarse cell
    ss = np.concatenate([[0], np.cumsum(np.bincount(scell, minlength=n1))])
    ends = np.cumsum(kc)
    ranges = np.stack([ends - kc, ends], 1).astype(np.int64)
    cent = np.empty((int(ends[-1]) if n1 else 0, x.shape[1]), np.float32)
    for j in np.flatnonzero(kc):  # k-means++ seeds: a loop over cells, not rows
        pool = xs[ss[j] : ss[j + 1]]
        pool = pool[srank[ss[j] : ss[j + 1]] < INIT_POINTS_PER_CENTROID * kc[j]]
        cent[ranges[j, 0] : ranges[j, 1]] = kmeans_pp(pool, int(kc[j]), rng)
    native = be.from_host(xs)
    probes = scell[:, None].astype(np.int64)
    scale = float(np.mean(np.einsum("ij,ij->i", xs, xs))) if xs.size else 1.0
    for done in range(1, iters + 1):
        advance()
        _, pos, d2 = be.scan_cells(native, be.from_host(cent), ranges, probes, 1,
                                   MODE_DISTANCE)
        a, d2 = pos[:, 0], d2[:, 0]
        sums, counts = be.kmeans_sums(native, a, cent.shape[0])
        new = cent.copy()
        full = counts > 0
        new[full] = (sums[full] / counts[full, None]).astype(np.float32)
        reseeded = _reseed(new, np.flatnonzero(~full), xs, d2, scell, ss, ends)
        shift = float(np.max(np.einsum("ij,ij->i", new - cent, new - cent), initial=0))
        cent = new
        if shift <= 1e-6 * (scale or 1.0) and not reseeded:
            advance(iters - done)  # converged: the bar's remaining steps at once
            break
    _exact_single(cent, x, cid, kc, ends, be)
    return cent


def _check_cells(x: np.ndarray, cid: np.ndarray, kc: np.ndarray):
    """``cid`` and ``kc`` as int64 and each coarse cell's row count, or
    :class:`InvalidInputError` naming what is wrong."""
    cid = np.asarray(cid)
    kc = np.asarray(kc)
    if cid.shape != (x.shape[0],) or not np.issubdtype(cid.dtype, np.integer):
        raise InvalidInputError(f"cid must be one integer coarse cell per row, shape "
                                f"({x.shape[0]},); got {cid.dtype}{list(cid.shape)}")
    if kc.ndim != 1 or not np.issubdtype(kc.dtype, np.integer) or (kc < 0).any():
        raise InvalidInputError("kc must be a 1-d array of non-negative integers")
    cid, kc = cid.astype(np.int64), kc.astype(np.int64)
    if cid.size and (cid.min() < 0 or cid.max() >= kc.size):
        raise InvalidInputError(f"cid holds coarse cells outside [0, {kc.size}): "
                                f"{int(cid.min())} .. {int(cid.max())}")
    sizes = np.bincount(cid, minlength=kc.size)
    short = np.flatnonzero(kc > sizes)
    if short.size:
        j = int(short[0])
        raise InvalidInputError(f"coarse cell {j} asks for {int(kc[j])} centroids but "
                                f"holds {int(sizes[j])} rows ({short.size} such cells)")
    return cid, kc, sizes


def _reseed(new, empty, xs, d2, scell, ss, ends) -> int:
    """Each emptied centroid ``empty`` (in place in ``new``) to its coarse cell's sample
    row farthest from its centroid, each row used once; rows already on a centroid
    (``d2 == 0``) are not taken: such a centroid stays. Returns how many moved."""
    if not empty.size:
        return 0
    far = np.lexsort((-d2, scell))  # per cell, its farthest rows first
    owner = np.searchsorted(ends, empty, side="right")
    taken = np.zeros(ends.size, np.int64)
    moved = 0
    for e, j in zip(empty.tolist(), owner.tolist(), strict=True):
        at = ss[j] + taken[j]
        if at < ss[j + 1] and d2[far[at]] > 0:
            new[e] = xs[far[at]]
            taken[j] += 1
            moved += 1
    return moved


def _exact_single(cent, x, cid, kc, ends, be) -> None:
    """The centroid of every coarse cell with ``kc == 1`` set (in place) to the mean of
    all the cell's rows: ``kmeans_sums`` over those rows only, 64 MB at a time."""
    one = kc == 1
    rows = np.flatnonzero(one[cid])
    if not rows.size:
        return
    sums = np.zeros((kc.size, x.shape[1]))
    counts = np.zeros(kc.size, np.int64)
    step = max(1, (64 << 20) // (4 * x.shape[1]))  # at most 64 MB of rows at a time
    for s in range(0, rows.size, step):
        part = rows[s : s + step]
        ps, pc = be.kmeans_sums(be.from_host(np.ascontiguousarray(x[part], np.float32)),
                                cid[part], kc.size)
        sums += ps
        counts += pc
    at = np.flatnonzero(one)
    cent[ends[at] - 1] = (sums[at] / counts[at, None]).astype(np.float32)


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
    manager giving ``advance(n=1)`` (a step: the coarse k-means, each iteration of the
    fine k-means, each refinement iteration; the fine k-means' remaining steps in one call
    when it converges early)."""
    from ..progress import Progress

    n = x.shape[0]
    d1, d2 = default_shape(n)
    n1, n2 = min(n1 or d1, n), n2 or d2
    steps = 1 + kmeans_iters + (refine_iters if n1 * n2 >= 2 else 0)
    bar = progress(steps) if progress is not None else \
        Progress(steps, f"hrm2: k-means on {n} rows", wanted=n >= PROGRESS_ROWS)
    with bar as advance:
        c = two_level_kmeans(x, n1, n2, backend, seed=seed, iters=kmeans_iters,
                             max_points_per_centroid=max_points_per_centroid,
                             advance=advance)
        return refine(c, x, backend, iters=refine_iters, seed=seed,
                      max_points_per_centroid=max_points_per_centroid, advance=advance)
