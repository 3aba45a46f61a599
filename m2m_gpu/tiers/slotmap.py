"""The slot map: which tier each slot's row is in, and where in that tier (pure NumPy)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .options import COLD, HOT, TIER_NAMES, WARM


class ListedRows(Protocol):
    """What the slot map needs of the hot and warm row stores."""

    @property
    def count(self) -> int: ...

    def keep(self, index: np.ndarray) -> None:
        """Keep rows ``index`` (ascending)."""

    def reorder(self, order: np.ndarray) -> None:
        """Rows in the order ``order`` (a permutation)."""


class SlotMap:
    """Slot -> (tier, position) for slots ``0 .. n-1``, and the slot lists of the hot and
    warm tiers. It owns these invariants (:meth:`check` reports any break):

    * every slot is in exactly one tier, ``tier[s]``;
    * the hot and warm tiers keep their rows in ascending slot order: row ``i`` of tier
      ``t``'s store is slot ``slots(t)[i]``, and ``pos`` of that slot is ``i``;
    * a cold slot's ``pos`` is its row in the cold files (the caller, which owns those
      files, says which: :meth:`place_cold`).

    ``rows``: the hot and warm row stores (indexed by ``HOT`` and ``WARM``); every change to
    a tier's slot list is applied to its store here, first. ``None``: a map without rows
    (tests). ``version`` counts changes to the hot tier's layout (callers cache device
    copies of per-row data by it)."""

    def __init__(self, rows: tuple[ListedRows, ListedRows] | None = None) -> None:
        self.tier = np.zeros(0, dtype=np.uint8)
        self.pos = np.zeros(0, dtype=np.int64)
        self._slots = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]
        self._rows = rows
        self.version = 0

    # ---- reading ------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.tier.size)

    def slots(self, tier: int) -> np.ndarray:
        """The hot or warm tier's slots, ascending (row ``i`` of its store is slot ``i``)."""
        return self._slots[tier]

    def count(self, tier: int) -> int:
        if tier == COLD:
            return self.n - int(self._slots[HOT].size) - int(self._slots[WARM].size)
        return int(self._slots[tier].size)

    def counts(self) -> list[int]:
        h, w = int(self._slots[HOT].size), int(self._slots[WARM].size)
        return [h, w, self.n - h - w]

    def cold(self) -> np.ndarray:
        return np.flatnonzero(self.tier == COLD)

    def spilled(self, base_rows: int) -> np.ndarray:
        """Cold slots whose rows are past the first ``base_rows`` cold file rows."""
        return np.flatnonzero((self.tier == COLD) & (self.pos >= base_rows))

    def by_tier(self, slots: np.ndarray):
        """``(tier, sel, pos)`` for each tier that holds some of ``slots``: ``slots[sel]``
        are in ``tier``, at rows ``pos`` of its store."""
        t, p = self.tier[slots], self.pos[slots]
        for tier in (HOT, WARM, COLD):
            sel = np.flatnonzero(t == tier)
            if sel.size:
                yield tier, sel, p[sel]

    def block_plan(self, block_rows: int) -> list[tuple[int, np.ndarray, int | None]]:
        """The warm and cold slots in blocks of at most ``block_rows``, each ascending:
        ``(tier, slots, first warm row or None)``."""
        warm, cold = self._slots[WARM], self.cold()
        return [(WARM, warm[s : s + block_rows], s) for s in range(0, warm.size, block_rows)] \
            + [(COLD, cold[s : s + block_rows], None) for s in range(0, cold.size, block_rows)]

    # ---- slots come and go --------------------------------------------------------------
    def grow(self, r: int) -> np.ndarray:
        """``r`` new slots at the end, returned; cold at position 0 until placed."""
        first = self.n
        self.tier = np.concatenate([self.tier, np.full(r, COLD, np.uint8)])
        self.pos = np.concatenate([self.pos, np.zeros(r, np.int64)])
        return first + np.arange(r, dtype=np.int64)

    def adopt(self, n: int) -> None:
        """An empty map takes ``n`` slots, all cold, slot ``s`` at cold row ``s``."""
        if self.n:
            raise RuntimeError("adopt() needs an empty tier manager")
        self.tier = np.full(n, COLD, dtype=np.uint8)
        self.pos = np.arange(n, dtype=np.int64)

    def truncate(self, n: int) -> None:
        """Drop slots ``>= n`` (undo a failed :meth:`grow` and placement)."""
        self.version += 1
        for t in (HOT, WARM):  # slots < n are a prefix: positions stay
            self._cut(t, np.flatnonzero(self._slots[t] < n))
        self.tier, self.pos = self.tier[:n], self.pos[:n]

    def keep(self, keep: np.ndarray) -> None:
        """Compaction: keep slots ``keep`` (ascending), renumbered 0 .. len(keep) - 1."""
        keep = np.asarray(keep, np.int64)
        self.version += 1
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[keep] = np.arange(keep.size)
        for t in (HOT, WARM):
            self._cut(t, np.flatnonzero(remap[self._slots[t]] >= 0))
            self._slots[t] = remap[self._slots[t]]
        self.tier, self.pos = self.tier[keep], self.pos[keep]
        for t in (HOT, WARM):
            self.pos[self._slots[t]] = np.arange(self._slots[t].size)

    # ---- rows move ----------------------------------------------------------------------
    def added(self, tier: int, slots: np.ndarray) -> None:
        """The rows of ``slots`` were appended, in that order, to the hot or warm store:
        they are that tier's now, and the store is put back in slot order."""
        s = np.concatenate([self._slots[tier], slots])
        if s.size > 1 and (np.diff(s) < 0).any():
            order = np.argsort(s, kind="stable")
            if self._rows is not None:
                self._rows[tier].reorder(order)
            s = s[order]
        self._slots[tier] = s
        self.tier[slots] = tier
        self.pos[s] = np.arange(s.size)
        if tier == HOT:
            self.version += 1

    def place_cold(self, slots: np.ndarray, pos: np.ndarray) -> None:
        """``slots`` are cold, at cold file rows ``pos``."""
        self.tier[slots] = COLD
        self.pos[slots] = pos

    def remove(self, slots: np.ndarray) -> None:
        """Take ``slots`` (and their rows) out of the hot and warm tiers; their entries are
        left for the caller's next :meth:`added` or :meth:`place_cold`."""
        gone = np.zeros(self.n, dtype=bool)
        gone[slots] = True
        for t in (HOT, WARM):
            if self._cut(t, np.flatnonzero(~gone[self._slots[t]])):
                self.pos[self._slots[t]] = np.arange(self._slots[t].size)

    def _cut(self, tier: int, index: np.ndarray) -> bool:
        """Keep rows and slots ``index`` (ascending) of the hot or warm tier; whether any
        went."""
        s = self._slots[tier]
        if index.size == s.size:
            return False
        if self._rows is not None:
            self._rows[tier].keep(index)
        self._slots[tier] = s[index]
        if tier == HOT:
            self.version += 1
        return True

    # ---- integrity ----------------------------------------------------------------------
    def check(self) -> list[str]:
        """Disagreements between the slot -> tier map, the slot lists and the row stores."""
        problems = []
        for t in (HOT, WARM):
            s = self._slots[t]
            if s.size > 1 and (np.diff(s) <= 0).any():
                problems.append(f"{TIER_NAMES[t]} tier rows out of slot order")
            if (self.tier[s] != t).any() or (self.pos[s] != np.arange(s.size)).any():
                problems.append(f"{TIER_NAMES[t]} tier disagrees with the slot map")
            if self._rows is not None and self._rows[t].count != s.size:
                problems.append(f"{TIER_NAMES[t]} tier row count disagrees with its slots")
        if self.count(COLD) != int((self.tier == COLD).sum()):
            problems.append("tier counts do not add up to the slots")
        return problems
