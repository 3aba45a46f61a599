"""Exact top-k on the GPU backends: the tiled driver, written once.

Per block of queries: the database is read block of rows by block of rows (one block on
cuda, the buffers of a chunked array on vulkan), each in tiles of at most
``be.tile_rows(mq, rows)`` rows. For every tile the distance kernel (``knn_distance``, any
key code; ``knn_distance_rows`` for a few queries, which pads none) writes an (mq, t) key
tile and the radix select (``topk_select``) merges it into the running k best,
ping-ponging between two (keys, ids) buffers; for a few queries the selection is split
over many workgroups (``Selector``). The k survivors are
sorted by (key, id) at the end (``ops.topk.sort_select_output``). Blocks of queries hold at
most ``max_grid * 16`` rows: the distance kernel puts 16 queries per workgroup on grid y.
"""

from __future__ import annotations

import numpy as np

from ..backends.abi import (
    KNN_DISTANCE,
    KNN_DISTANCE_ROWS,
    SELECT_IDS,
    SELECT_NO_BEST,
    TOPK_SELECT,
    Key,
)
from .topk import sort_select_output

QUERIES_PER_GROUP = 16  # knn_distance: queries per workgroup (grid y)
ROWS_KERNEL_QUERIES = 4  # up to this many queries, knn_distance_rows (one query per group)
SPLIT_SELECT = True  # small batches split each tile's selection over many workgroups
MIN_PART = 2048  # ... each part holding at least this many keys (and 4 k)


def distance(b, q, mq: int, d: int, x, f16: bool, offset: int, t: int, out, key: int,
             params) -> None:
    """Launch the key tile ``out`` (mq x t) of queries ``q`` against rows ``offset ..
    offset + t`` of ``x``: ``knn_distance`` (16 queries x 64 rows per workgroup), or for a
    few queries ``knn_distance_rows`` (one query x 256 rows), which pads no queries."""
    if mq <= ROWS_KERNEL_QUERIES:
        spec, grid = KNN_DISTANCE_ROWS, (-(-t // KNN_DISTANCE_ROWS.local[0]), mq, 1)
    else:
        spec, grid = KNN_DISTANCE, (-(-t // 64), -(-mq // QUERIES_PER_GROUP), 1)
    b.launch(spec, grid, q, x, out, mq, t, d, offset, int(key), params, int(f16))


def select(b, tile, mq: int, t: int, k: int, best_in, best_out, id_base: int, *,
           segments: int = 1, tile_ids=None, no_best: bool = False) -> None:
    """Launch ``topk_select``: ``best_out`` = the k smallest of ``best_in`` and the (mq, t)
    tile (ids ``id_base + j``, or ``tile_ids``), ties to the smaller id; with ``segments``
    and ``no_best``, the k smallest of each part, into slots ``(row * segments + s) * k``."""
    flags = (SELECT_IDS if tile_ids is not None else 0) | (SELECT_NO_BEST if no_best else 0)
    b.launch(TOPK_SELECT, (mq, segments, 1), tile, tile_ids, best_in[0], best_in[1],
             best_out[0], best_out[1], t, k, id_base, segments, flags)


def segments_for(be, mq: int, t: int, k: int) -> int:
    """Parts a tile row of ``t`` keys is selected in: one workgroup per query row is
    enough for a batch, but a few queries would leave the device idle (one query over
    100K rows ran on one workgroup), so they get up to ``be.select_groups / mq`` parts."""
    if not SPLIT_SELECT:
        return 1
    want = -(-be.select_groups // mq)
    return max(1, min(be.max_grid, want, t // max(4 * k, MIN_PART)))


class Selector:
    """The selection step of one driver pass: ``merge`` folds an (mq, t) key tile into the
    running best, in one pass (one workgroup per row) or, for small batches, in two: the
    parts of the tile on their own (grid y = parts), then their k best each merged."""

    def __init__(self, be, b, mq: int, t_max: int, k: int) -> None:
        self.be, self.b, self.mq, self.k = be, b, mq, k
        self.parts_max = segments_for(be, mq, t_max, k)
        self.part = b.seeds(mq * self.parts_max * k) if self.parts_max > 1 else None

    def merge(self, tile, t: int, best_in, best_out, id_base: int) -> None:
        b, mq, k = self.b, self.mq, self.k
        parts = min(self.parts_max, segments_for(self.be, mq, t, k))
        if parts <= 1:
            select(b, tile, mq, t, k, best_in, best_out, id_base)
            return
        select(b, tile, mq, t, k, best_in, self.part, id_base, segments=parts, no_best=True)
        select(b, self.part[0], mq, parts * k, k, best_in, best_out, 0, tile_ids=self.part[1])


def device_topk(be, queries, database, k: int, key: int, params=None):
    """``(keys float32[m, k], ids int64[m, k])``, best first, in ``be.result_xp`` arrays;
    ``1 <= k <= n``. ``key``: an ``abi.Key`` code; ``params`` are read for the splat
    codes. ``database`` float32 or float16 (widened in the kernel)."""
    xp = be.result_xp
    d = database.shape[1]
    f16 = database.dtype == np.float16
    blocks = list(be.row_blocks(database, params))
    rows_cap = max((count for _, count, _, _ in blocks), default=1)
    out_k, out_i = [], []
    for _, mq, qbuf in be.query_blocks(queries, be.max_grid * QUERIES_PER_GROUP):
        t_max = be.tile_rows(mq, rows_cap)
        b = be.batch()
        tile = b.scratch(mq * t_max)
        best = [b.seeds(mq * k), b.seeds(mq * k)]
        selector = Selector(be, b, mq, t_max, k)
        side = 0
        for first, count, xbuf, pbuf in blocks:
            for off in range(0, count, t_max):
                t = min(t_max, count - off)
                distance(b, qbuf, mq, d, xbuf, f16, off, t, tile, key, pbuf)
                selector.merge(tile, t, best[side], best[1 - side], first + off)
                side = 1 - side
        keys, ids = b.run(*best[side])
        out_k.append(xp.asarray(keys).reshape(mq, k))
        out_i.append(xp.asarray(ids).reshape(mq, k))
    keys = out_k[0] if len(out_k) == 1 else xp.concatenate(out_k)
    ids = out_i[0] if len(out_i) == 1 else xp.concatenate(out_i)
    return sort_select_output(xp, keys, ids)


def device_knn(be, queries, database, k: int, metric: str):
    """Exact k-NN: squared L2 distances ascending (``l2``) or similarities descending
    (``ip``; cosine was reduced to ip on normalised rows by the caller)."""
    keys, ids = device_topk(be, queries, database, k, Key.L2 if metric == "l2" else Key.IP)
    return (keys if metric == "l2" else -keys), ids
