"""Argument checks of the store's public calls: ids, metadata, per-event id lists.

Each raises :class:`InvalidInputError` naming the problem, before anything changes."""

from __future__ import annotations

import json
import numbers
from typing import Any

import numpy as np

from ..errors import InvalidInputError


def as_matrix(obj: Any) -> Any:
    """A 1-D vector becomes one row; anything else is passed on as it is."""
    if hasattr(obj, "ndim") and obj.ndim == 1:
        return obj.reshape(1, -1)
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], numbers.Number):
        return [list(obj)]
    return obj

_INT64 = np.iinfo(np.int64)

def check_id(id_: Any) -> Any:
    if isinstance(id_, (bool, np.bool_)):
        raise InvalidInputError(f"ids must be ints or strings, got {id_!r}")
    if isinstance(id_, (int, np.integer)):
        if not _INT64.min <= int(id_) <= _INT64.max:
            raise InvalidInputError(f"int ids must fit in int64, got {int(id_)}")
        return int(id_)
    if isinstance(id_, str):
        return id_
    raise InvalidInputError(f"ids must be ints or strings, got {type(id_).__name__} {id_!r}")

def is_single_id(obj: Any) -> bool:
    return isinstance(obj, (int, np.integer, str)) and not isinstance(obj, bool)

def id_list(obj: Any, what: str = "ids") -> list:
    """One id, or an iterable of ids, as a list. Objects that iterate but are not lists of
    ids are refused: bytes would be taken as a sequence of small ints, a dict as its keys."""
    if is_single_id(obj):
        return [obj]
    if obj is None or isinstance(obj, (bytes, bytearray, memoryview, dict, float)):
        raise InvalidInputError(f"{what} must be an int or str id or a list of them, got "
                                f"{type(obj).__name__} {obj!r:.60}")
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
        if is_single_id(obj):
            return [obj]
    try:
        return list(obj)
    except TypeError:
        raise InvalidInputError(f"{what} must be an int or str id or a list of them, got "
                                f"{type(obj).__name__}") from None

def check_ids(ids: Any, n: int) -> list:
    ids = [check_id(i) for i in id_list(ids)]
    if len(ids) != n:
        raise InvalidInputError(f"got {len(ids)} ids for {n} vectors")
    if len(set(ids)) != len(ids):
        raise InvalidInputError("ids repeat within one add(); each id may appear once")
    return ids

def check_metadata(metadata: Any, n: int) -> list[dict]:
    if metadata is None:
        return [{} for _ in range(n)]
    if isinstance(metadata, dict):
        metadata = [metadata] * n
    metadata = list(metadata)
    if len(metadata) != n:
        raise InvalidInputError(f"got {len(metadata)} metadata records for {n} vectors")
    out = []
    for i, m in enumerate(metadata):
        if m is None:
            m = {}
        if not isinstance(m, dict):
            raise InvalidInputError(f"metadata {i} must be a dict, got {type(m).__name__}")
        m = _plain(m, i)
        try:
            out.append(json.loads(json.dumps(m, allow_nan=False)))  # a deep copy, JSON-safe
        except (TypeError, ValueError) as exc:  # NaN / inf included: JSON has no such number
            why = "it holds NaN or infinity, which JSON has no number for" if \
                "Out of range float" in str(exc) else exc
            raise InvalidInputError(f"metadata {i} is not JSON-serialisable: {why}") from exc
    return out

MAX_METADATA_DEPTH = 64  # dicts and lists nested deeper than this are refused


def _plain(value: Any, i: int, depth: int = 0) -> Any:
    """Metadata with NumPy scalars as the Python numbers they are, and numbers a filter
    could not compare refused (an int beyond float range used to break every later filter
    on its key, for good)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_METADATA_DEPTH:
        raise InvalidInputError(f"metadata {i} is nested more than {MAX_METADATA_DEPTH} "
                                "levels deep")
    if isinstance(value, dict):
        return {k: _plain(v, i, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, i, depth + 1) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise InvalidInputError(f"metadata {i}: the int {str(value)[:20]}... is beyond "
                                    "float range; filters could not compare it") from None
    return value

def per_event(ids: Any, m: int, single: bool, what: str) -> list[list]:
    if ids is None:
        return [[] for _ in range(m)]
    if single:
        return [id_list(ids, what)]
    ids = id_list(ids, what)
    if len(ids) != m:
        raise InvalidInputError(f"{what}: got {len(ids)} lists for {m} queries")
    return [id_list(x, what) for x in ids]
