"""Exact k-nearest-neighbour search, the public entry point (SPEC section 2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .errors import InvalidInputError, UnknownMetricError
from .tensor import array_module, stage, to_caller, to_native

METRICS = ("l2", "ip", "cosine")


def check_metric(metric: Any) -> str:
    name = str(metric).lower() if isinstance(metric, str) else metric
    if name not in METRICS:
        raise UnknownMetricError(f"unknown metric {metric!r}; expected one of {METRICS}")
    return name


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be an integer >= 1, got {k!r}")
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    return int(k)


def as_float32_matrix(staged: Any, what: str, dim: int | None = None) -> Any:
    """Check shape and dtype of a staged (NumPy or CuPy) array and return it as
    C-contiguous float32. Values are checked by :func:`row_sqnorms`."""
    xp = array_module(staged)
    if staged.ndim != 2:
        raise InvalidInputError(f"{what} must be a 2-D array (rows, dim), got shape {staged.shape}")
    kind = np.dtype(staged.dtype).kind
    if kind not in "fiub":
        raise InvalidInputError(f"{what} has dtype {staged.dtype}, which cannot be converted "
                                "to float32")
    if staged.shape[1] < 1:
        raise InvalidInputError(f"{what} has dimension 0")
    if dim is not None and staged.shape[1] != dim:
        raise InvalidInputError(f"{what} has dimension {staged.shape[1]}, expected {dim}")
    return xp.ascontiguousarray(staged, dtype=xp.float32)


def row_sqnorms(x: Any, what: str) -> Any:
    """``||x||^2`` per row, and the check that every value is finite, in one pass.

    A NaN or inf anywhere in a row makes its squared norm non-finite, so this replaces a
    separate ``isfinite`` scan (a whole extra read of the database). A row whose values are
    finite but whose squared norm overflows float32 is refused too: no float32 distance to
    it would be finite.
    """
    xp = array_module(x)
    if xp is np:
        sq = get_backend("cpu").sqnorms(x)  # threaded, in cache-sized tiles
    else:
        sq = (x * x).sum(axis=1)
    bad = ~xp.isfinite(sq)
    if bool(bad.any()):
        row = int(xp.argmax(bad))
        has_nan_inf = not bool(xp.isfinite(x[row]).all())
        why = "NaN or inf" if has_nan_inf else "values too large for float32 distances"
        raise InvalidInputError(f"{what} contains {why} (row {row})")
    return sq


def normalize_rows(x: Any, what: str) -> Any:
    """Rows scaled to unit L2 norm; a zero row is an error (cosine is undefined there)."""
    xp = array_module(x)
    if x.shape[0] == 0:
        return x
    scale = xp.abs(x).max(axis=1, keepdims=True)  # guards the norm against under/overflow
    if bool((scale == 0).any()):
        row = int(xp.argmax((scale == 0).ravel()))
        raise InvalidInputError(f"{what} row {row} is a zero vector; cosine is undefined")
    y = x / scale
    y /= xp.sqrt((y * y).sum(axis=1, keepdims=True))
    return xp.ascontiguousarray(y, dtype=xp.float32)


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
    """
    be = get_backend(backend)
    metric = check_metric(metric)
    k = check_k(k)
    q_staged, caller = stage(queries)
    x_staged, _ = stage(database)
    x = as_float32_matrix(x_staged, "database")
    q = as_float32_matrix(q_staged, "queries", dim=x.shape[1])
    x_sq = row_sqnorms(x, "database")
    row_sqnorms(q, "queries")
    if metric == "cosine":
        q, x = normalize_rows(q, "queries"), normalize_rows(x, "database")
    m, n = q.shape[0], x.shape[0]
    if m == 0 or n == 0:
        D, I = empty_result(m, k, metric)
        return to_caller(be, be.from_host(D), caller), to_caller(be, be.from_host(I), caller)
    kernel_metric = "l2" if metric == "l2" else "ip"
    sq = to_native(be, x_sq) if metric == "l2" and be.name == "cpu" else None
    D, I = be.knn(to_native(be, q), to_native(be, x), min(k, n), kernel_metric,
                  database_sqnorms=sq)
    D, I = pad_result(D, I, k, metric)
    return to_caller(be, D, caller), to_caller(be, I, caller)
