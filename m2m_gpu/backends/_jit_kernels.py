"""The Numba-compiled loops behind ``_jit`` (imported on first use, so that
``import m2m_gpu`` does not load Numba and LLVM). See ``_jit`` for what they do."""

from __future__ import annotations

import numpy as np
from numba import njit

from ..ops.topk import sort_rows as topk_sort_rows
from .base import MODE_SPLAT, PARAM_ALPHA, PARAM_KAPPA, PARAM_WIDTH


@njit(fastmath=True, inline="always")
def _insert(bd, bc, s, f):
    """Insert (s, f) into the sorted lists bd, bc if it beats the last (ties: smaller f)."""
    n = bd.shape[0]
    if s < bd[n - 1] or (s == bd[n - 1] and f < bc[n - 1]):
        p = n - 1
        while p > 0 and (bd[p - 1] > s or (bd[p - 1] == s and bc[p - 1] > f)):
            bd[p] = bd[p - 1]
            bc[p] = bc[p - 1]
            p -= 1
        bd[p] = s
        bc[p] = f

@njit(fastmath=True, inline="always")
def _sqdist(a, b):
    s = np.float32(0.0)
    for e in range(a.shape[0]):
        t = a[e] - b[e]
        s += t * t
    return s

@njit(fastmath=True, inline="always")
def _splat_key(fast, qnorm, kap, nla):
    """The splat key ``kappa d2 - log alpha`` from the fast form ``||x||^2 - 2 q.x``
    (``nla = -log alpha``; d2 clamped at 0)."""
    return max(fast + qnorm, np.float32(0.0)) * kap + nla

QUERY_TILE, ROW_TILE = 4, 2  # the float32 scan's register tile: 2 rows x 4 queries
ROW_BLOCK = 64  # rows in a block of dot products (then its keys)
L1_QUERY_BYTES = 24 << 10  # a block's queries, kept in L1 while its rows stream past


def query_block(d: int) -> int:
    """Queries in a block: as many as fit ``L1_QUERY_BYTES`` (a multiple of the tile,
    4 to 64)."""
    return max(QUERY_TILE, min(64, L1_QUERY_BYTES // (4 * max(1, d)) // QUERY_TILE
                               * QUERY_TILE))


@njit(fastmath=True, inline="always")
def _dots_2x4(x0, x1, q0, q1, q2, q3):
    """The 8 dot products of rows x0, x1 with queries q0 .. q3 in one pass over d: each
    element loaded once serves four (or two) multiply-adds instead of one."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
    for e in range(x0.shape[0]):
        u, v = x0[e], x1[e]
        a0 += q0[e] * u
        a1 += q1[e] * u
        a2 += q2[e] * u
        a3 += q3[e] * u
        b0 += q0[e] * v
        b1 += q1[e] * v
        b2 += q2[e] * v
        b3 += q3[e] * v
    return (a0, a1, a2, a3, b0, b1, b2, b3)


@njit(fastmath=True, inline="always")
def _dots_1x4(x, q0, q1, q2, q3):
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for e in range(x.shape[0]):
        u = x[e]
        a0 += q0[e] * u
        a1 += q1[e] * u
        a2 += q2[e] * u
        a3 += q3[e] * u
    return (a0, a1, a2, a3)


@njit(fastmath=True, inline="always")
def _dots_2x1(x0, x1, q):
    a = b = np.float32(0.0)
    for e in range(x0.shape[0]):
        a += q[e] * x0[e]
        b += q[e] * x1[e]
    return a, b


@njit(fastmath=True, inline="always")
def _dot(x, q):
    a = np.float32(0.0)
    for e in range(x.shape[0]):
        a += q[e] * x[e]
    return a


@njit(fastmath=True, nogil=True)
def _block_dots(queries, cell_q, j0, nq, rows, r0, nr, out):
    """``out[a, b] = queries[cell_q[j0 + a]] . rows[r0 + b]`` for a block of ``nq``
    queries and ``nr`` rows, in register tiles of 2 rows x 4 queries (the last odd row and
    the last queries short of four by narrower tiles). Branch-free, so the loops over d
    vectorise; which tile computes a pair depends only on its place in the block."""
    b = 0
    while b + ROW_TILE <= nr:  # rows outer: the block's queries stay in L1
        x0, x1 = rows[r0 + b], rows[r0 + b + 1]
        a = 0
        while a + QUERY_TILE <= nq:
            t = _dots_2x4(x0, x1, queries[cell_q[j0 + a]], queries[cell_q[j0 + a + 1]],
                          queries[cell_q[j0 + a + 2]], queries[cell_q[j0 + a + 3]])
            for u in range(QUERY_TILE):
                out[a + u, b] = t[u]
                out[a + u, b + 1] = t[QUERY_TILE + u]
            a += QUERY_TILE
        while a < nq:
            out[a, b], out[a, b + 1] = _dots_2x1(x0, x1, queries[cell_q[j0 + a]])
            a += 1
        b += ROW_TILE
    if b < nr:
        x = rows[r0 + b]
        a = 0
        while a + QUERY_TILE <= nq:
            t1 = _dots_1x4(x, queries[cell_q[j0 + a]], queries[cell_q[j0 + a + 1]],
                           queries[cell_q[j0 + a + 2]], queries[cell_q[j0 + a + 3]])
            for u in range(QUERY_TILE):
                out[a + u, b] = t1[u]
            a += QUERY_TILE
        while a < nq:
            out[a, b] = _dot(x, queries[cell_q[j0 + a]])
            a += 1


@njit(fastmath=True, inline="always")
def _block_keys(dots, cell_q, j0, nq, r0, nr, sqnorms, qnorms, qo, params, masked, splat,
                nla, bk, bi):
    """The block's keys from its dot products (plus ``qo[q]``: SQ8's offset term, else
    nothing: ``qo`` empty), each offered to its query's top-k."""
    if splat:
        for b in range(nr):
            alpha = params[r0 + b, PARAM_ALPHA]
            nla[b] = -np.log(alpha) if alpha > 0 else np.float32(0.0)
    for a in range(nq):
        q = cell_q[j0 + a]
        kq, iq = bk[q], bi[q]
        off = qo[q] if qo.shape[0] else np.float32(0.0)
        for b in range(nr):
            r = r0 + b
            if masked and params[r, PARAM_ALPHA] <= 0:
                continue
            key = sqnorms[r] - np.float32(2.0) * (dots[a, b] + off)
            if splat:
                key = _splat_key(key, qnorms[q], params[r, PARAM_KAPPA], nla[b])
            _insert(kq, iq, key, r)


