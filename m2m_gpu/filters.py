"""Metadata filters for :meth:`m2m_gpu.SplatStore.search`, evaluated column-wise.

A filter is a dict in the style of MongoDB / Chroma / LangChain filters::

    {"lang": "en"}                                   # equality
    {"year": {"$gte": 2020, "$lt": 2025}}            # ranges: $gt $gte $lt $lte
    {"tag": {"$in": ["a", "b"]}, "draft": {"$ne": True}}   # $in $nin $eq $ne
    {"$or": [{"lang": "en"}, {"lang": "de"}]}        # $and $or $not
    {"lang": {"$exists": True}}                      # the key is there (any value)
    {"meta.source": "a.txt"}                         # a dotted path into nested objects
    {"$id": {"$in": [1, 2]}}                         # the splats' own ids ($in, $nin, $eq)
    {"n": {"$match": 5}}, {"n": {"$any": [5, 6]}}    # Qdrant's typed matches: 5 is not 5.0
    {"tag": {"$except": ["a"]}}                      # Qdrant's MatchExcept
    {"k": {"$null": True}}, {"k": {"$empty": True}}  # Qdrant's IsNull and IsEmpty

The ``$match`` / ``$any`` / ``$except`` / ``$null`` / ``$empty`` family follows Qdrant's
rules (checked against qdrant-client's local mode): types are strict (the integer 5 does not
match 5.0, nor True 1), lists match element-wise; ``$except`` holds when some non-null value
is outside the list (a missing key, null and [] do not); ``$null`` holds for null and for a
list holding null; ``$empty`` for a missing key, null and [].
    {"lang": "en", "year": {"$gte": 2020}}           # several keys: all must hold

A dotted key ``a.b`` reads ``metadata["a"]["b"]`` when the metadata has no key ``"a.b"``
itself; through a list of objects it collects ``b`` from each (Qdrant's payload paths).
A key missing from a splat's metadata matches only ``$ne``, ``$nin`` and
``{"$exists": False}``. Range operators
compare numbers with numbers and strings with strings; other values do not match.

List-valued metadata match element-wise, as in MongoDB: ``{"tags": "x"}`` and
``{"tags": {"$in": ["x", "y"]}}`` match a splat whose ``tags`` list holds ``"x"``;
``{"tags": {"$contains": "x"}}`` says so explicitly (and matches lists only); a whole list
as the value, ``{"tags": ["x", "y"]}``, also matches that exact list.

The store keeps one column (an object array over its slots) per metadata key that a filter
has used, updated as splats are added or replaced, so a filtered search costs vectorised
comparisons over columns, not a Python loop over splats.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import InvalidInputError

MISSING = object()  # a key that a splat's metadata does not have
RANGE_OPS = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
SET_OPS = ("$in", "$nin")
EQ_OPS = ("$eq", "$ne")
LIST_OPS = ("$contains",)
EXISTS = "$exists"
ID_KEY = "$id"
TYPED_OPS = ("$match", "$any", "$except", "$null", "$empty")  # Qdrant's semantics


MAX_DEPTH = 32  # $and / $or / $not nested deeper than this are refused


def check(filt: Any, depth: int = 0) -> None:
    """Raise :class:`InvalidInputError` for a malformed filter (before anything runs)."""
    if not isinstance(filt, dict):
        raise InvalidInputError(f"a filter must be a dict, got {type(filt).__name__}")
    if depth > MAX_DEPTH:
        raise InvalidInputError(f"filter nested more than {MAX_DEPTH} levels deep")
    for key, cond in filt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, (list, tuple)) or not cond:
                raise InvalidInputError(f"{key} takes a non-empty list of filters")
            for sub in cond:
                check(sub, depth + 1)
        elif key == "$not":
            check(cond, depth + 1)
        elif key == ID_KEY:
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            for op, val in ops.items():
                if op not in ("$in", "$nin", "$eq"):
                    raise InvalidInputError(f"$id takes $in, $nin or $eq, got {op!r}")
                if op != "$eq" and not isinstance(val, (list, tuple, set, frozenset)):
                    raise InvalidInputError(f"$id {op} takes a list, got {val!r}")
        elif isinstance(key, str) and key.startswith("$"):
            raise InvalidInputError(f"unknown filter operator {key!r}")
        elif isinstance(cond, dict):
            for op, val in cond.items():
                if op in SET_OPS:
                    if not isinstance(val, (list, tuple, set, frozenset)):
                        raise InvalidInputError(f"{op} takes a list, got {val!r}")
                elif op in (EXISTS, "$null", "$empty"):
                    if not isinstance(val, bool):
                        raise InvalidInputError(f"{op} takes true or false, got {val!r}")
                elif op in ("$any", "$except"):
                    if not isinstance(val, (list, tuple)):
                        raise InvalidInputError(f"{op} takes a list, got {val!r}")
                elif op == "$match":
                    if not isinstance(val, (str, int)):  # bool is an int
                        raise InvalidInputError(f"$match takes a string, integer or bool, "
                                                f"got {val!r}")
                elif op not in RANGE_OPS and op not in EQ_OPS and op not in LIST_OPS:
                    raise InvalidInputError(f"unknown filter operator {op!r} on {key!r}")


def keys(filt: dict) -> set[str]:
    """The metadata keys a (checked) filter reads, through $and / $or / $not."""
    out: set[str] = set()
    for key, cond in filt.items():
        if key in ("$and", "$or"):
            for sub in cond:
                out |= keys(sub)
        elif key == "$not":
            out |= keys(cond)
        elif key != ID_KEY:
            out.add(key)
    return out


K_MISSING, K_BOOL, K_NUMBER, K_STR, K_OTHER, K_LIST = 0, 1, 2, 3, 4, 5


def _typed(values: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(object values, kind codes, float64 numbers with NaN elsewhere) for a list of values."""
    n = len(values)
    obj = np.empty(n, dtype=object)
    obj[:] = values
    kind = np.empty(n, dtype=np.int8)
    num = np.full(n, np.nan)
    for i, v in enumerate(values):  # runs once per value stored, never per search
        if v is MISSING:
            kind[i] = K_MISSING
        elif isinstance(v, bool):
            kind[i] = K_BOOL
        elif isinstance(v, numbers.Real):
            kind[i] = K_NUMBER
            num[i] = float(v)
        elif isinstance(v, str):
            kind[i] = K_STR
        elif isinstance(v, (list, tuple)):
            kind[i] = K_LIST
        else:
            kind[i] = K_OTHER
    return obj, kind, num


