"""The interface every backend implements, and the bookkeeping they share.

A backend owns a device (or the host, for ``cpu``), a native array type living on it, and
the kernels. Everything above this layer (``m2m_gpu.knn``, the indexes) talks to a backend
only through :class:`Backend`; adding a backend means one new module in this package and
one line in the registry.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
        self._lock = threading.Lock()
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

    def __init__(self, info: BackendInfo) -> None:
        self.info = info
        self.transfers = TransferStats()

    # ---- arrays -------------------------------------------------------------------------
    @abstractmethod
    def from_host(self, array: np.ndarray) -> Any:
        """Copy a host array to the device (counted) and return the native array."""

    @abstractmethod
    def to_host(self, native: Any) -> np.ndarray:
        """Copy a native array to the host (counted) and return a NumPy array."""

    @abstractmethod
    def is_native(self, obj: Any) -> bool:
        """True when ``obj`` is already this backend's native array type."""

    def adopt(self, obj: Any) -> Any | None:
        """Take a foreign array that lives on this device without copying (DLPack), or None."""
        return None

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
        """Exact k-NN on float32 C-contiguous native arrays; ``1 <= k <= n``, ``m, n >= 1``.

        ``metric`` is ``"l2"`` (squared distances, ascending) or ``"ip"`` (similarities,
        descending): cosine has been reduced to ``ip`` on normalised rows by the caller.
        ``database_sqnorms`` (``||x||^2`` per row, native) may be passed by callers that keep
        them; backends that rank without them (the GPU ones use the direct form) ignore it.
        Returns native ``(D float32[m, k], I int64[m, k])``, rows sorted best first.
        """

    # ---- growable row storage (indexes) -------------------------------------------------
    def row_store(self, dim: int, dtype=np.float32) -> Any:
        """An empty growable matrix on this device: ``append(rows)``, ``view()``,
        ``keep(index)``, ``nbytes``. ``rows`` are staged arrays (NumPy or CuPy)."""
        raise NotImplementedError(f"{self.name} has no row store")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} device={self.info.device!r}>"


class RowBuffer:
    """A growable row-major matrix in NumPy or CuPy memory, for indexes that grow.

    Appends are amortised O(rows) (capacity doubles, like ``std::vector`` in FAISS);
    :meth:`view` is the C-contiguous ``(n, dim)`` block in use.
    """

    def __init__(self, xp, dim: int, dtype=np.float32) -> None:
        self.xp = xp
        self.buf = xp.empty((0, dim), dtype=dtype)
        self.n = 0

    def view(self):
        return self.buf[: self.n]

    def append(self, rows) -> None:
        need = self.n + rows.shape[0]
        if need > self.buf.shape[0]:
            grown = self.xp.empty((max(need, 2 * self.buf.shape[0]),) + self.buf.shape[1:],
                                  dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : need] = rows
        self.n = need

    def keep(self, index) -> None:
        """Keep only rows ``index`` (ascending), in that order."""
        kept = self.buf[index]
        self.buf[: kept.shape[0]] = kept
        self.n = kept.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.view().nbytes)
