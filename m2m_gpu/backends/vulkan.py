"""The ``vulkan`` backend: GLSL compute shaders (``shaders/*.comp``, committed SPIR-V) run
through Kompute (``kp``).

Device arrays are :class:`VkArray`: a matrix split by rows into chunks, one Kompute tensor
per chunk, so that no buffer exceeds a storage-buffer range and every index fits in 32 bits.

Probing happens in a subprocess: with no usable Vulkan driver, ``kp.Manager()`` aborts the
whole process instead of raising, and a probe must never take the caller down.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np

from .._resources import shader_dir
from ..errors import GridLimitError
from ..ops.topk import seeds
from .abi import MAX_GRID
from .base import (
    BackendInfo,
    HebbianPlan,
    HebbianRates,
)
from .gpu import GpuBackend, KernelBatch, scalar_words, split_args

CHUNK_BYTES = 64 << 20  # largest single device buffer
CHUNK_ROWS_MAX = 32768  # rows per chunk (queries per dispatch stay under the 65535 limit)
TILE_BUDGET_BYTES = 64 << 20  # largest block of distances held on the device at once
SOFTWARE_DRIVERS = re.compile(r"llvmpipe|lavapipe|swiftshader|softpipe", re.IGNORECASE)
DEVICE_ENV = "M2M_VULKAN_DEVICE"  # index of the physical device to use

_PROBE_SCRIPT = """
import json, sys
import kp
mgr = kp.Manager()
print(json.dumps(mgr.list_devices()))
"""


def _kp_version() -> str:
    try:
        return metadata.version("kp")
    except metadata.PackageNotFoundError:
        return "unknown"


@cache
def _list_devices() -> tuple[list[dict] | None, str]:
    """Physical devices as Kompute sees them, from a subprocess (or None and why not)."""
    env = dict(os.environ)
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE_SCRIPT], capture_output=True, text=True,
            timeout=60, env=env,
        )
    except subprocess.TimeoutExpired:
        return None, "probing Vulkan devices timed out after 60 s"
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["(no output)"]
        how = f"signal {-res.returncode}" if res.returncode < 0 else f"exit {res.returncode}"
        return None, f"kp.Manager() failed ({how}): no usable Vulkan device? {tail[0]}"
    try:
        devices = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, f"unexpected probe output: {res.stdout[-200:]!r}"
    return devices, ""


def _device_type(name: str) -> str:
    return "software" if SOFTWARE_DRIVERS.search(name) else "gpu"


def _choose_device(devices: list[dict]) -> int:
    if os.environ.get(DEVICE_ENV, "").strip():
        return int(os.environ[DEVICE_ENV])
    for i, dev in enumerate(devices):  # prefer a real GPU when there is one
        if _device_type(dev.get("device_name", "")) == "gpu":
            return i
    return 0


def probe() -> BackendInfo:
    if not (ctypes.util.find_library("vulkan") or _loadable("libvulkan.so.1")):
        return BackendInfo("vulkan", False, "no Vulkan loader (libvulkan.so.1); on Debian: "
                           "apt-get install libvulkan1 mesa-vulkan-drivers")
    if importlib.util.find_spec("kp") is None:
        return BackendInfo("vulkan", False, "Kompute (kp) is not installed; scripts/setup.sh "
                           "builds it offline")
    devices, why = _list_devices()
    if devices is None:
        return BackendInfo("vulkan", False, why)
    if not devices:
        return BackendInfo("vulkan", False, "the Vulkan loader reports no physical device")
    index = _choose_device(devices)
    if not 0 <= index < len(devices):
        return BackendInfo("vulkan", False, f"{DEVICE_ENV}={index} but only {len(devices)} "
                           "Vulkan device(s) exist")
    name = devices[index].get("device_name", "?")
    return BackendInfo(
        "vulkan", True, device=name, device_type=_device_type(name),
        versions={"kp": _kp_version(), "device_index": str(index),
                  "devices": "; ".join(d.get("device_name", "?") for d in devices)},
    )


def _loadable(lib: str) -> bool:
    try:
        ctypes.CDLL(lib)
        return True
    except OSError:
        return False


def create(info: BackendInfo) -> VulkanBackend:
    return VulkanBackend(info)


class VkArray:
    """A row-chunked array in Vulkan device memory (float32, float16, int32 or uint32
    elements; float16 is packed two per 32-bit word, see ``_upload``).

    ``parts`` is a list of ``(first_row, rows, tensor)``; chunks hold at most
    ``chunk_rows`` rows. Indexes grow it with :meth:`append` (only the last, partly filled
    chunk is rewritten) and shrink it with :meth:`keep`.
    """

    STORED = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int32),
              np.dtype(np.uint32)}

    def __init__(self, backend: VulkanBackend, shape: tuple[int, ...], dtype: np.dtype,
                 chunk_rows: int | None = None) -> None:
        self.backend = backend
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)  # the dtype handed back by to_host
        # Arrays that kernels read side by side (mu and params) share their chunking.
        self.chunk_rows = chunk_rows or backend._chunk_rows(
            self.shape, _stored_dtype(self.dtype).itemsize)
        self.parts: list[tuple[int, int, Any]] = []

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _stored_dtype(self.dtype).itemsize

    def chunks(self):
        """(first_row, rows, tensor) for every chunk."""
        return list(self.parts)

    # row-store interface, used by the indexes
    def view(self) -> VkArray:
        return self

    def append(self, rows: np.ndarray) -> None:
        """Append rows; if an upload fails (device out of memory) nothing is changed."""
        rows = np.ascontiguousarray(rows)
        parts = list(self.parts)
        if parts and parts[-1][1] < self.chunk_rows:  # top up the last chunk
            first, count, tensor = parts.pop()
            last = self._chunk_host(count, tensor)
            rows = np.concatenate([last.astype(rows.dtype, copy=False), rows])
            start = first
        else:
            start = self.shape[0]
        for s in range(0, rows.shape[0], self.chunk_rows):
            block = rows[s : s + self.chunk_rows]
            parts.append((start + s, block.shape[0], self.backend._upload(block)))
        self.parts = parts
        self.shape = (start + rows.shape[0],) + self.shape[1:]

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` rows: later chunks are dropped, and only a chunk cut
        in the middle is rewritten."""
        n = min(int(n), self.shape[0])
        parts = [p for p in self.parts if p[0] < n]
        if parts and parts[-1][0] + parts[-1][1] > n:
            first, count, tensor = parts.pop()
            last = self._chunk_host(count, tensor)
            parts.append((first, n - first, self.backend._upload(last[: n - first].copy())))
        self.parts = parts
        self.shape = (n,) + self.shape[1:]

    def _chunk_host(self, count: int, tensor: Any) -> np.ndarray:
        """One chunk's ``count`` rows on the host, in the stored dtype."""
        raw = self.backend._download(tensor)
        size = count * int(np.prod(self.shape[1:], dtype=np.int64))
        if _stored_dtype(self.dtype) == np.float16:
            raw = raw.view(np.float16)[:size]  # drop the padding half of an odd count
        return raw.reshape((count,) + self.shape[1:])

    def keep(self, index: np.ndarray) -> None:
        host = self.backend.to_host(self)[index]
        self.parts, self.shape = [], (0,) + self.shape[1:]
        self.append(host.astype(_stored_dtype(host.dtype), copy=False))


