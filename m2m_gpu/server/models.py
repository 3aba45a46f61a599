"""Request bodies of the server's routes (Qdrant's shapes, validated by pydantic; the
served OpenAPI schema comes from these). Unknown keys Qdrant's clients may send
(``shard_key``, ``consistency`` ...) are accepted and ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PointId = int | str
Payload = dict[str, Any]
WithPayload = bool | list[str] | dict[str, list[str]]
WithVector = bool | list[str]
Filter = dict[str, Any]

MAX_LIMIT = 10_000  # the largest k / page a request may ask for


# Fields of Qdrant's requests that would change the answer and that this server does not
# implement: refused (400 naming them) rather than ignored.
REFUSED = frozenset({"prefetch", "lookup_from", "order_by", "group_by", "update_filter",
                     "shard_key", "sparse_vectors"})


class _Loose(BaseModel):
    """Unknown keys are accepted and ignored (Qdrant's clients send some, e.g.
    ``consistency``), except those in REFUSED."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _refuse(self):
        extra = self.model_extra or {}
        refused = sorted(k for k in REFUSED & set(extra) if extra[k] not in (None, {}, []))
        if refused:
            raise ValueError(f"{refused} not supported by this server")
        return self


class VectorParams(_Loose):
    size: int = Field(ge=1, le=65536)
    distance: Literal["Cosine", "Euclid", "Dot"]


class CreateCollection(_Loose):
    vectors: VectorParams | dict[str, VectorParams]  # one vector, unnamed or named


Vector = list[float] | dict[str, list[float]]  # plain, or {name: vector}


class PointStruct(_Loose):
    id: PointId
    vector: Vector
    payload: Payload | None = None


class Batch(_Loose):
    ids: list[PointId]
    vectors: list[list[float]] | dict[str, list[list[float]]]
    payloads: list[Payload | None] | None = None


class PointInsert(_Loose):
    points: list[PointStruct] | None = None
    batch: Batch | None = None


class PointRequest(_Loose):
    ids: list[PointId]
    with_payload: WithPayload = True
    with_vector: WithVector = False


class PointsSelector(_Loose):
    points: list[PointId] | None = None
    filter: Filter | None = None


class SetPayload(_Loose):
    payload: Payload
    points: list[PointId] | None = None
    filter: Filter | None = None
    key: str | None = None


class ScrollRequest(_Loose):
    offset: PointId | None = None
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    filter: Filter | None = None
    with_payload: WithPayload = True
    with_vector: WithVector = False


class CountRequest(_Loose):
    filter: Filter | None = None
    exact: bool = True


class _Ranked(_Loose):
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_LIMIT)
    filter: Filter | None = None
    score_threshold: float | None = None
    with_payload: WithPayload = False
    with_vector: WithVector = False


class QueryRequest(_Ranked):
    query: list[float] | dict[str, Any] | PointId | None = None
    using: str | None = None


class QueryBatch(_Loose):
    searches: list[QueryRequest] = Field(max_length=256)


class SearchRequest(_Ranked):
    vector: list[float] | dict[str, Any]  # plain, or {"name": ..., "vector": [...]}


class SearchBatch(_Loose):
    searches: list[SearchRequest] = Field(max_length=256)


class FieldIndex(_Loose):
    field_name: str
    field_schema: str | dict[str, Any] | None = None


class Feedback(BaseModel):
    query: list[float]
    relevant: list[PointId] = []
    irrelevant: list[PointId] = []


class Energy(BaseModel):
    queries: list[list[float]] = Field(max_length=MAX_LIMIT)


class Decay(BaseModel):
    now: float


class ErrorStatus(BaseModel):
    error: str


class ErrorResponse(BaseModel):
    status: ErrorStatus
    time: float


ERRORS: dict = {code: {"model": ErrorResponse, "description": what} for code, what in (
    (400, "wrong input: the message names the problem"),
    (401, "no API key"), (403, "a wrong key, or a read-only key on a write"),
    (404, "no such collection or point"), (409, "the collection exists"),
    (413, "the request body is over the limit"))}
