"""The interface every backend implements, and the bookkeeping they share.

A backend owns a device (or the host, for ``cpu``), a native array type living on it, and
the kernels. Everything above this layer (``m2m_gpu.knn``, the indexes) talks to a backend
only through :class:`Backend`; adding a backend means one new module in this package and
one line in the registry.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GridLimitError, InvalidInputError
from ..locking import ForkSafeLock
from .abi import MAX_GRID, PARAM_ALPHA, PARAM_KAPPA, PARAM_TICK, PARAM_WIDTH, Key  # noqa: F401

# Ranking modes of splat_topk: the key codes of the distance kernels (see abi.Key).
MODE_SPLAT = Key.SPLAT
MODE_DISTANCE = Key.DISTANCE


@dataclass(frozen=True)
class HebbianRates:
    """The learning rates and clips of SPEC section 2 (hebbian)."""

    lr_alpha: float = 0.1
    lr_kappa: float = 0.5
    lr_mu: float = 0.01
    alpha_min: float = 0.01
    alpha_max: float = 10.0
    kappa_min: float = 0.5
    kappa_max: float = 100.0
    eps: float = 1e-6
    renormalize: bool = False  # cosine: mu is put back on the unit sphere after each move


@dataclass(frozen=True)
class HebbianPlan:
    """A batch of feedback events, ordered per splat so that splats update independently.

    Event ``j`` (in ``ev_query``/``ev_sign`` order) touches splat row ``rows[u]`` for
    ``starts[u] <= j < starts[u] + counts[u]``; within a splat, events keep the caller's
    order, which is all that sequential semantics needs: an event on splat i reads and
    writes only splat i. ``ev_sign`` is +1 (relevant) or -1 (irrelevant).
    """

    rows: np.ndarray  # int64[u], ascending
    starts: np.ndarray  # int32[u]
    counts: np.ndarray  # int32[u]
    ev_query: np.ndarray  # int32[e]: row of the queries matrix
    ev_sign: np.ndarray  # int32[e]

    @classmethod
    def build(cls, query_index: np.ndarray, rows: np.ndarray, sign: np.ndarray) -> HebbianPlan:
        """From parallel arrays in the caller's event order (the order is the tie-break)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        uniq, starts, counts = np.unique(srt, return_index=True, return_counts=True)
        return cls(uniq, starts.astype(np.int32), counts.astype(np.int32),
                   np.asarray(query_index, np.int32)[order], np.asarray(sign, np.int32)[order])

    @property
    def size(self) -> int:
        return int(self.ev_query.shape[0])


@dataclass(frozen=True)
class BackendInfo:
    """What a probe found out about a backend, without raising."""

    name: str
    available: bool
    reason: str = ""  # why it is not available (empty when it is)
    device: str = ""  # device name as the driver reports it
    device_type: str = ""  # "cpu", "gpu" or "software" (a CPU Vulkan driver such as lavapipe)
    versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "device": self.device,
            "device_type": self.device_type,
            "versions": dict(self.versions),
        }


class TransferStats:
    """Bytes and copies moved between host and device, per direction (thread-safe)."""

    def __init__(self) -> None:
        self._lock = ForkSafeLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.h2d_bytes = self.d2h_bytes = 0
            self.h2d_copies = self.d2h_copies = 0

    def add_h2d(self, nbytes: int) -> None:
        with self._lock:
            self.h2d_bytes += int(nbytes)
            self.h2d_copies += 1

    def add_d2h(self, nbytes: int) -> None:
        with self._lock:
            self.d2h_bytes += int(nbytes)
            self.d2h_copies += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "h2d_bytes": self.h2d_bytes,
                "d2h_bytes": self.d2h_bytes,
                "h2d_copies": self.h2d_copies,
                "d2h_copies": self.d2h_copies,
            }

    def __repr__(self) -> str:
        return f"TransferStats({self.snapshot()})"


