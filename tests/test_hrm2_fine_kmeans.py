"""HRM2's second level: every coarse cell's k-means in one pass per iteration
(``hrm2.train.fine_kmeans``, on the backend's cell scan and k-means sums), on every backend.

The reference is what Lloyd's algorithm promises at convergence, checked with NumPy: each
centroid is the mean of the rows of its own coarse cell that are nearer to it than to any
other centroid of that cell."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu.hrm2 import train as T


def _cells(n1, per, d, seed):
    """Rows of ``n1`` well separated coarse cells, each holding a few tight clumps."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n1, d)).astype(np.float32) * 40
    x, cid = [], []
    for j, n in enumerate(per):
        clumps = centers[j] + rng.standard_normal((4, d)).astype(np.float32) * 6
        x.append(clumps[rng.integers(0, 4, n)] + rng.standard_normal((n, d)).astype(
            np.float32))
        cid.append(np.full(n, j))
    return np.concatenate(x).astype(np.float32), np.concatenate(cid)


def _lloyd_fixed_point(x, cid, kc, cent):
    """Max distance between each centroid and the mean of its own-cell Voronoi rows."""
    ends = np.cumsum(kc)
    worst = 0.0
    for j in np.flatnonzero(kc):
        mine = cent[ends[j] - kc[j] : ends[j]]
        rows = x[cid == j]
        a = ((rows[:, None, :] - mine[None]) ** 2).sum(-1).argmin(1)
        for c in range(kc[j]):
            if (a == c).any():
                worst = max(worst, float(np.abs(rows[a == c].mean(0) - mine[c]).max()))
    return worst


def test_fine_kmeans_converges_to_each_cells_lloyd_fixed_point(backend):
    """Awkward sizes: a cell with one centroid, an empty coarse cell (no centroids), one
    with as many centroids as the clumps allow, odd d."""
    per = [300, 1, 0, 517, 129]
    x, cid = _cells(5, per, 7, seed=3)
    kc = np.array([4, 1, 0, 9, 3])
    cent = T.fine_kmeans(x, cid, kc, backend, seed=5, iters=60, max_points_per_centroid=256)
    assert cent.shape == (kc.sum(), 7) and cent.dtype == np.float32
    assert np.isfinite(cent).all()
    # it stops once no centroid moves by more than 1e-6 of the mean squared norm
    stop = np.sqrt(1e-6 * np.mean((x.astype(np.float64) ** 2).sum(1)))
    assert _lloyd_fixed_point(x, cid, kc, cent) <= stop + 1e-4
    np.testing.assert_allclose(cent[4], x[cid == 1][0])  # a one-row cell: that row
    ends = np.cumsum(kc)
    for j in np.flatnonzero(kc):  # each cell's centroids stay among its own rows
        rows = x[cid == j]
        mine = cent[ends[j] - kc[j] : ends[j]]
        assert (mine >= rows.min(0) - 1e-4).all() and (mine <= rows.max(0) + 1e-4).all()


def test_fine_kmeans_same_centroids_on_every_backend(backend):
    """Same seeds, same sample, same arithmetic up to the kernels' tolerance: the same
    centroids as the cpu backend's (the data has no near ties)."""
    x, cid = _cells(3, [400, 250, 90], 16, seed=8)
    kc = np.array([5, 3, 2])
    got = T.fine_kmeans(x, cid, kc, backend, seed=1, iters=8, max_points_per_centroid=256)
    want = T.fine_kmeans(x, cid, kc, m2m_gpu.get_backend("cpu"), seed=1, iters=8,
                         max_points_per_centroid=256)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_fine_kmeans_trains_on_at_most_its_cap_per_cell(backend, monkeypatch):
    """Each cell is sampled to ``max_points_per_centroid * kc`` rows: with a cap of 8 rows
    per centroid, the k-means sums never see more."""
    x, cid = _cells(2, [500, 40], 5, seed=2)
    kc = np.array([3, 2])
    seen = []
    real = type(backend).kmeans_sums

    def counting(self, xs, assign, k):
        seen.append(int(np.asarray(assign).size))
        return real(self, xs, assign, k)

    monkeypatch.setattr(type(backend), "kmeans_sums", counting)
    T.fine_kmeans(x, cid, kc, backend, seed=0, iters=2, max_points_per_centroid=8)
    assert seen and all(s == 3 * 8 + 2 * 8 for s in seen)


def test_two_level_build_quality_unchanged_in_shape(backend):
    """The whole two-level step: ``n1 * n2`` fine cells (fewer only for tiny cells), every
    fine centroid nearer its own coarse centroid's rows than a random row would be."""
    X = m2m_gpu.synthetic(6000, 12, seed=7, kind="clustered")
    c = T.two_level_kmeans(X, 6, 10, backend, seed=0, iters=10,
                           max_points_per_centroid=256)
    assert c.cells == 60 and c.fine_ranges[-1, 1] == 60
    assert (np.diff(c.parent) >= 0).all()
    d_fine = ((X[:, None, :] - c.fine[None]) ** 2).sum(-1).min(1).mean()
    d_coarse = ((X[:, None, :] - c.coarse[None]) ** 2).sum(-1).min(1).mean()
    assert d_fine < 0.8 * d_coarse


