"""FAISS-shaped flat indexes on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError
from m2m_gpu.index import METRIC_INNER_PRODUCT, METRIC_L2

from .knn_check import assert_knn_matches
from .tolerances import tolerance

CLASSES = [(m2m_gpu.IndexFlatL2, "l2"), (m2m_gpu.IndexFlatIP, "ip"),
           (m2m_gpu.IndexFlatCosine, "cosine")]


@pytest.mark.parametrize("cls,metric", CLASSES)
def test_index_add_search_matches_reference(backend, rng, cls, metric):
    X = rng.standard_normal((1037, 19)).astype(np.float32)
    Q = rng.standard_normal((11, 19)).astype(np.float32)
    index = cls(19, backend=backend.name)
    assert index.d == 19 and index.ntotal == 0 and index.is_trained
    for part in np.array_split(X, 5):  # several adds grow the device buffers
        index.add(part)
    assert index.ntotal == 1037 and len(index) == 1037
    for k in (1, 10, 1037, 1100):
        D, I = index.search(Q, k)
        assert_knn_matches(D, I, Q, X, k, metric, *tolerance(backend.name, np.float32))


def test_index_metric_type_matches_faiss_constants(backend):
    assert m2m_gpu.IndexFlatL2(4, backend=backend.name).metric_type == METRIC_L2 == 1
    assert m2m_gpu.IndexFlatIP(4, backend=backend.name).metric_type == METRIC_INNER_PRODUCT == 0


def test_index_add_with_ids_and_remove_ids(backend, rng):
    X = rng.standard_normal((300, 8)).astype(np.float32)
    Q = rng.standard_normal((4, 8)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64) * 10 + 7
    index = m2m_gpu.IndexIDMap(m2m_gpu.IndexFlatL2(8, backend=backend.name))
    index.add_with_ids(X, ids)
    D, I = index.search(Q, 5)
    Dr, Ir = m2m_gpu.knn(Q, X, 5, backend="cpu")
    np.testing.assert_array_equal(I, ids[Ir])
    removed = index.remove_ids(ids[::3].tolist() + [999999])  # unknown ids are ignored
    assert removed == 100 and index.ntotal == 200
    keep = np.setdiff1d(np.arange(300), np.arange(0, 300, 3))
    D, I = index.search(Q, 5)
    Dr, Ir = m2m_gpu.knn(Q, X[keep], 5, backend="cpu")
    np.testing.assert_array_equal(I, ids[keep][Ir])
    np.testing.assert_allclose(D, Dr, rtol=1e-5, atol=1e-4)
    assert index.remove_ids([]) == 0


def test_index_reset_and_empty_search(backend, rng):
    index = m2m_gpu.IndexFlatL2(3, backend=backend.name)
    D, I = index.search(rng.standard_normal((2, 3)), 4)
    assert (I == -1).all() and np.isinf(D).all()
    index.add(rng.standard_normal((10, 3)))
    index.reset()
    assert index.ntotal == 0
    index.add(rng.standard_normal((5, 3)))
    D, I = index.search(rng.standard_normal((2, 3)), 2)
    assert ((I >= 0) & (I < 5)).all()


def test_index_bad_input_leaves_it_unchanged(backend, rng):
    X = rng.standard_normal((50, 6)).astype(np.float32)
    Q = rng.standard_normal((3, 6)).astype(np.float32)
    index = m2m_gpu.IndexFlatCosine(6, backend=backend.name)
    index.add(X)
    before = index.search(Q, 5)
    bad_rows = [X[:, :5], np.where(np.arange(6) == 2, np.nan, X[:4]), np.zeros((2, 6))]
    for bad in bad_rows:
        with pytest.raises(InvalidInputError):
            index.add(bad)
    with pytest.raises(InvalidInputError, match="IndexIDMap"):
        index.add_with_ids(X[:3], [1, 2, 3])  # a flat index numbers by position
    with pytest.raises(InvalidInputError, match="k must be"):
        index.search(Q, 0)
    assert index.ntotal == 50
    after = index.search(Q, 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def test_index_rejects_bad_dimension():
    for d in (0, -3, 2.5, "8"):
        with pytest.raises(InvalidInputError, match="dimension"):
            m2m_gpu.IndexFlatL2(d)


def test_index_is_a_drop_in_for_faiss_code(backend, rng):
    """Code written for faiss.IndexFlatL2 gives the same neighbours after the import swap."""
    faiss = pytest.importorskip("faiss")
    X = rng.standard_normal((2000, 32)).astype(np.float32)
    Q = rng.standard_normal((20, 32)).astype(np.float32)

    def user_code(lib, **kw):
        index = lib.IndexFlatL2(32, **kw)
        index.add(X)
        return index.ntotal, index.search(Q, 10)

    n_f, (Df, If) = user_code(faiss)
    n_m, (Dm, Im) = user_code(m2m_gpu, backend=backend.name)
    assert n_f == n_m
    np.testing.assert_allclose(Dm, Df, rtol=1e-4, atol=1e-3)
    assert (Im == If).mean() > 0.99  # ids may differ only among (near-)ties


@pytest.mark.parametrize("cls,metric", CLASSES)
@pytest.mark.parametrize("d", [1, 19, 64])
def test_float16_storage_matches_reference_over_stored_vectors(backend, rng, small_tiles,
                                                               cls, metric, d):
    """dtype='float16': rows are rounded once on add and searched in float32, so results are
    exact search over the rounded rows. Awkward sizes: d = 1 (rounding makes ties), odd
    row counts (vulkan packs two halves per word and pads odd chunks), several adds (the
    last device chunk is topped up), several chunks and tiles (small_tiles), non-contiguous
    input, removals."""
    X = rng.standard_normal((2501, 2 * d)).astype(np.float32)[:, ::2]  # non-contiguous
    Q = rng.standard_normal((13, d)).astype(np.float32)
    index = cls(d, backend=backend.name, dtype="float16")
    assert index.dtype == np.float16 and "float16" in repr(index)
    for part in np.array_split(X, [1, 1000, 1777]):
        index.add(part)
    stored = index.reconstruct_n()
    assert stored.dtype == np.float32 and stored.shape == (2501, d)
    want = X if metric != "cosine" else X / np.linalg.norm(X, axis=1, keepdims=True)
    if metric == "cosine":  # normalised in float32 first: one half ulp (2^-11) apart at most
        np.testing.assert_allclose(stored, want, rtol=2.0**-11, atol=2.0**-24)
    else:
        np.testing.assert_array_equal(stored, want.astype(np.float16).astype(np.float32))
    q = Q if metric != "cosine" else Q / np.linalg.norm(Q, axis=1, keepdims=True)
    kernel_metric = "ip" if metric == "cosine" else metric
    for k in (1, 10, 2501, 2600):
        D, I = index.search(Q, k)
        assert_knn_matches(D, I, q, stored, k, kernel_metric, *tolerance(backend.name))
    keep = np.setdiff1d(np.arange(2501), np.arange(0, 2501, 7))
    assert index.remove_ids(np.arange(0, 2501, 7)) == 2501 - keep.size
    np.testing.assert_array_equal(index.reconstruct_n(), stored[keep])
    D, I = index.search(Q, 10)  # ids are positions: renumbered, as in FAISS
    assert_knn_matches(D, I, q, stored[keep], 10, kernel_metric, *tolerance(backend.name))


def test_float16_storage_halves_memory_and_refuses_what_it_cannot_hold(backend, rng):
    X = rng.standard_normal((300, 16)).astype(np.float32)
    half = m2m_gpu.IndexFlatL2(16, backend=backend.name, dtype=np.float16)
    full = m2m_gpu.IndexFlatL2(16, backend=backend.name)
    half.add(X)
    full.add(X)
    assert half._rows.nbytes * 2 == full._rows.nbytes
    before = half.search(X[:3], 4)
    big = X[:5].copy()
    big[3, 2] = 70000.0  # finite in float32, inf in float16
    with pytest.raises(InvalidInputError, match="row 3 has values beyond float16"):
        half.add(big)
    full.add(big)  # float32 storage holds it
    assert half.ntotal == 300
    after = half.search(X[:3], 4)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    for bad in ("int8", "bfloat16", np.float64, None):
        with pytest.raises(InvalidInputError, match="storage dtype"):
            m2m_gpu.IndexFlatL2(16, backend=backend.name, dtype=bad)


def test_hrm2_ids_are_never_handed_out_twice_after_removals(backend, rng):
    """IndexHRM2 keeps ids (as FAISS's IVF does) and numbers add()s from one past the
    largest id ever held, so removing and adding never gives two vectors one id; ids given
    by the caller move the counter too; uint64 ids beyond int64 are refused. (A plain flat
    index numbers by position and renumbers, as FAISS's does: see the next test.)"""
    X = rng.standard_normal((300, 8)).astype(np.float32)
    index = m2m_gpu.IndexHRM2(8, backend=backend.name)
    index.train(X)
    index.add(X[:10])
    assert index.remove_ids(np.array([2, 3])) == 2
    index.add(X[10:12])
    index.add_with_ids(X[12:13], np.array([100]))
    index.add(X[13:14])
    rows = [0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    want = [0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 100, 101]
    got = [int(i) for i in index.search(X[rows], 1)[1][:, 0]]
    assert got == want
    with pytest.raises(InvalidInputError, match="int64"):
        index.add_with_ids(X[:1], np.array([2**63], dtype=np.uint64))
    assert index.ntotal == 12  # the refused add changed nothing
    index.reset()
    index.add(X[:1])
    assert int(index.search(X[:1], 1)[1][0, 0]) == 0


@pytest.mark.parametrize("kind", ["knn", "flat", "hrm2", "splat"])
def test_a_k_whose_results_cannot_be_held_is_refused_before_allocating(kind):
    """k beyond the stored vectors only pads, so a k whose (m, k) results would take tens
    of GiB is refused with a message saying so, before anything is allocated (it used to
    end in a MemoryError, or the machine swapping)."""
    X = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    k = 2**33
    with pytest.raises(InvalidInputError, match="results"):
        if kind == "knn":
            m2m_gpu.knn(X[:4], X, k, backend="cpu")
        elif kind == "splat":
            m2m_gpu.splat_topk(X[:4], X, 1.0, 1.0, k, backend="cpu")
        else:
            index = m2m_gpu.IndexFlatL2(4) if kind == "flat" else m2m_gpu.IndexHRM2(4)
            if kind == "hrm2":
                index.train(X)
            index.add(X)
            index.search(X[:4], k)
    assert m2m_gpu.knn(X[:4], X, 60, backend="cpu")[1].shape == (4, 60)  # padding still works


def test_flat_remove_ids_renumbers_like_faiss_and_idmap_keeps_ids(backend, rng):
    X = rng.standard_normal((10, 8)).astype(np.float32)
    flat = m2m_gpu.IndexFlatL2(8, backend=backend.name)
    flat.add(X)
    assert flat.remove_ids(np.array([2, 3])) == 2
    I = flat.search(X[[0, 4, 9]], 1)[1][:, 0]
    assert I.tolist() == [0, 2, 7]  # positions moved up
    flat.add(X[:1])
    assert flat.ntotal == 9 and int(flat.search(X[:1], 2)[1][0, 1]) in (0, 8)
    mapped = m2m_gpu.IndexIDMap(m2m_gpu.IndexFlatL2(8, backend=backend.name))
    mapped.add_with_ids(X, np.arange(10) * 10)
    assert mapped.remove_ids(np.array([20, 30, 999])) == 2
    assert mapped.search(X[[0, 4, 9]], 1)[1][:, 0].tolist() == [0, 40, 90]
    np.testing.assert_array_equal(mapped.reconstruct(40), flat.reconstruct(2))
    with pytest.raises(InvalidInputError, match="-1"):
        mapped.add_with_ids(X[:1], np.array([-1]))
    with pytest.raises(InvalidInputError, match="add_with_ids"):
        mapped.add(X[:1])
