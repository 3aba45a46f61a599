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
