"""HRM2 (SPEC section 3): recall floors on seeded data, exactness with full probing, adaptive
probing, updates; on every backend (small sizes where the backend is a CPU Vulkan driver)."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError
from m2m_gpu.backends import _jit
from m2m_gpu.hrm2 import IndexHRM2, default_probes, default_shape

from .knn_check import assert_knn_matches


def data(n, m, d=16, seed=4, clusters=40):
    x = m2m_gpu.synthetic(n, d, seed=seed, kind="clustered", clusters=clusters, spread=0.3)
    q = m2m_gpu.synthetic(m, d, seed=seed, kind="clustered", clusters=clusters, spread=0.3,
                          part="queries")
    return x, q


def recall(I, I0):
    return float(np.mean([len(np.intersect1d(a, b)) / I0.shape[1] for a, b in zip(I, I0,
                                                                               strict=True)]))


def small(backend):
    """Sizes per backend: lavapipe compiles a pipeline per k-means step."""
    return (20_000, None, None) if backend.name != "vulkan" else (2_000, 6, 6)


def test_recall_floor_at_default_probing(backend):
    n, n1, n2 = small(backend)
    x, q = data(n, 200)
    _, I0 = m2m_gpu.knn(q, x, 10)
    idx = IndexHRM2(16, n1, n2, backend=backend.name)
    idx.train(x)
    idx.add(x)
    D, I = idx.search(q, 10)
    assert recall(I, I0) >= 0.9
    rep = idx.last_report
    assert rep.cells.shape == (200,) and (rep.cells >= 1).all()
    # not an exact scan in disguise; on vulkan 16 of 36 cells are probed (44% of the rows
    # if cells were equal; queries fall where cells are dense, about 48-52% over seeds)
    assert rep.vectors.mean() < 0.6 * n
    ok = I >= 0
    assert (np.diff(D, axis=1)[ok[:, 1:]] >= -1e-6).all()  # sorted


def test_full_probing_is_exact(backend, rng):
    x = rng.standard_normal((600, 8)).astype(np.float32)
    q = rng.standard_normal((20, 8)).astype(np.float32)
    idx = IndexHRM2(8, 4, 5, backend=backend.name, p1=4, p2=20)
    idx.train(x)
    idx.add(x)
    D, I = idx.search(q, 15)
    assert_knn_matches(D, I, q, x, 15, "l2", 1e-5, 1e-5)
    assert (idx.last_report.vectors == 600).all()


def test_adaptive_bound_never_loses_results(backend):
    n, n1, n2 = small(backend)
    x, q = data(n, 100)
    idx = IndexHRM2(16, n1, n2, backend=backend.name)
    idx.train(x)
    idx.add(x)
    idx.nprobe = 24
    D, I = idx.search(q, 10)
    full = idx.last_report.vectors.copy()
    idx.adaptive = True
    Da, Ia = idx.search(q, 10)
    np.testing.assert_allclose(Da, D, rtol=1e-6, atol=1e-6)  # the bound is exact
    assert (idx.last_report.vectors <= full).all()
    assert idx.last_report.vectors.sum() < full.sum()
    idx.ratio = 1.05  # the heuristic part: fewer cells still
    idx.search(q, 10)
    assert idx.last_report.cells.sum() <= (full > 0).sum() * 24


def test_adds_are_found_at_once_and_rebuild(backend, rng):
    n, n1, n2 = small(backend)
    x, _ = data(n, 1)
    idx = IndexHRM2(16, n1, n2, backend=backend.name)
    idx.train(x)
    idx.add(x[: n // 2])
    new = x[n // 2 : n // 2 + 50]
    idx.add_with_ids(new, np.arange(10**6, 10**6 + 50))
    assert idx.ntotal == n // 2 + 50 and idx.hrm2.rebuilds == 0
    D, I = idx.search(new, 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(10**6, 10**6 + 50))
    np.testing.assert_allclose(D[:, 0], 0, atol=1e-4)
    idx.add(x[n // 2 + 50 :])  # past the overflow threshold: a re-layout
    assert idx.hrm2.rebuilds >= 1 and idx.ntotal == n
    D, I = idx.search(new[:5], 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(10**6, 10**6 + 5))


def test_remove_ids_and_reset(backend, rng):
    x = rng.standard_normal((500, 6)).astype(np.float32)
    idx = IndexHRM2(6, 3, 3, backend=backend.name, p1=3, p2=9)
    idx.train(x)
    idx.add(x)
    assert idx.remove_ids(np.arange(0, 500, 2)) == 250
    D, I = idx.search(x[:10], 5)
    assert (I % 2 == 1).all() and idx.ntotal == 250
    idx.reset()
    D, I = idx.search(x[:2], 3)
    assert (I == -1).all() and np.isinf(D).all()


def test_cosine_and_faiss_shape(backend, rng):
    x = rng.standard_normal((400, 5)).astype(np.float32)
    idx = IndexHRM2(5, 3, 3, metric="cosine", backend=backend.name, p1=3, p2=9)
    assert not idx.is_trained
    with pytest.raises(InvalidInputError):
        idx.add(x)
    with pytest.raises(InvalidInputError):
        idx.search(x[:1], 3)
    idx.train(x)
    idx.add(x)
    D, I = idx.search(x[:4], 3)
    np.testing.assert_array_equal(I[:, 0], np.arange(4))
    np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-5)  # similarity
    assert_knn_matches(D, I, x[:4], x, 3, "cosine", 1e-5, 1e-5)
    with pytest.raises(InvalidInputError):
        idx.search(np.ones((1, 4), np.float32), 3)
    with pytest.raises(InvalidInputError):
        idx.search(x[:1], 0)
    with pytest.raises(m2m_gpu.UnknownMetricError):
        IndexHRM2(5, metric="hamming")


def test_default_shape_grows_with_n():
    assert default_shape(20_000) == (24, 23)
    n1, n2 = default_shape(1_000_000)
    assert 60 <= n1 <= 65 and n1 * n2 >= 3900
    assert default_probes(*default_shape(1_000_000)) == (7, 16)
    assert default_probes(32, 31, 64) == (32, 64)  # p1 follows p2, capped at n1
    assert default_probes(32, 31, 16) == (9, 16)  # ceil(16 * 16 / 31)
    assert default_probes(40, 40, 1) == (5, 1)  # at least n1 // 8


@pytest.mark.parametrize("reps", [3, 50])
@pytest.mark.parametrize("mode", ["splat", "distance"])
def test_scan_cells_matches_reference_on_the_probed_rows(backend, rng, mode, reps):
    """The scan kernel alone, with splat parameters (some rows masked by alpha = 0), against
    the reference over exactly the rows of each query's probed cells. ``reps = 50``: cells
    probed by up to 100 queries (the cpu kernel's blocks of queries and of rows, its
    register tiles and their remainders, a one-row cell probed by 100)."""
    from m2m_gpu.backends.base import MODE_DISTANCE, MODE_SPLAT, PARAM_WIDTH

    n, d, m, k = 300, 7, 3 * reps, 12
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((m, d)).astype(np.float32)
    bounds = np.array([0, 40, 41, 41, 130, 300])  # cells of awkward sizes, one empty
    ranges = np.stack([bounds[:-1], bounds[1:]], 1)
    probes = np.array([[0, 3, -1], [2, 4, 1], [1, -1, -1]] * reps)
    params = np.zeros((n, PARAM_WIDTH), np.float32)
    params[:, 0] = rng.uniform(0.1, 3, n)
    params[:, 1] = rng.uniform(0.5, 4, n)
    params[::7, 0] = 0  # masked rows never come back
    xn = backend.from_host(x)
    kw = {"chunk_rows": xn.chunk_rows} if backend.name == "vulkan" else {}
    code = MODE_SPLAT if mode == "splat" else MODE_DISTANCE
    for _ in cpu_scan_paths(backend):
        keys, pos, d2 = backend.scan_cells(backend.from_host(q), xn, ranges, probes, k, code,
                                           backend.from_host(params, **kw))
        check_scan(keys, pos, d2, q, x, ranges, probes, params, k, mode)


def cpu_scan_paths(backend):
    """On cpu, the scan runs through both paths (compiled loop and NumPy); elsewhere once."""
    if backend.name != "cpu":
        yield None
        return
    saved = backend.jit
    try:
        for jit in ([True] if _jit.available() else []) + [False]:
            backend.jit = jit
            yield jit
    finally:
        backend.jit = saved


def check_scan(keys, pos, d2, q, x, ranges, probes, params, k, mode):
    from m2m_gpu import reference as ref

    for i in range(q.shape[0]):
        rows = np.concatenate([np.arange(*ranges[c]) for c in probes[i] if c >= 0])
        rows = rows[params[rows, 0] > 0]
        want = min(k, rows.size)
        assert (pos[i, want:] == -1).all() and np.isinf(keys[i, want:]).all()
        got = pos[i, :want]
        assert set(got.tolist()) <= set(rows.tolist()) and len(set(got.tolist())) == want
        L, d2_ref = ref.splat_log_scores(q[i : i + 1], x[rows], params[rows, 0],
                                         params[rows, 1], "l2")
        ref_key = -L[0] if mode == "splat" else d2_ref[0]
        np.testing.assert_allclose(np.sort(keys[i, :want]), np.sort(ref_key)[:want],
                                   rtol=1e-5, atol=1e-4)
        where = {r: j for j, r in enumerate(rows.tolist())}
        np.testing.assert_allclose(d2[i, :want], d2_ref[0][[where[r] for r in got]],
                                   rtol=1e-5, atol=1e-4)


def test_jit_required_when_asked():
    """CI sets M2M_REQUIRE_JIT=1: the compiled cpu loops must then really be in use."""
    import os

    if os.environ.get("M2M_REQUIRE_JIT") == "1":
        assert _jit.available(), "M2M_REQUIRE_JIT=1 but numba is not importable"
        assert m2m_gpu.backends.get_backend("cpu").jit


@pytest.mark.skipif(not _jit.available(), reason="numba not installed (M2M_REQUIRE_JIT=1 in CI)")
def test_jit_scan_ties_resolve_to_the_smaller_row_whatever_the_threads(rng):
    """Many equal keys spread over cells: the compiled scan keeps the smallest rows among
    the tied ones, with 1 thread or with 2."""
    import numba

    from m2m_gpu.backends.base import MODE_DISTANCE

    base = rng.standard_normal((6, 4)).astype(np.float32)
    x = np.repeat(base, 50, axis=0)[rng.permutation(300)]  # every row has 49 twins
    q = base[:3] + np.float32(0.01)
    ranges = np.array([[0, 70], [70, 71], [71, 200], [200, 300]])
    probes = np.array([[3, 0, 2, 1], [1, 2, -1, -1], [0, 1, 2, 3]])
    sq = np.einsum("ij,ij->i", x, x)
    runs = []
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        runs.append(_jit.scan_cells(q, x, sq, ranges, probes, 7, MODE_DISTANCE))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    for i in range(3):
        rows = np.concatenate([np.arange(*ranges[c]) for c in probes[i] if c >= 0])
        d2 = ((x[rows] - q[i]) ** 2).sum(1)
        best = np.isclose(d2, d2.min(), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(runs[0][1][i], np.sort(rows[best])[:7])


@pytest.mark.skipif(not _jit.available(), reason="numba not installed (M2M_REQUIRE_JIT=1 in CI)")
def test_jit_sort_and_merge_follow_the_one_tie_rule(rng):
    """The compiled ends of a scan order as ``ops.topk.sort_rows`` does: by key, then id,
    -1 (padding, key inf) last; widths on both sides of the compiled sort's limit, many
    equal keys; the merge of the workers' lists equals sorting them all."""
    from m2m_gpu.backends import _jit_kernels as K
    from m2m_gpu.ops.topk import sort_rows

    for width in (1, 7, K.SMALL_SORT, K.SMALL_SORT + 1):
        keys = rng.integers(0, 4, (50, width)).astype(np.float32)
        ids = rng.permutation(50 * width).reshape(50, width).astype(np.int64)
        pad = rng.random((50, width)) < 0.2
        keys[pad], ids[pad] = np.inf, -1
        d2 = rng.random((50, width)).astype(np.float32)
        want = sort_rows(keys, ids, d2)
        got = K.sort_scan_rows(keys.copy(), ids.copy(), d2.copy())
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        gk, gi, gd = got  # and checked on its own: (key, id) ascending, -1 last, d2 carried
        tie = np.where(gi < 0, np.iinfo(np.int64).max, gi)
        pads = (gi[:, 1:] < 0) & (gi[:, :-1] < 0)
        assert ((gk[:, 1:] > gk[:, :-1]) | ((gk[:, 1:] == gk[:, :-1]) &
                                           ((tie[:, 1:] > tie[:, :-1]) | pads))).all()
        for r in range(50):
            assert sorted(gi[r].tolist()) == sorted(ids[r].tolist())
            mine, theirs = gi[r] >= 0, ids[r] >= 0  # each real id keeps its own d2
            assert dict(zip(gi[r][mine].tolist(), gd[r][mine].tolist(), strict=True)) == \
                dict(zip(ids[r][theirs].tolist(), d2[r][theirs].tolist(), strict=True))
    workers, m, k = 3, 40, 6
    out_k = rng.integers(0, 3, (workers, m, k)).astype(np.float32)
    out_i = rng.permutation(workers * m * k).reshape(workers, m, k).astype(np.int64)
    short = rng.random((workers, m)) < 0.3  # some lists end early: padding
    out_k[:, :, 4:][short] = np.inf
    out_i[:, :, 4:][short] = -1
    for t in range(workers):  # each worker's lists sorted, as the scan leaves them
        out_k[t], out_i[t] = sort_rows(out_k[t], out_i[t])
    want = sort_rows(np.concatenate(list(out_k), 1), np.concatenate(list(out_i), 1))
    K._merge_workers(out_k, out_i)
    np.testing.assert_array_equal(out_k[0], want[0][:, :k])
    np.testing.assert_array_equal(out_i[0], want[1][:, :k])


