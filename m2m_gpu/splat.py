"""Functional forms of the splat kernels (SPEC section 2) on raw arrays.

``SplatStore`` is the usual way in; these are for experiments and tests that hold ``mu``,
``alpha`` and ``kappa`` themselves. Metric ``l2`` or ``cosine`` (both sides normalised).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .backends.base import MODE_SPLAT, PARAM_ALPHA, PARAM_KAPPA, PARAM_WIDTH
from .errors import InvalidInputError, UnknownMetricError
from .inputs import check_k, check_result_size, prepare
from .tensor import to_native


def _setup(queries, mu, alpha, kappa, metric, backend):
    if metric not in ("l2", "cosine"):
        raise UnknownMetricError(f"unknown splat metric {metric!r}; expected 'l2' or 'cosine'")
    be = get_backend(backend)
    x, sq, _ = prepare(mu, "mu", metric)
    q, _, _ = prepare(queries, "queries", metric, dim=x.shape[1])
    n = x.shape[0]
    params = np.zeros((n, PARAM_WIDTH), dtype=np.float32)
    for col, v, what in ((PARAM_ALPHA, alpha, "alpha"), (PARAM_KAPPA, kappa, "kappa")):
        try:
            v = np.broadcast_to(np.asarray(v, dtype=np.float32), (n,))
        except (TypeError, ValueError):
            raise InvalidInputError(f"{what} must be a number or an array of {n} numbers (one "
                                    f"per row of mu), got {np.shape(v)} {type(v).__name__}"
                                    ) from None
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise InvalidInputError(f"{what} must be finite and > 0")
        params[:, col] = v
    xn = to_native(be, x)
    pn = be.from_host(params, like=xn)
    sqn = to_native(be, sq) if be.uses_sqnorms else None
    return be, q, xn, pn, sqn, n


def splat_topk(queries: Any, mu: Any, alpha: Any, kappa: Any, k: int, metric: str = "l2",
               backend: str | Backend | None = None):
    """Top-k by log-score ``log(alpha) - kappa d2``: ``(log_scores, ids, d2)`` as NumPy
    arrays of shape (m, k), best first; ``k > n`` is padded with ``-inf``, -1, ``+inf``."""
    k = check_k(k)
    be, q, xn, pn, sqn, n = _setup(queries, mu, alpha, kappa, metric, backend)
    m = q.shape[0]
    check_result_size(m, k, n)
    L = np.full((m, k), -np.inf, dtype=np.float32)
    I = np.full((m, k), -1, dtype=np.int64)
    D = np.full((m, k), np.inf, dtype=np.float32)
    if m and n:
        keys, ids, d2 = (np.asarray(be.to_host(a)) for a in be.splat_topk(
            to_native(be, q), xn, pn, min(k, n), MODE_SPLAT, sqnorms=sqn))
        kk = keys.shape[1]
        L[:, :kk], I[:, :kk], D[:, :kk] = -keys, ids, d2
    return L, I, D


def energy(queries: Any, mu: Any, alpha: Any, kappa: Any, metric: str = "l2",
           grad: bool = False, backend: str | Backend | None = None):
    """``E[m]`` (and ``dE/dx`` with ``grad``) as NumPy float32; fused, O(m + n) memory."""
    be, q, xn, pn, sqn, n = _setup(queries, mu, alpha, kappa, metric, backend)
    m, d = q.shape
    if m == 0 or n == 0:
        E = np.full(m, np.inf, dtype=np.float32)
        return (E, np.zeros((m, d), np.float32)) if grad else E
    out = be.energy(to_native(be, q), xn, pn, grad=grad, sqnorms=sqn)
    if grad:
        return np.asarray(be.to_host(out[0])), np.asarray(be.to_host(out[1]))
    return np.asarray(be.to_host(out))
