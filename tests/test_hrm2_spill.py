"""SOAR spilling (``IndexHRM2(..., codec=..., spill=True)``): each row's code also filed in
a second cell, chosen by ``Router.second_cells``; a search maps a spilled copy back to its
row, counts a row found twice once, and never returns a dead row through its copy. On every
backend (the scan kernels read the spilled copies as one more range per cell)."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError
from m2m_gpu.hrm2 import IndexHRM2
from m2m_gpu.hrm2.routing import SPILL_CANDIDATES

from .test_hrm2 import data, recall
from .test_hrm2_codecs import SPECTRUM

CODECS = ["sq8", "fp16", "pca16,sq8"]


def spill_pair(backend, codec="sq8", **kw):
    """A spilled index and the same one without spilling, on the same centroids."""
    n = 3000 if backend.name != "vulkan" else 1500
    x, q = data(n, 40, d=24)
    x, q = x * SPECTRUM, q * SPECTRUM
    shape = (6, 6) if backend.name == "vulkan" else (None, None)
    idx = IndexHRM2(24, *shape, backend=backend.name, codec=codec, spill=True, **kw)
    plain = IndexHRM2(24, *shape, backend=backend.name, codec=codec, **kw)
    idx.train(x)
    plain.copy_training(idx)
    for i in (idx, plain):
        i.add(x)
    return x, q, idx, plain


def exact(x, q, k=10):
    flat = m2m_gpu.IndexFlatL2(x.shape[1])
    flat.add(x)
    return flat.search(q, k)


def test_second_cells_minimise_the_soar_loss_among_the_nearest_cells(rng):
    """The choice is the argmin of ``|r'|^2 + lam <r, r'>^2 / |r|^2`` over the row's
    nearest cells bar its first (computed here from the centroids directly); lam = 0 is
    the nearest other cell; with lam > 0 the second residual leans away from the first."""
    x, _ = data(2000, 1, d=16)
    idx = IndexHRM2(16, codec="sq8", backend="cpu")
    idx.train(x)
    router = idx.hrm2.router
    first = router.assign(x)
    fine = router.centroids.fine
    cand, _ = router.route(x, router.assign_p1(), SPILL_CANDIDATES + 1)
    for lam in (0.0, 1.5):
        got = router.second_cells(x, first, lam)
        assert (got != first).all() and (got >= 0).all()
        r = x - fine[first]
        for i in range(0, 2000, 97):
            c = cand[i][(cand[i] >= 0) & (cand[i] != first[i])]
            rp = x[i] - fine[c]
            loss = (rp**2).sum(1) + lam * (rp @ r[i]) ** 2 / (r[i] @ r[i])
            assert got[i] == c[np.argmin(loss)] or np.isclose(
                loss.min(), loss[list(c).index(got[i])], rtol=1e-5)
    plain, soar = router.second_cells(x, first, 0.0), router.second_cells(x, first, 1.5)
    off = np.linalg.norm(r, axis=1) > 0  # (a row on its centroid has no direction)
    r, xo = r[off], x[off]
    cos = [np.abs(np.einsum("ij,ij->i", r, xo - fine[s[off]])) /
           np.linalg.norm(r, axis=1) / np.linalg.norm(xo - fine[s[off]], axis=1)
           for s in (plain, soar)]
    assert cos[1].mean() < cos[0].mean()


@pytest.mark.parametrize("codec", CODECS)
def test_a_spilled_layout_holds_each_code_twice_and_each_row_once(backend, codec):
    x, _, idx, plain = spill_pair(backend, codec)
    L = idx.hrm2.layout
    assert idx.spill and not plain.spill and L.spilled and not plain.hrm2.layout.spilled
    assert idx.hrm2.check() == []
    n = idx.ntotal
    assert L.spill_of.size == n  # every row has a second cell here
    assert np.unique(L.spill_of).size == n and (L.spill_cells != L.cell_of[L.spill_of]).all()
    assert L.code_rows().shape[0] == 2 * n and L.tiers.n == n and L.ids.size == n
    # each copy stands for its own row: decoded, as near to that row as the row's code
    decoded = L.codec.decode(L.code_rows()[n:])
    want = L.codec.decode(L.codec.encode(L.rows_at(L.spill_of)))
    np.testing.assert_allclose(decoded, want, rtol=1e-6, atol=1e-6)
    assert np.abs(decoded - L.codec.decode(L.codes)).max() > 0  # not in position order
    ranges = L.code_ranges()
    for c in range(0, L.fine.shape[0], 5):  # the copies filed under cell c are its spills
        s, e = ranges[2 * L.fine.shape[0] + c]
        np.testing.assert_array_equal(L.code_positions()[s:e],
                                      L.spill_of[L.spill_cells == c])
    both = np.bincount(np.concatenate([L.cell_of, L.spill_cells]), minlength=L.fine.shape[0])
    np.testing.assert_array_equal(L.cell_sizes(), both)  # what a scan reads: both copies


@pytest.mark.parametrize("codec", CODECS)
def test_spilling_finds_more_at_the_same_probes_and_each_row_once(backend, codec):
    """Fewer probes than cells: the spilled index's recall is at least the plain one's,
    each result row is distinct, and the distances are the exact ones of those rows."""
    x, q, idx, plain = spill_pair(backend, codec, rerank=4)
    _, I0 = exact(x, q)
    for i in (idx, plain):
        i.nprobe = 3
    D, I = idx.search(q, 10)
    r, r_plain = recall(I, I0), recall(plain.search(q, 10)[1], I0)
    assert r >= r_plain and r > 0.5
    assert (I >= 0).all() and all(np.unique(row).size == 10 for row in I)
    want = ((x[I] - q[:, None, :]) ** 2).sum(-1)
    np.testing.assert_allclose(D, want, rtol=1e-4, atol=1e-4)
    assert (idx.last_report.vectors > plain.last_report.vectors).all()


@pytest.mark.parametrize("codec", CODECS)
def test_probing_every_cell_of_a_spilled_index_is_exact(backend, codec):
    """Every cell probed, enough candidates re-ranked (both copies of each row come
    through the codes): the exact answer, each row once."""
    deep = 8 if not codec.startswith("pca") else 600  # 600 k: every code row
    x, q, idx, _ = spill_pair(backend, codec, rerank=deep)
    idx.p1, idx.nprobe = idx.hrm2.coarse.shape[0], idx.nlist
    D, I = idx.search(q, 10)
    D0, I0 = exact(x, q)
    assert recall(I, I0) == 1.0
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-4)
    assert all(np.unique(row).size == 10 for row in I)


def test_one_query_path_of_a_spilled_index_is_the_batch_answer():
    """The compiled one-query path reads the spilled copies too: the batch answer, query
    by query, and the same counts in the report; also once rows have moved across cells
    (dead at their old positions, and so their spilled copies), searched where they were.
    The batch path's re-rank is made to fail for the lone queries: they take the compiled
    path."""
    from m2m_gpu.backends import _jit
    from m2m_gpu.hrm2 import search as hrm2_search

    if not _jit.available():
        pytest.skip("the one-query path needs the compiled loops (Numba)")
    for codec in CODECS:
        x, q, idx, _ = spill_pair(m2m_gpu.get_backend("cpu"), codec, rerank=2)
        idx.nprobe = 3
        h = idx.hrm2
        for moved in (False, True):
            if moved:  # rows near the queries cross into far cells: dead where they were
                near = np.unique(idx.search(q, 3)[1])
                h.relocate(h.positions_of(near), x[::-1][: near.size] + np.float32(0.01))
                assert h.dead.sum() > 0
                q = np.ascontiguousarray(np.vstack([q, x[near[:20]]]))  # where they were
            assert h.one_query() is not None
            D, I = idx.search(q, 10)
            vectors = idx.last_report.vectors.copy()
            batch_rerank = hrm2_search.exact_rerank
            hrm2_search.exact_rerank = _refuse
            try:
                singles = [(*idx.search(q[i : i + 1], 10), idx.last_report.vectors[0])
                           for i in range(q.shape[0])]
            finally:
                hrm2_search.exact_rerank = batch_rerank
            for i, (d1, i1, scanned) in enumerate(singles):
                np.testing.assert_array_equal(i1[0], I[i])
                np.testing.assert_allclose(d1[0], D[i], rtol=1e-5, atol=1e-6)
                assert scanned == vectors[i]
                assert np.unique(i1[0][i1[0] >= 0]).size == (i1[0] >= 0).sum()


def _refuse(*args, **kwargs):
    raise AssertionError("a lone query took the batch path")


@pytest.mark.parametrize("codec", CODECS)
def test_writes_to_a_spilled_index_never_bring_back_a_dead_row(backend, codec):
    """Rows moved across cells (dead at the old position, whose spilled copy is masked
    with it), adds into the overflow (no second cell until the next re-layout), removals
    and a re-layout: the layout checks, each id is found once where it is now, removed
    ids never, and the re-layout spills every row again."""
    x, q, idx, _ = spill_pair(backend, codec, rerank=8)
    h = idx.hrm2
    everything = (h.coarse.shape[0], h.centroids.cells)
    pos = h.positions_of(np.arange(40))
    target = x[::-1][:40] + np.float32(0.01)
    assert 0 < h.relocate(pos, target) <= 40 and h.check() == []
    dead = pos[h.dead[pos]]  # crossed: their copies are masked with them
    assert dead.size > 0
    keys, p, d2, _ = h.search(target, 3, *everything, params=h.mask_params(), cache=False)
    np.testing.assert_array_equal(h.ids[p[:, 0]], np.arange(40))
    assert not h.dead[p].any()
    for row in h.ids[p]:
        assert np.unique(row).size == 3
    # searched where they were: the dead positions (and their copies) never come back
    old = x[:40][h.dead[pos]]
    for adaptive in (False, True):
        _, p, _, _ = h.search(old, 10, *everything, params=h.mask_params(), cache=False,
                              adaptive=adaptive)
        assert not np.isin(p, dead).any() and not h.dead[p[p >= 0]].any()
    new = (x[:30] + 0.05).astype(np.float32)
    idx.add_with_ids(new, np.arange(10**6, 10**6 + 30))
    assert h.check() == [] and h.layout.spill_of.max() < h.layout.main_end
    D, I = idx.search(new, 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(10**6, 10**6 + 30))
    gone = np.arange(40, x.shape[0], 2)
    assert idx.remove_ids(gone) == gone.size and h.check() == []
    idx.p1, idx.nprobe = everything
    _, I = idx.search(q, 10)
    assert not np.isin(I, gone).any()
    assert h.layout.spill_of.size == idx.ntotal  # the removal re-laid out: all spilled


@pytest.mark.parametrize("codec", ["sq8", "pca16,sq8"])
def test_spilling_survives_saving(backend, codec):
    x, q, idx, _ = spill_pair(backend, codec, rerank=3)
    idx.nprobe = 4
    D, I = idx.search(q, 10)
    back = m2m_gpu.deserialize_index(m2m_gpu.serialize_index(idx), backend=backend.name)
    assert back.spill and back.hrm2.layout.spilled
    np.testing.assert_array_equal(back.hrm2.layout.spill_cells, idx.hrm2.layout.spill_cells)
    D2, I2 = back.search(q, 10)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, rtol=1e-6)


@pytest.mark.parametrize("bad, match", [({"spill": True}, "needs a codec"),
                                        ({"spill": 1, "codec": "sq8"}, "True or False"),
                                        ({"spill": "yes", "codec": "sq8"}, "True or False")])
def test_bad_spill_options_are_refused(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        IndexHRM2(8, **bad)


def test_adaptive_probing_of_a_spilled_index_counts_each_row_once(backend):
    """Adaptive probing scans in two rounds; a row can be found through one of its cells in
    each (unclustered rows: the radius bound prunes few cells): it is counted once, and
    the answer is the fixed-probing one (every cell probed)."""
    rng = np.random.default_rng(0)
    n = 3000 if backend.name != "vulkan" else 1500
    x = rng.standard_normal((n, 24)).astype(np.float32)
    q = rng.standard_normal((40, 24)).astype(np.float32)
    shape = (6, 6) if backend.name == "vulkan" else (None, None)
    idx = IndexHRM2(24, *shape, backend=backend.name, codec="sq8", spill=True, rerank=8)
    idx.train(x)
    idx.add(x)
    idx.p1, idx.nprobe = idx.hrm2.coarse.shape[0], idx.nlist
    D, I = idx.search(q, 10)
    idx.adaptive = True
    Da, Ia = idx.search(q, 10)
    assert all(np.unique(row).size == 10 for row in Ia)
    np.testing.assert_array_equal(Ia, I)
    np.testing.assert_allclose(Da, D, rtol=1e-6)


def test_inner_product_over_a_spilled_index_is_exact_when_every_cell_is_probed(backend):
    """The MIPS lift (an l2 index on d + 1) spills the lifted codes; growing norms re-lay
    the index out and spill again."""
    x, q = data(2000 if backend.name != "vulkan" else 1200, 20, d=24)
    shape = (6, 6) if backend.name == "vulkan" else (None, None)
    idx = IndexHRM2(24, *shape, "ip", backend=backend.name, codec="sq8", spill=True,
                    rerank=8)
    idx.train(x)
    idx.add(x)
    idx.add(x[:50] * 3)  # longer rows: the lift grows
    assert idx.hrm2.layout.spilled and idx.hrm2.check() == []
    idx.p1, idx.nprobe = idx.hrm2.coarse.shape[0], idx.nlist
    D, I = idx.search(q, 10)
    flat = m2m_gpu.IndexFlatIP(24)
    flat.add(np.vstack([x, x[:50] * 3]))
    D0, I0 = flat.search(q, 10)
    assert recall(I, I0) == 1.0
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-4)


def test_spilled_codes_with_the_float_rows_in_lower_tiers_give_the_all_hot_answer():
    """Float32 rows mostly cold: the codes and their copies are scanned whole, only the
    re-ranked candidates' rows are read from their tiers; a lone query takes the general
    path there (no compiled one) with the same answer."""
    x, q = data(3000, 30, d=24)
    hot = IndexHRM2(24, codec="sq8", backend="cpu", spill=True, rerank=2)
    cold = IndexHRM2(24, codec="sq8", backend="cpu", spill=True, rerank=2,
                     tiers={"hot_bytes": 200 * 96, "warm_bytes": 300 * 96})
    hot.train(x)
    cold.copy_training(hot)
    for i in (hot, cold):
        i.add(x)
        i.nprobe = 4
    assert cold.hrm2.device_bytes() <= 200 * 96 and cold.hrm2.layout.spilled
    D, I = hot.search(q, 10)
    Dc, Ic = cold.search(q, 10)
    np.testing.assert_array_equal(I, Ic)
    np.testing.assert_allclose(D, Dc, rtol=1e-6)
    assert cold.hrm2.one_query() is None
    d1, i1 = cold.search(q[:1], 10)
    np.testing.assert_array_equal(i1[0], I[0])