def test_scan_work_items_cover_every_cell_exactly_once():
    """A cell costing more than a worker's share is cut along its longer side (queries or
    rows), on the kernel's blocks (``qblock`` queries, ``ROW_BLOCK`` rows, counted from
    the cell's start); the pieces cover each cell's rows x queries exactly once; with one
    worker, or cells no bigger than a share, nothing is cut."""
    from m2m_gpu.backends._jit_kernels import ROW_BLOCK, _work_items

    lo = np.array([0, 10, 11, 500])
    hi = np.array([10, 11, 500, 503])
    start = np.array([0, 900, 905, 940])
    count = np.array([900, 5, 35, 3])  # cell 0: many queries; cell 2: many rows
    for threads in (1, 2, 4, 16):
        il, ih, ist, icn = _work_items(lo, hi, start, count, threads, 8)
        got = sorted((r, q) for a, b, s, c in zip(il, ih, ist, icn, strict=True)
                     for r in range(a, b) for q in range(s, s + c))
        want = sorted((r, q) for a, b, s, c in zip(lo, hi, start, count, strict=True)
                      for r in range(a, b) for q in range(s, s + c))
        assert got == want
        if threads == 1:
            assert len(il) == 4
            continue
        assert len(il) > 4
        cell = np.searchsorted(hi, il, side="right")
        assert ((il - lo[cell]) % ROW_BLOCK == 0).all()
        assert ((ist - start[cell]) % 8 == 0).all()
        share = int(((hi - lo) * count).sum()) // threads  # at most a share, or one block
        block = np.maximum(8 * (ih - il), ROW_BLOCK * icn)
        assert (((ih - il) * icn) <= np.maximum(share, block)).all()
    same = _work_items(np.array([0, 5]), np.array([5, 10]), np.array([0, 3]),
                       np.array([3, 3]), 2, 8)  # two equal cells for two workers
    assert [len(a) for a in same] == [2, 2, 2, 2]


