"""The ``cuda`` backend: CuPy raw kernels compiled from ``kernels/*.cu``.

Native arrays are ``cupy.ndarray``. CuPy compiles each ``.cu`` on first use and caches the
binary on disk (keyed by source, options and compiler), so later processes start fast.
Arrays already on the device (CuPy, torch CUDA tensors) are adopted through DLPack without
a copy; host <-> device copies are counted in ``transfers``.
"""

from __future__ import annotations

import importlib.util
from functools import cached_property
from typing import Any

import numpy as np

from .._resources import kernel_dir
from .base import (
    MODE_SPLAT,
    PARAM_ALPHA,
    PARAM_KAPPA,
    Backend,
    BackendInfo,
    HebbianPlan,
    HebbianRates,
    RowBuffer,
    cell_segments,
    finish_cell_scan,
)

TILE_BUDGET_BYTES = 256 << 20  # largest block of distances held on the device at once
QUERY_CHUNK = 65535  # rows per select launch (grid.x limit is far higher; keeps tiles wide)
DIST_ROWS_PER_BLOCK = 64
DIST_QUERIES_PER_BLOCK = 16


def probe() -> BackendInfo:
    if importlib.util.find_spec("cupy") is None:
        return BackendInfo("cuda", False, "CuPy is not installed (pip install "
                           "'m2m-gpu[cuda12]' or 'm2m-gpu[cuda13]')")
    try:
        import cupy
    except Exception as exc:
        return BackendInfo("cuda", False, f"CuPy failed to import: {exc}")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return BackendInfo("cuda", False, f"no CUDA driver or device: {exc}")
    if count == 0:
        return BackendInfo("cuda", False, "no CUDA device")
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        versions = {
            "cupy": cupy.__version__,
            "cuda_runtime": str(cupy.cuda.runtime.runtimeGetVersion()),
            "cuda_driver": str(cupy.cuda.runtime.driverGetVersion()),
            "compute_capability": f"{props['major']}.{props['minor']}",
        }
    except Exception as exc:
        return BackendInfo("cuda", False, f"cannot query CUDA device 0: {exc}")
    return BackendInfo("cuda", True, device=name, device_type="gpu", versions=versions)