@njit(fastmath=True, inline="always")
def _block(qsrc, cell_q, j0, nq, src, s0, r0, nr, dots, sqnorms, qnorms, qo, params,
           masked, splat, nla, bk, bi):
    """One block: the dot products of queries ``qsrc[cell_q[j0 : j0 + nq]]`` with rows
    ``src[s0 : s0 + nr]`` (row ``r0`` onwards of the cell: ``src`` is the rows, or a
    block of them widened from codes), then their keys into each query's top-k."""
    _block_dots(qsrc, cell_q, j0, nq, src, s0, nr, dots)
    _block_keys(dots, cell_q, j0, nq, r0, nr, sqnorms, qnorms, qo, params, masked, splat,
                nla, bk, bi)


@njit(fastmath=True, inline="always")
def _direct_row(x, r, qs, cell_q, s0, g, sqnorms, qnorms, qo, params, splat, bk, bi):
    """Row ``x`` (row ``r``) against the few queries of a cell probed by fewer than a
    tile's worth: one dot product each, its key offered at once (no block)."""
    nla = -np.log(params[r, PARAM_ALPHA]) if splat else np.float32(0.0)
    for j in range(g):
        q = cell_q[s0 + j]
        dot = _dot(x, qs[q])
        if qo.shape[0]:
            dot += qo[q]
        key = sqnorms[r] - np.float32(2.0) * dot
        if splat:
            key = _splat_key(key, qnorms[q], params[r, PARAM_KAPPA], nla)
        _insert(bk[q], bi[q], key, r)


@njit(fastmath=True, cache=True, nogil=True)
def _scan_cells(queries, qnorms, rows, sqnorms, params, mode, item_lo, item_hi,
                item_start, item_count, cell_q, worker_items, worker_start, out_k, out_i,
                scratch, t):
    """Worker ``t`` scans the work items ``worker_items[worker_start[t]:worker_start[t+1]]``
    (a probed cell, or a piece of one: see ``_work_items``) and keeps its own top-k per
    query in ``out_k[t], out_i[t]`` (sorted by key, then by row). Workers run on the cpu
    backend's thread pool (the GIL is released), not on Numba's threading layer: GNU
    OpenMP aborts a forked child, and the workqueue layer cannot be called from two
    threads at once. A cell's rows are read once for all the
    queries that probe it: row ``r`` is compared with each query
    ``cell_q[item_start[c] : item_start[c] + item_count[c]]``; when a cell has more
    queries than rows (HRM2's fine k-means: a coarse cell's few centroids, probed by all
    its rows), the loops swap, so that the smaller side is the one kept in cache. A cell
    probed by at least ``QUERY_TILE`` queries goes in blocks of ``query_block(d)``
    queries x ``ROW_BLOCK`` rows: first the block's dot products in register tiles
    (``_block_dots``, into ``scratch[t]``), then its keys (``_block_keys``); one probed
    by fewer, row by row (``_direct_row``). Which of them computes a pair depends only on
    the pair's cell and its place there, never on the workers, so keys are the same
    bits whatever the number of threads.

    ``params`` with no rows: no mask. Otherwise (float32[n, PARAM_WIDTH]) rows with
    ``alpha <= 0`` are skipped and, in ``mode == MODE_SPLAT``, the key is
    ``kappa * d2 - log(alpha)``; else it is ``||x||^2 - 2 q.x`` (the order of ``d2``
    for one query)."""
    masked = params.shape[0] > 0
    splat = masked and mode == MODE_SPLAT
    bk = out_k[t]
    bi = out_i[t]
    dots = scratch[t]
    qb = dots.shape[0]  # queries per block (query_block(d))
    nla = np.empty(ROW_BLOCK, np.float32)
    qo = np.empty(0, np.float32)  # no offset term
    for w in range(worker_start[t], worker_start[t + 1]):
        c = worker_items[w]
        s0, g = item_start[c], item_count[c]
        lo, hi = item_lo[c], item_hi[c]
        if g < QUERY_TILE:  # a few queries: each row's dot products straight to keys
            for r in range(lo, hi):
                if not (masked and params[r, PARAM_ALPHA] <= 0):
                    _direct_row(rows[r], r, queries, cell_q, s0, g, sqnorms, qnorms, qo,
                                params, splat, bk, bi)
        elif g > hi - lo:  # more queries than rows (k-means: a cell's few centroids)
            for j in range(0, g, qb):  # the cell's rows stay in cache
                for r in range(lo, hi, ROW_BLOCK):
                    _block(queries, cell_q, s0 + j, min(qb, g - j), rows, r, r,
                           min(ROW_BLOCK, hi - r), dots, sqnorms, qnorms, qo, params,
                           masked, splat, nla, bk, bi)
        else:  # each row read once from memory for all the cell's queries
            for r in range(lo, hi, ROW_BLOCK):
                for j in range(0, g, qb):
                    _block(queries, cell_q, s0 + j, min(qb, g - j), rows, r, r,
                           min(ROW_BLOCK, hi - r), dots, sqnorms, qnorms, qo, params,
                           masked, splat, nla, bk, bi)

