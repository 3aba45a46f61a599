"""The store's reads: ranking (flat or through the HRM2 index) and energy.

Nothing here changes the state except the tiers' access counts (``touch``, safe from
concurrent readers); the store runs these under its read lock, so several threads search
one store at once, and any tier placement pass runs after, under the write lock.
"""

from __future__ import annotations

import numpy as np

from ..backends.base import MODE_DISTANCE, MODE_SPLAT, PARAM_ALPHA, PARAM_KAPPA
from ..tensor import host_array
from .results import EnergyResult, SearchResult
from .state import StoreState


def empty_result(m: int) -> SearchResult:
    z = np.zeros((m, 0), dtype=np.float32)
    return SearchResult([[] for _ in range(m)], z, z.copy(), z.copy(), [[] for _ in range(m)])


def search(st: StoreState, q, k: int, filt: dict | None, rank: str,
           exact: bool) -> SearchResult:
    """The ``k`` best splats for each row of the prepared queries ``q`` (see
    :meth:`m2m_gpu.SplatStore.search`)."""
    table = st.table
    mask = table.mask(filt)
    m, kk = q.shape[0], min(k, int(mask.sum()))
    if m == 0 or kk == 0:
        return empty_result(m)
    mode = MODE_SPLAT if rank == "splat" else MODE_DISTANCE
    filtered = filt is not None
    if st.index is not None and st.index.ready and not exact:
        keys, slots, d2 = _index_search(st, q, kk, mode, mask, filtered)
    else:
        keys, slots, d2 = _flat_search(st, q, kk, mode, mask, filtered)
    if mode == MODE_SPLAT:
        log_scores = -keys
    else:
        uniq, inv = np.unique(slots, return_inverse=True)
        p = st.arrays.params_of(uniq)[inv.reshape(slots.shape)]
        with np.errstate(divide="ignore"):
            log_scores = np.log(p[..., PARAM_ALPHA]) - p[..., PARAM_KAPPA] * d2
    log_scores = log_scores.astype(np.float32)
    st.arrays.rows.touch(slots.ravel())
    rows = slots.tolist()
    ids = [[table.ids[s] for s in row] for row in rows]
    meta = [[dict(table.meta[s]) for s in row] for row in rows]
    return SearchResult(ids, np.exp(log_scores), log_scores, d2.astype(np.float32), meta)


def _flat_search(st: StoreState, q, kk: int, mode: int, mask: np.ndarray, filtered: bool):
    params = st.arrays.masked_params(mask) if filtered else None
    return st.arrays.topk(q, kk, mode, params)


def _index_search(st: StoreState, q, kk: int, mode: int, mask: np.ndarray, filtered: bool):
    host_q = host_array(q, np.float32)

    def host_params():  # read only when the index's copy is stale, or for a filter
        p = np.array(st.arrays.host_params(), np.float32)
        if filtered:
            p[~mask, PARAM_ALPHA] = 0.0
        return p

    keys, slots, d2 = st.index.search(host_q, kk, mode, host_params, filtered)
    short = np.flatnonzero((slots < 0).any(axis=1))
    if short.size:  # too few matches in the probed cells: exact for those queries
        fk, fs, fd = _flat_search(st, host_q[short], kk, mode, mask, filtered)
        keys[short], slots[short], d2[short] = fk, fs, fd
    return keys, slots, d2


def energy(st: StoreState, q, grad: bool) -> EnergyResult:
    m = q.shape[0]
    if m == 0 or len(st.table) == 0:
        E = np.full(m, np.inf, dtype=np.float32)
        G = np.zeros((m, st.dim), dtype=np.float32) if grad else None
    else:
        E, G = st.arrays.energy(q, grad)
    with np.errstate(over="ignore"):
        conf = (1.0 / (1.0 + np.exp(E.astype(np.float64)))).astype(np.float32)
    return EnergyResult(E, conf, G)
