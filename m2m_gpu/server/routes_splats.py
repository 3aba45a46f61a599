"""This package's own routes for what Qdrant does not have: splat feedback, energy /
confidence, decay, consolidation and the store's statistics, per collection."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from fastapi import APIRouter

from . import models as m
from . import responses as r
from .qdrant import BadRequest, point_ids
from .routes_points import READ, WRITE, Col, ok

router = APIRouter(prefix="/collections/{name}/splats", responses=m.ERRORS)


def _report(rep) -> dict:
    return dataclasses.asdict(rep) if dataclasses.is_dataclass(rep) else rep


@router.post("/feedback", dependencies=WRITE, responses=r.doc(r.Updated))
def feedback(body: m.Feedback, col: Col):
    """The Hebbian update: ``relevant`` splats strengthen and move towards the query,
    ``irrelevant`` ones weaken (the store's rates)."""
    t = time.perf_counter()
    q = col.geometry.to_query(col.check_vectors([body.query], 1))[0]
    n = col.store.feedback(q, relevant=point_ids(body.relevant),
                           irrelevant=point_ids(body.irrelevant))
    return ok({"updated": int(n)}, t)


@router.post("/energy", dependencies=READ, responses=r.doc(r.Energies))
def energy(body: m.Energy, col: Col):
    """``E(x) = -log sum alpha exp(-kappa d2)`` per query and ``confidence =
    sigmoid(-E)`` (+inf / 0 for an empty collection)."""
    t = time.perf_counter()
    if not body.queries:
        raise BadRequest("queries is empty")
    q = col.geometry.to_query(col.check_vectors(body.queries, len(body.queries)))
    res = col.store.energy(q)
    e = [float(v) if np.isfinite(v) else None for v in res.energy]
    return ok({"energy": e, "confidence": [float(c) for c in res.confidence]}, t)


@router.post("/decay", dependencies=WRITE, responses=r.doc(r.Decayed))
def decay(body: m.Decay, col: Col):
    """Every alpha decays with the store's half-life up to the clock ``now``."""
    t = time.perf_counter()
    rep = col.store.decay(body.now)
    return ok({"elapsed": rep.elapsed, "factor": rep.factor, "pruned": rep.pruned}, t)


@router.post("/consolidate", dependencies=WRITE, responses=r.doc(r.Consolidated))
def consolidate(col: Col):
    """Prune splats under alpha_prune and merge near duplicates; what was removed."""
    t = time.perf_counter()
    rep = _report(col.store.consolidate())
    rep["merged"] = [list(p) for p in rep["merged"]]
    return ok(rep, t)


@router.get("/stats", dependencies=READ, responses=r.doc(dict[str, Any]))
def stats(col: Col):
    t = time.perf_counter()
    return ok(col.store.stats(), t)
