"""Exact k-NN on the host (the cpu backend's kernel): NumPy, BLAS and a thread pool.

Exact k-NN is memory-bound for a few queries and compute-bound for a batch, so there are
two paths:

* few queries (``m <= SMALL_BATCH``): one pass over the database per query, in tiles that
  stay in cache, spread over the backend's thread pool. ``np.einsum`` reads at memory
  bandwidth where BLAS ``gemv`` does not, and releases the GIL, so the threads run in
  parallel.
* a batch: ``(-2 Q) @ X_tile.T`` through BLAS per database tile, then a selection that
  keeps a running top-k per query and only looks at the tile entries that beat the current
  k-th key (after the first tile, a small fraction).

Both rank on ``||x||^2 - 2 q.x`` (the per-query ``||q||^2`` does not change the order), then
recompute the final k distances in the direct form ``sum((q - x)^2)`` so the reported
distances do not suffer the cancellation of the fast form near the query (SPEC section 1).
Ties: the (key, id) rule of ``ops.topk``. ``be`` is the cpu backend (its pool and BLAS
limit); the tuning constants below are what the tests shrink (``small_tiles``).
"""

from __future__ import annotations

import numpy as np

from .topk import select_k, sort_rows

SMALL_BATCH = 4  # up to this many queries, stream the database once per query
SCAN_TILE_ROWS = 4096  # rows per task in the streaming path (fits in L2 for d <= 64)
BATCH_TILE_BYTES = 1 << 20  # GEMM output tile of the batch path: stays in L2
FEW_ROWS = 1024  # k = 1 over at most this many rows (k-means' assign): GEMM, then argmin
QUERY_CHUNK = 1024  # most queries per block in the batch path
SEED_ROWS = 512  # merge_topk: rows of the first tile that seed a running top-k
GATHER_BUDGET_BYTES = 64 << 20  # re-ranking gathers at most this many bytes of rows at once


def host_knn(be, queries, database, k, metric, *, database_sqnorms=None):
    queries, database = c32(queries), rows32(database)
    m = queries.shape[0]
    if metric == "l2" and database_sqnorms is None:
        database_sqnorms = be.sqnorms(database)
    # Ranking key, smaller is better: ||x||^2 - 2 q.x  (l2)  or  -q.x  (ip).
    scale = np.float32(-2.0 if metric == "l2" else -1.0)
    if k == 1 and m > SMALL_BATCH and 0 < database.shape[0] <= FEW_ROWS:
        keys, ids = _nearest_of_few(be, queries * scale, database, database_sqnorms)
    elif m <= SMALL_BATCH:
        keys, ids = _select_streaming(be, queries * scale, database, database_sqnorms, k)
    else:
        keys, ids = _select_batched(be, queries * scale, database, database_sqnorms, k)
    return _finish(be, queries, database, keys, ids, metric)


def _select_streaming(be, scaled_q, database, sqnorms, k):
    m, n = scaled_q.shape[0], database.shape[0]
    keys = np.empty(n, dtype=np.float32)
    out_k = np.empty((m, k), dtype=np.float32)
    out_i = np.empty((m, k), dtype=np.int64)
    for row in range(m):
        q = scaled_q[row]

        def job(s: int, q=q) -> None:
            o = keys[s : s + SCAN_TILE_ROWS]
            np.einsum("ij,j->i", f32(database[s : s + SCAN_TILE_ROWS]), q, out=o)
            if sqnorms is not None:
                o += sqnorms[s : s + SCAN_TILE_ROWS]

        list(be._pool.map(job, range(0, n, SCAN_TILE_ROWS)))
        out_k[row], out_i[row] = _select_row(keys, k)
    return out_k, out_i


