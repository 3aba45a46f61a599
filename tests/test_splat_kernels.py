"""Splat kernels (SPEC section 2): one test body per case, run on every backend against the
NumPy reference in m2m_gpu.reference."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import InvalidInputError, UnknownMetricError
from m2m_gpu import reference as ref
from m2m_gpu import synthetic as syn_fn
from m2m_gpu.backends import vulkan as vulkan_backend
from m2m_gpu.backends.base import PARAM_WIDTH, HebbianPlan, HebbianRates
from m2m_gpu.synthetic import assignments, normals, reference, words

from .tolerances import tolerance

# (m, n, d, k): 1s, primes, not multiples of the workgroup sizes, k = n, k > n, large d
SHAPES = [(1, 1, 1, 1), (3, 97, 5, 7), (5, 101, 2, 150), (17, 257, 31, 257), (6, 1031, 67, 10),
          (2, 61, 1100, 4)]
METRICS = ["l2", "cosine"]


def splat_data(rng, m, n, d):
    Q = rng.standard_normal((m, d)).astype(np.float32)
    X = rng.standard_normal((n, d)).astype(np.float32)
    alpha = rng.uniform(0.05, 5.0, n).astype(np.float32)
    kappa = rng.uniform(0.5, 3.0, n).astype(np.float32)
    return Q, X, alpha, kappa


def assert_splat_matches(backend, Q, X, alpha, kappa, k, metric, L, I, D):
    """Tie-tolerant: each returned id's reference log-score and distance equal the returned
    ones, the log-scores equal the reference's k best (sorted), and ids are distinct."""
    rt, at = tolerance(backend.name, what="log_score")
    rd, ad = tolerance(backend.name, what="splat_d2")
    Lr, Ir, Dr = ref.splat_topk(Q, X, alpha, kappa, k, metric)
    full, d2 = ref.splat_log_scores(Q, X, alpha, kappa, metric) if X.shape[0] else (None, None)
    np.testing.assert_allclose(L, Lr, rtol=rt, atol=at)
    valid = I >= 0
    assert np.array_equal(valid, Ir >= 0)
    for r in range(I.shape[0]):
        ids = I[r][valid[r]]
        assert len(set(ids.tolist())) == ids.size
        np.testing.assert_allclose(L[r][valid[r]], full[r, ids], rtol=rt, atol=at)
        np.testing.assert_allclose(D[r][valid[r]], d2[r, ids], rtol=rd, atol=ad)
    top = int(valid.sum(1).min())
    assert (np.diff(L[:, :top], axis=1) <= at).all()  # sorted best first


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("m,n,d,k", SHAPES)
def test_splat_topk_matches_reference(backend, rng, m, n, d, k, metric):
    Q, X, alpha, kappa = splat_data(rng, m, n, d)
    L, I, D = m2m_gpu.splat_topk(Q, X, alpha, kappa, k, metric, backend=backend.name)
    assert L.shape == I.shape == D.shape == (m, k)
    assert_splat_matches(backend, Q, X, alpha, kappa, k, metric, L, I, D)
    if k > n:  # padding
        assert (I[:, n:] == -1).all() and np.isneginf(L[:, n:]).all() and np.isinf(D[:, n:]).all()


@pytest.mark.parametrize("metric", METRICS)
def test_splat_topk_many_tiles_and_chunks(backend, rng, metric, small_tiles):
    for m in (1, 3, 40):  # streaming and batched cpu paths
        Q, X, alpha, kappa = splat_data(rng, m, 3001, 24)
        L, I, D = m2m_gpu.splat_topk(Q, X, alpha, kappa, 50, metric, backend=backend.name)
        assert_splat_matches(backend, Q, X, alpha, kappa, 50, metric, L, I, D)
        E = m2m_gpu.energy(Q, X, alpha, kappa, metric, backend=backend.name)
        np.testing.assert_allclose(E, ref.energy(Q, X, alpha, kappa, metric),
                                   *tolerance(backend.name, what="energy"))


