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
from .base import Backend, BackendInfo

CHUNK_BYTES = 64 << 20  # largest single device buffer
CHUNK_ROWS_MAX = 32768  # rows per chunk (queries per dispatch stay under the 65535 limit)
TILE_BUDGET_BYTES = 64 << 20  # largest block of distances held on the device at once
DIST_ROWS_PER_GROUP = 64  # knn_distance.comp: database rows per workgroup
DIST_QUERIES_PER_GROUP = 16  # knn_distance.comp: queries per workgroup
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
    """A row-chunked array in Vulkan device memory (float32, int32 or uint32 elements).

    ``parts`` is a list of ``(first_row, rows, tensor)``; chunks hold at most
    ``chunk_rows`` rows. Indexes grow it with :meth:`append` (only the last, partly filled
    chunk is rewritten) and shrink it with :meth:`keep`.
    """

    STORED = {np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint32)}

    def __init__(self, backend: VulkanBackend, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.backend = backend
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)  # the dtype handed back by to_host
        self.chunk_rows = backend._chunk_rows(self.shape, 4)
        self.parts: list[tuple[int, int, Any]] = []

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * 4

    def chunks(self):
        """(first_row, rows, tensor) for every chunk."""
        return list(self.parts)

    # row-store interface, used by the indexes
    def view(self) -> VkArray:
        return self

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows)
        if self.parts and self.parts[-1][1] < self.chunk_rows:  # top up the last chunk
            first, count, tensor = self.parts.pop()
            last = self.backend._download(tensor).reshape((count,) + self.shape[1:])
            rows = np.concatenate([last.astype(rows.dtype, copy=False), rows])
            start = first
        else:
            start = self.shape[0]
        for s in range(0, rows.shape[0], self.chunk_rows):
            block = rows[s : s + self.chunk_rows]
            self.parts.append((start + s, block.shape[0], self.backend._upload(block)))
        self.shape = (start + rows.shape[0],) + self.shape[1:]

    def keep(self, index: np.ndarray) -> None:
        host = self.backend.to_host(self)[index]
        self.parts, self.shape = [], (0,) + self.shape[1:]
        self.append(host.astype(_stored_dtype(host.dtype), copy=False))


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    if dtype in VkArray.STORED:
        return dtype
    if dtype in (np.dtype(np.int64), np.dtype(np.bool_)):
        return np.dtype(np.int32)
    return np.dtype(np.float32)


class VulkanBackend(Backend):
    name = "vulkan"

    def __init__(self, info: BackendInfo) -> None:
        super().__init__(info)
        import kp

        self.kp = kp
        self.mgr = kp.Manager(int(info.versions.get("device_index", 0)))
        self._spirv: dict[str, bytes] = {}

    def spirv(self, name: str) -> bytes:
        if name not in self._spirv:
            self._spirv[name] = (shader_dir() / f"{name}.spv").read_bytes()
        return self._spirv[name]

    # ---- arrays -------------------------------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, VkArray)

    def _chunk_rows(self, shape: tuple[int, ...], itemsize: int) -> int:
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
        return max(1, min(CHUNK_ROWS_MAX, CHUNK_BYTES // row_bytes))

    def _upload(self, block: np.ndarray) -> Any:
        tensor = self.mgr.tensor_t(np.ascontiguousarray(block).ravel())
        self.mgr.sequence().eval(self.kp.OpTensorSyncDevice([tensor]))
        self.transfers.add_h2d(block.nbytes)
        return tensor

    def _download(self, tensor: Any) -> np.ndarray:
        self.mgr.sequence().eval(self.kp.OpTensorSyncLocal([tensor]))
        host = tensor.data().copy()
        self.transfers.add_d2h(host.nbytes)
        return host

    def from_host(self, array: np.ndarray) -> VkArray:
        a = np.asarray(array)
        rows = a.reshape(1) if a.ndim == 0 else a  # chunks split along the first axis
        limits = np.iinfo(np.int32)
        if a.dtype == np.int64 and a.size and (a.min() < limits.min or a.max() > limits.max):
            raise ValueError("int64 values beyond int32 cannot be stored on vulkan")
        out = VkArray(self, (0,) + rows.shape[1:], a.dtype)
        out.append(rows.astype(_stored_dtype(a.dtype), copy=False))
        out.shape = a.shape
        return out

    def to_host(self, native: Any) -> np.ndarray:
        if isinstance(native, np.ndarray):
            return native
        if not native.parts:
            return np.empty(native.shape, dtype=native.dtype)
        parts = [self._download(t) for _, _, t in native.parts]
        host = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return host.reshape(native.shape).astype(native.dtype, copy=False)

    def row_store(self, dim: int, dtype=np.float32) -> VkArray:
        return VkArray(self, (0, dim), dtype)

    # ---- k-NN --------------------------------------------------------------------------
    def knn(self, queries, database, k, metric, *, database_sqnorms=None):
        d = database.shape[1]
        metric_code = 0 if metric == "l2" else 1
        out_keys, out_ids = [], []
        for _, mq, qtensor in queries.chunks():
            keys, ids = self._knn_block(qtensor, mq, database, d, k, metric_code)
            out_keys.append(keys)
            out_ids.append(ids)
        keys = np.concatenate(out_keys)
        ids = np.concatenate(out_ids).astype(np.int64)
        order = np.argsort(keys, axis=1, kind="stable")  # the k survivors, best first
        keys = np.take_along_axis(keys, order, 1)
        ids = np.take_along_axis(ids, order, 1)
        return (keys if metric == "l2" else -keys), ids

    def _knn_block(self, qtensor, mq, database, d, k, metric_code):
        kp, mgr = self.kp, self.mgr
        t_max = min(database.chunk_rows, max(DIST_ROWS_PER_GROUP, TILE_BUDGET_BYTES // (4 * mq)))
        tile = mgr.tensor_t(np.zeros(mq * t_max, dtype=np.float32))
        best = [
            (mgr.tensor_t(np.full(mq * k, np.inf, dtype=np.float32)),
             mgr.tensor_t(np.full(mq * k, -1, dtype=np.int32)))
            for _ in range(2)
        ]
        dist_groups = [
            -(-t_max // DIST_ROWS_PER_GROUP), -(-mq // DIST_QUERIES_PER_GROUP), 1
        ]
        select = [
            mgr.algorithm([tile, *best[i], *best[1 - i]], self.spirv("topk_select"), [mq, 1, 1],
                          [], np.zeros(3, dtype=np.uint32))
            for i in range(2)
        ]
        seq = mgr.sequence()
        init = [*best[0], *best[1]]
        seq.record(kp.OpTensorSyncDevice(init))
        self.transfers.add_h2d(sum(int(t.size()) * 4 for t in init))
        side = 0
        for first_row, rows, chunk in database.chunks():
            dist = mgr.algorithm([qtensor, chunk, tile], self.spirv("knn_distance"),
                                 dist_groups, [], np.zeros(5, dtype=np.uint32))
            for offset in range(0, rows, t_max):
                t = min(t_max, rows - offset)
                push = np.array([mq, t, d, offset, metric_code], dtype=np.uint32)
                seq.record(kp.OpAlgoDispatch(dist, push))
                push = np.array([t, k, first_row + offset], dtype=np.uint32)
                seq.record(kp.OpAlgoDispatch(select[side], push))
                side = 1 - side
        result = list(best[side])
        seq.record(kp.OpTensorSyncLocal(result))
        seq.eval()
        keys = result[0].data().reshape(mq, k).copy()
        ids = result[1].data().reshape(mq, k).copy()
        self.transfers.add_d2h(keys.nbytes + ids.nbytes)
        return keys, ids
