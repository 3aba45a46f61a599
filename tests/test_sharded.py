"""ShardedStore on a real local Ray instance (2 CPUs in CI): results equal one store's on
the same data (knn, splat ranking, filters, energy and its gradient, feedback batches),
ties by the global id rule, bad input that changes nothing, a shard killed in the middle
of a stream of acknowledged adds losing none, and a new driver process reopening every
shard."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import m2m_gpu  # noqa: E402
from m2m_gpu.distributed import ShardedStore, id_order, shard_of  # noqa: E402
from m2m_gpu.errors import InvalidInputError, UnknownIdError  # noqa: E402

from .serving import ROOT  # noqa: E402

DIM = 12


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pair(tmp_path, n=1500, shards=3, metric="cosine", seed=0, **options):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = [int(i) for i in rng.permutation(10 * n)[:n]]
    ids[::7] = [f"doc-{i}" for i in range(len(ids[::7]))]  # str ids too
    meta = [{"g": i % 5, "n": i} for i in range(n)]
    sharded = ShardedStore(DIM, shards=shards, path=tmp_path / "sh", metric=metric,
                           backend="cpu", **options)
    one = m2m_gpu.SplatStore(DIM, metric=metric, backend="cpu", **options)
    for a in range(0, n, 500):
        sharded.add(X[a:a + 500], ids=ids[a:a + 500], metadata=meta[a:a + 500])
        one.add(X[a:a + 500], ids=ids[a:a + 500], metadata=meta[a:a + 500])
    return sharded, one, X, ids, rng


def same_search(a, b):
    assert a.ids == b.ids
    np.testing.assert_allclose(a.log_scores, b.log_scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-6, atol=1e-6)
    assert a.metadata == b.metadata


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sharded_results_equal_one_store(tmp_path, metric):
    sh, one, X, ids, rng = pair(tmp_path, metric=metric)
    try:
        assert len(sh) == len(one) == len(X) and sorted(sh.ids(), key=id_order) == sh.ids()
        assert sorted(sh.ids(), key=id_order) == sorted(one.ids(), key=id_order)
        Q = rng.standard_normal((6, DIM)).astype(np.float32)
        for filt in (None, {"g": {"$in": [1, 3]}}, {"n": {"$lt": 40}}):
            same_search(sh.search(Q, k=17, filter=filt, rank="distance"),
                        one.search(Q, k=17, filter=filt, rank="distance"))
        # a feedback batch whose events touch several shards, some splats twice
        rel = [[ids[1], ids[2]], [ids[3]], [ids[1], ids[40]], []]
        irr = [[ids[5]], [ids[1], ids[6]], [], [ids[7]]]
        assert {shard_of(i, 3) for row in rel + irr for i in row} == {0, 1, 2}
        assert sh.feedback(Q[:4], relevant=rel, irrelevant=irr) == \
            one.feedback(Q[:4], relevant=rel, irrelevant=irr)
        sh.feedback(Q[4], relevant=[ids[9]])
        one.feedback(Q[4], relevant=[ids[9]])
        touched = [ids[i] for i in (1, 2, 3, 5, 6, 7, 9, 40, 100)]
        for x, y in zip(sh.get(touched), one.get(touched), strict=True):
            assert x["alpha"] == pytest.approx(y["alpha"], rel=1e-6)
            assert x["kappa"] == pytest.approx(y["kappa"], rel=1e-6)
            np.testing.assert_allclose(x["vector"], y["vector"], rtol=1e-6, atol=1e-7)
        same_search(sh.search(Q, k=9), one.search(Q, k=9))  # splat ranking, after learning
        same_search(sh.search(Q, k=9, filter={"g": 2}), one.search(Q, k=9, filter={"g": 2}))
        for near in (Q, X[:4], X[:4] + 1e-3):  # far, on and next to stored splats
            a, b = sh.energy(near, grad=True), one.energy(near, grad=True)
            np.testing.assert_allclose(a.energy, b.energy, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.gradient, b.gradient, rtol=1e-4, atol=1e-4)
        assert sh.delete([ids[0], ids[1], "no-such"]) == one.delete([ids[0], ids[1],
                                                                     "no-such"]) == 2
        assert sh.delete(filter={"g": 4}) == one.delete(filter={"g": 4})
        assert sh.get([ids[0], ids[2]])[0] is None and ids[2] in sh
        rep = sh.decay(5.0)
        one.decay(5.0)
        assert rep["factor"] == pytest.approx(1.0) or rep["elapsed"] == 5.0
        same_search(sh.search(Q, k=5), one.search(Q, k=5))
        st = sh.stats()
        assert st["count"] == len(one) and st["shards"] == 3 and st["restarts"] == 0
        assert sum(p["count"] for p in st["per_shard"]) == len(one)
        sh.checkpoint()
    finally:
        sh.close()


def test_empty_shards_energy_and_ties_by_id(tmp_path):
    sh = ShardedStore(DIM, shards=4, path=tmp_path / "t", metric="l2", backend="cpu")
    try:
        q = np.ones((1, DIM), np.float32)
        assert np.isinf(sh.energy(q).energy[0]) and sh.search(q, k=3).ids == [[]]
        v = np.zeros((6, DIM), np.float32)  # six equal vectors: every score ties
        ids = ["b", 7, "a", 3, 12, "c"]
        sh.add(v, ids=ids)
        assert len({shard_of(i, 4) for i in ids}) > 1
        assert sh.search(q, k=4).ids == [[3, 7, 12, "a"]]  # integers, then strings
        assert sh.search(q, k=6, rank="distance").ids == [[3, 7, 12, "a", "b", "c"]]
        one = m2m_gpu.SplatStore(DIM, metric="l2", backend="cpu")
        one.add(v, ids=ids)
        np.testing.assert_allclose(sh.energy(q).energy, one.energy(q).energy, rtol=1e-6)
    finally:
        sh.close()


def test_bad_input_changes_nothing(tmp_path):
    sh, one, X, ids, rng = pair(tmp_path, n=200, shards=2)
    try:
        before = sh.get(ids[:20])
        for bad in (dict(vectors=X[:2, :5], ids=["x", "y"]),
                    dict(vectors=np.full((2, DIM), np.nan), ids=["x", "y"]),
                    dict(vectors=np.zeros((2, DIM)), ids=["x", "y"]),
                    dict(vectors=X[:2], ids=["x", "x"]),
                    dict(vectors=X[:2], ids=["x", True]),
                    dict(vectors=X[:2], ids=["x", "y"], metadata=[{}, {"f": object()}])):
            with pytest.raises(InvalidInputError):
                sh.add(**bad)
        with pytest.raises(UnknownIdError):
            sh.feedback(X[0], relevant=[ids[0]], irrelevant=["no-such-id"])
        a = next(i for i in ids if isinstance(i, int) and shard_of(i, 2) == 0)
        b = next(i for i in ids if shard_of(i, 2) == 1)
        with pytest.raises(InvalidInputError, match="both relevant and irrelevant"):
            sh.feedback(X[0], relevant=[a, b], irrelevant=[b])  # nothing may change on a's
        assert sh.get([np.int64(a)])[0]["alpha"] == 1.0 and 1.5 not in sh
        with pytest.raises(InvalidInputError):
            sh.search(X[:1], k=3, rank="nope")
        with pytest.raises(InvalidInputError, match="path"):
            ShardedStore(DIM, shards=2)
        with pytest.raises(InvalidInputError, match="already"):
            ShardedStore(DIM, shards=2, path=tmp_path / "sh")
        assert len(sh) == 200 and "x" not in sh
        for x, y in zip(sh.get(ids[:20]), before, strict=True):
            assert x["metadata"] == y["metadata"] and x["alpha"] == y["alpha"]
            np.testing.assert_array_equal(x["vector"], y["vector"])
    finally:
        sh.close()


def test_a_killed_shard_loses_no_acknowledged_add(tmp_path):
    sh = ShardedStore(DIM, shards=2, path=tmp_path / "k", backend="cpu")
    acked, stop, errors = [], threading.Event(), []
    rng = np.random.default_rng(3)

    def writer():
        n = 0
        while not stop.is_set():
            batch = [f"p{n + j}" for j in range(20)]
            try:
                sh.add(rng.standard_normal((20, DIM)).astype(np.float32), ids=batch)
            except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
                errors.append(exc)
                return
            acked.extend(batch)
            n += 20

    t = threading.Thread(target=writer)
    t.start()
    try:
        for s in (0, 1, 0):
            time.sleep(0.6)
            sh.kill_shard(s)
        time.sleep(0.6)
        stop.set()
        t.join(120)
        assert not errors, errors
        assert len(acked) > 100
        assert all(sh._present(acked)), "an acknowledged add is missing"
        assert len(sh) == len(acked)
        assert sh.stats()["restarts"] == 3
    finally:
        stop.set()
        sh.close()


def test_a_new_driver_reopens_every_shard(tmp_path):
    sh, one, X, ids, rng = pair(tmp_path, n=600, shards=3)
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    sh.feedback(Q[0], relevant=[ids[4]])
    one.feedback(Q[0], relevant=[ids[4]])
    want = one.search(Q, k=8)
    sh.close()
    np.save(tmp_path / "q.npy", Q)
    script = f"""
