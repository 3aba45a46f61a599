"""Looking at a store: records by id, the integrity check, statistics."""

from __future__ import annotations

import numpy as np

from ..backends.base import PARAM_ALPHA, PARAM_KAPPA
from ..errors import IntegrityError
from .state import StoreState


def records(st: StoreState, keys: list) -> list[dict | None]:
    """``{"id", "vector", "alpha", "kappa", "metadata", "hits"}`` per id (a merged id gives
    its survivor's), None for an id the store does not hold."""
    table = st.table
    slots = table.slots_of([table.resolve(k) for k in keys])
    found = np.flatnonzero(slots >= 0)
    out: list[dict | None] = [None] * len(keys)
    if found.size:
        vec = st.arrays.mu(slots[found])
        par = st.arrays.params_of(slots[found])
        for j, i in enumerate(found.tolist()):
            s = int(slots[i])
            out[i] = {"id": table.ids[s], "vector": np.asarray(vec[j], np.float32),
                      "alpha": float(par[j, PARAM_ALPHA]), "kappa": float(par[j, PARAM_KAPPA]),
                      "metadata": dict(table.meta[s]), "hits": int(table.hits[s])}
    return out


def check(st: StoreState) -> dict:
    """Raise :class:`IntegrityError` listing every disagreement between the parts, else
    return counts."""
    table = st.table
    problems = table.check()
    if table.n != st.arrays.n:
        problems.append(f"{table.n} slots but {st.arrays.n} vectors")
    problems += st.arrays.check()
    n = table.n
    if n and not problems:
        mu = np.concatenate(list(st.arrays.vector_blocks()))
        par = st.arrays.host_params()
        live = table.live
        if not np.isfinite(mu[live]).all() or not np.isfinite(par[live]).all():
            problems.append("non-finite vectors or parameters in live slots")
        if (par[~live, PARAM_ALPHA] != 0).any():
            problems.append("free slots with alpha != 0")
        if (par[live, PARAM_ALPHA] < 0).any():
            problems.append("negative alpha")
        if st.metric == "cosine" and live.any():
            if np.abs(np.linalg.norm(mu[live], axis=1) - 1).max() > 1e-3:
                problems.append("cosine store with vectors off the unit sphere")
    if st.index is not None and not problems:
        problems += st.index.check(np.flatnonzero(table.live))
    if problems:
        raise IntegrityError("; ".join(problems))
    return {"slots": n, "live": len(table), "aliases": len(table.alias)}


def _dist(v: np.ndarray) -> dict:
    if v.size == 0:
        return {}
    p = np.percentile(v, [0, 10, 50, 90, 100])
    return {"min": float(p[0]), "p10": float(p[1]), "median": float(p[2]),
            "p90": float(p[3]), "max": float(p[4]), "mean": float(v.mean())}


def stats(st: StoreState) -> dict:
    """Counts, alpha and kappa distributions, backend and bytes on the device."""
    table, be = st.table, st.backend
    par = st.arrays.host_params()[table.live]
    nbytes = st.arrays.nbytes() + (st.index.device_bytes() if st.index is not None else 0)
    alpha = par[:, PARAM_ALPHA]
    return {
        "count": len(table), "slots": table.n, "free_slots": table.n - len(table),
        "aliases": len(table.alias), "dim": st.dim, "metric": st.metric,
        "alpha": _dist(alpha), "kappa": _dist(par[:, PARAM_KAPPA]),
        "alpha_total": float(alpha.sum()) if alpha.size else 0.0,
        "below_alpha_prune": int((alpha < st.options.alpha_prune).sum()),
        "backend": be.name, "device": be.info.device, "device_bytes": int(nbytes),
        "clock": st.clock,
        "index": st.index.stats() if st.index is not None else {"kind": "flat"},
        "tiers": st.arrays.rows.stats(), "transfers": be.transfers.snapshot(),
    }
