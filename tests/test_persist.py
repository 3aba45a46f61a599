"""Durable stores (SPEC section 5): save/open, write-through with a write-ahead log, torn and
corrupt log tails, checkpoints, format checks, and the SIGKILL crash test."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from m2m_gpu import InvalidInputError, SplatStore, persist
from m2m_gpu.crashtest import crash_loop, digest
from m2m_gpu.errors import IntegrityError, StoreFormatError


def busy_store(backend, path=None, metric="cosine", **kw):
    """A store that has seen every kind of write."""
    rng = np.random.default_rng(5)
    s = SplatStore(8, metric=metric, backend=backend.name, path=path, merge_radius=0.05, **kw)
    s.add(rng.standard_normal((30, 8)).astype(np.float32), metadata=[{"i": i} for i in range(30)])
    s.add(rng.standard_normal((3, 8)).astype(np.float32), ids=["a", "b", "c"],
          metadata={"tag": "x"})
    s.feedback(rng.standard_normal((2, 8)).astype(np.float32), relevant=[[1, "a"], [2]],
               irrelevant=[[3], []])
    s.delete([4, "b"])
    s.decay(3600.0)
    v = s.get(5)[0]["vector"]
    s.add(v + np.float32(1e-4), ids=["near5"])  # merged into 5 by consolidate
    s.consolidate()
    s.add(rng.standard_normal((2, 8)).astype(np.float32))  # generated ids after the merge
    return s


def test_write_through_then_open_gives_the_same_store(backend, tmp_path):
    s = busy_store(backend, tmp_path / "st")
    want, next_id = digest(s), s._st.table.next_id
    s.close()
    t = SplatStore.open(tmp_path / "st", backend=backend.name)
    assert digest(t) == want
    assert t.check_integrity()["live"] == len(t)
    assert t.get(5)[0]["id"] == t.get("near5")[0]["id"]  # the merge alias survived
    assert len(t.aliases()) == 1
    new = t.add(np.ones((1, 8), np.float32))
    assert new[0] >= next_id  # generated ids keep counting, never reuse a deleted one
    t.close()


def test_save_and_checkpoint_fold_the_log(backend, tmp_path):
    s = busy_store(backend)
    s.save(tmp_path / "copy")
    assert digest(SplatStore.open(tmp_path / "copy", backend=backend.name)) == digest(s)
    with pytest.raises(InvalidInputError, match="not opened on a path"):
        s.checkpoint()
    w = busy_store(backend, tmp_path / "w")
    log_size = (tmp_path / "w" / persist.wal_name(1)).stat().st_size
    assert log_size > 200
    w.checkpoint()
    files = sorted(os.listdir(tmp_path / "w"))
    assert persist.wal_name(1) not in files and persist.wal_name(2) in files
    assert (tmp_path / "w" / persist.wal_name(2)).stat().st_size < 64  # only its header
    want = digest(w)
    w.close()
    assert digest(SplatStore.open(tmp_path / "w", backend=backend.name)) == want


def test_torn_tail_is_cut_and_earlier_writes_kept(tmp_path, caplog):
    path = tmp_path / "t"
    s = SplatStore(4, metric="l2", backend="cpu", path=path)
    for i in range(5):
        s.add(np.full((1, 4), i, np.float32), ids=[i])
    s.close()
    wal = path / persist.wal_name(1)
    size = wal.stat().st_size
    with open(wal, "r+b") as f:  # tear the last record: its tail never reached the disk
        f.truncate(size - 7)
    with caplog.at_level("WARNING", logger="m2m_gpu"):
        t = SplatStore.open(path, backend="cpu")
    assert sorted(t.ids()) == [0, 1, 2, 3] and "torn or corrupt" in caplog.text
    assert wal.stat().st_size < size - 7  # cut at the last good record
    t.add(np.full((1, 4), 9, np.float32), ids=[9])  # appends after the cut
    t.close()
    assert sorted(SplatStore.open(path, backend="cpu").ids()) == [0, 1, 2, 3, 9]


def test_a_corrupt_record_in_the_middle_is_refused_or_moved_aside(tmp_path):
    path = tmp_path / "c"
    s = SplatStore(4, metric="l2", backend="cpu", path=path)
    offsets = []
    for i in range(4):
        offsets.append((path / persist.wal_name(1)).stat().st_size)
        s.add(np.full((1, 4), i, np.float32), ids=[i])
    s.close()
    raw = bytearray((path / persist.wal_name(1)).read_bytes())
    raw[offsets[2] + 20] ^= 0xFF  # a flipped byte inside record 2: its CRC fails
    (path / persist.wal_name(1)).write_bytes(bytes(raw))
    before = (path / persist.wal_name(1)).read_bytes()
    # damage followed by more records is not what a crash leaves: refused, nothing changed
    with pytest.raises(StoreFormatError, match="repair=True"):
        SplatStore.open(path, backend="cpu")
    assert (path / persist.wal_name(1)).read_bytes() == before
    # repair: the good records are replayed and the rest is kept aside, not deleted
    t = SplatStore.open(path, backend="cpu", repair=True)
    assert sorted(t.ids()) == [0, 1]
    t.check_integrity()
    aside = path / (persist.wal_name(1) + ".corrupt-1")
    assert aside.read_bytes() == before[offsets[2]:]
    t.add(np.full((1, 4), 9, np.float32), ids=[9])
    t.close()
    assert sorted(SplatStore.open(path, backend="cpu").ids()) == [0, 1, 9]


def test_format_checks(tmp_path):
    path = tmp_path / "f"
    SplatStore(4, backend="cpu", path=path).close()
    with pytest.raises(InvalidInputError, match="already holds a store"):
        SplatStore(4, backend="cpu", path=path)
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = persist.FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreFormatError, match="newer than this"):
        SplatStore.open(path)
    with pytest.raises(StoreFormatError, match="no manifest"):
        SplatStore.open(tmp_path / "nowhere")
    s = SplatStore(4, backend="cpu", path=tmp_path / "g")
    s.add(np.ones((3, 4), np.float32))
    s.checkpoint()
    s.close()
    vec = tmp_path / "g" / "vectors-2.f32"
    raw = bytearray(vec.read_bytes())
    raw[5] ^= 1
    vec.write_bytes(bytes(raw))
    with pytest.raises(StoreFormatError, match="CRC32"):
        SplatStore.open(tmp_path / "g")
    with pytest.raises(InvalidInputError, match="fsync"):
        SplatStore(4, backend="cpu", path=tmp_path / "h", fsync="sometimes")


@pytest.mark.parametrize("fsync", ["every", "batch", "off"])
def test_fsync_policies_all_recover_after_close(tmp_path, fsync):
    s = SplatStore(4, metric="l2", backend="cpu", path=tmp_path / fsync, fsync=fsync)
    for i in range(100):
        s.add(np.full((1, 4), i, np.float32), ids=[i])
    want = digest(s)
    s.close()
    assert digest(SplatStore.open(tmp_path / fsync, backend="cpu", fsync=fsync)) == want


def test_integrity_check_finds_damage():
    s = SplatStore(4, backend="cpu")
    s.add(np.eye(4, dtype=np.float32))
    s.check_integrity()
    s._st.table.alias["ghost"] = "nobody"
    with pytest.raises(IntegrityError, match="aliases to missing ids"):
        s.check_integrity()


def test_files_hold_no_pickle(tmp_path):
    s = busy_store(type("B", (), {"name": "cpu"})(), tmp_path / "p")
    s.checkpoint()
    s.close()
    for f in (tmp_path / "p").iterdir():
        assert b"\x80\x04\x95" not in f.read_bytes()[:64]  # no pickle protocol-4 header
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["dim"] == 8 and m["metric"] == "cosine" and m["counts"]["live"] == len(s)


@pytest.mark.parametrize("profile,runs,tiered", [("plain", 15, False), ("learning", 15, False),
                                                  ("hrm2", 10, False), ("hrm2", 10, True)])
def test_crash_loop_fifty_sigkills(tmp_path, profile, runs, tiered):
    """A child writes in a loop and is SIGKILLed at random moments (some inside
    checkpoints and consolidations), 50 times over the four cases; after each kill every
    acknowledged write is there, nothing else but the write in flight, and the store
    passes its integrity check (m2m_gpu.crashtest; ``python -m m2m_gpu.crashtest --runs
    500 --profile hrm2 --tiered`` for more). "learning" and "hrm2" write dedup aliases,
    merges and prunes: a restart must apply exactly what the live process decided."""
    from m2m_gpu.crashtest import TIERED

    totals = crash_loop(tmp_path / "crash", runs=runs, seed=1, log=lambda *_: None,
                        profile=profile, tiers=TIERED if tiered else None)
    assert totals["runs"] == runs and totals["acked"] > 10 * runs
    if profile != "plain":
        assert totals["aliases"] > 0  # dedup and merges happened


def test_dedup_survives_reopen(tmp_path):
    v = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    s = SplatStore(4, backend="cpu", path=tmp_path / "d", dedup=True)
    s.add(v, ids=["x", "y"])
    s.checkpoint()
    s.add(v[:1], ids=["x2"])  # from the log
    s.close()
    t = SplatStore.open(tmp_path / "d", backend="cpu")
    assert len(t) == 2 and t.get("x2")[0]["id"] == "x"
    t.add(v[1:], ids=["y2"])  # the hash map was rebuilt from the data files
    assert len(t) == 2 and t.get("y2")[0]["id"] == "y"


def test_writes_after_close_raise_and_change_nothing(tmp_path):
    """A closed store can still be searched, but every write raises: it could not reach
    the log, so accepting it would lose an acknowledged write on reopen."""
    import m2m_gpu

    X = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    store = m2m_gpu.SplatStore(4, path=tmp_path / "s", backend="cpu")
    ids = store.add(X[:3])
    store.close()
    for write in (lambda: store.add(X[3:]), lambda: store.delete(ids[0]),
                  lambda: store.feedback(X[0], relevant=[ids[0]]), lambda: store.decay(1.0),
                  lambda: store.consolidate(), lambda: store.checkpoint(),
                  lambda: store.compact()):
        with pytest.raises(m2m_gpu.InvalidInputError, match="closed"):
            write()
    assert len(store) == 3 and store.search(X[:1], k=1).ids[0][0] == ids[0]
    again = m2m_gpu.SplatStore.open(tmp_path / "s", backend="cpu")
    assert len(again) == 3 and all(i in again for i in ids)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_failed_log_append_is_rolled_back_and_the_store_keeps_working(tmp_path, monkeypatch,
                                                                         where):
    """Disk full in the middle of a record (or EIO from fsync): the add raises, the log is
    cut back to the last good record, the store is unchanged and accepts later writes, and
    after reopening exactly the acknowledged writes are there (a torn record used to be
    followed by later writes, which the next open then cut off with it)."""
    import errno

    import m2m_gpu
    from m2m_gpu import persist

    X = np.random.default_rng(4).standard_normal((6, 4)).astype(np.float32)
    store = m2m_gpu.SplatStore(4, path=tmp_path / "s", backend="cpu")
    store.add(X[:2], ids=[0, 1])
    real_write, real_fsync = os.write, os.fsync
    calls = {"n": 0}

    def half_write(fd, data):  # half of the record lands, then the disk is full
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    if where == "write":
        monkeypatch.setattr(persist.os, "write", half_write)
    else:
        monkeypatch.setattr(persist.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.add(X[2:3], ids=[2])
    assert len(store) == 2 and 2 not in store  # a write that raised is not there
    store.add(X[3:5], ids=[3, 4])  # the store keeps working
    monkeypatch.undo()
    store.close()
    again = m2m_gpu.SplatStore.open(tmp_path / "s", backend="cpu")
    assert len(again) == 4 and all(i in again for i in (0, 1, 3, 4)) and 2 not in again


def test_one_writer_per_directory(tmp_path):
    """A second writer on a store directory, in this process or another, gets
    StoreLockedError before anything is read or cut; the lock goes with close(), with the
    store object when it is dropped, and with the process."""
    import gc
    import subprocess
    import sys

    import m2m_gpu

    X = np.eye(4, dtype=np.float32)
    path = tmp_path / "s"
    first = m2m_gpu.SplatStore(4, path=path, backend="cpu")
    first.add(X[:2], ids=[0, 1])
    with pytest.raises(m2m_gpu.StoreLockedError, match="open for writing"):
        m2m_gpu.SplatStore.open(path, backend="cpu")
    code = ("import sys, m2m_gpu\n"
            "try:\n"
            f"    m2m_gpu.SplatStore.open({str(path)!r}, backend='cpu')\n"
            "except m2m_gpu.StoreLockedError:\n"
            "    sys.exit(3)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 3
    first.add(X[2:3], ids=[2])  # the first writer is unaffected
    first.close()
    second = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert len(second) == 3
    del second
    gc.collect()
    third = m2m_gpu.SplatStore.open(path, backend="cpu")  # dropped without close: released
    assert len(third) == 3
    third.close()


def test_a_failed_checkpoint_leaves_the_old_generation_working(tmp_path, monkeypatch, caplog):
    """Writing the new generation fails (disk full): checkpoint() raises, the old generation
    and its log stay in use, later writes are logged and survive a reopen; an automatic
    checkpoint that fails never turns the write that triggered it into an exception (the
    store used to refuse every later write with a TypeError)."""
    import errno

    import m2m_gpu
    from m2m_gpu import persist
    from m2m_gpu.store import durable as store_mod

    X = np.random.default_rng(6).standard_normal((8, 4)).astype(np.float32)
    path = tmp_path / "s"
    store = m2m_gpu.SplatStore(4, path=path, backend="cpu")
    store.add(X[:2], ids=[0, 1])
    real = persist.write_snapshot

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(persist, "write_snapshot", disk_full)
    with pytest.raises(OSError):
        store.checkpoint()
    store.add(X[2:3], ids=[2])  # the old log is still written through
    monkeypatch.setattr(store_mod, "CHECKPOINT_BYTES", 1)  # every write checkpoints
    with caplog.at_level("WARNING", logger="m2m_gpu"):
        store.add(X[3:4], ids=[3])  # the automatic checkpoint fails: the add does not
    assert "automatic checkpoint failed" in caplog.text
    monkeypatch.setattr(persist, "write_snapshot", real)
    store.add(X[4:5], ids=[4])  # and now it succeeds
    assert store.generation == 2
    store.add(X[5:6], ids=[5])
    store.close()
    again = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert len(again) == 6 and all(i in again for i in range(6))
    again.close()


def test_read_only_open_modifies_nothing(tmp_path):
    """open(path, mode="r") loads and replays, searches and scores, but creates, cuts and
    removes nothing (a torn log tail is ignored, not cut; no lock file), takes no writer
    lock, and refuses every write."""
    import hashlib

    import m2m_gpu
    from m2m_gpu import persist

    X = np.random.default_rng(9).standard_normal((20, 4)).astype(np.float32)
    path = tmp_path / "s"
    store = m2m_gpu.SplatStore(4, path=path, backend="cpu")
    store.add(X[:10], ids=list(range(10)))
    store.checkpoint()
    store.add(X[10:15], ids=list(range(10, 15)))
    store.close()
    (path / persist.LOCK_FILE).unlink()
    with open(path / persist.wal_name(store.generation), "ab") as f:
        f.write(b"\x07torn")

    def files():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.iterdir()}

    before = files()
    ro = m2m_gpu.SplatStore.open(path, backend="cpu", mode="r")
    assert len(ro) == 15 and ro.search(X[12:13], k=1).ids[0][0] == 12
    ro.energy(X[:2])
    with pytest.raises(m2m_gpu.InvalidInputError, match="read-only"):
        ro.add(X[15:16], ids=[15])
    assert files() == before  # nothing created, cut or removed
    writer = m2m_gpu.SplatStore.open(path, backend="cpu")  # a reader holds no lock
    writer.close()
    after_writer = files()
    assert "wal-" in " ".join(before) and before != after_writer  # the writer cut the tail
    ro2 = m2m_gpu.SplatStore.open(path, backend="cpu", mode="r")
    assert len(ro2) == 15
    assert files() == after_writer  # the second reader changed nothing either
    with pytest.raises(m2m_gpu.InvalidInputError, match="mode"):
        m2m_gpu.SplatStore.open(path, backend="cpu", mode="w")


def test_update_metadata_and_delete_by_filter_are_logged(tmp_path):
    """Metadata can be replaced without re-adding (vectors and learned parameters kept),
    and splats deleted by a metadata filter; both are logged, so a reopen (replay) and a
    checkpoint give the same store."""
    import m2m_gpu

    X = np.eye(4, dtype=np.float32)
    path = tmp_path / "s"
    store = m2m_gpu.SplatStore(4, path=path, backend="cpu")
    store.add(X, ids=["a", "b", "c", "d"], metadata=[{"lang": "en"}] * 4)
    store.feedback(X[0], relevant=["a"])
    alpha = store.get("a")[0]["alpha"]
    assert store.update_metadata(["a", "b"], [{"lang": "de"}, {"lang": "fr"}]) == 2
    assert store.search(X[:1], k=4, filter={"lang": "de"}).ids[0] == ["a"]
    assert store.get("a")[0]["alpha"] == alpha  # not re-added
    with pytest.raises(m2m_gpu.UnknownIdError):
        store.update_metadata(["a", "zz"], {"lang": "it"})
    assert store.get("a")[0]["metadata"] == {"lang": "de"}  # nothing changed
    assert store.delete(filter={"lang": "en"}) == 2 and set(store) == {"a", "b"}
    with pytest.raises(m2m_gpu.InvalidInputError):
        store.delete()
    store.close()
    for _ in range(2):
        again = m2m_gpu.SplatStore.open(path, backend="cpu")
        assert set(again) == {"a", "b"}
        assert again.get("b")[0]["metadata"] == {"lang": "fr"}
        assert again.search(X[:1], k=4, filter={"lang": "de"}).ids[0] == ["a"]
        again.checkpoint()  # the second round reads the checkpoint, not the log
        again.close()


@pytest.mark.parametrize("change", ["tamper", "no_dim", "dim_str", "slots_neg", "no_files",
                                    "bytes_wrong", "name_path", "not_object"])
def test_every_malformed_manifest_is_a_store_format_error(tmp_path, change):
    """The manifest carries its own checksum, and every field the store reads is checked
    (types, file sizes against the counts): a damaged manifest gives StoreFormatError, never
    a KeyError, a TypeError or a store built from wrong numbers."""
    import m2m_gpu

    path = tmp_path / "m"
    store = m2m_gpu.SplatStore(4, path=path, backend="cpu")
    store.add(np.eye(4, dtype=np.float32))
    store.checkpoint()
    store.close()
    mpath = path / "manifest.json"
    m = json.loads(mpath.read_text())
    if change == "tamper":
        m["dim"] = 8  # checksum no longer matches
    else:
        m.pop("manifest_crc32")  # as an older store without a checksum would be
        if change == "no_dim":
            m.pop("dim")
        elif change == "dim_str":
            m["dim"] = "4"
        elif change == "slots_neg":
            m["counts"]["slots"] = -1
        elif change == "no_files":
            m.pop("files")
        elif change == "bytes_wrong":
            m["counts"]["slots"] += 1
        elif change == "name_path":
            m["files"]["vectors"]["name"] = "../../etc/passwd"
        elif change == "not_object":
            m = [1, 2]
    mpath.write_text(json.dumps(m))
    with pytest.raises(StoreFormatError):
        m2m_gpu.SplatStore.open(path, backend="cpu")


def test_crash_harness_counts_acknowledgements_buffered_with_ready():
    """A child that prints "ready" and its first acknowledgements in one burst: all of them
    are counted (communicate() after readline() used to miss the buffered ones)."""
    import subprocess
    import sys

    from m2m_gpu.crashtest import kill_and_read

    code = ("import sys, time\n"
            "sys.stdout.write('ready\\n' + ''.join(f'ack {i}\\n' for i in range(50)))\n"
            "sys.stdout.flush()\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"ready"
    import time

    time.sleep(0.5)
    out, _ = kill_and_read(child)
    assert sum(1 for x in out.splitlines() if x.startswith(b"ack ")) == 50
