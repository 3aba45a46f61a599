"""SplatStore behaviour (SPEC sections 1, 2 and 6) on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError, SplatStore, UnknownIdError, UnknownMetricError
from m2m_gpu import reference as ref
from m2m_gpu.store import state as store_mod

from .tolerances import tolerance


def make(backend, dim=8, metric="cosine", **opts):
    return SplatStore(dim, metric=metric, backend=backend.name, **opts)


def snapshot(s: SplatStore):
    """Everything observable about a store, to check that a failed call changed nothing."""
    ids = sorted(s.ids(), key=repr)
    recs = s.get(ids)
    return (len(s), ids, s.aliases(),
            [(r["vector"].tobytes(), r["alpha"], r["kappa"], r["metadata"]) for r in recs])


def splats_of(s: SplatStore, ids):
    """``(mu, alpha, kappa)`` of the given ids, read back through ``get``."""
    recs = s.get(ids)
    return (np.stack([r["vector"] for r in recs]), np.array([r["alpha"] for r in recs]),
            np.array([r["kappa"] for r in recs]))


# ---- add / get / delete ------------------------------------------------------------------------
def test_add_generates_ids_and_upserts(backend, rng):
    s = make(backend)
    X = rng.standard_normal((10, 8)).astype(np.float32)
    ids = s.add(X[:5])
    assert ids == [0, 1, 2, 3, 4] and len(s) == 5
    assert s.add(X[5:7], ids=["a", "b"], metadata={"src": "x"}) == ["a", "b"]
    assert s.add(X[7:8]) == [5]
    s.feedback(X[7], relevant=[5])
    s.add(X[9], ids=[5], metadata=[{"v": 2}])  # replace: new vector, fresh params
    assert len(s) == 8
    rec = s.get(5)[0]
    np.testing.assert_allclose(rec["vector"], X[9] / np.linalg.norm(X[9]), rtol=1e-6)
    assert rec["alpha"] == 1.0 and rec["kappa"] == 10.0 and rec["metadata"] == {"v": 2}
    assert s.get(["a", "zz"])[1] is None and s.get("b")[0]["metadata"] == {"src": "x"}
    assert "a" in s and "zz" not in s and 4 in s
    r = s.search(X[9], k=1)
    assert r.ids[0] == [5]


def test_delete_ignores_missing_and_compacts(backend, rng, monkeypatch):
    monkeypatch.setattr(store_mod, "COMPACT_MIN_FREE", 4)
    s = make(backend, metric="l2")
    X = rng.standard_normal((40, 8)).astype(np.float32)
    s.add(X, metadata=[{"i": i} for i in range(40)])
    assert s.delete([1, 2, 999, "nope"]) == 2
    assert len(s) == 38 and 1 not in s
    assert s.delete(list(range(3, 20))) == 17  # passes a quarter free: compacts
    assert s.slots == len(s) == 21
    r = s.search(X, k=1, rank="distance")
    for q in range(40):
        if q in s:
            assert r.ids[q] == [q] and r.metadata[q] == [{"i": q}]
        else:
            assert r.ids[q][0] != q
    want = ref.splat_topk(X, X[[0] + list(range(20, 40))], np.ones(21), np.full(21, 10.0), 5)
    got = s.search(X, k=5)
    keep = np.array([0] + list(range(20, 40)))
    np.testing.assert_array_equal(np.array(got.ids), keep[want[1]])


# ---- the score model ---------------------------------------------------------------------------
def test_score_at_centre_is_alpha_and_scales(backend, rng):
    s = make(backend, dim=4, metric="l2")
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    s.add(x, ids=["c"])
    for _ in range(3):
        s.feedback(x[0] + 0.5, relevant=["c"])  # alpha *= 1.1 three times
    rec = s.get("c")[0]
    alpha = rec["alpha"]
    assert alpha == pytest.approx(1.331, rel=1e-5)
    r = s.search(rec["vector"], k=1)  # at the (moved) centre
    assert r.scores[0, 0] == pytest.approx(alpha, rel=1e-5)
    np.testing.assert_allclose(r.distances, 0.0, atol=1e-5)


def test_scaling_alpha_scales_score_and_kappa_sharpens(backend):
    s = make(backend, dim=2, metric="l2", kappa0=2.0)
    s.add(np.zeros((1, 2), np.float32), ids=["a"])
    q = np.array([[0.5, 0.0]], np.float32)
    base = s.search(q, k=1).scores[0, 0]
    assert base == pytest.approx(np.exp(-2.0 * 0.25), rel=1e-5)
    s.feedback(q[0], irrelevant=["a"])  # alpha 0.9, kappa 2 - 0.25
    after = s.search(q, k=1)
    assert after.scores[0, 0] == pytest.approx(0.9 * np.exp(-1.75 * 0.25), rel=1e-5)
    lo = make(backend, dim=2, metric="l2", kappa0=1.0)
    hi = make(backend, dim=2, metric="l2", kappa0=5.0)
    for st in (lo, hi):
        st.add(np.zeros((1, 2), np.float32))
    assert hi.search(q, k=1).scores[0, 0] < lo.search(q, k=1).scores[0, 0]
    np.testing.assert_allclose(hi.search(np.zeros(2, np.float32), k=1).scores, 1.0)


def test_far_strong_splat_outranks_near_weak_one(backend):
    # lr_mu = 0 keeps both centres where they are while feedback shapes alpha and kappa
    s = make(backend, dim=2, metric="l2", kappa0=1.0, alpha_min=1e-4, lr_mu=0.0,
             auto_consolidate=False)
    s.add(np.array([[3.0, 0.0]], np.float32), ids=["far"])
    s.add(np.array([[0.5, 0.0]], np.float32), ids=["near"])
    q = np.zeros((1, 2), np.float32)
    assert s.search(q, k=2).ids[0] == ["near", "far"]
    s.feedback(np.array([3.0, 0.0], np.float32), irrelevant=["far"])
    s.feedback(np.array([3.0, 0.0], np.float32), irrelevant=["far"])  # kappa 1 -> 0.5
    s.feedback(np.full((30, 2), 100.0, np.float32), relevant=[["far"]] * 30)  # alpha -> 10
    s.feedback(np.zeros((80, 2), np.float32), irrelevant=[["near"]] * 80)  # alpha -> 1e-4
    s.feedback(np.array([0.5, 0.0], np.float32), relevant=["near"])  # kappa -> 100
    far, near = s.get(["far", "near"])
    assert far["alpha"] == pytest.approx(10.0) and far["kappa"] < 0.6
    assert near["alpha"] < 1e-3 and near["kappa"] == pytest.approx(100.0)
    assert s.search(q, k=2).ids[0] == ["far", "near"]
    assert s.search(q, k=2, rank="distance").ids[0] == ["near", "far"]


def test_feedback_moves_parameters(backend, rng):
    s = make(backend, dim=8, metric="cosine")
    X = rng.standard_normal((20, 8)).astype(np.float32)
    s.add(X)
    q = rng.standard_normal(8).astype(np.float32)
    before = s.get([3, 4])
    qn = q / np.linalg.norm(q)
    d_before = np.linalg.norm(before[0]["vector"] - qn)
    assert s.feedback(q, relevant=[3], irrelevant=[4]) == 1
    rel, irr = s.get([3, 4])
    assert rel["alpha"] > before[0]["alpha"] and rel["kappa"] > before[0]["kappa"]
    assert np.linalg.norm(rel["vector"] - qn) < d_before
    assert abs(np.linalg.norm(rel["vector"]) - 1) < 1e-5  # cosine: stays on the sphere
    assert irr["alpha"] < before[1]["alpha"] and irr["kappa"] < before[1]["kappa"]
    np.testing.assert_array_equal(irr["vector"], before[1]["vector"])
    assert rel["hits"] == 1


def test_batched_feedback_equals_one_by_one(backend, rng):
    X = rng.standard_normal((30, 6)).astype(np.float32)
    Q = rng.standard_normal((50, 6)).astype(np.float32)
    rel = [[int(rng.integers(3))] for _ in range(50)]  # 3 hot splats, many collisions
    irr = [[int(i)] for i in rng.integers(3, 30, 50)]
    a, b = make(backend, 6), make(backend, 6)
    a.add(X)
    b.add(X)
    a.feedback(Q, relevant=rel, irrelevant=irr)
    for e in range(50):
        b.feedback(Q[e], relevant=rel[e], irrelevant=irr[e])
    tol = tolerance(backend.name, what="hebbian")
    for ra, rb in zip(a.get(list(range(30))), b.get(list(range(30))), strict=True):
        np.testing.assert_allclose(ra["vector"], rb["vector"], *tol)
        assert ra["alpha"] == pytest.approx(rb["alpha"], rel=1e-5)
        assert ra["kappa"] == pytest.approx(rb["kappa"], rel=1e-5)


def test_repeated_feedback_brings_rank_8_to_rank_1(backend, rng):
    s = make(backend, dim=16, metric="cosine")
    X = rng.standard_normal((200, 16)).astype(np.float32)
    s.add(X)
    q = rng.standard_normal(16).astype(np.float32)
    r = s.search(q, k=8)
    target = r.ids[0][7]
    events = 0
    while s.search(q, k=1).ids[0] != [target] and events < 1000:
        s.feedback(q, relevant=[target])  # kappa sharpens first; mu's drift wins later
        events += 1
    assert s.search(q, k=1).ids[0] == [target], "never reached rank 1"
    assert 1 < events < 1000


def test_clips_hold_after_thousands_of_events(backend, rng):
    s = make(backend, dim=4, metric="l2")
    X = rng.standard_normal((5, 4)).astype(np.float32)
    s.add(X)
    Q = np.repeat(X[:1], 2000, axis=0)
    s.feedback(Q, relevant=[[0]] * 2000, irrelevant=[[1]] * 2000)
    a, b = s.get([0, 1])
    assert a["alpha"] == pytest.approx(10.0) and a["kappa"] == pytest.approx(100.0)
    assert b["alpha"] == pytest.approx(0.01) and b["kappa"] == pytest.approx(0.5)
    assert 1 in s  # alpha_min (0.01) is not under alpha_prune (0.01): not pruned


def test_decay_and_auto_prune(backend, rng):
    s = make(backend, dim=4, metric="l2", half_life=10.0, auto_consolidate=False)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    s.add(X[:3])
    s.decay(10.0)
    np.testing.assert_allclose([r["alpha"] for r in s.get([0, 1, 2])], 0.5, rtol=1e-6)
    s.add(X[3:])  # added at clock 10: decays only from then on
    s.decay(20.0)
    alphas = [r["alpha"] for r in s.get(list(range(6)))]
    np.testing.assert_allclose(alphas, [0.25] * 3 + [0.5] * 3, rtol=1e-6)
    with pytest.raises(InvalidInputError):
        s.decay(5.0)  # time does not run backwards
    auto = make(backend, dim=4, metric="l2", half_life=1.0)
    auto.add(X)
    auto.decay(100.0)  # every alpha under alpha_prune: auto-consolidation removes them
    assert len(auto) == 0


# ---- consolidation -----------------------------------------------------------------------------
def test_consolidate_prunes_exactly_the_weak(backend, rng):
    s = make(backend, dim=8, metric="l2", auto_consolidate=False, alpha_min=1e-3)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    s.add(X)
    weak = [3, 17, 42]
    for _ in range(50):  # 0.9^50 ~ 0.005 < alpha_prune
        s.feedback(X[0] + 10, irrelevant=weak)
    s.feedback(X[0] + 10, irrelevant=[5])  # 0.9: stays
    report = s.consolidate()
    assert sorted(report.pruned) == weak
    assert len(s) == 47 and all(w not in s for w in weak) and 5 in s
    assert report.before == 50 and report.after == 47


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_consolidate_merges_and_ids_resolve_to_survivor(backend, rng, metric):
    s = make(backend, dim=8, metric=metric, merge_radius=0.05)
    X = rng.standard_normal((40, 8)).astype(np.float32) * 3
    s.add(X, ids=[f"x{i}" for i in range(40)])
    dup = X[:5] * 1.001 if metric == "cosine" else X[:5] + 0.005
    s.add(dup, ids=[f"d{i}" for i in range(5)])
    s.feedback(dup[0], relevant=["d0"])  # d0 stronger than x0: d0 survives
    report = s.consolidate()
    assert len(report.merged) == 5 and len(s) == 40
    merged = dict(report.merged)
    assert merged["x0"] == "d0"
    for i in range(1, 5):
        assert {f"x{i}", f"d{i}"} & set(merged)
    for gone, surv in report.merged:
        assert gone in s and s.get(gone)[0]["id"] == surv
        assert s.get(gone)[0]["vector"].tobytes() == s.get(surv)[0]["vector"].tobytes()
    rec = s.get("d0")[0]
    assert rec["alpha"] == pytest.approx(1.1 + 1.0, rel=1e-5)
    r = s.search(X[0], k=1)
    assert r.ids[0] == ["d0"]
    s.feedback(X[0], relevant=["x0"])  # feedback by a merged id reaches the survivor
    assert s.get("d0")[0]["alpha"] > rec["alpha"]
    assert s.delete("x0") == 0 and "x0" not in s and "d0" in s  # the alias alone goes
    assert s.consolidate().merged == []  # nothing left to merge


def test_auto_consolidation_at_capacity(backend, rng):
    s = make(backend, dim=4, metric="l2", capacity=10, merge_radius=0.01)
    X = rng.standard_normal((10, 4)).astype(np.float32)
    s.add(X)
    s.add(X[:3] + 1e-4)  # 13 > capacity: the three near-duplicates merge
    assert len(s) == 10 and len(s.aliases()) == 3


# ---- search: filters, ranks, results ----------------------------------------------------------
def test_filtered_search_gets_k_matching_results(backend, rng):
    s = make(backend, dim=8, metric="l2")
    n = 300
    X = rng.standard_normal((n, 8)).astype(np.float32)
    meta = [{"i": i, "lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 30,
             "tags": "x" if i % 7 == 0 else "y"} for i in range(n)]
    meta[5]["lang"] = True  # a bool must not match anything but a bool
    s.add(X, metadata=meta)
    Q = X[:4]

    def ids_matching(pred):
        return {i for i in range(n) if pred(meta[i])}

    cases = [
        ({"lang": "de"}, lambda m: m["lang"] == "de"),
        ({"year": {"$gte": 2025, "$lt": 2028}}, lambda m: 2025 <= m["year"] < 2028),
        ({"lang": {"$in": ["fr", "de"]}, "tags": "x"},
         lambda m: m["lang"] in ("fr", "de") and m["tags"] == "x" and m["lang"] is not True),
        ({"$or": [{"i": 1}, {"i": {"$gt": 295}}]}, lambda m: m["i"] == 1 or m["i"] > 295),
        ({"$not": {"lang": "en"}}, lambda m: m["lang"] != "en"),
        ({"lang": True}, lambda m: m["lang"] is True),
        ({"missing": {"$ne": 1}}, lambda m: True),
        ({"lang": {"$nin": ["en", "de"]}}, lambda m: m["lang"] not in ("en", "de")),
        ({"lang": {"$gte": "e"}}, lambda m: isinstance(m["lang"], str) and m["lang"] >= "e"),
    ]
    for filt, pred in cases:
        allowed = ids_matching(pred)
        for rank in ("splat", "distance"):
            r = s.search(Q, k=10, filter=filt, rank=rank)
            for q in range(4):
                assert len(r.ids[q]) == min(10, len(allowed)), filt
                assert set(r.ids[q]) <= allowed, filt
                assert all(pred(m) for m in r.metadata[q])
        # the filtered top-k equals the top-k of the matching subset
        sub = np.array(sorted(allowed))
        _, I, _ = ref.splat_topk(Q, X[sub], np.ones(sub.size), np.full(sub.size, 10.0),
                                 min(10, sub.size))
        got = s.search(Q, k=10, filter=filt)
        np.testing.assert_array_equal(np.array(got.ids), sub[I])
    assert s.search(Q, k=3, filter={"lang": "xx"}).ids == [[], [], [], []]


def test_search_agrees_with_reference_after_feedback(backend, rng):
    s = make(backend, dim=12, metric="cosine")
    X = rng.standard_normal((500, 12)).astype(np.float32)
    s.add(X)
    Q = rng.standard_normal((20, 12)).astype(np.float32)
    s.feedback(Q[:10], relevant=[[i] for i in range(10)], irrelevant=[[i + 10] for i in range(10)])
    mu, alpha, kappa = splats_of(s, list(range(500)))
    L, I, D = ref.splat_topk(Q, mu, alpha, kappa, 7, "cosine")
    r = s.search(Q, k=7)
    np.testing.assert_allclose(r.log_scores, L, *tolerance(backend.name, what="log_score"))
    np.testing.assert_allclose(r.scores, np.exp(L), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r.distances, D, *tolerance(backend.name, what="splat_d2"))
    e = s.energy(Q, grad=True)
    np.testing.assert_allclose(e.energy, ref.energy(Q, mu, alpha, kappa, "cosine"),
                               *tolerance(backend.name, what="energy"))
    assert e.gradient.shape == (20, 12)
    assert ((e.confidence > 0) & (e.confidence < 1)).all()
    hits = r[0]
    assert hits[0].id == r.ids[0][0] and hits[0].score == pytest.approx(float(r.scores[0, 0]))


def test_energy_confidence(backend, rng):
    s = make(backend, dim=4, metric="l2")
    assert np.isposinf(s.energy(np.ones(4, np.float32)).energy).all()
    assert s.energy(np.ones(4, np.float32)).confidence[0] == 0.0
    s.add(np.zeros((1, 4), np.float32))
    e = s.energy(np.array([[0, 0, 0, 0], [0.1, 0, 0, 0], [30, 0, 0, 0]], np.float32))
    assert e.confidence[0] == pytest.approx(0.5, abs=1e-6)  # the centre of one unit splat
    assert e.confidence[0] > e.confidence[1] > e.confidence[2]
    assert np.isfinite(e.energy).all() and e.energy[2] > 1e3


def test_stats(backend, rng):
    s = make(backend, dim=8)
    s.add(rng.standard_normal((10, 8)).astype(np.float32))
    st = s.stats()
    assert st["count"] == 10 and st["backend"] == backend.name
    assert st["alpha"]["min"] == 1.0 and st["kappa"]["max"] == 10.0
    assert st["device_bytes"] >= 10 * 8 * 4 + 10 * 16


# ---- bad input leaves the store unchanged -----------------------------------------------------
def test_bad_input_raises_and_changes_nothing(backend, rng):
    s = make(backend, dim=6, metric="l2")
    X = rng.standard_normal((12, 6)).astype(np.float32)
    s.add(X, metadata=[{"i": i} for i in range(12)])
    s.add(X[:2], ids=["a", "b"])
    before = snapshot(s)
    bad_nan = X[:3].copy()
    bad_nan[1, 2] = np.nan
    calls = [
        (InvalidInputError, lambda: s.add(np.ones((2, 5), np.float32))),  # wrong dim
        (InvalidInputError, lambda: s.add(bad_nan)),
        (InvalidInputError, lambda: s.add(X[:2], ids=[1])),  # id count
        (InvalidInputError, lambda: s.add(X[:2], ids=["q", "q"])),
        (InvalidInputError, lambda: s.add(X[:1], ids=[1.5])),
        (InvalidInputError, lambda: s.add(X[:1], metadata=[{"f": object()}])),
        (InvalidInputError, lambda: s.search(X[:1], k=0)),
        (InvalidInputError, lambda: s.search(X[:1], k=2, rank="best")),
        (InvalidInputError, lambda: s.search(X[:1], filter={"$xor": []})),
        (InvalidInputError, lambda: s.search(np.ones((1, 3), np.float32))),
        (InvalidInputError, lambda: s.energy(bad_nan)),
        (UnknownIdError, lambda: s.feedback(X[0], relevant=[0, 999])),
        (UnknownIdError, lambda: s.feedback(X[:2], relevant=[[0], [1]], irrelevant=[[], ["zz"]])),
        (InvalidInputError, lambda: s.feedback(X[0], relevant=[1], irrelevant=[1])),
        (InvalidInputError, lambda: s.feedback(bad_nan[1], relevant=[1])),
        (InvalidInputError, lambda: s.decay(float("nan"))),
    ]
    for exc, call in calls:
        with pytest.raises(exc):
            call()
        assert snapshot(s) == before
    with pytest.raises(UnknownMetricError):
        SplatStore(6, metric="hamming", backend=backend.name)
    with pytest.raises(UnknownMetricError, match="IndexFlatIP"):
        SplatStore(6, metric="ip", backend=backend.name)
    with pytest.raises(InvalidInputError):
        SplatStore(6, backend=backend.name, kappa0=-1)
    with pytest.raises(InvalidInputError):
        SplatStore(6, backend=backend.name, not_an_option=1)


def test_empty_store_and_empty_queries(backend):
    s = make(backend, dim=3)
    r = s.search(np.ones((2, 3), np.float32), k=5)
    assert r.ids == [[], []] and r.scores.shape == (2, 0)
    assert s.add(np.zeros((0, 3), np.float32)) == []
    assert s.consolidate().pruned == []
    assert s.feedback(np.ones((0, 3), np.float32), relevant=[]) == 0
    assert m2m_gpu.SplatStore(3, backend=backend.name).stats()["count"] == 0


def test_store_across_many_device_chunks_and_tiles(backend, rng, monkeypatch):
    """Small chunk and tile budgets: mu and params span many device buffers (d > the width
    at which their chunkings would differ), and every operation still agrees."""
    from m2m_gpu.backends import vulkan as vulkan_backend
    from m2m_gpu.ops import host_topk as cpu_backend

    monkeypatch.setattr(vulkan_backend, "CHUNK_BYTES", 32 * 1024)
    monkeypatch.setattr(vulkan_backend, "TILE_BUDGET_BYTES", 8192)
    monkeypatch.setattr(cpu_backend, "BATCH_TILE_BYTES", 4096)
    monkeypatch.setattr(cpu_backend, "SCAN_TILE_ROWS", 37)
    monkeypatch.setattr(store_mod, "COMPACT_MIN_FREE", 10)
    d = 40
    s = make(backend, dim=d, metric="cosine", merge_radius=0.02)
    X = rng.standard_normal((1500, d)).astype(np.float32)
    s.add(X[:700])
    s.add(X[700:])  # appends top up a partly filled last chunk
    Q = rng.standard_normal((30, d)).astype(np.float32)
    s.feedback(Q, relevant=[[int(i)] for i in rng.integers(10, 1500, 30)],
               irrelevant=[[int(i)] for i in rng.integers(10, 1500, 30)])
    s.delete(list(range(0, 1500, 3)))  # a third: compacts
    s.add(X[[1, 2, 4]] * 1.0001, ids=["dup1", "dup2", "dup3"])  # twins of live splats
    report = s.consolidate()
    assert len(report.merged) == 3 and len(s) == 1000
    live = sorted((k for k in s.ids()), key=repr)
    mu, alpha, kappa = splats_of(s, live)
    L, I, D = ref.splat_topk(Q, mu, alpha, kappa, 25, "cosine")
    r = s.search(Q, k=25)
    np.testing.assert_allclose(r.log_scores, L, *tolerance(backend.name, what="log_score"))
    got = {(q, i) for q in range(30) for i in r.ids[q]}
    want = {(q, live[i]) for q in range(30) for i in I[q]}
    assert len(got ^ want) <= 2  # float32 near-ties at the k-th place at most
    np.testing.assert_allclose(s.energy(Q).energy, ref.energy(Q, mu, alpha, kappa, "cosine"),
                               *tolerance(backend.name, what="energy"))


def test_dedup_stores_identical_vectors_once(backend, rng):
    s = make(backend, dedup=True)
    v = rng.standard_normal((3, 8)).astype(np.float32)
    assert s.add(np.stack([v[0], v[1], v[0]]), ids=["a", "b", "a2"]) == ["a", "b", "a2"]
    assert len(s) == 2 and s.slots == 2  # a2 is an alias of a
    assert s.add(v[1], ids=["b3"]) == ["b3"]  # in a later add: still found
    assert len(s) == 2 and s.get("b3")[0]["id"] == "b" and "a2" in s
    s.add(v[2], ids=["c"])
    assert len(s) == 3
    s.feedback(v[2], relevant=["a2"])  # feedback through the alias reaches a
    assert s.get("a")[0]["hits"] == 1
    s.add(v[0] + 1, ids=["a"])  # a moves: a new copy of the old vector is stored again
    s.add(v[0], ids=["z"])
    assert len(s) == 4 and s.get("z")[0]["id"] == "z"
    s.delete("a")  # the survivor goes, and the ids resolving to it
    assert "a" not in s and "a2" not in s and "z" in s
    plain = make(backend)
    plain.add(np.stack([v[0], v[0]]))
    assert len(plain) == 2  # off by default


@pytest.mark.parametrize("bad", [b"\x01\x03", bytearray(b"ab"), memoryview(b"a"),
                                 {1: 2}, None, 1.5, 2**63, -(2**63) - 1, [1, 2.0]])
def test_ids_that_are_not_ids_are_refused_everywhere(bad):
    """bytes used to be read as a list of small int ids (delete(b"\\x01\\x03") deleted ids
    1 and 3); dicts, None, floats and ints beyond int64 are refused too, and nothing
    changes."""
    import m2m_gpu

    store = m2m_gpu.SplatStore(4, backend="cpu")
    X = np.eye(4, dtype=np.float32)
    store.add(X, ids=[0, 1, 2, 3])
    calls = [lambda: store.delete(bad), lambda: store.get(bad),
             lambda: store.add(X[:1], ids=[bad])]
    if bad is not None:  # relevant=None means "no relevant ids"
        calls.append(lambda: store.feedback(X[0], relevant=bad))
    for call in calls:
        with pytest.raises(m2m_gpu.InvalidInputError):
            call()
    assert len(store) == 4 and all(i in store for i in range(4))


def test_ids_and_iteration_list_the_stored_splats():
    import m2m_gpu

    store = m2m_gpu.SplatStore(3, backend="cpu")
    X = np.eye(3, dtype=np.float32)
    store.add(X, ids=["a", 7, "c"])
    store.delete(7)
    assert store.ids() == ["a", "c"] and list(store) == ["a", "c"]
    snapshot = iter(store)
    store.add(X[1:2], ids=["d"])
    assert list(snapshot) == ["a", "c"]  # a snapshot
    assert sorted(map(str, store)) == ["a", "c", "d"]


def test_decay_reports_what_it_did_and_refuses_wall_clock_by_mistake(caplog):
    """decay() returns what it did; splats it pruns (auto_consolidate) are reported and
    logged at WARNING; passing wall-clock time to a store whose clock starts at 0 (every
    alpha would become about 0) is refused with a hint, unless force=True."""
    import time

    import m2m_gpu

    store = m2m_gpu.SplatStore(3, backend="cpu", half_life=10.0)
    store.add(np.eye(3, dtype=np.float32), ids=["a", "b", "c"])
    report = store.decay(10.0)
    assert report.elapsed == 10.0 and abs(report.factor - 0.5) < 1e-9 and report.pruned == []
    with pytest.raises(m2m_gpu.InvalidInputError, match="wall-clock"):
        store.decay(time.time())
    assert store.clock == 10.0 and len(store) == 3  # refused: nothing changed
    with caplog.at_level("WARNING", logger="m2m_gpu"):
        report = store.decay(10.0 + 10 * 40, force=False)  # 40 half-lives: alpha ~ 1e-12
    assert sorted(report.pruned) == ["a", "b", "c"] and len(store) == 0
    assert "pruned 3 splats" in caplog.text
    keep = m2m_gpu.SplatStore(3, backend="cpu", half_life=10.0, auto_consolidate=False)
    keep.add(np.eye(3, dtype=np.float32))
    assert keep.decay(400.0).pruned == [] and len(keep) == 3  # every memory kept


def test_metadata_numbers_numpy_scalars_and_ints_beyond_float_range():
    import m2m_gpu

    store = m2m_gpu.SplatStore(3, backend="cpu")
    X = np.eye(3, dtype=np.float32)
    store.add(X[:2], ids=["a", "b"], metadata=[{"year": np.int64(2024), "w": np.float32(0.5)},
                                               {"year": 2020, "w": 1.0}])
    assert store.get("a")[0]["metadata"] == {"year": 2024, "w": 0.5}
    hits = store.search(X[:1], k=5, filter={"year": {"$gte": 2021}})
    assert hits.ids[0] == ["a"]
    with pytest.raises(m2m_gpu.InvalidInputError, match="float range"):
        store.add(X[2:3], ids=["c"], metadata={"year": 10**400})
    assert "c" not in store and len(store) == 2
    assert store.search(X[:1], k=5, filter={"year": {"$lt": 2021}}).ids[0] == ["b"]


def test_list_valued_metadata_matches_element_wise():
    """Equality, $in and $contains match list-valued metadata element by element (they used
    to match nothing, or raise a broadcasting ValueError); $ne and $nin are their negation;
    a whole list as the value matches that exact list."""
    import m2m_gpu

    store = m2m_gpu.SplatStore(3, backend="cpu")
    X = np.eye(3, dtype=np.float32)
    store.add(X, ids=["a", "b", "c"], metadata=[{"tags": ["x", "y"], "n": [1, 2]},
                                                {"tags": ["y"], "n": [True]},
                                                {"tags": "x", "n": 1}])

    def hits(f):
        return sorted(store.search(X[:1], k=3, filter=f).ids[0])

    assert hits({"tags": "x"}) == ["a", "c"]
    assert hits({"tags": {"$in": ["y"]}}) == ["a", "b"]
    assert hits({"tags": {"$contains": "x"}}) == ["a"]  # lists only
    assert hits({"tags": ["x", "y"]}) == ["a"]
    assert hits({"tags": {"$ne": "x"}}) == ["b"]
    assert hits({"tags": {"$nin": ["x", "y"]}}) == []
    assert hits({"n": 1}) == ["a", "c"]  # True is not the number 1
    assert hits({"n": {"$contains": True}}) == ["b"]


def test_exists_filter_matches_on_the_key_alone(backend):
    store = m2m_gpu.SplatStore(3, backend=backend.name)
    X = np.eye(3, dtype=np.float32)
    store.add(X, ids=["a", "b", "c"], metadata=[{"k": None}, {}, {"k": 0, "j": 1}])
    assert sorted(store.ids(filter={"k": {"$exists": True}})) == ["a", "c"]
    assert store.ids(filter={"k": {"$exists": False}}) == ["b"]
    assert store.search(X[1:2], k=3, filter={"$not": {"j": {"$exists": True}}}).ids[0][0] == "b"
    with pytest.raises(InvalidInputError, match=r"\$exists"):
        store.ids(filter={"k": {"$exists": 1}})


def test_dotted_paths_and_id_filters(backend):
    """``a.b`` walks nested objects (and lists of them); ``$id`` filters on the ids."""
    store = SplatStore(3, backend=backend.name)
    X = np.eye(3, dtype=np.float32)
    store.add(X, ids=[1, 2, "u"], metadata=[
        {"metadata": {"source": "a.txt", "year": 2020}},
        {"metadata": {"source": "b.txt"}, "refs": [{"k": 1}, {"k": [2, 3]}]},
        {"metadata.source": "a.txt"}])  # a literal dotted key wins over the path
    assert sorted(store.ids(filter={"metadata.source": "a.txt"}), key=str) == [1, "u"]
    assert store.ids(filter={"metadata.year": {"$gte": 2000}}) == [1]
    assert store.ids(filter={"refs.k": 3}) == [2] and store.ids(filter={"refs.k": 1}) == [2]
    assert store.ids(filter={"$id": {"$in": [2, "u"]}, "metadata.source": "b.txt"}) == [2]
    assert store.ids(filter={"$id": {"$nin": [2, "u"]}}) == [1]
    hits = store.search(X[2:3], k=3, filter={"$not": {"$id": "u"}}).ids[0]
    assert sorted(hits) == [1, 2]
    with pytest.raises(InvalidInputError, match=r"\$id"):
        store.ids(filter={"$id": {"$gt": 1}})
