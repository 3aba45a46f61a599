"""Memory tiers (SPEC section 4): where each splat's vector lives.

Three tiers, each with a byte budget:

* **hot**: a row store of the active backend (CuPy memory on cuda, Kompute tensors on
  vulkan, NumPy on cpu, where the "device" budget is simulated by the same code);
* **warm**: host RAM, pageable; blocks stream to the device through the backend's
  :meth:`~m2m_gpu.backends.base.Backend.stream` (on cuda: two fixed page-locked staging
  buffers of ``block_bytes`` each, so pinned memory stays bounded by about
  ``4 * block_bytes`` per active stream however large the warm tier grows);
* **cold**: a memory-mapped file: the ``vectors`` file of the store's last checkpoint for
  splats that have not changed since, and a spill file for everything demoted later.

Every slot's vector is in exactly one tier. Budgets count vector bytes (``4 * dim`` per
splat); the splat parameters (16 bytes per splat, and 4 bytes of ``||mu||^2`` on cpu) stay
on the device for every splat, because decay and feedback update them in place.

:class:`TierManager` is the interface that the store (rows = slots) and the HRM2 index
(rows = positions in cell order) use, and nothing else needs to know about:
:meth:`~TierManager.place` new rows, :meth:`~TierManager.promote` and
:meth:`~TierManager.demote` (batched; splats and bytes counted per direction),
:meth:`~TierManager.fetch` chosen rows as one device block,
:meth:`~TierManager.blocks` (every row, tier by tier, as device blocks; warm and cold blocks
are uploaded with the next block's copy overlapping the current block's compute on cuda,
by the backend),
:meth:`~TierManager.gather` / :meth:`~TierManager.scatter` rows by slot, and
:meth:`~TierManager.keep` for compaction. :meth:`~TierManager.rebalance` applies the
placement policy:

* ``"hotness"`` (default): ``alpha * (1 + h)``, with ``h = h * exp(-dt / tau) + accesses``;
* ``"lru"``: the most recently accessed first;
* ``"lfu"``: the most often accessed first.

An access is a splat returned by a search or named relevant in feedback; time ``dt`` counts
calls (searches and feedback events), not seconds. Within each tier rows are kept in
ascending slot order, so the hot tier of an unbounded manager is exactly the dense matrix
the kernels have always used (:meth:`~TierManager.dense`).

When the device runs out of memory while the hot tier grows, the hot budget is set to
what the hot tier holds, the rows go to the warm tier instead, and a warning is logged once.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import RowBuffer
from .errors import InvalidInputError
from .persist import SPILL_PREFIX
from .tensor import host_array

log = logging.getLogger("m2m_gpu")

HOT, WARM, COLD = 0, 1, 2
TIER_NAMES = ("hot", "warm", "cold")
POLICIES = ("hotness", "lru", "lfu")


@dataclass(frozen=True)
class TierOptions:
    """Budgets and policy. ``None`` budgets are unbounded: the default manager keeps every
    row hot (until the device runs out of memory); ``warm_bytes=None`` with a hot budget
    keeps everything else in host RAM, and ``warm_bytes=0`` sends it to the cold file."""

    hot_bytes: int | None = None
    warm_bytes: int | None = None
    policy: str = "hotness"
    tau: float = 256.0  # hotness decay time, in calls (searches + feedback)
    block_bytes: int = 64 << 20  # most vector bytes per streamed block
    rebalance_every: int = 32  # calls between placement passes
    cold_dir: str | None = None  # the spill file's directory (default: the store's, or tmp)

    @classmethod
    def parse(cls, obj: Any) -> TierOptions:
        if obj is None:
            return cls()
        if isinstance(obj, TierOptions):
            out = obj
        elif isinstance(obj, dict):
            known = {f.name for f in fields(cls)}
            unknown = set(obj) - known
            if unknown:
                raise InvalidInputError(f"unknown tier options {sorted(unknown)}; known: "
                                        f"{sorted(known)}")
            out = cls(**obj)
        else:
            raise InvalidInputError(f"tiers must be a dict or TierOptions, got "
                                    f"{type(obj).__name__}")
        out.check()
        return out

    def check(self) -> None:
        for name in ("hot_bytes", "warm_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 0):
                raise InvalidInputError(f"tier option {name} must be None or an int >= 0, "
                                        f"got {v!r}")
        if self.policy not in POLICIES:
            raise InvalidInputError(f"tier policy must be one of {POLICIES}, got "
                                    f"{self.policy!r}")
        if not isinstance(self.tau, (int, float)) or not self.tau > 0 or \
                not math.isfinite(self.tau):
            raise InvalidInputError(f"tier option tau must be a positive number, got "
                                    f"{self.tau!r}")
        for name in ("block_bytes", "rebalance_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidInputError(f"tier option {name} must be an int >= 1, got {v!r}")

    @property
    def bounded(self) -> bool:
        return self.hot_bytes is not None or self.warm_bytes is not None


@dataclass
class Block:
    """Rows of one tier on the device: ``slots`` (ascending) and ``rows`` (native)."""

    tier: int
    slots: np.ndarray
    rows: Any


class AccessStats:
    """Per-slot accesses for the placement policies (lazily decayed hotness)."""

    def __init__(self, tau: float) -> None:
        self.tau = float(tau)
        self.tick = 0
        self.h = np.zeros(0)
        self.last = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)

    def grow(self, n: int) -> None:
        self.h = np.concatenate([self.h, np.zeros(n)])
        self.last = np.concatenate([self.last, np.full(n, self.tick, np.int64)])
        self.count = np.concatenate([self.count, np.zeros(n, np.int64)])

    def reset(self, slots: np.ndarray) -> None:  # a new splat in an old slot (upsert)
        self.h[slots], self.last[slots], self.count[slots] = 0.0, self.tick, 0

    def keep(self, keep: np.ndarray) -> None:
        self.h, self.last, self.count = self.h[keep], self.last[keep], self.count[keep]

    def take(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A copy of the history of ``slots`` (to carry it across a re-layout)."""
        return self.h[slots], self.last[slots], self.count[slots]

    def assign(self, slots: np.ndarray, history) -> None:
        self.h[slots], self.last[slots], self.count[slots] = history

    def touch(self, slots: np.ndarray, unique: bool = False) -> None:
        """One access to each of ``slots`` (repeats count once per call; ``unique``: the
        caller knows there are none) at the current tick."""
        s = np.asarray(slots, np.int64)
        if not unique:
            s = np.unique(s)
            s = s[(s >= 0) & (s < self.h.size)]
        self.h[s] = self.hotness(s) + 1.0
        self.last[s] = self.tick
        self.count[s] += 1

    def hotness(self, slots=slice(None)) -> np.ndarray:
        return self.h[slots] * np.exp(-(self.tick - self.last[slots]) / self.tau)

    def scores(self, policy: str, alpha: np.ndarray) -> np.ndarray:
        """Higher is hotter."""
        if policy == "hotness":
            return alpha.astype(np.float64) * (1.0 + self.hotness())
        if policy == "lru":
            return self.last.astype(np.float64)
        return self.count.astype(np.float64)