@pytest.mark.parametrize("rows, queries, threads, qblock", [
    (63, 83, 32, 16), (42, 47, 16, 4), (63, 63, 32, 12), (8, 5000, 4, 64), (63, 83, 2, 16),
    (1, 7, 64, 4), (5, 9, 3, 4)])
def test_scan_work_items_never_lose_or_shrink_a_cell(rows, queries, threads, qblock):
    """A dominant cell with more workers than blocks (cuts rounded onto the same block
    leave empty pieces, and the last piece may be short): every (row, query) pair is in
    exactly one piece, and no piece has fewer than 4 queries unless its cell does."""
    from m2m_gpu.backends._jit_kernels import QUERY_TILE, _work_items

    lo, hi = np.array([0, rows]), np.array([rows, rows + 2])
    start, count = np.array([0, queries]), np.array([queries, 1])  # and a tiny cell
    il, ih, ist, icn = _work_items(lo, hi, start, count, threads, qblock)
    got = sorted((r, q) for a, b, s, c in zip(il, ih, ist, icn, strict=True)
                 for r in range(a, b) for q in range(s, s + c))
    want = sorted((r, q) for a, b, s, c in zip(lo, hi, start, count, strict=True)
                  for r in range(a, b) for q in range(s, s + c))
    assert got == want
    cell = np.searchsorted(hi, il, side="right")
    assert (icn >= np.minimum(QUERY_TILE, count[cell])).all()
    assert ((ist - start[cell]) % qblock == 0).all()