def create(info: BackendInfo) -> CudaBackend:
    return CudaBackend(info)


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, info: BackendInfo) -> None:
        super().__init__(info)
        import cupy

        self.cp = cupy

    @cached_property
    def _knn_module(self):
        source = (kernel_dir() / "knn.cu").read_text()
        return self.cp.RawModule(code=source, options=("--std=c++14",))

    @cached_property
    def _kmeans_module(self):
        source = (kernel_dir() / "kmeans.cu").read_text()
        return self.cp.RawModule(code=source, options=("--std=c++14",))

    @cached_property
    def _splat_module(self):
        source = (kernel_dir() / "splat.cu").read_text()
        return self.cp.RawModule(code=source, options=("--std=c++14",))

    # ---- arrays -------------------------------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, self.cp.ndarray)

    def adopt(self, obj: Any) -> Any | None:
        if isinstance(obj, self.cp.ndarray):
            return obj
        if hasattr(obj, "__dlpack_device__"):
            dev_type, _ = obj.__dlpack_device__()
            if int(dev_type) == 2:  # kDLCUDA
                return self.cp.from_dlpack(obj)
        return None

    def from_host(self, array: np.ndarray) -> Any:
        out = self.cp.asarray(array)
        self.transfers.add_h2d(out.nbytes)
        return out

    def to_host(self, native: Any) -> np.ndarray:
        if isinstance(native, np.ndarray):
            return native
        out = self.cp.asnumpy(native)
        self.transfers.add_d2h(out.nbytes)
        return out

    def synchronize(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()

    def row_store(self, dim: int, dtype=np.float32) -> _CudaRows:
        return _CudaRows(self, dim, dtype)

    # ---- k-NN --------------------------------------------------------------------------
    def knn(self, queries, database, k, metric, *, database_sqnorms=None):
        return self._topk(queries, database, k, 0 if metric == "l2" else 1, None,
                          negate=metric != "l2")

    def _topk(self, queries, database, k, mode, params, negate=False):
        """Distance (or splat key) tiles + running radix select, per query chunk."""
        cp = self.cp
        m, d = queries.shape
        n = database.shape[0]
        dist = self._knn_module.get_function(
            "knn_distance_f16" if database.dtype == cp.float16 else "knn_distance")
        select = self._knn_module.get_function("topk_select")
        out_k = cp.empty((m, k), dtype=cp.float32)
        out_i = cp.empty((m, k), dtype=cp.int64)
        pptr = params if params is not None else cp.zeros(4, dtype=cp.float32)
        for q0 in range(0, m, QUERY_CHUNK):
            qb = queries[q0 : q0 + QUERY_CHUNK]
            mq = qb.shape[0]
            t_max = min(n, max(DIST_ROWS_PER_BLOCK, TILE_BUDGET_BYTES // (4 * mq)))
            tile = cp.empty((mq, t_max), dtype=cp.float32)
            best = [
                (cp.full((mq, k), cp.inf, dtype=cp.float32), cp.full((mq, k), -1, cp.int64)),
                (cp.empty((mq, k), dtype=cp.float32), cp.empty((mq, k), dtype=cp.int64)),
            ]
            side = 0
            for offset in range(0, n, t_max):
                t = min(t_max, n - offset)
                grid = (-(-t // DIST_ROWS_PER_BLOCK), -(-mq // DIST_QUERIES_PER_BLOCK), 1)
                dist(grid, (16, 16, 1), (qb, database, tile, np.uint32(mq), np.uint32(t),
                                         np.uint32(d), np.uint64(offset), np.uint32(mode),
                                         pptr))
                (bk_in, bi_in), (bk_out, bi_out) = best[side], best[1 - side]
                select((mq, 1, 1), (256, 1, 1), (tile, bk_in, bi_in, bk_out, bi_out,
                                                 np.uint32(t), np.uint32(k), np.int64(offset)))
                side = 1 - side
            keys, ids = best[side]
            order = cp.argsort(keys, axis=1)  # the k survivors, best first
            out_k[q0 : q0 + mq] = cp.take_along_axis(keys, order, 1)
            out_i[q0 : q0 + mq] = cp.take_along_axis(ids, order, 1)
        return (-out_k if negate else out_k), out_i

    # ---- splat kernels ---------------------------------------------------------------------
    def splat_topk(self, queries, mu, params, k, mode, *, sqnorms=None):
        cp = self.cp
        keys, ids = self._topk(queries, mu, k, mode, params)
        if mode != MODE_SPLAT:
            return keys, ids, keys.copy()
        p = params[ids]  # (m, k, 4)
        # d2 from key = fma(kappa, d2, -log alpha), computed in the direct form by the kernel
        d2 = cp.maximum((keys + cp.log(p[..., PARAM_ALPHA])) / p[..., PARAM_KAPPA], 0.0)
        return keys, ids, d2.astype(cp.float32)

    def energy(self, queries, mu, params, *, grad=False, sqnorms=None):
        cp = self.cp
        m, d = queries.shape
        n = mu.shape[0]
        dist = self._knn_module.get_function("knn_distance")
        acc = self._splat_module.get_function("energy_accumulate")
        E = cp.empty(m, dtype=cp.float32)
        G = cp.empty((m, d), dtype=cp.float32) if grad else None
        for q0 in range(0, m, QUERY_CHUNK):
            qb = queries[q0 : q0 + QUERY_CHUNK]
            mq = qb.shape[0]
            t_max = min(max(n, 1), max(DIST_ROWS_PER_BLOCK, TILE_BUDGET_BYTES // (4 * mq)))
            tile = cp.empty((mq, t_max), dtype=cp.float32)
            state = cp.zeros((mq, 4), dtype=cp.float32)
            state[:, 0] = -cp.inf
            gbuf = cp.zeros((mq, d) if grad else (1,), dtype=cp.float32)
            for offset in range(0, n, t_max):
                t = min(t_max, n - offset)
                grid = (-(-t // DIST_ROWS_PER_BLOCK), -(-mq // DIST_QUERIES_PER_BLOCK), 1)
                dist(grid, (16, 16, 1), (qb, mu, tile, np.uint32(mq), np.uint32(t),
                                         np.uint32(d), np.uint64(offset),
                                         np.uint32(MODE_SPLAT), params))
                acc((mq, 1, 1), (256, 1, 1), (tile, state, gbuf, params, mu, np.uint32(t),
                                              np.uint32(d), np.uint64(offset),
                                              np.uint32(int(grad))))
            M, S, SK = state[:, 0], state[:, 1], state[:, 2]
            live = cp.isfinite(M) & (S > 0)
            E[q0 : q0 + mq] = cp.where(live, -(M + cp.log(cp.where(live, S, 1))), cp.inf)
            if grad:
                Sl = cp.where(live, S, 1)[:, None]
                G[q0 : q0 + mq] = cp.where(live[:, None],
                                           2.0 * (SK[:, None] * qb - gbuf) / Sl, 0.0)
        return (E, G) if grad else E

    def hebbian(self, mu, params, queries, plan: HebbianPlan, rates: HebbianRates) -> None:
        if plan.size == 0:
            return
        cp = self.cp
        q = queries if isinstance(queries, cp.ndarray) else self.from_host(queries)
        rows, starts, counts, evq, evs = (self.from_host(np.ascontiguousarray(a)) for a in (
            plan.rows.astype(np.int64), plan.starts.astype(np.int32),
            plan.counts.astype(np.int32), plan.ev_query.astype(np.int32),
            plan.ev_sign.astype(np.int32)))
        u, d = plan.rows.shape[0], mu.shape[1]
        f = np.float32
        self._splat_module.get_function("hebbian")(
            (-(-u // 128), 1, 1), (128, 1, 1),
            (mu, params, q, rows, starts, counts, evq, evs, np.uint32(u), np.uint32(d),
             np.uint32(int(rates.renormalize)), f(rates.lr_alpha), f(rates.lr_kappa),
             f(rates.lr_mu), f(rates.alpha_min), f(rates.alpha_max), f(rates.kappa_min),
             f(rates.kappa_max), f(rates.eps)))

    def decay(self, params, now, lam):
        n = params.shape[0]
        if n == 0:
            return
        self._splat_module.get_function("decay")(
            (-(-n // 256), 1, 1), (256, 1, 1),
            (params, np.uint64(n), np.float32(lam), np.float32(now)))

    def philox(self, row0, rows, d, seed, stream, *, normal=True, centers=None, spread=1.0):
        cp = self.cp
        out = cp.empty((rows, d), dtype=cp.float32 if normal else cp.uint32)
        if rows == 0:
            return out
        cptr = centers if centers is not None else cp.zeros(1, dtype=cp.float32)
        clusters = 0 if centers is None else centers.shape[0]
        grid = (-(-((d + 3) // 4) // 16), -(-rows // 16), 1)
        self._splat_module.get_function("philox")(
            grid, (16, 16, 1),
            (out, cptr, np.uint64(row0), np.uint32(rows), np.uint32(d), np.uint64(seed),
             np.uint32(stream), np.uint32(int(normal)), np.uint32(clusters),
             np.float32(spread)))
        return out

    def scan_cells(self, queries, rows, ranges, probes, k, mode, params=None, sqnorms=None):
        cp = self.cp
        segs, t = cell_segments(ranges, probes)
        m, p = probes.shape
        if t == 0:
            return (np.full((m, k), np.inf, np.float32), np.full((m, k), -1, np.int64),
                    np.full((m, k), np.inf, np.float32))
        kk = min(k, t)
        keys = cp.empty((m, t), dtype=cp.float32)
        pptr = params if params is not None else cp.zeros(4, dtype=cp.float32)
        self._knn_module.get_function("cells_distance")(
            (-(-t // 128), m, 1), (128, 1, 1),
            (queries, rows, self.from_host(segs), keys, np.uint32(m), np.uint32(rows.shape[1]),
             np.uint32(t), np.uint32(p), np.uint32(mode if params is not None else 0), pptr))
        best_in = (cp.full((m, kk), cp.inf, dtype=cp.float32), cp.full((m, kk), -1, cp.int64))
        best_out = (cp.empty((m, kk), dtype=cp.float32), cp.empty((m, kk), dtype=cp.int64))
        self._knn_module.get_function("topk_select")(
            (m, 1, 1), (256, 1, 1), (keys, *best_in, *best_out, np.uint32(t), np.uint32(kk),
                                     np.int64(0)))
        return finish_cell_scan(self, self.to_host(best_out[0]), self.to_host(best_out[1]),
                                segs, k, mode, params)

    def kmeans_sums(self, x, assign, k):
        cp = self.cp
        a = np.asarray(assign)
        order = np.argsort(a, kind="stable")  # a fixed order: deterministic sums
        offsets = np.zeros(k + 1, dtype=np.int64)
        counts = np.bincount(a, minlength=k).astype(np.int64)
        np.cumsum(counts, out=offsets[1:])
        d = x.shape[1]
        sums = cp.zeros((k, d), dtype=cp.float32)
        if k:
            self._kmeans_module.get_function("kmeans_sums")(
                (k, -(-d // 64), 1), (64, 1, 1),
                (x, self.from_host(order.astype(np.int64)), self.from_host(offsets), sums,
                 np.uint32(k), np.uint32(d)))
        return self.to_host(sums).astype(np.float64), counts

    def gather_rows(self, native, index):
        return self.to_host(native[self.from_host(np.asarray(index, dtype=np.int64))])

    def scatter_rows(self, native, index, values):
        native[self.from_host(np.asarray(index, dtype=np.int64))] = self.from_host(
            np.ascontiguousarray(values, dtype=native.dtype))


class _CudaRows(RowBuffer):
    """Row buffer in device memory; host rows are copied up through the backend (counted)."""

    def __init__(self, backend: CudaBackend, dim: int, dtype) -> None:
        super().__init__(backend.cp, dim, dtype)
        self.backend = backend

    def append(self, rows) -> None:
        if isinstance(rows, np.ndarray):
            rows = self.backend.from_host(rows)
        super().append(rows)