def lookup(meta: dict, key: str) -> Any:
    """``meta[key]``, else the dotted path ``key`` walked through nested objects (and
    through lists of objects, collecting), else MISSING."""
    if key in meta:
        return meta[key]
    if "." not in key:
        return MISSING
    cur: Any = meta
    for part in key.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                return MISSING
            cur = cur[part]
        elif isinstance(cur, list):
            cur = [e[part] for e in cur if isinstance(e, dict) and part in e]
            cur = [x for e in cur for x in (e if isinstance(e, list) else [e])]
        else:
            return MISSING
    return cur


class Columns:
    """Typed columns over a store's slots, one per metadata key that a filter has used:
    the values, a kind code per slot and the numbers as float64. Built once per key and
    then updated as splats are added, replaced or compacted."""

    def __init__(self) -> None:
        self.cols: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def column(self, key: str, metadata: list[dict]):
        col = self.cols.get(key)
        if col is None or col[0].shape[0] != len(metadata):
            col = self.cols[key] = _typed(
                [lookup(m, key) if m is not None else MISSING for m in metadata])
        return col

    def on_set(self, slots: np.ndarray, records: list[dict], total: int) -> None:
        """Slots (new or replaced) now hold ``records``; ``total`` is the new slot count."""
        for key, col in list(self.cols.items()):
            have = col[0].shape[0]
            if have < total:
                extra = _typed([MISSING] * (total - have))
                col = tuple(np.concatenate([a, b]) for a, b in zip(col, extra, strict=True))
            new = _typed([lookup(r, key) for r in records])
            for a, b in zip(col, new, strict=True):
                a[slots] = b
            self.cols[key] = col

    def on_keep(self, keep: np.ndarray) -> None:
        for key, col in list(self.cols.items()):
            self.cols[key] = tuple(a[keep] for a in col)


def evaluate(filt: dict, metadata: list[dict], columns: Columns,
             ids: list | None = None) -> np.ndarray:
    """Boolean mask over slots (``ids``: the id in each slot, for ``$id``)."""
    n = len(metadata)
    mask = np.ones(n, dtype=bool)
    for key, cond in filt.items():
        if key == "$and":
            for sub in cond:
                mask &= evaluate(sub, metadata, columns, ids)
        elif key == "$or":
            anyof = np.zeros(n, dtype=bool)
            for sub in cond:
                anyof |= evaluate(sub, metadata, columns, ids)
            mask &= anyof
        elif key == "$not":
            mask &= ~evaluate(cond, metadata, columns, ids)
        elif key == ID_KEY:
            mask &= _ids_match(cond, ids)
        else:
            col = columns.column(key, metadata)
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            for op, val in ops.items():
                mask &= _apply(col, op, val)
    return mask


def _ids_match(cond: Any, ids: list | None) -> np.ndarray:
    if ids is None:
        raise InvalidInputError("$id needs the store's ids")
    hit = np.ones(len(ids), dtype=bool)
    for op, val in (cond if isinstance(cond, dict) else {"$eq": cond}).items():
        want = {val} if op == "$eq" else set(val)
        inside = np.fromiter((i in want for i in ids), bool, len(ids))
        hit &= ~inside if op == "$nin" else inside
    return hit


