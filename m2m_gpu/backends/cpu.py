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

from .base import Backend, BackendInfo

SMALL_BATCH = 4  # up to this many queries, stream the database once per query
SCAN_TILE_ROWS = 4096  # rows per task in the streaming path (fits in L2 for d <= 64)
TILE_BUDGET_BYTES = 32 << 20  # largest block of distances held at once in the batch path
FIRST_TILE_ROWS = 4096  # a short first tile sets the pruning threshold early
QUERY_CHUNK = 1024  # queries per block in the batch path
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

    def __init__(self, info: BackendInfo, threads: int | None = None) -> None:
        super().__init__(info)
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="m2m-cpu")

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self, native: np.ndarray) -> np.ndarray:
        return np.asarray(native)

    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    # ---- helpers -----------------------------------------------------------------------
    def _tiles(self, n: int, rows: int):
        return range(0, n, rows)

    def sqnorms(self, database: np.ndarray) -> np.ndarray:
        out = np.empty(database.shape[0], dtype=np.float32)

        def job(s: int) -> None:
            xt = database[s : s + SCAN_TILE_ROWS]
            np.einsum("ij,ij->i", xt, xt, out=out[s : s + SCAN_TILE_ROWS])

        list(self._pool.map(job, self._tiles(database.shape[0], SCAN_TILE_ROWS)))
        return out

    # ---- k-NN --------------------------------------------------------------------------
    def knn(self, queries, database, k, metric, *, database_sqnorms=None):
        m, n = queries.shape[0], database.shape[0]
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

            list(self._pool.map(job, self._tiles(n, SCAN_TILE_ROWS)))
            idx = np.argpartition(keys, k - 1)[:k] if k < n else np.arange(n)
            out_k[row] = keys[idx]
            out_i[row] = idx
        return out_k, out_i

    def _select_batched(self, scaled_q, database, sqnorms, k):
        m, n = scaled_q.shape[0], database.shape[0]
        out_k = np.empty((m, k), dtype=np.float32)
        out_i = np.empty((m, k), dtype=np.int64)
        for q0 in range(0, m, QUERY_CHUNK):
            qc = scaled_q[q0 : q0 + QUERY_CHUNK]
            mq = qc.shape[0]
            rows = max(FIRST_TILE_ROWS, TILE_BUDGET_BYTES // (4 * mq))
            best_k = np.full((mq, k), np.inf, dtype=np.float32)
            best_i = np.full((mq, k), -1, dtype=np.int64)
            start, step = 0, min(FIRST_TILE_ROWS, rows)
            while start < n:
                stop = min(n, start + step)
                tile = qc @ database[start:stop].T
                if sqnorms is not None:
                    tile += sqnorms[start:stop]
                best_k, best_i = merge_topk(best_k, best_i, tile, start, k)
                start, step = stop, rows
            out_k[q0 : q0 + mq] = best_k
            out_i[q0 : q0 + mq] = best_i
        return out_k, out_i

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


def merge_topk(best_k, best_i, tile, offset, k):
    """Fold a tile of keys (smaller is better) into a running, unsorted top-k per row.

    Only entries below the row's current k-th key are considered; the running set and those
    candidates go into one padded block and ``argpartition`` keeps the k smallest.
    """
    mq = tile.shape[0]
    threshold = best_k.max(axis=1)
    rows, cols = np.nonzero(tile < threshold[:, None])
    if rows.size == 0:
        return best_k, best_i
    counts = np.bincount(rows, minlength=mq)
    width = k + int(counts.max())
    cand_k = np.full((mq, width), np.inf, dtype=np.float32)
    cand_i = np.full((mq, width), -1, dtype=np.int64)
    cand_k[:, :k] = best_k
    cand_i[:, :k] = best_i
    pos = k + np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cand_k[rows, pos] = tile[rows, cols]
    cand_i[rows, pos] = cols + offset
    keep = np.argpartition(cand_k, k - 1, axis=1)[:, :k]
    return np.take_along_axis(cand_k, keep, 1), np.take_along_axis(cand_i, keep, 1)
