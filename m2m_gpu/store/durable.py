"""``Journal``: where a store's writes go to be durable (SPEC section 5).

It owns the write-ahead log of the current generation, the store directory's writer lock
and the write guard: writes are refused once the store is closed, when it was opened
read-only, or after a checkpoint failed past its commit (there is then no log to write
through, and a write that could not be made durable must not be acknowledged). The file
format is :mod:`m2m_gpu.persist`'s.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path

from .. import persist
from ..errors import InvalidInputError
from .ops import Op

# A store on a path checkpoints when its log passes CHECKPOINT_BYTES and a quarter of its
# data: replay (about 12 MiB/s on a 2-core VM) then takes seconds, not the minute a fixed
# 256 MiB took, and big stores are not rewritten for every 64 MiB of log.
CHECKPOINT_BYTES = 64 << 20
CHECKPOINT_SHARE = 0.25
GROUP_KEY = "group"  # header key of a group's first record
GROUP_END = "end"  # the record that closes a group


def _no_lock() -> None:
    """The lock release of a store that holds none."""


class Journal:
    def __init__(self, fsync: str) -> None:
        if fsync not in persist.FSYNC_POLICIES:
            raise InvalidInputError(f"fsync must be one of {persist.FSYNC_POLICIES}, "
                                    f"got {fsync!r}")
        self.fsync = fsync
        self.path: Path | None = None
        self.generation = 0
        self.wal: persist.Wal | None = None
        self.closed = self.read_only = False
        self.failed: BaseException | None = None
        self._release = _no_lock
        self._group: list | None = None  # [log offset where it began, records so far]

    def refuse(self, what: str) -> None:
        """Raise if the store cannot take the write ``what`` now."""
        if self.closed:
            raise InvalidInputError(f"SplatStore.{what}: the store is closed; reopen it "
                                    "(SplatStore.open) to write")
        if self.read_only:
            raise InvalidInputError(f"SplatStore.{what}: the store was opened read-only "
                                    "(SplatStore.open(path, mode='r'))")
        if self.failed is not None:
            raise OSError(f"SplatStore.{what}: the store cannot write since an earlier write "
                          f"failed part-way ({type(self.failed).__name__}: {self.failed}); "
                          "reopen it") from self.failed

    def commit(self, op: Op, apply):
        """Log ``op`` (a store on a path), then ``apply()`` it. A failed append rolls the
        log back to its last good record and raises (:class:`m2m_gpu.persist.Wal`), with
        nothing changed. If the apply itself fails (device memory ran out half-way), its
        record is cut from the log, so the write that raised is not there after a reopen,
        and writes are refused from then on: memory may hold part of it."""
        if self.wal is None:
            return apply()
        header, arrays = op.record()
        if self._group is not None and self._group[1] == 0:
            header = {**header, GROUP_KEY: "begin"}
        start = self.wal.bytes
        self.wal.append(op.name, header, arrays)
        try:
            out = apply()
        except BaseException as exc:
            self._fail(exc, start if self._group is None else self._group[0])
            raise
        if self._group is not None:
            self._group[1] += 1
        return out

    def _fail(self, exc: BaseException, cut_to: int) -> None:
        self.failed = exc
        try:
            self.wal.cut(cut_to)
        except OSError:
            pass  # the log cannot even be cut: writes stay refused

    @contextlib.contextmanager
    def group(self):
        """Operations committed inside are one unit in the log (a consolidation's prune
        and merge rounds): the first record opens the group, an ``end`` record closes it,
        and replay applies a group only once it sees the end; a group a crash left open
        at the end of the log is dropped. If anything inside raises, the log is cut back
        to where the group began and writes are refused (memory may hold part of it)."""
        if self.wal is None or self._group is not None:
            yield
            return
        self._group = [self.wal.bytes, 0]
        try:
            yield
            if self._group[1]:
                self.wal.append(GROUP_END, {}, [])
        except BaseException as exc:
            start, written, self._group = self._group[0], self._group[1], None
            if written or self.wal.bytes != start:  # memory may hold part of the group
                self._fail(exc, start)
            raise
        finally:
            self._group = None

    def open_log(self, path: Path, generation: int, create: bool) -> None:
        self.path, self.generation = Path(path), generation
        self.wal = persist.Wal(self.path / persist.wal_name(generation), generation,
                               self.fsync, create=create)

    def checkpoint_due(self, data_bytes: int) -> bool:
        return self.wal is not None and \
            self.wal.bytes > max(CHECKPOINT_BYTES, CHECKPOINT_SHARE * data_bytes)

    def hold_lock(self, owner, fd: int) -> None:
        """Keep the directory lock ``fd`` until close(), or until ``owner`` is collected
        (a store dropped without close() must not lock its directory forever)."""
        self._release = weakref.finalize(owner, persist.unlock_directory, fd)

    def release_lock(self) -> None:
        self._release()

    def switch(self, write_generation, rebase) -> None:
        """A checkpoint: ``write_generation(path, g)`` writes generation g + 1 (if that
        fails, nothing has switched and the old generation and log stay in use); once its
        manifest is committed, ``rebase(manifest)`` points the cold tier at the new files
        and the new log is opened. A failure after the commit refuses further writes."""
        old = self.wal
        old.sync()  # everything acknowledged is on disk before the new generation is made
        manifest = write_generation(self.path, self.generation + 1)
        try:  # committed: from here the new generation is the store on disk
            self.generation += 1
            self.wal = None
            rebase(manifest)
            self.open_log(self.path, self.generation, create=False)
        except BaseException as exc:
            self.failed = exc
            raise
        finally:
            old.close()

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()
            self.wal = None
        self._release()
        self.closed = True
