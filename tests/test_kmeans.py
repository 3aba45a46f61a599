"""k-means kernels (assign, kmeans_update) and the driver, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError
from m2m_gpu import reference as ref
from m2m_gpu.backends import vulkan as vulkan_backend
from m2m_gpu.kmeans import assign, kmeans
from m2m_gpu.synthetic import STREAM_CENTERS, normals

from .tolerances import tolerance


@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (97, 3, 5), (1000, 67, 40), (300, 130, 300)])
def test_kmeans_sums_match_reference(backend, rng, n, d, k):
    x = rng.standard_normal((n, d)).astype(np.float32)
    a = rng.integers(0, k, n)
    a[: min(n, 3)] = 0  # a crowded centroid; others may be empty
    sums, counts = backend.kmeans_sums(backend.from_host(x), a, k)
    rs, rc = ref.kmeans_update(x, a, k)
    np.testing.assert_array_equal(counts, rc)
    np.testing.assert_allclose(sums, rs, *tolerance(backend.name, what="kmeans_sums"))


@pytest.mark.parametrize("jit", [True, False])
def test_cpu_kmeans_sums_compiled_and_numpy(rng, jit):
    """The cpu backend's two ways (the compiled pass, sorted runs in NumPy) both give the
    reference; out-of-range assignments are refused by the compiled one."""
    from m2m_gpu.backends import _jit, get_backend

    be = get_backend("cpu")
    if jit and not _jit.available():
        pytest.skip("Numba is not installed")
    x = rng.standard_normal((5003, 33)).astype(np.float32)
    a = rng.integers(0, 70, x.shape[0])
    saved, be.jit = be.jit, jit
    try:
        sums, counts = be.kmeans_sums(x, a, 71)  # centroid 70 is empty
    finally:
        be.jit = saved
    rs, rc = ref.kmeans_update(x, a, 71)
    np.testing.assert_array_equal(counts, rc)
    np.testing.assert_allclose(sums, rs, *tolerance("cpu", what="kmeans_sums"))
    if jit:
        with pytest.raises(ValueError, match="outside"):
            _jit.kmeans_sums(x[:2], np.array([0, 71]), 71)


def test_kmeans_sums_across_chunks_and_strided_input(backend, rng, monkeypatch):
    monkeypatch.setattr(vulkan_backend, "CHUNK_BYTES", 8192)  # many chunks per centroid
    big = rng.standard_normal((4000, 20)).astype(np.float32)
    x = np.ascontiguousarray(big[::2, ::2])  # strided data staged the way the driver does
    a = (np.arange(2000) * 7) % 13
    sums, counts = backend.kmeans_sums(backend.from_host(x), a, 16)
    rs, rc = ref.kmeans_update(big[::2, ::2], a, 16)
    np.testing.assert_array_equal(counts, rc)
    assert (counts[13:] == 0).all() and (sums[13:] == 0).all()
    np.testing.assert_allclose(sums, rs, *tolerance(backend.name, what="kmeans_sums"))


def test_assign_matches_reference(backend, rng):
    x = rng.standard_normal((500, 9)).astype(np.float32)
    c = rng.standard_normal((17, 9)).astype(np.float32)
    D, I = assign(x, c, backend=backend.name)
    Dr, Ir = ref.kmeans_assign(x, c)
    np.testing.assert_allclose(D, Dr, *tolerance(backend.name, what="knn"))
    # a different index only where two centroids are tied for that row
    full = ref.pairwise(x, c, "l2")
    np.testing.assert_allclose(full[np.arange(500), I], Dr, rtol=1e-5, atol=1e-5)


def test_kmeans_recovers_separated_clusters_and_is_deterministic(backend):
    x = m2m_gpu.synthetic(3000, 16, seed=5, kind="clustered", clusters=12, spread=0.05)
    r1 = kmeans(x, 12, seed=3, backend=backend.name)
    r2 = kmeans(x, 12, seed=3, backend=backend.name)
    np.testing.assert_array_equal(r1.centroids, r2.centroids)  # reproducible
    centers = normals(0, 12, 16, 5, STREAM_CENTERS)
    # every true centre has a centroid within a few spreads, and inertia ~ n d spread^2
    dist = ref.pairwise(centers, r1.centroids, "l2").min(axis=1)
    assert dist.max() < 16 * 0.05**2 * 4
    assert r1.inertia < 3000 * 16 * 0.05**2 * 1.5
    assert r1.iterations >= 1 and r1.trained_on == 3000


def test_kmeans_reseeds_empty_clusters(backend, rng):
    x = rng.standard_normal((200, 4)).astype(np.float32)
    init = np.repeat(x[:1], 5, axis=0)  # identical centroids: four start empty
    r = kmeans(x, 5, init=init, iters=5, backend=backend.name)
    assert r.reseeded >= 4
    assert len({tuple(c) for c in r.centroids}) == 5
    _, I = assign(x, r.centroids, backend=backend.name)
    assert np.bincount(I, minlength=5).min() > 0


def test_kmeans_trains_on_a_sample(backend, rng):
    x = m2m_gpu.synthetic(5000, 8, seed=2, kind="clustered", clusters=4, spread=0.1)
    r = kmeans(x, 4, max_points_per_centroid=100, backend=backend.name)
    assert r.trained_on == 400
    _, I = assign(x, r.centroids, backend=backend.name)
    assert sorted(np.bincount(I, minlength=4) > 500) == [True] * 4


def test_kmeans_bad_input():
    x = np.ones((10, 3), np.float32)
    for bad in (0, 11, 2.5, True):
        with pytest.raises(InvalidInputError):
            kmeans(x, bad)
    with pytest.raises(InvalidInputError):
        kmeans(x, 2, init=np.ones((3, 3), np.float32))
    with pytest.raises(InvalidInputError):
        kmeans(x, 2, init="random")
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    with pytest.raises(InvalidInputError):
        kmeans(bad_x, 2)
