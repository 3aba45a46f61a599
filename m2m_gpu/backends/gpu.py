"""What the GPU backends (cuda, vulkan) share: their kernels are driven by ``m2m_gpu.ops``.

A GPU backend supplies plumbing only:

* ``batch()``: a :class:`KernelBatch`, the launch of each kernel (``distance``,
  ``select``, ``energy``, ``cells``) with its buffers and scalars; eager on CuPy, recorded
  into one Kompute sequence on Vulkan, run by ``run(*buffers)``, which returns them;
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

from ..ops.cells import device_scan
from ..ops.knn import device_knn
from ..ops.splat import device_energy, device_splat_topk
from .base import Backend

DIST_ROWS_PER_GROUP = 64  # knn_distance: database rows per workgroup (grid x)


class KernelBatch:
    """The kernel launches of one driver pass (see the module docstring). Buffers are flat;
    ``seeds(n)`` is a (keys, ids) pair holding the seeds of a running top-k."""

    def scratch(self, n: int, dtype=np.float32) -> Any:
        raise NotImplementedError

    def upload(self, host: np.ndarray) -> Any:
        raise NotImplementedError

    def seeds(self, n: int) -> tuple[Any, Any]:
        raise NotImplementedError

    def distance(self, q, mq, d, x, f16, offset, t, out, key, params, *, rows=False) -> None:
        """``out[i * t + j]``: key of query i and row ``offset + j`` of buffer ``x``
        (``rows``: the one-query-per-workgroup kernel, for small batches; same keys)."""
        raise NotImplementedError

    def select(self, tile, mq, t, k, best_in, best_out, id_base, *, segments=1,
               tile_ids=None, no_best=False) -> None:
        """``best_out`` = the k smallest of ``best_in`` and the (mq, t) tile (ids
        ``id_base + j``, or ``tile_ids``), ties to the smaller id (``topk_select``). With
        ``segments > 1`` and ``no_best``: the k smallest of each of the tile's parts, into
        ``best_out`` slots ``(row * segments + part) * k``."""
        raise NotImplementedError

    def energy(self, tile, mq, t, d, offset, state, gbuf, params, x, grad) -> None:
        raise NotImplementedError

    def cells(self, q, m, d, x, segs, t, p, keys, key, params, fill) -> None:
        raise NotImplementedError

    def run(self, *buffers) -> list:
        raise NotImplementedError


class GpuBackend(Backend):
    """A backend whose knn, splat_topk, energy and scan_cells are the ``ops`` drivers."""

    tile_budget_bytes: int = 64 << 20  # the largest key tile held on the device
    select_groups: int = 256  # workgroups a selection should keep busy (small batches)

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

    def scan_cells(self, queries, rows, ranges, probes, k, mode, params=None, sqnorms=None):
        return device_scan(self, queries, rows, ranges, probes, k, mode, params)