@njit(fastmath=True, cache=True, nogil=True)
def _scan_fp16(queries, qnorms, codes, qs, qo, sqnorms, params, mode, item_lo, item_hi,
               item_start, item_count, cell_q, worker_items, worker_start, out_k, out_i,
               scratch, decoded, t):
    """``_scan_codes`` compiled for float16 codes (the kind a constant: a branch on it
    inside the row loop costs more than the row)."""
    _scan_codes(queries, qnorms, codes, 1, qs, qo, sqnorms, params, mode, item_lo, item_hi,
                item_start, item_count, cell_q, worker_items, worker_start, out_k, out_i,
                scratch, decoded, t)


@njit(fastmath=True, cache=True, nogil=True)
def _scan_sq8(queries, qnorms, codes, qs, qo, sqnorms, params, mode, item_lo, item_hi,
              item_start, item_count, cell_q, worker_items, worker_start, out_k, out_i,
              scratch, decoded, t):
    """``_scan_codes`` compiled for SQ8 codes."""
    _scan_codes(queries, qnorms, codes, 2, qs, qo, sqnorms, params, mode, item_lo, item_hi,
                item_start, item_count, cell_q, worker_items, worker_start, out_k, out_i,
                scratch, decoded, t)


@njit(fastmath=True, inline="always")
def _scan_codes(queries, qnorms, codes, kind, qs, qo, sqnorms, params, mode, item_lo,
                item_hi, item_start, item_count, cell_q, worker_items, worker_start, out_k,
                out_i, scratch, decoded, t):
    """``_scan_cells`` over codes, on the same keys (``sqnorms``: the decoded rows'
    squared norms), block by block: each block of rows is widened once into
    ``decoded[t]`` (``_decode_block``) for all the queries probing its cell, then goes
    through the same register tiles as float32 rows, with ``q . x = qo[q] + qs[q] . w``
    (``w`` the widened row; float16: ``qs = q``, ``qo = 0``; SQ8: ``w`` the codes,
    ``qs = q * scale`` and ``qo = q . offset``)."""
    masked = params.shape[0] > 0
    splat = masked and mode == MODE_SPLAT
    bk = out_k[t]
    bi = out_i[t]
    dots = scratch[t]
    qb = dots.shape[0]
    xb = decoded[t]
    xbits = xb.view(np.uint32)
    x1 = np.empty(xb.shape[1], np.float32)  # the one row of the few-queries path
    x1bits = x1.view(np.uint32)
    nla = np.empty(ROW_BLOCK, np.float32)
    for w in range(worker_start[t], worker_start[t + 1]):
        c = worker_items[w]
        s0, g = item_start[c], item_count[c]
        lo, hi = item_lo[c], item_hi[c]
        if g < QUERY_TILE:  # a few queries: one row widened at a time
            for r in range(lo, hi):
                if not (masked and params[r, PARAM_ALPHA] <= 0):
                    _decode_row(codes[r], kind, x1, x1bits)
                    _direct_row(x1, r, qs, cell_q, s0, g, sqnorms, qnorms, qo, params,
                                splat, bk, bi)
            continue
        for r in range(lo, hi, ROW_BLOCK):
            nr = min(ROW_BLOCK, hi - r)
            _decode_block(codes, kind, r, nr, xb, xbits)
            for j in range(0, g, qb):
                _block(qs, cell_q, s0 + j, min(qb, g - j), xb, 0, r, nr, dots, sqnorms,
                       qnorms, qo, params, masked, splat, nla, bk, bi)


@njit(fastmath=True, inline="always")
def _decode_row(code, kind, out, bits):
    """One row of codes widened to float32 into ``out`` (``bits``: the same memory as
    uint32). Kind 1, float16: the bits moved into float32 position and scaled by 2^112
    (exact for every finite half, subnormals included). Kind 2, SQ8: each byte as a
    float (0 .. 255)."""
    d = out.shape[0]
    if kind == 1:
        big = np.float32(5.192296858534828e33)  # 2 ** 112
        for e in range(d):
            h = np.uint32(code[e])
            bits[e] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | \
                ((h & np.uint32(0x8000)) << np.uint32(16))
        for e in range(d):
            out[e] *= big
    else:
        for e in range(d):
            out[e] = np.float32(code[e])


@njit(fastmath=True, inline="always")
def _decode_block(codes, kind, r0, nr, out, bits):
    """Rows ``r0 .. r0 + nr`` of the codes widened into ``out[:nr]`` (``_decode_row``)."""
    for b in range(nr):
        _decode_row(codes[r0 + b], kind, out[b], bits[b])


