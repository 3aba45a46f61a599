"""Input preparation, the one place every kernel's inputs pass: stage a caller's array
(NumPy, CuPy, torch, DeviceArray) beside the tensor API, check its shape, dtype and values,
convert it to C-contiguous float32, and normalise it for cosine. Each check raises
:class:`~m2m_gpu.errors.InvalidInputError` naming the problem before anything is changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import get_backend
from .errors import InvalidInputError, UnknownMetricError
from .tensor import array_module, stage

METRICS = ("l2", "ip", "cosine")


# FAISS's metric constants (faiss.METRIC_INNER_PRODUCT = 0, faiss.METRIC_L2 = 1): accepted
# wherever a metric is, so code passing faiss.METRIC_* carries over.
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
_FAISS_METRICS = {METRIC_L2: "l2", METRIC_INNER_PRODUCT: "ip"}


def check_metric(metric: Any) -> str:
    if isinstance(metric, (int, np.integer)) and not isinstance(metric, bool):
        name = _FAISS_METRICS.get(int(metric))
        if name is None:
            raise UnknownMetricError(f"unknown metric {metric!r}; the FAISS constants "
                                     "METRIC_L2 (1) and METRIC_INNER_PRODUCT (0), or one "
                                     f"of {METRICS}")
        return name
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


def check_count(name: str, value: Any, allow_none: bool = False):
    """A positive integer option (a probe count, a cell count), or None where allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        tail = " or None" if allow_none else ""
        raise InvalidInputError(f"{name} must be a positive integer{tail}, got {value!r}")
    return int(value)


def check_ids(ids: np.ndarray) -> np.ndarray:
    """Caller ids of the FAISS-shaped indexes as int64: integers only, and unsigned ones
    within int64's range (a uint64 beyond it would wrap to a negative id)."""
    if ids.size and ids.dtype.kind not in "iu":
        raise InvalidInputError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size and ids.dtype.kind == "u" and int(ids.max()) > np.iinfo(np.int64).max:
        raise InvalidInputError(f"id {int(ids.max())} is beyond int64's range")
    return ids.astype(np.int64)


MAX_RESULT_ENTRIES = 1 << 31  # m * k above this (about 24 GiB of results) is refused


def check_result_size(m: int, k: int, n: int) -> None:
    """Refuse, before anything is allocated, a search whose (m, k) results could not be
    held: ``k`` beyond the ``n`` stored vectors only pads, so a huge ``k`` is a mistake."""
    if m * k > MAX_RESULT_ENTRIES:
        raise InvalidInputError(
            f"k={k} for {m} queries asks for {m * k:,} results ({m * k * 12 / 2**30:.0f} GiB); "
            f"at most {n:,} per query exist")


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
        sq = get_backend("cpu").sqnorms(x)  # threaded on the cpu backend, cache-sized tiles
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


