"""Memory tiers (SPEC section 4): a tiered store returns exactly what a single-tier store
returns, on every backend; budgets, policies, counted moves, device out-of-memory, and
stores opened with their vectors memory-mapped as the cold tier."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError, SplatStore
from m2m_gpu.backends import get_backend
from m2m_gpu.crashtest import digest
from m2m_gpu.tiers import COLD, HOT, WARM, TierManager, TierOptions
from tests.tolerances import tolerance

D = 16
ROW = 4 * D


def tiers(hot, warm, block=37, **kw):
    """Budgets in splats; ``block`` rows per streamed block (awkward on purpose)."""
    return {"hot_bytes": hot * ROW, "warm_bytes": None if warm is None else warm * ROW,
            "block_bytes": block * ROW, **kw}


def twin_stores(backend, metric="cosine", **tier_kw):
    """The same writes applied to a single-tier store and to a tiered one (hot 100, warm
    150, the rest cold: 4x the hot budget and more)."""
    rng = np.random.default_rng(11)
    flat = SplatStore(D, metric=metric, backend=backend.name, merge_radius=0.02)
    tiered = SplatStore(D, metric=metric, backend=backend.name, merge_radius=0.02,
                        tiers=tiers(100, 150, **tier_kw))
    x = rng.standard_normal((503, D)).astype(np.float32)
    q = rng.standard_normal((7, D)).astype(np.float32)
    for s in (flat, tiered):
        s.add(x[:300], metadata=[{"g": i % 3} for i in range(300)])
        s.add(x[300:], metadata=[{"g": i % 3} for i in range(300, 503)])
        s.add(x[:5] * 0.5 + 0.1, ids=[0, 1, 2, 3, 4])  # upserts
        s.feedback(q[:4], relevant=[[10, 400], [450], [499, 1], [2]], irrelevant=[[3], [], [],
                                                                                  [500]])
        s.delete(list(range(20, 40)))
        s.add(s.get(7)[0]["vector"] + np.float32(1e-3), ids=["near7"])
        s.consolidate()  # merges near7 into 7
        s.decay(100.0)
    return flat, tiered


def test_tiered_store_returns_what_a_single_tier_store_returns(backend):
    flat, tiered = twin_stores(backend)
    c = tiered.stats()["tiers"]
    assert c["hot"]["splats"] <= 100 and c["warm"]["splats"] <= 150 and c["cold"]["splats"] > 0
    assert c["hot"]["splats"] + c["warm"]["splats"] + c["cold"]["splats"] == tiered.slots
    assert flat.stats()["tiers"]["hot"]["splats"] == flat.slots  # the default: all hot
    q = np.random.default_rng(3).standard_normal((33, D)).astype(np.float32)
    for kw in ({"k": 10}, {"k": 1}, {"k": 600}, {"k": 5, "rank": "distance"},
               {"k": 8, "filter": {"g": 1}}):
        a, b = flat.search(q, **kw), tiered.search(q, **kw)
        assert a.ids == b.ids, kw
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.distances, b.distances)
    assert tiered.stats()["tiers"]["streamed"]["bytes"] > 0
    ea, eb = flat.energy(q, grad=True), tiered.energy(q, grad=True)
    rtol, atol = tolerance(backend.name, what="energy")
    np.testing.assert_allclose(eb.energy, ea.energy, rtol=rtol, atol=atol)
    rtol, atol = tolerance(backend.name, what="energy_grad")
    np.testing.assert_allclose(eb.gradient, ea.gradient, rtol=rtol, atol=atol)
    assert digest(tiered) == digest(flat)  # every vector, parameter, id and alias
    tiered.check_integrity()


def test_ties_break_the_same_way_on_every_layout(backend):
    v = np.random.default_rng(1).standard_normal((1, D)).astype(np.float32)
    x = np.repeat(v, 60, axis=0)  # 60 identical splats: every score ties
    flat = SplatStore(D, backend=backend.name)
    tiered = SplatStore(D, backend=backend.name, tiers=tiers(7, 11, block=5))
    for s in (flat, tiered):
        s.add(x)
    a, b = flat.search(v, k=25), tiered.search(v, k=25)
    assert a.ids == b.ids == [list(range(25))]  # ties go to the smaller slot


def test_budgets_hold_and_moves_are_counted(backend):
    rng = np.random.default_rng(2)
    s = SplatStore(D, backend=backend.name, tiers=tiers(50, 60, rebalance_every=4))
    s.add(rng.standard_normal((400, D)).astype(np.float32))
    st = s.stats()["tiers"]
    assert [st[t]["splats"] for t in ("hot", "warm", "cold")] == [50, 60, 290]
    assert st["hot"]["bytes"] == 50 * ROW and st["hot"]["budget_bytes"] == 50 * ROW
    assert s.stats()["device_bytes"] < 400 * ROW  # only the hot vectors are on the device
    # searches near splats that start cold make them hot
    target = [390, 391, 392]
    q = np.stack([r["vector"] for r in s.get(target)])
    for _ in range(8):
        s.search(q, k=1)
    assert all(s._st.arrays.rows.tier[s._st.table.slot[t]] == HOT for t in target)
    moves = s.stats()["tiers"]["moves"]
    assert moves["cold->hot"]["splats"] >= 3
    assert moves["cold->hot"]["bytes"] == moves["cold->hot"]["splats"] * ROW
    assert sum(v["splats"] for k, v in moves.items() if k.startswith("hot->")) >= 3
    st = s.stats()["tiers"]
    assert st["hot"]["splats"] <= 50 and st["warm"]["splats"] <= 60
    s.check_integrity()


@pytest.mark.parametrize("policy", ["hotness", "lru", "lfu"])
def test_policies_rank_what_they_say(policy):
    be = get_backend("cpu")
    tm = TierManager(4, be, TierOptions(hot_bytes=2 * 16, warm_bytes=2 * 16, policy=policy))
    tm.place(np.arange(24, dtype=np.float32).reshape(6, 4))
    alpha = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 5.0])
    live = np.ones(6, dtype=bool)
    for _ in range(3):
        tm.touch([0])  # slot 0: often, long ago
    tm.touch([1])  # slot 1: once, most recently
    tm.rebalance(alpha, live)
    hot = set(np.flatnonzero(tm.tier == HOT).tolist())
    if policy == "hotness":
        assert hot == {0, 5}  # most accessed (decayed), and the heaviest alpha
    elif policy == "lru":
        assert 1 in hot and 0 in hot  # the two most recently touched
    else:
        assert 0 in hot  # the most frequently touched
    assert (tm.tier == WARM).sum() == 2 and (tm.tier == COLD).sum() == 2
    np.testing.assert_array_equal(tm.gather(np.arange(6)),
                                  np.arange(24, dtype=np.float32).reshape(6, 4))
    assert tm.check() == []


def test_tier_manager_interface_place_promote_demote_blocks():
    be = get_backend("cpu")
    tm = TierManager(3, be, TierOptions(hot_bytes=4 * 12, warm_bytes=3 * 12, block_bytes=24))
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    tm.place(rows)
    assert tm.counts() == [4, 3, 3]
    tm.demote([0, 1])  # to warm while it has room, then cold
    tm.promote([9, 8])
    assert tm.tier[8] == HOT and tm.tier[9] == HOT and tm.tier[0] != HOT
    seen = np.concatenate([b.slots for b in tm.blocks()])
    assert sorted(seen.tolist()) == list(range(10))  # every row once
    for b in tm.blocks():
        np.testing.assert_array_equal(be.to_host(b.rows), rows[b.slots])
        assert (np.diff(b.slots) > 0).all()
    tm.scatter([0, 5], np.full((2, 3), -1, np.float32))
    assert (tm.gather([0, 5]) == -1).all()
    tm.keep(np.array([1, 2, 5, 9]))
    np.testing.assert_array_equal(tm.gather(np.arange(4))[3], rows[9])
    assert tm.check() == []
    assert tm.stats()["moves"]["hot->warm"]["splats"] + \
        tm.stats()["moves"]["hot->cold"]["splats"] >= 2


def test_device_out_of_memory_caps_the_hot_tier_and_says_so_once(backend, monkeypatch):
    """The device "fills up" after 70 rows: later rows go to host memory, with one warning;
    results stay those of a store that never ran out."""
    real = backend.row_store

    def limited(dim, *a, **kw):
        store = real(dim, *a, **kw)
        append = store.append

        def guarded(rows):
            if dim == D and store.view().shape[0] + rows.shape[0] > 70:
                raise MemoryError("simulated device out of memory")
            append(rows)

        store.append = guarded
        return store

    monkeypatch.setattr(backend, "row_store", limited)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, D)).astype(np.float32)
    with pytest.warns(ResourceWarning, match="ran out of memory") as rec:
        s = SplatStore(D, backend=backend.name)
        for i in range(0, 300, 40):
            s.add(x[i : i + 40])
    assert len(rec) == 1
    st = s.stats()["tiers"]
    assert st["hot"]["splats"] <= 70 and st["warm"]["splats"] + st["hot"]["splats"] == 300
    assert st["device_memory_shrinks"] == 1
    monkeypatch.undo()
    ref = SplatStore(D, backend=backend.name)
    ref.add(x)
    q = rng.standard_normal((9, D)).astype(np.float32)
    assert s.search(q, k=12).ids == ref.search(q, k=12).ids
    s.check_integrity()


def test_out_of_memory_in_a_kernel_shrinks_the_hot_tier_and_retries(backend, monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, D)).astype(np.float32)
    s = SplatStore(D, backend=backend.name)
    s.add(x)
    q = rng.standard_normal((5, D)).astype(np.float32)
    want = s.search(q, k=7).ids
    real = backend.splat_topk
    calls = {"n": 0}

    def flaky(queries, mu, *a, **kw):
        calls["n"] += 1
        if mu.shape[0] == 200:  # the whole store on the device: "no room" for the work
            raise MemoryError("simulated")
        return real(queries, mu, *a, **kw)

    monkeypatch.setattr(backend, "splat_topk", flaky)
    with pytest.warns(ResourceWarning):
        got = s.search(q, k=7).ids
    assert got == want
    st = s.stats()["tiers"]
    assert st["hot"]["splats"] == 100 and st["warm"]["splats"] == 100


def test_open_maps_the_vectors_and_reads_only_what_the_budgets_place(backend, tmp_path):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((600, D)).astype(np.float32)
    s = SplatStore(D, backend=backend.name, path=tmp_path / "st")
    s.add(x)
    s.feedback(x[:2], relevant=[[598], [599]])  # heavier alpha: placed hot on open
    s.checkpoint()
    s.add(x[:3] + 1, ids=["w0", "w1", "w2"])  # in the log only
    want = digest(s)
    s.close()
    t = SplatStore.open(tmp_path / "st", backend=backend.name, tiers=tiers(50, 25))
    st = t.stats()["tiers"]
    read = sum(v["bytes"] for k, v in st["moves"].items() if k.startswith("cold->"))
    assert read == 75 * ROW  # the hot and warm budgets, not the 600 stored vectors
    assert st["cold"]["splats"] == 603 - 75
    tier_of = t._st.arrays.rows.tier
    assert tier_of[t._st.table.slot[598]] == HOT and tier_of[t._st.table.slot[599]] == HOT
    assert digest(t) == want
    t.feedback(x[100], relevant=[100])  # a cold splat written: moved out of the map
    t.checkpoint()  # cold rows are read from the new checkpoint's file
    assert not list((tmp_path / "st").glob("m2m-cold-*"))
    want = digest(t)
    q = rng.standard_normal((4, D)).astype(np.float32)
    hits = t.search(q, k=9).ids
    t.close()
    u = SplatStore.open(tmp_path / "st", backend=backend.name)  # untiered: all in memory
    assert digest(u) == want and u.search(q, k=9).ids == hits
    u.check_integrity()


def test_tier_options_are_checked(backend):
    for bad in ({"hot_bytes": -1}, {"policy": "random"}, {"tau": 0}, {"block_bytes": 0},
                {"hot": 5}, {"warm_bytes": 1.5}):
        with pytest.raises(InvalidInputError):
            SplatStore(D, backend=backend.name, tiers=bad)
    with pytest.raises(InvalidInputError):
        SplatStore(D, backend=backend.name, tiers=[1, 2])


def test_every_splat_is_in_exactly_one_tier_through_compaction(backend):
    rng = np.random.default_rng(9)
    s = SplatStore(D, backend=backend.name, tiers=tiers(40, 40, block=16))
    s.add(rng.standard_normal((1500, D)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.delete(list(range(0, 1500, 2)) + list(range(1, 700, 2)))  # compacts
    assert s.slots == len(s) == 400
    st = s.stats()["tiers"]
    assert st["hot"]["splats"] + st["warm"]["splats"] + st["cold"]["splats"] == 400
    s.check_integrity()
    got = s.get(list(range(701, 1500, 2)))
    assert all(g is not None for g in got)


def test_crash_loop_with_most_vectors_cold(tmp_path):
    """The SIGKILL crash test (m2m_gpu.crashtest) on a tiered store: after each kill the
    reopened store, its vectors memory-mapped as the cold tier, holds every acknowledged
    write and passes its integrity check."""
    from m2m_gpu.crashtest import TIERED, crash_loop

    totals = crash_loop(tmp_path / "crash", runs=15, seed=2, log=lambda *_: None,
                        tiers=TIERED)
    assert totals["runs"] == 15 and totals["acked"] > 100


# ---- the HRM2 index on the tier manager ----------------------------------------------------
def hrm2_pair(backend, budgets, n=1500, seed=4, only_tiered=False, **kw):
    """The same index twice, untiered and with ``budgets``; sizes small on lavapipe."""
    from m2m_gpu.hrm2 import IndexHRM2

    shape = {"n1": 5, "n2": 5} if backend.name == "vulkan" else {"n1": 8, "n2": 8}
    x = m2m_gpu.synthetic(n, D, seed=seed, kind="clustered", clusters=20, spread=0.3)
    q = m2m_gpu.synthetic(40, D, seed=seed, kind="clustered", clusters=20, spread=0.3,
                          part="queries")
    out = []
    for t in ((budgets,) if only_tiered else (None, budgets)):
        idx = IndexHRM2(D, backend=backend.name, tiers=t, **shape, **kw)
        idx.train(x[:1000])
        idx.add(x[:1000])
        idx.add_with_ids(x[1000:1100], np.arange(5000, 5100))  # the overflow region
        out.append(idx)
    return out[0], out[-1], x, q


def test_tiered_hrm2_returns_what_the_untiered_index_returns(backend):
    """Hot 150 rows, warm 300, the rest cold, 41-row fetch blocks: default, full and
    adaptive probing give the untiered index's ids and distances exactly, through adds,
    the overflow region, removals and a re-layout."""
    flat, tiered, x, q = hrm2_pair(backend, tiers(150, 300, block=41, rebalance_every=3))
    st = tiered.hrm2.tiers.stats()
    assert st["hot"]["splats"] == 150 and st["warm"]["splats"] == 300
    assert st["cold"]["splats"] == tiered.ntotal - 450

    def same(**probe):
        for idx in (flat, tiered):
            for name, v in probe.items():
                setattr(idx, name, v)
        for k in (1, 10, 70):
            Da, Ia = flat.search(q, k)
            Db, Ib = tiered.search(q, k)
            np.testing.assert_array_equal(Ia, Ib)
            np.testing.assert_array_equal(Da, Db)
            np.testing.assert_array_equal(flat.last_report.vectors,
                                          tiered.last_report.vectors)

    same()
    same(p2=10_000, p1=10_000)  # every cell: exact
    same(p1=None, p2=None, adaptive=True)
    for idx in (flat, tiered):
        idx.remove_ids(np.arange(0, 1000, 7))
        idx.add_with_ids(x[1100:1500], np.arange(6000, 6400))  # past the overflow limit
    assert tiered.hrm2.rebuilds == flat.hrm2.rebuilds >= 1
    same(adaptive=False)
    st = tiered.hrm2.tiers.stats()
    assert st["streamed"]["bytes"] > 0 and st["hot"]["splats"] <= 150
    assert sum(v["splats"] for v in st["moves"].values()) > 0  # placement passes ran
    assert tiered.hrm2.tiers.check() == []
    np.testing.assert_array_equal(tiered.hrm2.rows_at(np.arange(tiered.ntotal)),
                                  flat.hrm2.rows_at(np.arange(flat.ntotal)))


def test_tiered_hrm2_keeps_the_probed_cells_hot(backend):
    """Searches that keep probing the same cells make exactly those cells' rows hot (by
    the placement passes that run after searches, under the write lock)."""
    _, idx, x, q = hrm2_pair(backend, tiers(400, 0, rebalance_every=2), only_tiered=True,
                             p1=2, p2=2)
    h = idx.hrm2
    cells, _ = h.route(np.ascontiguousarray(q[:3]), 2, 2)
    C = h.fine.shape[0]
    u = np.unique(cells[cells >= 0])
    probed = np.concatenate([np.arange(*h.ranges[c]) for c in np.concatenate([u, u + C])])
    assert 0 < probed.size <= 400
    for _ in range(4):
        idx.search(q[:3], 5)
    assert (h.tiers.tier[probed] == HOT).all() and not idx.rebalance_due()
    assert h.tiers.counts() == [400, 0, idx.ntotal - 400]


def test_hrm2_out_of_memory_in_a_scan_shrinks_the_hot_tier_and_retries(backend, monkeypatch):
    """The scan runs out of device memory on the whole hot tier: the search caps the hot
    tier (halved) and retries with smaller fetched blocks, moving no row under the scan;
    the placement pass after it (write lock) demotes the rows over the cap."""
    from m2m_gpu.hrm2 import IndexHRM2

    x = m2m_gpu.synthetic(300, D, seed=5, kind="clustered", clusters=6, spread=0.3)
    idx = IndexHRM2(D, 3, 3, backend=backend.name)
    idx.train(x)
    idx.add(x)
    want = idx.search(x[:9], 5)
    real = backend.scan_cells

    def flaky(queries, rows, *a, **kw):
        if rows.shape[0] == 300:  # every row on the device: "no room" for the work
            raise MemoryError("simulated")
        return real(queries, rows, *a, **kw)

    monkeypatch.setattr(backend, "scan_cells", flaky)
    with pytest.warns(ResourceWarning):
        got = idx.search(x[:9], 5)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert idx.hrm2.tiers.counts()[HOT] == 150 and not idx.rebalance_due()
    got = idx.search(x[:9], 5)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_hrm2_store_with_budgets_equals_the_untiered_store(backend, tmp_path):
    """SplatStore(index="hrm2", tiers=...): the index's copy takes the budgets, the
    store's own copy stays cold; after every kind of write the results equal those of the
    same store without budgets, and again after reopening with budgets."""
    from m2m_gpu.store import state as store_mod

    x = m2m_gpu.synthetic(700, D, seed=11, kind="clustered", clusters=30, spread=0.3)
    q = m2m_gpu.synthetic(12, D, seed=11, kind="clustered", clusters=30, spread=0.3,
                          part="queries")
    opts = {"train_min": 300, "n1": 4, "n2": 4}
    budgets = tiers(120, 150, block=29)
    stores = [SplatStore(D, backend=backend.name, index="hrm2", index_options=opts,
                         merge_radius=0.05, **kw)
              for kw in ({}, {"tiers": budgets, "path": tmp_path / "t"})]
    flat, tiered = stores

    def check():
        for kw in ({"k": 7}, {"k": 7, "rank": "distance"}, {"k": 4, "filter": {"g": 1}}):
            a, b = flat.search(q, **kw), tiered.search(q, **kw)
            assert a.ids == b.ids, kw
            np.testing.assert_array_equal(a.log_scores, b.log_scores)
        tiered.check_integrity()

    for s in stores:
        s.add(x[:500], metadata=[{"g": i % 3} for i in range(500)])
    check()
    for s in stores:
        s.add(x[500:], ids=list(range(1000, 1200)))
        s.add(-x[:20], ids=list(range(20)))
        s.feedback(q[:6], relevant=[[i] for i in range(30, 36)],
                   irrelevant=[[i + 100] for i in range(6)])
        s.decay(50.0)
    check()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "COMPACT_MIN_FREE", 8)
        for s in stores:
            s.delete(list(range(200, 420)))
            s.consolidate()
    check()
    st = tiered.stats()
    own, idx = st["tiers"], st["index"]["tiers"]
    assert own["hot"]["splats"] == own["warm"]["splats"] == 0  # the store's copy: cold
    assert idx["hot"]["splats"] <= 120 and idx["warm"]["splats"] <= 150
    assert idx["cold"]["splats"] > 0 and idx["streamed"]["bytes"] > 0
    tiered.checkpoint()
    tiered.close()
    again = SplatStore.open(tmp_path / "t", backend=backend.name, tiers=budgets)
    a, b = flat.search(q, k=7), again.search(q, k=7)
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.log_scores, b.log_scores)
    assert again.stats()["index"]["tiers"]["hot"]["splats"] <= 120


def test_spill_file_is_compacted(tmp_path):
    """Rows demoted again and again leave dead rows in the append-only spill file; past
    twice the live rows it is rewritten, and every row still reads back."""
    be = get_backend("cpu")
    tm = TierManager(4, be, TierOptions(hot_bytes=2 * 16, warm_bytes=0, cold_dir=str(tmp_path)))
    tm.spill_compact_min = 8
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    tm.place(rows)
    for i in range(30):
        tm.promote([i % 10])
        tm.demote([i % 10], to=COLD)
    assert tm.spill_compactions >= 1
    assert tm.stats()["cold_file_rows"] < 3 * 10 + 8
    np.testing.assert_array_equal(tm.gather(np.arange(10)), rows)
    assert tm.check() == []
    tm.close()
    assert not list(tmp_path.iterdir())  # the spill file goes with the manager


def test_row_store_truncate_keeps_the_prefix(backend):
    rows = np.arange(7 * 300, dtype=np.float32).reshape(300, 7)
    st = backend.row_store(7)
    st.append(rows)
    for n in (299, 180, 180, 1, 0):
        st.truncate(n)
        np.testing.assert_array_equal(np.asarray(backend.to_host(st.view())).reshape(-1, 7),
                                      rows[:n])
    st.append(rows[:5])
    np.testing.assert_array_equal(np.asarray(backend.to_host(st.view())), rows[:5])


def test_touch_from_several_threads_loses_no_access():
    """Concurrent searches touch at once: every access and every tick counts. Each call
    touches K distinct slots, so the totals do not depend on the order the calls were
    made in: the access counts, the clock and the summed (decayed) hotness equal those of
    the same touches made in one thread; the arrays stay whole."""
    import sys
    import threading

    be = get_backend("cpu")
    n, k = 200, 9
    opts = TierOptions(hot_bytes=50 * 16, warm_bytes=0, rebalance_every=10**9, tau=64.0)
    rng = np.random.default_rng(12)

    def call(i):
        if i % 3 == 0:  # HRM2's path: a range of distinct slots
            return np.arange(k) + rng.integers(0, n - k), True
        s = rng.choice(n, k, replace=False)  # repeats and out-of-range slots are dropped
        return np.concatenate([s, s[:3], [-1, n, n + 7]]), False

    calls = [[call(i) for i in range(400)] for _ in range(4)]

    def manager():
        tm = TierManager(4, be, opts)
        tm.place(np.zeros((n, 4), np.float32))
        return tm

    one = manager()
    for part in calls:
        for slots, unique in part:
            one.touch(slots, unique=unique)
    many = manager()
    barrier = threading.Barrier(len(calls))

    def run(part):
        barrier.wait()
        for slots, unique in part:
            many.touch(slots, unique=unique)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=run, args=(part,)) for part in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    total = sum(len(p) for p in calls)
    assert many.clock == one.clock == total
    np.testing.assert_array_equal(many.access.count, one.access.count)
    assert many.access.count.sum() == k * total
    np.testing.assert_allclose(many.access.hotness().sum(), one.access.hotness().sum(),
                               rtol=1e-9)
    assert many.access.since_pass == one.access.since_pass and many.due() == one.due()
    assert many.access.last.max() == one.access.last.max() == total - 1
    assert many.check() == []


def test_slot_map_keeps_its_invariants_without_a_backend():
    """The slot map on its own (pure NumPy): rows stay in slot order in their stores
    through adds, removals, compaction and truncation; ``plan`` ranks as documented."""
    from m2m_gpu.tiers import SlotMap, WarmRows, plan

    stores = (WarmRows(1, None), WarmRows(1, None))  # row = its slot number, to check
    m = SlotMap(stores)

    def add(tier, slots):
        slots = np.asarray(slots, np.int64)
        stores[tier].append(slots[:, None].astype(np.float32))
        m.added(tier, slots)

    def rows_agree():
        for t in (HOT, WARM):
            np.testing.assert_array_equal(stores[t].view()[:, 0], m.slots(t))
        assert m.check() == []

    assert m.grow(10).tolist() == list(range(10))
    add(HOT, [5, 1, 3])  # out of order: the store is sorted by slot
    add(WARM, [9, 0])
    m.place_cold(np.array([2, 4, 6, 7, 8]), np.arange(5))
    assert m.counts() == [3, 2, 5] and m.slots(HOT).tolist() == [1, 3, 5]
    rows_agree()
    v = m.version
    m.remove(np.array([3, 9]))
    add(WARM, [3])
    m.place_cold(np.array([9]), np.array([5]))
    assert m.version > v and m.slots(WARM).tolist() == [0, 3] and m.tier[9] == COLD
    rows_agree()
    m.keep(np.array([0, 3, 5, 8, 9]))  # renumbered 0 .. 4
    assert m.slots(HOT).tolist() == [2] and m.slots(WARM).tolist() == [0, 1]
    assert m.counts() == [1, 2, 2]
    np.testing.assert_array_equal(stores[WARM].view()[:, 0], [0, 3])  # rows kept, by value
    assert m.check() == []
    m.truncate(2)
    assert m.counts() == [0, 2, 0] and m.check() == []
    want = plan(np.array([3.0, 1.0, 2.0, 5.0, 2.0]), np.array([1, 1, 1, 0, 1], bool), 1, 2)
    assert want.tolist() == [HOT, COLD, WARM, COLD, WARM]  # ties by slot, free slots last


def test_spill_files_of_a_killed_process_are_swept_by_the_next(tmp_path):
    """A tiered store without a path spills to <tmp>/m2m-gpu-<uid>/<pid>; a process killed
    with SIGKILL cannot delete its files, so the next process that spills removes the
    directories of processes that no longer run (the probe found them left forever)."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = ("import numpy as np, m2m_gpu, sys\n"
            "s = m2m_gpu.SplatStore(8, backend='cpu', metric='l2', tiers={'hot_bytes': 64, "
            "'warm_bytes': 64, 'block_bytes': 64})\n"
            "s.add(np.ones((50, 8), np.float32))\n"
            "print('spilled', flush=True); sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)
    assert child.stdout.readline().strip() == b"spilled"
    root = tmp_path / f"m2m-gpu-{os.getuid()}"
    left = root / str(child.pid)
    assert any(left.iterdir())  # its spill file
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert left.exists()  # a killed process cleans nothing up
    subprocess.run([sys.executable, "-c", code.replace("sys.stdin.read()", "")], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    assert not left.exists()