@njit(cache=True, nogil=True)
def _group_probes(probes, lo, hi):
    """Counting sort of the (query, cell) probes by cell, skipping empty cells and -1:
    the queries of cell c are ``cell_q[cell_start[c] : cell_start[c + 1]]``, in query
    order."""
    C = lo.shape[0]
    cell_start = np.zeros(C + 1, dtype=np.int64)
    seen = np.full(C, -1, dtype=np.int64)  # a cell listed twice by one query counts once
    for i in range(probes.shape[0]):
        for j in range(probes.shape[1]):
            c = probes[i, j]
            if c >= 0 and hi[c] > lo[c] and seen[c] != i:
                seen[c] = i
                cell_start[c + 1] += 1
    for c in range(C):
        cell_start[c + 1] += cell_start[c]
    fill = cell_start[:-1].copy()
    cell_q = np.empty(cell_start[C], dtype=np.int64)
    for i in range(probes.shape[0]):
        for j in range(probes.shape[1]):
            c = probes[i, j]
            if c >= 0 and hi[c] > lo[c] and (fill[c] == cell_start[c]
                                             or cell_q[fill[c] - 1] != i):
                cell_q[fill[c]] = i
                fill[c] += 1
    return cell_start, cell_q

@njit(fastmath=True, inline="always")
def _nearest_fine(qq, coarse, fine, fine_lo, fine_hi, p1, bd, bc):
    """The ``p1`` nearest coarse centroids of ``qq``, then the ``bd.shape[0]`` nearest
    fine centroids among their fine cells into ``bd`` / ``bc``, nearest first (ties:
    smaller index)."""
    cd = np.full(p1, np.inf, dtype=np.float32)
    cc = np.full(p1, -1, dtype=np.int64)
    for c in range(coarse.shape[0]):
        _insert(cd, cc, _sqdist(qq, coarse[c]), c)
    for j in range(p1):
        c = cc[j]
        if c < 0:
            continue
        for f in range(fine_lo[c], fine_hi[c]):
            _insert(bd, bc, _sqdist(qq, fine[f]), f)

@njit(fastmath=True, cache=True, nogil=True)
def _route(queries, coarse, fine, fine_lo, fine_hi, p1, out_cells, out_d2, start, stop):
    """Per query ``start .. stop``: the ``p1`` nearest coarse centroids, then the
    ``out_cells.shape[1]`` nearest fine centroids among their fine cells, nearest first
    (ties: smaller index). Squared distances in the direct form (the adaptive bound
    subtracts cell radii)."""
    for i in range(start, stop):
        _nearest_fine(queries[i], coarse, fine, fine_lo, fine_hi, p1, out_d2[i],
                      out_cells[i])


INLINE_WORK = 2_000_000  # multiply-adds under which a cell scan skips the thread pool


PLAIN_EXPONENT = (127 + 50) << 23  # float32 bits from 2**50 up (inf and NaN included)


@njit(cache=True, nogil=True, inline="always")
def _plain(bits):
    """Whether every float32 of ``bits`` (their uint32 view) is finite and under 2**50 in
    magnitude, so that no squared distance of it overflows for any d < 2**28. Integer
    tests: the fastmath of a caller (which Numba also compiles its callees with) assumes
    finite floats, and would fold a float test away."""
    for e in range(bits.shape[0]):
        if (bits[e] & 0x7F800000) >= PLAIN_EXPONENT:
            return False
    return True


@njit(fastmath=True, inline="always")
def _route_one(q, coarse, fine, fine_lo, fine_hi, p1, out_cells):
    """``out_cells`` (-1 pad): the query's nearest fine cells, as ``_route``."""
    out_cells[:] = -1
    fd = np.full(out_cells.shape[0], np.inf, dtype=np.float32)
    _nearest_fine(q, coarse, fine, fine_lo, fine_hi, p1, fd, out_cells)


@njit(fastmath=True, inline="always")
def _fp16_d2(q, code, buf, bits):
    """Squared distance of ``q`` to a float16 row (its bits ``code``), widened into
    ``buf`` first (``bits``: its memory as uint32)."""
    _decode_row(code, 1, buf, bits)
    return _sqdist(q, buf)


@njit(fastmath=True, inline="always")
def _ids_of(pos, ids, out_ids):
    for j in range(pos.shape[0]):
        out_ids[j] = ids[pos[j]] if pos[j] >= 0 else -1


@njit(fastmath=True, inline="always")
def _row_d2(r, a):
    """Squared distance of the query ``a[0]`` to float32 row ``r`` of ``a[1]``."""
    return _sqdist(a[0], a[1][r])


@njit(fastmath=True, inline="always")
def _sq8_row_key(r, a):
    """The ranking key ``|w|^2 - 2 q.w`` of the decoded SQ8 row ``w`` at ``r`` (its d2
    less ``|q|^2``, as the batch scan ranks): ``a`` is ``(q * scale, q . offset, the
    decoded rows' |w|^2, codes)``; one multiply-add per byte."""
    qs, code = a[0], a[3][r]
    s = np.float32(0.0)
    for e in range(qs.shape[0]):
        s += qs[e] * np.float32(code[e])
    return a[2][r] - np.float32(2.0) * (s + a[1])


@njit(fastmath=True, inline="always")
def _fp16_row_d2(r, a):
    """``_fp16_d2`` of row ``r``: ``a`` is ``(q, codes, buf, bits)``."""
    return _fp16_d2(a[0], a[1][r], a[2], a[3])