class Backend(ABC):
    """One compute device and its kernels.

    Native arrays are what the backend computes on: ``numpy.ndarray`` for cpu,
    ``cupy.ndarray`` for cuda, :class:`m2m_gpu.backends.vulkan.VkArray` for vulkan. Every
    host <-> device copy goes through :meth:`from_host` / :meth:`to_host` (or is counted
    in :attr:`transfers` by the backend itself).
    """

    name: str = ""
    uses_sqnorms: bool = False  # whether knn() makes use of database_sqnorms
    # Most workgroups a launch may put on grid y or z (tests lower it to run the split
    # paths on small inputs; abi.MAX_GRID is the hardware's).
    max_grid: int = MAX_GRID
    # Held around device work by objects that share this backend between threads: a real
    # lock where the device's queue must not be used by two threads at once (GpuBackend),
    # none here (the cpu kernels are safe from several threads).
    device_lock: Any = contextlib.nullcontext()

    def __init__(self, info: BackendInfo) -> None:
        self.info = info
        self.transfers = TransferStats()
        self.launches = {"dispatches": 0, "workgroups": 0}  # kernel launches so far

    # ---- arrays -------------------------------------------------------------------------
    @abstractmethod
    def from_host(self, array: np.ndarray, like: Any = None) -> Any:
        """Copy a host array to the device (counted) and return the native array. ``like``:
        a native array this one is read beside (row for row, e.g. ``params`` beside
        ``mu``); backends that split arrays into buffers split both the same way."""

    @abstractmethod
    def to_host(self, native: Any) -> np.ndarray:
        """Copy a native array to the host (counted) and return a NumPy array."""

    @abstractmethod
    def is_native(self, obj: Any) -> bool:
        """True when ``obj`` is already this backend's native array type."""

    def adopt(self, obj: Any) -> Any | None:
        """Take a foreign array that lives on this device without copying (DLPack), or None."""
        return None

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failed device allocation (the tiers then shrink the hot tier
        and retry); cupy's OutOfMemoryError is a MemoryError."""
        return isinstance(exc, MemoryError)

    @staticmethod
    def check_in_place(what: str, native, dtype=np.float32) -> None:
        """Kernels that update an array in place (hebbian, decay) need it in the layout
        they write: a converted copy would silently drop the update."""
        if native.dtype != dtype or not native.flags.c_contiguous:
            raise InvalidInputError(f"{what} must be C-contiguous {np.dtype(dtype).name} to be "
                                    f"updated in place, got {native.dtype} "
                                    f"{'C' if native.flags.c_contiguous else 'non-C'}-ordered")

    def check_grid(self, grid) -> None:
        """Raise :class:`GridLimitError` if a launch's grid y or z exceeds ``max_grid``;
        every launch passes here, and is counted in :attr:`launches`."""
        grid = tuple(int(g) for g in grid)
        if any(g > self.max_grid for g in grid[1:]):
            raise GridLimitError(f"{self.name}: a launch of grid {grid} exceeds "
                                 f"{self.max_grid} workgroups on y or z")
        self.launches["dispatches"] += 1
        self.launches["workgroups"] += int(np.prod(grid))

    def sqnorms(self, native) -> Any:
        """``||x||^2`` of each row of a native matrix, float32 (native)."""
        host = np.asarray(self.to_host(native), dtype=np.float32)
        return self.from_host(np.einsum("ij,ij->i", host, host))

    # ---- plumbing the layers above use instead of asking which backend this is -----------
    def stage_rows(self, staged: Any) -> Any:
        """Validated rows (NumPy, or CuPy from a caller) in the form this backend's row
        stores take: host rows here (CuPy rows are copied down, counted by cuda)."""
        if isinstance(staged, np.ndarray):
            return staged
        from . import get_backend

        return get_backend("cuda").to_host(staged)

    def index_array(self, index: np.ndarray) -> Any:
        """A host int64 index array in the form this backend's row stores index with."""
        return index

    def scale_column(self, native, column: int, factors: np.ndarray) -> Any:
        """A copy of a native matrix with ``column`` multiplied by host ``factors``."""
        host = np.array(self.to_host(native))
        host[:, column] *= factors
        return self.from_host(host, like=native)

    def limit_ops(self, nbytes: int) -> dict:
        """What ``m2m_gpu.bench.limits`` times to measure this device's limits: a dict of
        ``name -> (call, description)`` for ``"h2d"`` / ``"d2h"`` (moving ``nbytes``),
        ``"device_copy"`` (``nbytes`` read and written on the device) and ``"gemm"``
        (``call(size)`` returns a callable multiplying two float32 ``size x size``
        matrices with the device's own BLAS). Operations it cannot do are absent, with
        the reason under ``"why_not"`` (``name -> sentence``)."""
        host = np.ones(nbytes // 4, dtype=np.float32)
        native = self.from_host(host)
        return {"h2d": (lambda: self.from_host(host), "from_host of a host buffer"),
                "d2h": (lambda: self.to_host(native), "to_host of a device buffer"),
                "why_not": {"device_copy": "no device copy is exposed by this backend",
                            "gemm": "no vendor BLAS is reachable from this backend"}}

    def stream(self, sources, like: Any = None):
        """Host blocks to the device, in order: ``sources`` are callables that return one
        C-contiguous host block each. Yields native blocks; a consumer queues its work on
        a block before it asks for the next one (a backend may reuse the buffer two blocks
        later). Here: one synchronous upload per block (cpu: the block itself)."""
        for source in sources:
            yield self.from_host(np.ascontiguousarray(source()), like=like)

    def synchronize(self) -> None:  # noqa: B027 - a no-op unless the backend queues work
        """Wait until queued device work is finished (a no-op for synchronous backends)."""

    # ---- kernels ------------------------------------------------------------------------
    @abstractmethod
    def knn(
        self,
        queries: Any,
        database: Any,
        k: int,
        metric: str,
        *,
        database_sqnorms: Any | None = None,
    ) -> tuple[Any, Any]:
        """Exact k-NN on C-contiguous native arrays; ``1 <= k <= n``, ``m, n >= 1``.
        Queries are float32; the database is float32 or float16 (storage only: every
        backend widens each element to float32 before it enters the arithmetic).

        ``metric`` is ``"l2"`` (squared distances, ascending) or ``"ip"`` (similarities,
        descending): cosine has been reduced to ``ip`` on normalised rows by the caller.
        ``database_sqnorms`` (``||x||^2`` per row, native) may be passed by callers that keep
        them; backends that rank without them (the GPU ones use the direct form) ignore it.
        Returns native ``(D float32[m, k], I int64[m, k])``, rows sorted best first.
        """

    # ---- splat kernels (SPEC section 2) -----------------------------------------------------
    # mu: float32[n, d] native; params: float32[n, PARAM_WIDTH] native; queries float32[m, d].
    def splat_topk(self, queries, mu, params, k, mode, *, sqnorms=None):
        """Top-k by key (``MODE_SPLAT``: ``kappa d2 - log alpha``; ``MODE_DISTANCE``: ``d2``),
        ``1 <= k <= n``; rows with ``alpha = 0`` rank last (+inf). Returns native
        ``(keys float32[m, k], ids int64[m, k], d2 float32[m, k])`` sorted best first;
        ``d2`` matches the direct form ``sum((x - mu)^2)``."""
        raise NotImplementedError(f"{self.name} has no splat_topk kernel")

    def energy(self, queries, mu, params, *, grad=False, sqnorms=None):
        """``E[m]`` (float32; ``+inf`` when every alpha is 0), and with ``grad`` the
        gradient ``float32[m, d]``; memory O(m + n) (O(m d) for the gradient)."""
        raise NotImplementedError(f"{self.name} has no energy kernel")

    def hebbian(self, mu, params, queries, plan: HebbianPlan, rates: HebbianRates) -> None:
        """Apply the planned feedback events in place (sequential semantics per splat)."""
        raise NotImplementedError(f"{self.name} has no hebbian kernel")

    def decay(self, params, now: float, lam: float) -> None:
        """In place: ``alpha *= exp(-lam (now - last_tick))``, then ``last_tick = now``."""
        raise NotImplementedError(f"{self.name} has no decay kernel")

    def philox(self, row0: int, rows: int, d: int, seed: int, stream: int, *,
               normal: bool = True, centers=None, spread: float = 1.0):
        """Philox4x32-10 data for rows ``row0 .. row0 + rows`` (see m2m_gpu.synthetic):
        raw ``uint32[rows, d]`` words, or float32 normals, optionally around ``centers``
        (native float32[c, d]) as ``centers[assign(i)] + spread * z``."""
        raise NotImplementedError(f"{self.name} has no philox kernel")

    def kmeans_sums(self, x, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-means update: per-centroid sums of the rows of ``x`` (native float32[n, d])
        assigned to each centroid (``assign``: host int64[n] in [0, k)), and the counts.
        Returns host ``(float64[k, d], int64[k])``; deterministic (no float atomics)."""
        raise NotImplementedError(f"{self.name} has no kmeans_sums kernel")

    def scan_cells(self, queries, rows, ranges: np.ndarray, probes: np.ndarray, k: int,
                   mode: int, params=None, sqnorms=None, dequant=None, ranked: bool = True):
        """Exact top-k of each query over the rows of the cells it probes (HRM2's scan).

        ``rows``: native float32[N, d], cell c holding rows ``ranges[c, 0] .. ranges[c, 1]``;
        or codes (:mod:`m2m_gpu.codecs`: float16[N, d], or SQ8 uint32 words with their
        ``dequant`` table), widened in the kernel: the result is then that of the exact
        scan over the decoded rows;
        ``probes``: host int64[m, p] cell ids per query (-1: none). ``mode`` as in
        :meth:`splat_topk` (``params`` None means alpha = kappa = 1). Returns host
        ``(keys float32[m, k], positions int64[m, k], d2 float32[m, k])``, best first,
        padded with ``+inf`` / -1 where a query's cells hold fewer than k rows.
        ``ranked=False``: the caller needs only which rows were found (it ranks them again,
        as HRM2's exact re-rank after a scan of codes does): a backend may then return
        ``(None, positions, None)`` with each row's positions in any order (-1 pads), which
        saves the cpu backend finishing and sorting them; returning the ranked result is
        also correct.
        """
        raise NotImplementedError(f"{self.name} has no scan_cells kernel")

    def gather_rows(self, native, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` of a native matrix, as a host array."""
        return np.asarray(self.to_host(native))[index]

    def scatter_rows(self, native, index: np.ndarray, values: np.ndarray) -> None:
        """In place: ``native[index] = values`` (host values, unique indexes)."""
        raise NotImplementedError(f"{self.name} has no scatter_rows")

    # ---- growable row storage (indexes) -------------------------------------------------
    def row_store(self, dim: int, dtype=np.float32, like: Any = None) -> Any:
        """An empty growable matrix on this device: ``append(rows)``, ``view()``,
        ``keep(index)``, ``nbytes``. ``rows`` are staged arrays (NumPy or CuPy). ``like``
        as in :meth:`from_host`."""
        raise NotImplementedError(f"{self.name} has no row store")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} device={self.info.device!r}>"


class RowBuffer:
    """A growable row-major matrix in NumPy or CuPy memory, for indexes that grow.

    Appends are amortised O(rows) (capacity doubles, like ``std::vector`` in FAISS);
    :meth:`view` is the C-contiguous ``(n, dim)`` block in use. ``empty(shape, dtype)``
    allocates the storage (default ``xp.empty``; the warm tier passes page-locked memory).
    """

    def __init__(self, xp, dim: int, dtype=np.float32, empty=None) -> None:
        self.xp = xp
        self._empty = empty or xp.empty
        self.buf = self._empty((0, dim), dtype=dtype)
        self.n = 0

    def view(self):
        return self.buf[: self.n]

    def append(self, rows) -> None:
        need = self.n + rows.shape[0]
        if need > self.buf.shape[0]:
            grown = self._empty((max(need, 2 * self.buf.shape[0]),) + self.buf.shape[1:],
                                dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : need] = rows
        self.n = need

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` rows (no copy)."""
        self.n = min(self.n, int(n))

    def keep(self, index) -> None:
        """Keep only rows ``index`` (ascending), in that order."""
        kept = self.buf[index]
        self.buf[: kept.shape[0]] = kept
        self.n = kept.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.view().nbytes)
