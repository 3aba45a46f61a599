"""HRM2's cell scan on the host (the cpu backend's kernel): the compiled loop of
``backends._jit`` when Numba is available, else whole-array NumPy; the k found are
finished in the direct form."""

from __future__ import annotations

import numpy as np

from ..backends import _jit
from ..backends.abi import PARAM_ALPHA, PARAM_KAPPA, Key
from ..codecs import Codec, check_codes
from . import host_topk as ht
from .topk import sort_rows

SCAN_BATCH = 1 << 16  # HRM2 cell scan: candidates formed per batch before a merge


def host_scan(be, queries, rows, ranges, probes, k, mode, params=None, sqnorms=None,
              dequant=None, ranked=True):
    """The probed cells' k best rows per query: the candidate pass is the compiled loop
    of ``_jit`` when Numba is available (else ``_scan_cells_numpy``), and the k found
    are finished in the direct form. ``rows`` may be codes (float16, or SQ8 words with
    ``dequant``; see :mod:`m2m_gpu.codecs`): the scan then ranks the decoded rows.
    ``ranked=False`` over codes with the compiled loop: ``(None, positions, None)``, the
    rows found in no particular order (see ``Backend.scan_cells``)."""
    if check_codes(rows, queries.shape[1], dequant) != "f32":
        return _host_scan_codes(be, ht.c32(queries), np.ascontiguousarray(rows), ranges,
                                probes, k, mode, params, dequant, sqnorms, ranked)
    queries, rows = ht.c32(queries), ht.c32(rows)
    params = None if params is None else ht.c32(params)
    if sqnorms is None:
        sqnorms = np.einsum("ij,ij->i", rows, rows)
    if be.jit:
        _, best_i = _jit.scan_cells(queries, rows, sqnorms, ranges, probes, k, mode,
                                    params)
    else:
        best_i = _scan_cells_numpy(be, queries, rows, ranges, probes, k, mode, params,
                                        sqnorms)
    return finish_scan(queries, rows, best_i, mode, params, jit=be.jit)


def _host_scan_codes(be, queries, codes, ranges, probes, k, mode, params, dequant,
                     sqnorms, ranked=True):
    """The scan over codes (``sqnorms``: the decoded rows' squared norms, worked out here
    when None): the compiled loop reads the codes; without it, every row is decoded and
    scanned as float32 (the same keys). The k found are finished in the direct form on
    their decoded rows, as the GPU kernels compute them."""
    codec = Codec.of(codes, queries.shape[1], dequant)
    params = None if params is None else ht.c32(params)
    if not be.jit:
        return host_scan(be, queries, codec.decode(codes), ranges, probes, k, mode, params)
    if sqnorms is None:
        sqnorms = codec.sqnorms(codes)
    _, best_i = _jit.scan_cells(queries, codes, sqnorms, ranges, probes, k, mode, params,
                                dequant)
    if not ranked:  # the caller ranks the rows found again
        return None, best_i, None
    safe = np.where(best_i >= 0, best_i, 0)
    uniq, inv = np.unique(safe, return_inverse=True)
    return finish_scan(queries, codec.decode(codes[uniq]), best_i, mode, params,
                       inv.reshape(safe.shape), jit=True)


