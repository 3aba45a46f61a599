"""Splat ranking, energy, Hebbian feedback and decay on the host (the cpu backend's
kernels).

All of them rank or weigh by the key  kappa_i * d2 - log(alpha_i)  (= -log-score). With
the fast form d2 = |q|^2 + |x|^2 - 2 q.x, one GEMM per tile computes the key exactly as
k-NN computes its own: the database tile is augmented to
  [ -2 kappa_i x_i | kappa_i | kappa_i |x_i|^2 - log alpha_i ]   (rows x (d + 2))
and the queries to [ q | |q|^2 | 1 ], so no pass over the (rows x queries) output tile is
needed beyond the GEMM itself. Distances near the query are then recomputed in the direct
form (top-k) or corrected for the largest terms (energy).
"""

from __future__ import annotations

import numpy as np

from ..backends.abi import PARAM_ALPHA, PARAM_KAPPA, PARAM_TICK, Key
from ..backends.base import HebbianPlan, HebbianRates
from . import host_topk as ht
from .topk import sort_rows

ENERGY_FIX_TERMS = 4  # energy: the largest terms per query are recomputed in the direct form
MASKED_KEY = np.float32(1e30)  # key of rows with alpha = 0 while ranking


def _key_terms(be, mu, params, mode, sqnorms):
    if sqnorms is None:
        sqnorms = be.sqnorms(mu)
    alpha = params[:, PARAM_ALPHA]
    live = alpha > 0
    # Rows with alpha = 0 (masked, deleted) get a huge finite key rather than +inf, so
    # that BLAS never multiplies inf by the zero padding of its tiles.
    if mode == Key.SPLAT:
        kap = np.where(live, params[:, PARAM_KAPPA], 0).astype(np.float32)
        with np.errstate(divide="ignore"):
            bias = np.where(live, kap * sqnorms - np.log(np.where(live, alpha, 1)),
                            MASKED_KEY).astype(np.float32)
    else:
        kap = np.ones(mu.shape[0], dtype=np.float32)
        bias = np.where(live, sqnorms, MASKED_KEY).astype(np.float32)
    return kap, bias


def _splat_fill(be, queries, mu, kap, bias, a, b):
    """The key-tile writer for queries a..b (see above)."""
    d = mu.shape[1]
    q = queries[a:b]
    qa_t = np.empty((d + 2, b - a), dtype=np.float32)
    qa_t[:d] = q.T
    np.einsum("ij,ij->i", q, q, out=qa_t[d])
    qa_t[d + 1] = 1.0
    scratch = {}

    def fill(start: int, stop: int, out: np.ndarray) -> None:
        xa = scratch.get(stop - start)
        if xa is None:
            xa = scratch.setdefault(stop - start, np.empty((stop - start, d + 2), np.float32))
        np.multiply(mu[start:stop], (-2.0 * kap[start:stop])[:, None], out=xa[:, :d])
        xa[:, d] = kap[start:stop]
        xa[:, d + 1] = bias[start:stop]
        np.matmul(xa, qa_t, out=out)

    return fill


def host_splat_topk(be, queries, mu, params, k, mode, *, sqnorms=None):
    queries, mu, params = ht.c32(queries), ht.c32(mu), ht.c32(params)
    m, n = queries.shape[0], mu.shape[0]
    kap, bias = _key_terms(be, mu, params, mode, sqnorms)
    if m <= ht.SMALL_BATCH:
        keys = np.empty(n, dtype=np.float32)
        out_k = np.empty((m, k), dtype=np.float32)
        out_i = np.empty((m, k), dtype=np.int64)
        for row in range(m):
            q2 = queries[row] * np.float32(-2.0)
            qn = np.float32(queries[row] @ queries[row])

            def job(s: int, q2=q2, qn=qn) -> None:
                e = s + ht.SCAN_TILE_ROWS
                o = keys[s:e]
                np.einsum("ij,j->i", mu[s:e], q2, out=o)
                o += qn
                o *= kap[s:e]
                o += bias[s:e]

            list(be._pool.map(job, range(0, n, ht.SCAN_TILE_ROWS)))
            out_k[row], out_i[row] = ht._select_row(keys, k)
    else:
        out_k, out_i = ht.blocked_topk(be,
            m, n, k, lambda a, b: _splat_fill(be, queries, mu, kap, bias, a, b))
    return _splat_finish(be, queries, mu, params, out_i, mode)


def _splat_finish(be, queries, mu, params, ids, mode):
    """Direct-form distances and exact keys of the selected ids, best first."""
    d2 = ht.direct_d2(be, queries, mu, ids)
    alpha = params[ids, PARAM_ALPHA]
    if mode == Key.SPLAT:
        with np.errstate(divide="ignore"):
            keys = params[ids, PARAM_KAPPA] * d2 - np.log(alpha)
    else:
        keys = np.where(alpha > 0, d2, np.float32(np.inf)).astype(np.float32)
    return sort_rows(keys.astype(np.float32), ids, d2)