@pytest.mark.skipif(not _jit.available(), reason="numba not installed (M2M_REQUIRE_JIT=1 in CI)")
@pytest.mark.parametrize("codes", [False, True])
def test_jit_scan_same_result_when_one_cell_is_split_among_workers(rng, codes, monkeypatch):
    """One dominant cell (k-means' shape: a coarse cell's rows probing its few centroids,
    and a search's shape: one big cell): four workers cut it and give bit for bit the
    same keys and rows as one worker, which match brute force over the probed rows."""
    from m2m_gpu.backends import _jit_kernels as K
    from m2m_gpu.backends.base import MODE_DISTANCE
    from m2m_gpu.backends.cpu import CpuBackend, probe

    pieces = []
    real = K._work_items

    def spy(*args):
        out = real(*args)
        pieces.append((args[0].size, out[0].size))
        return out

    monkeypatch.setattr(K, "_work_items", spy)
    four = CpuBackend(probe(), threads=4)
    d = 48
    x = rng.standard_normal((6000, d)).astype(np.float32)
    rows = x.astype(np.float16) if codes else x
    xr = rows.astype(np.float32)
    sq = np.einsum("ij,ij->i", xr, xr)
    cases = [(np.array([[0, 8], [8, 6000]]), np.repeat([[0], [1]], [5000, 3], axis=0), 1),
             (np.array([[0, 5800], [5800, 6000]]), np.repeat([[0, 1], [1, -1]], [8, 2], 0),
              9)]
    for ranges, probes, k in cases:
        q = rng.standard_normal((probes.shape[0], d)).astype(np.float32)
        one = K.scan_cells(q, rows, sq, ranges, probes, k, MODE_DISTANCE)
        many = K.scan_cells(q, rows, sq, ranges, probes, k, MODE_DISTANCE, pool=four)
        assert pieces[-1][1] > pieces[-1][0] == 2  # four workers did cut the big cell
        np.testing.assert_array_equal(one[0], many[0])
        np.testing.assert_array_equal(one[1], many[1])
        for i in range(0, probes.shape[0], 97):
            reach = np.concatenate([np.arange(*ranges[c]) for c in probes[i] if c >= 0])
            key = sq[reach] - 2 * xr[reach] @ q[i]
            np.testing.assert_array_equal(np.sort(one[1][i]),
                                          np.sort(reach[np.argsort(key)[:k]]))
    four._pool.shutdown()


@pytest.mark.skipif(not _jit.available(), reason="numba not installed (M2M_REQUIRE_JIT=1 in CI)")
def test_jit_routing_matches_numpy_routing(monkeypatch):
    x, q = data(5_000, 64)
    idx = IndexHRM2(16, 8, 8)
    idx.train(x)
    idx.add(x)
    cells, d2 = idx.hrm2.route(q, 3, 10)
    monkeypatch.setenv("M2M_NO_JIT", "1")
    cells0, d20 = idx.hrm2.route(q, 3, 10)
    np.testing.assert_array_equal(cells, cells0)
    np.testing.assert_allclose(d2, d20, rtol=1e-5, atol=1e-5)


def test_split_cells_is_proportional_and_exact():
    from m2m_gpu.hrm2 import split_cells

    share = split_cells(np.array([1000, 10, 0, 490]), 30)
    assert share.sum() == 30 and share[2] == 0 and share[1] >= 1
    np.testing.assert_array_equal(share, [20, 1, 0, 9])
    assert split_cells(np.array([5, 5, 5]), 2).tolist() == [1, 1, 1]  # one per live cell
    assert split_cells(np.zeros(3, np.int64), 4).sum() == 0


def test_copy_training_gives_the_same_index_without_kmeans(rng):
    x, q = data(3000, 20)
    a = IndexHRM2(16, backend="cpu")
    a.train(x)
    a.add(x)
    b = IndexHRM2(16, backend="cpu")
    b.copy_training(a)
    b.add(x)
    for r, s in zip(a.search(q, 10), b.search(q, 10), strict=True):
        np.testing.assert_array_equal(r, s)
    with pytest.raises(InvalidInputError, match="empty index"):
        b.copy_training(a)
    with pytest.raises(InvalidInputError, match="trained index of d=8"):
        IndexHRM2(8, backend="cpu").copy_training(a)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "4"])
def test_probe_counts_below_one_or_not_integers_are_refused(bad):
    from m2m_gpu import IndexHRM2, InvalidInputError

    index = IndexHRM2(8, backend="cpu")
    for name in ("p1", "p2", "nprobe"):
        with pytest.raises(InvalidInputError, match="positive integer"):
            setattr(index, name, bad)
    with pytest.raises(InvalidInputError, match="positive integer"):
        IndexHRM2(8, backend="cpu", p2=bad)
    index.nprobe = 7
    assert index.p2 == 7 and index.p1 is None


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_train_on_a_populated_index_retrains_and_keeps_every_vector(backend, rng, metric):
    """train() on an index that holds vectors retrains and lays them out again (it used to
    leave the next search broken); ids, including removals and caller ids, are kept."""
    from m2m_gpu import IndexHRM2

    X = rng.standard_normal((2000, 12)).astype(np.float32)
    index = IndexHRM2(12, metric=metric, backend=backend.name)
    index.train(X)
    index.add(X[:1500])
    index.add_with_ids(X[1500:], np.arange(1500, 2000) + 10**6)
    index.remove_ids(np.arange(5))
    index.train(X[::3])
    assert index.ntotal == 1995
    index.nprobe = 10**6  # every cell: exact
    got = index.search(X[[5, 6, 1499, 1500, 1999]], 1)[1][:, 0]
    np.testing.assert_array_equal(got, [5, 6, 1499, 1500 + 10**6, 1999 + 10**6])
    index.add(X[:1])
    assert int(index.search(X[:1], 1)[1][0, 0]) == 10**6 + 2000  # past the largest id held


