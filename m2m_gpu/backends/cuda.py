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
from .base import Backend, BackendInfo, RowBuffer

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
        cp = self.cp
        m, d = queries.shape
        n = database.shape[0]
        metric_code = np.uint32(0 if metric == "l2" else 1)
        dist = self._knn_module.get_function("knn_distance")
        select = self._knn_module.get_function("topk_select")
        out_k = cp.empty((m, k), dtype=cp.float32)
        out_i = cp.empty((m, k), dtype=cp.int64)
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
                                         np.uint32(d), np.uint64(offset), metric_code))
                (bk_in, bi_in), (bk_out, bi_out) = best[side], best[1 - side]
                select((mq, 1, 1), (256, 1, 1), (tile, bk_in, bi_in, bk_out, bi_out,
                                                 np.uint32(t), np.uint32(k), np.int64(offset)))
                side = 1 - side
            keys, ids = best[side]
            order = cp.argsort(keys, axis=1)  # the k survivors, best first
            out_k[q0 : q0 + mq] = cp.take_along_axis(keys, order, 1)
            out_i[q0 : q0 + mq] = cp.take_along_axis(ids, order, 1)
        return (out_k if metric == "l2" else -out_k), out_i


class _CudaRows(RowBuffer):
    """Row buffer in device memory; host rows are copied up through the backend (counted)."""

    def __init__(self, backend: CudaBackend, dim: int, dtype) -> None:
        super().__init__(backend.cp, dim, dtype)
        self.backend = backend

    def append(self, rows) -> None:
        if isinstance(rows, np.ndarray):
            rows = self.backend.from_host(rows)
        super().append(rows)
