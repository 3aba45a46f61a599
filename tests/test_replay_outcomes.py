"""The log records outcomes, and replay applies them without deciding anything again.

Before, the log of a consolidation said only "consolidate" and replay re-ran the merge
search: near-tied pairs could flip on reopen (reliability probe, defect 10), and dedup
re-decided aliases from a hash map rebuilt differently (defect 6). Now prune ids, merge
pairs and dedup aliases are in the records; these tests make every decision function
raise during reopen and check the reopened store is the live one bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import persist
from m2m_gpu.crashtest import digest
from m2m_gpu.store import learning, ops
from m2m_gpu.store.ops import Add

D = 8


def _forbid_decisions(monkeypatch):
    def decided(*args, **kwargs):
        raise AssertionError("replay decided instead of applying the logged outcome")

    for name in ("plan_merge_round", "under_prune", "prune_share_reached", "orient_pairs"):
        monkeypatch.setattr(learning, name, decided)
    monkeypatch.setattr(Add, "_dedup", decided)


def _log_ops(path) -> list:
    gen = persist.read_manifest(path)["generation"]
    recs, _, _ = persist.read_wal(path / persist.wal_name(gen), gen)
    return recs


def _pairs(n: int, seed: int, gap: float = 1e-3) -> np.ndarray:
    """``n`` pairs of nearly equal unit vectors (merge candidates), far from each other."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, D)).astype(np.float32)
    twin = base + gap * rng.standard_normal((n, D)).astype(np.float32)
    return np.concatenate([base, twin])


def test_consolidation_is_logged_as_prunes_and_merge_pairs_and_replayed_as_such(
        tmp_path, monkeypatch):
    path = tmp_path / "s"
    s = m2m_gpu.SplatStore(D, path=path, backend="cpu", merge_radius=0.05,
                           auto_consolidate=False, alpha_prune=0.05)
    x = _pairs(40, seed=1)
    s.add(x, ids=[f"p{i}" for i in range(80)])
    s.add(np.eye(D, dtype=np.float32)[:2], ids=["weak1", "weak2"])
    for _ in range(40):  # alpha of the weak ones under alpha_prune
        s.feedback(np.eye(D, dtype=np.float32)[3], irrelevant=["weak1", "weak2"])
    report = s.consolidate()
    assert sorted(report.pruned) == ["weak1", "weak2"] and len(report.merged) == 40
    names = [r.op for r in _log_ops(path)]
    assert "prune" in names and "merge" in names and "consolidate" not in names
    merge_recs = [r for r in _log_ops(path) if r.op == "merge"]
    logged = [tuple(p) for r in merge_recs for p in r.header["merged"]]
    assert logged == report.merged  # the pairs themselves, in the order applied
    want = digest(s)
    s.close()
    _forbid_decisions(monkeypatch)
    again = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert digest(again) == want
    again.check_integrity()
    again.close()


def test_automatic_consolidation_is_its_own_logged_operation(tmp_path, monkeypatch):
    path = tmp_path / "s"
    s = m2m_gpu.SplatStore(D, path=path, backend="cpu", half_life=1.0, alpha_prune=0.1)
    s.add(np.random.default_rng(3).standard_normal((30, D)).astype(np.float32))
    report = s.decay(10.0)  # 2^-10 < alpha_prune: the decay prunes every splat
    assert len(report.pruned) == 30 and len(s) == 0
    assert [r.op for r in _log_ops(path)][-3:] == ["decay", "prune", "end"]
    s.close()
    _forbid_decisions(monkeypatch)
    again = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert len(again) == 0 and again.clock == 10.0
    again.close()


def test_dedup_aliases_are_logged_and_an_upsert_keeps_the_digest_map_current(tmp_path,
                                                                             monkeypatch):
    """Probe defect 6: add(v, 'a'); upsert 'a' with w; checkpoint; add(w, 'b'). Live, 'b'
    used to be a splat of its own, and after a reopen an alias of 'a' (the map rebuilt
    from the stored vectors had w). Now the upsert registers w at once: 'b' is an alias
    of 'a' in both, and the alias is in the record."""
    path = tmp_path / "s"
    v, w = np.eye(D, dtype=np.float32)[:2]
    s = m2m_gpu.SplatStore(D, path=path, backend="cpu", dedup=True)
    s.add(v, ids=["a"], metadata={"who": "a"})
    s.add(w, ids=["a"], metadata={"who": "a2"})
    s.checkpoint()
    s.add(w, ids=["b"], metadata={"who": "b"})
    assert s.aliases() == {"b": "a"} and s.get("b")[0]["metadata"] == {"who": "a2"}
    (rec,) = [r for r in _log_ops(path) if r.op == "add"]
    assert rec.header["aliases"] == [["b", "a"]] and rec.header["ids"] == []
    want = digest(s), s.aliases()
    s.close()
    _forbid_decisions(monkeypatch)
    again = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert (digest(again), again.aliases()) == want
    again.close()


