"""Snapshots: a store's state to and from a checkpoint generation, and opening a directory
(load the checkpoint, replay the log). The file format is :mod:`m2m_gpu.persist`'s."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import persist
from ..errors import InvalidInputError, StoreFormatError
from . import ops
from .consolidation import consolidate
from .durable import GROUP_END, GROUP_KEY
from .slots import digest
from .state import StoreState

log = logging.getLogger("m2m_gpu")


def write_generation(st: StoreState, manifest: dict, path: Path, generation: int) -> dict:
    arrays = {"vectors": st.arrays.vector_blocks(), "params": st.arrays.host_params(),
              "hits": st.table.hits, "flags": st.table.flags()}
    state = {"clock": st.clock, **st.table.state()}
    return persist.write_snapshot(path, generation, manifest, arrays, st.table.records(),
                                  state)


def restore(st: StoreState, arrays: dict, records: list, state: dict) -> None:
    """Fill an empty state from a checkpoint's arrays (``vectors`` memory-mapped)."""
    vectors = arrays["vectors"]
    if len(records):
        st.arrays.restore(vectors, arrays["params"])
    st.table.restore(records, arrays["flags"], arrays["hits"], state)
    if len(st.table.slot) != int(st.table.live.sum()):
        raise StoreFormatError("records and live flags disagree")
    st.clock = float(state["clock"])
    if st.options.dedup:
        for s in np.flatnonzero(st.table.live).tolist():
            st.table.remember(st.table.ids[s], digest(np.asarray(vectors[s], np.float32)))


def replay(st: StoreState, records: list, version: int) -> int | None:
    """Apply logged operations in order; a group (:meth:`Journal.group`) only once its
    end record is read. Returns the offset of a group left open at the end of the log
    (a crash inside a consolidation: dropped), else None. A log of format version 1
    recorded intents: there the automatic consolidations (and dedup) are decided again,
    as that version did."""
    group: list | None = None  # the records of an open group
    for rec in records:
        try:
            group = _replay_one(st, rec, group, version)
        except (InvalidInputError, StoreFormatError, KeyError, IndexError, TypeError) as exc:
            first = group[0] if rec.op == GROUP_END and group else rec  # a group: all of it
            raise ReplayError(first, exc) from exc
    return group[0].offset if group else None


class ReplayError(StoreFormatError):
    """A log record that does not apply to the state before it (a log written by a
    process whose journal order was not its apply order, or edited by hand)."""

    def __init__(self, rec, exc: BaseException) -> None:
        self.offset = rec.offset
        super().__init__(f"the {rec.op!r} record at byte {rec.offset} of the log does not "
                         f"apply ({type(exc).__name__}: {exc}); nothing was changed. "
                         "SplatStore.open(path, repair=True) keeps the records before it "
                         "and moves the rest of the log aside")


def _replay_one(st: StoreState, rec, group: list | None, version: int):
    """Apply one record (or hold it, inside a group); returns the open group."""
    if version < 2 and rec.op == "consolidate":
        consolidate(st, lambda op: op.apply(st), rec.header.get("reason", "replayed"))
    elif rec.op == GROUP_END:
        for held in group or []:
            ops.from_record(st, held).apply(st)
        return None
    elif group is not None or rec.header.get(GROUP_KEY) == "begin":
        return [*(group or []), rec]
    else:
        op = ops.from_record(st, rec)
        op.apply(st)
        if version < 2:
            _legacy_auto_consolidate(st, op)
    return group


def _legacy_auto_consolidate(st: StoreState, op) -> None:
    from .learning import prune_share_reached  # format version 1 only

    o = st.options
    if not o.auto_consolidate:
        return
    reason = None
    if isinstance(op, ops.Add) and o.capacity is not None and len(st.table) > o.capacity:
        reason = "capacity"
    elif isinstance(op, (ops.Decay, ops.Feedback)):
        reason = prune_share_reached(st)
    if reason:
        consolidate(st, lambda op_: op_.apply(st), reason)


