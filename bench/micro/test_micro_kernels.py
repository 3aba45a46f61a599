"""Per-kernel micro-benchmarks for pytest-benchmark, one group per kernel, every backend
against the host baselines that are installed (NumPy, FAISS, PyTorch):

    .venv/bin/python -m pytest bench/micro --benchmark-json=bench/results/micro.json
    .venv/bin/python -m pytest bench/micro --benchmark-group-by=group -k knn

Each benchmark first checks one call against the NumPy reference, then times whole calls
with the device synchronised inside the timed function. ``--benchmark-disable`` runs each
once as a plain test (the test suite does that). For sweeps, limits and reports use
``m2m-gpu bench``; these are for a kernel developer's edit-measure loop.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import SIZES

from m2m_gpu import reference as ref
from m2m_gpu.backends import get_backend
from m2m_gpu.backends.base import (
    MODE_SPLAT,
    PARAM_ALPHA,
    PARAM_KAPPA,
    PARAM_TICK,
    HebbianPlan,
    HebbianRates,
)
from m2m_gpu.bench.cases import faiss_knn, host, numpy_knn, recall, resident, torch_knn

K = SIZES["k"]
CHECK = slice(0, 16)  # queries checked against the reference before timing


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn(backend, data, timed, metric):
    X, Q, _ = data
    xn, _, sq = resident(backend, X, np.zeros((X.shape[0], 4), np.float32))
    qn = backend.from_host(Q)

    def fn():
        return host(backend, backend.knn(qn, xn, K, metric,
                                         database_sqnorms=sq if metric == "l2" else None))

    _, I0 = ref.knn(Q[CHECK], X, K, metric)
    assert recall(fn()[1][CHECK], I0) >= 0.99
    timed(f"knn-{metric}", fn, backend.synchronize)


@pytest.mark.parametrize("impl", ["numpy", "faiss", "torch"])
def test_knn_l2_baseline(impl, data, timed):
    """The bench suite's host baselines (m2m_gpu.bench.cases), in the knn-l2 group."""
    X, Q, _ = data
    if impl != "numpy" and not _installed(impl):
        pytest.skip(f"baseline {impl} is not installed")
    xsq = np.einsum("ij,ij->i", X, X)
    if impl == "numpy":
        fn = numpy_knn(X, Q, xsq, K, "l2")
    elif impl == "faiss":
        [(_, _, fn)] = faiss_knn(X, Q, K, "l2", np.float32, gpu=False)
    else:
        fn = torch_knn(X, Q, xsq, K, "l2", "cpu")
    _, I0 = ref.knn(Q[CHECK], X, K, "l2")
    assert recall(fn()[CHECK], I0) >= 0.99
    timed("knn-l2", fn)


def test_knn_float16_storage(backend, data, timed):
    """Rows stored as float16 (half the bytes read), float32 arithmetic."""
    X, Q, _ = data
    xh = X.astype(np.float16)
    xn, qn = backend.from_host(xh), backend.from_host(Q)

    def fn():
        return host(backend, backend.knn(qn, xn, K, "ip"))

    _, I0 = ref.knn(Q[CHECK], xh.astype(np.float32), K, "ip")
    assert recall(fn()[1][CHECK], I0) >= 0.99
    timed("knn-ip-float16", fn, backend.synchronize)


def test_knn_float16_storage_faiss(data, timed):
    if not _installed("faiss"):
        pytest.skip("baseline faiss is not installed")
    X, Q, _ = data
    [(_, _, fn)] = faiss_knn(X, Q, K, "ip", np.float16, gpu=False)
    _, I0 = ref.knn(Q[CHECK], X.astype(np.float16).astype(np.float32), K, "ip")
    assert recall(fn()[CHECK], I0) >= 0.99
    timed("knn-ip-float16", fn)


def test_splat_topk(backend, data, timed):
    X, Q, P = data
    xn, pn, sq = resident(backend, X, P)
    qn = backend.from_host(Q)

    def fn():
        return host(backend, backend.splat_topk(qn, xn, pn, K, MODE_SPLAT, sqnorms=sq))

    _, I0, _ = ref.splat_topk(Q[CHECK], X, P[:, PARAM_ALPHA], P[:, PARAM_KAPPA], K)
    assert recall(fn()[1][CHECK], I0) >= 0.99
    timed("splat_topk", fn, backend.synchronize)


def test_energy(backend, data, timed):
    X, Q, P = data
    xn, pn, sq = resident(backend, X, P)
    qn = backend.from_host(Q)

    def fn():
        return host(backend, backend.energy(qn, xn, pn, sqnorms=sq))

    E0 = ref.energy(Q[CHECK], X, P[:, PARAM_ALPHA], P[:, PARAM_KAPPA])
    np.testing.assert_allclose(fn()[CHECK], E0, rtol=1e-3, atol=1e-3)
    timed("energy", fn, backend.synchronize)


