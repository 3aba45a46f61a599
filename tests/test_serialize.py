"""write_index / read_index / serialize_index / deserialize_index and pickling: every index
kind comes back answering exactly as it did, a trained HRM2 index without k-means, and a
damaged file is a StoreFormatError."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu.errors import InvalidInputError, StoreFormatError

D = 12


def _data(n=1500, seed=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)).astype(np.float32), \
        rng.standard_normal((20, D)).astype(np.float32)


def _kinds(backend):
    x, _ = _data()
    out = {}
    for name, make in (("l2", lambda: m2m_gpu.IndexFlatL2(D, backend)),
                       ("ip", lambda: m2m_gpu.IndexFlat(D, m2m_gpu.METRIC_INNER_PRODUCT,
                                                        backend)),
                       ("cosine", lambda: m2m_gpu.IndexFlatCosine(D, backend)),
                       ("f16", lambda: m2m_gpu.IndexFlatL2(D, backend, dtype="float16"))):
        index = make()
        index.add(x)
        index.remove_ids(np.arange(0, 1500, 9))
        out[name] = index
    idmap = m2m_gpu.IndexIDMap(m2m_gpu.IndexFlatL2(D, backend))
    idmap.add_with_ids(x, np.arange(1500) * 3 + 11)
    idmap.remove_ids(np.arange(11, 2000, 7))
    out["idmap"] = idmap
    hrm2 = m2m_gpu.IndexHRM2(D, 4, 4, backend=backend, p2=3)
    hrm2.train(x)
    hrm2.add(x)
    hrm2.remove_ids(np.arange(0, 1500, 11))
    out["hrm2"] = hrm2
    out["hrm2-untrained"] = m2m_gpu.IndexHRM2(D, backend=backend)
    return out


def _same(a, b, q):
    assert type(a) is type(b) and a.ntotal == b.ntotal and a.metric_type == b.metric_type
    if not a.is_trained:
        assert not b.is_trained
        return
    Da, Ia = a.search(q, 7)
    Db, Ib = b.search(q, 7)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_array_equal(Da, Db)


@pytest.mark.parametrize("kind", ["l2", "ip", "cosine", "f16", "idmap", "hrm2",
                                  "hrm2-untrained"])
def test_every_index_round_trips_through_files_bytes_and_pickle(backend, tmp_path, kind):
    index = _kinds(backend.name)[kind]
    _, q = _data()
    path = tmp_path / "index.m2m"
    m2m_gpu.write_index(index, path)
    _same(index, m2m_gpu.read_index(path), q)
    buf = m2m_gpu.serialize_index(index)
    assert buf.dtype == np.uint8
    back = m2m_gpu.deserialize_index(buf)
    _same(index, back, q)
    assert back.backend.name == backend.name  # on the backend it was built on
    _same(index, pickle.loads(pickle.dumps(index)), q)
    assert m2m_gpu.deserialize_index(buf, backend="cpu").backend.name == "cpu"


def test_a_trained_hrm2_index_reloads_without_kmeans(monkeypatch):
    from m2m_gpu.hrm2 import train

    index = _kinds("cpu")["hrm2"]
    buf = m2m_gpu.serialize_index(index)

    def no_kmeans(*args, **kwargs):
        raise AssertionError("read_index ran k-means")

    monkeypatch.setattr(train, "train", no_kmeans)
    back = m2m_gpu.deserialize_index(buf)
    np.testing.assert_array_equal(back.hrm2.centroids.fine, index.hrm2.centroids.fine)
    _same(index, back, _data()[1])
    back.add(_data(10, seed=9)[0])  # and goes on: new ids after the largest held
    assert back.ntotal == index.ntotal + 10


def test_damaged_or_foreign_files_are_store_format_errors(tmp_path):
    buf = m2m_gpu.serialize_index(_kinds("cpu")["l2"]).tobytes()
    for bad in (buf[:-10], buf[:20], b"not an index at all", buf[:40] + b"\x00" + buf[41:]):
        with pytest.raises(StoreFormatError):
            m2m_gpu.deserialize_index(bad)
    with pytest.raises(InvalidInputError):
        m2m_gpu.serialize_index(object())


def _search_in_child(index, q, out):
    out.put(index.search(q, 5)[1])


def test_an_index_crosses_into_a_spawned_process():
    """multiprocessing with spawn pickles the index into a fresh interpreter (as joblib's
    loky and Ray do)."""
    index = _kinds("cpu")["idmap"]
    _, q = _data()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_search_in_child, args=(index, q, out))
    p.start()
    got = out.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0
    np.testing.assert_array_equal(got, index.search(q, 5)[1])


def _search_with(index, q):
    return index.search(q, 5)[1]


def test_indexes_go_through_joblib_workers():
    """joblib's loky workers are separate processes: the index is pickled to them."""
    joblib = pytest.importorskip("joblib")
    index = _kinds("cpu")["hrm2"]
    _, q = _data()
    got = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(_search_with)(index, q[i : i + 5]) for i in range(0, 20, 5))
    np.testing.assert_array_equal(np.concatenate(got), index.search(q, 5)[1])
