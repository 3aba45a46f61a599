"""What the GPU backends (cuda, vulkan) share: their kernels are driven by ``m2m_gpu.ops``.

A GPU backend supplies plumbing only:

* ``batch()``: a :class:`KernelBatch`: buffers, and ``launch(spec, grid, *args)`` of any
  kernel described by an ``abi.KernelSpec``; eager on CuPy, recorded into one Kompute
  sequence on Vulkan, run by ``run(*buffers)``, which returns them;
* ``query_blocks(queries, max_rows)``: ``(first, rows, buffer)`` of the query matrix, no
  block over ``max_rows``;
* ``row_blocks(rows, params)``: ``(first, rows, buffer, params buffer)`` of a database (one
  block on cuda; the chunks of a :class:`~m2m_gpu.backends.vulkan.VkArray` on vulkan);
* ``tile_rows(mq, rows)``: the widest key tile for ``mq`` queries within the tile budget;
* ``result_xp`` (the array module of results: CuPy keeps them on the device) and
  ``take_rows(native, index)``.

The drivers (tiling, the top-k ping-pong, the final (key, id) sort, the key -> d2
recovery, the energy finish, the cell-scan layout) live once in ``m2m_gpu.ops``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from ..locking import DeviceLock
from ..ops.cells import device_scan
from ..ops.knn import device_knn
from ..ops.splat import device_energy, device_splat_topk
from .base import Backend

DIST_ROWS_PER_GROUP = 64  # knn_distance: database rows per workgroup (grid x)
_CUDA_SCALARS = {"u32": np.uint32, "u64": np.uint64, "i64": np.int64, "f32": np.float32}


def scalar_words(spec, values) -> list[int]:
    """A spec's scalar arguments as GLSL push-constant words (all uint32)."""
    out = []
    for (kind, name), v in zip(spec.scalars, values, strict=True):
        if kind == "f32":
            out.append(int(np.float32(v).view(np.uint32)))
            continue
        v = int(v)
        if not 0 <= v < 2**32:
            raise ValueError(f"{spec.name}: {name} = {v} does not fit a 32-bit push constant")
        out.append(v)
    return out


def cuda_scalars(spec, values) -> list:
    """A spec's scalar arguments as NumPy scalars of exactly their C types (CuPy marshals a
    Python int as int64 and a float as float64)."""
    return [_CUDA_SCALARS[kind](v) for (kind, _), v in zip(spec.scalars, values, strict=True)]


def split_args(spec, args):
    """``(buffers, scalars)`` of a launch's arguments, each in spec order."""
    if len(args) != len(spec.args):
        raise TypeError(f"{spec.name} takes {len(spec.args)} arguments, got {len(args)}")
    bufs = [v for v, kind in zip(args, spec.kinds, strict=True) if kind in ("buf", "ids")]
    scal = [v for v, kind in zip(args, spec.kinds, strict=True) if kind not in ("buf", "ids")]
    return bufs, scal


class KernelBatch:
    """The kernel launches of one driver pass. ``launch(spec, grid, *args)`` takes the
    arguments in the order of ``spec.args`` (an ``abi.KernelSpec``): buffers made by this
    batch (or ``None`` for an unused one), Python numbers for the scalars; each backend
    marshals them its way. Buffers are flat; ``seeds(n)`` is a (keys, ids) pair holding the
    seeds of a running top-k; ``ids`` buffers use the backend's index type."""

    def scratch(self, n: int, dtype=np.float32) -> Any:
        raise NotImplementedError

    def upload(self, host: np.ndarray) -> Any:
        raise NotImplementedError

    def upload_ids(self, host: np.ndarray) -> Any:
        raise NotImplementedError

    def seeds(self, n: int) -> tuple[Any, Any]:
        raise NotImplementedError

    def launch(self, spec, grid, *args) -> None:
        raise NotImplementedError

    def run(self, *buffers) -> list:
        """Run what was recorded; the buffers' contents (``be.result_xp`` arrays)."""
        raise NotImplementedError


class GpuBackend(Backend):
    """A backend whose knn, splat_topk, energy and scan_cells are the ``ops`` drivers."""

    tile_budget_bytes: int = 64 << 20  # the largest key tile held on the device
    select_groups: int = 256  # workgroups a selection should keep busy (small batches)

    def __init__(self, info) -> None:
        super().__init__(info)
        # one queue, one thread at a time: objects sharing the backend hold it around
        # their device work (made anew in a forked child)
        self.device_lock = DeviceLock()

    @property
    @abstractmethod
    def result_xp(self):
        """The array module of driver results (``cupy`` or ``numpy``)."""

    @abstractmethod
    def batch(self) -> KernelBatch: ...

    @abstractmethod
    def query_blocks(self, queries, max_rows: int): ...

    @abstractmethod
    def row_blocks(self, rows, params=None): ...

    @abstractmethod
    def take_rows(self, native, index): ...

    def tile_rows(self, mq: int, rows: int) -> int:
        return min(rows, max(DIST_ROWS_PER_GROUP, self.tile_budget_bytes // (4 * mq)))

    def knn(self, queries, database, k, metric, *, database_sqnorms=None):
        return device_knn(self, queries, database, k, metric)

    def splat_topk(self, queries, mu, params, k, mode, *, sqnorms=None):
        return device_splat_topk(self, queries, mu, params, k, mode)

    def energy(self, queries, mu, params, *, grad=False, sqnorms=None):
        return device_energy(self, queries, mu, params, grad)

    def scan_cells(self, queries, rows, ranges, probes, k, mode, params=None, sqnorms=None,
                   dequant=None, ranked=True):  # the kernels rank in any case
        return device_scan(self, queries, rows, ranges, probes, k, mode, params, dequant)
