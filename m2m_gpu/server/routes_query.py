"""Qdrant's query routes: ``query`` (a vector, a point id, MMR) and its batch, and the
older ``search`` and ``search/batch``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from . import models as m
from . import responses as r
from .collection import NotFound
from .qdrant import BadRequest, point_id, to_filter
from .routes_points import READ, Col, ok

router = APIRouter(responses=m.ERRORS)


def _target(q: Any, col, using: str | None = None) -> tuple[list[float], Any, dict | None]:
    """(query vector, an id to leave out, mmr options) of one request's ``query``."""
    col.check_using(using)
    mmr = None
    if isinstance(q, dict) and set(q) == {"name", "vector"}:  # the old search's named form
        col.check_using(q["name"])
        q = q["vector"]
    if isinstance(q, dict):
        if set(q) - {"mmr"} != {"nearest"}:
            raise BadRequest(f"query {sorted(q)} is not supported (nearest, with or "
                             "without mmr)")
        mmr = q.get("mmr")
        if mmr is not None and (not isinstance(mmr, dict) or
                                set(mmr) - {"diversity", "candidates_limit"}):
            raise BadRequest("mmr takes {\"diversity\": 0..1, \"candidates_limit\": n}")
        q = q["nearest"]
    if isinstance(q, (int, str)) and not isinstance(q, bool):  # by the id of a point
        pid = point_id(q)
        recs = col.records([pid], with_payload=False, with_vector=True)
        if not recs:
            raise NotFound(f"No point with id {q!r} found")
        return col.unpack(recs[0]["vector"]), pid, mmr  # Qdrant leaves that point out
    if not isinstance(q, list):
        raise BadRequest("query must be a vector, a point id or {\"nearest\": ...}")
    return q, None, mmr


def answer(col, reqs: list, queries: list) -> list[list]:
    """Scored points per request. Plain requests that share their options run as one
    batch; MMR requests one by one."""
    out: list = [None] * len(reqs)
    groups: dict = {}
    for n, (req, q) in enumerate(zip(reqs, queries, strict=True)):
        vector, exclude, mmr = _target(q, col, getattr(req, "using", None))
        filt = to_filter(req.filter)
        if mmr is not None:
            out[n] = col.mmr(vector, req.limit, filt, req.score_threshold, req.with_payload,
                             req.with_vector, mmr.get("diversity", 0.5),
                             mmr.get("candidates_limit", req.limit), exclude)
            continue
        key = (req.limit, req.offset, repr(req.filter), req.score_threshold,
               repr(req.with_payload), repr(req.with_vector), exclude)
        groups.setdefault(key, (filt, []))[1].append((n, vector))
    for (limit, offset, _, threshold, _, _, exclude), (filt, items) in groups.items():
        req = reqs[items[0][0]]
        hits = col.query([v for _, v in items], limit, offset, filt, threshold,
                         req.with_payload, req.with_vector, exclude)
        for (n, _), h in zip(items, hits, strict=True):
            out[n] = h
    return out


@router.post("/collections/{name}/points/query", dependencies=READ,
             responses=r.doc(r.QueryResponse))
def query_points(body: m.QueryRequest, col: Col):
    t = time.perf_counter()
    if body.query is None:  # no query: the first points, as scroll would give them
        page = col.scroll(None, body.limit + body.offset, to_filter(body.filter),
                          body.with_payload, body.with_vector)["points"][body.offset :]
        return ok({"points": [{**p, "version": 0, "score": 0.0} for p in page]}, t)
    return ok({"points": answer(col, [body], [body.query])[0]}, t)


@router.post("/collections/{name}/points/query/batch", dependencies=READ,
             responses=r.doc(list[r.QueryResponse]))
def query_batch(body: m.QueryBatch, col: Col):
    t = time.perf_counter()
    if any(s.query is None for s in body.searches):
        raise BadRequest("every query of a batch needs a query vector")
    hits = answer(col, body.searches, [s.query for s in body.searches])
    return ok([{"points": h} for h in hits], t)


@router.post("/collections/{name}/points/search", dependencies=READ,
             responses=r.doc(list[r.ScoredPoint]))
def search_points(body: m.SearchRequest, col: Col):
    t = time.perf_counter()
    return ok(answer(col, [body], [body.vector])[0], t)


@router.post("/collections/{name}/points/search/batch", dependencies=READ,
             responses=r.doc(list[list[r.ScoredPoint]]))
def search_batch(body: m.SearchBatch, col: Col):
    t = time.perf_counter()
    return ok(answer(col, body.searches, [s.vector for s in body.searches]), t)