def _nearest_of_few(be, scaled_q, database, sqnorms):
    """k = 1 over a few rows (k-means' assignment): each block's whole key matrix, one
    GEMM, then the first smallest key (ties: smaller row), query blocks on the pool."""
    m = scaled_q.shape[0]
    out_k = np.empty((m, 1), dtype=np.float32)
    out_i = np.empty((m, 1), dtype=np.int64)
    dt = np.ascontiguousarray(f32(database).T)
    rows = max(1, BATCH_TILE_BYTES // (4 * database.shape[0]))

    def job(block: tuple[int, int]) -> None:
        for a in range(block[0], block[1], rows):
            b = min(block[1], a + rows)
            keys = scaled_q[a:b] @ dt
            if sqnorms is not None:
                keys += sqnorms[None, :]
            i = np.argmin(keys, axis=1)
            out_i[a:b, 0] = i
            out_k[a:b, 0] = keys[np.arange(b - a), i]

    be._run_blocks(job, split_rows(m, be.threads, 1 << 20))
    return out_k, out_i


def _select_batched(be, scaled_q, database, sqnorms, k):
    qt_all = np.ascontiguousarray(scaled_q.T)

    def make_fill(a: int, b: int):
        qt = np.ascontiguousarray(qt_all[:, a:b])

        def fill(start: int, stop: int, out: np.ndarray) -> None:
            np.matmul(f32(database[start:stop]), qt, out=out)
            if sqnorms is not None:
                out += sqnorms[start:stop, None]  # the tile is still in cache

        return fill

    return blocked_topk(be, scaled_q.shape[0], database.shape[0], k, make_fill)


def blocked_topk(be, m, n, k, make_fill):
    """Batch path: split the queries over the thread pool, one BLAS thread each, so that
    the GEMM and the selection of every block run side by side on all cores.
    ``make_fill(a, b)`` returns the function that writes the key tile of queries a..b."""
    out_k = np.empty((m, k), dtype=np.float32)
    out_i = np.empty((m, k), dtype=np.int64)
    parts = split_rows(m, be.threads, QUERY_CHUNK)

    def job(block: tuple[int, int]) -> None:
        a, b = block
        out_k[a:b], out_i[a:b] = _select_block(be, b - a, n, k, make_fill(a, b))

    be._run_blocks(job, parts)
    return out_k, out_i


def _select_block(be, mq, n, k, fill):
    """Running top-k of one query block over cache-sized database tiles.

    ``fill(start, stop, out)`` writes the keys of database rows start..stop (rows down,
    queries across) while they stay in cache. Entries below the query's current k-th
    key are buffered, and the buffer is merged into the running top-k (which tightens
    the thresholds) when it fills up.
    """
    rows = max(k, BATCH_TILE_BYTES // (4 * mq))
    tile = np.empty((rows, mq), dtype=np.float32)
    best_k = np.full((mq, k), np.inf, dtype=np.float32)
    best_i = np.full((mq, k), -1, dtype=np.int64)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending_size, flush_at = 0, max(4 * k * mq, 1 << 16)

    def flush() -> None:
        nonlocal best_k, best_i, pending, pending_size
        if pending:
            keys, ids, qs = (np.concatenate(p) for p in zip(*pending, strict=True))
            best_k, best_i = merge_candidates(best_k, best_i, keys, ids, qs, k)
            pending, pending_size = [], 0

    bound = None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        s = tile[: stop - start]
        fill(start, stop, s)
        if bound is None:  # running set not full yet: take every entry
            best_k, best_i = merge_topk(best_k, best_i, s, start, k)
            if not np.isinf(best_k).any():
                bound = best_k.max(axis=1)
            continue
        flat = np.flatnonzero(s < bound)
        if flat.size == 0:
            continue
        r, c = np.divmod(flat, mq)
        pending.append((s[r, c], r + start, c))
        pending_size += flat.size
        if pending_size >= flush_at:
            flush()
            bound = best_k.max(axis=1)
    flush()
    return best_k, best_i


def _finish(be, queries, database, keys, ids, metric):
    """Exact distances for the selected ids, rows sorted best first."""
    if metric == "l2":
        return sort_rows(direct_d2(be, queries, database, ids), ids)
    keys, ids = sort_rows(keys, ids)
    return -keys, ids


def direct_d2(be, queries, mu, ids):
    m, k = ids.shape
    d = mu.shape[1]
    dist = np.empty((m, k), dtype=np.float32)
    step = max(1, GATHER_BUDGET_BYTES // max(1, 4 * k * d))
    for r in range(0, m, step):
        rows = f32(mu[ids[r : r + step]])  # (step, k, d), a fresh float32 copy
        rows -= queries[r : r + step, None, :]
        np.einsum("ijk,ijk->ij", rows, rows, out=dist[r : r + step])
    return dist


def d2_at(queries, rows, at, jit: bool) -> np.ndarray:
    """Direct-form d2 of each query ``i`` to the rows ``rows[at[i]]`` (host arrays): the
    compiled loop of ``_jit`` when ``jit``, else :func:`direct_d2`."""
    if jit:
        from ..backends import _jit

        return _jit.d2_at(queries, rows, at)
    return direct_d2(None, queries, rows, at)


def c32(a: np.ndarray) -> np.ndarray:
    """A kernel input as C-contiguous float32 (a no-op when it already is)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def rows32(a: np.ndarray) -> np.ndarray:
    """Database rows: float16 storage kept as it is, anything else C-contiguous float32."""
    return np.ascontiguousarray(a) if a.dtype == np.float16 else c32(a)


def f32(tile: np.ndarray) -> np.ndarray:
    """A database tile as float32: float16 rows (stored at half the bytes) are widened one
    cache-sized tile at a time; float32 tiles pass through untouched."""
    return tile if tile.dtype == np.float32 else tile.astype(np.float32)


def split_rows(m: int, parts: int, max_rows: int) -> list[tuple[int, int]]:
    """Split m rows into at least ``parts`` contiguous blocks of at most ``max_rows``."""
    count = max(parts, -(-m // max_rows))
    edges = np.linspace(0, m, min(count, m) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def merge_topk(best_k, best_i, tile, offset, k):
    """Fold a tile of keys into a running, unsorted top-k per query (smaller is better).

    ``tile`` is (rows, queries): database rows down, queries across (the GEMM's output
    layout). Entries below the query's current k-th key are merged in.
    """
    threshold = best_k.max(axis=1)
    if tile.shape[0] >= k and np.isinf(threshold).all():  # first tile: plain selection
        # ... over a seed of its rows only: argpartition costs ~10 ns an entry, many times
        # the GEMM's cost per entry, and the seed's k-th keys already reject most of the
        # rest of the tile, which is merged against them below.
        seed = min(tile.shape[0], max(SEED_ROWS, 32 * k))
        keys = np.ascontiguousarray(tile[:seed].T)
        cols = np.broadcast_to(np.arange(offset, offset + seed, dtype=np.int64), keys.shape)
        best_k, best_i = select_k(keys, cols, k)
        if seed == tile.shape[0]:
            return best_k, best_i
        return merge_topk(best_k, best_i, tile[seed:], offset + seed, k)
    rows, queries = np.nonzero(tile < threshold)
    return merge_candidates(best_k, best_i, tile[rows, queries], rows + offset, queries, k)


def merge_candidates(best_k, best_i, keys, ids, queries, k):
    """Merge candidate (key, id) pairs, each for query ``queries[j]``, into the running
    top-k: the running set and a query's candidates go into one padded row and
    ``argpartition`` keeps the k smallest."""
    if keys.size == 0:
        return best_k, best_i
    mq = best_k.shape[0]
    # Group candidates by query; a small integer type makes this a radix sort.
    order = np.argsort(queries.astype(np.int16 if mq <= 32767 else np.int32), kind="stable")
    keys, ids, queries = keys[order], ids[order], queries[order]
    counts = np.bincount(queries, minlength=mq)
    width = k + int(counts.max())
    cand_k = np.full((mq, width), np.inf, dtype=np.float32)
    cand_i = np.full((mq, width), -1, dtype=np.int64)
    cand_k[:, :k] = best_k
    cand_i[:, :k] = best_i
    pos = k + np.arange(keys.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cand_k[queries, pos] = keys
    cand_i[queries, pos] = ids
    return select_k(cand_k, cand_i, k)


def _select_row(keys: np.ndarray, k: int):
    """The k smallest of one row of keys (ids = positions), ties to the smaller id."""
    n = keys.shape[0]
    if k >= n:
        return keys.copy(), np.arange(n)
    kk, ki = select_k(keys[None, :], np.arange(n, dtype=np.int64)[None, :], k)
    return kk[0], ki[0]
