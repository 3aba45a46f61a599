"""Every change to a store is one operation object.

An operation is built from a call's arguments by ``build`` (which validates and decides,
reading the state but changing nothing, so a call that raises leaves the store as it
was), turned into a log record by ``record``, and carried out by ``apply``. Replay rebuilds
the operation from its record (``from_record``) and runs the same ``apply``. Records hold
*outcomes*: the aliases deduplication chose, the ids a prune removes, the pairs a merge
round joins; replay never decides anything again.

Operations a store runs by itself (an automatic consolidation after decay, feedback or an
add past ``capacity``) are separate operations logged after the one that triggered them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import numpy as np

from ..backends.base import PARAM_ALPHA, PARAM_KAPPA, PARAM_TICK, PARAM_WIDTH
from ..errors import InvalidInputError, StoreFormatError, UnknownIdError
from ..inputs import prepare
from ..tensor import host_array
from . import learning
from .args import as_matrix, check_id, check_ids, check_metadata, id_list
from .options import MAX_DECAY_HALF_LIVES, MAX_TIME
from .slots import digest
from .state import StoreState


class Op:
    name: ClassVar[str]

    def record(self) -> tuple[dict, list[np.ndarray]]:
        raise NotImplementedError

    @classmethod
    def from_record(cls, st: StoreState, header: dict, arrays: list[np.ndarray]) -> Op:
        raise NotImplementedError

    def apply(self, st: StoreState) -> Any:
        raise NotImplementedError


class Add(Op):
    """Insert or replace splats. ``aliases``: ids deduplication maps onto a stored id
    (their vectors are not stored again)."""

    name = "add"

    def __init__(self, x: np.ndarray, keys: list, meta: list, aliases: list,
                 next_id: int) -> None:
        self.x, self.keys, self.meta, self.aliases, self.next_id = x, keys, meta, aliases, next_id
        self.order = None  # the ids in the caller's row order (set by build)

    @classmethod
    def build(cls, st: StoreState, vectors, ids, metadata) -> Add:
        x, _, _ = prepare(as_matrix(vectors), "vectors", st.metric, dim=st.dim)
        n = x.shape[0]
        nxt = st.table.next_id
        if ids is None:
            keys, nxt = st.table.peek_new_ids(n)
        else:
            keys = check_ids(ids, n)
        meta = check_metadata(metadata, n)
        op = cls(np.ascontiguousarray(host_array(x, np.float32)), keys, meta, [], nxt)
        op.order = list(keys)
        if st.options.dedup and n:
            op._dedup(st)
        return op

    @property
    def all_ids(self) -> list:
        """The ids of the call, in its row order (dedup aliases where their rows were)."""
        if self.order is not None:
            return list(self.order)
        return [*self.keys, *(k for k, _ in self.aliases)]

    def _dedup(self, st: StoreState) -> None:
        """New ids whose vector is bit for bit a stored splat's or an earlier row's of this
        add become aliases of that id (a target deleted or moved since its digest was kept
        is not used)."""
        kept, batch, table = [], {}, st.table
        for i, k in enumerate(self.keys):
            if k in table.slot:  # an upsert replaces its own splat
                kept.append(i)
                continue
            h = digest(self.x[i])
            if h in batch:
                self.aliases.append((k, batch[h]))
                continue
            target = table.holder(h, lambda s, row=self.x[i]: np.array_equal(
                st.arrays.mu(np.array([s]))[0], row))
            if target is not None:
                self.aliases.append((k, target))
                continue
            batch[h] = k
            kept.append(i)
        if len(kept) < len(self.keys):
            idx = np.asarray(kept, dtype=np.int64)
            self.x = self.x[idx]
            self.keys, self.meta = [self.keys[i] for i in kept], [self.meta[i] for i in kept]

    def record(self):
        return ({"ids": self.keys, "meta": self.meta, "next_id": self.next_id,
                 "aliases": [list(a) for a in self.aliases]}, [self.x])

    @classmethod
    def from_record(cls, st, header, arrays):
        op = cls(np.ascontiguousarray(arrays[0], np.float32), list(header["ids"]),
                 list(header["meta"]), [tuple(a) for a in header.get("aliases", [])],
                 int(header["next_id"]))
        if "aliases" not in header and st.options.dedup:  # a log of format version 1
            op._dedup(st)
        return op

    def apply(self, st: StoreState) -> list:
        table, arrays = st.table, st.arrays
        for k, target in self.aliases:
            table.alias[k] = target
        table.next_id = max(table.next_id, self.next_id)
        n = len(self.keys)
        if n == 0:
            return self.all_ids
        existing = table.slots_of(self.keys)
        old, new = np.flatnonzero(existing >= 0), np.flatnonzero(existing < 0)
        params = np.zeros((n, PARAM_WIDTH), dtype=np.float32)
        params[:, PARAM_ALPHA] = 1.0
        params[:, PARAM_KAPPA] = st.options.kappa0
        params[:, PARAM_TICK] = st.tick
        if old.size:  # replace in place
            arrays.replace(existing[old], self.x[old], params[old])
        if new.size:
            take = new if new.size < n else slice(None)
            arrays.append(self.x[take], params[take])
        # host bookkeeping, after the device work succeeded
        first = table.append([self.keys[i] for i in new], [self.meta[i] for i in new])
        if old.size:
            table.replaced(existing[old], [self.meta[i] for i in old])
        for k in self.keys:
            table.alias.pop(k, None)  # re-adding a merged id gives it its own splat again
        st.rehash(np.concatenate([existing[old], first + np.arange(new.size)]),
                  np.concatenate([self.x[old], self.x[new]]))
        if st.index is not None:
            st.index.moved(existing[old], self.x[old])
            st.index.added(first + np.arange(new.size), self.x[new])
            st.sync_index()
        return self.all_ids


class Delete(Op):
    """Remove ids (missing ones are ignored): a merged id loses only its alias; a
    survivor's removal takes its aliases with it."""

    name = "delete"

    def __init__(self, ids: list) -> None:
        self.ids = ids

    @classmethod
    def build(cls, st, ids=None, filt=None) -> Delete:
        if filt is not None:
            return cls([st.table.ids[s] for s in np.flatnonzero(st.table.mask(filt))])
        return cls([check_id(k) for k in id_list(ids)])

    def record(self):
        return {"ids": self.ids}, []

    @classmethod
    def from_record(cls, st, header, arrays):
        return cls(list(header["ids"]))

    def apply(self, st: StoreState) -> int:
        table, slots = st.table, []
        for k in self.ids:
            if k in table.alias:
                del table.alias[k]
            elif k in table.slot:
                slots.append(table.slot[k])
        slots = np.unique(np.array(slots, dtype=np.int64))
        if slots.size:
            st.free(slots)
        return int(slots.size)


