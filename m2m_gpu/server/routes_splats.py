"""This package's own routes for what Qdrant does not have: splat feedback, energy /
confidence, decay, consolidation and the store's statistics, per collection."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter

from . import models as m
from . import responses as r
from .qdrant import BadRequest, point_ids
from .routes_points import READ, WRITE, Col, ok

router = APIRouter(prefix="/collections/{name}/splats", responses=m.ERRORS)


@router.post("/feedback", dependencies=WRITE, responses=r.doc(r.Updated))
def feedback(body: m.Feedback, col: Col):
    """The Hebbian update: ``relevant`` splats strengthen (and, with the store's rates,
    sharpen and move towards the query), ``irrelevant`` ones weaken."""
    t = time.perf_counter()
    n = col.feedback(body.query, point_ids(body.relevant), point_ids(body.irrelevant))
    return ok({"updated": n}, t)


@router.post("/energy", dependencies=READ, responses=r.doc(r.Energies))
def energy(body: m.Energy, col: Col):
    """``E(x) = -log sum alpha exp(-kappa d2)`` per query and ``confidence =
    sigmoid(-E)`` (null / 0 for an empty collection)."""
    t = time.perf_counter()
    if not body.queries:
        raise BadRequest("queries is empty")
    q = col.check_vectors(body.queries, len(body.queries))
    res = col.splats().energy(q)
    e = [float(v) if np.isfinite(v) else None for v in res.energy]
    return ok({"energy": e, "confidence": [float(c) for c in res.confidence]}, t)


@router.post("/decay", dependencies=WRITE, responses=r.doc(r.Decayed))
def decay(body: m.Decay, col: Col):
    """Every alpha decays with the store's half-life up to the clock ``now``."""
    t = time.perf_counter()
    return ok(col.decay(body.now), t)


@router.post("/consolidate", dependencies=WRITE, responses=r.doc(r.Consolidated))
def consolidate(col: Col):
    """Prune splats under alpha_prune and merge near duplicates; what was removed."""
    t = time.perf_counter()
    return ok(col.consolidate(), t)


@router.get("/stats", dependencies=READ, responses=r.doc(dict[str, Any]))
def stats(col: Col):
    t = time.perf_counter()
    return ok(col.store.stats(), t)