def test_a_consolidation_a_crash_left_unfinished_is_dropped_whole(tmp_path, caplog):
    """Its records are one group: replay applies it only with its end record, so a crash
    between the prune and the merge rounds (or among the rounds) leaves the store as it
    was before the consolidation, never half-consolidated; the open cuts the group."""
    path = tmp_path / "s"
    s = m2m_gpu.SplatStore(D, path=path, backend="cpu", merge_radius=0.05,
                           auto_consolidate=False, alpha_prune=0.05)
    s.add(_pairs(10, seed=7), ids=list(range(20)))
    s.add(np.eye(D, dtype=np.float32)[:1], ids=["weak"])
    for _ in range(40):
        s.feedback(np.eye(D, dtype=np.float32)[3], irrelevant=["weak"])
    before = digest(s)
    report = s.consolidate()
    assert report.pruned == ["weak"] and len(report.merged) == 10
    s.close()
    recs = _log_ops(path)
    assert [r.op for r in recs][-4:] == ["prune", "merge", "merge", "end"]
    prune = [r for r in recs if r.op == "prune"][0]
    assert prune.header["group"] == "begin"
    wal = path / persist.wal_name(1)
    with open(wal, "r+b") as f:  # the crash: after the prune and one merge round
        f.truncate([r.offset for r in recs if r.op == "merge"][1])
    again = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert digest(again) == before and "did not finish" in caplog.text
    assert wal.stat().st_size == prune.offset  # cut where the group began
    again.add(np.ones(D, np.float32), ids=["after"])  # and the log goes on from there
    again.close()
    assert "after" in m2m_gpu.SplatStore.open(path, backend="cpu", mode="r")


def test_the_dedup_map_does_not_grow_with_deleted_splats():
    """Probe: 25,000 map entries for 2,050 splats after 20K add/delete cycles."""
    s = m2m_gpu.SplatStore(D, backend="cpu", dedup=True)
    rng = np.random.default_rng(4)
    for i in range(300):
        s.add(rng.standard_normal((4, D)).astype(np.float32), ids=[f"{i}-{j}" for j in range(4)])
        s.delete([f"{i}-{j}" for j in range(3)])
    table = s._st.table
    assert len(s) == 300 and len(table.hashes) == 300 and len(table.hash_of) == 300


def test_a_log_of_format_version_1_is_replayed_by_deciding_and_folded_into_a_checkpoint(
        tmp_path):
    """Stores written before outcomes were logged still open: their "consolidate"
    records and automatic consolidations are decided at replay, as then, and the first
    writable open rewrites the store in format 2."""
    path = tmp_path / "old"
    s = m2m_gpu.SplatStore(D, path=path, backend="cpu", merge_radius=0.05,
                           auto_consolidate=False)
    s.add(_pairs(10, seed=5), ids=list(range(20)))
    s.close()
    wal = persist.Wal(path / persist.wal_name(1), 1, "every", create=False)
    wal.append("consolidate", {"reason": "old style"}, [])
    wal.close()
    man = persist.read_manifest(path)
    man["format_version"] = 1
    man.pop("manifest_crc32", None)
    man["manifest_crc32"] = persist.manifest_crc32(man)
    (path / "manifest.json").write_text(__import__("json").dumps(man))
    again = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert len(again) == 10 and len(again.aliases()) == 10
    assert persist.read_manifest(path)["format_version"] == persist.FORMAT_VERSION
    assert again.generation == 2 and _log_ops(path) == []
    again.close()


def test_a_change_that_fails_while_applied_is_cut_from_the_log(tmp_path, monkeypatch):
    """The write raised, so it is not there after a reopen; the store refuses writes
    until then (its memory may hold part of the change)."""
    path = tmp_path / "s"
    s = m2m_gpu.SplatStore(D, path=path, backend="cpu")
    s.add(np.ones((2, D), np.float32), ids=["kept1", "kept2"])

    def out_of_memory(self, st):
        raise MemoryError("device memory ran out half-way")

    monkeypatch.setattr(ops.Delete, "apply", out_of_memory)
    with pytest.raises(MemoryError):
        s.delete("kept1")
    with pytest.raises(OSError, match="failed part-way"):
        s.add(np.ones(D, np.float32), ids=["later"])
    monkeypatch.undo()
    s.close()
    again = m2m_gpu.SplatStore.open(path, backend="cpu")
    assert sorted(again.ids()) == ["kept1", "kept2"]
    again.close()


@pytest.mark.parametrize("case", ["clock_nan", "decay_beyond_float32", "remove_float_ids",
                                  "remove_uint64_max"])