# ---- concurrent readers --------------------------------------------------------------------
def _at_once(jobs, threads=4):
    """Run each job of ``jobs[t]`` (a list per thread) in ``threads`` threads started
    together; returns the results per thread, in job order (a job's error is raised)."""
    import threading

    barrier = threading.Barrier(threads)
    out: list = [None] * threads
    errors: list[BaseException] = []

    def work(t):
        try:
            barrier.wait()
            out[t] = [job() for job in jobs[t]]
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]
    return out


def _slow_builds(monkeypatch, scanner, counts):
    """Count (and slow down) what the scanner builds, so that racing readers would show."""
    import time

    cached = scanner.cached

    def counted(name, source, make):
        def slow():
            counts[name] = counts.get(name, 0) + 1
            time.sleep(0.02)
            return make()

        return cached(name, source, slow)

    monkeypatch.setattr(scanner, "cached", counted)


@pytest.mark.parametrize("tiers", [None, {"hot_bytes": 300 * 64, "warm_bytes": 400 * 64,
                                          "block_bytes": 53 * 64, "rebalance_every": 2}])
def test_concurrent_searches_of_one_index_equal_a_sequential_run(monkeypatch, tiers):
    """4 threads searching one trained IndexHRM2 (without any lock, as several holders of
    the read lock) get exactly the sequential answers; the device copies are built once and
    no row moves during the searches. Through the public search (read lock, then a due
    placement pass under the write lock) the answers are the same."""
    x, q = data(3000, 48)
    idx = IndexHRM2(16, 6, 6, backend="cpu", tiers=tiers)
    idx.train(x[:2500])
    idx.add(x[:2500])
    idx.add_with_ids(x[2500:2700], np.arange(10**6, 10**6 + 200))  # the overflow region
    calls = [(q[i : i + 6], k) for i in range(0, 48, 6) for k in (1, 10)]
    ref = IndexHRM2(16, 6, 6, backend="cpu")
    ref.copy_training(idx)
    ref.add(x[:2500])
    ref.add_with_ids(x[2500:2700], np.arange(10**6, 10**6 + 200))
    want = [ref.search(b, k) for b, k in calls]
    counts: dict = {}
    _slow_builds(monkeypatch, idx.hrm2.scanner, counts)
    placed = idx.hrm2.tiers.tier.copy()

    def at_once(search):
        jobs = [[(lambda b=b, k=k, f=search: f(idx, b, k)) for b, k in calls[t::2] + calls]
                for t in range(4)]
        for t, got in enumerate(_at_once(jobs)):
            for (D, I), w in zip(got, want[t::2] + want, strict=True):
                np.testing.assert_array_equal(I, w[1])
                np.testing.assert_array_equal(D, w[0])

    at_once(IndexHRM2._search)  # no lock at all: as several holders of the read lock
    assert counts and all(v == 1 for v in counts.values()), counts
    np.testing.assert_array_equal(idx.hrm2.tiers.tier, placed)  # no search moved a row
    assert idx.rebalance_due() == (tiers is not None)
    at_once(IndexHRM2.search)  # the public search: placement passes between searches
    assert not idx.rebalance_due() or tiers is None
    D, I = idx.search(*calls[3])
    np.testing.assert_array_equal(I, want[3][1])


def test_concurrent_searches_of_one_store_equal_a_sequential_run(monkeypatch):
    """SplatStore(index="hrm2") with tier budgets: 4 threads through the store (its lock)
    and 4 threads straight into its index (no lock) give the sequential answers; a stale
    position-ordered params copy is gathered once for all of them."""
    from m2m_gpu.backends.base import MODE_DISTANCE, MODE_SPLAT

    x, q = data(2500, 24, clusters=30)
    s = m2m_gpu.SplatStore(16, backend="cpu", index="hrm2",
                           index_options={"train_min": 1000, "n1": 5, "n2": 6},
                           tiers={"hot_bytes": 500 * 64, "warm_bytes": 500 * 64,
                                  "block_bytes": 71 * 64})
    s.add(x)
    s.feedback(q[:4], relevant=[[i] for i in range(4)])  # alpha and kappa differ per splat
    calls = [(q[i : i + 4], k, r) for i in range(0, 24, 4) for k, r in ((5, "splat"),
                                                                       (9, "distance"))]
    want = [s.search(b, k, rank=r) for b, k, r in calls]
    jobs = [[(lambda c=c: s.search(c[0], c[1], rank=c[2])) for c in calls[t:] + calls[:t]]
            for t in range(4)]
    for t, got in enumerate(_at_once(jobs)):
        for a, b in zip(got, want[t:] + want[:t], strict=True):
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.log_scores, b.log_scores)
    index = s._st.index
    host = np.array(s.backend.to_host(s._st.arrays.params.view()), np.float32)
    ref = [index.search(b, k, MODE_SPLAT if r == "splat" else MODE_DISTANCE, lambda: host,
                        False) for b, k, r in calls]
    index.params_changed()  # stale: the next searches gather it again, once
    builds = []
    gather = index._position_params

    def counted(p):
        import time

        builds.append(1)
        time.sleep(0.02)
        return gather(p)

    monkeypatch.setattr(index, "_position_params", counted)
    placed = index.hrm2.tiers.tier.copy()
    jobs = [[(lambda c=c: index.search(c[0], c[1], MODE_SPLAT if c[2] == "splat" else
                                       MODE_DISTANCE, lambda: host, False))
             for c in calls[t:] + calls[:t]] for t in range(4)]
    for t, got in enumerate(_at_once(jobs)):
        for a, b in zip(got, ref[t:] + ref[:t], strict=True):
            for u, v in zip(a, b, strict=True):
                np.testing.assert_array_equal(u, v)
    assert len(builds) == 1
    np.testing.assert_array_equal(index.hrm2.tiers.tier, placed)
    assert index.check(np.flatnonzero(s._st.table.live)) == []
    s.close()


