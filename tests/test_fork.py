"""Fork safety: a process that used a backend can fork, and the child can create and
search indexes and stores (the cpu backend's thread pool is rebuilt in the child, device
backends are made anew there, and the compiled cpu loops run on that pool rather than on
an OpenMP runtime that aborts forked children). On cpu the child can also search the
parent's objects; device memory (a CUDA context, a Vulkan device) does not survive fork,
so on cuda and vulkan the child makes its own. A hang is a failure: every child has a
deadline."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import reference as ref

DEADLINE_S = 120


def _data():
    rng = np.random.default_rng(8)
    return rng.standard_normal((6000, 24)).astype(np.float32)


def _child_searches(name, index, hrm2, want, q):
    X = _data()
    if index is None:  # device backend: the parent's device objects stay in the parent
        index = m2m_gpu.IndexFlatL2(24, backend=name)
        index.add(X)
        hrm2 = m2m_gpu.IndexHRM2(24, backend=name)
        hrm2.train(X)
        hrm2.add(X)
    got = index.search(X[:40], 5)[1]
    fresh = m2m_gpu.IndexFlatL2(24, backend=name)
    fresh.add(X)
    again = fresh.search(X[:3], 5)[1]  # few queries: the cpu streaming path (its pool)
    hrm2_hits = float((hrm2.search(X[:40], 5)[1][:, 0] == np.arange(40)).mean())
    store = m2m_gpu.SplatStore(24, backend=name)
    ids = store.add(X[:500])
    hit = store.search(X[:2], k=1).ids
    q.put((np.array_equal(got, want), np.array_equal(again, want[:3]), hrm2_hits,
           [h[0] for h in hit] == list(ids[:2])))


def test_a_forked_child_can_search_and_build(backend):
    if backend.name == "cuda":
        pytest.skip("CUDA cannot be used in a child forked after the parent initialised it "
                    "(a CUDA limit); use the spawn start method with cuda")
    X = _data()
    index = m2m_gpu.IndexFlatL2(24, backend=backend.name)
    index.add(X)
    want = index.search(X[:40], 5)[1]  # the parent has used the backend (and its pool)
    np.testing.assert_array_equal(want, ref.knn(X[:40], X, 5)[1])
    hrm2 = m2m_gpu.IndexHRM2(24, backend=backend.name)
    hrm2.train(X)
    hrm2.add(X)
    hrm2.search(X[:40], 5)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    host = backend.name == "cpu"  # the one backend whose memory survives fork
    args = (backend.name, index if host else None, hrm2 if host else None, want, q)
    p = ctx.Process(target=_child_searches, args=args)
    p.start()
    p.join(DEADLINE_S)
    if p.is_alive():
        p.kill()
        pytest.fail(f"the forked child hung (no answer within {DEADLINE_S} s)")
    assert p.exitcode == 0
    same, fresh_ok, hrm2_hits, store_ok = q.get(timeout=10)
    assert same and fresh_ok and store_ok
    assert hrm2_hits == 1.0


class _Searches:
    """A dataset whose items are searches, as a user's DataLoader dataset would be."""

    def __init__(self):
        self.X = _data()
        self.index = m2m_gpu.IndexFlatL2(24, backend="cpu")
        self.index.add(self.X)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.index.search(self.X[i : i + 1], 3)[1][0]


def test_pytorch_dataloader_workers_can_search():
    torch = pytest.importorskip("torch")
    data = _Searches()
    data[0]  # the parent uses the cpu backend before the workers fork
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2,
                                         multiprocessing_context="fork", timeout=DEADLINE_S)
    got = torch.cat([b for b in loader]).numpy()
    np.testing.assert_array_equal(got[:, 0], np.arange(8))


def _child_searches_tiered(store, q):
    q.put(store.search(np.ones((2, 8), np.float32), k=3).ids)


def test_a_fork_while_another_thread_holds_an_internal_lock_does_not_hang_the_child():
    """The parent forks while one of its threads is inside a search (holding, say, the
    tiers' access-count lock). That thread does not exist in the child, so every internal
    lock is made anew there (locking.ForkSafeLock); the child's first search used to wait
    for it forever."""
    import threading

    store = m2m_gpu.SplatStore(8, backend="cpu", metric="l2",
                               tiers={"hot_bytes": 64 * 8, "warm_bytes": 64 * 8})
    store.add(np.random.default_rng(4).standard_normal((200, 8)).astype(np.float32))
    want = store.search(np.ones((2, 8), np.float32), k=3).ids
    held, release = threading.Event(), threading.Event()
    access = store._st.arrays.rows.access  # its lock is taken by every search's touch

    def hold():
        with access._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_searches_tiered, args=(store, q))
        p.start()
        p.join(DEADLINE_S)
        if p.is_alive():
            p.kill()
            pytest.fail("the forked child hung on a lock its parent's thread held")
        assert p.exitcode == 0 and q.get(timeout=10) == want
    finally:
        release.set()
        holder.join()