class _ColdRows:
    """The cold tier: a read-only ``base`` file (a checkpoint's vectors, row = slot at that
    checkpoint) and an append-only spill file. Position ``p < base_rows`` is base row ``p``,
    otherwise spill row ``p - base_rows``."""

    def __init__(self, dim: int, directory: str | None) -> None:
        self.dim = dim
        self.directory = directory
        self.base: np.ndarray | None = None
        self.base_rows = 0
        self._spill: np.memmap | None = None
        self._spill_path: Path | None = None
        self.spill_rows = 0  # rows written to the spill file (live or not)

    def set_base(self, base: np.ndarray | None) -> None:
        self.base = base
        self.base_rows = 0 if base is None else int(base.shape[0])

    def reset_spill(self) -> None:
        self._spill = None
        self.spill_rows = 0
        if self._spill_path is not None:
            self._spill_path.unlink(missing_ok=True)
            self._spill_path = None

    def _grow(self, need: int) -> None:
        cap = 0 if self._spill is None else self._spill.shape[0]
        if need <= cap:
            return
        if self._spill_path is None:
            fd, name = tempfile.mkstemp(prefix=SPILL_PREFIX, suffix=".f32",
                                        dir=self.directory)
            os.close(fd)
            self._spill_path = Path(name)
            self._finalizer = weakref.finalize(self, self._spill_path.unlink, missing_ok=True)
        new_cap = max(need, 2 * cap, 1024)
        if self._spill is not None:
            self._spill.flush()
        self._spill = None
        with open(self._spill_path, "r+b") as f:
            f.truncate(new_cap * self.dim * 4)
        self._spill = np.memmap(self._spill_path, dtype="<f4", mode="r+",
                                shape=(new_cap, self.dim))

    def append(self, rows: np.ndarray) -> np.ndarray:
        r = rows.shape[0]
        self._grow(self.spill_rows + r)
        self._spill[self.spill_rows : self.spill_rows + r] = rows
        out = self.base_rows + self.spill_rows + np.arange(r, dtype=np.int64)
        self.spill_rows += r
        return out

    def read(self, pos: np.ndarray) -> np.ndarray:
        out = np.empty((pos.size, self.dim), dtype=np.float32)
        in_base = pos < self.base_rows
        if in_base.any():
            out[in_base] = self.base[pos[in_base]]
        if not in_base.all():
            out[~in_base] = self._spill[pos[~in_base] - self.base_rows]
        return out

    def close(self) -> None:
        self.reset_spill()
        self.base = None