def test_inner_product_on_unnormalised_data_like_ivf(backend):
    """metric="ip" (METRIC_INNER_PRODUCT), as faiss.IndexIVFFlat takes it: vectors of very
    different norms, D = q.x, recall against exact IndexFlatIP; full probing is exact; a
    row longer than all before raises the lift's norm and stays findable; it reloads."""
    rng = np.random.default_rng(21)
    X = (rng.standard_normal((3000, 16)) * rng.uniform(0.2, 3.0, (3000, 1))).astype(np.float32)
    Q = rng.standard_normal((40, 16)).astype(np.float32)
    flat = m2m_gpu.IndexFlatIP(16, backend=backend.name)
    flat.add(X)
    Dref, Iref = flat.search(Q, 10)
    index = m2m_gpu.IndexHRM2.from_nlist(16, 36, m2m_gpu.METRIC_INNER_PRODUCT,
                                         backend=backend.name)
    assert index.metric_type == m2m_gpu.METRIC_INNER_PRODUCT and index.nlist is None
    index.train(X)
    index.add(X)
    assert index.nlist == index.hrm2.centroids.cells > 0
    index.nprobe = index.nlist
    index.p1 = index.hrm2.centroids.coarse.shape[0]
    D, I = index.search(Q, 10)  # every cell: exact
    np.testing.assert_array_equal(I, Iref)
    np.testing.assert_allclose(D, Dref, rtol=1e-4, atol=1e-3)
    index.nprobe, index.p1 = 8, None
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(index.search(Q, 10)[1], Iref,
                                                                  strict=True)])
    assert recall > 0.6
    far = (Q[:1] * 100).astype(np.float32)  # longer than every stored row
    index.add_with_ids(far, np.array([99999]))
    index.nprobe = index.nlist
    index.p1 = index.hrm2.centroids.coarse.shape[0]
    assert int(index.search(Q[:1], 1)[1][0, 0]) == 99999
    back = m2m_gpu.deserialize_index(m2m_gpu.serialize_index(index))
    np.testing.assert_array_equal(back.search(Q, 5)[1], index.search(Q, 5)[1])


def test_search_params_nprobe_and_out_arguments():
    """FAISS's ``index.search(x, k, params=SearchParametersIVF(nprobe=...))`` sets the
    probes of one call; ``D=`` / ``I=`` are filled in place."""
    import types

    x, q = data(2000, 10)
    index = IndexHRM2(16, 4, 4, backend="cpu")
    index.train(x)
    index.add(x)
    index.nprobe = 1
    narrow = index.search(q, 5)
    few = index.last_report.cells.copy()
    index.search(q, 5, params=types.SimpleNamespace(nprobe=16))
    assert (index.last_report.cells > few).all()  # more cells scanned in that call ...
    assert index.nprobe == 1  # ... and only in that call
    index.search(q, 5)
    np.testing.assert_array_equal(index.last_report.cells, few)
    D, I = np.empty((10, 5), np.float32), np.empty((10, 5), np.int64)
    out = index.search(q, 5, D=D, I=I)
    assert out[0] is D and out[1] is I and (I == narrow[1]).all()
    with pytest.raises(InvalidInputError):
        index.search(q, 5, params=types.SimpleNamespace(nprobe=0))
    with pytest.raises(InvalidInputError):
        index.search(q, 5, params=object())


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_target_recall_picks_the_smallest_nprobe_that_reaches_it(backend, metric):
    """IndexHRM2(target_recall=r) calibrates nprobe on a held-out sample of its training
    rows after the adds that change its size: the recall measured there reaches r, one
    probe less does not, and fresh queries come close to r too."""
    import m2m_gpu
    from m2m_gpu.hrm2.calibrate import exact_ids, recall

    X = m2m_gpu.synthetic(3000, 16, seed=3, kind="clustered", clusters=24)
    fresh = m2m_gpu.synthetic(100, 16, seed=3, kind="clustered", clusters=24, part="queries")
    index = m2m_gpu.IndexHRM2(16, metric=metric, backend=backend.name, target_recall=0.9)
    index.train(X)
    assert index.calibration is None
    index.add(X)
    cal = index.calibration
    assert cal is not None and cal.reached and cal.recall >= 0.9 and index.nprobe == cal.nprobe
    assert cal.ntotal == 3000 and cal.queries == 256 and cal.k == 10
    truth = exact_ids(index, index._sample, 10)
    if cal.nprobe > 1:
        assert recall(index, index._sample, truth, 10, cal.nprobe - 1) < 0.9
    q = index._rows(fresh, "queries")
    assert recall(index, q, exact_ids(index, q, 10), 10, index.nprobe) >= 0.8
    index.add(X[:250])  # under a quarter more: no recalibration
    assert index.calibration is cal
    again = m2m_gpu.deserialize_index(m2m_gpu.serialize_index(index))  # kept as it was
    assert again.calibration == cal and again.nprobe == cal.nprobe
    assert again.target_recall == 0.9 and np.array_equal(again._sample, index._sample)
    index.add(X[:750])
    assert index.calibration is not cal and index.calibration.ntotal == 4000
    again.add(X[:750])  # the reloaded index recalibrates too (its rows' order, hence
    assert again.calibration.ntotal == 4000  # ties at the k-th, may differ a little)
    assert again.calibration.recall == pytest.approx(index.calibration.recall, abs=0.01)


