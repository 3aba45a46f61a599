"""The ``cpu`` backend: NumPy and the BLAS NumPy links against.

Exact k-NN is memory-bound for a few queries and compute-bound for a batch, so there are
two paths:

* few queries (``m <= SMALL_BATCH``): one pass over the database per query, in tiles that
  stay in cache, spread over a thread pool. ``np.einsum`` reads at memory bandwidth where
  BLAS ``gemv`` does not, and releases the GIL, so the threads run in parallel.
* a batch: ``(-2 Q) @ X_tile.T`` through BLAS per database tile, then a selection that
  keeps a running top-k per query and only looks at the tile entries that beat the current
  k-th key (after the first tile, a small fraction).

Both rank on ``||x||^2 - 2 q.x`` (the per-query ``||q||^2`` does not change the order), then
recompute the final k distances in the direct form ``sum((q - x)^2)`` so the reported
distances do not suffer the cancellation of the fast form near the query (SPEC section 1).
"""

from __future__ import annotations

import os
import platform
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .base import Backend, BackendInfo, RowBuffer

SMALL_BATCH = 4  # up to this many queries, stream the database once per query
SCAN_TILE_ROWS = 4096  # rows per task in the streaming path (fits in L2 for d <= 64)
BATCH_TILE_BYTES = 1 << 20  # GEMM output tile of the batch path: stays in L2
QUERY_CHUNK = 1024  # most queries per block in the batch path
GATHER_BUDGET_BYTES = 64 << 20  # re-ranking gathers at most this many bytes of rows at once


def probe() -> BackendInfo:
    versions = {"numpy": np.__version__, "python": platform.python_version()}
    try:
        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        if blas:
            versions["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:
        pass
    cpu = platform.processor() or platform.machine()
    return BackendInfo(
        "cpu", True, device=f"{cpu} ({os.cpu_count()} threads)", device_type="cpu",
        versions=versions,
    )


def create(info: BackendInfo) -> CpuBackend:
    return CpuBackend(info)


class CpuBackend(Backend):
    """Host memory is the device: ``from_host``/``to_host`` move and count nothing."""

    name = "cpu"
    uses_sqnorms = True

    def __init__(self, info: BackendInfo, threads: int | None = None) -> None:
        super().__init__(info)
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="m2m-cpu")
        self._blas = None  # threadpoolctl controller, made on first use (it scans libraries)

    def _blas_limit(self, threads: int):
        """Limit BLAS to ``threads`` while our own threads split the work."""
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=threads, user_api="blas")

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self, native: np.ndarray) -> np.ndarray:
        return np.asarray(native)

    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def row_store(self, dim: int, dtype=np.float32) -> RowBuffer:
        return RowBuffer(np, dim, dtype)

    # ---- helpers -----------------------------------------------------------------------
    def sqnorms(self, database: np.ndarray) -> np.ndarray:
        out = np.empty(database.shape[0], dtype=np.float32)

        def job(s: int) -> None:
            xt = database[s : s + SCAN_TILE_ROWS]
            np.einsum("ij,ij->i", xt, xt, out=out[s : s + SCAN_TILE_ROWS])

        list(self._pool.map(job, range(0, database.shape[0], SCAN_TILE_ROWS)))
        return out

    # ---- k-NN --------------------------------------------------------------------------
    def knn(self, queries, database, k, metric, *, database_sqnorms=None):
        m = queries.shape[0]
        if metric == "l2" and database_sqnorms is None:
            database_sqnorms = self.sqnorms(database)
        # Ranking key, smaller is better: ||x||^2 - 2 q.x  (l2)  or  -q.x  (ip).
        scale = np.float32(-2.0 if metric == "l2" else -1.0)
        if m <= SMALL_BATCH:
            keys, ids = self._select_streaming(queries * scale, database, database_sqnorms, k)
        else:
            keys, ids = self._select_batched(queries * scale, database, database_sqnorms, k)
        return self._finish(queries, database, keys, ids, metric)

    def _select_streaming(self, scaled_q, database, sqnorms, k):
        m, n = scaled_q.shape[0], database.shape[0]
        keys = np.empty(n, dtype=np.float32)
        out_k = np.empty((m, k), dtype=np.float32)
        out_i = np.empty((m, k), dtype=np.int64)
        for row in range(m):
            q = scaled_q[row]

            def job(s: int, q=q) -> None:
                o = keys[s : s + SCAN_TILE_ROWS]
                np.einsum("ij,j->i", database[s : s + SCAN_TILE_ROWS], q, out=o)
                if sqnorms is not None:
                    o += sqnorms[s : s + SCAN_TILE_ROWS]

            list(self._pool.map(job, range(0, n, SCAN_TILE_ROWS)))
            idx = np.argpartition(keys, k - 1)[:k] if k < n else np.arange(n)
            out_k[row] = keys[idx]
            out_i[row] = idx
        return out_k, out_i

    def _select_batched(self, scaled_q, database, sqnorms, k):
        """Batch path: split the queries over the thread pool, one BLAS thread each, so that
        the GEMM and the selection of every block run side by side on all cores."""
        m = scaled_q.shape[0]
        out_k = np.empty((m, k), dtype=np.float32)
        out_i = np.empty((m, k), dtype=np.int64)
        blocks = _blocks(m, self.threads, QUERY_CHUNK)

        def job(block: tuple[int, int]) -> None:
            a, b = block
            out_k[a:b], out_i[a:b] = self._select_block(scaled_q[a:b], database, sqnorms, k)

        if len(blocks) == 1:
            job(blocks[0])
        else:
            with self._blas_limit(1):
                list(self._pool.map(job, blocks))
        return out_k, out_i

    def _select_block(self, scaled_q, database, sqnorms, k):
        """Running top-k of one query block over cache-sized database tiles.

        The key is ``||x||^2 + x.(-2q)``, formed in place while the GEMM's output tile is in
        cache. Entries below the query's current k-th key are buffered, and the buffer is
        merged into the running top-k (which tightens the thresholds) when it fills up.
        """
        n, mq = database.shape[0], scaled_q.shape[0]
        rows = max(k, BATCH_TILE_BYTES // (4 * mq))
        qt = np.ascontiguousarray(scaled_q.T)
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
            np.matmul(database[start:stop], qt, out=s)
            if sqnorms is not None:
                s += sqnorms[start:stop, None]  # the tile is still in cache
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

    def _finish(self, queries, database, keys, ids, metric):
        """Exact distances for the selected ids, rows sorted best first."""
        m, k = ids.shape
        d = database.shape[1]
        if metric == "l2":
            dist = np.empty((m, k), dtype=np.float32)
            step = max(1, GATHER_BUDGET_BYTES // max(1, 4 * k * d))
            for r in range(0, m, step):
                rows = database[ids[r : r + step]]  # (step, k, d)
                rows -= queries[r : r + step, None, :]
                np.einsum("ijk,ijk->ij", rows, rows, out=dist[r : r + step])
            order = np.argsort(dist, axis=1, kind="stable")
        else:
            dist = -keys
            order = np.argsort(keys, axis=1, kind="stable")
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)


def _blocks(m: int, parts: int, max_rows: int) -> list[tuple[int, int]]:
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
        keys = np.ascontiguousarray(tile.T)
        keep = np.argpartition(keys, k - 1, axis=1)[:, :k]
        return np.take_along_axis(keys, keep, 1), keep + offset
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
    keep = np.argpartition(cand_k, k - 1, axis=1)[:, :k]
    return np.take_along_axis(cand_k, keep, 1), np.take_along_axis(cand_i, keep, 1)