@njit(fastmath=True, inline="always")
def _scan_probed(score, a, cells, C, lo, hi, dead, spill_of, bd, bp):
    """Every live row of the fine cells ``cells`` (-1 skipped; main range ``c`` and
    overflow range ``c + C``) into the sorted lists ``bd`` / ``bp`` by ``score(r, a)``
    (ties: smaller row). With spilled copies (``spill_of`` not empty; ``n`` positions,
    ``dead.shape[0]``), range ``c + 2C`` holds code rows ``n + j``, copies of position
    ``spill_of[j]``: they go in at that position, so a position may come twice. Returns
    ``(cells scanned, rows scanned)``, dead rows and spilled copies counted."""
    ncells = 0
    nrows = 0
    n = dead.shape[0]
    for j in range(cells.shape[0]):
        f = cells[j]
        if f < 0:
            continue
        ncells += 1
        for g in (f, f + C):
            nrows += hi[g] - lo[g]
            for r in range(lo[g], hi[g]):
                if not dead[r]:
                    _insert(bd, bp, score(r, a), r)
        if spill_of.shape[0]:
            g = f + 2 * C
            nrows += hi[g] - lo[g]
            for r in range(lo[g], hi[g]):
                p = spill_of[r - n]
                if not dead[p]:
                    _insert(bd, bp, score(r, a), p)
    return ncells, nrows


@njit(fastmath=True, inline="always")
def _holds(pos, p):
    for j in range(pos.shape[0]):
        if pos[j] == p:
            return True
    return False


@njit(fastmath=True, inline="always")
def _project_one(q, basis, mean):
    """``basis (q - mean)``: the query in a projecting codec's space."""
    n = basis.shape[0]
    out = np.empty(n, dtype=np.float32)
    c = q - mean
    for j in range(n):
        out[j] = _dot(basis[j], c)
    return out


@njit(fastmath=True, cache=True, nogil=True)
def _search_one(q, coarse, fine, fine_lo, fine_hi, p1, codes, kind, offset, scale, code_sq,
                basis, mean, rerank, rows, lo, hi, spill_of, dead, ids, out_cells, out_d2,
                out_pos, out_ids):
    """One query, one compiled call: the ``p1`` nearest coarse cells (at most all), the
    ``out_cells.shape[0]`` nearest fine cells among theirs (as ``_route``), then every row
    of those cells (main range ``c`` and overflow range ``c + C``, C fine cells) ranked by
    its squared distance in the direct form, ties by the smaller row; rows with ``dead[r]``
    set are skipped; ``out_ids`` are the ``ids`` of the positions found. The outputs are
    filled here (pads: -1 cells, inf / -1 results).

    ``kind`` 0 ranks the float32 ``rows`` (``codes`` and the rest unused). Kinds 1 and 2
    rank the codes (``_code_view``'s ``codes`` and ``kind``; ``offset`` and ``scale`` of
    the codec; SQ8 ranks on the batch scan's key, with the decoded rows' norms
    ``code_sq``) for the ``rerank * k`` best rows by squared distance to the decoded
    rows, then rank those again on the float32 rows, as the batch path re-ranks. A codec with a
    projection (``basis`` with rows, and ``mean``; else both empty) scans the codes with
    the projected query (``Codec.queries``). With spilled copies (``spill_of``, see
    ``_scan_probed``; ``lo`` / ``hi`` then the code ranges) a row found twice among the
    candidates is ranked once.

    Returns ``(cells scanned, rows scanned)``, dead rows counted (what the scan read), or
    ``(-1, -1)`` with nothing done when a value of ``q`` is not :func:`_plain` (NaN, inf,
    or huge: the caller's general path then validates it, and refuses it or searches
    it)."""
    if not _plain(q.view(np.uint32)):
        return -1, -1
    C = fine.shape[0]
    out_d2 = out_d2[0]  # (1, k) outputs, as the caller returns them
    out_pos = out_pos[0]
    out_d2[:] = np.inf
    out_pos[:] = -1
    ncand = max(1, rerank) * out_d2.shape[0]
    _route_one(q, coarse, fine, fine_lo, fine_hi, min(max(1, p1), coarse.shape[0]), out_cells)
    if kind == 0:
        counts = _scan_probed(_row_d2, (q, rows), out_cells, C, lo, hi, dead, spill_of,
                              out_d2, out_pos)
    else:
        bd = np.full(ncand, np.inf, dtype=np.float32)  # the candidates, on the codes
        bp = np.full(ncand, -1, dtype=np.int64)
        qc = _project_one(q, basis, mean) if basis.shape[0] else q
        if kind == 2:
            counts = _scan_probed(_sq8_row_key, (qc * scale, _dot(qc, offset), code_sq,
                                                 codes), out_cells, C, lo, hi, dead,
                                  spill_of, bd, bp)
        else:
            buf = np.empty(qc.shape[0], dtype=np.float32)
            counts = _scan_probed(_fp16_row_d2, (qc, codes, buf, buf.view(np.uint32)),
                                  out_cells, C, lo, hi, dead, spill_of, bd, bp)
        for j in range(ncand):
            p = bp[j]
            if p >= 0 and not (spill_of.shape[0] > 0 and _holds(out_pos, p)):
                _insert(out_d2, out_pos, _sqdist(q, rows[p]), p)
    _ids_of(out_pos, ids, out_ids[0])
    return counts


_NO_CODES = (np.zeros((0, 0), np.uint8), 0, np.zeros(0, np.float32), np.zeros(0, np.float32),
             np.zeros(0, np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.float32))


@njit(fastmath=True, cache=True, nogil=True)
def _project(queries, basis, mean, out):
    for i in range(queries.shape[0]):
        out[i] = _project_one(queries[i], basis, mean)


