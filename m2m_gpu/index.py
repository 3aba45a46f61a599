"""FAISS-shaped flat (exact) indexes on any backend.

``m2m_gpu.IndexFlatL2(d)`` and ``m2m_gpu.IndexFlatIP(d)`` behave like their FAISS namesakes:
``add``, ``search(q, k) -> (D, I)``, ``ntotal``, ``reset``, ``remove_ids``, ``d``,
``metric_type``; so code written for ``faiss.IndexFlatL2`` works after changing the import.
Beyond FAISS's flat index: ``add_with_ids`` (FAISS needs an ``IndexIDMap`` for that), a
cosine variant, a ``backend=`` argument, and ``dtype="float16"`` storage (half the memory
and half the bytes each search reads, like FAISS's ``IndexScalarQuantizer`` with
``QT_fp16``; arithmetic stays float32). The vectors live on the backend's device; ids live
on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .errors import InvalidInputError
from .inputs import check_ids, check_k, check_metric, check_result_size, prepare, row_sqnorms
from .knn import search_native
from .locking import ForkSafeLock, shared, thread_safe
from .tensor import array_module, host_array, stage, to_caller

# FAISS's metric constants, so `index.metric_type == faiss.METRIC_L2` style checks carry over.
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
_FAISS_METRIC = {"l2": METRIC_L2, "ip": METRIC_INNER_PRODUCT, "cosine": METRIC_INNER_PRODUCT}
STORAGE_DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def check_storage_dtype(dtype: Any) -> np.dtype:
    """``"float32"`` or ``"float16"`` (or the NumPy dtypes) as a NumPy dtype."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in STORAGE_DTYPES:
        raise InvalidInputError(f"storage dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    return dt


@thread_safe
class IndexFlat:
    """Exact search over every stored vector, on one backend.

    ``dtype`` is how the vectors are stored: ``"float32"``, or ``"float16"`` (rounded to the
    nearest half on ``add``; values beyond +-65504 are refused). Distances are computed in
    float32 from the stored values, so results equal exact float32 search over the rounded
    vectors, which ``reconstruct_n`` returns.
    """

    def __init__(self, d: int, metric: str = "l2", backend: str | Backend | None = None,
                 dtype: Any = "float32"):
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InvalidInputError(f"dimension d must be a positive integer, got {d!r}")
        self.d = int(d)
        self.metric = check_metric(metric)
        self.dtype = check_storage_dtype(dtype)
        self.backend = get_backend(backend)
        self.is_trained = True
        self.reset()

    # ---- FAISS attributes ---------------------------------------------------------------
    @property
    def metric_type(self) -> int:
        return _FAISS_METRIC[self.metric]

    @property
    def ntotal(self) -> int:
        return int(self._ids.shape[0])

    @shared
    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(d={self.d}, metric={self.metric!r}, "
                f"dtype={self.dtype.name!r}, ntotal={self.ntotal}, "
                f"backend={self.backend.name!r})")

    # ---- mutation -----------------------------------------------------------------------
    def reset(self) -> None:
        """Remove every vector."""
        self._rows = self.backend.row_store(self.d, self.dtype)
        self._sqnorms = self.backend.row_store(1) if self.backend.uses_sqnorms else None
        self._ids = np.empty(0, dtype=np.int64)
        self._next_id = 0  # one past the largest id ever stored: add() never reuses an id
        self._lookup_stale = True
        self._lookup_lock = ForkSafeLock()

    def add(self, x: Any) -> None:
        """Append vectors with sequential ids, from one past the largest id this index has
        held (``ntotal, ntotal + 1, ...`` until something is removed). Unlike FAISS's flat
        indexes, which renumber the vectors after ``remove_ids``, ids never change and are
        never handed out twice."""
        rows, sq = self._validate(x)
        self._append(rows, sq, np.arange(self._next_id, self._next_id + rows.shape[0]))

    def add_with_ids(self, x: Any, ids: Any) -> None:
        """Append vectors with the given int64 ids (returned by ``search`` in ``I``)."""
        rows, sq = self._validate(x)
        host_ids = _host_array(ids)
        if host_ids.ndim != 1 or host_ids.shape[0] != rows.shape[0]:
            raise InvalidInputError(
                f"ids must be a 1-D array with one id per vector ({rows.shape[0]}), "
                f"got shape {host_ids.shape}")
        self._append(rows, sq, check_ids(host_ids))

    def remove_ids(self, ids: Any) -> int:
        """Remove every vector whose id is in ``ids``; returns how many were removed."""
        drop = check_ids(_host_array(ids).ravel())
        keep = np.flatnonzero(~np.isin(self._ids, drop))
        removed = self.ntotal - keep.size
        if removed:
            self._rows.keep(self._index_for(keep))
            if self._sqnorms is not None:
                self._sqnorms.keep(self._index_for(keep))
            self._ids = self._ids[keep]
            self._lookup_stale = True
        return int(removed)

    def _validate(self, x: Any) -> tuple[Any, Any]:
        rows, sq, _ = prepare(x, "vectors", self.metric, dim=self.d)
        if self.dtype == np.float16 and rows.shape[0]:
            xp = array_module(rows)
            big = xp.abs(rows).max(axis=1) > FLOAT16_MAX
            if bool(big.any()):
                raise InvalidInputError(
                    f"vectors row {int(xp.argmax(big))} has values beyond float16's range "
                    f"(+-{FLOAT16_MAX:g}); store them with dtype='float32'")
            rows = rows.astype(xp.float16)
            if self.metric == "l2":  # the norms of the stored (rounded) vectors
                sq = row_sqnorms(rows.astype(xp.float32), "vectors")
        return rows, sq

    def _append(self, rows: Any, sq: Any, ids: np.ndarray) -> None:
        # Everything is validated by now: only a device allocation failure can still raise
        # below, and the ids (hence ntotal) are committed last.
        self._rows.append(self._for_store(rows))
        if self._sqnorms is not None:
            self._sqnorms.append(self._for_store(sq.reshape(-1, 1)))
        self._ids = np.concatenate([self._ids, ids])
        if ids.size:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._lookup_stale = True

    def _for_store(self, staged: Any) -> Any:
        """Staged rows in the form the backend's row store takes."""
        return self.backend.stage_rows(staged)

    def _index_for(self, keep: np.ndarray) -> Any:
        return self.backend.index_array(keep)

    # ---- search -------------------------------------------------------------------------
    @shared
    def search(self, x: Any, k: int) -> tuple[Any, Any]:
        """The k nearest stored vectors of each query row: ``(D, I)`` of shape (m, k),
        best first; ``I`` holds the stored ids, -1 where fewer than k vectors exist."""
        k = check_k(k)
        q, _, caller = prepare(x, "queries", self.metric, dim=self.d)
        check_result_size(q.shape[0], k, self.ntotal)
        be = self.backend
        sq = self._sqnorms.view()[:, 0] if self._sqnorms is not None else None
        D, I = search_native(be, q, self._rows.view(), self.ntotal, k, self.metric, sq)
        I = self._to_external(I)
        return to_caller(be, D, caller), to_caller(be, I, caller)

    def _to_external(self, I: Any) -> Any:
        """Row positions -> stored ids (-1 stays -1)."""
        with self._lookup_lock:  # rebuilt once after each change, by one of the readers
            if self._lookup_stale:
                self._lookup = None  # None: sequential ids, positions are the ids
                if not np.array_equal(self._ids, np.arange(self.ntotal)):
                    table = np.append(self._ids, -1)  # position -1 picks the trailing -1
                    self._lookup = self.backend.index_array(table)
                self._lookup_stale = False
            lookup = self._lookup
        if lookup is None:
            return I
        if self.backend.is_native(lookup) and self.backend.is_native(I):
            return lookup[I]  # on the device (cuda), or both on the host (cpu)
        return np.asarray(self.backend.to_host(lookup))[self.backend.to_host(I)]

    @shared
    def reconstruct_n(self, i0: int = 0, ni: int | None = None) -> np.ndarray:
        """Stored vectors ``i0 .. i0 + ni`` as a host array (normalised under cosine)."""
        ni = self.ntotal - i0 if ni is None else ni
        for name, v in (("i0", i0), ("ni", ni)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InvalidInputError(f"reconstruct_n: {name} must be an int >= 0, got {v!r}")
        if i0 + ni > self.ntotal:
            raise InvalidInputError(f"reconstruct_n: rows {i0} .. {i0 + ni} of {self.ntotal}")
        rows = np.asarray(self.backend.to_host(self._rows.view()))[i0 : i0 + ni]
        return rows.astype(np.float32, copy=False)


def _host_array(obj: Any) -> np.ndarray:
    """A caller's array of ids (NumPy, CuPy, torch, list) as a NumPy array."""
    staged, _ = stage(obj)
    return host_array(staged)


class IndexFlatL2(IndexFlat):
    """Exact search by squared L2 distance (``faiss.IndexFlatL2``)."""

    def __init__(self, d: int, backend: str | Backend | None = None, dtype: Any = "float32"):
        super().__init__(d, "l2", backend, dtype)


class IndexFlatIP(IndexFlat):
    """Exact search by inner product (``faiss.IndexFlatIP``); ``D`` holds similarities."""

    def __init__(self, d: int, backend: str | Backend | None = None, dtype: Any = "float32"):
        super().__init__(d, "ip", backend, dtype)


class IndexFlatCosine(IndexFlat):
    """Exact search by cosine similarity: vectors and queries are L2-normalised on the way
    in (zero vectors are refused), then searched by inner product."""

    def __init__(self, d: int, backend: str | Backend | None = None, dtype: Any = "float32"):
        super().__init__(d, "cosine", backend, dtype)