class TierManager:
    """Places the rows (vectors) of slots ``0 .. n-1`` in the hot, warm and cold tiers."""

    def __init__(self, dim: int, backend, options: TierOptions | None = None,
                 cold_dir: str | os.PathLike | None = None) -> None:
        self.dim = int(dim)
        self.backend = backend
        self.options = options or TierOptions()
        self.row_bytes = 4 * self.dim
        rows = lambda b: None if b is None else int(b) // self.row_bytes  # noqa: E731
        self.hot_limit = rows(self.options.hot_bytes)
        self.warm_limit = rows(self.options.warm_bytes)
        self.block_rows = max(1, self.options.block_bytes // self.row_bytes)
        self.tier = np.zeros(0, dtype=np.uint8)
        self.pos = np.zeros(0, dtype=np.int64)
        self._hot = backend.row_store(self.dim)
        self._hot_slots = np.zeros(0, dtype=np.int64)
        # pageable host memory: blocks are staged through the backend's fixed-size
        # page-locked buffers when they stream (Backend.stream), so the warm tier's size
        # never multiplies in pinned memory
        self._warm = RowBuffer(np, self.dim)
        self._warm_slots = np.zeros(0, dtype=np.int64)
        directory = self.options.cold_dir or (str(cold_dir) if cold_dir else None)
        self._cold = _ColdRows(self.dim, directory)
        self.access = AccessStats(self.options.tau)
        self.moves = {f"{a}->{b}": {"splats": 0, "bytes": 0}
                      for a in TIER_NAMES for b in TIER_NAMES if a != b}
        self.streamed = {"blocks": 0, "bytes": 0}
        self.shrinks = 0
        self._since_rebalance = 0
        self.spill_compact_min = 1 << 16  # spill rows before compaction is considered
        self.spill_compactions = 0
        self.version = 0  # bumped whenever the hot tier's rows change (callers cache by it)

    # ---- sizes --------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.tier.size)

    def counts(self) -> list[int]:
        return [int(self._hot_slots.size), int(self._warm_slots.size),
                int(self.n - self._hot_slots.size - self._warm_slots.size)]

    @property
    def bounded(self) -> bool:
        return self.hot_limit is not None or self.warm_limit is not None

    def dense(self):
        """The native (n, dim) matrix in slot order when every row is hot, else None."""
        return self._hot.view() if self._hot_slots.size == self.n else None

    @property
    def hot_slots(self) -> np.ndarray:
        """The hot tier's slots, ascending: row ``i`` of :attr:`hot_store` is slot
        ``hot_slots[i]``."""
        return self._hot_slots

    @property
    def hot_store(self):
        """The hot tier's row store (vulkan: the store's params share its chunking)."""
        return self._hot

    # ---- place / move -------------------------------------------------------------------
    def place(self, rows) -> np.ndarray:
        """Append rows (host or native float32[r, dim]) as new slots; they fill the hot tier
        up to its budget, then warm, then cold. Returns the new slots."""
        r = int(rows.shape[0])
        first = self.n
        slots = first + np.arange(r, dtype=np.int64)
        self.tier = np.concatenate([self.tier, np.full(r, COLD, np.uint8)])
        self.pos = np.concatenate([self.pos, np.zeros(r, np.int64)])
        self.access.grow(r)
        try:
            self._fill(slots, rows)
        except BaseException:
            self._truncate(first)
            raise
        return slots

    def _truncate(self, n: int) -> None:
        """Undo a failed place(): drop slots >= n from every tier."""
        keep = np.arange(n, dtype=np.int64)
        self.version += 1
        hot_keep = np.flatnonzero(self._hot_slots < n)
        if hot_keep.size != self._hot_slots.size:
            self._keep_rows(HOT, hot_keep)
            self._hot_slots = self._hot_slots[hot_keep]
        warm_keep = np.flatnonzero(self._warm_slots < n)
        self._keep_rows(WARM, warm_keep)
        self._warm_slots = self._warm_slots[warm_keep]
        self.tier, self.pos = self.tier[keep], self.pos[keep]
        self.access.keep(keep)

    def _room(self, tier: int) -> float:
        limit = self.hot_limit if tier == HOT else self.warm_limit
        have = self._hot_slots.size if tier == HOT else self._warm_slots.size
        return math.inf if limit is None else max(0, limit - have)

    def _fill(self, slots: np.ndarray, rows) -> None:
        """Put rows of new or moving slots into tiers by remaining room, hot first."""
        done = 0
        for tier in (HOT, WARM):
            take = int(min(self._room(tier), slots.size - done))
            if take > 0:
                done += self._insert(tier, slots[done : done + take], rows[done : done + take])
        if done < slots.size:
            self._insert(COLD, slots[done:], rows[done:])

    def _insert(self, tier: int, slots: np.ndarray, rows) -> int:
        """Insert rows into one tier, keeping slot order; returns how many went in (hot can
        take fewer when the device runs out of memory)."""
        if tier == HOT:
            taken = 0
            for s in range(0, slots.size, self.block_rows):  # bounded staging on the device
                part = rows[s : s + self.block_rows]
                try:
                    self._hot.append(part)
                except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                    if not self._is_oom(exc):
                        raise
                    self._out_of_memory(exc)
                    break
                taken += part.shape[0]
            if taken:
                self._hot_slots = np.concatenate([self._hot_slots, slots[:taken]])
                self._sort_tier(HOT)
                self.tier[slots[:taken]] = HOT
            if taken < slots.size:  # the rest goes to host memory
                self._fill(slots[taken:], rows[taken:])
            return slots.size
        host = host_array(rows, np.float32)
        if tier == WARM:
            self._warm.append(host)
            self._warm_slots = np.concatenate([self._warm_slots, slots])
            self._sort_tier(WARM)
        else:
            self.pos[slots] = self._cold.append(host)
        self.tier[slots] = tier
        if tier == COLD:
            self._compact_cold()
        return slots.size

    def _compact_cold(self) -> None:
        """The spill file is append-only: rows that left the cold tier, or were written
        again, leave dead rows behind. Once it holds more than twice the rows still in use
        (and at least ``spill_compact_min``), the live ones are copied to a fresh file."""
        c = self._cold
        if c.spill_rows < self.spill_compact_min:
            return
        spilled = np.flatnonzero((self.tier == COLD) & (self.pos >= c.base_rows))
        if c.spill_rows < 2 * spilled.size:
            return
        fresh = _ColdRows(self.dim, c.directory)
        fresh.set_base(c.base)
        for s in range(0, spilled.size, self.block_rows):
            part = spilled[s : s + self.block_rows]
            self.pos[part] = fresh.append(c.read(self.pos[part]))
        c.reset_spill()
        self._cold = fresh
        self.spill_compactions += 1

    def _sort_tier(self, tier: int) -> None:
        if tier == HOT:
            self.version += 1
            s = self._hot_slots
            if s.size > 1 and (np.diff(s) < 0).any():
                order = np.argsort(s, kind="stable")
                self._hot.keep(self.backend.index_array(order))
                self._hot_slots = s[order]
            self.pos[self._hot_slots] = np.arange(self._hot_slots.size)
        else:
            s = self._warm_slots
            if s.size > 1 and (np.diff(s) < 0).any():
                order = np.argsort(s, kind="stable")
                self._warm.keep(order)
                self._warm_slots = s[order]
            self.pos[self._warm_slots] = np.arange(self._warm_slots.size)

    def _keep_rows(self, tier: int, index: np.ndarray) -> None:
        """Keep rows ``index`` (ascending) of the hot or warm store; a prefix is cut
        without moving rows."""
        rows = self._hot if tier == HOT else self._warm
        if index.size == 0 or index[-1] == index.size - 1:
            rows.truncate(index.size)
        else:
            rows.keep(self.backend.index_array(index) if tier == HOT else index)

    def _is_oom(self, exc: BaseException) -> bool:
        return self.backend.is_out_of_memory(exc)

    def _out_of_memory(self, exc: BaseException) -> None:
        """Cap the hot tier at what it holds now (the caller sends the rest to warm)."""
        self.shrinks += 1
        self.hot_limit = int(self._hot_slots.size)
        if self.shrinks == 1:
            msg = (f"m2m_gpu: the {self.backend.name} device ran out of memory with "
                   f"{self.hot_limit} splats ({self.hot_limit * self.row_bytes / 2**20:.1f} "
                   f"MiB) in the hot tier; the hot tier is capped there and further splats "
                   f"are kept in host memory and streamed ({type(exc).__name__}: {exc})")
            warnings.warn(msg, ResourceWarning, stacklevel=4)
            log.warning(msg)

    def shrink_hot(self, exc: BaseException, fraction: float = 0.5) -> None:
        """Device memory ran out elsewhere (a kernel's workspace): cap the hot tier at
        ``fraction`` of what it holds; the caller's :meth:`rebalance` then demotes the rows
        the policy values least, and the call is retried."""
        target = int(self._hot_slots.size * fraction)
        self._out_of_memory(exc)
        self.hot_limit = target

    def retry_out_of_memory(self, fn, rebalance):
        """``fn()``; when the device runs out of memory inside it (a kernel's workspace),
        the hot tier is halved (:meth:`shrink_hot`), ``rebalance()`` demotes the rows the
        policy values least, and ``fn`` runs again (three tries in all)."""
        for attempt in range(3):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if attempt == 2 or not self._is_oom(exc) or self._hot_slots.size == 0:
                    raise
                self.shrink_hot(exc)
                rebalance()

    def promote(self, slots, to: int = HOT) -> None:
        """Move ``slots`` up to tier ``to`` (one batch)."""
        self._move(np.asarray(slots, np.int64), to)

    def demote(self, slots, to: int | None = None) -> None:
        """Move ``slots`` down to tier ``to`` (default: warm, or cold past the warm budget)."""
        slots = np.asarray(slots, np.int64)
        if to is None:
            room = self._room(WARM)
            self._move(slots[: int(min(room, slots.size))], WARM)
            self._move(slots[int(min(room, slots.size)):], COLD)
        else:
            self._move(slots, to)

    def _move(self, slots: np.ndarray, dest: int) -> None:
        slots = np.unique(slots)
        slots = slots[self.tier[slots] != dest]
        if slots.size == 0:
            return
        src = self.tier[slots].copy()
        rows = self.gather(slots)
        self._remove(slots)
        self._insert(dest, slots, rows)  # hot may hand rows on to warm (out of memory)
        self._count_moves(src, self.tier[slots])

    def _count_moves(self, src: np.ndarray, dst: np.ndarray) -> None:
        for a in (HOT, WARM, COLD):
            for b in (HOT, WARM, COLD):
                moved = int(((src == a) & (dst == b)).sum()) if a != b else 0
                if moved:
                    key = f"{TIER_NAMES[a]}->{TIER_NAMES[b]}"
                    self.moves[key]["splats"] += moved
                    self.moves[key]["bytes"] += moved * self.row_bytes

    def _remove(self, slots: np.ndarray) -> None:
        gone = np.zeros(self.n, dtype=bool)
        gone[slots] = True
        hk = np.flatnonzero(~gone[self._hot_slots])
        if hk.size != self._hot_slots.size:
            self._keep_rows(HOT, hk)
            self._hot_slots = self._hot_slots[hk]
            self.pos[self._hot_slots] = np.arange(hk.size)
            self.version += 1
        wk = np.flatnonzero(~gone[self._warm_slots])
        if wk.size != self._warm_slots.size:
            self._keep_rows(WARM, wk)
            self._warm_slots = self._warm_slots[wk]
            self.pos[self._warm_slots] = np.arange(wk.size)

    # ---- rows by slot -------------------------------------------------------------------
    def gather(self, slots) -> np.ndarray:
        """Host float32 rows of ``slots``, in that order."""
        slots = np.asarray(slots, np.int64)
        out = np.empty((slots.size, self.dim), dtype=np.float32)
        t = self.tier[slots]
        p = self.pos[slots]
        for tier in (HOT, WARM, COLD):
            sel = np.flatnonzero(t == tier)
            if sel.size == 0:
                continue
            if tier == HOT:
                out[sel] = self.backend.gather_rows(self._hot.view(), p[sel])
            elif tier == WARM:
                out[sel] = self._warm.view()[p[sel]]
            else:
                out[sel] = self._cold.read(p[sel])
        return out

    def scatter(self, slots, rows) -> None:
        """In place: rows of ``slots`` = ``rows`` (host). A cold row that is written moves to
        the warm tier (the cold files are not rewritten in place)."""
        slots = np.asarray(slots, np.int64)
        rows = host_array(rows, np.float32)
        t = self.tier[slots]
        p = self.pos[slots]
        hot = np.flatnonzero(t == HOT)
        if hot.size:
            self.backend.scatter_rows(self._hot.view(), p[hot], rows[hot])
        warm = np.flatnonzero(t == WARM)
        if warm.size:
            self._warm.view()[p[warm]] = rows[warm]
        cold = np.flatnonzero(t == COLD)
        if cold.size:
            self._insert(WARM, slots[cold], rows[cold])
            self._count_moves(np.full(cold.size, COLD), np.full(cold.size, WARM))

    def reset(self, slots) -> None:
        """New splats in existing slots (upserts): their access history starts again."""
        self.access.reset(np.asarray(slots, np.int64))

    def keep(self, keep: np.ndarray) -> None:
        """Compaction: keep slots ``keep`` (ascending), renumbered 0 .. len(keep) - 1."""
        keep = np.asarray(keep, np.int64)
        self.version += 1
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[keep] = np.arange(keep.size)
        hk = np.flatnonzero(remap[self._hot_slots] >= 0)
        if hk.size != self._hot_slots.size:
            self._keep_rows(HOT, hk)
        self._hot_slots = remap[self._hot_slots[hk]]
        wk = np.flatnonzero(remap[self._warm_slots] >= 0)
        if wk.size != self._warm_slots.size:
            self._keep_rows(WARM, wk)
        self._warm_slots = remap[self._warm_slots[wk]]
        self.tier, self.pos = self.tier[keep], self.pos[keep]
        self.pos[self._hot_slots] = np.arange(self._hot_slots.size)
        self.pos[self._warm_slots] = np.arange(self._warm_slots.size)
        self.access.keep(keep)

    # ---- cold base (store files) --------------------------------------------------------
    def adopt(self, base: np.ndarray) -> None:
        """Take ``base`` (float32[n, dim], typically a read-only memory map of a checkpoint's
        vectors file) as the rows of slots 0 .. n-1 of an empty manager, all cold; nothing is
        read until :meth:`rebalance` (or a search) needs it."""
        if self.n:
            raise RuntimeError("adopt() needs an empty tier manager")
        n = int(base.shape[0])
        self._cold.reset_spill()
        self._cold.set_base(base)
        self.tier = np.full(n, COLD, dtype=np.uint8)
        self.pos = np.arange(n, dtype=np.int64)
        self.access.grow(n)

    def rebase(self, base: np.ndarray) -> None:
        """After a checkpoint wrote every row (slot order) to ``base``: cold rows are read
        from it from now on, and the spill file is dropped."""
        cold = self.tier == COLD
        if cold.any():
            self.pos[cold] = np.flatnonzero(cold)
        self._cold.reset_spill()
        self._cold.set_base(base if cold.any() else None)

    def close(self) -> None:
        self._cold.close()

    def set_cold_dir(self, directory) -> None:
        """Where a spill file is created (unless the options name one)."""
        if self.options.cold_dir is None:
            self._cold.directory = str(directory)

    # ---- placement policy ---------------------------------------------------------------
    def touch(self, slots, unique: bool = False) -> None:
        """Count one access to each of ``slots`` and advance the clock by one call
        (``unique``: the slots are distinct and in range, as HRM2's cell ranges are)."""
        if self.bounded:
            self.access.touch(slots, unique)
        self.access.tick += 1
        self._since_rebalance += 1

    def over_budget(self) -> bool:
        return (self.hot_limit is not None and self._hot_slots.size > self.hot_limit) or \
            (self.warm_limit is not None and self._warm_slots.size > self.warm_limit)

    def due(self) -> bool:
        """Whether a placement pass is due (over a budget, or ``rebalance_every`` calls)."""
        return self.bounded and (self.over_budget() or
                                 self._since_rebalance >= self.options.rebalance_every)

    def rebalance(self, alpha: np.ndarray, live: np.ndarray) -> dict:
        """Place every slot by the policy: the best-scored live slots fill the hot budget,
        the next ones the warm budget, the rest go cold; free slots rank last. Returns the
        splats moved per direction by this pass."""
        self._since_rebalance = 0
        before = {k: v["splats"] for k, v in self.moves.items()}
        if self.n == 0:
            return {}
        score = self.access.scores(self.options.policy, np.asarray(alpha))
        score = np.where(live, score, -np.inf)
        order = np.lexsort((np.arange(self.n), -score))  # best first, ties by slot
        want = np.full(self.n, COLD, dtype=np.uint8)
        h = self.n if self.hot_limit is None else min(self.n, self.hot_limit)
        w = self.n - h if self.warm_limit is None else min(self.n - h, self.warm_limit)
        want[order[:h]] = HOT
        want[order[h : h + w]] = WARM
        for dest in (COLD, WARM, HOT):  # in this order, every move finds room
            moving = np.flatnonzero((want == dest) & (self.tier != dest))
            for s in range(0, moving.size, self.block_rows):
                self._move(moving[s : s + self.block_rows], dest)
        return {k: v["splats"] - before[k] for k, v in self.moves.items()
                if v["splats"] != before[k]}

    # ---- streaming ----------------------------------------------------------------------
    def blocks(self) -> Iterator[Block]:
        """Every row once, as device blocks: the hot tier in one block, then warm and cold
        rows in blocks of at most ``block_bytes``, each block's slots ascending."""
        if self._hot_slots.size:
            yield Block(HOT, self._hot_slots, self._hot.view())
        specs = []
        for s in range(0, self._warm_slots.size, self.block_rows):
            specs.append((WARM, self._warm_slots[s : s + self.block_rows], s))
        cold = np.flatnonzero(self.tier == COLD)
        for s in range(0, cold.size, self.block_rows):
            specs.append((COLD, cold[s : s + self.block_rows], None))
        if not specs:
            return
        sources = [partial(self._host_block, tier, slots, start)
                   for tier, slots, start in specs]
        for (tier, slots, _), rows in zip(specs, self.backend.stream(sources), strict=True):
            self.streamed["blocks"] += 1
            self.streamed["bytes"] += slots.size * self.row_bytes
            yield Block(tier, slots, rows)

    def _host_block(self, tier: int, slots: np.ndarray, start) -> np.ndarray:
        if tier == WARM:
            return self._warm.view()[start : start + slots.size]
        return self._cold.read(self.pos[slots])

    def fetch(self, slots, like=None):
        """The rows of ``slots`` (any tiers, in that order) as one device block: what HRM2
        uses for the probed cells that are not hot. Counted as streamed. ``like``: as in
        ``Backend.from_host``."""
        host = self.gather(slots)
        self.streamed["blocks"] += 1
        self.streamed["bytes"] += host.nbytes
        return self.upload(host, like)

    def upload(self, host: np.ndarray, like=None):
        """A host block on the device (cpu: the block itself, no copy)."""
        return self.backend.from_host(np.ascontiguousarray(host), like=like)

    # ---- introspection ------------------------------------------------------------------
    def nbytes(self, tier: int) -> int:
        return self.counts()[tier] * self.row_bytes

    def check(self) -> list[str]:
        """Disagreements between the slot -> tier map and the tiers (for integrity checks)."""
        problems = []
        for tier, slots in ((HOT, self._hot_slots), (WARM, self._warm_slots)):
            if slots.size > 1 and (np.diff(slots) <= 0).any():
                problems.append(f"{TIER_NAMES[tier]} tier rows out of slot order")
            if (self.tier[slots] != tier).any() or \
                    (self.pos[slots] != np.arange(slots.size)).any():
                problems.append(f"{TIER_NAMES[tier]} tier disagrees with the slot map")
        if sum(self.counts()) != self.n or (self.counts()[COLD] !=
                                            int((self.tier == COLD).sum())):
            problems.append("tier counts do not add up to the slots")
        if self._hot.view().shape[0] != self._hot_slots.size:
            problems.append("hot tier row count disagrees with its slots")
        return problems

    def stats(self) -> dict:
        c = self.counts()
        budget = {HOT: self.hot_limit, WARM: self.warm_limit, COLD: None}
        out = {name: {"splats": c[t], "bytes": c[t] * self.row_bytes,
                      "budget_bytes": None if budget[t] is None else budget[t] * self.row_bytes}
               for t, name in enumerate(TIER_NAMES)}
        out.update({"policy": self.options.policy, "moves": {k: dict(v) for k, v in
                                                             self.moves.items()},
                    "streamed": dict(self.streamed), "device_memory_shrinks": self.shrinks,
                    "cold_file_rows": self._cold.base_rows + self._cold.spill_rows,
                    "spill_compactions": self.spill_compactions})
        return out