def test_splat_topk_uniform_params_ranks_like_knn(backend, rng):
    """All alpha equal and all kappa equal: the ranking is knn's with l2 (ties aside)."""
    Q = rng.standard_normal((9, 16)).astype(np.float32)
    X = rng.standard_normal((777, 16)).astype(np.float32)
    X[100:110] = X[5]  # exact ties
    Q[0] = X[5]
    L, I, D = m2m_gpu.splat_topk(Q, X, 2.0, 3.0, 20, "l2", backend=backend.name)
    Dk, Ik = m2m_gpu.knn(Q, X, 20, "l2", backend=backend.name)
    np.testing.assert_allclose(D, Dk, *tolerance(backend.name, what="splat_d2"))
    for r in range(Q.shape[0]):
        distinct = np.flatnonzero(np.diff(Dk[r]) > 1e-4)  # positions before a strict gap
        for p in distinct:  # the sets of the first p+1 results agree wherever ties end
            assert set(I[r, : p + 1].tolist()) == set(Ik[r, : p + 1].tolist())


def test_splat_on_and_next_to_stored_vectors(backend, rng):
    """Where scores are largest (query at or next to mu) the result is the direct form's."""
    X = (rng.standard_normal((500, 32)) * 10).astype(np.float32)  # large norms: cancellation
    Q = np.concatenate([X[:5], X[5:10] + 1e-3]).astype(np.float32)
    kappa = np.full(500, 100.0, np.float32)
    alpha = rng.uniform(0.5, 2, 500).astype(np.float32)
    L, I, D = m2m_gpu.splat_topk(Q, X, alpha, kappa, 3, "l2", backend=backend.name)
    assert (I[:, 0] == np.arange(10)).all()
    np.testing.assert_allclose(D[:5, 0], 0.0, atol=tolerance(backend.name, what="splat_d2")[1])
    assert_splat_matches(backend, Q, X, alpha, kappa, 3, "l2", L, I, D)
    E = m2m_gpu.energy(Q, X, alpha, kappa, "l2", backend=backend.name)
    np.testing.assert_allclose(E, ref.energy(Q, X, alpha, kappa, "l2"),
                               *tolerance(backend.name, what="energy"))
    np.testing.assert_allclose(E[:5], -np.log(alpha[:5]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (7, 333, 19), (40, 1500, 64), (3, 50, 1100)])
def test_energy_and_gradient_match_reference(backend, rng, m, n, d, metric):
    Q, X, alpha, kappa = splat_data(rng, m, n, d)
    E, G = m2m_gpu.energy(Q, X, alpha, kappa, metric, grad=True, backend=backend.name)
    Er, Gr = ref.energy(Q, X, alpha, kappa, metric, grad=True)
    np.testing.assert_allclose(E, Er, *tolerance(backend.name, what="energy"))
    rt, at = tolerance(backend.name, what="energy_grad")
    np.testing.assert_allclose(G, Gr, rtol=rt, atol=at * max(1.0, np.abs(Gr).max()))


def test_energy_far_query_is_large_and_finite_and_empty_is_inf(backend, rng):
    X = rng.standard_normal((100, 8)).astype(np.float32)
    far = np.full((1, 8), 1e3, np.float32)
    E = m2m_gpu.energy(far, X, 1.0, 10.0, "l2", backend=backend.name)
    assert np.isfinite(E).all() and E[0] > 1e6
    np.testing.assert_allclose(E, ref.energy(far, X, np.ones(100), np.full(100, 10.0)),
                               rtol=1e-5)
    empty = m2m_gpu.energy(X[:2], np.zeros((0, 8), np.float32), [], [], "l2",
                           backend=backend.name)
    assert np.isposinf(empty).all()


def test_energy_non_contiguous_inputs(backend, rng):
    big = rng.standard_normal((400, 30)).astype(np.float64)
    X = big[::2, ::3]  # strided float64
    Q = np.asfortranarray(rng.standard_normal((5, 10)))
    alpha, kappa = np.linspace(0.1, 2, 200), np.linspace(0.5, 5, 200)
    E = m2m_gpu.energy(Q, X, alpha, kappa, "cosine", backend=backend.name)
    np.testing.assert_allclose(E, ref.energy(Q, X, alpha, kappa, "cosine"),
                               *tolerance(backend.name, what="energy"))


def test_splat_bad_input(backend):
    X = np.ones((4, 3), np.float32)
    with pytest.raises(UnknownMetricError):
        m2m_gpu.splat_topk(X, X, 1.0, 1.0, 2, "ip", backend=backend.name)
    with pytest.raises(InvalidInputError):
        m2m_gpu.splat_topk(X, X, -1.0, 1.0, 2, backend=backend.name)
    with pytest.raises(InvalidInputError):
        m2m_gpu.splat_topk(X, X, 1.0, 1.0, 0, backend=backend.name)
    with pytest.raises(InvalidInputError):
        m2m_gpu.energy(np.ones((1, 2), np.float32), X, 1.0, 1.0, backend=backend.name)
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(InvalidInputError):
        m2m_gpu.energy(bad, X, 1.0, 1.0, backend=backend.name)


