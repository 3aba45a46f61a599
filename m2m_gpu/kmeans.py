"""k-means on any backend: the two kernels of SPEC section 2 (assign, kmeans_update) and the
driver around them, used to build HRM2 (SPEC section 3).

* ``assign``: nearest centroid of every row, the exact k-NN kernel with k = 1.
* ``kmeans_update``: per-centroid sums and counts on the device (``Backend.kmeans_sums``:
  members grouped in a fixed order, no float atomics, so runs are reproducible); the new
  centroid is the mean of its members; an empty cluster is re-seeded, deterministically, with
  the row farthest from its centroid that no other re-seed took.
* initialisation: k-means++ (D^2 sampling) on a subsample, with a seeded Philox generator.
* large n: Lloyd iterations run on a training sample of ``max_points_per_centroid * k`` rows
  (FAISS's default of 256), then every row can be assigned with :func:`assign`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .errors import InvalidInputError
from .inputs import prepare
from .tensor import host_array, to_native

INIT_POINTS_PER_CENTROID = 16  # k-means++ runs on at most this many rows per centroid


@dataclass
class KMeansResult:
    centroids: np.ndarray  # float32[k, d]
    inertia: float  # sum of squared distances of the training rows to their centroid
    iterations: int
    trained_on: int  # rows used for the Lloyd iterations
    reseeded: int  # empty clusters re-seeded over all iterations


def rng_for(seed: int) -> np.random.Generator:
    """The seeded generator of every sampling step: NumPy's Philox bit generator."""
    return np.random.Generator(np.random.Philox(int(seed)))


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (D^2 sampling) of k rows of host float32 ``x``; O(k n d)."""
    n = x.shape[0]
    x64 = x.astype(np.float64)
    sq = np.einsum("ij,ij->i", x64, x64)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    dmin = np.maximum(sq - 2 * x64 @ x64[chosen[0]] + sq[chosen[0]], 0)
    for j in range(1, k):
        total = dmin.sum()
        if total <= 0:  # fewer distinct rows than k: take unused rows in order
            rest = np.setdiff1d(np.arange(n), chosen[:j])[: k - j]
            chosen[j : j + rest.size] = rest
            break
        chosen[j] = np.searchsorted(np.cumsum(dmin), rng.random() * total, side="right")
        chosen[j] = min(chosen[j], n - 1)
        c = chosen[j]
        np.minimum(dmin, np.maximum(sq - 2 * x64 @ x64[c] + sq[c], 0), out=dmin)
    return x[chosen].copy()


def assign(x: Any, centroids: Any, backend: str | Backend | None = None):
    """``(squared distance, centroid index)`` of the nearest centroid of each row."""
    from .knn import knn

    D, I = knn(x, centroids, 1, "l2", backend=backend)
    return np.asarray(D)[:, 0], np.asarray(I)[:, 0]


def kmeans(x: Any, k: int, *, iters: int = 20, seed: int = 0,
           max_points_per_centroid: int = 256, tol: float = 1e-6,
           init: Any = "k-means++", backend: str | Backend | None = None) -> KMeansResult:
    """Lloyd's k-means (squared L2) of the rows of ``x`` on ``backend``.

    ``init``: ``"k-means++"`` or a float32[k, d] array of starting centroids. Stops after
    ``iters`` iterations or when no centroid moves by more than ``tol`` times the data's
    mean squared norm.
    """
    be = get_backend(backend)
    xs, _, _ = prepare(x, "x", "l2")
    xh = host_array(xs)
    n, d = xh.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise InvalidInputError(f"k must be an integer in [1, n = {n}], got {k!r}")
    if iters < 1:
        raise InvalidInputError(f"iters must be >= 1, got {iters}")
    rng = rng_for(seed)
    if n > k * max_points_per_centroid:  # train on a sample
        rows = np.sort(rng.choice(n, k * max_points_per_centroid, replace=False))
        xh = xh[rows]
    if isinstance(init, str):
        if init != "k-means++":
            raise InvalidInputError(f"init must be 'k-means++' or an array, got {init!r}")
        m_init = min(xh.shape[0], INIT_POINTS_PER_CENTROID * k)
        pool = xh if m_init == xh.shape[0] else xh[np.sort(rng.choice(xh.shape[0], m_init,
                                                                       replace=False))]
        cent = kmeans_pp(pool, k, rng)
    else:
        cent = np.ascontiguousarray(init, dtype=np.float32)
        if cent.shape != (k, d) or not np.isfinite(cent).all():
            raise InvalidInputError(f"init centroids must be finite float32[{k}, {d}]")
    xn = to_native(be, np.ascontiguousarray(xh))
    scale = float(np.mean(np.einsum("ij,ij->i", xh, xh))) or 1.0
    reseeded = 0
    inertia = np.inf
    done = 0
    while done < iters:
        done += 1
        D, I = be.knn(xn, be.from_host(cent), 1, "l2")
        D = np.asarray(be.to_host(D))[:, 0]
        I = np.asarray(be.to_host(I))[:, 0]
        inertia = float(D.astype(np.float64).sum())
        sums, counts = be.kmeans_sums(xn, I, k)
        new = np.empty_like(cent)
        full = counts > 0
        new[full] = (sums[full] / counts[full, None]).astype(np.float32)
        empty = np.flatnonzero(~full)
        if empty.size:  # farthest rows first, each used once
            far = np.argsort(-D, kind="stable")[: empty.size]
            new[empty] = xh[far]
            reseeded += empty.size
        shift = float(np.max(np.einsum("ij,ij->i", new - cent, new - cent)))
        cent = new
        if shift <= tol * scale and not empty.size:
            break
    return KMeansResult(cent, inertia, done, xh.shape[0], reseeded)