def project(queries, basis, mean):
    """``_project_one`` of each of the float32 ``queries`` (m, d): float32[m, N]."""
    out = np.empty((queries.shape[0], basis.shape[0]), dtype=np.float32)
    _project(np.ascontiguousarray(queries, dtype=np.float32), basis, mean, out)
    return out


def one_searcher(coarse, fine, fine_ranges, ranges, rows, codes=None, codec=None,
                 spill_of=None, code_sq=None):
    """``search(q, p1, p2, dead, ids, k, rerank) -> (cells int64[p2], d2 float32[1, k],
    positions int64[1, k], ids int64[1, k], cells scanned, rows scanned)``: ``_search_one``
    over this layout (made once per layout, not per query) for the C-contiguous float32
    query ``q`` (1-D), over the codes with ``rerank * k`` candidates where ``codes`` (and
    their ``codec``, ``m2m_gpu.codecs.Codec``) are given; ``ranges`` are then the code
    ranges, with the spilled copies of positions ``spill_of`` (when given), and
    ``code_sq`` the decoded code rows' squared norms (None: computed here). ``dead``
    (bool) and ``ids`` are read at each call: removals change them in place. ``p2`` >= 1
    (more than the fine cells: all of them). The per-call steps are few on purpose: a query takes
    microseconds."""
    c = np.ascontiguousarray
    coarse, fine = c(coarse, dtype=np.float32), c(fine, dtype=np.float32)
    fine_lo, fine_hi = c(fine_ranges[:, 0], dtype=np.int64), c(fine_ranges[:, 1], dtype=np.int64)
    lo, hi = c(ranges[:, 0], dtype=np.int64), c(ranges[:, 1], dtype=np.int64)
    if codes is None:
        codes, kind, offset, scale, code_sq, basis, mean = _NO_CODES
    else:
        code_sq = c(code_sq if code_sq is not None and len(code_sq) == codes.shape[0]
                    else codec.sqnorms(codes), dtype=np.float32)
        codes, kind, dq = _code_view(codes, codec.d, codec.dequant)
        offset, scale = c(dq[0], dtype=np.float32), c(dq[1], dtype=np.float32)
        basis, mean = _NO_CODES[5:] if codec.basis is None else \
            (c(codec.basis, dtype=np.float32), c(codec.mean, dtype=np.float32))
    spill_of = c(np.zeros(0, np.int64) if spill_of is None else spill_of, dtype=np.int64)
    C = fine.shape[0]
    kernel, empty, f32, i64 = _search_one, np.empty, np.float32, np.int64

    def search(q, p1, p2, dead, ids, k, rerank=1):
        cells = empty(p2 if p2 < C else C, i64)
        d2, pos, out_ids = empty((1, k), f32), empty((1, k), i64), empty((1, k), i64)
        ncells, nrows = kernel(q, coarse, fine, fine_lo, fine_hi, p1, codes, kind, offset,
                               scale, code_sq, basis, mean, rerank, rows, lo, hi, spill_of,
                               dead, ids, cells, d2, pos, out_ids)
        return cells, d2, pos, out_ids, ncells, nrows

    return search


def scan_cells(queries, rows, sqnorms, ranges, probes, k, mode, params=None, pool=None,
               dequant=None):
    """Each query's k best rows among the cells it probes: ``(keys, ids)`` of shape
    ``(m, k)``, sorted, with ``inf`` / ``-1`` where fewer than k rows were reachable. Keys
    are the ranking keys of ``_scan_cells`` (not yet finished in the direct form).
    ``rows`` float32, or codes (``float16[n, d]``, or SQ8 ``uint32`` words with
    ``dequant``, see :mod:`m2m_gpu.codecs`): then ``_scan_codes`` ranks the decoded rows
    on the same keys (``sqnorms``: the decoded rows' squared norms)."""
    m = queries.shape[0]
    lo = np.ascontiguousarray(ranges[:, 0], dtype=np.int64)
    hi = np.ascontiguousarray(ranges[:, 1], dtype=np.int64)
    cell_start, cell_q = _group_probes(np.ascontiguousarray(probes, dtype=np.int64), lo, hi)
    count = np.diff(cell_start)
    cells = np.flatnonzero(count)  # probed, non-empty cells
    # Work too small to pay for waking the pool (a single query, a few cells) runs here.
    work = int(((hi[cells] - lo[cells]) * count[cells]).sum())
    nthreads = 1 if work * queries.shape[1] < INLINE_WORK else \
        max(1, pool.threads if pool is not None else 1)
    qb = query_block(queries.shape[1])
    item_lo, item_hi, item_start, item_count = _work_items(
        lo[cells], hi[cells], cell_start[cells], count[cells], nthreads, qb)
    # Balance the workers: items by decreasing cost (rows x queries), dealt round-robin.
    cost = (item_hi - item_lo) * item_count
    nthreads = max(1, min(nthreads, cost.size))
    by_cost = np.argsort(-cost, kind="stable")
    deal = [by_cost[t::nthreads] for t in range(nthreads)]
    worker_items = np.concatenate(deal).astype(np.int64)
    worker_start = np.concatenate([[0], np.cumsum([len(x) for x in deal])]).astype(np.int64)
    out_k = np.full((nthreads, m, k), np.inf, dtype=np.float32)
    out_i = np.full((nthreads, m, k), -1, dtype=np.int64)
    params = np.zeros((0, PARAM_WIDTH), np.float32) if params is None else \
        np.ascontiguousarray(params, dtype=np.float32)  # (no copy when already so)
    qnorms = np.einsum("ij,ij->i", queries, queries).astype(np.float32)
    plan = (params, int(mode), item_lo, item_hi, item_start, item_count, cell_q,
            worker_items, worker_start, out_k, out_i)
    dots = np.empty((nthreads, qb, ROW_BLOCK), np.float32)
    if rows.dtype == np.float32:
        args = (queries, qnorms, rows, sqnorms) + plan + (dots,)
        _run(pool, lambda t: _scan_cells(*args, t), range(nthreads))
    else:
        codes, kind, dq = _code_view(rows, queries.shape[1], dequant)
        qs = np.ascontiguousarray(queries * dq[1], dtype=np.float32)
        qo = (queries @ dq[0]).astype(np.float32)
        decoded = np.empty((nthreads, ROW_BLOCK, queries.shape[1]), np.float32)
        args = (queries, qnorms, codes, qs, qo, np.ascontiguousarray(
            sqnorms, dtype=np.float32)) + plan + (dots, decoded)
        kernel = _scan_fp16 if kind == 1 else _scan_sq8
        _run(pool, lambda t: kernel(*args, t), range(nthreads))
    if nthreads == 1:
        return out_k[0], out_i[0]
    _merge_workers(out_k, out_i)  # into out_k[0], out_i[0]: (key, id), -1 last
    return out_k[0], out_i[0]


