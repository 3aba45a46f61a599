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


def prepare(obj: Any, what: str, metric: str, dim: int | None = None) -> tuple[Any, Any, Any]:
    """Stage, validate and (for cosine) normalise a caller's matrix.

    Returns ``(float32 matrix as NumPy or CuPy, its squared row norms, caller)``; raises
    :class:`InvalidInputError` naming the problem before anything is changed anywhere.
    """
    staged, caller = stage(obj)
    x = as_float32_matrix(staged, what, dim)
    sq = row_sqnorms(x, what)
    if metric == "cosine":
        x = normalize_rows(x, what)
        sq = array_module(x).ones(x.shape[0], dtype=np.float32)
    return x, sq, caller


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
    sq = to_native(be, x_sq) if be.uses_sqnorms and metric == "l2" else None
    D, I = search_native(be, q, to_native(be, x), x.shape[0], k, metric, sq)
    return to_caller(be, D, caller), to_caller(be, I, caller)
