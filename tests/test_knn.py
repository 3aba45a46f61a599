"""Exact k-NN: one test body per case, run on every backend against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError, UnknownMetricError

from .knn_check import assert_knn_matches
from .tolerances import tolerance

METRICS = ["l2", "ip", "cosine"]

# (m, n, d, k): 1s, primes, sizes that are not multiples of the workgroup sizes (16, 64,
# 256), d from 1 to over 1024, k = 1, k = n, k > n.
SHAPES = [
    (1, 1, 1, 1),
    (1, 7, 3, 7),
    (3, 97, 1, 5),
    (5, 101, 2, 150),  # k > n
    (17, 257, 31, 257),  # k = n
    (2, 1031, 129, 1),
    (33, 509, 67, 64),
    (4, 61, 1100, 10),  # d > 1024
    (6, 2053, 16, 300),
    (700, 1024, 5, 1),  # k = 1 over a few rows (k-means' assignment), many query tiles
    (40, 1025, 9, 1),  # one row too many for that path
]


def check(backend, Q, X, k, metric, dtype=np.float32):
    D, I = m2m_gpu.knn(Q, X, k, metric=metric, backend=backend.name)
    assert isinstance(D, np.ndarray) and isinstance(I, np.ndarray)
    rtol, atol = tolerance(backend.name, dtype)
    assert_knn_matches(D, I, Q, X, k, metric, rtol, atol)
    return D, I


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("m,n,d,k", SHAPES)
def test_knn_matches_reference(backend, rng, m, n, d, k, metric):
    Q = rng.standard_normal((m, d)).astype(np.float32)
    X = rng.standard_normal((n, d)).astype(np.float32)
    check(backend, Q, X, k, metric)


@pytest.mark.parametrize("metric", METRICS)
def test_knn_many_tiles_and_chunks(backend, rng, metric, small_tiles):
    """Small tile budgets force the merge across many tiles (and Vulkan chunks)."""
    for m in (1, 3, 40):  # the streaming path and the batched path of the cpu backend
        Q = rng.standard_normal((m, 24)).astype(np.float32)
        X = rng.standard_normal((3001, 24)).astype(np.float32)
        check(backend, Q, X, 50, metric)


@pytest.mark.parametrize("metric", METRICS)
def test_knn_ties(backend, rng, metric):
    """Duplicated database rows give equal distances; any order among them is fine."""
    base = rng.standard_normal((40, 8)).astype(np.float32)
    X = np.repeat(base, 5, axis=0)  # every distance appears five times
    Q = rng.standard_normal((9, 8)).astype(np.float32)
    for k in (1, 3, 5, 7, 200):
        check(backend, Q, X, k, metric)


@pytest.mark.parametrize("metric", METRICS)
def test_knn_integer_valued_data_with_exact_ties(backend, metric):
    """Small integer coordinates: many exactly equal distances, exactly representable."""
    grid = np.array([[i, j] for i in range(-3, 4) for j in range(-3, 4) if (i, j) != (0, 0)],
                    dtype=np.float32)
    Q = np.array([[0, 0], [1, 1], [0.5, 0.5]], dtype=np.float32)
    if metric == "cosine":
        Q = Q + 0.25
    for k in (1, 4, 8, 13, 48):
        check(backend, Q, grid, k, metric)


def test_knn_queries_on_and_next_to_stored_vectors(backend, rng):
    """Direct-form precision: a query on a stored vector is at distance 0, a query next to
    it at the tiny true distance, even with large norms (the fast form cancels there)."""
    X = (rng.standard_normal((500, 64)) * 100 + 1000).astype(np.float32)
    delta = np.zeros(64, dtype=np.float32)
    delta[3] = 0.0625  # exactly representable offset: true d2 = 0.00390625
    Q = np.stack([X[10], X[123] + delta, X[499]])
    D, I = m2m_gpu.knn(Q, X, 3, backend=backend.name)
    assert I[0, 0] == 10 and I[1, 0] == 123 and I[2, 0] == 499
    np.testing.assert_allclose(D[:, 0], [0.0, 0.00390625, 0.0], atol=1e-6)
    assert (D >= 0).all()


def test_knn_empty_database(backend):
    Q = np.ones((3, 4), dtype=np.float32)
    for metric, pad in (("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)):
        D, I = m2m_gpu.knn(Q, np.empty((0, 4), np.float32), 5, metric, backend=backend.name)
        assert D.shape == I.shape == (3, 5)
        assert (I == -1).all() and (D == pad).all()


def test_knn_empty_query_batch(backend, rng):
    X = rng.standard_normal((10, 4)).astype(np.float32)
    D, I = m2m_gpu.knn(np.empty((0, 4), np.float32), X, 3, backend=backend.name)
    assert D.shape == I.shape == (0, 3)


def test_knn_non_contiguous_and_transposed_input(backend, rng):
    big = rng.standard_normal((400, 60)).astype(np.float32)
    X = big[::2, ::3]  # strided rows and columns
    Q = np.asfortranarray(rng.standard_normal((7, 20)).astype(np.float32))
    XT = np.ascontiguousarray(X.T).T  # a transposed view
    assert not X.flags.c_contiguous and not Q.flags.c_contiguous
    assert not XT.flags.c_contiguous
    check(backend, Q, X, 9, "l2")
    check(backend, Q, XT, 9, "ip")


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_knn_converts_other_float_dtypes(backend, rng, dtype):
    Q = rng.standard_normal((5, 12)).astype(dtype)
    X = rng.standard_normal((80, 12)).astype(dtype)
    # float16 rounding happens in the input, which the reference sees too.
    check(backend, Q, X, 6, "l2", dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["queries", "database"])
def test_knn_rejects_nan_and_inf(backend, rng, bad, where):
    Q = rng.standard_normal((3, 5)).astype(np.float32)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    (Q if where == "queries" else X)[1, 2] = bad
    with pytest.raises(InvalidInputError, match=f"{where} contains NaN or inf"):
        m2m_gpu.knn(Q, X, 3, backend=backend.name)


def test_knn_rejects_bad_arguments(backend, rng):
    Q = rng.standard_normal((3, 5)).astype(np.float32)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    name = backend.name
    with pytest.raises(InvalidInputError, match="dimension 4, expected 5"):
        m2m_gpu.knn(Q[:, :4], X, 3, backend=name)
    for k in (0, -1, 2.5, True, "3"):
        with pytest.raises(InvalidInputError, match="k must be"):
            m2m_gpu.knn(Q, X, k, backend=name)
    with pytest.raises(UnknownMetricError, match="unknown metric 'hamming'"):
        m2m_gpu.knn(Q, X, 3, metric="hamming", backend=name)
    with pytest.raises(InvalidInputError, match="2-D"):
        m2m_gpu.knn(Q[0], X, 3, backend=name)
    with pytest.raises(InvalidInputError, match="cannot be converted"):
        m2m_gpu.knn(Q.astype(np.complex64), X, 3, backend=name)
    Z = X.copy()
    Z[4] = 0
    with pytest.raises(InvalidInputError, match="row 4 is a zero vector"):
        m2m_gpu.knn(Q, Z, 3, metric="cosine", backend=name)


def test_knn_large_values_refused_not_overflowed(backend):
    X = np.full((4, 3), 3e19, dtype=np.float32)  # finite, but squares overflow float32
    with pytest.raises(InvalidInputError, match="too large"):
        m2m_gpu.knn(X, X, 1, backend=backend.name)