@njit(cache=True, nogil=True)
def _merge_workers(out_k, out_i):
    """Every worker's sorted top-k per query merged into worker 0's lists, in place, by
    (key, id): each entry of the others offered to them (padding, ``inf`` and -1, never
    displaces anything)."""
    for q in range(out_k.shape[1]):
        bk, bi = out_k[0, q], out_i[0, q]
        for t in range(1, out_k.shape[0]):
            for j in range(out_k.shape[2]):
                if out_i[t, q, j] < 0:
                    break
                _insert(bk, bi, out_k[t, q, j], out_i[t, q, j])


# rows of at most this many entries are sorted by the compiled loop: an insertion sort,
# O(k) on the nearly sorted rows it gets (a scan's k best, finished in the direct form or
# ranked again exactly after a compressed scan), where lexsort's setup costs more
SMALL_SORT = 256


@njit(cache=True, nogil=True)
def _sort_small_rows(keys, ids, d2):
    """Each row sorted in place by (key, id; -1 last), ``d2`` carried along: insertion
    sort, for the few entries of a scan's result (no fastmath: the padding keys are inf;
    keys are never NaN here, where lexsort would put them last)."""
    for r in range(keys.shape[0]):
        kr, ir, dr = keys[r], ids[r], d2[r]
        for j in range(1, kr.shape[0]):
            key, i, d = kr[j], ir[j], dr[j]
            tie = i if i >= 0 else np.iinfo(np.int64).max
            p = j
            while p > 0:
                prev = ir[p - 1] if ir[p - 1] >= 0 else np.iinfo(np.int64).max
                if kr[p - 1] > key or (kr[p - 1] == key and prev > tie):
                    kr[p], ir[p], dr[p] = kr[p - 1], ir[p - 1], dr[p - 1]
                    p -= 1
                else:
                    break
            kr[p], ir[p], dr[p] = key, i, d


def sort_scan_rows(keys, ids, d2):
    """``ops.topk.sort_rows`` for the (keys, ids, d2) a scan made (arrays the caller owns,
    which may be sorted in place: use the returned ones): compiled for rows of at most
    ``SMALL_SORT`` entries, else NumPy's lexsort."""
    if keys.shape[1] > SMALL_SORT or not keys.size:
        return topk_sort_rows(keys, ids, d2)
    keys, ids, d2 = (np.ascontiguousarray(a) for a in (keys, ids, d2))
    _sort_small_rows(keys, ids, d2)
    return keys, ids, d2


