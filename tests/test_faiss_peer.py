"""FAISS's own flat-index checks against the drop-in.

The cases of FAISS's ``tests/test_index.py`` for flat indexes (``TestIndexFlat``,
``TestDbParallelSearch``, ``TestDistancesPositive``, ``TestSearchAndReconstruct``, the
empty batch, invalid ``k``, ``reconstruct`` past ``ntotal``), rewritten here against a
small shim that gives this package FAISS's module shape (``faiss.IndexFlat(d, metric)``,
``faiss.METRIC_*``), run on every backend, and compared with faiss-cpu itself where it is
installed. Checks are FAISS's: brute-force references in NumPy, ``decimal=5``,
strict radius inequalities.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu.errors import InvalidInputError


def shim(backend: str):
    """``faiss``-shaped names over m2m_gpu, bound to one backend."""
    return types.SimpleNamespace(
        METRIC_L2=m2m_gpu.METRIC_L2, METRIC_INNER_PRODUCT=m2m_gpu.METRIC_INNER_PRODUCT,
        IndexFlat=lambda d, metric=m2m_gpu.METRIC_L2: m2m_gpu.IndexFlat(d, metric, backend),
        IndexFlatL2=lambda d: m2m_gpu.IndexFlatL2(d, backend),
        IndexFlatIP=lambda d: m2m_gpu.IndexFlatIP(d, backend))


def dataset(d: int, nb: int, nq: int, seed: int = 1234):
    """Like FAISS's ``get_dataset_2``: points on a low-dimensional manifold, so that
    distances are spread and ties rare."""
    rs = np.random.RandomState(seed)
    x = rs.normal(size=(nb + nq, min(d, 10)))
    x = np.dot(x, rs.rand(x.shape[1], d))
    x = x * (rs.rand(d) * 4 + 0.1)
    x = np.sin(x).astype("float32")
    return x[:nb], x[nb:]


def brute(xq, xb, metric):
    if metric == m2m_gpu.METRIC_L2:
        all_dis = ((xq[:, None, :].astype(np.float64) - xb[None, :, :]) ** 2).sum(2)
        order = all_dis.argsort(axis=1, kind="stable")
    else:
        all_dis = xq.astype(np.float64) @ xb.T.astype(np.float64)
        order = (-all_dis).argsort(axis=1, kind="stable")
    return all_dis, order


@pytest.mark.parametrize("nq,k", [(10, 10), (200, 10), (10, 150), (200, 150)])
@pytest.mark.parametrize("metric", ["METRIC_L2", "METRIC_INNER_PRODUCT"])
def test_index_flat_knn_and_range_search(backend, metric, nq, k):
    faiss = shim(backend.name)
    mt = getattr(faiss, metric)
    d, nb = 32, 1000
    xb, xq = dataset(d, nb, nq)
    index = faiss.IndexFlat(d, mt)
    index.add(xb)
    D1, I1 = index.search(xq, k)
    all_dis, order = brute(xq, xb, mt)
    Iref = order[:, :k]
    Dref = all_dis[np.arange(nq)[:, None], Iref]
    assert (Iref != I1).sum() <= Iref.size * 0.0002  # not too many elements off
    np.testing.assert_almost_equal(Dref, D1, decimal=4 if backend.name != "cpu" else 5)
    radius = float(np.median(Dref[:, -1]))
    lims, D2, I2 = index.range_search(xq, radius)
    assert lims.shape == (nq + 1,) and lims[0] == 0 and lims[-1] == I2.size == D2.size
    for i in range(nq):
        l0, l1 = lims[i], lims[i + 1]
        Il = np.sort(I2[l0:l1])
        inside = all_dis[i] < radius if mt == faiss.METRIC_L2 else all_dis[i] > radius
        (Ilref,) = np.where(inside)
        # a row within float32 rounding of the radius may fall on either side
        near = np.abs(all_dis[i] - radius) < 1e-4 * max(1.0, abs(radius))
        assert set(Il.tolist()) ^ set(Ilref.tolist()) <= set(np.flatnonzero(near).tolist())
        common = np.intersect1d(Il, Ilref)
        got = dict(zip(I2[l0:l1].tolist(), D2[l0:l1].tolist(), strict=True))
        np.testing.assert_almost_equal([got[j] for j in common], all_dis[i, common],
                                       decimal=4)


def test_empty_query_batch(backend):
    faiss = shim(backend.name)
    d = 32
    xb, _ = dataset(d, 1000, 1)
    for mt in (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT):
        index = faiss.IndexFlat(d, mt)
        index.add(xb)
        D, I = index.search(np.empty((0, d), dtype="float32"), 10)
        assert D.shape == (0, 10) and I.shape == (0, 10)
        lims, _, _ = index.range_search(np.empty((0, d), dtype="float32"), 1.0)
        np.testing.assert_array_equal(lims, np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize("metric", ["METRIC_L2", "METRIC_INNER_PRODUCT"])
@pytest.mark.parametrize("nq,k", [(1, 10), (4, 10), (2, 1), (2, 200)])
def test_database_parallel_search(backend, metric, nq, k):
    """Few queries over a large database (FAISS splits the database across threads
    then; this package's cpu backend does too, and the GPU backends split selection)."""
    faiss = shim(backend.name)
    mt = getattr(faiss, metric)
    d, nb = 64, 20000
    rs = np.random.RandomState(1234)
    xb = rs.random_sample((nb, d)).astype("float32")
    xq = rs.random_sample((nq, d)).astype("float32")
    index = faiss.IndexFlat(d, mt)
    index.add(xb)
    D, _ = index.search(xq, k)
    all_dis, order = brute(xq, xb, mt)
    Dref = all_dis[np.arange(nq)[:, None], order[:, :k]]
    rel = np.abs(D - Dref) / np.maximum(1.0, np.abs(Dref))
    assert rel.max() < 1e-5 * (1 if backend.name == "cpu" else 10)


def test_l2_distances_are_never_negative(backend):
    """Round-off of the ||q||^2 + ||x||^2 - 2 q.x form must not give negative distances
    (FAISS's TestDistancesPositive: each point is its own nearest neighbour)."""
    faiss = shim(backend.name)
    rs = np.random.RandomState(1234)
    x = rs.rand(5000, 128).astype("float32")
    index = faiss.IndexFlatL2(128)
    index.add(x)
    D, I = index.search(x[:500], 10)
    assert np.all(D >= 0)
    assert (I[:, 0] == np.arange(500)).all()


def test_search_and_reconstruct(backend):
    faiss = shim(backend.name)
    d, nb, nq, k = 32, 1000, 200, 10
    xb, xq = dataset(d, nb, nq, seed=7)
    index = faiss.IndexFlatL2(d)
    index.add(xb)
    D_ref, I_ref = index.search(xq, k)
    R_ref = index.reconstruct_n(0, nb)
    D, I, R = index.search_and_reconstruct(xq, k)
    np.testing.assert_almost_equal(D, D_ref, decimal=5)
    np.testing.assert_array_equal(I, I_ref)
    assert R.shape == (nq, k, d)
    found = I.reshape(-1) >= 0
    R_flat, I_flat = R.reshape(-1, d)[found], I.reshape(-1)[found]
    assert np.linalg.norm(R_flat - R_ref[I_flat]) == 0.0
    assert np.abs(R_flat - xb[I_flat]).max() == 0.0  # eps = 0 for a flat index
    _, I_pad, R_pad = index.search_and_reconstruct(xq[:2], nb + 5)  # padded results
    assert (I_pad[:, nb:] == -1).all() and np.isnan(R_pad[:, nb:]).all()


def test_invalid_k_and_reconstruct_past_ntotal_raise(backend):
    faiss = shim(backend.name)
    xb, xq = dataset(5, 10, 3)
    index = faiss.IndexFlat(5, faiss.METRIC_L2)
    index.add(xb)
    with pytest.raises(InvalidInputError):
        index.search(xq, -5)
    D, I = index.search(xq, 5)
    assert D.shape == I.shape == (3, 5)
    index.reconstruct(9)
    with pytest.raises(InvalidInputError):
        index.reconstruct(10)


def test_results_equal_faiss_itself():
    faiss = pytest.importorskip("faiss")
    xb, xq = dataset(32, 3000, 50, seed=3)
    for ours, theirs in ((m2m_gpu.IndexFlatL2(32, backend="cpu"), faiss.IndexFlatL2(32)),
                         (m2m_gpu.IndexFlat(32, faiss.METRIC_INNER_PRODUCT, "cpu"),
                          faiss.IndexFlat(32, faiss.METRIC_INNER_PRODUCT))):
        for index in (ours, theirs):
            index.add(xb)
            index.remove_ids(np.arange(0, 3000, 5))  # FAISS renumbers; so do we
        D, I = ours.search(xq, 20)
        Df, If = theirs.search(xq, 20)
        assert (I != If).mean() < 1e-3
        np.testing.assert_allclose(D, Df, rtol=1e-5, atol=1e-4)
        radius = float(np.median(Df[:, 10]))
        lims, Dr, Ir = ours.range_search(xq, radius)
        limsf, _, Irf = theirs.range_search(xq, radius)
        assert np.abs(lims - limsf).max() <= 2
        for i in range(50):
            a, b = set(Ir[lims[i]:lims[i + 1]]), set(Irf[limsf[i]:limsf[i + 1]])
            assert len(a ^ b) <= 2