def _same(a: Any, b: Any) -> bool:
    """Equality as the filters use it: bools are not numbers, numbers compare as floats."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _elementwise(col, val: Any, whole: bool) -> np.ndarray:
    """Slots whose list holds ``val`` (and, with ``whole``, whose list equals it)."""
    obj, kind, _ = col
    out = np.zeros(obj.shape[0], dtype=bool)
    for i in np.flatnonzero(kind == K_LIST).tolist():  # only the list-valued slots
        items = obj[i]
        out[i] = any(_same(e, val) for e in items) or (
            whole and isinstance(val, (list, tuple)) and list(items) == list(val))
    return out


def _equal(col, val: Any) -> np.ndarray:
    obj, kind, num = col
    if isinstance(val, bool):
        hit = (kind == K_BOOL) & np.asarray(obj == val, dtype=bool)
    elif isinstance(val, numbers.Real):
        hit = (kind == K_NUMBER) & (num == float(val))
    elif isinstance(val, str):
        hit = (kind == K_STR) & np.asarray(obj == val, dtype=bool)
    else:  # a dict or a list value: compared one slot at a time (no broadcasting)
        hit = np.zeros(obj.shape[0], dtype=bool)
        for i in np.flatnonzero(kind == K_OTHER).tolist():
            hit[i] = type(obj[i]) is type(val) and obj[i] == val
    if (kind == K_LIST).any():
        hit |= _elementwise(col, val, whole=True)
    return hit


def _apply(col, op: str, val: Any) -> np.ndarray:
    obj, kind, num = col
    if op == "$eq":
        return _equal(col, val)
    if op == "$ne":
        return ~_equal(col, val)
    if op == "$contains":
        return _elementwise(col, val, whole=False)
    if op == EXISTS:
        return (kind != K_MISSING) == val
    if op in TYPED_OPS:
        return _typed_op(col, op, val)
    if op in SET_OPS:
        hit = np.zeros(obj.shape[0], dtype=bool)
        for v in val:
            hit |= _equal(col, v)
        return hit if op == "$in" else ~hit
    cmp = RANGE_OPS[op]  # ranges: numbers with numbers, strings with strings; lists by element
    if isinstance(val, numbers.Real) and not isinstance(val, bool):
        with np.errstate(invalid="ignore"):
            out = cmp(num, float(val)) & (kind == K_NUMBER)
        same = _is_number
    elif isinstance(val, str):
        out = np.zeros(obj.shape[0], dtype=bool)
        idx = np.flatnonzero(kind == K_STR)
        if idx.size:
            out[idx] = cmp(obj[idx].astype(str), val)
        same = _is_str
    else:
        raise InvalidInputError(f"{op} needs a number or a string, got {val!r}")
    for i in np.flatnonzero(kind == K_LIST).tolist():
        out[i] = any(same(e) and bool(cmp(e, val)) for e in obj[i])
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _strict(a: Any, b: Any) -> bool:
    """Qdrant's equality: the same JSON type (bool, integer, float, string) and value."""
    return type(a) is type(b) and a == b


def _typed_op(col, op: str, val: Any) -> np.ndarray:
    """Qdrant's typed conditions: scalar slots decided column-wise (only the numeric or
    object candidates are type-checked one by one), list slots element by element."""
    obj, kind, _ = col
    if op == "$any":
        out = np.zeros(obj.shape[0], dtype=bool)
        for v in val:
            out |= _typed_op(col, "$match", v)
        return out
    if op == "$match":
        out = _strict_scalar(col, val)

        def items(e):
            return any(_strict(x, val) for x in e)
    elif op == "$except":
        inside = _typed_op(col, "$any", val)
        out = (kind != K_MISSING) & (kind != K_LIST) & ~inside & ~_nulls(col)

        def items(e):
            return any(x is not None and not any(_strict(x, w) for w in val) for x in e)
    elif op == "$null":
        out = _nulls(col)

        def items(e):
            return any(x is None for x in e)
    else:  # $empty: missing, null or []
        out = (kind == K_MISSING) | _nulls(col)

        def items(e):
            return len(e) == 0
    for i in np.flatnonzero(kind == K_LIST).tolist():
        out[i] = items(obj[i])
    if op in ("$null", "$empty") and not val:
        out = ~out & (kind != K_MISSING)  # a missing key is neither null nor non-null
    return out


def _nulls(col) -> np.ndarray:
    obj, kind, _ = col
    out = np.zeros(obj.shape[0], dtype=bool)
    for i in np.flatnonzero(kind == K_OTHER).tolist():
        out[i] = obj[i] is None
    return out


def _strict_scalar(col, val: Any) -> np.ndarray:
    """Scalar slots holding exactly ``val``, its JSON type included (5 is not 5.0)."""
    obj, kind, num = col
    if isinstance(val, bool):
        return (kind == K_BOOL) & np.asarray(obj == val, dtype=bool)
    if isinstance(val, str):
        return (kind == K_STR) & np.asarray(obj == val, dtype=bool)
    out = (kind == K_NUMBER) & (num == float(val))
    for i in np.flatnonzero(out).tolist():
        out[i] = type(obj[i]) is type(val)
    return out