class SetMetadata(Op):
    name = "meta"

    def __init__(self, ids: list, meta: list) -> None:
        self.ids, self.meta = ids, meta

    @classmethod
    def build(cls, st, ids, metadata) -> SetMetadata:
        keys = [check_id(k) for k in id_list(ids)]
        meta = check_metadata(metadata, len(keys))
        for k in keys:
            if st.table.resolve(k) not in st.table.slot:
                raise UnknownIdError(f"unknown id {k!r}: the store holds no such splat")
        return cls(keys, meta)

    def record(self):
        return {"ids": self.ids, "meta": self.meta}, []

    @classmethod
    def from_record(cls, st, header, arrays):
        return cls(list(header["ids"]), list(header["meta"]))

    def apply(self, st: StoreState) -> int:
        table = st.table
        slots = np.array([table.slot[table.resolve(k)] for k in self.ids], dtype=np.int64)
        table.set_meta(slots, self.meta)
        return len(self.ids)


class Feedback(Op):
    name = "feedback"

    def __init__(self, q: np.ndarray, rel: list, irr: list, events=None) -> None:
        self.q, self.rel, self.irr, self.events = q, rel, irr, events

    @classmethod
    def build(cls, st, q: np.ndarray, rel: list, irr: list) -> Feedback:
        return cls(q, rel, irr, learning.feedback_events(st, rel, irr))

    @property
    def empty(self) -> bool:
        return self.events[1].size == 0

    def record(self):
        return ({"rel": [list(r) for r in self.rel], "irr": [list(r) for r in self.irr]},
                [host_array(self.q, np.float32)])

    @classmethod
    def from_record(cls, st, header, arrays):
        return cls.build(st, arrays[0], header["rel"], header["irr"])

    def apply(self, st: StoreState) -> int:
        if not self.empty:
            learning.apply_feedback(st, self.q, *self.events)
        return self.q.shape[0]