# ---- hebbian ---------------------------------------------------------------------------------
def random_events(rng, n, events, collide_share=0.1):
    """Events with relevant/irrelevant ids; a share of them hit the same few splats."""
    hot = rng.choice(n, size=3, replace=False)
    rel, irr = [], []
    for _ in range(events):
        pool = hot if rng.random() < collide_share else np.arange(n)
        r = list(rng.choice(pool, size=min(2, pool.size), replace=False))
        cand = [int(i) for i in rng.choice(n, size=2, replace=False) if i not in r]
        rel.append([int(i) for i in r])
        irr.append(cand)
    return rel, irr


def plan_of(rel, irr):
    qi, rows, sg = [], [], []
    for e, (r, i) in enumerate(zip(rel, irr, strict=True)):
        for s in r:
            qi.append(e), rows.append(s), sg.append(1)
        for s in i:
            qi.append(e), rows.append(s), sg.append(-1)
    return HebbianPlan.build(np.array(qi), np.array(rows), np.array(sg))


def upload(backend, mu, params):
    mun = backend.from_host(np.array(mu))
    kw = {"chunk_rows": mun.chunk_rows} if backend.name == "vulkan" else {}
    return mun, backend.from_host(np.array(params), **kw)


@pytest.mark.parametrize("metric", METRICS)
def test_hebbian_batch_equals_sequential_reference(backend, rng, metric):
    n, d, events = 64, 13, 300
    mu = rng.standard_normal((n, d)).astype(np.float32)
    if metric == "cosine":
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    params = np.zeros((n, PARAM_WIDTH), np.float32)
    params[:, 0] = rng.uniform(0.5, 2, n)
    params[:, 1] = rng.uniform(1, 20, n)
    Q = rng.standard_normal((events, d)).astype(np.float32)
    if metric == "cosine":
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    rel, irr = random_events(rng, n, events, collide_share=0.3)
    plan = plan_of(rel, irr)
    assert plan.counts.max() > 10  # many events on the same splat
    mun, pn = upload(backend, mu, params)
    rates = HebbianRates(renormalize=metric == "cosine")
    backend.hebbian(mun, pn, backend.from_host(Q), plan, rates)
    mr, ar, kr = ref.hebbian(mu, params[:, 0], params[:, 1], Q, rel, irr, metric=metric)
    got_mu, got_p = backend.to_host(mun), backend.to_host(pn)
    tol = tolerance(backend.name, what="hebbian")
    np.testing.assert_allclose(got_mu, mr, *tol)
    np.testing.assert_allclose(got_p[:, 0], ar, *tol)
    np.testing.assert_allclose(got_p[:, 1], kr, rtol=tol[0], atol=tol[1] * 100)


def test_hebbian_clips_hold_after_thousands_of_events(backend, rng):
    n, d = 8, 4
    mu = rng.standard_normal((n, d)).astype(np.float32)
    params = np.zeros((n, PARAM_WIDTH), np.float32)
    params[:, :2] = (1.0, 10.0)
    events = 3000
    Q = np.repeat(mu[:1], events, axis=0)  # relevant on splat 0 (d2 -> 0: kappa explodes)
    rel = [[0] for _ in range(events)]
    irr = [[1] for _ in range(events)]  # irrelevant on splat 1: alpha and kappa fall
    mun, pn = upload(backend, mu, params)
    backend.hebbian(mun, pn, backend.from_host(Q), plan_of(rel, irr), HebbianRates())
    p = backend.to_host(pn)
    np.testing.assert_allclose(p[0, :2], [10.0, 100.0])  # alpha_max, kappa_max
    np.testing.assert_allclose(p[1, :2], [0.01, 0.5])  # alpha_min, kappa_min
    np.testing.assert_allclose(p[2:, :2], params[2:, :2])  # untouched


