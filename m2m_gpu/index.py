"""FAISS-shaped flat (exact) indexes on any backend.

``m2m_gpu.IndexFlatL2(d)``, ``IndexFlatIP(d)`` and ``IndexFlat(d, metric)`` behave like
their FAISS namesakes method by method: ``train`` (nothing to learn), ``is_trained``,
``add``, ``search(x, k, *, params=None, D=None, I=None)``, ``range_search``, ``assign``,
``reconstruct``, ``reconstruct_n``, ``reconstruct_batch``, ``search_and_reconstruct``,
``remove_ids`` (the vectors after a removed one move up: ids are positions, as in FAISS),
``reset``, ``ntotal``, ``d``, ``metric_type``; ``faiss.METRIC_*`` constants are accepted
as metrics. Ids of your own: wrap the index in :class:`m2m_gpu.IndexIDMap`. Beyond FAISS:
a cosine variant, a ``backend=`` argument, and ``dtype="float16"`` storage (half the memory
and half the bytes each search reads, like FAISS's ``IndexScalarQuantizer`` with
``QT_fp16``; arithmetic stays float32). Indexes save, load and pickle through
:mod:`m2m_gpu.serialize`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .errors import InvalidInputError
from .inputs import (
    METRIC_INNER_PRODUCT,
    METRIC_L2,
    check_ids,
    check_k,
    check_metric,
    check_result_size,
    prepare,
    row_sqnorms,
)
from .knn import search_native
from .locking import shared, thread_safe
from .tensor import array_module, host_array, stage, to_caller

_FAISS_METRIC = {"l2": METRIC_L2, "ip": METRIC_INNER_PRODUCT, "cosine": METRIC_INNER_PRODUCT}
STORAGE_DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
RANGE_BLOCK_ENTRIES = 1 << 22  # range_search ranks at most this many (query, row) pairs at once


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
    """Exact search over every stored vector, on one backend; ids are positions.

    ``metric``: ``"l2"`` / ``faiss.METRIC_L2``, ``"ip"`` / ``faiss.METRIC_INNER_PRODUCT``,
    or ``"cosine"``. ``dtype`` is how the vectors are stored: ``"float32"``, or
    ``"float16"`` (rounded to the nearest half on ``add``; values beyond +-65504 are
    refused). Distances are computed in float32 from the stored values, so results equal
    exact float32 search over the rounded vectors, which ``reconstruct_n`` returns.
    """

    def __init__(self, d: int, metric: Any = "l2", backend: str | Backend | None = None,
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
        return self._n

    @shared
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(d={self.d}, metric={self.metric!r}, "
                f"dtype={self.dtype.name!r}, ntotal={self.ntotal}, "
                f"backend={self.backend.name!r})")

    def __reduce__(self):
        from .serialize import _from_bytes, index_bytes

        return _from_bytes, (index_bytes(self),)

    # ---- mutation -----------------------------------------------------------------------
    def reset(self) -> None:
        """Remove every vector."""
        self._rows = self.backend.row_store(self.d, self.dtype)
        self._sqnorms = self.backend.row_store(1) if self.backend.uses_sqnorms else None
        self._n = 0

    def train(self, x: Any) -> None:
        """Nothing to learn (``is_trained`` is always True); ``x`` is checked like ``add``'s."""
        self._validate(x)

    def add(self, x: Any) -> None:
        """Append vectors; they get the ids ``ntotal, ntotal + 1, ...`` (their positions)."""
        rows, sq = self._validate(x)
        # Everything is validated by now: only a device allocation failure can still raise
        # below, and ntotal is committed last.
        self._rows.append(self.backend.stage_rows(rows))
        if self._sqnorms is not None:
            self._sqnorms.append(self.backend.stage_rows(sq.reshape(-1, 1)))
        self._n += int(rows.shape[0])

    def _load_rows(self, rows: np.ndarray) -> None:
        """Rows exactly as another index of this kind held them (read_index)."""
        rows = np.ascontiguousarray(rows, self.dtype)
        self._rows.append(self.backend.stage_rows(rows))
        if self._sqnorms is not None:
            sq = row_sqnorms(rows.astype(np.float32), "vectors")
            self._sqnorms.append(self.backend.stage_rows(sq.reshape(-1, 1)))
        self._n += int(rows.shape[0])

    def add_with_ids(self, x: Any, ids: Any) -> None:
        raise InvalidInputError(f"{type(self).__name__}.add_with_ids: a flat index numbers its "
                                "vectors by position (as FAISS's does); wrap it, "
                                "m2m_gpu.IndexIDMap(index), to give them ids of your own")

    def remove_ids(self, ids: Any) -> int:
        """Remove the vectors at the positions in ``ids``; those after them move up (FAISS's
        renumbering). Returns how many were removed."""
        drop = check_ids(_host_array(ids).ravel())
        keep = np.flatnonzero(~np.isin(np.arange(self._n), drop))
        return self._keep(keep)

    def _keep(self, keep: np.ndarray) -> int:
        removed = self._n - keep.size
        if removed:
            index = self.backend.index_array(keep)
            self._rows.keep(index)
            if self._sqnorms is not None:
                self._sqnorms.keep(index)
            self._n = int(keep.size)
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

    # ---- search -------------------------------------------------------------------------
    def _native_search(self, q, k: int):
        sq = self._sqnorms.view()[:, 0] if self._sqnorms is not None else None
        return search_native(self.backend, q, self._rows.view(), self._n, k, self.metric, sq)

    @shared
    def search(self, x: Any, k: int, *, params: Any = None, D: Any = None,
               I: Any = None) -> tuple[Any, Any]:  # noqa: E741 - FAISS's names
        """The k nearest stored vectors of each query row: ``(D, I)`` of shape (m, k),
        best first; ``I`` holds positions, -1 where fewer than k vectors exist. ``D`` and
        ``I`` may be given (NumPy arrays of that shape) to be filled, as in FAISS."""
        _no_params(params)
        k = check_k(k)
        q, _, caller = prepare(x, "queries", self.metric, dim=self.d)
        check_result_size(q.shape[0], k, self._n)
        Dn, In = self._native_search(q, k)
        return _into(to_caller(self.backend, Dn, caller), D), \
            _into(to_caller(self.backend, In, caller), I)

    @shared
    def assign(self, x: Any, k: int, labels: Any = None) -> Any:
        """The ids of the ``k`` nearest vectors of each query (``search`` without ``D``)."""
        return self.search(x, k, I=labels)[1]

    @shared
    def range_search(self, x: Any, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored vector within ``radius`` of each query: ``(lims, D, I)`` as in
        FAISS: query i's results are ``D[lims[i]:lims[i+1]]``, ``I[...]``. Within the radius
        means ``d2 < radius`` for l2 (squared distances) and ``similarity > radius`` for
        ip and cosine (FAISS's strict inequalities); each query's results best first."""
        if isinstance(radius, bool) or not isinstance(radius, (int, float, np.number)) or \
                not np.isfinite(radius):
            raise InvalidInputError(f"radius must be a finite number, got {radius!r}")
        q, _, _ = prepare(x, "queries", self.metric, dim=self.d)
        q = host_array(q, np.float32)
        m, n = q.shape[0], self._n
        counts, Ds, Is = np.zeros(m, np.int64), [], []
        step = max(1, RANGE_BLOCK_ENTRIES // max(n, 1))
        for a in range(0, m if n else 0, step):
            Db, Ib = (np.asarray(self.backend.to_host(v)) for v in
                      self._native_search(q[a : a + step], n))
            inside = (Db < radius) if self.metric == "l2" else (Db > radius)
            inside &= Ib >= 0
            counts[a : a + step] = inside.sum(axis=1)
            Ds.append(Db[inside])  # row-major: query by query, best first
            Is.append(Ib[inside])
        lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else \
            np.zeros(0, dt)  # noqa: E731
        return lims, cat(Ds, np.float32), cat(Is, np.int64)

    @shared
    def reconstruct(self, key: int, x: Any = None) -> np.ndarray:
        """The stored vector with id ``key`` (normalised under cosine)."""
        return _into(self.reconstruct_batch(np.array([_position(key, self._n)]))[0], x)

    @shared
    def reconstruct_batch(self, keys: Any, x: Any = None) -> np.ndarray:
        """The stored vectors with ids ``keys``, as a (len(keys), d) host array."""
        keys = check_ids(_host_array(keys).ravel())
        bad = (keys < 0) | (keys >= self._n)
        if bad.any():
            raise InvalidInputError(f"reconstruct: id {int(keys[bad][0])} is not in the "
                                    f"index (ids are 0 .. {self._n - 1})")
        rows = self.backend.gather_rows(self._rows.view(), keys)
        return _into(np.asarray(rows, np.float32).reshape(-1, self.d), x)

    @shared
    def reconstruct_n(self, i0: int = 0, ni: int | None = None, x: Any = None) -> np.ndarray:
        """Stored vectors ``i0 .. i0 + ni`` as a host array (normalised under cosine)."""
        ni = self._n - i0 if ni is None else ni
        for name, v in (("i0", i0), ("ni", ni)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InvalidInputError(f"reconstruct_n: {name} must be an int >= 0, got {v!r}")
        if i0 + ni > self._n:
            raise InvalidInputError(f"reconstruct_n: rows {i0} .. {i0 + ni} of {self._n}")
        rows = np.asarray(self.backend.to_host(self._rows.view()))[i0 : i0 + ni]
        return _into(rows.astype(np.float32, copy=False), x)

    @shared
    def search_and_reconstruct(self, x: Any, k: int, *, params: Any = None):
        """``(D, I, R)``: ``search`` plus the found vectors, ``R`` of shape (m, k, d); rows
        for missing results (id -1) are NaN, as FAISS fills them."""
        D, I = self.search(x, k, params=params)
        Ih = np.asarray(host_array(stage(I)[0]))
        R = np.full(Ih.shape + (self.d,), np.nan, np.float32)
        found = Ih >= 0
        if found.any():
            R[found] = self.reconstruct_batch(Ih[found])
        return D, I, R


def _position(key: Any, n: int) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise InvalidInputError(f"reconstruct: the id must be an int, got {key!r}")
    return int(key)


def _no_params(params: Any) -> None:
    """``params=``: FAISS's SearchParameters. A flat index has nothing to tune."""
    if params is not None:
        raise InvalidInputError("a flat index takes no search parameters (params=None); "
                                "IndexHRM2.search takes nprobe through its attributes")


def _into(value: Any, out: Any) -> Any:
    """FAISS's out-arguments: copy ``value`` into ``out`` (a NumPy array of its shape)."""
    if out is None:
        return value
    if not isinstance(out, np.ndarray) or out.shape != np.shape(value):
        raise InvalidInputError(f"out-argument must be a NumPy array of shape "
                                f"{np.shape(value)}, got {type(out).__name__} "
                                f"{getattr(out, 'shape', '')}")
    out[...] = host_array(stage(value)[0])
    return out


def _host_array(obj: Any) -> np.ndarray:
    """A caller's array of ids (NumPy, CuPy, torch, list) as a NumPy array."""
    staged, _ = stage(obj)
    return host_array(staged)


def normalize_L2(x: np.ndarray) -> None:  # noqa: N802 - FAISS's name
    """Scale each row of the float32 C-contiguous NumPy array ``x`` to unit L2 norm, in
    place (``faiss.normalize_L2``; zero rows stay zero)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise InvalidInputError("normalize_L2 needs a C-contiguous float32 NumPy array")
    norms = np.linalg.norm(x.reshape(x.shape[0], -1) if x.ndim > 1 else x[None], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)
    if x.ndim > 1:
        x *= scale.reshape((-1,) + (1,) * (x.ndim - 1))
    else:
        x *= scale[0]


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
