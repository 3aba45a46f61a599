"""Qdrant's collections and points routes (the subset ``qdrant-client`` uses)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from . import models as m
from . import responses as r
from .qdrant import BadRequest, point_id, point_ids, to_filter

router = APIRouter(responses=m.ERRORS)


def ok(result: Any, started: float) -> dict:
    return {"result": result, "status": "ok", "time": time.perf_counter() - started}


# async: FastAPI runs a plain def dependency on its thread pool, a thread hop per request
async def reader(request: Request) -> None:
    request.app.state.keys.check(request, write=False)


async def writer(request: Request) -> None:
    request.app.state.keys.check(request, write=True)


async def registry(request: Request):
    return request.app.state.registry


async def collection(name: str, request: Request):
    return request.app.state.registry.get(name)


READ, WRITE = [Depends(reader)], [Depends(writer)]
Col = Annotated[Any, Depends(collection)]
Reg = Annotated[Any, Depends(registry)]


def _max_points(request: Request, n: int) -> None:
    limit = request.app.state.max_points
    if n > limit:
        raise BadRequest(f"{n} points in one request; the limit is {limit}")


def _update(wait: bool, started: float) -> dict:
    # every write is durable (fsynced) before it returns, whatever wait says
    return ok({"operation_id": 0, "status": "completed" if wait else "acknowledged"}, started)


# ---- collections --------------------------------------------------------------------------
@router.get("/collections", dependencies=READ,
             responses=r.doc(r.Collections))
def list_collections(reg: Reg):
    t = time.perf_counter()
    return ok({"collections": [{"name": n} for n in reg.names()]}, t)


@router.put("/collections/{name}", dependencies=WRITE,
             responses=r.doc(bool))
def create_collection(name: str, body: m.CreateCollection, reg: Reg):
    t = time.perf_counter()
    vectors, vector_name = body.vectors, ""
    if isinstance(vectors, dict):
        if len(vectors) != 1:
            raise BadRequest(f"{len(vectors)} named vectors: a collection here has one")
        (vector_name, vectors), = vectors.items()
    reg.create(name, vectors.size, vectors.distance, vector_name)
    return ok(True, t)


@router.get("/collections/{name}", dependencies=READ,
             responses=r.doc(r.CollectionInfo))
def get_collection(col: Col):
    t = time.perf_counter()
    return ok(col.info(), t)


@router.get("/collections/{name}/exists", dependencies=READ,
             responses=r.doc(r.Exists))
def collection_exists(name: str, reg: Reg):
    t = time.perf_counter()
    return ok({"exists": reg.exists(name)}, t)


@router.delete("/collections/{name}", dependencies=WRITE,
             responses=r.doc(bool))
def delete_collection(name: str, reg: Reg):
    t = time.perf_counter()
    return ok(reg.delete(name), t)


@router.put("/collections/{name}/index", dependencies=WRITE,
            responses=r.doc(r.UpdateResult))
def create_field_index(body: m.FieldIndex, col: Col, wait: bool = False):
    t = time.perf_counter()
    col.index_field(body.field_name, body.field_schema)
    return _update(wait, t)


@router.delete("/collections/{name}/index/{field_name}", dependencies=WRITE,
               responses=r.doc(r.UpdateResult))
def delete_field_index(field_name: str, col: Col, wait: bool = False):
    t = time.perf_counter()
    col.index_field(field_name, None, drop=True)
    return _update(wait, t)


# ---- points: writes -----------------------------------------------------------------------
@router.put("/collections/{name}/points", dependencies=WRITE,
             responses=r.doc(r.UpdateResult))
def upsert_points(body: m.PointInsert, request: Request, col: Col,
                  wait: bool = False):
    t = time.perf_counter()
    if (body.points is None) == (body.batch is None):
        raise BadRequest("send either points or batch")
    if body.points is not None:
        ids = [p.id for p in body.points]
        vectors = [col.unpack(p.vector) for p in body.points]
        payloads = [p.payload or {} for p in body.points]
    else:
        ids, vectors = body.batch.ids, col.unpack(body.batch.vectors)
        payloads = [p or {} for p in (body.batch.payloads or [None] * len(ids))]
        if len(vectors) != len(ids) or len(payloads) != len(ids):
            raise BadRequest("batch ids, vectors and payloads differ in length")
    _max_points(request, len(ids))
    col.upsert(point_ids(ids), vectors, payloads)
    return _update(wait, t)


@router.post("/collections/{name}/points/delete", dependencies=WRITE,
             responses=r.doc(r.UpdateResult))
def delete_points(body: m.PointsSelector, request: Request, col: Col,
                  wait: bool = False):
    t = time.perf_counter()
    ids, filt = _selected(body, request)
    col.delete(ids=ids, filt=filt)
    return _update(wait, t)


def _selected(body, request: Request) -> tuple[list | None, dict | None]:
    """A request's ``points`` or ``filter`` (exactly one): ``(ids, None)`` or ``(None,
    filter)``; an empty filter is ``{}``, every point, as in Qdrant."""
    if (body.points is None) == (body.filter is None):
        raise BadRequest("send either points or filter")
    if body.points is not None:
        _max_points(request, len(body.points))
        return point_ids(body.points), None
    filt = to_filter(body.filter)
    return None, {} if filt is None else filt


def _payload_write(body: m.SetPayload, request: Request, wait: bool, col, overwrite: bool):
    t = time.perf_counter()
    ids, filt = _selected(body, request)
    col.set_payload(body.payload, ids, filt, overwrite=overwrite, key=body.key)
    return _update(wait, t)


@router.post("/collections/{name}/points/payload", dependencies=WRITE,
             responses=r.doc(r.UpdateResult))
def set_payload(body: m.SetPayload, request: Request, col: Col,
                wait: bool = False):
    return _payload_write(body, request, wait, col, overwrite=False)


@router.put("/collections/{name}/points/payload", dependencies=WRITE,
             responses=r.doc(r.UpdateResult))
def overwrite_payload(body: m.SetPayload, request: Request, col: Col,
                      wait: bool = False):
    return _payload_write(body, request, wait, col, overwrite=True)


# ---- points: reads ------------------------------------------------------------------------
@router.post("/collections/{name}/points", dependencies=READ,
             responses=r.doc(list[r.Record]))
def retrieve_points(body: m.PointRequest, request: Request, col: Col):
    t = time.perf_counter()
    _max_points(request, len(body.ids))
    return ok(col.records(point_ids(body.ids), body.with_payload, body.with_vector), t)


@router.post("/collections/{name}/points/scroll", dependencies=READ,
             responses=r.doc(r.ScrollResult))
def scroll_points(body: m.ScrollRequest, col: Col):
    t = time.perf_counter()
    offset = None if body.offset is None else point_id(body.offset)
    return ok(col.scroll(offset, body.limit, to_filter(body.filter), body.with_payload,
                         body.with_vector), t)


@router.post("/collections/{name}/points/count", dependencies=READ,
             responses=r.doc(r.Count))
def count_points(body: m.CountRequest, col: Col):
    t = time.perf_counter()
    return ok({"count": col.count(to_filter(body.filter))}, t)
