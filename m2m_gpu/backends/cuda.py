"""The ``cuda`` backend: CuPy raw kernels compiled from ``kernels/*.cu``.

Native arrays are ``cupy.ndarray``. CuPy compiles each ``.cu`` on first use and caches the
binary on disk (keyed by source, options and compiler), so later processes start fast.
Arrays already on the device (CuPy, torch CUDA tensors) are adopted through DLPack without
a copy; host <-> device copies are counted in ``transfers``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from .._resources import kernel_dir
from ..errors import InvalidInputError
from ..locking import ForkSafeLock
from ..ops.topk import seeds
from .base import (
    BackendInfo,
    HebbianPlan,
    HebbianRates,
    RowBuffer,
)
from .gpu import GpuBackend, KernelBatch, cuda_scalars, split_args

TILE_BUDGET_BYTES = 256 << 20  # largest block of distances held on the device at once
QUERY_CHUNK = 65535  # rows per select launch (grid.x limit is far higher; keeps tiles wide)


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
    why = _test_kernel(cupy)
    if why:
        return BackendInfo("cuda", False, f"CUDA device {name!r} found, but {why}",
                           device=name, device_type="gpu", versions=versions)
    return BackendInfo("cuda", True, device=name, device_type="gpu", versions=versions)


_PROBE_KERNEL = r"""
extern "C" __global__ void m2m_probe(int* out) { out[threadIdx.x] = (int)threadIdx.x + 1; }
"""


def _test_kernel(cupy) -> str:
    """Compile and launch a one-line kernel the way the backend compiles its own (NVRTC
    through RawModule); '' when it ran and gave the right answer, else why not."""
    try:
        fn = cupy.RawModule(code=_PROBE_KERNEL, options=("--std=c++14",)).get_function(
            "m2m_probe")
        out = cupy.zeros(4, dtype=cupy.int32)
        fn((1, 1, 1), (4, 1, 1), (out,))
        got = cupy.asnumpy(out).tolist()
    except Exception as exc:
        return "a test kernel failed to compile or run: " + _explain(exc)
    if got != [1, 2, 3, 4]:
        return f"a test kernel ran but returned {got} instead of [1, 2, 3, 4]"
    return ""


def _explain(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    low = text.lower()
    if "cuda headers" in low or "cuda_runtime" in low or "cuda_fp16" in low:
        hint = ("no CUDA headers for NVRTC (pip install 'cupy-cuda12x[ctk]' or "
                "'cupy-cuda13x[ctk]', or install the CUDA toolkit)")
    elif "nvrtc" in low:
        hint = ("NVRTC (the runtime compiler) is missing or unusable (pip install "
                "'cupy-cuda12x[ctk]' or 'cupy-cuda13x[ctk]')")
    elif "insufficient" in low or "unsupported_ptx" in low or "driver version" in low:
        hint = "the NVIDIA driver is too old for this CuPy / CUDA toolkit"
    else:
        hint = "see the error"
    return f"{hint} [{text.splitlines()[0][:300] if text else type(exc).__name__}]"


def cuda_source(name: str) -> str:
    """``kernels/<name>.cu`` with ``#include "m2m_abi.h"`` replaced by the header itself, so
    NVRTC needs no include path (and CuPy's cache key covers the header)."""
    source = (kernel_dir() / f"{name}.cu").read_text()
    header = (kernel_dir() / "m2m_abi.h").read_text()
    return source.replace('#include "m2m_abi.h"', header)


def create(info: BackendInfo) -> CudaBackend:
    return CudaBackend(info)


class CudaBackend(GpuBackend):
    name = "cuda"

    def __init__(self, info: BackendInfo) -> None:
        super().__init__(info)
        import cupy

        self.cp = cupy
        self._modules: dict[str, Any] = {}
        self._lock = ForkSafeLock()
        try:  # a few resident blocks per multiprocessor keep a small batch's select busy
            sms = int(cupy.cuda.Device().attributes["MultiProcessorCount"])
            self.select_groups = 4 * sms
        except Exception:
            pass

    def _module(self, name: str):
        """The RawModule of ``kernels/<name>.cu``, compiled once (CuPy caches on disk)."""
        with self._lock:
            if name not in self._modules:
                self._modules[name] = self.cp.RawModule(code=cuda_source(name),
                                                        options=("--std=c++14",))
            return self._modules[name]

    def _launch(self, module: str, kernel: str, grid, block, args) -> None:
        """Launch ``kernel`` of ``kernels/<module>.cu`` after checking the grid limits."""
        grid = tuple(int(g) for g in grid)
        self.check_grid(grid)
        self._module(module).get_function(kernel)(grid, block, args)

    # ---- arrays -------------------------------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, self.cp.ndarray)

    @property
    def device_id(self) -> int:
        return int(self.cp.cuda.Device().id)

    def adopt(self, obj: Any) -> Any | None:
        """CuPy arrays and DLPack CUDA tensors on this backend's device, without a copy.
        An array on another GPU is refused: kernels would read its pointers on this one."""
        if isinstance(obj, self.cp.ndarray):
            where = int(obj.device.id)
        elif hasattr(obj, "__dlpack_device__"):
            dev_type, where = obj.__dlpack_device__()
            if int(dev_type) != 2:  # kDLCUDA
                return None
            where = int(where)
        else:
            return None
        if where != self.device_id:
            raise InvalidInputError(
                f"the array is on cuda:{where}, but the cuda backend runs on cuda:"
                f"{self.device_id}; move it there first (torch: .to('cuda:{self.device_id}'),"
                f" CuPy: cupy.asarray under cupy.cuda.Device({self.device_id}))")
        return obj if isinstance(obj, self.cp.ndarray) else self.cp.from_dlpack(obj)

    def from_host(self, array: np.ndarray, like: Any = None) -> Any:
        out = self.cp.asarray(np.ascontiguousarray(array))
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

    def row_store(self, dim: int, dtype=np.float32, like: Any = None) -> _CudaRows:
        return _CudaRows(self, dim, dtype)

    def limit_ops(self, nbytes: int) -> dict:
        cp = self.cp
        import cupyx

        pinned = cupyx.empty_pinned((nbytes // 4,), dtype=np.float32)
        pinned[:] = 1.0
        dev = cp.empty(pinned.shape, dtype=cp.float32)
        dev2 = cp.empty_like(dev)

        def gemm(size):
            a = cp.ones((size, size), cp.float32)
            return lambda: a @ a

        what = "cupy set/get with page-locked host memory"
        return {"h2d": (lambda: dev.set(pinned), what), "d2h": (lambda: dev.get(out=pinned), what),
                "device_copy": (lambda: cp.copyto(dev2, dev), "cupy copyto on the device"),
                "gemm": (gemm, "cupy matmul (cuBLAS)"), "why_not": {}}

    def stage_rows(self, staged: Any) -> Any:
        return staged  # the row stores take host and CuPy rows alike

    def index_array(self, index: np.ndarray) -> Any:
        return self.from_host(np.asarray(index, dtype=np.int64))

    def scale_column(self, native, column, factors):
        out = native.copy()
        out[:, column] *= self.from_host(np.asarray(factors, dtype=out.dtype))
        return out

    def stream(self, sources, like: Any = None):
        """Double-buffered upload: block i+1 is staged in one of two fixed page-locked
        buffers and copied on a side stream while the caller's kernels on block i run on
        the current stream. The first copy waits for work already queued on the current
        stream (its buffers may reuse memory that work still reads); if the consumer stops
        early, no copy is left in flight when the buffers are released. Page-locked memory:
        two buffers of the largest block (CuPy's pinned pool rounds each to a power of
        two), whatever the total streamed."""
        cp = self.cp
        import cupyx

        if not sources:
            return
        compute = cp.cuda.get_current_stream()
        copy = cp.cuda.Stream(non_blocking=True)
        stage: list[Any] = [None, None]
        dev: list[Any] = [None, None]
        ready: list[Any] = [None, None]
        done: list[Any] = [None, None]
        rows = [0, 0]

        def issue(i: int) -> None:
            b = i % 2
            if done[b] is not None:
                done[b].synchronize()  # block i-2's kernels (and so its copy) are finished
            host = np.ascontiguousarray(sources[i]())
            r = host.shape[0]
            if (stage[b] is None or stage[b].shape[0] < r or stage[b].dtype != host.dtype
                    or stage[b].shape[1:] != host.shape[1:]):
                stage[b] = cupyx.empty_pinned(host.shape, dtype=host.dtype)
                dev[b] = cp.empty(host.shape, dtype=host.dtype)
                # a fresh buffer may reuse memory that kernels queued on the compute
                # stream still read: the copy into it waits for them
                copy.wait_event(compute.record())
            stage[b][:r] = host
            dev[b][:r].set(stage[b][:r], stream=copy)
            ready[b] = copy.record()
            rows[b] = r
            self.transfers.add_h2d(host.nbytes)

        try:
            copy.wait_event(compute.record())  # after the work already queued on compute
            issue(0)
            for i in range(len(sources)):
                b = i % 2
                compute.wait_event(ready[b])
                if i + 1 < len(sources):  # the other buffer: block i-1's kernels are done
                    issue(i + 1)  # ... so block i+1's copy overlaps block i's kernels
                yield dev[b][: rows[b]]
                done[b] = compute.record()
        finally:
            copy.synchronize()  # an abandoned stream leaves no copy in flight
        compute.synchronize()

    # ---- driver plumbing (m2m_gpu.ops runs knn, splat_topk, energy, scan_cells) --------
    @property
    def result_xp(self):
        return self.cp

    @property
    def tile_budget_bytes(self) -> int:
        return TILE_BUDGET_BYTES

    def batch(self) -> _CudaBatch:
        return _CudaBatch(self)

    def query_blocks(self, queries, max_rows: int):
        step = max(1, min(QUERY_CHUNK, int(max_rows)))
        for q0 in range(0, queries.shape[0], step):
            block = queries[q0 : q0 + step]
            yield q0, block.shape[0], self.cp.ascontiguousarray(block, dtype=self.cp.float32)

    def row_blocks(self, rows, params=None):
        keep = rows.dtype in (self.cp.float16, self.cp.uint32)  # float16 rows, SQ8 codes
        rows = self.cp.ascontiguousarray(rows) if keep else \
            self.cp.ascontiguousarray(rows, dtype=self.cp.float32)
        if params is not None:
            params = self.cp.ascontiguousarray(params, dtype=self.cp.float32)
        yield 0, rows.shape[0], rows, params

    def take_rows(self, native, index):
        return native[self.cp.asarray(index)]

    def hebbian(self, mu, params, queries, plan: HebbianPlan, rates: HebbianRates) -> None:
        self.check_in_place("mu", mu)
        self.check_in_place("params", params)
        if plan.size == 0:
            return
        cp = self.cp
        q = cp.ascontiguousarray(queries if isinstance(queries, cp.ndarray)
                                 else self.from_host(queries), dtype=cp.float32)
        rows, starts, counts, evq, evs = (self.from_host(np.ascontiguousarray(a)) for a in (
            plan.rows.astype(np.int64), plan.starts.astype(np.int32),
            plan.counts.astype(np.int32), plan.ev_query.astype(np.int32),
            plan.ev_sign.astype(np.int32)))
        u, d = plan.rows.shape[0], mu.shape[1]
        f = np.float32
        self._launch(
            "splat", "hebbian", (-(-u // 128), 1, 1), (128, 1, 1),
            (mu, params, q, rows, starts, counts, evq, evs, np.uint32(u), np.uint32(d),
             np.uint32(int(rates.renormalize)), f(rates.lr_alpha), f(rates.lr_kappa),
             f(rates.lr_mu), f(rates.alpha_min), f(rates.alpha_max), f(rates.kappa_min),
             f(rates.kappa_max), f(rates.eps)))

    def decay(self, params, now, lam):
        self.check_in_place("params", params)
        n = params.shape[0]
        if n == 0:
            return
        self._launch(
            "splat", "decay", (-(-n // 256), 1, 1), (256, 1, 1),
            (params, np.uint64(n), np.float32(lam), np.float32(now)))

    def philox(self, row0, rows, d, seed, stream, *, normal=True, centers=None, spread=1.0):
        cp = self.cp
        out = cp.empty((rows, d), dtype=cp.float32 if normal else cp.uint32)
        if rows == 0:
            return out
        cptr = cp.ascontiguousarray(centers, dtype=cp.float32) if centers is not None \
            else cp.zeros(1, dtype=cp.float32)
        clusters = 0 if centers is None else centers.shape[0]
        step = self.max_grid * 16  # rows go on grid y, 16 per block
        for s in range(0, rows, step):
            r = min(step, rows - s)
            self._launch("splat", "philox", (-(-((d + 3) // 4) // 16), -(-r // 16), 1),
                         (16, 16, 1),
                         (out[s : s + r], cptr, np.uint64(row0 + s), np.uint32(r),
                          np.uint32(d), np.uint64(seed), np.uint32(stream),
                          np.uint32(int(normal)), np.uint32(clusters), np.float32(spread)))
        return out

    def kmeans_sums(self, x, assign, k):
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        a = np.asarray(assign)
        order = np.argsort(a, kind="stable")  # a fixed order: deterministic sums
        offsets = np.zeros(k + 1, dtype=np.int64)
        counts = np.bincount(a, minlength=k).astype(np.int64)
        np.cumsum(counts, out=offsets[1:])
        d = x.shape[1]
        sums = cp.zeros((k, d), dtype=cp.float32)
        if k:
            self._launch(
                "kmeans", "kmeans_sums", (k, -(-d // 64), 1), (64, 1, 1),
                (x, self.from_host(order.astype(np.int64)), self.from_host(offsets), sums,
                 np.uint32(k), np.uint32(d)))
        return self.to_host(sums).astype(np.float64), counts

    def gather_rows(self, native, index):
        return self.to_host(native[self.from_host(np.asarray(index, dtype=np.int64))])

    def scatter_rows(self, native, index, values):
        native[self.from_host(np.asarray(index, dtype=np.int64))] = self.from_host(
            np.ascontiguousarray(values, dtype=native.dtype))


class _CudaBatch(KernelBatch):
    """Kernels launched as they are recorded, on the current stream. Arguments go in the
    spec's (the C signature's) order; scalars as NumPy scalars of exactly their C types."""

    def __init__(self, backend: CudaBackend) -> None:
        self.be = backend
        self.cp = backend.cp
        self._unused = None

    def scratch(self, n, dtype=np.float32):
        return self.cp.empty(int(n), dtype=dtype)

    def upload(self, host):
        return self.be.from_host(np.ascontiguousarray(host))

    def upload_ids(self, host):
        return self.upload(np.asarray(host, dtype=np.int64))

    def seeds(self, n):
        return seeds(self.cp, int(n))

    def launch(self, spec, grid, *args):
        bufs, scal = split_args(spec, args)
        if any(b is None for b in bufs):
            if self._unused is None:  # one small buffer for the pointers a kernel ignores
                self._unused = self.cp.zeros(4, dtype=self.cp.float32)
        it_b, it_s = iter(bufs), iter(cuda_scalars(spec, scal))
        call = []
        for kind in spec.kinds:
            if kind in ("buf", "ids"):
                b = next(it_b)
                call.append(self._unused if b is None else b)
            else:
                call.append(next(it_s))
        self.be._launch(spec.module, spec.name, grid, spec.local, tuple(call))

    def run(self, *buffers):
        return list(buffers)  # device arrays; the caller's reads synchronise


class _CudaRows(RowBuffer):
    """Row buffer in device memory; host rows are copied up through the backend (counted)."""

    def __init__(self, backend: CudaBackend, dim: int, dtype) -> None:
        super().__init__(backend.cp, dim, dtype)
        self.backend = backend

    def append(self, rows) -> None:
        if isinstance(rows, np.ndarray):
            rows = self.backend.from_host(rows)
        super().append(rows)
