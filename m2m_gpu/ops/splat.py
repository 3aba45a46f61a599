"""Splat ranking and energy on the GPU backends: the drivers, written once.

``device_splat_topk`` is ``device_topk`` with splat keys and the key -> d2 recovery;
``device_energy`` streams key tiles into a running log-sum-exp per query
(``energy_accumulate``: max M, sum S, kappa-weighted sum SK and, with the gradient, the
kappa-weighted sum of mu) and finishes ``E = -(M + log S)``, ``dE/dx = 2 (SK x - G) / S``
in float64.
"""

from __future__ import annotations

import numpy as np

from ..backends.abi import ENERGY_ACCUMULATE, PARAM_ALPHA, PARAM_KAPPA, Key
from .knn import device_topk, distance


def splat_d2(xp, keys, ids, alpha, kappa, direct, mode=Key.SPLAT):
    """d2 of splat-ranked results from their keys: the kernels compute
    ``key = fma(kappa, d2, -log alpha)`` on the direct-form d2, so ``(key + log alpha) /
    kappa`` loses only that rounding. Where it is undefined (``alpha <= 0`` gives a +inf
    key) ``direct(bad)`` returns ``(rows, cols, d2)`` for the entries of the mask ``bad``,
    computed from the vectors; without it they get +inf. Ids of -1 get +inf: no NaN
    leaves this function. ``mode=Key.DISTANCE``: the keys are d2 already."""
    if mode != Key.SPLAT:
        d2 = keys.astype(xp.float32, copy=True)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            d2 = xp.maximum((keys + xp.log(alpha)) / kappa, xp.float32(0.0)).astype(
                xp.float32)
    found = ids >= 0
    bad = found & ~xp.isfinite(d2)
    if direct is not None and bool(bad.any()):
        r, c, v = direct(bad)
        d2[r, c] = v
    return xp.where(found & ~xp.isnan(d2), d2, xp.float32(np.inf)).astype(xp.float32)


def device_splat_topk(be, queries, mu, params, k: int, mode: int):
    """``(keys, ids, d2)`` of the k best splats per query, best first (result arrays of
    ``be.result_xp``: CuPy on cuda, NumPy on vulkan)."""
    xp = be.result_xp
    keys, ids = device_topk(be, queries, mu, k, mode, params)
    p = be.take_rows(params, xp.maximum(ids, 0))  # (m, k, PARAM_WIDTH); -1 rows masked below

    def direct(bad):
        r, c = xp.nonzero(bad)
        diff = be.take_rows(queries, r) - be.take_rows(mu, ids[r, c])
        return r, c, (diff * diff).sum(axis=1)

    return keys, ids, splat_d2(xp, keys, ids, p[..., PARAM_ALPHA], p[..., PARAM_KAPPA],
                               direct, mode)


def device_energy(be, queries, mu, params, grad: bool = False):
    """``E[m]`` (float32; +inf where every alpha is 0) and with ``grad`` ``dE/dx``."""
    xp = be.result_xp
    d = mu.shape[1]
    E_parts, G_parts = [], []
    blocks = list(be.row_blocks(mu, params))
    rows_cap = max((count for _, count, _, _ in blocks), default=1)
    for q0, mq, qbuf in be.query_blocks(queries, be.max_grid * 16):
        t_max = be.tile_rows(mq, rows_cap)
        b = be.batch()
        tile = b.scratch(mq * t_max)
        init = np.zeros((mq, 4), np.float32)
        init[:, 0] = -np.inf
        state = b.upload(init.ravel())
        gbuf = b.upload(np.zeros(mq * d if grad else 4, np.float32))
        for _, count, xbuf, pbuf in blocks:
            for off in range(0, count, t_max):
                t = min(t_max, count - off)
                distance(b, qbuf, mq, d, xbuf, False, off, t, tile, Key.SPLAT, pbuf)
                b.launch(ENERGY_ACCUMULATE, (mq, 1, 1), tile, state, gbuf, pbuf, xbuf, t, d,
                         off, int(grad))
        st, g = b.run(state, gbuf)
        st = xp.asarray(st).reshape(mq, 4).astype(xp.float64)
        M, S, SK = st[:, 0], st[:, 1], st[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            live = xp.isfinite(M) & (S > 0)
            Sl = xp.where(live, S, 1.0)
            E_parts.append(xp.where(live, -(M + xp.log(Sl)), xp.inf))
            if grad:
                q = be.take_rows(queries, xp.arange(q0, q0 + mq)).astype(xp.float64)
                g = xp.asarray(g).reshape(mq, d).astype(xp.float64)
                G_parts.append(xp.where(live[:, None], 2.0 * (SK[:, None] * q - g) / Sl[:, None],
                                        0.0))
    E = xp.concatenate(E_parts).astype(xp.float32)
    return (E, xp.concatenate(G_parts).astype(xp.float32)) if grad else E


def combine_energies(Es, Gs=None):
    """The energy of a union of disjoint blocks of splats (tier blocks, shards) from each
    block's: ``E = -log sum_b exp(-E_b)`` (a stable log-sum-exp; +inf blocks add nothing)
    and ``G = sum_b exp(E - E_b) G_b``. Host float32 arrays in, float32 out."""
    if len(Es) == 1:
        return Es[0], (Gs[0] if Gs is not None else None)
    eb = np.stack(Es).astype(np.float64)  # (blocks, m)
    lo = eb.min(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.where(np.isfinite(eb), np.exp(-(eb - lo)), 0.0)
        total = w.sum(axis=0)
        E = np.where(np.isfinite(lo), lo - np.log(np.where(total > 0, total, 1)), np.inf)
        G = None
        if Gs is not None:
            share = np.where(total > 0, w / np.where(total > 0, total, 1), 0.0)
            G = np.einsum("bm,bmd->md", share, np.stack(Gs).astype(np.float64))
    return E.astype(np.float32), (G.astype(np.float32) if G is not None else None)
