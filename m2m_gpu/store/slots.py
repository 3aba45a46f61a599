"""``SlotTable``: the host side of a store's slots.

Splats occupy *slots*. Per slot the table holds the external id (None when the slot is
free), the metadata, and the flags ``live``, ``dirty`` (added or moved since the last merge
pass) and ``hits`` (times named relevant); across slots, the id -> slot map, the aliases
(merged or deduplicated id -> survivor id), the dedup digests, the next generated id and
the metadata columns filters read. It is the one owner of "every per-slot list and array
has the same length": every change of the slot count goes through :meth:`append` and
:meth:`keep`. Nothing here touches a device.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .. import filters as _filters
from ..errors import UnknownIdError
from .args import check_id


def digest(row: np.ndarray) -> bytes:
    """The dedup key of a float32 vector: its bits."""
    return hashlib.blake2b(np.ascontiguousarray(row, np.float32).tobytes(),
                           digest_size=16).digest()


class SlotTable:
    def __init__(self) -> None:
        self.ids: list[Any] = []
        self.meta: list[dict | None] = []
        self.live = np.zeros(0, dtype=bool)
        self.dirty = np.zeros(0, dtype=bool)
        self.hits = np.zeros(0, dtype=np.int64)
        self.slot: dict[Any, int] = {}
        self.alias: dict[Any, Any] = {}
        self.hashes: dict[bytes, set] = {}  # dedup: vector digest -> ids whose vector it is
        self.hash_of: dict[Any, bytes] = {}  # and back: id -> the digest of its vector
        self.next_id = 0
        self.columns = _filters.Columns()

    # ---- reading -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.slot)

    def live_ids(self) -> list:
        return [i for i, live in zip(self.ids, self.live.tolist(), strict=True) if live]

    def resolve(self, id_: Any) -> Any:
        key = check_id(id_)
        return self.alias.get(key, key)

    def slots_of(self, keys: list) -> np.ndarray:
        """The slot of each (already checked, unresolved) key, -1 where it has none."""
        return np.array([self.slot.get(k, -1) for k in keys], dtype=np.int64)

    def slots_for(self, ids: list) -> list[int]:
        """The slots of ``ids`` (resolved through aliases), each once, in order; an id the
        store does not hold raises :class:`UnknownIdError`."""
        out = []
        for k in ids:
            s = self.slot.get(self.resolve(k))
            if s is None:
                raise UnknownIdError(f"unknown id {k!r}: the store holds no such splat")
            out.append(s)
        return list(dict.fromkeys(out))

    def ids_of(self, slots) -> list:
        return [self.ids[s] for s in slots]

    def peek_new_ids(self, n: int) -> tuple[list[int], int]:
        """``n`` generated ids not in use (nor aliases), and the counter after them."""
        out, nxt = [], self.next_id
        while len(out) < n:
            if nxt not in self.slot and nxt not in self.alias:
                out.append(nxt)
            nxt += 1
        return out, nxt

    def mask(self, filt: dict | None) -> np.ndarray:
        """Live slots whose metadata match ``filt`` (every live slot for None)."""
        if filt is None:
            return self.live
        return self.live & _filters.evaluate(filt, self.meta, self.columns, self.ids)

    # ---- changing ------------------------------------------------------------------------
    def append(self, keys: list, meta: list[dict]) -> int:
        """New slots for ``keys``; returns the first."""
        first = self.n
        for j, (k, m) in enumerate(zip(keys, meta, strict=True)):
            self.ids.append(k)
            self.meta.append(m)
            self.slot[k] = first + j
        grow = lambda a, v: np.concatenate([a, np.full(len(keys), v, a.dtype)])  # noqa: E731
        self.live, self.dirty, self.hits = (grow(self.live, True), grow(self.dirty, True),
                                            grow(self.hits, 0))
        self.columns.on_set(first + np.arange(len(keys)), meta, self.n)
        return first

    def replaced(self, slots: np.ndarray, meta: list[dict]) -> None:
        """A new splat in each of ``slots`` (an upsert): new metadata, dirty, no hits."""
        for s, m in zip(slots.tolist(), meta, strict=True):
            self.meta[s] = m
        self.dirty[slots] = True
        self.hits[slots] = 0
        self.columns.on_set(slots, meta, self.n)

    def set_meta(self, slots: np.ndarray, meta: list[dict]) -> None:
        for s, m in zip(slots.tolist(), meta, strict=True):
            self.meta[s] = m
        self.columns.on_set(slots, meta, self.n)

    def remember(self, key: Any, h: bytes) -> None:
        """Dedup: ``key``'s vector now has digest ``h`` (its old digest is forgotten)."""
        self.forget(key)
        self.hashes.setdefault(h, set()).add(key)
        self.hash_of[key] = h

    def forget(self, key: Any) -> None:
        old = self.hash_of.pop(key, None)
        if old is not None:
            holders = self.hashes[old]
            holders.discard(key)
            if not holders:
                del self.hashes[old]

    def holder(self, h: bytes, same) -> Any:
        """Dedup: the stored id, of those whose vector has digest ``h`` and for which
        ``same(slot)`` (the bits really are equal), in the lowest slot; None if none. One
        rule, whatever order the map was built in (live, or rebuilt on open)."""
        slots = sorted(self.slot[k] for k in self.hashes.get(h, ()) if k in self.slot)
        for s in slots:
            if same(s):
                return self.ids[s]
        return None

    def free(self, slots: np.ndarray) -> None:
        """Free ``slots``: their ids, and every alias of those ids, are gone."""
        gone = {self.ids[s] for s in slots.tolist()}
        for k in gone:
            self.forget(k)
        for s in slots.tolist():
            del self.slot[self.ids[s]]
            self.ids[s] = None
            self.meta[s] = None
        for a in [a for a, t in self.alias.items() if t in gone]:
            del self.alias[a]
        self.live[slots] = False
        self.dirty[slots] = False

    def retarget(self, old: Any, new: Any) -> None:
        """Aliases of ``old`` now resolve to ``new`` (``old`` is merged into ``new``)."""
        for a in [a for a, t in self.alias.items() if t == old]:
            self.alias[a] = new

    def keep(self, keep: np.ndarray) -> None:
        """Keep only ``keep`` (sorted slots), renumbered from 0."""
        self.ids = [self.ids[s] for s in keep.tolist()]
        self.meta = [self.meta[s] for s in keep.tolist()]
        self.live, self.dirty, self.hits = self.live[keep], self.dirty[keep], self.hits[keep]
        self.slot = {k: i for i, k in enumerate(self.ids)}
        self.columns.on_keep(keep)

    # ---- snapshots -------------------------------------------------------------------------
    def records(self) -> list:
        return [None if k is None else [k, m] for k, m in zip(self.ids, self.meta, strict=True)]

    def flags(self) -> np.ndarray:
        return self.live.astype(np.uint8) | (self.dirty.astype(np.uint8) << 1)

    def state(self) -> dict:
        return {"next_id": self.next_id, "aliases": [[a, t] for a, t in self.alias.items()]}

    def restore(self, records: list, flags: np.ndarray, hits: np.ndarray, state: dict) -> None:
        flags = np.asarray(flags)
        self.live = (flags & 1).astype(bool)
        self.dirty = (flags & 2).astype(bool)
        self.hits = np.asarray(hits, np.int64).copy()
        self.ids = [None if r is None else r[0] for r in records]
        self.meta = [None if r is None else r[1] for r in records]
        self.slot = {k: i for i, k in enumerate(self.ids) if k is not None}
        self.alias = {a: t for a, t in state["aliases"]}
        self.next_id = int(state["next_id"])
        live = np.flatnonzero(self.live)
        self.columns.on_set(live, [self.meta[s] for s in live.tolist()], self.n)

    def check(self) -> list[str]:
        problems = []
        lens = {"ids": len(self.ids), "meta": len(self.meta), "live": self.live.size,
                "dirty": self.dirty.size, "hits": self.hits.size}
        if len(set(lens.values())) != 1:
            return [f"per-slot arrays of different lengths: {lens}"]
        for s, k in enumerate(self.ids):
            if (k is None) == bool(self.live[s]):
                problems.append(f"slot {s}: id {k!r} but live={bool(self.live[s])}")
                break
        if any(self.slot.get(k) != s for s, k in enumerate(self.ids) if k is not None) or \
                len(self.slot) != int(self.live.sum()):
            problems.append("id -> slot map disagrees with the slots")
        dangling = [a for a, t in self.alias.items() if t not in self.slot]
        if dangling:
            problems.append(f"aliases to missing ids: {dangling[:5]}")
        return problems