import json, sys
import numpy as np
sys.path.insert(0, {str(ROOT)!r})
from m2m_gpu.distributed import ShardedStore
s = ShardedStore.open({str(tmp_path / "sh")!r}, backend="cpu")
r = s.search(np.load({str(tmp_path / "q.npy")!r}), k=8)
print(json.dumps({{"n": len(s), "ids": r.ids, "log": r.log_scores.tolist()}}))
s.close()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] == 600 and got["ids"] == want.ids
    np.testing.assert_allclose(got["log"], want.log_scores, rtol=1e-6, atol=1e-6)


def test_hrm2_per_shard_for_approximate_search(tmp_path):
    """index="hrm2" reaches every shard; approximate answers keep most of the exact
    top-10 (recall against exact=True), and exact=True equals one store's exact search."""
    X = m2m_gpu.synthetic(4000, DIM, seed=5, kind="clustered", clusters=16)
    Q = X[::97] + 0.01
    sh = ShardedStore(DIM, shards=2, path=tmp_path / "h", backend="cpu", index="hrm2",
                      index_options={"train_min": 1000})
    try:
        sh.add(X, ids=list(range(len(X))))
        approx, exact = sh.search(Q, k=10, rank="distance"), sh.search(Q, k=10,
                                                                       rank="distance",
                                                                       exact=True)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.ids, exact.ids,
                                                                     strict=True)])
        assert recall >= 0.8, recall
        one = m2m_gpu.SplatStore(DIM, backend="cpu")
        one.add(X, ids=list(range(len(X))))
        assert exact.ids == one.search(Q, k=10, rank="distance").ids
        assert all(s["count"] > 1000 for s in sh.stats()["per_shard"])  # both trained
    finally:
        sh.close()