def test_decay_matches_reference(backend, rng):
    params = np.zeros((1000, PARAM_WIDTH), np.float32)
    params[:, 0] = rng.uniform(0.1, 5, 1000)
    params[:, 2] = rng.uniform(0, 50, 1000)
    _, pn = upload(backend, np.zeros((1000, 3), np.float32), params)
    lam = np.log(2) / 20.0
    backend.decay(pn, 60.0, lam)
    got = backend.to_host(pn)
    np.testing.assert_allclose(got[:, 0], ref.decay(params[:, 0], params[:, 2], 60.0, 20.0),
                               *tolerance(backend.name, what="decay"))
    assert (got[:, 2] == 60.0).all()


def test_gather_and_scatter_rows(backend, rng, monkeypatch):
    monkeypatch.setattr(vulkan_backend, "CHUNK_BYTES", 4096)  # many chunks
    X = rng.standard_normal((300, 7)).astype(np.float32)
    xn = backend.from_host(X.copy())
    idx = np.array([0, 299, 150, 3])
    np.testing.assert_array_equal(backend.gather_rows(xn, idx), X[idx])
    backend.scatter_rows(xn, idx, -X[idx])
    want = X.copy()
    want[idx] = -X[idx]
    np.testing.assert_array_equal(backend.to_host(xn), want)


# ---- Philox data -----------------------------------------------------------------------------
def test_philox_known_answers():
    """Random123's published Philox4x32-10 test vectors."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF),
         (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, want in cases:
        got = ref.philox4x32(np.array([ctr], np.uint32), key)[0]
        assert tuple(int(v) for v in got) == want


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_philox_words_are_bit_identical_across_backends_and_slicings(backend, seed):
    n, d = 203, 13
    whole = backend.to_host(backend.philox(0, n, d, seed, 0, normal=False))
    assert whole.dtype == np.uint32
    np.testing.assert_array_equal(whole, words(0, n, d, seed, 0))  # the host reference
    for a, b in [(0, 1), (5, 77), (150, 203)]:
        part = backend.to_host(backend.philox(a, b - a, d, seed, 0, normal=False))
        np.testing.assert_array_equal(part, whole[a:b])
    high = backend.to_host(backend.philox(2**32 - 2, 4, d, seed, 1, normal=False))
    np.testing.assert_array_equal(high, words(2**32 - 2, 4, d, seed, 1))  # row carry


def test_synthetic_data_matches_reference_on_every_backend(backend):
    tol = tolerance(backend.name, what="philox_normal")
    for kind in ("gaussian", "clustered"):
        for part in ("data", "queries"):
            x = syn_fn(300, 9, seed=11, kind=kind, part=part, clusters=7, spread=0.2,
                       backend=backend.name)
            assert x.dtype == np.float32 and x.shape == (300, 9)
            want = reference(300, 9, 11, kind, part=part, clusters=7, spread=0.2)
            np.testing.assert_allclose(x, want, *tol)
            tail = syn_fn(100, 9, seed=11, kind=kind, part=part, clusters=7, spread=0.2,
                          start=200, backend=backend.name)
            np.testing.assert_allclose(tail, x[200:], *tol)


def test_synthetic_statistics_and_structure():
    z = normals(0, 4000, 16, 3, 0)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    u = words(0, 1000, 16, 3, 0)
    assert len(np.unique(u)) > 15900  # no obvious repeats
    c = assignments(0, 5000, 3, 0, 10)
    counts = np.bincount(c, minlength=10)
    assert counts.min() > 400 and counts.max() < 600
    x = reference(2000, 16, 3, "clustered", clusters=10, spread=0.05)
    centers = normals(0, 10, 16, 3, 2)
    np.testing.assert_allclose(x, centers[c[:2000]] + 0.05 * z[:2000].astype(np.float32),
                               atol=1e-5)
    q = reference(50, 16, 3, "clustered", clusters=10, spread=0.05, part="queries")
    assert not np.allclose(q, x[:50])  # a different stream, the same centres
    nearest = ((q[:, None] - centers[None]) ** 2).sum(-1).min(1)
    assert nearest.max() < 16 * 0.05**2 * 4


def test_synthetic_bad_input():
    with pytest.raises(InvalidInputError):
        syn_fn(10, 0)
    with pytest.raises(InvalidInputError):
        syn_fn(10, 4, kind="uniform")
    with pytest.raises(InvalidInputError):
        syn_fn(10, 4, seed=-1)
    with pytest.raises(InvalidInputError):
        syn_fn(10, 4, kind="clustered", clusters=0)
