"""Launch limits: no kernel launch puts more than ``max_grid`` workgroups on grid y or z
(65535 on the hardware). The tests lower the limit on the backend instance, so the split
paths (philox rows, cell-scan queries, distance-kernel query blocks, row gathers) run on
small inputs, and compare with the unsplit results and the reference. A launch that would
break the limit raises GridLimitError instead of failing inside the driver."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import reference as ref
from m2m_gpu.backends.abi import PARAM_WIDTH, Key
from m2m_gpu.errors import GridLimitError, InvalidInputError
from m2m_gpu.synthetic import words

LOW = 3  # workgroups on y or z while the limit is lowered


@pytest.fixture
def low_grid(backend, monkeypatch):
    monkeypatch.setattr(backend, "max_grid", LOW)
    return backend


def test_the_limit_is_enforced_at_launch(low_grid):
    low_grid.check_grid((10**6, LOW, LOW))  # x is not limited by max_grid
    with pytest.raises(GridLimitError, match="exceeds"):
        low_grid.check_grid((1, LOW + 1, 1))
    with pytest.raises(GridLimitError):
        low_grid.check_grid((1, 1, LOW + 1))


def test_philox_rows_beyond_the_grid(low_grid):
    rows = LOW * 16 * 3 + 5  # rows go on grid y, 16 per workgroup
    got = m2m_gpu.synthetic(rows, 9, seed=11, kind="clustered", clusters=5,
                            backend=low_grid.name)
    want = m2m_gpu.synthetic(rows, 9, seed=11, kind="clustered", clusters=5, backend="cpu")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    raw = low_grid.to_host(low_grid.philox(7, rows, 6, 99, 0, normal=False))
    np.testing.assert_array_equal(raw, words(7, rows, 6, 99, 0))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_with_more_query_blocks_than_the_grid(low_grid, rng, metric):
    Q = rng.standard_normal((LOW * 16 * 2 + 7, 12)).astype(np.float32)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    D, I = m2m_gpu.knn(Q, X, 9, metric, backend=low_grid.name)
    Dr, Ir = ref.knn(Q, X, 9, metric)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(D, Dr, rtol=1e-4, atol=1e-4)
    E = m2m_gpu.energy(Q, X, 1.5, 2.0, backend=low_grid.name)
    np.testing.assert_allclose(E, ref.energy(Q, X, np.full(300, 1.5), np.full(300, 2.0)),
                               rtol=1e-4, atol=1e-4)


def test_scan_cells_with_more_queries_than_the_grid(low_grid, rng):
    be = low_grid
    n, d, m, k = 400, 5, 4 * LOW + 2, 10
    X = rng.standard_normal((n, d)).astype(np.float32)
    Q = rng.standard_normal((m, d)).astype(np.float32)
    bounds = np.array([0, 90, 91, 250, 400])
    ranges = np.stack([bounds[:-1], bounds[1:]], 1)
    probes = np.array([rng.permutation([-1, 0, 1, 2, 3])[:3] for _ in range(m)])
    params = np.ones((n, PARAM_WIDTH), np.float32)
    xn = be.from_host(X)
    keys, pos, d2 = be.scan_cells(be.from_host(Q), xn, ranges, probes, k, Key.SPLAT,
                                  be.from_host(params, like=xn))
    for i in range(m):
        rows = np.concatenate([np.arange(*ranges[c]) for c in probes[i] if c >= 0] or
                              [np.zeros(0, np.int64)])
        rows.sort()
        dist = ((X[rows].astype(np.float64) - Q[i]) ** 2).sum(1)
        want = rows[np.lexsort((rows, dist))[:k]]
        np.testing.assert_array_equal(pos[i, : want.size], want)
        assert (pos[i, want.size :] == -1).all() and np.isinf(keys[i, want.size :]).all()
        np.testing.assert_allclose(d2[i, : want.size], np.sort(dist)[: want.size],
                                   rtol=1e-5, atol=1e-5)


def test_gather_and_scatter_more_rows_than_the_grid(low_grid, rng):
    be = low_grid
    x = rng.standard_normal((200, 4)).astype(np.float32)
    native = be.from_host(x.copy())
    index = rng.permutation(200)[: 4 * LOW * 3 + 1]
    np.testing.assert_array_equal(be.gather_rows(native, index), x[index])
    values = rng.standard_normal((index.size, 4)).astype(np.float32)
    be.scatter_rows(native, index, values)
    x[index] = values
    np.testing.assert_array_equal(be.to_host(native), x)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_seed_outside_philox_key_range_is_refused_on_every_backend(backend, seed):
    with pytest.raises(InvalidInputError, match="seed"):
        m2m_gpu.synthetic(10, 4, seed=seed, backend=backend.name)