def _work_items(lo, hi, start, count, nthreads, qblock=QUERY_TILE):
    """The scan's work items ``(row_lo, row_hi, query_start, query_count)``: one per probed
    cell, except that a cell costing more than a worker's share (``1 / nthreads`` of all
    the rows x queries) is cut, along its longer side (its queries, as a coarse cell's
    rows probing its few centroids in HRM2's fine k-means, or its rows), into pieces of
    about half a share, so that one big cell does not leave the other workers idle. The
    cuts fall on the kernel's blocks (every ``qblock`` queries or ``ROW_BLOCK`` rows from
    the cell's start) and leave no piece with fewer than ``QUERY_TILE`` queries, so each
    pair is computed by the same tile as without the cut; and each worker keeps its own
    top-k per query, merged by (key, row): results do not depend on the cut."""
    rows = hi - lo
    cost = rows * count
    if nthreads < 2 or not cost.size or cost.max() * nthreads <= cost.sum():
        return lo, hi, start, count
    share = max(1, int(cost.sum()) // nthreads)
    by_q = count >= rows
    side = np.where(by_q, count, rows)
    parts = np.where(cost > share, np.clip(-(-2 * cost // share), 1, side), 1)
    of = np.repeat(np.arange(cost.size), parts)
    t = np.arange(of.size) - np.repeat(np.cumsum(parts) - parts, parts)
    q = by_q[of]
    unit = np.where(q, qblock, ROW_BLOCK)  # cuts on the kernel's blocks
    a = t * side[of] // parts[of] // unit * unit
    b = np.where(t + 1 == parts[of], side[of], (t + 1) * side[of] // parts[of] // unit * unit)
    keep = b > a  # cuts rounded onto the same block leave empty pieces
    of, q, a, b = of[keep], q[keep], a[keep], b[keep]
    # a cut never leaves fewer than a tile of queries (the kernel would change): the
    # last piece of a cell joins the one before it (of the same cell: the pieces of a
    # cell now tile it from its start) when it would
    last = np.append(of[1:] != of[:-1], True)
    short = q & last & (b - a < QUERY_TILE) & (a > 0)
    b[np.flatnonzero(short) - 1] = b[short]
    of, q, a, b = of[~short], q[~short], a[~short], b[~short]
    return (np.where(q, lo[of], lo[of] + a), np.where(q, hi[of], lo[of] + b),
            np.where(q, start[of] + a, start[of]), np.where(q, b - a, count[of]))


def _code_view(rows, d, dequant):
    """``(codes, kind, dequant)`` as ``_scan_codes`` reads them: float16 rows as their
    uint16 bits (kind 1), SQ8 words as bytes (kind 2)."""
    if rows.dtype == np.float16:
        return (np.ascontiguousarray(rows).view(np.uint16), 1,
                np.stack([np.zeros(d, np.float32), np.ones(d, np.float32)]))
    return (np.ascontiguousarray(rows).view(np.uint8), 2,
            np.ascontiguousarray(dequant, dtype=np.float32))


def _run(pool, job, items) -> None:
    """``job`` over ``items``: the first on the calling thread, the others on the cpu
    backend's pool (rebuilt in forked children), so a batch wakes one thread fewer and
    the caller works instead of waiting. Returns once every item is done, even when one
    raises (then the first error is raised)."""
    items = list(items)
    if pool is None or len(items) == 1:
        for it in items:
            job(it)
        return
    futures = [pool._pool.submit(job, it) for it in items[1:]]
    try:
        job(items[0])
    finally:
        errors = [f.exception() for f in futures]  # waits for each
    for e in errors:
        if e is not None:
            raise e


@njit(fastmath=True, cache=True, nogil=True)
def _d2_at(queries, rows, pos, out, start, stop):
    """Direct-form squared distances of queries ``start .. stop`` to the rows at their
    positions ``pos`` (-1: +inf)."""
    for i in range(start, stop):
        for j in range(pos.shape[1]):
            p = pos[i, j]
            out[i, j] = np.inf if p < 0 else _sqdist(queries[i], rows[p])


def d2_at(queries, rows, pos, pool=None):
    """``float32[m, c]``: each query's squared distance to the rows ``pos[i]`` (the exact
    re-ranking of candidates found on codes)."""
    m = queries.shape[0]
    out = np.empty(pos.shape, np.float32)
    args = (np.ascontiguousarray(queries, dtype=np.float32), rows,
            np.ascontiguousarray(pos, dtype=np.int64), out)
    work = pos.size * queries.shape[1]
    parts = 1 if work < INLINE_WORK else max(1, min(pool.threads if pool else 1, m))
    edges = np.linspace(0, m, parts + 1).astype(np.int64)
    _run(pool, lambda i: _d2_at(*args, edges[i], edges[i + 1]), range(parts))
    return out


def route(queries, coarse, fine, fine_ranges, p1, p2, pool=None):
    """``(cells int64[m, p2] (-1 pad), d2 float32[m, p2] (inf pad))`` of ``_route``."""
    m = queries.shape[0]
    p1 = max(1, min(int(p1), coarse.shape[0]))
    p2 = max(1, min(int(p2), fine.shape[0]))
    cells = np.full((m, p2), -1, dtype=np.int64)
    d2 = np.full((m, p2), np.inf, dtype=np.float32)
    args = (np.ascontiguousarray(queries, dtype=np.float32),
            np.ascontiguousarray(coarse, dtype=np.float32),
            np.ascontiguousarray(fine, dtype=np.float32),
            np.ascontiguousarray(fine_ranges[:, 0], dtype=np.int64),
            np.ascontiguousarray(fine_ranges[:, 1], dtype=np.int64), p1, cells, d2)
    parts = max(1, min(pool.threads if pool is not None else 1, m // 64 or 1))
    edges = np.linspace(0, m, parts + 1).astype(np.int64)
    _run(pool, lambda i: _route(*args, edges[i], edges[i + 1]), range(parts))
    return cells, d2


@njit(cache=True, nogil=True)
def _kmeans_sums(x, assign, sums, counts):
    """``sums[a] += x[i]`` (float64) and ``counts[a] += 1`` for ``a = assign[i]``, rows in
    order: the same sums on every run."""
    for i in range(x.shape[0]):
        a = assign[i]
        counts[a] += 1
        s = sums[a]
        xi = x[i]
        for e in range(x.shape[1]):
            s[e] += np.float64(xi[e])


def kmeans_sums(x, assign, k):
    """``(float64[k, d] sums, int64[k] counts)`` of the rows of host float32 ``x`` per
    centroid ``assign[i]`` in ``[0, k)``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    assign = np.ascontiguousarray(assign, dtype=np.int64)
    if assign.size and (assign.min() < 0 or assign.max() >= k):
        raise ValueError(f"kmeans_sums: assignments outside [0, {k})")
    sums = np.zeros((k, x.shape[1]), np.float64)
    counts = np.zeros(k, np.int64)
    _kmeans_sums(x, assign, sums, counts)
    return sums, counts
