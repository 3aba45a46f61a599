"""Text routes of a collection that is a TextMemory: create, store, search (hybrid BM25 +
vector), feedback and confidence."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from . import models as m
from . import responses as r
from .qdrant import BadRequest, point_ids, to_filter
from .routes_points import READ, WRITE, Col, Reg, ok
from .text_collection import TextCollection

router = APIRouter(responses=m.ERRORS)


class CreateText(BaseModel):
    encoder: str = "minilm"


class StoreTexts(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=10_000)
    metadata: list[dict[str, Any]] | None = None
    ids: list[m.PointId] | None = None


class SearchText(BaseModel):
    query: str
    k: int = Field(10, ge=1, le=m.MAX_LIMIT)
    mode: Literal["hybrid", "vector", "bm25"] = "hybrid"
    fusion: Literal["weighted", "rrf"] = "weighted"
    weights: tuple[float, float] = (0.5, 0.5)
    filter: m.Filter | None = None


class TextFeedback(BaseModel):
    query: str
    relevant: list[m.PointId] = []
    irrelevant: list[m.PointId] = []


class Query(BaseModel):
    query: str


class Hit(BaseModel):
    id: m.PointId
    text: str
    score: float
    metadata: dict[str, Any]
    ranks: dict[str, int | None]


class Ids(BaseModel):
    ids: list[m.PointId]


class Hits(BaseModel):
    hits: list[Hit]


class Confidence(BaseModel):
    confidence: float


def _text(col) -> TextCollection:
    if not isinstance(col, TextCollection):
        raise BadRequest(f"collection {col.name!r} holds vectors, not texts")
    return col


@router.put("/collections/{name}/text", dependencies=WRITE, responses=r.doc(bool))
def create_text_collection(name: str, body: CreateText, reg: Reg):
    """A collection that is a TextMemory with this encoder (``hashed``, ``minilm``, a
    sentence-transformers name or directory, or ``hf:NAME``)."""
    t = time.perf_counter()
    reg.create_text(name, body.encoder)
    return ok(True, t)


@router.post("/collections/{name}/text/store", dependencies=WRITE, responses=r.doc(Ids))
def store_texts(body: StoreTexts, col: Col):
    t = time.perf_counter()
    ids = None if body.ids is None else point_ids(body.ids)
    return ok({"ids": _text(col).store_texts(body.texts, body.metadata, ids)}, t)


@router.post("/collections/{name}/text/search", dependencies=READ, responses=r.doc(Hits))
def search_texts(body: SearchText, col: Col):
    t = time.perf_counter()
    hits = _text(col).memory.search(body.query, body.k, mode=body.mode,
                                    filter=to_filter(body.filter), fusion=body.fusion,
                                    weights=body.weights)
    return ok({"hits": hits}, t)


@router.post("/collections/{name}/text/feedback", dependencies=WRITE,
             responses=r.doc(r.Updated))
def text_feedback(body: TextFeedback, col: Col):
    t = time.perf_counter()
    n = _text(col).memory.feedback(body.query, relevant=point_ids(body.relevant),
                                   irrelevant=point_ids(body.irrelevant))
    return ok({"updated": int(n)}, t)


@router.post("/collections/{name}/text/confidence", dependencies=READ,
             responses=r.doc(Confidence))
def text_confidence(body: Query, col: Col):
    t = time.perf_counter()
    return ok({"confidence": _text(col).memory.confidence(body.query)}, t)