@pytest.mark.parametrize("iters", [1, 3])
def test_fine_kmeans_is_deterministic(iters):
    x, cid = _cells(3, [200, 150, 60], 9, seed=4)
    kc = np.array([4, 3, 2])
    be = m2m_gpu.get_backend("cpu")
    a = T.fine_kmeans(x, cid, kc, be, seed=9, iters=iters, max_points_per_centroid=16)
    b = T.fine_kmeans(x, cid, kc, be, seed=9, iters=iters, max_points_per_centroid=16)
    np.testing.assert_array_equal(a, b)


def test_fine_kmeans_cell_with_fewer_distinct_rows_than_centroids(backend):
    """A coarse cell of 3 distinct rows (each repeated) asked for 5 centroids: the two
    that stay empty keep their place instead of being re-seeded every iteration (so the
    build stops early), and every centroid stays inside its own cell; the other cell is
    unaffected."""
    rng = np.random.default_rng(11)
    twins = rng.standard_normal((3, 6)).astype(np.float32) * 5 + 50
    other = rng.standard_normal((200, 6)).astype(np.float32)
    x = np.concatenate([np.repeat(twins, 20, axis=0), other])
    cid = np.repeat([0, 1], [60, 200])
    kc = np.array([5, 4])
    steps = []
    cent = T.fine_kmeans(x, cid, kc, backend, seed=2, iters=50, max_points_per_centroid=64,
                         advance=lambda n=1: steps.append(n))
    assert sum(steps) == 50 and len(steps) < 50  # converged early, bar completed
    mine = cent[:5]
    assert (mine >= twins.min(0) - 1e-4).all() and (mine <= twins.max(0) + 1e-4).all()
    for t in twins:  # each distinct row is a centroid of its cell
        assert np.abs(mine - t).max(1).min() < 1e-4
    theirs = cent[5:]
    assert (theirs >= other.min(0) - 1e-4).all() and (theirs <= other.max(0) + 1e-4).all()


def test_fine_kmeans_reseeds_an_emptied_centroid_inside_its_own_cell(backend, monkeypatch):
    """A seed no row is near (forced here: far beyond the data, on the other cell's
    side) gets no rows, so it is re-seeded with its own cell's row farthest from its
    centroid, never another cell's, and Lloyd's iterations go on from there to a fixed
    point with distinct centroids."""
    x, cid = _cells(2, [240, 160], 6, seed=9)
    kc = np.array([3, 2])

    def twin_seeds(pool, k, rng):  # k-means++'s seeds, the second one sent far away
        seeds = T_kmeans_pp(pool, k, rng)
        seeds[1] = (seeds[0] - pool.mean(0)) * 1e3
        return seeds

    T_kmeans_pp = T.kmeans_pp
    monkeypatch.setattr(T, "kmeans_pp", twin_seeds)
    cent = T.fine_kmeans(x, cid, kc, backend, seed=0, iters=60, max_points_per_centroid=256)
    ends = np.cumsum(kc)
    for j in range(2):
        mine, rows = cent[ends[j] - kc[j] : ends[j]], x[cid == j]
        assert (mine >= rows.min(0) - 1e-4).all() and (mine <= rows.max(0) + 1e-4).all()
        gaps = np.abs(mine[:, None] - mine[None]).max(-1) + np.eye(kc[j]) * 1e9
        assert gaps.min() > 1e-3
    stop = np.sqrt(1e-6 * np.mean((x.astype(np.float64) ** 2).sum(1)))
    assert _lloyd_fixed_point(x, cid, kc, cent) <= stop + 1e-4


def test_fine_kmeans_single_centroid_cells_get_the_mean_of_all_rows(backend):
    """A coarse cell with one centroid trains on no sample: its centroid is the mean of
    every one of its rows, however small the sampling cap."""
    x, cid = _cells(3, [500, 90, 300], 5, seed=6)
    kc = np.array([1, 2, 1])
    cent = T.fine_kmeans(x, cid, kc, backend, seed=0, iters=4, max_points_per_centroid=8)
    np.testing.assert_allclose(cent[0], x[cid == 0].astype(np.float64).mean(0),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cent[3], x[cid == 2].astype(np.float64).mean(0),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cid, kc, words", [
    (np.array([0, 0, 1]), np.array([1, 2]), "coarse cell 1 asks for 2 centroids"),
    (np.array([0, 2, 1]), np.array([1, 1]), "outside [0, 2)"),
    (np.array([0, -1, 1]), np.array([1, 1]), "outside [0, 2)"),
    (np.array([0, 1]), np.array([1, 1]), "one integer coarse cell per row"),
    (np.array([0.0, 1.0, 1.0]), np.array([1, 1]), "one integer coarse cell per row"),
    (np.array([0, 1, 1]), np.array([1, -1]), "non-negative"),
])
def test_fine_kmeans_rejects_cells_it_cannot_train(cid, kc, words):
    from m2m_gpu.errors import InvalidInputError

    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    with pytest.raises(InvalidInputError, match=words.replace("[", r"\[").replace(
            "(", r"\(").replace(")", r"\)")):
        T.fine_kmeans(x, cid, kc, m2m_gpu.get_backend("cpu"), seed=0, iters=2,
                      max_points_per_centroid=8)
