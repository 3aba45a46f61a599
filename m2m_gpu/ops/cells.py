"""HRM2's cell scan on the GPU backends: the driver, written once.

A query's probed cells are laid end to end in one candidate row (``cell_segments``); the
distance kernel (``cells_distance``) fills the row with keys, block of rows by block of
rows, and the radix select (``topk_select``) keeps the k best. Queries are scanned in
blocks: at most ``max_grid`` per launch (they go on grid y) and a key matrix within the
backend's tile budget. The cpu backend has its own scan (compiled loop or NumPy).
"""

from __future__ import annotations

import numpy as np

from ..backends.abi import (
    CELLS_DISTANCE,
    CODEC_F16,
    CODEC_F32,
    CODEC_SQ8,
    PARAM_ALPHA,
    PARAM_KAPPA,
    Key,
)
from ..codecs import check_codes
from .knn import Selector
from .splat import splat_d2
from .topk import sort_select_output


def cell_segments(ranges: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, int]:
    """HRM2 scan layout: per query, its probed cells' row ranges laid end to end.

    Returns ``(segs int64[m, p, 3], t)``: (row start, length, destination offset in the
    query's candidate row) per probe, and the longest candidate row. A query's segments go
    in row order (cells do not overlap), so candidate order is row order and the select's
    tie rule (smaller candidate index) is the index's (smaller position)."""
    safe = np.where(probes >= 0, probes, 0)
    start = ranges[safe, 0]
    length = np.where(probes >= 0, ranges[safe, 1] - ranges[safe, 0], 0)
    if start.size:
        order = np.argsort(np.where(length > 0, start, np.iinfo(np.int64).max), axis=1,
                           kind="stable")
        start = np.take_along_axis(start, order, 1)
        length = np.take_along_axis(length, order, 1)
    dst = np.cumsum(length, axis=1) - length
    segs = np.stack([start, length, dst], axis=-1).astype(np.int64)
    return segs, int(length.sum(axis=1).max()) if length.size else 0


def candidate_positions(segs: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Map candidate indexes (m, k) of cell_segments rows back to row positions (-1 kept)."""
    start, length, dst = segs[..., 0], segs[..., 1], segs[..., 2]
    c = cand[:, :, None]
    inside = (c >= dst[:, None, :]) & (c < (dst + length)[:, None, :])
    s = np.argmax(inside, axis=2)
    pos = np.take_along_axis(start, s, 1) + cand - np.take_along_axis(dst, s, 1)
    return np.where((cand >= 0) & inside.any(axis=2), pos, -1)


def finish_cell_scan(backend, keys, cand, segs, k, mode, params):
    """After a GPU cell scan's top-k (unsorted keys and candidate indexes, host): sort, map
    candidates to row positions (+inf keys: -1), recover d2 (splat keys:
    ``(key + log alpha) / kappa``), pad to k."""
    keys, cand = sort_select_output(np, keys, cand)
    cand = np.where(np.isinf(keys), -1, cand)
    pos = candidate_positions(segs, cand)
    d2 = np.where(pos >= 0, keys, np.inf).astype(np.float32)
    if params is not None and mode == Key.SPLAT:
        uniq, inv = np.unique(np.where(pos >= 0, pos, 0), return_inverse=True)
        pr = backend.gather_rows(params, uniq)[inv.reshape(pos.shape)]
        d2 = splat_d2(np, keys, pos, pr[..., PARAM_ALPHA], pr[..., PARAM_KAPPA], None)
    m, have = keys.shape
    if have < k:
        pad = lambda a, v: np.concatenate([a, np.full((m, k - have), v, a.dtype)], 1)  # noqa: E731
        return pad(keys, np.inf), pad(pos, -1), pad(d2, np.inf)
    return keys, pos, d2


def empty_scan(m: int, k: int):
    """The result of a cell scan that found no rows: ``(+inf, -1, +inf)`` everywhere."""
    return (np.full((m, k), np.inf, np.float32), np.full((m, k), -1, np.int64),
            np.full((m, k), np.inf, np.float32))


def device_scan(be, queries, rows, ranges: np.ndarray, probes: np.ndarray, k: int,
                mode: int, params=None, dequant=None):
    """Exact top-k of each query over the rows of its probed cells (see
    ``Backend.scan_cells``), on a GPU backend; ``rows`` float32, or codes (float16, SQ8
    words with ``dequant``) widened in the kernel."""
    m = probes.shape[0]
    _, t = cell_segments(ranges, probes)
    if m == 0 or t == 0:
        return empty_scan(m, k)
    kind = check_codes(rows, queries.shape[1], dequant)
    codec = {"f32": CODEC_F32, "fp16": CODEC_F16, "sq8": CODEC_SQ8}[kind]
    dq = None if codec != CODEC_SQ8 else np.ascontiguousarray(dequant, np.float32).ravel()
    step = max(1, min(be.max_grid, be.tile_budget_bytes // (4 * t)))
    parts = [_scan_block(be, qbuf, rows, ranges, probes[q0 : q0 + mq], k, mode, params,
                         queries.shape[1], codec, dq)
             for q0, mq, qbuf in be.query_blocks(queries, step)]
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def _scan_block(be, qbuf, rows, ranges, probes, k, mode, params, d, codec, dq):
    segs, t = cell_segments(ranges, probes)
    m, p = probes.shape
    if t == 0:
        return empty_scan(m, k)
    kk = min(k, t)
    key = mode if params is not None else Key.L2
    b = be.batch()
    dqbuf = None if dq is None else b.upload(dq)
    keys = b.scratch(m * t)
    best = [b.seeds(m * kk), b.seeds(m * kk)]
    for c, (first, count, xbuf, pbuf) in enumerate(be.row_blocks(rows, params)):
        # the segments' parts inside this block of rows, relative to its first row
        lo = np.maximum(segs[..., 0], first)
        hi = np.minimum(segs[..., 0] + segs[..., 1], first + count)
        length = np.maximum(hi - lo, 0)
        local = np.stack([np.where(length > 0, lo - first, 0), length,
                          segs[..., 2] + (lo - segs[..., 0])], -1)
        b.launch(CELLS_DISTANCE, (-(-t // CELLS_DISTANCE.local[0]), m, 1), qbuf, xbuf,
                 b.upload_ids(local), keys, m, d, t, p, int(key), pbuf, int(c == 0), dqbuf,
                 codec)
    Selector(be, b, m, t, kk).merge(keys, t, best[0], best[1], 0)
    kh, ch = (np.asarray(be.to_host(a)) for a in b.run(*best[1]))
    return finish_cell_scan(be, kh.reshape(m, kk), ch.reshape(m, kk).astype(np.int64), segs,
                            k, mode, params)