def test_inputs_the_probe_found_accepted_are_refused(case):
    if case == "clock_nan":
        with pytest.raises(m2m_gpu.InvalidInputError, match="clock"):
            m2m_gpu.SplatStore(4, backend="cpu", clock=float("nan"))
        return
    if case == "decay_beyond_float32":
        s = m2m_gpu.SplatStore(4, backend="cpu")
        s.add(np.ones((2, 4), np.float32))
        with pytest.raises(m2m_gpu.InvalidInputError, match="float32"):
            s.decay(1e39, force=True)
        s.check_integrity()  # alpha was not turned into NaN
        return
    index = m2m_gpu.IndexFlatL2(4, backend="cpu")
    index.add(np.ones((30, 4), np.float32))
    bad = [10.7, 20.2] if case == "remove_float_ids" else np.array([2**64 - 1], np.uint64)
    with pytest.raises(m2m_gpu.InvalidInputError):
        index.remove_ids(bad)
    assert index.ntotal == 30


def test_a_record_that_does_not_apply_is_refused_or_moved_aside_with_repair(tmp_path):
    """Probe defect 4: a feedback record naming an id deleted before it (journal order
    not apply order, in a log from before the locks) made the store unopenable for good.
    Now the open names the record and changes nothing; ``repair=True`` keeps the records
    before it and moves the rest aside."""
    path = tmp_path / "s"
    s = m2m_gpu.SplatStore(D, path=path, backend="cpu")
    s.add(np.eye(D, dtype=np.float32)[:3], ids=["u", "v", "w"])
    s.delete("v")
    s.close()
    wal = persist.Wal(path / persist.wal_name(1), 1, "every", create=False)
    wal.append("feedback", {"rel": [["v"]], "irr": [[]]}, [np.eye(D, dtype=np.float32)[:1]])
    wal.append("delete", {"ids": ["w"]}, [])
    wal.close()
    size = (path / persist.wal_name(1)).stat().st_size
    with pytest.raises(m2m_gpu.StoreFormatError, match="'feedback' record at byte"):
        m2m_gpu.SplatStore.open(path, backend="cpu")
    assert (path / persist.wal_name(1)).stat().st_size == size  # nothing changed
    again = m2m_gpu.SplatStore.open(path, backend="cpu", repair=True)
    assert sorted(again.ids()) == ["u", "w"]  # the delete after the bad record is aside
    assert list(path.glob("wal-1.log.corrupt-*"))
    again.close()


def test_a_failing_automatic_consolidation_never_fails_the_write_that_triggered_it(
        tmp_path, monkeypatch):
    """The add past ``capacity`` is logged and applied before its consolidation runs: if
    the consolidation fails, the add still returns (it is there after reopen, as its
    caller was told), and since the failed group changed nothing, writes go on."""
    path = tmp_path / "s"
    s = m2m_gpu.SplatStore(4, backend="cpu", path=path, capacity=2, merge_radius=0.5)
    s.add(np.eye(4, dtype=np.float32)[:2], ids=["a", "b"])

    def out_of_memory(st):
        raise MemoryError("device memory ran out")

    monkeypatch.setattr(learning, "plan_merge_round", out_of_memory)
    assert s.add(np.eye(4, dtype=np.float32)[2:3], ids=["c"]) == ["c"]
    monkeypatch.undo()
    s.add(np.eye(4, dtype=np.float32)[3:], ids=["d"])
    s.close()
    assert sorted(m2m_gpu.SplatStore.open(path, backend="cpu", mode="r").ids()) == \
        ["a", "b", "c", "d"]


def test_dedup_returns_ids_in_the_order_of_the_rows():
    v, w, e = np.eye(4, dtype=np.float32)[:3]
    s = m2m_gpu.SplatStore(4, backend="cpu", dedup=True)
    assert s.add(np.stack([v, v, w]), ids=["x", "y", "z"]) == ["x", "y", "z"]
    got = s.add(np.stack([v, w, e]))  # generated ids, two of them aliases
    assert s.get(got)[2]["vector"].tolist() == e.tolist()
    assert [s.aliases().get(i, i) for i in got[:2]] == ["x", "z"]


def test_the_dedup_map_picks_the_same_target_live_and_after_a_reopen(tmp_path):
    """Several stored ids can hold one vector; the alias target is the one in the lowest
    slot, by the same rule whether the map was kept live or rebuilt from a checkpoint."""
    v, w = np.eye(4, dtype=np.float32)[:2]

    def calls(s):
        s.delete(["a"])
        s.add(v, ids=["c"])
        return sorted(s.ids()), s.aliases()

    def setup(path):
        s = m2m_gpu.SplatStore(4, backend="cpu", path=path, dedup=True)
        s.add(np.stack([v, w]), ids=["a", "b"])
        s.add(v, ids=["b"])
        s.add(v, ids=["a"])
        s.checkpoint()
        return s

    live = calls(setup(tmp_path / "live"))
    setup(tmp_path / "reopened").close()
    assert calls(m2m_gpu.SplatStore.open(tmp_path / "reopened", backend="cpu")) == live
