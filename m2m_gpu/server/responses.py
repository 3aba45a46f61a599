"""What the routes answer, as OpenAPI documents it (Qdrant's envelope ``{"result",
"status", "time"}``). The routes return plain dicts; these models only describe them, and
the schemathesis run (tests/test_server_fuzz.py) checks every answer against them."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

PointId = int | str
T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    result: T
    status: Literal["ok"]
    time: float


class Name(BaseModel):
    name: str


class Collections(BaseModel):
    collections: list[Name]


class Exists(BaseModel):
    exists: bool


class VectorsConfig(BaseModel):
    size: int
    distance: Literal["Cosine", "Euclid", "Dot"]


class Params(BaseModel):
    vectors: VectorsConfig


class CollectionConfig(BaseModel):
    params: Params
    hnsw_config: dict[str, Any]
    optimizer_config: dict[str, Any]


class CollectionInfo(BaseModel):
    status: Literal["green"]
    optimizer_status: str
    segments_count: int
    points_count: int
    config: CollectionConfig
    payload_schema: dict[str, Any]


class UpdateResult(BaseModel):
    operation_id: int
    status: Literal["acknowledged", "completed"]


class Record(BaseModel):
    id: PointId
    payload: dict[str, Any] | None
    vector: list[float] | None


class ScrollResult(BaseModel):
    points: list[Record]
    next_page_offset: PointId | None


class Count(BaseModel):
    count: int


class ScoredPoint(Record):
    version: int
    score: float


class QueryResponse(BaseModel):
    points: list[ScoredPoint]


class Updated(BaseModel):
    updated: int


class Energies(BaseModel):
    energy: list[float | None]  # None: an empty collection (+inf)
    confidence: list[float]


class Decayed(BaseModel):
    elapsed: float
    factor: float
    pruned: list[PointId]


class Consolidated(BaseModel):
    pruned: list[PointId]
    merged: list[list[PointId]]
    rounds: int
    before: int
    after: int
    reason: str


def doc(model: Any) -> dict:
    """``responses=`` entry documenting a 200 answer of ``Envelope[model]``."""
    return {200: {"model": Envelope[model], "description": "done"}}