class Decay(Op):
    name = "decay"

    def __init__(self, now: float) -> None:
        self.now = float(now)

    @classmethod
    def build(cls, st: StoreState, now, force: bool) -> Decay:
        """Time only moves forward, and a step of more than ``MAX_DECAY_HALF_LIVES``
        half-lives is refused unless ``force``: it is what passing wall-clock time to a
        store created without ``clock=`` does."""
        if isinstance(now, bool) or not isinstance(now, numbers.Real) or \
                not math.isfinite(now) or \
                abs(float(now) - st.options.clock) > MAX_TIME:
            raise InvalidInputError(f"now must be a finite number within {MAX_TIME:g} of the "
                                    f"store's clock origin (ticks are float32), got {now!r}")
        if now < st.clock:
            raise InvalidInputError(f"now={now} is before the store's clock {st.clock}; "
                                    "time only moves forward")
        half_lives = (float(now) - st.clock) / st.options.half_life
        if half_lives > MAX_DECAY_HALF_LIVES and not force:
            hint = (" now looks like wall-clock time; create the store with "
                    "clock=time.time() (or pass time since it was created)"
                    if now > 1e8 and st.clock < 1e8 else "")
            raise InvalidInputError(
                f"decay(now={now}) advances the clock by {half_lives:.3g} half-lives: every "
                f"alpha would be multiplied by about 0.{hint} Pass force=True if that is "
                "meant")
        return cls(now)

    def record(self):
        return {"now": self.now}, []

    @classmethod
    def from_record(cls, st, header, arrays):
        return cls(header["now"])

    def apply(self, st: StoreState) -> None:
        learning.apply_decay(st, self.now)


class Prune(Op):
    """Remove the splats a consolidation found under ``alpha_prune`` (by id)."""

    name = "prune"

    def __init__(self, ids: list, reason: str) -> None:
        self.ids, self.reason = ids, reason

    def record(self):
        return {"ids": self.ids, "reason": self.reason}, []

    @classmethod
    def from_record(cls, st, header, arrays):
        return cls(list(header["ids"]), str(header.get("reason", "")))

    def apply(self, st: StoreState) -> list:
        slots = np.unique(np.array([st.table.slot[k] for k in self.ids], dtype=np.int64))
        if slots.size:
            st.free(slots)
        return self.ids


class Merge(Op):
    """One merge round, as decided: ``(absorbed id, survivor id)`` pairs and the
    candidates that stay dirty (see :func:`m2m_gpu.store.learning.apply_merge`)."""

    name = "merge"

    def __init__(self, merged: list, pending: list) -> None:
        self.merged, self.pending = merged, pending

    def record(self):
        return {"merged": [list(p) for p in self.merged], "pending": self.pending}, []

    @classmethod
    def from_record(cls, st, header, arrays):
        return cls([tuple(p) for p in header["merged"]], list(header["pending"]))

    def apply(self, st: StoreState) -> list:
        learning.apply_merge(st, self.merged, self.pending)
        return self.merged


class Compact(Op):
    name = "compact"

    def record(self):
        return {}, []

    @classmethod
    def from_record(cls, st, header, arrays):
        return cls()

    def apply(self, st: StoreState) -> None:
        st.compact()


OPS: dict[str, type[Op]] = {op.name: op for op in (Add, Delete, SetMetadata, Feedback, Decay,
                                                   Prune, Merge, Compact)}


def from_record(st: StoreState, rec) -> Op:
    cls = OPS.get(rec.op)
    if cls is None:
        raise StoreFormatError(f"unknown log record {rec.op!r}")
    try:
        return cls.from_record(st, rec.header, rec.arrays)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise StoreFormatError(f"malformed {rec.op!r} log record ({e})") from None