class _VkBatch(KernelBatch):
    """Kernel launches recorded into one Kompute sequence (uploads first, in record order),
    evaluated by :meth:`run`. Algorithms are made once per (shader, tensors, workgroups)
    and dispatched with their push constants (all uint32: kp 0.9 gives push and
    specialisation constants one dtype)."""

    def __init__(self, backend: VulkanBackend) -> None:
        self.be = backend
        self.seq = backend.mgr.sequence()
        self._algos: dict = {}
        self._keep: list = []  # tensors and algorithms must outlive the recorded sequence

    def _dispatch(self, shader: str, tensors, groups, push) -> None:
        key = (shader, tuple(id(t) for t in tensors), tuple(int(g) for g in groups))
        algo = self._algos.get(key)
        if algo is None:
            algo = self.be._algorithm(list(tensors), self.be.spirv(shader), groups, [],
                                      np.zeros(len(push), dtype=np.uint32))
            self._algos[key] = algo
        self.seq.record(self.be.kp.OpAlgoDispatch(algo, np.asarray(push, dtype=np.uint32)))

    def scratch(self, n, dtype=np.float32):
        t = self.be.mgr.tensor_t(np.zeros(int(n), dtype=_stored_dtype(np.dtype(dtype))))
        self._keep.append(t)
        return t

    def upload(self, host):
        flat = np.ascontiguousarray(host).ravel()
        t = self.be.mgr.tensor_t(flat)
        self.seq.record(self.be.kp.OpTensorSyncDevice([t]))
        self.be.transfers.add_h2d(flat.nbytes)
        self._keep.append(t)
        return t

    def upload_ids(self, host):
        return self.upload(np.asarray(host).astype(np.int32))

    def seeds(self, n):
        keys, ids = seeds(np, int(n))
        return self.upload(keys), self.upload(ids.astype(np.int32))

    def launch(self, spec, grid, *args):
        bufs, scal = split_args(spec, args)
        tensors = [self.be._dummy if b is None else b for b in bufs]
        self._dispatch(spec.name, tensors, grid, scalar_words(spec, scal))

    def run(self, *buffers):
        self.seq.record(self.be.kp.OpTensorSyncLocal(list(buffers)))
        self.seq.eval()
        out = [b.data().copy() for b in buffers]
        self.be.transfers.add_d2h(sum(o.nbytes for o in out))
        return out


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    if dtype in VkArray.STORED:
        return dtype
    if dtype in (np.dtype(np.int64), np.dtype(np.bool_)):
        return np.dtype(np.int32)
    return np.dtype(np.float32)