def test_a_shard_that_stays_dead_gives_a_clear_error(tmp_path, monkeypatch):
    """max_restarts=0: feedback (not idempotent) is not resent; a read waits for the shard
    (RETRY_SECONDS) and then names it."""
    from m2m_gpu.distributed import ShardUnavailableError, sharded

    sh = ShardedStore(DIM, shards=2, path=tmp_path / "d", backend="cpu", max_restarts=0)
    try:
        ids = [i for i in range(40)]
        sh.add(np.random.default_rng(0).standard_normal((40, DIM)), ids=ids)
        dead = 0
        victim = next(i for i in ids if shard_of(i, 2) == dead)
        monkeypatch.setattr(sharded, "RETRY_SECONDS", 1.0)
        sh.kill_shard(dead)
        # "not resent", or, if the death is seen first by feedback's check of the ids,
        # "did not come back": either way the shard is named and nothing is retried forever
        with pytest.raises(ShardUnavailableError, match=f"shard {dead} "):
            sh.feedback(np.ones(DIM), relevant=[victim])
        with pytest.raises(ShardUnavailableError, match=f"shard {dead} did not come back"):
            sh.get([victim])
    finally:
        import ray

        for a in sh._actors:
            ray.kill(a, no_restart=True)
        sh._actors = []
