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

from ..ops.topk import select_k, sort_rows
from . import _jit
from .base import (
    MODE_SPLAT,
    PARAM_ALPHA,
    PARAM_KAPPA,
    PARAM_TICK,
    Backend,
    BackendInfo,
    HebbianPlan,
    HebbianRates,
    RowBuffer,
)

SMALL_BATCH = 4  # up to this many queries, stream the database once per query
SCAN_TILE_ROWS = 4096  # rows per task in the streaming path (fits in L2 for d <= 64)
BATCH_TILE_BYTES = 1 << 20  # GEMM output tile of the batch path: stays in L2
QUERY_CHUNK = 1024  # most queries per block in the batch path
SEED_ROWS = 512  # merge_topk: rows of the first tile that seed a running top-k
GATHER_BUDGET_BYTES = 64 << 20  # re-ranking gathers at most this many bytes of rows at once
ENERGY_FIX_TERMS = 4  # energy: the largest terms per query are recomputed in the direct form
SCAN_BATCH = 1 << 16  # HRM2 cell scan: candidates formed per batch before a merge
MASKED_KEY = np.float32(1e30)  # key of rows with alpha = 0 while ranking
PHILOX_ROWS = 8192  # rows per task when generating Philox data


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
        self.jit = _jit.available()  # compiled HRM2 cell scan (Numba); else NumPy
        self._blas = None  # threadpoolctl controller, made on first use (it scans libraries)

    def _blas_limit(self, threads: int):
        """Limit BLAS to ``threads`` while our own threads split the work."""
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=threads, user_api="blas")

    def from_host(self, array: np.ndarray, like: Any = None) -> np.ndarray:
        return array

    def to_host(self, native: np.ndarray) -> np.ndarray:
        return np.asarray(native)

    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def scale_column(self, native, column, factors):
        out = native.copy()
        out[:, column] *= factors
        return out

    def limit_ops(self, nbytes: int) -> dict:
        def gemm(size):
            a = np.ones((size, size), np.float32)
            return lambda: a @ a

        return {"gemm": (gemm, "numpy matmul (BLAS)"),
                "why_not": {"h2d": "none: the cpu backend computes in host memory",
                            "d2h": "none: the cpu backend computes in host memory",
                            "device_copy": "host memory: see the host bandwidth"}}

    def row_store(self, dim: int, dtype=np.float32, like: Any = None) -> RowBuffer:
        return RowBuffer(np, dim, dtype)

    # ---- helpers -----------------------------------------------------------------------
    def sqnorms(self, database: np.ndarray) -> np.ndarray:
        out = np.empty(database.shape[0], dtype=np.float32)

        def job(s: int) -> None:
            xt = _f32(database[s : s + SCAN_TILE_ROWS])
            np.einsum("ij,ij->i", xt, xt, out=out[s : s + SCAN_TILE_ROWS])

        list(self._pool.map(job, range(0, database.shape[0], SCAN_TILE_ROWS)))
        return out

    # ---- k-NN --------------------------------------------------------------------------
    def knn(self, queries, database, k, metric, *, database_sqnorms=None):
        queries, database = _c32(queries), _rows(database)
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
                np.einsum("ij,j->i", _f32(database[s : s + SCAN_TILE_ROWS]), q, out=o)
                if sqnorms is not None:
                    o += sqnorms[s : s + SCAN_TILE_ROWS]

            list(self._pool.map(job, range(0, n, SCAN_TILE_ROWS)))
            out_k[row], out_i[row] = _select_row(keys, k)
        return out_k, out_i

    def _select_batched(self, scaled_q, database, sqnorms, k):
        qt_all = np.ascontiguousarray(scaled_q.T)

        def make_fill(a: int, b: int):
            qt = np.ascontiguousarray(qt_all[:, a:b])

            def fill(start: int, stop: int, out: np.ndarray) -> None:
                np.matmul(_f32(database[start:stop]), qt, out=out)
                if sqnorms is not None:
                    out += sqnorms[start:stop, None]  # the tile is still in cache

            return fill

        return self._blocked_topk(scaled_q.shape[0], database.shape[0], k, make_fill)

    def _blocked_topk(self, m, n, k, make_fill):
        """Batch path: split the queries over the thread pool, one BLAS thread each, so that
        the GEMM and the selection of every block run side by side on all cores.
        ``make_fill(a, b)`` returns the function that writes the key tile of queries a..b."""
        out_k = np.empty((m, k), dtype=np.float32)
        out_i = np.empty((m, k), dtype=np.int64)
        blocks = _blocks(m, self.threads, QUERY_CHUNK)

        def job(block: tuple[int, int]) -> None:
            a, b = block
            out_k[a:b], out_i[a:b] = self._select_block(b - a, n, k, make_fill(a, b))

        self._run_blocks(job, blocks)
        return out_k, out_i

    def _run_blocks(self, job, blocks) -> None:
        if len(blocks) == 1:
            job(blocks[0])
        else:
            with self._blas_limit(1):
                list(self._pool.map(job, blocks))

    def _select_block(self, mq, n, k, fill):
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

    def _finish(self, queries, database, keys, ids, metric):
        """Exact distances for the selected ids, rows sorted best first."""
        if metric == "l2":
            return sort_rows(self._direct_d2(queries, database, ids), ids)
        keys, ids = sort_rows(keys, ids)
        return -keys, ids

    # ---- splat kernels ----------------------------------------------------------------
    # All of them rank or weigh by the key  kappa_i * d2 - log(alpha_i)  (= -log-score).
    # With the fast form d2 = |q|^2 + |x|^2 - 2 q.x, one GEMM per tile computes the key
    # exactly as k-NN computes its own: the database tile is augmented to
    #   [ -2 kappa_i x_i | kappa_i | kappa_i |x_i|^2 - log alpha_i ]   (rows x (d + 2))
    # and the queries to [ q | |q|^2 | 1 ], so no pass over the (rows x queries) output tile
    # is needed beyond the GEMM itself. Distances near the query are then recomputed in the
    # direct form (top-k) or corrected for the largest terms (energy).
    def _key_terms(self, mu, params, mode, sqnorms):
        if sqnorms is None:
            sqnorms = self.sqnorms(mu)
        alpha = params[:, PARAM_ALPHA]
        live = alpha > 0
        # Rows with alpha = 0 (masked, deleted) get a huge finite key rather than +inf, so
        # that BLAS never multiplies inf by the zero padding of its tiles.
        if mode == MODE_SPLAT:
            kap = np.where(live, params[:, PARAM_KAPPA], 0).astype(np.float32)
            with np.errstate(divide="ignore"):
                bias = np.where(live, kap * sqnorms - np.log(np.where(live, alpha, 1)),
                                MASKED_KEY).astype(np.float32)
        else:
            kap = np.ones(mu.shape[0], dtype=np.float32)
            bias = np.where(live, sqnorms, MASKED_KEY).astype(np.float32)
        return kap, bias

    def _splat_fill(self, queries, mu, kap, bias, a, b):
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

    def splat_topk(self, queries, mu, params, k, mode, *, sqnorms=None):
        queries, mu, params = _c32(queries), _c32(mu), _c32(params)
        m, n = queries.shape[0], mu.shape[0]
        kap, bias = self._key_terms(mu, params, mode, sqnorms)
        if m <= SMALL_BATCH:
            keys = np.empty(n, dtype=np.float32)
            out_k = np.empty((m, k), dtype=np.float32)
            out_i = np.empty((m, k), dtype=np.int64)
            for row in range(m):
                q2 = queries[row] * np.float32(-2.0)
                qn = np.float32(queries[row] @ queries[row])

                def job(s: int, q2=q2, qn=qn) -> None:
                    e = s + SCAN_TILE_ROWS
                    o = keys[s:e]
                    np.einsum("ij,j->i", mu[s:e], q2, out=o)
                    o += qn
                    o *= kap[s:e]
                    o += bias[s:e]

                list(self._pool.map(job, range(0, n, SCAN_TILE_ROWS)))
                out_k[row], out_i[row] = _select_row(keys, k)
        else:
            out_k, out_i = self._blocked_topk(
                m, n, k, lambda a, b: self._splat_fill(queries, mu, kap, bias, a, b))
        return self._splat_finish(queries, mu, params, out_i, mode)

    def _direct_d2(self, queries, mu, ids):
        m, k = ids.shape
        d = mu.shape[1]
        dist = np.empty((m, k), dtype=np.float32)
        step = max(1, GATHER_BUDGET_BYTES // max(1, 4 * k * d))
        for r in range(0, m, step):
            rows = _f32(mu[ids[r : r + step]])  # (step, k, d), a fresh float32 copy
            rows -= queries[r : r + step, None, :]
            np.einsum("ijk,ijk->ij", rows, rows, out=dist[r : r + step])
        return dist

    def _splat_finish(self, queries, mu, params, ids, mode):
        """Direct-form distances and exact keys of the selected ids, best first."""
        d2 = self._direct_d2(queries, mu, ids)
        alpha = params[ids, PARAM_ALPHA]
        if mode == MODE_SPLAT:
            with np.errstate(divide="ignore"):
                keys = params[ids, PARAM_KAPPA] * d2 - np.log(alpha)
        else:
            keys = np.where(alpha > 0, d2, np.float32(np.inf)).astype(np.float32)
        return sort_rows(keys.astype(np.float32), ids, d2)

    def energy(self, queries, mu, params, *, grad=False, sqnorms=None):
        queries, mu, params = _c32(queries), _c32(mu), _c32(params)
        m, d = queries.shape
        n = mu.shape[0]
        kap, bias = self._key_terms(mu, params, MODE_SPLAT, sqnorms)
        E = np.empty(m, dtype=np.float32)
        G = np.empty((m, d), dtype=np.float32) if grad else None
        fix = min(ENERGY_FIX_TERMS, n)

        def job(block: tuple[int, int]) -> None:
            a, b = block
            fill = self._splat_fill(queries, mu, kap, bias, a, b)
            E[a:b], g = self._energy_block(queries[a:b], mu, params, kap, fill, fix, grad)
            if grad:
                G[a:b] = g

        self._run_blocks(job, _blocks(m, self.threads, QUERY_CHUNK))
        return (E, G) if grad else E

    def _energy_block(self, q, mu, params, kap, fill, fix, grad):
        """Streaming log-sum-exp over key tiles: running max M and sum S per query (float64),
        plus the ``fix`` smallest keys, whose terms are swapped for direct-form ones at the
        end (the fast form's cancellation, times kappa, would show in E near a splat)."""
        mq, d = q.shape
        n = mu.shape[0]
        rows = max(fix, BATCH_TILE_BYTES // (4 * mq))
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
            best_k, best_i = merge_topk(best_k, best_i, s, start, fix)
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
            d2 = self._direct_d2(q, mu, ids).astype(np.float64)
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

    def hebbian(self, mu, params, queries, plan: HebbianPlan, rates: HebbianRates) -> None:
        """Vectorised over splats: round r applies the r-th event of every splat that has
        one, so each splat sees its events in order (the sequential result)."""
        self.check_in_place("mu", mu)
        self.check_in_place("params", params)
        queries = _c32(queries)
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

    def decay(self, params, now, lam):
        self.check_in_place("params", params)
        now = np.float32(now)
        params[:, PARAM_ALPHA] *= np.exp(np.float32(-lam) * (now - params[:, PARAM_TICK]))
        params[:, PARAM_TICK] = now

    def philox(self, row0, rows, d, seed, stream, *, normal=True, centers=None, spread=1.0):
        from ..synthetic import assignments, normals, words

        out = np.empty((rows, d), dtype=np.float32 if normal else np.uint32)

        def job(s: int) -> None:
            r = min(PHILOX_ROWS, rows - s)
            if not normal:
                out[s : s + r] = words(row0 + s, r, d, seed, stream)
                return
            z = normals(row0 + s, r, d, seed, stream).astype(np.float32)
            if centers is not None:
                c = assignments(row0 + s, r, seed, stream, centers.shape[0])
                z *= np.float32(spread)
                z += centers[c]
            out[s : s + r] = z

        list(self._pool.map(job, range(0, rows, PHILOX_ROWS)))
        return out

    def scatter_rows(self, native, index, values):
        native[index] = values

    def scan_cells(self, queries, rows, ranges, probes, k, mode, params=None, sqnorms=None):
        """The probed cells' k best rows per query: the candidate pass is the compiled loop
        of ``_jit`` when Numba is available (else ``_scan_cells_numpy``), and the k found
        are finished in the direct form."""
        queries, rows = _c32(queries), _c32(rows)
        params = None if params is None else _c32(params)
        if sqnorms is None:
            sqnorms = np.einsum("ij,ij->i", rows, rows)
        if self.jit:
            _, best_i = _jit.scan_cells(queries, rows, sqnorms, ranges, probes, k, mode,
                                        params)
        else:
            best_i = self._scan_cells_numpy(queries, rows, ranges, probes, k, mode, params,
                                            sqnorms)
        return self._finish_scan(queries, rows, best_i, mode, params)

    def _scan_cells_numpy(self, queries, rows, ranges, probes, k, mode, params, sqnorms):
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
        with self._blas_limit(1):  # many small products: BLAS threads cost more than they give
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
                    if mode == MODE_SPLAT:
                        keys += qn[cq]
                        keys *= params[ids, PARAM_KAPPA]
                        with np.errstate(divide="ignore"):
                            keys -= np.log(np.where(live, alpha, 1))
                    keys[~live] = np.inf
                sel = keys < bound[cq]
                best_k, best_i = merge_candidates(best_k, best_i, keys[sel], ids[sel],
                                                  cq[sel], k)
                bound = best_k.max(axis=1)
        return best_i

    def _finish_scan(self, queries, rows, best_i, mode, params):
        found = best_i >= 0
        safe = np.where(found, best_i, 0)
        d2 = self._direct_d2(queries, rows, safe)
        if params is not None and mode == MODE_SPLAT:
            alpha = params[safe, PARAM_ALPHA]
            with np.errstate(divide="ignore"):
                keys = params[safe, PARAM_KAPPA] * d2 - np.log(alpha)
        elif params is not None:
            keys = np.where(params[safe, PARAM_ALPHA] > 0, d2, np.float32(np.inf))
        else:
            keys = d2.copy()
        keys = np.where(found, keys, np.inf).astype(np.float32)
        d2 = np.where(found, d2, np.inf).astype(np.float32)
        keys, ids, d2 = sort_rows(keys, np.where(found, best_i, -1), d2)
        return keys, np.where(np.isinf(keys), -1, ids), d2

    def kmeans_sums(self, x, assign, k):
        d = x.shape[1]
        sums = np.zeros((k, d))
        step = max(1, (32 << 20) // max(1, 8 * d))  # float64 staging of at most 32 MB
        for s in range(0, x.shape[0], step):
            np.add.at(sums, assign[s : s + step], x[s : s + step].astype(np.float64))
        return sums, np.bincount(assign, minlength=k).astype(np.int64)


def _c32(a: np.ndarray) -> np.ndarray:
    """A kernel input as C-contiguous float32 (a no-op when it already is)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def _rows(a: np.ndarray) -> np.ndarray:
    """Database rows: float16 storage kept as it is, anything else C-contiguous float32."""
    return np.ascontiguousarray(a) if a.dtype == np.float16 else _c32(a)


def _f32(tile: np.ndarray) -> np.ndarray:
    """A database tile as float32: float16 rows (stored at half the bytes) are widened one
    cache-sized tile at a time; float32 tiles pass through untouched."""
    return tile if tile.dtype == np.float32 else tile.astype(np.float32)


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
