"""NumPy reference implementations: the executable form of SPEC.md.

Written to be obviously correct, not fast: float64 arithmetic, the direct form of every
distance, whole matrices. Every backend is tested against these functions.
"""

from __future__ import annotations

import numpy as np

METRICS = ("l2", "ip", "cosine")


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("zero vector under the cosine metric")
    return x / norms


def pairwise(queries: np.ndarray, database: np.ndarray, metric: str) -> np.ndarray:
    """float64 m x n matrix: squared L2 distance (``l2``) or similarity (``ip``, ``cosine``)."""
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(database, dtype=np.float64)
    if metric == "cosine":
        q, x = _normalize(q), _normalize(x)
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    if metric in ("ip", "cosine"):
        return q @ x.T
    raise ValueError(f"unknown metric {metric!r}")


def knn(
    queries: np.ndarray, database: np.ndarray, k: int, metric: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN (SPEC section 2): rows best first; ``k > n`` padded with id -1 and
    ``D = +inf`` (l2) or ``-inf`` (ip, cosine). Returns ``(float32[m, k], int64[m, k])``."""
    q = np.asarray(queries)
    x = np.asarray(database)
    m, n = q.shape[0], x.shape[0]
    larger_is_better = metric in ("ip", "cosine")
    pad = -np.inf if larger_is_better else np.inf
    D = np.full((m, k), pad, dtype=np.float64)
    I = np.full((m, k), -1, dtype=np.int64)
    if m and n:
        full = pairwise(q, x, metric)
        order = np.argsort(-full if larger_is_better else full, axis=1, kind="stable")[:, :k]
        kk = order.shape[1]
        D[:, :kk] = np.take_along_axis(full, order, axis=1)
        I[:, :kk] = order
    return D.astype(np.float32), I


# ---- splats (SPEC section 2) -----------------------------------------------------------------
def splat_geometry(queries: np.ndarray, mu: np.ndarray, metric: str) -> np.ndarray:
    """float64 ``d2(x, i)`` for the splat model: squared L2 distance, after normalising both
    sides under ``cosine`` (``d2 = 2 - 2 cos``)."""
    if metric not in ("l2", "cosine"):
        raise ValueError(f"splat metric must be l2 or cosine, got {metric!r}")
    q = np.asarray(queries, np.float64)
    x = np.asarray(mu, np.float64)
    if metric == "cosine":
        q, x = _normalize(q), _normalize(x)
    return pairwise(q, x, "l2")


def splat_log_scores(queries, mu, alpha, kappa, metric="l2"):
    """``(l, d2)``: float64 log-scores ``log(alpha) - kappa d2`` and the distances, m x n."""
    d2 = splat_geometry(queries, mu, metric)
    with np.errstate(divide="ignore"):
        log_alpha = np.log(np.asarray(alpha, np.float64))
    return log_alpha[None, :] - np.asarray(kappa, np.float64)[None, :] * d2, d2


def splat_topk(queries, mu, alpha, kappa, k, metric="l2"):
    """Top-k splats by log-score, best first: ``(log_scores, ids, d2)``; ``k > n`` is padded
    with log-score ``-inf``, id -1 and distance ``+inf``. Ties in any order."""
    m, n = np.asarray(queries).shape[0], np.asarray(mu).shape[0]
    L = np.full((m, k), -np.inf)
    I = np.full((m, k), -1, dtype=np.int64)
    D = np.full((m, k), np.inf)
    if m and n:
        full, d2 = splat_log_scores(queries, mu, alpha, kappa, metric)
        order = np.argsort(-full, axis=1, kind="stable")[:, :k]
        kk = order.shape[1]
        L[:, :kk] = np.take_along_axis(full, order, 1)
        I[:, :kk] = order
        D[:, :kk] = np.take_along_axis(d2, order, 1)
    return L.astype(np.float32), I, D.astype(np.float32)


def energy(queries, mu, alpha, kappa, metric="l2", grad=False):
    """``E(x) = -log sum_i alpha_i exp(-kappa_i d2(x, i))`` (float64, max-shifted), and with
    ``grad`` also ``dE/dx = sum_i w_i 2 kappa_i (x - mu_i)``, ``w = softmax(l)``. An empty
    store gives ``+inf`` and a zero gradient. (The gradient is taken in the space the
    distances live in: for ``cosine``, the normalised query.)"""
    q = np.asarray(queries, np.float64)
    x = np.asarray(mu, np.float64)
    m, d = q.shape
    if x.shape[0] == 0:
        E = np.full(m, np.inf)
        return (E, np.zeros((m, d))) if grad else E
    if metric == "cosine":
        q, x = _normalize(q), _normalize(x)
    l, _ = splat_log_scores(q, x, alpha, kappa, "l2")
    top = l.max(axis=1, keepdims=True)
    w = np.exp(l - top)
    s = w.sum(axis=1)
    E = -(top[:, 0] + np.log(s))
    if not grad:
        return E
    w /= s[:, None]
    wk = w * np.asarray(kappa, np.float64)[None, :]
    G = 2.0 * (wk.sum(axis=1)[:, None] * q - wk @ x)
    return E, G


def hebbian(mu, alpha, kappa, queries, relevant, irrelevant, *, lr_alpha=0.1, lr_kappa=0.5,
            lr_mu=0.01, alpha_min=0.01, alpha_max=10.0, kappa_min=0.5, kappa_max=100.0,
            eps=1e-6, metric="l2"):
    """Feedback events applied one after another, in order (the SPEC's table, then clip).

    Event e is ``(queries[e], relevant[e], irrelevant[e])`` with lists of row indices.
    Returns new float64 ``(mu, alpha, kappa)``; the inputs are not modified."""
    mu = np.array(mu, dtype=np.float64)
    alpha = np.array(alpha, dtype=np.float64)
    kappa = np.array(kappa, dtype=np.float64)
    q = np.asarray(queries, np.float64)
    for e in range(q.shape[0]):
        x = q[e] / np.linalg.norm(q[e]) if metric == "cosine" else q[e]
        for i in relevant[e]:
            d2 = float(((x - mu[i]) ** 2).sum())
            alpha[i] *= 1.0 + lr_alpha
            kappa[i] += lr_kappa / (d2 + eps)
            mu[i] += lr_mu * (x - mu[i])
            if metric == "cosine":
                mu[i] /= np.linalg.norm(mu[i])
            alpha[i] = min(max(alpha[i], alpha_min), alpha_max)
            kappa[i] = min(max(kappa[i], kappa_min), kappa_max)
        for i in irrelevant[e]:
            alpha[i] *= 1.0 - lr_alpha
            kappa[i] -= 0.5 * lr_kappa
            alpha[i] = min(max(alpha[i], alpha_min), alpha_max)
            kappa[i] = min(max(kappa[i], kappa_min), kappa_max)
    return mu, alpha, kappa


def decay(alpha, last_tick, now, half_life):
    """``alpha * exp(-ln2 / half_life * (now - last_tick))`` (float64)."""
    lam = np.log(2.0) / half_life
    return np.asarray(alpha, np.float64) * np.exp(-lam * (now - np.asarray(last_tick, np.float64)))


# ---- Philox4x32-10 (Salmon et al., SC'11; the Random123 constants) ----------------------------
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32(counters: np.ndarray, key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox4x32 of each counter row ``uint32[N, 4]`` under ``key = (k0, k1)``: uint32[N, 4]."""
    c = np.asarray(counters, dtype=np.uint64).reshape(-1, 4).T.copy()
    k0, k1 = np.uint64(key[0] & 0xFFFFFFFF), np.uint64(key[1] & 0xFFFFFFFF)
    mask = np.uint64(0xFFFFFFFF)
    for r in range(rounds):
        if r:
            k0 = (k0 + np.uint64(PHILOX_W0)) & mask
            k1 = (k1 + np.uint64(PHILOX_W1)) & mask
        p0 = c[0] * np.uint64(PHILOX_M0)
        p1 = c[2] * np.uint64(PHILOX_M1)
        c = np.stack([((p1 >> np.uint64(32)) ^ c[1] ^ k0) & mask, p1 & mask,
                      ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & mask, p0 & mask])
    return c.T.astype(np.uint32)


# ---- k-means (SPEC section 2: assign / kmeans_update) ----------------------------------------
def kmeans_assign(x, centroids):
    """``(squared distance, index)`` of each row's nearest centroid (float64, direct form;
    ties go to the lowest index)."""
    full = pairwise(x, centroids, "l2")
    idx = np.argmin(full, axis=1)
    return full[np.arange(full.shape[0]), idx], idx


def kmeans_update(x, assign, k):
    """Per-centroid float64 sums of member rows and member counts."""
    x = np.asarray(x, np.float64)
    sums = np.zeros((k, x.shape[1]))
    for i, c in enumerate(np.asarray(assign)):
        sums[c] += x[i]
    return sums, np.bincount(assign, minlength=k)
