"""``IndexIDMap``: ids of your own on top of a flat index (``faiss.IndexIDMap``).

The wrapped index numbers its vectors by position; the map keeps the caller's int64 id of
each position, translates search results, and removes by id (the positions after a removed
one move up in both). Ids are not checked for uniqueness, as in FAISS; -1 is refused (it
is the "no result" id).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError
from .index import IndexFlat, _host_array, _into
from .inputs import check_ids
from .locking import shared, thread_safe


@thread_safe
class IndexIDMap:
    def __init__(self, index: IndexFlat) -> None:
        if not isinstance(index, IndexFlat):
            raise InvalidInputError("IndexIDMap wraps a flat index (IndexFlat, IndexFlatL2, "
                                    "...); IndexHRM2 takes add_with_ids itself")
        if index.ntotal:
            raise InvalidInputError("IndexIDMap needs an empty index (its vectors would have "
                                    "no ids)")
        self.index = index
        self.id_map = np.empty(0, dtype=np.int64)

    # ---- FAISS attributes ---------------------------------------------------------------
    d = property(lambda self: self.index.d)
    metric_type = property(lambda self: self.index.metric_type)
    metric = property(lambda self: self.index.metric)
    is_trained = property(lambda self: self.index.is_trained)
    backend = property(lambda self: self.index.backend)
    ntotal = property(lambda self: int(self.id_map.shape[0]))

    @shared
    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"IndexIDMap({self.index!r})"

    def __reduce__(self):
        from .serialize import _from_bytes, index_bytes

        return _from_bytes, (index_bytes(self),)

    # ---- mutation -----------------------------------------------------------------------
    def train(self, x: Any) -> None:
        self.index.train(x)

    def add(self, x: Any) -> None:
        raise InvalidInputError("IndexIDMap.add: give the ids, add_with_ids(x, ids)")

    def add_with_ids(self, x: Any, ids: Any) -> None:
        """Append vectors with the given int64 ids (returned by ``search`` in ``I``)."""
        host = _host_array(ids)
        n = int(np.shape(x)[0]) if np.ndim(x) == 2 else -1
        if host.ndim != 1 or host.shape[0] != n:
            raise InvalidInputError(f"ids must be a 1-D array with one id per vector "
                                    f"({n}), got shape {host.shape}")
        ids = check_ids(host)
        if (ids == -1).any():
            raise InvalidInputError("id -1 is reserved: it marks a missing search result")
        self.index.add(x)  # validated there; raises before the map changes
        self.id_map = np.concatenate([self.id_map, ids])

    def remove_ids(self, ids: Any) -> int:
        """Remove every vector whose id is in ``ids``; returns how many were removed."""
        drop = check_ids(_host_array(ids).ravel())
        gone = np.isin(self.id_map, drop)
        if not gone.any():
            return 0
        self.index.remove_ids(np.flatnonzero(gone))  # positions, in a flat index
        self.id_map = self.id_map[~gone]
        return int(gone.sum())

    def reset(self) -> None:
        self.index.reset()
        self.id_map = np.empty(0, dtype=np.int64)

    # ---- search -------------------------------------------------------------------------
    def _ids(self, I: Any) -> np.ndarray:
        Ih = np.asarray(_host_array(I))
        return np.where(Ih >= 0, self.id_map[np.maximum(Ih, 0)] if self.ntotal else -1, -1)

    @shared
    def search(self, x: Any, k: int, *, params: Any = None, D: Any = None,
               I: Any = None):  # noqa: E741 - FAISS's names
        Dn, In = self.index.search(x, k, params=params)
        return _into(Dn, D), _into(self._ids(In), I)

    @shared
    def assign(self, x: Any, k: int, labels: Any = None) -> np.ndarray:
        return self.search(x, k, I=labels)[1]

    @shared
    def range_search(self, x: Any, radius: float):
        lims, D, I = self.index.range_search(x, radius)
        return lims, D, self._ids(I)

    def _positions(self, keys: Any) -> np.ndarray:
        keys = check_ids(_host_array(keys).ravel())
        order = np.argsort(self.id_map, kind="stable")
        at = np.searchsorted(self.id_map[order], keys)
        ok = at < order.size
        ok[ok] = self.id_map[order[at[ok]]] == keys[ok]
        if not ok.all():
            raise InvalidInputError(f"reconstruct: id {int(keys[~ok][0])} is not in the index")
        return order[at]

    @shared
    def reconstruct(self, key: int, x: Any = None) -> np.ndarray:
        return _into(self.reconstruct_batch(np.array([key]))[0], x)

    @shared
    def reconstruct_batch(self, keys: Any, x: Any = None) -> np.ndarray:
        return _into(self.index.reconstruct_batch(self._positions(keys)), x)

    @shared
    def search_and_reconstruct(self, x: Any, k: int, *, params: Any = None):
        D, I, R = self.index.search_and_reconstruct(x, k, params=params)
        return D, self._ids(I), R