def test_hebbian(backend, data, timed):
    """One batch of m feedback events (one relevant and one irrelevant splat each)."""
    X, Q, P = data
    n, m = X.shape[0], Q.shape[0]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    rng = np.random.default_rng(5)
    rel = rng.integers(0, n, m)
    irr = (rel + 1 + rng.integers(0, n - 1, m)) % n
    plan = HebbianPlan.build(np.repeat(np.arange(m), 2), np.stack([rel, irr], 1).ravel(),
                             np.tile([1, -1], m))
    rates = HebbianRates(renormalize=True)
    mu_ref, alpha_ref, _ = ref.hebbian(Xn, P[:, PARAM_ALPHA], P[:, PARAM_KAPPA], Qn,
                                       [[r] for r in rel], [[i] for i in irr], metric="cosine")
    xn, pn, _ = resident(backend, Xn, P)  # on cpu: Xn and P themselves, changed in place
    qn = backend.from_host(Qn)
    backend.hebbian(xn, pn, qn, plan, rates)
    np.testing.assert_allclose(np.asarray(backend.to_host(xn)), mu_ref, atol=1e-3)
    np.testing.assert_allclose(np.asarray(backend.to_host(pn))[:, PARAM_ALPHA], alpha_ref,
                               atol=1e-3)
    timed("hebbian", lambda: backend.hebbian(xn, pn, qn, plan, rates), backend.synchronize)


def test_decay(backend, data, timed):
    _, _, P = data
    pn = backend.from_host(P)
    lam = np.log(2.0) / 50.0
    backend.decay(pn, 10.0, lam)
    got = np.asarray(backend.to_host(pn))
    np.testing.assert_allclose(got[:, PARAM_ALPHA],
                               ref.decay(P[:, PARAM_ALPHA], P[:, PARAM_TICK], 10.0, 50.0),
                               rtol=1e-5)
    now = iter(range(11, 1 << 30))
    timed("decay", lambda: backend.decay(pn, float(next(now)), lam), backend.synchronize)


def test_kmeans_assign(backend, data, timed):
    """Nearest of 4 sqrt(n) centroids for every row (one k-means step's search)."""
    X, _, _ = data
    cents = X[:: max(1, X.shape[0] // int(4 * np.sqrt(X.shape[0])))].copy()
    xn, cn = backend.from_host(X), backend.from_host(cents)

    def fn():
        return host(backend, backend.knn(xn, cn, 1, "l2"))

    _, A0 = ref.kmeans_assign(X[:512], cents)
    assert np.mean(fn()[1][:512, 0] == A0) >= 0.99
    timed("kmeans_assign", fn, backend.synchronize)


def test_kmeans_sums(backend, data, timed):
    X, _, _ = data
    c = int(4 * np.sqrt(X.shape[0]))
    assign = np.arange(X.shape[0], dtype=np.int64) % c
    xn = backend.from_host(X)
    sums, counts = backend.kmeans_sums(xn, assign, c)
    np.testing.assert_array_equal(counts, np.bincount(assign, minlength=c))
    want = np.zeros((c, X.shape[1]))
    np.add.at(want, assign, X.astype(np.float64))
    np.testing.assert_allclose(sums, want, rtol=1e-4, atol=1e-3)
    timed("kmeans_sums", lambda: backend.kmeans_sums(xn, assign, c), backend.synchronize)


def test_philox(backend, timed):
    n, d = SIZES["n"], SIZES["d"]

    def fn():
        return host(backend, backend.philox(0, n, d, 1234, 0))

    want = get_backend("cpu").philox(0, 64, d, 1234, 0)
    np.testing.assert_allclose(fn()[:64], want, rtol=1e-5, atol=1e-5)
    timed("philox", fn, backend.synchronize)


@pytest.fixture(scope="module")
def trained(_data):
    from m2m_gpu.hrm2 import IndexHRM2

    X, _, _ = _data
    index = IndexHRM2(X.shape[1], backend="cpu")
    index.train(X)
    return index


def test_hrm2_search(backend, data, trained, timed):
    from m2m_gpu.hrm2 import IndexHRM2

    X, Q, _ = data
    index = IndexHRM2(X.shape[1], backend=backend.name)
    index.copy_training(trained)
    index.add(X)
    _, I0 = ref.knn(Q, X, K, "l2")
    assert recall(index.search(Q, K)[1], I0) >= 0.8  # approximate: default probing
    timed("hrm2_search", lambda: index.search(Q, K), backend.synchronize)