def _scan_cells_numpy(be, queries, rows, ranges, probes, k, mode, params, sqnorms):
    """Per probed cell, one GEMM of the queries that probe it against its rows (the
    cell is read once for all of them), written into one flat candidate buffer; then
    the keys, ids and query of every candidate are formed with whole-array operations,
    one merge keeps each query's k best, and the k are finished in the direct form."""
    m = queries.shape[0]
    qi, col = np.nonzero(probes >= 0)
    cells = probes[qi, col]
    order = np.argsort(cells, kind="stable")
    qi, cells = qi[order], cells[order]
    uniq, start, nq = np.unique(cells, return_index=True, return_counts=True)
    size = (ranges[uniq, 1] - ranges[uniq, 0]).astype(np.int64)
    keep = size > 0
    uniq, start, nq, size = uniq[keep], start[keep], nq[keep], size[keep]
    block = size * nq  # candidates per probed cell
    qt = np.ascontiguousarray((queries * np.float32(-2.0)).T)
    qn = np.einsum("ij,ij->i", queries, queries)
    best_k = np.full((m, k), np.inf, dtype=np.float32)
    best_i = np.full((m, k), -1, dtype=np.int64)
    bound = np.full(m, np.inf, dtype=np.float32)
    # cells in batches of about SCAN_BATCH candidates: after each batch, only entries
    # below their query's running k-th key are merged
    edges = np.searchsorted(np.cumsum(block), np.arange(1, 1 + block.sum() // SCAN_BATCH)
                            * SCAN_BATCH)
    edges = np.unique(np.concatenate([[0], edges + 1, [uniq.size]]).clip(0, uniq.size))
    with be._blas_one_thread():  # many small products: BLAS threads cost more than they give
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sl = slice(int(lo), int(hi))
            bl = block[sl]
            offset = np.cumsum(bl) - bl
            total = int(bl.sum())
            if total == 0:
                continue
            keys = np.empty(total, dtype=np.float32)
            for c, s0, n_q, sz, o in zip(uniq[sl].tolist(), start[sl].tolist(),
                                         nq[sl].tolist(), size[sl].tolist(),
                                         offset.tolist(), strict=True):
                a = int(ranges[c, 0])
                np.matmul(rows[a : a + sz], qt[:, qi[s0 : s0 + n_q]],
                          out=keys[o : o + sz * n_q].reshape(sz, n_q))
            # candidate j of cell g: row a_g + j // nq_g, query qi[start_g + j % nq_g]
            g = np.repeat(np.arange(bl.size), bl)
            local = np.arange(total) - offset[g]
            ids = ranges[uniq[sl], 0][g] + local // nq[sl][g]
            cq = qi[start[sl][g] + local % nq[sl][g]]
            keys += sqnorms[ids]
            if params is not None:
                alpha = params[ids, PARAM_ALPHA]
                live = alpha > 0
                if mode == Key.SPLAT:
                    keys += qn[cq]
                    keys *= params[ids, PARAM_KAPPA]
                    with np.errstate(divide="ignore"):
                        keys -= np.log(np.where(live, alpha, 1))
                keys[~live] = np.inf
            sel = keys < bound[cq]
            best_k, best_i = ht.merge_candidates(best_k, best_i, keys[sel], ids[sel],
                                              cq[sel], k)
            bound = best_k.max(axis=1)
    return best_i


def finish_scan(queries, rows, best_i, mode, params, local=None, *, jit: bool):
    """Keys (as ``mode`` and ``params`` say) and direct-form d2 of the positions found,
    ``best_i`` (int64[m, c], -1 pad), sorted by (key, position): ``(keys, positions,
    d2)`` as a cell scan returns them. ``local``: where each found row sits in ``rows``,
    when ``rows`` holds only those; ``jit``: d2 by the compiled loop."""
    found = best_i >= 0
    safe = np.where(found, best_i, 0)
    at = safe if local is None else local
    d2 = ht.d2_at(queries, rows, at, jit)
    if params is not None and mode == Key.SPLAT:
        alpha = params[safe, PARAM_ALPHA]
        with np.errstate(divide="ignore"):
            keys = params[safe, PARAM_KAPPA] * d2 - np.log(alpha)
    elif params is not None:
        keys = np.where(params[safe, PARAM_ALPHA] > 0, d2, np.float32(np.inf))
    else:
        keys = d2.copy()
    keys = np.where(found, keys, np.inf).astype(np.float32)
    d2 = np.where(found, d2, np.inf).astype(np.float32)
    order = _jit.sort_scan_rows if jit else sort_rows
    keys, ids, d2 = order(keys, np.where(found, best_i, -1), d2)
    return keys, np.where(np.isinf(keys), -1, ids), d2
