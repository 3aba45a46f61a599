"""The tie rule, on every backend: among rows with equal keys, the smaller id comes first,
and at the k-th boundary the smaller ids are the ones kept, whatever the tiling, the
number of workgroups or the thread timing (SPEC section 2; ops.topk).

The data are integer-valued, so every distance is exact in float32 and the float64
reference (a stable argsort: ties by index) gives the one right answer, id for id.
"""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import reference as ref
from m2m_gpu.backends.abi import PARAM_WIDTH, Key
from m2m_gpu.ops.topk import merge_by_key, select_k, sort_rows


def tied_data(n=2900, d=4, distinct=6, seed=7):
    """n rows drawn from a few distinct integer vectors: hundreds of exact ties per key,
    spread over every tile and workgroup."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, size=(distinct, d)).astype(np.float32)
    X = base[rng.integers(0, distinct, n)]
    Q = np.concatenate([base[:3], base[:2] + 1]).astype(np.float32)
    return Q, X


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("k", [1, 37, 700])
def test_knn_keeps_the_smallest_ids_among_ties(backend, metric, k, small_tiles):
    Q, X = tied_data()
    D, I = m2m_gpu.knn(Q, X, k, metric, backend=backend.name)
    Dr, Ir = ref.knn(Q, X, k, metric)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)


@pytest.mark.parametrize("k", [1, 37, 700])
def test_splat_topk_keeps_the_smallest_ids_among_ties(backend, k, small_tiles):
    Q, X = tied_data()
    L, I, D = m2m_gpu.splat_topk(Q, X, 1.0, 1.0, k, "l2", backend=backend.name)
    Lr, Ir, Dr = ref.splat_topk(Q, X, np.ones(len(X)), np.ones(len(X)), k, "l2")
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)


@pytest.mark.parametrize("mode", [Key.SPLAT, Key.DISTANCE])
def test_masked_rows_tie_at_infinity_without_padding_ids_or_nan(backend, mode, small_tiles):
    """Rows with alpha = 0 rank last with key +inf, tied with each other (and, inside the
    kernels, with the seeds of the running top-k). Asking for every row returns each real
    row once, masked ones in id order, with finite d2 and no id -1."""
    Q, X = tied_data(n=600)
    n = X.shape[0]
    params = np.zeros((n, PARAM_WIDTH), np.float32)
    params[:, 0], params[:, 1] = 1.0, 1.0
    masked = np.arange(n) % 3 == 0
    params[masked, 0] = 0.0
    xn = backend.from_host(X)
    keys, ids, d2 = (np.asarray(backend.to_host(a)) for a in backend.splat_topk(
        backend.from_host(Q), xn, backend.from_host(params, like=xn), n, mode))
    assert (ids >= 0).all() and not np.isnan(d2).any() and not np.isnan(keys).any()
    full = ((Q[:, None, :].astype(np.float64) - X[None]) ** 2).sum(-1)
    for r in range(Q.shape[0]):
        assert sorted(ids[r].tolist()) == list(range(n))
        tail = ids[r][np.isinf(keys[r])]
        np.testing.assert_array_equal(tail, np.flatnonzero(masked))
        np.testing.assert_array_equal(d2[r], full[r, ids[r]].astype(np.float32))
        live = ~np.isinf(keys[r])
        order = np.lexsort((np.flatnonzero(~masked), full[r, ~masked]))
        np.testing.assert_array_equal(ids[r][live], np.flatnonzero(~masked)[order])


def test_scan_cells_keeps_the_smallest_positions_among_ties(backend):
    """HRM2's cell scan: probes listed in any order, cells full of equal rows; the kept
    positions are the smallest among the tied, as on the flat path."""
    Q, X = tied_data(n=1200)
    bounds = np.array([0, 100, 450, 451, 900, 1200])
    ranges = np.stack([bounds[:-1], bounds[1:]], 1)
    probes = np.array([[4, 1, 0], [3, -1, 1], [2, 4, 3], [0, 1, 2], [1, 0, -1]])
    k = 150
    keys, pos, d2 = backend.scan_cells(backend.from_host(Q), backend.from_host(X), ranges,
                                       probes, k, Key.L2)
    for i in range(Q.shape[0]):
        rows = np.concatenate([np.arange(*ranges[c]) for c in probes[i] if c >= 0])
        rows.sort()
        dist = ((X[rows].astype(np.float64) - Q[i]) ** 2).sum(1)
        order = np.lexsort((rows, dist))[:k]
        want = rows[order]
        np.testing.assert_array_equal(pos[i, : want.size], want)
        np.testing.assert_array_equal(d2[i, : want.size], dist[order].astype(np.float32))
        assert (pos[i, want.size :] == -1).all()


def test_host_selection_helpers():
    keys = np.array([[3.0, 1.0, 1.0, 2.0, 1.0, 1.0]], np.float32)
    ids = np.array([[9, 8, 2, 4, 6, 1]])
    kk, ki = select_k(keys, ids, 3)
    assert sorted(ki[0].tolist()) == [1, 2, 6]
    sk, si = sort_rows(kk, ki)
    assert si[0].tolist() == [1, 2, 6] and (sk == 1).all()
    k2, i2, _ = merge_by_key([(keys, ids, keys), (np.array([[1.0]], np.float32),
                                                  np.array([[-1]]), np.zeros((1, 1)))], 5)
    assert i2[0].tolist() == [1, 2, 6, 8, -1]


@pytest.mark.parametrize("k", [1, 37, 700])
def test_split_selection_for_small_batches_keeps_the_tie_rule(backend, k, monkeypatch):
    """A few queries over many rows: each tile's selection is split over many workgroups
    (parts, then one merge), and must give exactly the one-workgroup result and the
    reference, ties included; also through HRM2's cell scan."""
    from m2m_gpu.backends.gpu import GpuBackend
    from m2m_gpu.ops import knn as knn_ops

    Q, X = tied_data(n=20000, distinct=5)
    Q = Q[:2]
    if isinstance(backend, GpuBackend):
        assert knn_ops.segments_for(backend, 2, 20000, k) > 1  # the split path runs
    before = dict(backend.launches)
    D, I = m2m_gpu.knn(Q, X, k, "l2", backend=backend.name)
    split_groups = backend.launches["workgroups"] - before["workgroups"]
    Dr, Ir = ref.knn(Q, X, k, "l2")
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)
    bounds = np.array([0, 7000, 7001, 20000])
    ranges = np.stack([bounds[:-1], bounds[1:]], 1)
    probes = np.array([[2, 0, -1], [1, 2, 0]])
    split = backend.scan_cells(backend.from_host(Q), backend.from_host(X), ranges, probes, k,
                               Key.L2)
    monkeypatch.setattr(knn_ops, "SPLIT_SELECT", False)
    before = dict(backend.launches)
    D1, I1 = m2m_gpu.knn(Q, X, k, "l2", backend=backend.name)
    one_groups = backend.launches["workgroups"] - before["workgroups"]
    np.testing.assert_array_equal(I1, I)
    whole = backend.scan_cells(backend.from_host(Q), backend.from_host(X), ranges, probes, k,
                               Key.L2)
    for a, b in zip(split, whole, strict=True):
        np.testing.assert_array_equal(a, b)
    if isinstance(backend, GpuBackend):
        assert split_groups > one_groups  # more workgroups for the same two queries


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_small_batch_distance_kernel_is_bit_identical(backend, rng, dtype, monkeypatch):
    """A few queries use the one-query-per-workgroup distance kernel: same keys, bit for
    bit, as the 16-query kernel, for every key code (l2, ip, splat energy)."""
    from m2m_gpu.ops import knn as knn_ops

    X = rng.standard_normal((3001, 37)).astype(np.float32)
    Q = rng.standard_normal((3, 37)).astype(np.float32)
    index = m2m_gpu.IndexFlatL2(37, dtype=dtype, backend=backend.name)
    index.add(X)
    ip = m2m_gpu.IndexFlatIP(37, backend=backend.name)
    ip.add(X)
    runs = []
    for small in (knn_ops.ROWS_KERNEL_QUERIES, 0):
        monkeypatch.setattr(knn_ops, "ROWS_KERNEL_QUERIES", small)
        runs.append((*index.search(Q, 25), *ip.search(Q, 25),
                     m2m_gpu.energy(Q, X, 1.3, 0.7, backend=backend.name),
                     *m2m_gpu.splat_topk(Q, X, 1.3, 0.7, 9, backend=backend.name)))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_nan_key_ranks_last_on_every_backend(backend):
    """A NaN key (here an inner product that overflows to inf - inf, reached through the
    backend directly: the public entry points refuse such rows) ranks after every real key
    and still beats the seeds of the running top-k, so k = n returns every row, NaN last:
    kernels write one canonical NaN (NVIDIA makes the seed's own bits, x86 a NaN that the
    unsigned order puts before -inf)."""
    X = np.array([[1e30, -1e30], [1, 0], [0, 1], [2, 2]], np.float32)
    q = np.array([[1e30, 1e30]], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        D, I = (np.asarray(backend.to_host(a)) for a in
                backend.knn(backend.from_host(q), backend.from_host(X), 4, "ip"))
    assert I[0].tolist() == [3, 1, 2, 0]
    assert np.isnan(D[0, 3]) and np.isfinite(D[0, :3]).all()