def test_target_recall_is_checked_and_calibrate_needs_queries():
    import m2m_gpu
    from m2m_gpu.errors import InvalidInputError

    for bad in (0, 1.5, "high", -0.1):
        with pytest.raises(InvalidInputError, match="target_recall"):
            m2m_gpu.IndexHRM2(8, target_recall=bad)
    X = m2m_gpu.synthetic(2000, 8, seed=1, kind="clustered")
    index = m2m_gpu.IndexHRM2(8, backend="cpu")
    index.train(X)
    index.add(X)
    with pytest.raises(InvalidInputError, match="needs queries"):
        index.calibrate()
    cal = index.calibrate(X[:100], k=5)  # on queries given: the default target, 0.95
    assert cal.target == 0.95 and cal.k == 5 and index.nprobe == cal.nprobe


def test_a_long_training_says_so(monkeypatch, caplog):
    import logging

    from m2m_gpu.hrm2 import core

    monkeypatch.setattr(core, "LOG_AFTER", 0.0)  # every training counts as long here
    X = m2m_gpu.synthetic(2000, 8, seed=2, kind="clustered")
    with caplog.at_level(logging.INFO, logger="m2m_gpu.hrm2"):
        IndexHRM2(8, backend="cpu").train(X)
    assert any("hrm2: trained" in r.message and "2000 rows of 8 dims" in r.message
               for r in caplog.records), caplog.text


def test_the_cell_scan_gives_the_same_answer_inline_and_on_the_pool(monkeypatch):
    """Small scans (a single query, a few cells) skip the thread pool: both paths agree
    bit for bit, ties included."""
    pytest.importorskip("numba")
    from m2m_gpu.backends import _jit_kernels

    X = m2m_gpu.synthetic(5000, 16, seed=4, kind="clustered", clusters=8)
    X[100:110] = X[100]  # ties
    index = IndexHRM2(16, backend="cpu")
    index.train(X)
    index.add(X)
    index.nprobe = 12
    Q = np.concatenate([X[100:101], X[:40] + 0.01])
    answers = []
    for work in (0, 10**12):  # everything on the pool / everything inline
        monkeypatch.setattr(_jit_kernels, "INLINE_WORK", work)
        answers.append(index.search(Q, 10))
        answers.append(index.search(Q[:1], 10))
    np.testing.assert_array_equal(answers[0][1], answers[2][1])
    np.testing.assert_array_equal(answers[0][0], answers[2][0])
    np.testing.assert_array_equal(answers[1][1], answers[3][1])
    assert sorted(answers[1][1][0].tolist()) == list(range(100, 110))


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_a_single_query_takes_the_one_call_path_with_the_same_answer(metric):
    """On cpu with every row hot, a lone query is routed, scanned and ranked in one
    compiled call: the same ids as the batch path (distances to float rounding), removed
    rows skipped, the report filled."""
    pytest.importorskip("numba")
    X = m2m_gpu.synthetic(6000, 24, seed=6, kind="clustered", clusters=12)
    Q = m2m_gpu.synthetic(60, 24, seed=6, kind="clustered", clusters=12, part="queries")
    index = IndexHRM2(24, metric=metric, backend="cpu")
    index.train(X)
    index.add(X)
    index.remove_ids(np.arange(0, 6000, 5))  # dead rows, masked
    index.nprobe = 10
    D, I = index.search(Q, 10)
    cells = index.last_report.cells.copy()
    for i in range(len(Q)):
        d, j = index.search(Q[i : i + 1], 10)
        np.testing.assert_array_equal(j[0], I[i])
        np.testing.assert_allclose(d[0], D[i], rtol=1e-5, atol=1e-5)
        assert index.last_report.cells[0] == cells[i] and index.last_report.vectors[0] > 0
    assert not np.isin(I, np.arange(0, 6000, 5)).any()
    few = IndexHRM2(24, backend="cpu")
    few.train(X[:300])
    few.add(X[:3])  # fewer rows than k: padded like the batch path
    d, j = few.search(X[:1], 10)
    assert (j[0, 3:] == -1).all() and np.isinf(d[0, 3:]).all() and j[0, 0] == 0