def host_energy(be, queries, mu, params, *, grad=False, sqnorms=None):
    queries, mu, params = ht.c32(queries), ht.c32(mu), ht.c32(params)
    m, d = queries.shape
    n = mu.shape[0]
    kap, bias = _key_terms(be, mu, params, Key.SPLAT, sqnorms)
    E = np.empty(m, dtype=np.float32)
    G = np.empty((m, d), dtype=np.float32) if grad else None
    fix = min(ENERGY_FIX_TERMS, n)

    def job(block: tuple[int, int]) -> None:
        a, b = block
        fill = _splat_fill(be, queries, mu, kap, bias, a, b)
        E[a:b], g = _energy_block(be, queries[a:b], mu, params, kap, fill, fix, grad)
        if grad:
            G[a:b] = g

    be._run_blocks(job, ht.split_rows(m, be.threads, ht.QUERY_CHUNK))
    return (E, G) if grad else E


def _energy_block(be, q, mu, params, kap, fill, fix, grad):
    """Streaming log-sum-exp over key tiles: running max M and sum S per query (float64),
    plus the ``fix`` smallest keys, whose terms are swapped for direct-form ones at the
    end (the fast form's cancellation, times kappa, would show in E near a splat)."""
    mq, d = q.shape
    n = mu.shape[0]
    rows = max(fix, ht.BATCH_TILE_BYTES // (4 * mq))
    tile = np.empty((rows, mq), dtype=np.float32)
    M = np.full(mq, -np.inf)
    S = np.zeros(mq)
    SK = np.zeros(mq)
    Gs = np.zeros((mq, d)) if grad else None
    best_k = np.full((mq, fix), np.inf, dtype=np.float32)
    best_i = np.full((mq, fix), -1, dtype=np.int64)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        s = tile[: stop - start]
        fill(start, stop, s)
        best_k, best_i = ht.merge_topk(best_k, best_i, s, start, fix)
        newM = np.maximum(M, -s.min(axis=0).astype(np.float64))
        live = np.isfinite(newM)
        if not live.any():
            continue
        scale = np.where(live, np.exp(np.where(live, M - newM, 0.0)), 1.0)
        shift = np.where(live, newM, 0.0).astype(np.float32)
        s += shift[None, :]
        np.negative(s, out=s)
        np.exp(s, out=s)  # weights exp(l - M'), +inf keys give 0
        S = S * scale + s.sum(axis=0, dtype=np.float64)
        M = np.where(live, newM, M)
        if grad:
            s *= kap[start:stop, None]
            SK = SK * scale + s.sum(axis=0, dtype=np.float64)
            Gs = Gs * scale[:, None] + (s.T @ mu[start:stop]).astype(np.float64)
    live = np.isfinite(M)
    if live.any() and fix:
        ok = best_i >= 0
        ids = np.where(ok, best_i, 0)
        d2 = ht.direct_d2(be, q, mu, ids).astype(np.float64)
        alpha = params[ids, PARAM_ALPHA].astype(np.float64)
        kp = params[ids, PARAM_KAPPA].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            w_direct = np.exp(np.log(alpha) - kp * d2 - M[:, None])
            w_fast = np.exp(-(best_k + M[:, None].astype(np.float32)).astype(np.float64))
        delta = np.where(ok & live[:, None], np.nan_to_num(w_direct - w_fast), 0.0)
        S = np.maximum(S + delta.sum(axis=1), np.finfo(np.float64).tiny)
        if grad:
            SK += (delta * kp).sum(axis=1)
            Gs += np.einsum("ij,ijk->ik", delta * kp, mu[ids].astype(np.float64))
    with np.errstate(divide="ignore"):
        E = np.where(live, -(M + np.log(S)), np.inf)
    if not grad:
        return E, None
    G = np.where(live[:, None], 2.0 * (SK[:, None] * q - Gs) / S[:, None], 0.0)
    return E, G


def host_hebbian(be, mu, params, queries, plan: HebbianPlan, rates: HebbianRates) -> None:
    """Vectorised over splats: round r applies the r-th event of every splat that has
    one, so each splat sees its events in order (the sequential result)."""
    be.check_in_place("mu", mu)
    be.check_in_place("params", params)
    queries = ht.c32(queries)
    if plan.size == 0:
        return
    for r in range(int(plan.counts.max())):
        sel = plan.counts > r
        ev = plan.starts[sel] + r
        rows = plan.rows[sel]
        x = queries[plan.ev_query[ev]]
        pos = plan.ev_sign[ev] > 0
        a = params[rows, PARAM_ALPHA]
        kp = params[rows, PARAM_KAPPA]
        m_rows = mu[rows]
        diff = x - m_rows
        d2 = np.einsum("ij,ij->i", diff, diff)
        a = a * np.where(pos, np.float32(1 + rates.lr_alpha), np.float32(1 - rates.lr_alpha))
        kp = np.where(pos, kp + np.float32(rates.lr_kappa) / (d2 + np.float32(rates.eps)),
                      kp - np.float32(0.5 * rates.lr_kappa))
        moved = m_rows + np.float32(rates.lr_mu) * diff
        if rates.renormalize:
            moved /= np.sqrt(np.einsum("ij,ij->i", moved, moved))[:, None]
        mu[rows] = np.where(pos[:, None], moved, m_rows)
        params[rows, PARAM_ALPHA] = np.clip(a, rates.alpha_min, rates.alpha_max)
        params[rows, PARAM_KAPPA] = np.clip(kp, rates.kappa_min, rates.kappa_max)


def host_decay(be, params, now, lam):
    be.check_in_place("params", params)
    now = np.float32(now)
    params[:, PARAM_ALPHA] *= np.exp(np.float32(-lam) * (now - params[:, PARAM_TICK]))
    params[:, PARAM_TICK] = now
