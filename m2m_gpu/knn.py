"""Exact k-nearest-neighbour search, the public entry point (SPEC section 2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .inputs import (  # noqa: F401 - re-exported: the input checks used to live here
    METRICS,
    as_float32_matrix,
    check_k,
    check_metric,
    check_result_size,
    normalize_rows,
    prepare,
    row_sqnorms,
)
from .tensor import array_module, to_caller, to_native


def empty_result(m: int, k: int, metric: str, xp=np) -> tuple[Any, Any]:
    pad = np.inf if metric == "l2" else -np.inf
    return xp.full((m, k), pad, dtype=xp.float32), xp.full((m, k), -1, dtype=xp.int64)


def pad_result(D: Any, I: Any, k: int, metric: str) -> tuple[Any, Any]:
    """Widen (m, n) results to (m, k) with id -1 and +inf (l2) / -inf (ip, cosine)."""
    xp = array_module(D)
    m, have = D.shape
    if have == k:
        return D, I
    outD, outI = empty_result(m, k, metric, xp)
    outD[:, :have] = D
    outI[:, :have] = I
    return outD, outI


def search_native(
    be: Backend, q: Any, database: Any, n: int, k: int, metric: str, database_sqnorms: Any = None
) -> tuple[Any, Any]:
    """k-NN of validated queries against ``n`` rows already on ``be``; padded to k."""
    m = q.shape[0]
    if m == 0 or n == 0:
        D, I = empty_result(m, k, metric)
        return be.from_host(D), be.from_host(I)
    kernel_metric = "l2" if metric == "l2" else "ip"
    D, I = be.knn(to_native(be, q), database, min(k, n), kernel_metric,
                  database_sqnorms=database_sqnorms if kernel_metric == "l2" else None)
    return pad_result(D, I, k, metric)


def knn(
    queries: Any,
    database: Any,
    k: int,
    metric: str = "l2",
    backend: str | Backend | None = None,
) -> tuple[Any, Any]:
    """Exact k-NN of each query row among the database rows.

    Returns ``(D, I)`` of shape ``(m, k)``, rows sorted best first: ``D`` is the squared L2
    distance for ``"l2"`` and the similarity for ``"ip"`` and ``"cosine"`` (FAISS
    convention). ``k > n`` gives n results padded with id -1 and ``D = +inf`` (l2) or
    ``-inf`` (ip, cosine). Arithmetic is float32; float16/float64 input is converted.
    Results come back in the caller's array type (NumPy, CuPy, torch, DeviceArray).
    The database is tiled on the device; the full m x n matrix is never held.
    """
    be = get_backend(backend)
    metric = check_metric(metric)
    k = check_k(k)
    x, x_sq, _ = prepare(database, "database", metric)
    q, _, caller = prepare(queries, "queries", metric, dim=x.shape[1])
    check_result_size(q.shape[0], k, x.shape[0])
    sq = to_native(be, x_sq) if be.uses_sqnorms and metric == "l2" else None
    D, I = search_native(be, q, to_native(be, x), x.shape[0], k, metric, sq)
    return to_caller(be, D, caller), to_caller(be, I, caller)