def open_log(root: Path, gen: int, read_only: bool, repair: bool):
    """The records of generation ``gen``'s log, with a torn tail cut (or, read-only,
    ignored) and damage in the middle refused unless ``repair``; returns ``(records,
    good bytes)``."""
    wal_path = root / persist.wal_name(gen)
    if not wal_path.exists():
        raise StoreFormatError(f"{wal_path}: missing")
    recs, good, size = persist.read_wal(wal_path, gen)
    if good < size and persist.damage_in_the_middle(wal_path, good):
        if read_only or not repair:
            raise StoreFormatError(
                f"{wal_path}: a record at byte {good} fails its check and {size - good} "
                "bytes follow it (damage, not a torn write); nothing was changed. "
                "SplatStore.open(path, repair=True) replays the good records and moves "
                f"the rest aside to {wal_path.name}.corrupt-<n>")
        aside = persist.move_aside(wal_path, good)
        log.warning("%s: a corrupt record at byte %d; %d records replayed, the %d bytes "
                    "from it on moved to %s (repair=True)", wal_path, good, len(recs),
                    size - good, aside)
        size = good
    if good < size and read_only:
        log.warning("%s: ignored a torn or corrupt log tail (%d of %d bytes read, %d "
                    "records; read-only, nothing cut)", wal_path, good, size, len(recs))
    elif good < size:
        log.warning("%s: cut a torn or corrupt log tail (%d of %d bytes kept, %d records)",
                    wal_path, good, size, len(recs))
        _cut(wal_path, good)
    return recs, good


def _cut(wal_path: Path, offset: int) -> None:
    with open(wal_path, "r+b") as f:
        f.truncate(max(offset, persist.WAL_HEAD_BYTES))
        os.fsync(f.fileno())


def create(store, target: Path) -> None:
    """A new store directory for ``store``: the writer lock, generation 1, an empty log."""
    if (target / "manifest.json").exists():
        raise InvalidInputError(f"{target} already holds a store; use SplatStore.open(path)")
    lock = persist.lock_directory(target)
    try:
        store._st.set_cold_dir(target)
        write_generation(store._st, manifest(store), target, 1)
        store._journal.open_log(target, 1, create=False)
    except BaseException:
        persist.unlock_directory(lock)
        raise
    store._journal.hold_lock(store, lock)


def manifest(store) -> dict:
    """The manifest fields a store's checkpoint carries (persist adds files and checks)."""
    t = store._st.table
    return {"library": "m2m-gpu", "dim": store.dim, "dtype": "float32",
            "metric": store.metric, "index": store.index_kind,
            "index_options": store._index_options_raw,
            "options": dict(store.options.__dict__),
            "counts": {"slots": t.n, "live": len(t), "aliases": len(t.alias)}}


def open_store(cls, root: Path, backend, fsync: str, verify: bool, tiers, mode: str,
               repair: bool):
    """``SplatStore.open``: read the manifest, take the writer lock (unless ``mode="r"``)
    before anything is replayed or cut, load, and hold the lock until close."""
    if mode not in ("a", "r"):
        raise InvalidInputError(f"mode must be 'a' (read and write) or 'r', got {mode!r}")
    man = persist.read_manifest(root)
    lock = None if mode == "r" else persist.lock_directory(root)
    try:
        store = _load(cls, root, man, lock is None, backend, fsync, verify, tiers, repair)
    except BaseException:
        persist.unlock_directory(lock)
        raise
    if lock is not None:
        store._journal.hold_lock(store, lock)
        if int(man["format_version"]) < 2:  # its log holds intents: fold it in now
            store.checkpoint()
    return store


def _load(cls, root: Path, man: dict, read_only: bool, backend, fsync, verify, tiers,
          repair):
    try:
        store = cls(man["dim"], metric=man["metric"], backend=backend,
                    index=man.get("index", "flat"), index_options=man.get("index_options")
                    or None, fsync=fsync, tiers=tiers, **man["options"])
    except (KeyError, TypeError) as e:
        raise StoreFormatError(f"{root}/manifest.json: bad field ({e})") from None
    st = store._st
    arrays, records, state = persist.read_snapshot(root, man, verify=verify)
    if not read_only:
        for stale in root.glob(f"{persist.SPILL_PREFIX}*"):  # an earlier process's scratch
            stale.unlink(missing_ok=True)
        st.set_cold_dir(root)
    restore(st, arrays, records, state)
    if st.arrays.rows.bounded:
        store._rebalance()
    gen = int(man["generation"])
    recs, good = open_log(root, gen, read_only, repair)
    try:
        open_group = replay(st, recs, int(man["format_version"]))
    except ReplayError as exc:
        if read_only or not repair:
            raise
        aside = persist.move_aside(root / persist.wal_name(gen), exc.offset)
        log.warning("%s; repair=True: the log from there on was moved to %s", exc, aside)
        return _load(cls, root, man, read_only, backend, fsync, verify, tiers, repair)
    if open_group is not None:
        log.warning("%s: dropped a consolidation the process did not finish (from byte %d "
                    "of the log%s)", root / persist.wal_name(gen), open_group,
                    "" if read_only else "; cut")
        if not read_only:
            _cut(root / persist.wal_name(gen), open_group)
            good = open_group
    st.sync_index()
    store._journal.path, store._journal.generation = root, gen
    if read_only:
        store._journal.read_only = True
    else:
        store._journal.open_log(root, gen, create=good < persist.WAL_HEAD_BYTES)
    return store
