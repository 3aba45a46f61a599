"""The ``cpu`` backend: host memory is the device; NumPy and the BLAS it links against.

This module is the plumbing (arrays, the thread pool, the BLAS thread limit, limits for
the benchmark); the host kernels it runs are in ``m2m_gpu.ops``: ``host_topk`` (exact
k-NN), ``host_splat`` (splat ranking, energy, Hebbian feedback, decay) and ``host_cells``
(HRM2's cell scan, compiled with Numba when it is installed).
"""

from __future__ import annotations

import contextlib
import os
import platform
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..locking import ForkSafeLock
from ..ops import host_cells, host_splat, host_topk
from ..ops.host_topk import f32
from . import _jit
from .base import (
    Backend,
    BackendInfo,
    HebbianPlan,
    HebbianRates,
    RowBuffer,
)

SQNORM_TILE_ROWS = 4096  # rows per task when computing squared norms
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


def _after_fork_in_child(backend: CpuBackend) -> None:
    """Rebuild ``backend``'s thread pool in every forked child (held weakly)."""
    ref = weakref.ref(backend)

    def rebuild() -> None:
        be = ref()
        if be is not None:
            be._rebuild_after_fork()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=rebuild)


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
        self._blas_lock, self._blas_users = ForkSafeLock(), 0
        _after_fork_in_child(self)

    def _rebuild_after_fork(self) -> None:
        """A forked child inherits the pool object but none of its threads: work submitted
        to it would wait forever. The child gets a pool of its own."""
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="m2m-cpu")
        self._blas = None
        self._blas_lock, self._blas_users = ForkSafeLock(), 0

    @contextlib.contextmanager
    def _blas_one_thread(self):
        """BLAS on one thread while our own threads split the work. The limit is global to
        the process, so it is counted: the first of several concurrent callers sets it, the
        last one out restores it (nested limits from two threads used to restore in the
        wrong order and leave BLAS on one thread for good)."""
        with self._blas_lock:
            if self._blas_users == 0:
                if self._blas is None:
                    from threadpoolctl import ThreadpoolController

                    self._blas = ThreadpoolController()
                self._free_blas_control()
                self._blas_restore = self._blas.limit(limits=1, user_api="blas")
                self._free_blas_control()
            self._blas_users += 1
        try:
            yield
        finally:
            with self._blas_lock:
                self._blas_users -= 1
                if self._blas_users == 0:
                    self._free_blas_control()
                    self._blas_restore.restore_original_limits()
                    self._free_blas_control()

    def _free_blas_control(self) -> None:
        """threadpoolctl lets only one thread (the first to set a limit) change OpenBLAS's
        process-wide pool and silently ignores the others; the first and the last of our
        concurrent callers may be different threads, so control is released around each
        change (all of ours happen under ``_blas_lock``)."""
        for lib in self._blas.lib_controllers:
            release = getattr(type(lib), "clear_controlling_thread", None)
            if release is not None:
                release(force=True)

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
        if database.shape[0] <= SQNORM_TILE_ROWS:  # one tile: inline, no pool round trip
            xt = f32(database)
            return np.einsum("ij,ij->i", xt, xt).astype(np.float32, copy=False)
        out = np.empty(database.shape[0], dtype=np.float32)

        def job(s: int) -> None:
            xt = f32(database[s : s + SQNORM_TILE_ROWS])
            np.einsum("ij,ij->i", xt, xt, out=out[s : s + SQNORM_TILE_ROWS])

        list(self._pool.map(job, range(0, database.shape[0], SQNORM_TILE_ROWS)))
        return out

    # ---- k-NN --------------------------------------------------------------------------
    def _run_blocks(self, job, blocks) -> None:
        """Run ``job`` over ``blocks`` on the pool, BLAS limited to one thread each."""
        if len(blocks) == 1:
            job(blocks[0])
        else:
            with self._blas_one_thread():
                list(self._pool.map(job, blocks))

    # ---- kernels (m2m_gpu.ops.host_*) ----------------------------------------------------
    def knn(self, queries, database, k, metric, *, database_sqnorms=None):
        return host_topk.host_knn(self, queries, database, k, metric,
                                  database_sqnorms=database_sqnorms)

    def splat_topk(self, queries, mu, params, k, mode, *, sqnorms=None):
        return host_splat.host_splat_topk(self, queries, mu, params, k, mode, sqnorms=sqnorms)

    def energy(self, queries, mu, params, *, grad=False, sqnorms=None):
        return host_splat.host_energy(self, queries, mu, params, grad=grad, sqnorms=sqnorms)

    def hebbian(self, mu, params, queries, plan: HebbianPlan, rates: HebbianRates) -> None:
        host_splat.host_hebbian(self, mu, params, queries, plan, rates)

    def decay(self, params, now, lam):
        host_splat.host_decay(self, params, now, lam)

    def scan_cells(self, queries, rows, ranges, probes, k, mode, params=None, sqnorms=None,
                   dequant=None, ranked=True):
        return host_cells.host_scan(self, queries, rows, ranges, probes, k, mode, params,
                                    sqnorms, dequant, ranked)

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

    def kmeans_sums(self, x, assign, k):
        if self.jit:  # one compiled pass in row order, float64 sums
            return _jit.kmeans_sums(x, assign, k)
        d = x.shape[1]
        sums = np.zeros((k, d))
        step = max(1, (32 << 20) // max(1, 8 * d))  # float64 staging of at most 32 MB
        for s in range(0, x.shape[0], step):  # rows sorted by centroid, summed per run
            a = np.asarray(assign[s : s + step])
            order = np.argsort(a, kind="stable")
            a = a[order]
            first = np.flatnonzero(np.concatenate([[True], a[1:] != a[:-1]]))
            sums[a[first]] += np.add.reduceat(
                np.asarray(x[s : s + step], np.float64)[order], first, axis=0)
        return sums, np.bincount(assign, minlength=k).astype(np.int64)

