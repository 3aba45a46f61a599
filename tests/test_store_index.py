"""SplatStore(index="hrm2"): the approximate index kept in step with every change to the
store, on every backend. With full probing the index must give exactly the flat ranking;
with default probing a recall floor; a splat whose mu moves across a cell is re-assigned."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError, SplatStore
from m2m_gpu.store import state as store_mod

FULL = {"p1": 10_000, "p2": 10_000}  # probe every cell: the index scan is exact


def data(n, m, d=16, seed=11, clusters=30):
    kw = dict(kind="clustered", clusters=clusters, spread=0.3)
    return (m2m_gpu.synthetic(n, d, seed=seed, **kw),
            m2m_gpu.synthetic(m, d, seed=seed, part="queries", **kw))


def make(backend, train_min, metric="l2", store_options=None, **index_options):
    return SplatStore(16, metric=metric, backend=backend.name, index="hrm2",
                      index_options={"train_min": train_min, **index_options},
                      **(store_options or {}))


def assert_index_consistent(s: SplatStore):
    """Every live splat sits at exactly one live position holding its current mu, in the
    cell its mu is assigned to; dead positions hold no live splat's only copy."""
    h = s._st.index.hrm2
    live = np.flatnonzero(s._st.table.live)
    pos = h.positions_of(live)
    assert (pos >= 0).all()
    assert np.unique(h.ids[~h.dead]).size == (~h.dead).sum() == live.size
    mu = s._st.arrays.mu(live)
    np.testing.assert_array_equal(h.rows_at(pos), mu)
    np.testing.assert_array_equal(h.cell_of[pos], h.assign(np.ascontiguousarray(mu)))
    assert s._st.index.check(live) == []


def same_results(a, b, tol=1e-5):
    assert a.ids == b.ids
    np.testing.assert_allclose(a.log_scores, b.log_scores, rtol=tol, atol=tol)


def test_untrained_is_exact_then_trains_at_train_min(backend):
    x, q = data(1200, 20)
    s = make(backend, train_min=1000)
    s.add(x[:900])
    assert not s._st.index.ready and s.stats()["index"]["trained"] is False
    same_results(s.search(q, 5), s.search(q, 5, exact=True))
    s.add(x[900:])
    st = s.stats()["index"]
    assert s._st.index.ready and st["trained"] and st["positions"] == 1200
    r = s.search(q, 5)
    assert (s._st.index.last_report.vectors < 1200).all()  # a real index scan, not exact
    assert len(r.ids) == 20 and all(len(row) == 5 for row in r.ids)


@pytest.mark.parametrize("rank", ["splat", "distance"])
def test_full_probing_equals_flat_after_every_kind_of_change(backend, rng, monkeypatch, rank):
    """Adds, upserts, feedback (mu and alpha/kappa move), decay, deletes, compaction and
    merges: after each, the index (probing every cell) ranks exactly like the flat scan."""
    monkeypatch.setattr(store_mod, "COMPACT_MIN_FREE", 8)
    x, q = data(700, 12)
    s = make(backend, train_min=300, metric="cosine", n1=4, n2=4,
             store_options={"merge_radius": 0.05}, **FULL)

    def check():
        assert_index_consistent(s)
        same_results(s.search(q, 7, rank=rank), s.search(q, 7, rank=rank, exact=True))

    s.add(x[:500])
    check()
    s.add(x[500:], ids=list(range(1000, 1200)))  # overflow region
    check()
    s.add(-x[:20], ids=list(range(20)))  # upserts: rows jump across the space
    check()
    s.feedback(q[:6], relevant=[[i] for i in range(30, 36)],
               irrelevant=[[i + 100] for i in range(6)])
    check()
    s.decay(50.0)
    check()
    s.delete(list(range(200, 420)))  # past a quarter free: the store compacts
    assert s.slots == len(s)
    check()
    s.add(x[600:610] + np.float32(1e-3), ids=list(range(5000, 5010)))  # near-duplicates
    rep = s.consolidate()
    assert rep.merged  # merges moved survivors and freed the others
    check()


def test_feedback_that_moves_mu_across_cells_reassigns(backend):
    """Pull a splat towards a far query until its mu lands in another cell: the index
    re-assigns it (one dead position, one new) and a search near its new mu finds it."""
    x, _ = data(1500, 1)
    s = make(backend, train_min=1000, metric="l2")
    s.add(x)
    h = s._st.index.hrm2
    target = 3
    start_cell = h.cell_of[h.positions_of([target])[0]]
    far = x[int(np.argmax(((x - x[target]) ** 2).sum(1)))]
    for _ in range(60):
        s.feedback(np.repeat(far[None], 8, 0), relevant=[[target]] * 8)
        if h.cell_of[h.positions_of([target])[0]] != start_cell:
            break
    assert h.cell_of[h.positions_of([target])[0]] != start_cell
    assert h.dead.sum() >= 1
    assert_index_consistent(s)
    mu = s.get(target)[0]["vector"]
    assert s.search(mu, 1, rank="distance").ids[0] == [target]


def test_recall_floor_at_default_probing(backend):
    n = 20_000 if backend.name != "vulkan" else 3_000
    x, q = data(n, 100)
    s = make(backend, train_min=1000, **({} if backend.name != "vulkan" else
                                         {"n1": 6, "n2": 6}))
    s.add(x)
    got = s.search(q, 10, rank="distance")
    want = s.search(q, 10, rank="distance", exact=True)
    rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.ids, want.ids, strict=True)])
    assert rec >= 0.9
    assert s._st.index.last_report.vectors.mean() < 0.5 * n


def test_selective_filter_still_gets_min_k_matches(backend):
    x, q = data(2000, 10)
    s = make(backend, train_min=1000, p2=2)
    s.add(x, metadata=[{"tag": int(i % 97 == 0)} for i in range(2000)])  # 21 match
    r = s.search(q, 5, filter={"tag": 1})
    want = s.search(q, 5, filter={"tag": 1}, exact=True)
    assert all(len(row) == 5 for row in r.ids)
    same_results(r, want)  # short queries fall back to the exact ranking


def test_bad_index_arguments(backend):
    with pytest.raises(InvalidInputError, match="index must be"):
        SplatStore(4, backend=backend.name, index="ivf")
    with pytest.raises(InvalidInputError, match="unknown index_options"):
        SplatStore(4, backend=backend.name, index="hrm2", index_options={"nprobe": 3})
    with pytest.raises(InvalidInputError, match="index='hrm2' only"):
        SplatStore(4, backend=backend.name, index_options={"p2": 3})
    with pytest.raises(InvalidInputError, match="p2"):
        SplatStore(4, backend=backend.name, index="hrm2", index_options={"p2": 0})
    with pytest.raises(InvalidInputError, match="train_min"):
        SplatStore(4, backend=backend.name, index="hrm2", index_options={"train_min": -1})
