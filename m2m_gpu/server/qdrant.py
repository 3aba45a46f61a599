"""Qdrant's request vocabulary in this package's terms: point ids, filters, payload and
vector selectors. Pure functions; every refusal is a :class:`BadRequest` naming the part
of the request at fault (the server answers 400 with Qdrant's error body)."""

from __future__ import annotations

import uuid
from typing import Any

MAX_ID = 2**63 - 1  # Qdrant allows 2^64 - 1; the store's integer ids are int64
MAX_FILTER_DEPTH = 16
UNSUPPORTED_CONDITIONS = ("geo_radius", "geo_bounding_box", "geo_polygon", "values_count",
                          "nested", "has_vector", "slice")


class BadRequest(ValueError):
    """A request Qdrant would call "Wrong input"; the message names the problem."""


def point_id(value: Any) -> int | str:
    """An unsigned 64-bit integer, or a UUID (returned in lower-case hyphenated form)."""
    if isinstance(value, bool):
        raise BadRequest(f"point id {value!r} is neither an unsigned integer nor a UUID")
    if isinstance(value, int):
        if 0 <= value <= MAX_ID:
            return value
        raise BadRequest(f"point id {value} is outside 0 .. 2^63 - 1 (this server keeps "
                         "integer ids as int64; use a UUID beyond that)")
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise BadRequest(f"point id {value!r} is neither an unsigned integer nor a UUID")


def point_ids(values: Any) -> list[int | str]:
    if not isinstance(values, list):
        raise BadRequest("points must be a list of ids")
    return [point_id(v) for v in values]


def id_order(i: int | str) -> tuple[int, int, str]:
    """Qdrant's scroll order: integers first, ascending, then UUIDs."""
    return (0, i, "") if isinstance(i, int) else (1, 0, i)


def _listed(x: Any) -> list:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def to_filter(f: Any, depth: int = 0) -> dict | None:
    """A Qdrant ``Filter`` (must / should / must_not) as a :mod:`m2m_gpu.filters` dict;
    None when it constrains nothing."""
    if f is None:
        return None
    if not isinstance(f, dict):
        raise BadRequest("a filter must be an object with must / should / must_not")
    if depth > MAX_FILTER_DEPTH:
        raise BadRequest(f"filter nested more than {MAX_FILTER_DEPTH} levels deep")
    unknown = set(f) - {"must", "should", "must_not", "min_should"}
    if unknown:
        raise BadRequest(f"unknown filter keys {sorted(unknown)}")
    if f.get("min_should") is not None:
        raise BadRequest("min_should is not supported")
    parts = []
    must = [_condition(c, depth) for c in _listed(f.get("must"))]
    parts += [c for c in must if c is not None]
    should = [_condition(c, depth) for c in _listed(f.get("should"))]
    if should:
        if any(c is None for c in should):  # an empty sub-filter matches everything
            pass
        else:
            parts.append({"$or": should})
    must_not = [c for c in (_condition(c, depth) for c in _listed(f.get("must_not")))]
    for c in must_not:
        parts.append({"$not": c if c is not None else {}})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _condition(c: Any, depth: int) -> dict | None:
    if not isinstance(c, dict):
        raise BadRequest(f"a filter condition must be an object, got {c!r}")
    if "key" in c:
        return _field(c)
    if "has_id" in c:
        return {"$id": {"$in": point_ids(c["has_id"])}}
    if "is_empty" in c:
        return {_key_of(c["is_empty"]): {"$empty": True}}
    if "is_null" in c:
        return {_key_of(c["is_null"]): {"$null": True}}
    for name in UNSUPPORTED_CONDITIONS:
        if name in c:
            raise BadRequest(f"filter condition {name!r} is not supported")
    if set(c) & {"must", "should", "must_not", "min_should"}:
        return to_filter(c, depth + 1)
    raise BadRequest(f"unknown filter condition {sorted(c)}")


def _key_of(x: Any) -> str:
    if not isinstance(x, dict) or not isinstance(x.get("key"), str) or not x["key"]:
        raise BadRequest("is_empty / is_null take {\"key\": <payload key>}")
    return x["key"]


def _field(c: dict) -> dict:
    key = c["key"]
    if not isinstance(key, str) or not key or key.startswith("$") or "[" in key:
        raise BadRequest(f"filter key {key!r} is not a payload path this server supports")
    given = [n for n in ("match", "range", "is_empty", "is_null", *UNSUPPORTED_CONDITIONS)
             if c.get(n) is not None]
    if len(given) != 1:
        raise BadRequest(f"condition on {key!r} needs exactly one of match / range / "
                         f"is_empty / is_null, got {given}")
    kind, val = given[0], c[given[0]]
    if kind in UNSUPPORTED_CONDITIONS:
        raise BadRequest(f"condition {kind!r} on {key!r} is not supported")
    if kind in ("is_empty", "is_null"):
        if not isinstance(val, bool):
            raise BadRequest(f"{kind} on {key!r} takes true or false")
        return {key: {"$empty" if kind == "is_empty" else "$null": val}}
    if kind == "range":
        if not isinstance(val, dict):
            raise BadRequest(f"range on {key!r} must be an object")
        ops = {f"${op}": v for op, v in val.items() if v is not None}
        for op, v in ops.items():
            if op not in ("$gt", "$gte", "$lt", "$lte"):
                raise BadRequest(f"range on {key!r}: unknown bound {op[1:]!r}")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BadRequest(f"range on {key!r}: {op[1:]} must be a number")
        return {key: ops} if ops else {}
    if not isinstance(val, dict) or len(val) != 1:
        raise BadRequest(f"match on {key!r} needs one of value / any / except")
    (how, v), = val.items()
    if how == "value":
        if not isinstance(v, (str, int, bool)):
            raise BadRequest(f"match value on {key!r} must be a string, integer or bool")
        return {key: {"$match": v}}
    if how in ("any", "except"):
        if not isinstance(v, list) or not all(isinstance(x, (str, int)) for x in v):
            raise BadRequest(f"match {how} on {key!r} takes a list of strings or integers")
        return {key: {"$any" if how == "any" else "$except": v}}
    raise BadRequest(f"match {how!r} on {key!r} is not supported (value / any / except)")


def payload_selector(sel: Any):
    """``with_payload`` (bool, list of keys, {"include"} or {"exclude"}) as a function
    payload -> payload or None."""
    if sel is None or sel is False:
        return lambda p: None
    if sel is True:
        return lambda p: p
    if isinstance(sel, list):
        keys = set(sel)
        return lambda p: {k: v for k, v in p.items() if k in keys}
    if isinstance(sel, dict) and set(sel) == {"include"} and isinstance(sel["include"], list):
        keys = set(sel["include"])
        return lambda p: {k: v for k, v in p.items() if k in keys}
    if isinstance(sel, dict) and set(sel) == {"exclude"} and isinstance(sel["exclude"], list):
        keys = set(sel["exclude"])
        return lambda p: {k: v for k, v in p.items() if k not in keys}
    raise BadRequest("with_payload must be true, false, a list of keys, {\"include\": [...]} "
                     "or {\"exclude\": [...]}")


def vector_selector(sel: Any) -> bool:
    if sel is None or isinstance(sel, bool):
        return bool(sel)
    if isinstance(sel, list):  # named vectors: this server has the one unnamed vector
        return len(sel) > 0
    raise BadRequest("with_vector must be true, false or a list of vector names")
