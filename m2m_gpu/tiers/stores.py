"""The row stores of the three tiers. Rows are addressed by position within a store (the
slot map says which slot each position holds); each store reads rows at positions with
``read(pos)`` (host float32)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path

import numpy as np

from ..backends.base import RowBuffer
from ..persist import SPILL_PREFIX

log = logging.getLogger("m2m_gpu")


class HotRows:
    """The hot tier: a row store of the backend (device memory), and its budget in rows
    (``limit``; None: unbounded), which the device running out of memory caps."""

    def __init__(self, backend, dim: int, limit: int | None, block_rows: int) -> None:
        self.backend = backend
        self.store = backend.row_store(dim)
        self.limit = limit
        self.block_rows = block_rows
        self.row_bytes = 4 * dim
        self.shrinks = 0  # times the device ran out of memory

    @property
    def count(self) -> int:
        return int(self.store.view().shape[0])

    def view(self):
        return self.store.view()

    def append(self, rows) -> int:
        """Append rows (host or native) a block of ``block_rows`` at a time (bounded
        staging on the device) until the device runs out of memory (then the budget is
        capped, :meth:`out_of_memory`); returns how many went in."""
        start = self.count
        taken = 0
        for s in range(0, rows.shape[0], self.block_rows):
            part = rows[s : s + self.block_rows]
            try:
                self.store.append(part)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                if not self.backend.is_out_of_memory(exc):
                    self.store.truncate(start)  # nothing of a failed append stays
                    raise
                self.out_of_memory(exc)
                break
            taken += part.shape[0]
        return taken

    def keep(self, index: np.ndarray) -> None:
        """Keep rows ``index`` (ascending); a prefix is cut without moving rows."""
        if index.size == 0 or index[-1] == index.size - 1:
            self.store.truncate(index.size)
        else:
            self.store.keep(self.backend.index_array(index))

    def reorder(self, order: np.ndarray) -> None:
        self.store.keep(self.backend.index_array(order))

    def read(self, pos: np.ndarray) -> np.ndarray:
        return self.backend.gather_rows(self.store.view(), pos)

    def write(self, pos: np.ndarray, rows: np.ndarray) -> None:
        self.backend.scatter_rows(self.store.view(), pos, rows)

    def out_of_memory(self, exc: BaseException) -> None:
        """Cap the budget at the rows held now (the caller sends the rest to warm); the
        first time, a warning says so."""
        self.shrinks += 1
        self.limit = self.count
        if self.shrinks == 1:
            msg = (f"m2m_gpu: the {self.backend.name} device ran out of memory with "
                   f"{self.limit} splats ({self.limit * self.row_bytes / 2**20:.1f} "
                   f"MiB) in the hot tier; the hot tier is capped there and further splats "
                   f"are kept in host memory and streamed ({type(exc).__name__}: {exc})")
            warnings.warn(msg, ResourceWarning, stacklevel=5)
            log.warning(msg)

    def shrink(self, exc: BaseException, fraction: float) -> None:
        """Device memory ran out elsewhere: cap the budget at ``fraction`` of the rows held
        (the caller's placement pass then demotes the rest)."""
        target = int(self.count * fraction)
        self.out_of_memory(exc)
        self.limit = target

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the device running out of memory with rows here to demote:
        then :meth:`shrink`, a placement pass and a retry may succeed."""
        return self.count > 0 and self.backend.is_out_of_memory(exc)


class WarmRows:
    """The warm tier: pageable host memory, and its budget in rows (None: unbounded).
    Blocks are staged through the backend's fixed-size page-locked buffers when they stream
    (``Backend.stream``), so the warm tier's size never multiplies in pinned memory."""

    def __init__(self, dim: int, limit: int | None) -> None:
        self.buf = RowBuffer(np, dim)
        self.limit = limit

    @property
    def count(self) -> int:
        return int(self.buf.n)

    def view(self) -> np.ndarray:
        return self.buf.view()

    def append(self, rows: np.ndarray) -> None:
        self.buf.append(rows)

    def keep(self, index: np.ndarray) -> None:
        """Keep rows ``index`` (ascending); a prefix is cut without moving rows."""
        if index.size == 0 or index[-1] == index.size - 1:
            self.buf.truncate(index.size)
        else:
            self.buf.keep(index)

    def reorder(self, order: np.ndarray) -> None:
        self.buf.keep(order)

    def read(self, pos: np.ndarray) -> np.ndarray:
        return self.buf.view()[pos]

    def write(self, pos: np.ndarray, rows: np.ndarray) -> None:
        self.buf.view()[pos] = rows

    def block(self, start: int, rows: int) -> np.ndarray:
        """Rows ``start .. start + rows - 1`` (a view, no copy)."""
        return self.buf.view()[start : start + rows]


def scratch_dir() -> Path:
    """This process's directory for the spill files of stores without a path:
    ``<tmp>/m2m-gpu-<uid>/<pid>``. Made on first use, when the directories of processes
    that no longer run (killed before they could delete their files) are removed."""
    pid = os.getpid()
    if _scratch.get("pid") != pid:
        root = Path(tempfile.gettempdir()) / f"m2m-gpu-{os.getuid()}"
        root.mkdir(mode=0o700, exist_ok=True)
        for old in root.iterdir():
            if old.name.isdigit() and int(old.name) != pid and not _running(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
        mine = root / str(pid)
        mine.mkdir(exist_ok=True)
        _scratch.update(pid=pid, path=mine)
    return _scratch["path"]


_scratch: dict = {}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class _Spill:
    """An append-only, memory-mapped scratch file of float32 rows in ``directory``
    (default: this process's :func:`scratch_dir`); deleted on :meth:`close` or with this
    object."""

    def __init__(self, dim: int, directory: str | None) -> None:
        fd, name = tempfile.mkstemp(prefix=SPILL_PREFIX, suffix=".f32",
                                    dir=directory if directory is not None else scratch_dir())
        os.close(fd)
        self.dim = dim
        self.path = Path(name)
        self._finalizer = weakref.finalize(self, self.path.unlink, missing_ok=True)
        self._map: np.memmap | None = None
        self.rows = 0  # rows written (live or not)

    def append(self, rows: np.ndarray) -> int:
        """Write ``rows`` at the end; returns the first one's index."""
        first, r = self.rows, rows.shape[0]
        self._grow(first + r)
        self._map[first : first + r] = rows
        self.rows += r
        return first

    def _grow(self, need: int) -> None:
        cap = 0 if self._map is None else self._map.shape[0]
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, 1024)
        if self._map is not None:
            self._map.flush()
        self._map = None
        with open(self.path, "r+b") as f:
            f.truncate(new_cap * self.dim * 4)
        self._map = np.memmap(self.path, dtype="<f4", mode="r+", shape=(new_cap, self.dim))

    def read(self, index: np.ndarray) -> np.ndarray:
        return self._map[index]

    def close(self) -> None:
        self._map = None
        self._finalizer()  # the file goes now (once)


class ColdRows:
    """The cold tier: a read-only ``base`` (a checkpoint's vectors file, memory-mapped; row
    = slot at that checkpoint) and an append-only spill file. Position ``p < base_rows`` is
    base row ``p``, otherwise spill row ``p - base_rows``. Rows that leave the cold tier,
    or are written again, leave dead spill rows behind: :meth:`compact_sparse` rewrites the
    live ones."""

    def __init__(self, dim: int, directory: str | None) -> None:
        self.dim = dim
        self.directory = directory
        self.base: np.ndarray | None = None
        self.base_rows = 0
        self._spill: _Spill | None = None
        self.compact_min = 1 << 16  # spill rows before compaction is considered
        self.compactions = 0

    @property
    def spill_rows(self) -> int:
        """Rows written to the spill file (live or not)."""
        return 0 if self._spill is None else self._spill.rows

    @property
    def file_rows(self) -> int:
        return self.base_rows + self.spill_rows

    @property
    def spill_path(self) -> Path | None:
        """The spill file, while there is one."""
        return None if self._spill is None else self._spill.path

    def set_base(self, base: np.ndarray | None) -> None:
        self.base = base
        self.base_rows = 0 if base is None else int(base.shape[0])

    def reset_spill(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def append(self, rows: np.ndarray) -> np.ndarray:
        """Spill ``rows``; returns their positions."""
        if self._spill is None:
            self._spill = _Spill(self.dim, self.directory)
        first = self._spill.append(rows)
        return self.base_rows + first + np.arange(rows.shape[0], dtype=np.int64)

    def read(self, pos: np.ndarray) -> np.ndarray:
        out = np.empty((pos.size, self.dim), dtype=np.float32)
        in_base = pos < self.base_rows
        if in_base.any():
            out[in_base] = self.base[pos[in_base]]
        if not in_base.all():
            out[~in_base] = self._spill.read(pos[~in_base] - self.base_rows)
        return out

    def compact_sparse(self, slotmap, block_rows: int) -> None:
        """Once the spill file holds at least ``compact_min`` rows and twice the rows still
        in use (cold slots of ``slotmap`` past the base), the live ones are copied to a
        fresh file and the slot map told their new positions."""
        if self.spill_rows < self.compact_min:  # before the scan
            return
        spilled = slotmap.spilled(self.base_rows)
        if self.spill_rows >= 2 * spilled.size:
            slotmap.place_cold(spilled, self.compact(slotmap.pos[spilled], block_rows))

    def compact(self, pos: np.ndarray, block_rows: int) -> np.ndarray:
        """Copy the spill rows at positions ``pos`` (the live ones) to a fresh spill file, a
        block at a time, and drop the old one; returns their new positions."""
        old, fresh = self._spill, _Spill(self.dim, self.directory)
        out = np.empty(pos.size, dtype=np.int64)
        for s in range(0, pos.size, block_rows):
            part = pos[s : s + block_rows]
            first = fresh.append(old.read(part - self.base_rows))
            out[s : s + part.size] = self.base_rows + first + np.arange(part.size)
        self._spill = fresh
        old.close()
        self.compactions += 1
        return out

    def close(self) -> None:
        self.reset_spill()
        self.base = None