class VulkanBackend(GpuBackend):
    name = "vulkan"

    def __init__(self, info: BackendInfo) -> None:
        super().__init__(info)
        import kp

        self.kp = kp
        self.mgr = kp.Manager(int(info.versions.get("device_index", 0)))
        self._spirv: dict[str, bytes] = {}
        self._dummy = self.mgr.tensor_t(np.zeros(4, dtype=np.float32))  # unused bindings
        if info.device_type != "gpu":  # lavapipe runs workgroups on a thread per core
            self.select_groups = 4 * (os.cpu_count() or 1)
        self.mgr.sequence().eval(kp.OpTensorSyncDevice([self._dummy]))

    def _algorithm(self, tensors, spirv: bytes, groups, spec, push):
        """``kp.Manager.algorithm`` after checking the workgroup counts: y and z against
        ``max_grid``, x against the 65535 that Vulkan guarantees on every device."""
        self.check_grid(groups)
        if int(groups[0]) > MAX_GRID:
            raise GridLimitError(f"vulkan: {int(groups[0])} workgroups on x exceed {MAX_GRID}")
        return self.mgr.algorithm(tensors, spirv, [int(g) for g in groups], spec, push)

    # ---- driver plumbing (m2m_gpu.ops runs knn, splat_topk, energy, scan_cells) --------
    @property
    def result_xp(self):
        return np

    @property
    def tile_budget_bytes(self) -> int:
        return TILE_BUDGET_BYTES

    def batch(self) -> _VkBatch:
        return _VkBatch(self)

    def query_blocks(self, queries: VkArray, max_rows: int):
        """(first, rows, tensor) of the queries, no block over ``max_rows`` rows; chunks
        larger than that are cut again through the host (only ever needed when a test
        lowers ``max_grid``, or for the cell scan's budget)."""
        step = max(1, int(max_rows))
        for first, mq, tensor in queries.chunks():
            if mq <= step:
                yield first, mq, tensor
                continue
            host = queries._chunk_host(mq, tensor)
            for a in range(0, mq, step):
                block = np.ascontiguousarray(host[a : a + step])
                yield first + a, block.shape[0], self._upload(block)

    def row_blocks(self, rows: VkArray, params: VkArray | None = None):
        """(first row, rows, tensor, params tensor) per chunk; ``params`` must be chunked
        like ``rows`` (``from_host(params, like=rows)``)."""
        if params is None:
            for first, count, tensor in rows.chunks():
                yield first, count, tensor, self._dummy
            return
        self._check_aligned(rows, params)
        for (first, count, tensor), (_, _, ptensor) in zip(rows.chunks(), params.chunks(),
                                                           strict=True):
            yield first, count, tensor, ptensor

    def _check_aligned(self, mu: VkArray, params: VkArray) -> None:
        if mu.chunk_rows != params.chunk_rows:
            raise ValueError("mu and params must share their chunking (from_host(..., like=mu))")

    def take_rows(self, native, index):
        index = np.asarray(index, dtype=np.int64)
        uniq, inv = np.unique(index, return_inverse=True)
        return self.gather_rows(native, uniq)[inv.reshape(index.shape)]

    def limit_ops(self, nbytes: int) -> dict:
        ops = super().limit_ops(nbytes)
        what = "Kompute tensor upload / download (staging buffers)"
        ops["h2d"], ops["d2h"] = (ops["h2d"][0], what), (ops["d2h"][0], what)
        ops["why_not"] = {"device_copy": "no device copy kernel is exposed through Kompute",
                          "gemm": "Kompute reaches no vendor BLAS"}
        return ops

    def spirv(self, name: str) -> bytes:
        if name not in self._spirv:
            self._spirv[name] = (shader_dir() / f"{name}.spv").read_bytes()
        return self._spirv[name]

    # ---- arrays -------------------------------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, VkArray)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Kompute reports a failed device allocation as a RuntimeError from Vulkan."""
        text = str(exc)
        return isinstance(exc, MemoryError) or "OutOfDeviceMemory" in text or \
            "OutOfHostMemory" in text

    def _chunk_rows(self, shape: tuple[int, ...], itemsize: int) -> int:
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
        return max(1, min(CHUNK_ROWS_MAX, CHUNK_BYTES // row_bytes))

    def _upload(self, block: np.ndarray) -> Any:
        flat = np.ascontiguousarray(block).ravel()
        if flat.dtype == np.float16:  # two halves per word; an odd count gets a zero pad
            flat = np.append(flat, np.float16(0)) if flat.size % 2 else flat
            flat = flat.view(np.uint32)
        tensor = self.mgr.tensor_t(flat)
        self.mgr.sequence().eval(self.kp.OpTensorSyncDevice([tensor]))
        self.transfers.add_h2d(block.nbytes)
        return tensor

    def _download(self, tensor: Any) -> np.ndarray:
        self.mgr.sequence().eval(self.kp.OpTensorSyncLocal([tensor]))
        host = tensor.data().copy()
        self.transfers.add_d2h(host.nbytes)
        return host

    def from_host(self, array: np.ndarray, like: VkArray | None = None,
                  chunk_rows: int | None = None) -> VkArray:
        a = np.asarray(array)
        if like is not None:
            chunk_rows = like.chunk_rows
        rows = a.reshape(1) if a.ndim == 0 else a  # chunks split along the first axis
        limits = np.iinfo(np.int32)
        if a.dtype == np.int64 and a.size and (a.min() < limits.min or a.max() > limits.max):
            raise ValueError("int64 values beyond int32 cannot be stored on vulkan")
        out = VkArray(self, (0,) + rows.shape[1:], a.dtype, chunk_rows)
        out.append(rows.astype(_stored_dtype(a.dtype), copy=False))
        out.shape = a.shape
        return out

    def to_host(self, native: Any) -> np.ndarray:
        if isinstance(native, np.ndarray):
            return native
        if not native.parts:
            return np.empty(native.shape, dtype=native.dtype)
        parts = [native._chunk_host(count, t) for _, count, t in native.parts]
        host = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return host.reshape(native.shape).astype(native.dtype, copy=False)

    def row_store(self, dim: int, dtype=np.float32, like: VkArray | None = None) -> VkArray:
        return VkArray(self, (0, dim), dtype, like.chunk_rows if like is not None else None)

    # ---- single-kernel launches: hebbian, decay, philox, row copies, kmeans sums ---------
    def hebbian(self, mu, params, queries, plan: HebbianPlan, rates: HebbianRates) -> None:
        self._check_aligned(mu, params)
        if plan.size == 0:
            return
        kp, mgr = self.kp, self.mgr
        d = mu.shape[1]
        qhost = np.ascontiguousarray(self.to_host(queries) if self.is_native(queries)
                                     else queries, dtype=np.float32)
        tensors = [self._upload(a) for a in (
            qhost.ravel(), plan.ev_query.astype(np.uint32), plan.ev_sign.astype(np.int32))]
        local = np.empty(plan.rows.shape[0], dtype=np.uint32)
        bounds = []
        for first, rows, _ in mu.chunks():
            a, b = np.searchsorted(plan.rows, [first, first + rows])
            local[a:b] = plan.rows[a:b] - first
            bounds.append((a, b))
        rows_t, starts_t, counts_t = (self._upload(x) for x in (
            local, plan.starts.astype(np.uint32), plan.counts.astype(np.uint32)))
        f = lambda v: int(np.float32(v).view(np.uint32))  # noqa: E731
        consts = [f(rates.lr_alpha), f(rates.lr_kappa), f(rates.lr_mu), f(rates.alpha_min),
                  f(rates.alpha_max), f(rates.kappa_min), f(rates.kappa_max), f(rates.eps)]
        seq = mgr.sequence()
        for (a, b), (_, _, chunk), (_, _, ptensor) in zip(bounds, mu.chunks(), params.chunks(),
                                                          strict=True):
            if b == a:
                continue
            algo = self._algorithm([chunk, ptensor, tensors[0], rows_t, starts_t, counts_t,
                                  tensors[1], tensors[2]], self.spirv("hebbian"),
                                 [-(-(b - a) // 64), 1, 1], [], np.zeros(12, dtype=np.uint32))
            push = np.array([b - a, d, a, int(rates.renormalize)] + consts, dtype=np.uint32)
            seq.record(kp.OpAlgoDispatch(algo, push))
        seq.eval()

    def decay(self, params, now, lam):
        kp, mgr = self.kp, self.mgr
        f = lambda v: int(np.float32(v).view(np.uint32))  # noqa: E731
        seq = mgr.sequence()
        for _, rows, ptensor in params.chunks():
            algo = self._algorithm([ptensor], self.spirv("decay"), [-(-rows // 256), 1, 1], [],
                                 np.zeros(3, dtype=np.uint32))
            seq.record(kp.OpAlgoDispatch(algo, np.array([rows, f(lam), f(now)], np.uint32)))
        seq.eval()

    def philox(self, row0, rows, d, seed, stream, *, normal=True, centers=None, spread=1.0):
        kp, mgr = self.kp, self.mgr
        dtype = np.float32 if normal else np.uint32
        out = VkArray(self, (0, d), dtype)
        out.chunk_rows = min(out.chunk_rows, self.max_grid * 16)  # rows go on grid y
        ctensor = centers.parts[0][2] if centers is not None and centers.parts else self._dummy
        clusters = centers.shape[0] if centers is not None else 0
        spread_bits = int(np.float32(spread).view(np.uint32))
        seq = mgr.sequence()
        algos = []
        for s in range(0, rows, out.chunk_rows):
            r = min(out.chunk_rows, rows - s)
            tensor = mgr.tensor_t(np.zeros(r * d, dtype=dtype))
            algo = self._algorithm([tensor, ctensor], self.spirv("philox"),
                                 [-(-((d + 3) // 4) // 16), -(-r // 16), 1], [],
                                 np.zeros(10, dtype=np.uint32))
            start = row0 + s
            push = np.array([start & 0xFFFFFFFF, start >> 32, r, d, seed & 0xFFFFFFFF,
                             seed >> 32, stream, int(normal), clusters, spread_bits],
                            dtype=np.uint32)
            seq.record(kp.OpAlgoDispatch(algo, push))
            out.parts.append((s, r, tensor))
            algos.append(algo)
        if out.parts:
            seq.eval()
        out.shape = (rows, d)
        return out

    def _rows_copy(self, native: VkArray, index: np.ndarray, values: np.ndarray | None):
        """Gather (values None) or scatter rows of a VkArray, chunk by chunk, on the device."""
        kp, mgr = self.kp, self.mgr
        width = int(np.prod(native.shape[1:], dtype=np.int64)) if native.ndim > 1 else 1
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((index.shape[0], width), dtype=np.uint32)
        raw = None
        if values is not None:
            stored = _stored_dtype(np.asarray(values).dtype)
            raw = np.ascontiguousarray(values, dtype=stored).view(np.uint32).reshape(-1, width)
        for first, rows, tensor in native.chunks():
            sel = np.flatnonzero((index >= first) & (index < first + rows))
            if sel.size == 0:
                continue
            for a in range(0, sel.size, 4 * self.max_grid):  # 4 rows per workgroup on y
                part = sel[a : a + 4 * self.max_grid]
                local = self._upload((index[part] - first).astype(np.uint32))
                dense = self._upload(raw[part].ravel() if raw is not None
                                     else np.zeros(part.size * width, dtype=np.uint32))
                algo = self._algorithm([tensor, dense, local], self.spirv("rows_copy"),
                                       [-(-width // 64), -(-part.size // 4), 1], [],
                                       np.zeros(3, dtype=np.uint32))
                seq = mgr.sequence()
                seq.record(kp.OpAlgoDispatch(
                    algo, np.array([part.size, width, 0 if raw is None else 1], np.uint32)))
                seq.eval()
                if raw is None:
                    out[part] = self._download(dense).reshape(part.size, width)
        return out

    def kmeans_sums(self, x, assign, k):
        kp, mgr = self.kp, self.mgr
        d = x.shape[1]
        sums = mgr.tensor_t(np.zeros(k * d, dtype=np.float32))
        seq = mgr.sequence()
        seq.record(kp.OpTensorSyncDevice([sums]))
        keep = []  # the tensors must outlive the recorded sequence
        for first, rows, chunk in x.chunks():
            a = np.asarray(assign[first : first + rows])
            order = np.argsort(a, kind="stable").astype(np.uint32)
            offsets = np.zeros(k + 1, dtype=np.uint32)
            np.cumsum(np.bincount(a, minlength=k), out=offsets[1:])
            ot, ft = self._upload(order), self._upload(offsets)
            for base in range(0, k, 65535):  # workgroup counts per dimension <= 65535
                groups = [min(65535, k - base), -(-d // 64), 1]
                algo = self._algorithm([chunk, ot, ft, sums], self.spirv("kmeans_sums"), groups,
                                     [], np.zeros(3, dtype=np.uint32))
                seq.record(kp.OpAlgoDispatch(algo, np.array([k, d, base], np.uint32)))
                keep.append(algo)
            keep.append((ot, ft))
        seq.record(kp.OpTensorSyncLocal([sums]))
        seq.eval()
        out = sums.data().reshape(k, d).astype(np.float64)
        self.transfers.add_d2h(k * d * 4)
        return out, np.bincount(np.asarray(assign), minlength=k).astype(np.int64)

    def gather_rows(self, native, index):
        host = self._rows_copy(native, index, None)
        stored = _stored_dtype(native.dtype)
        return host.view(stored).reshape((host.shape[0],) + native.shape[1:]).astype(
            native.dtype, copy=False)

    def scatter_rows(self, native, index, values):
        self._rows_copy(native, index, np.asarray(values).reshape(len(index), -1))