def test_a_single_query_in_any_form_gets_the_one_call_answer_or_a_clear_error():
    """The one-call path takes a float32 C-contiguous (1, d) row as it is; any other form
    of the same query (float64, a strided view, a list) goes through the general path to
    the same answer. A query with NaN, inf or an overflowing norm raises what the batch
    path raises, and counts nothing; a huge finite one is searched; the answer follows
    adds and removes (the kept per-layout arguments are made again)."""
    pytest.importorskip("numba")
    X = m2m_gpu.synthetic(4000, 16, seed=8, kind="clustered", clusters=10)
    index = IndexHRM2(16, backend="cpu")
    index.train(X)
    index.add(X)
    index.nprobe = 8
    assert index.hrm2.one_query() is not None  # cpu, compiled loops, every row hot
    q = np.ascontiguousarray(X[7:8] + 0.01, dtype=np.float32)
    D, I = index.search(q, 10)
    assert I[0, 0] == 7 and index.last_report.vectors[0] > 0
    wide = np.zeros((1, 32), np.float32)
    wide[:, ::2] = q
    for form in (q.astype(np.float64), wide[:, ::2], q.tolist(), np.asfortranarray(q)):
        d, i = index.search(form, 10)
        np.testing.assert_array_equal(i, I)
        np.testing.assert_allclose(d, D, rtol=1e-6)
    clock = index.hrm2.layout.tiers.access.tick
    for value, why in ((np.nan, "NaN or inf"), (np.inf, "NaN or inf"),
                       (3e19, "too large")):
        bad = q.copy()
        bad[0, 3] = value
        with pytest.raises(InvalidInputError, match=f"queries contains .*{why}"):
            index.search(bad, 10)
    assert index.hrm2.layout.tiers.access.tick == clock  # nothing counted
    big = q.copy()
    big[0, 3] = 1e16  # finite, declined by the one call (from 2**50 up), searched anyway
    np.testing.assert_array_equal(index.search(big, 5)[1][0],
                                  index.search(np.repeat(big, 2, 0), 5)[1][0])
    with pytest.raises(InvalidInputError, match="dimension"):
        index.search(np.zeros((1, 15), np.float32), 10)
    index.add(q)  # a new row right at the query: found by the next single query
    d, i = index.search(q, 1)
    assert i[0, 0] == 4000 and d[0, 0] == 0.0
    index.remove_ids([4000, 7])
    i = index.search(q, 10)[1]
    assert 4000 not in i and 7 not in i
    np.testing.assert_array_equal(i[0], index.search(np.repeat(q, 2, 0), 10)[1][0])


@pytest.mark.parametrize("codec", [None, "sq8", "fp16", "pca7,sq8", "pca5,fp16"])
def test_a_lone_query_gets_the_batch_answer_on_every_path(backend, codec):
    """On cpu with compiled loops and every row hot, a lone query takes the one-call path
    (with a codec: the codes scanned for ``rerank * k`` candidates, then those re-ranked
    on the float32 rows); elsewhere (another backend, rows not all hot) the general one.
    Either way: the batch path's ids, ties included, and its distances; removed rows
    skipped; the same report."""
    X = m2m_gpu.synthetic(3000, 12, seed=9, kind="clustered", clusters=6)
    X[40:46] = X[40]  # ties
    Q = np.concatenate([X[40:41], X[:30] + 0.02]).astype(np.float32)
    flat = IndexHRM2(12, backend=backend, codec=codec, rerank=2)
    tiered = IndexHRM2(12, backend=backend, codec=codec, rerank=2,
                       tiers={"hot_bytes": 500 * 48})
    for index in (flat, tiered):
        index.train(X)
        index.add(X)
        index.remove_ids(np.arange(1, 3000, 7))
        index.rebalance()
        index.nprobe = 6
        D, I = index.search(Q, 5)
        cells, vectors = index.last_report.cells.copy(), index.last_report.vectors.copy()
        for r in range(len(Q)):
            d, i = index.search(Q[r : r + 1], 5)
            np.testing.assert_array_equal(i[0], I[r])
            np.testing.assert_allclose(d[0], D[r], rtol=1e-5, atol=1e-5)
            assert index.last_report.cells[0] == cells[r]
            assert index.last_report.vectors[0] == vectors[r]
        assert sorted(I[0].tolist()) == [40, 41, 42, 44, 45]  # 43 = 1 + 7 * 6 is removed
    jit = getattr(flat.hrm2.backend, "jit", False)
    assert (flat.hrm2.one_query() is not None) == jit
    assert tiered.hrm2.layout.tiers.dense() is None and tiered.hrm2.one_query() is None


def test_a_build_reports_its_progress_step_by_step():
    """train() advances a progress bar once for the coarse k-means, once per iteration of
    the fine k-means (all at once when it converges early) and once per refinement
    iteration; with no terminal the default bar is silent."""
    import contextlib

    from m2m_gpu.backends import get_backend
    from m2m_gpu.hrm2 import train as hrm2_train
    from m2m_gpu.progress import Progress

    steps, totals = [], []

    @contextlib.contextmanager
    def counting(total):
        totals.append(total)
        yield lambda n=1: steps.append(n)

    X = m2m_gpu.synthetic(3000, 8, seed=7, kind="clustered")
    c = hrm2_train.train(X, get_backend("cpu"), 6, 5, progress=counting)
    assert c.coarse.shape[0] == 6
    assert totals == [1 + 10 + hrm2_train.REFINE_ITERS] and sum(steps) == totals[0]
    with Progress(10, "x") as advance:  # stderr is not a terminal under pytest
        advance(3)


@pytest.mark.skipif(not _jit.available(), reason="numba not installed (M2M_REQUIRE_JIT=1 in CI)")
@pytest.mark.parametrize("bad", [None, 0, 3])
def test_jit_run_finishes_every_item_before_returning_or_raising(bad):
    """The first item runs on the caller, the rest on the pool; every item has run when
    ``_run`` returns, and when one raises, after all the others are done."""
    import threading
    import time

    from m2m_gpu.backends import _jit_kernels as K
    from m2m_gpu.backends.cpu import CpuBackend, probe

    pool = CpuBackend(probe(), threads=4)
    done, threads = [], set()

    def job(i):
        time.sleep(0.01 * (4 - i))  # the pool's items finish after the caller's
        threads.add(threading.get_ident())
        done.append(i)
        if i == bad:
            raise ValueError(f"item {i}")

    if bad is None:
        K._run(pool, job, range(4))
    else:
        with pytest.raises(ValueError, match=f"item {bad}"):
            K._run(pool, job, range(4))
    assert sorted(done) == [0, 1, 2, 3]
    assert threading.get_ident() in threads and len(threads) >= 2
    pool._pool.shutdown()
