"""Crash test of a store on a path: a child process writes (adds, feedback, deletes, decay)
in a loop, acknowledging each write on stdout once the call has returned, and is killed
with SIGKILL at a random moment; the store is then reopened and compared with a shadow
store that applied exactly the acknowledged writes (plus, possibly, the one write in flight
when the child died). Some writes are checkpoints, so kills also land inside checkpoints.
Repeated ``runs`` times on the same directory.

    python -m m2m_gpu.crashtest --runs 500 [--dir DIR] [--fsync every|batch|off] [--tiered]
                                [--profile plain|learning|hrm2]

``--tiered`` opens the store (child and parent) with tiny hot and warm budgets, so most
vectors live in the cold tier: the checkpoint's memory-mapped vectors file and the spill.

``--profile learning`` adds dedup aliases, near duplicates, irrelevant feedback and
explicit consolidations (prunes and merge rounds); ``--profile hrm2`` does the same on a
store with an HRM2 index. The test suite runs 50 kills in all: plain, learning, hrm2 and
tiered hrm2 (``tests/test_persist.py``) and tiered plain (``tests/test_tiers.py``). Every
write is a function of (run, op index) and of the store's state (its ids), which the
parent's shadow store shares, so the parent can replay them exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 8
TIERED = {"hot_bytes": 6 * 4 * DIM, "warm_bytes": 5 * 4 * DIM, "block_bytes": 7 * 4 * DIM,
          "rebalance_every": 3}  # most splats cold; moves on most writes
# What the store is and which writes the child makes. "learning" and "hrm2" add exact
# duplicates (dedup aliases), near duplicates and explicit consolidations (prunes and
# merge rounds, each consolidation one group in the log), and irrelevant feedback that
# pushes alpha under alpha_prune; "hrm2" also keeps an HRM2 index (trained at 40 splats,
# re-laid out as the store changes).
LEARNING = {"merge_radius": 0.3, "dedup": True, "alpha_prune": 0.95,  # one irrelevant
            "auto_consolidate": False}  # feedback (alpha 0.9) makes a splat prunable
PROFILES = {
    "plain": {},
    "learning": {"options": LEARNING},
    "hrm2": {"options": LEARNING, "index": "hrm2",
             "index_options": {"train_min": 40, "n1": 3, "n2": 3}},
}
POOL = np.random.default_rng(12345).standard_normal((24, DIM)).astype(np.float32)


def open_args(profile: str) -> dict:
    p = PROFILES[profile]
    return {"index": p.get("index", "flat"), "index_options": p.get("index_options"),
            **p.get("options", {})}


def plan(run: int, i: int, ids: list, profile: str = "plain") -> tuple[str, dict]:
    """The i-th write of a run, given the store's ids (sorted): the same in the child and
    in the parent's shadow store, which hold the same splats."""
    rng = np.random.default_rng([run, i])
    learning = profile != "plain"
    kinds, p = ["add", "add", "feedback", "delete", "decay", "checkpoint"], \
        [.3, .2, .2, .15, .1, .05]
    if learning:
        kinds, p = kinds + ["consolidate"], [.25, .2, .2, .1, .1, .05, .1]
    kind = "add" if i < 3 or not ids else rng.choice(kinds, p=p)
    if kind == "add":
        new = [f"{run}-{i}-{j}" for j in range(3)]
        x = rng.standard_normal((3, DIM)).astype(np.float32)
        if learning:  # an exact duplicate of a pool vector, and a near one
            x[0] = POOL[int(rng.integers(len(POOL)))]
            x[1] = POOL[int(rng.integers(len(POOL)))] + 0.05 * x[1]
        return "add", {"vectors": x, "ids": new, "metadata": {"run": run, "op": i}}
    if kind == "feedback":
        target = [ids[int(rng.integers(len(ids)))]]
        side = "irrelevant" if learning and rng.random() < 0.5 else "relevant"
        return "feedback", {"queries": rng.standard_normal(DIM).astype(np.float32),
                            side: target}
    if kind == "delete":
        return "delete", {"ids": [ids[int(rng.integers(len(ids)))]]}
    if kind in ("checkpoint", "consolidate"):
        return kind, {}
    return "decay", {"dt": float(rng.uniform(1, 1000))}


def apply(store, run: int, i: int, profile: str = "plain") -> None:
    kind, a = plan(run, i, sorted(store.ids(), key=repr), profile)
    if kind == "add":
        store.add(a["vectors"], ids=a["ids"], metadata=a["metadata"])
    elif kind == "feedback":
        store.feedback(a.pop("queries"), **a)
    elif kind == "delete":
        store.delete(a["ids"])
    elif kind == "checkpoint":
        if store.path is not None:  # the shadow store lives in memory only
            store.checkpoint()
    elif kind == "consolidate":
        store.consolidate()
    else:
        store.decay(store.clock + a["dt"])


def writer(path: str, run: int, fsync: str, tiers: dict | None = None,
           profile: str = "plain") -> None:
    """The child: open, then write forever, acknowledging each write."""
    from m2m_gpu import SplatStore

    store = SplatStore.open(path, backend="cpu", fsync=fsync, tiers=tiers)
    print("ready", flush=True)
    i = 0
    while True:
        apply(store, run, i, profile)
        print(f"ack {i}", flush=True)
        i += 1


def digest(store) -> tuple:
    """Everything observable about a store, comparable exactly."""
    ids = sorted(store.ids(), key=repr)
    recs = store.get(ids)
    return (tuple(ids), tuple(sorted(store.aliases().items(), key=repr)), store.clock,
            tuple((r["vector"].tobytes(), r["alpha"], r["kappa"], repr(r["metadata"]),
                   r["hits"]) for r in recs))


def crash_loop(root: Path, runs: int, fsync: str = "every", seed: int = 0,
               max_delay: float = 0.3, log=print, tiers: dict | None = None,
               profile: str = "plain") -> dict:
    """Run the crash test; raises AssertionError on the first lost or corrupted write."""
    from m2m_gpu import SplatStore

    root = Path(root)
    SplatStore(DIM, metric="l2", backend="cpu", path=root, **open_args(profile)).close()
    shadow = SplatStore(DIM, metric="l2", backend="cpu", **open_args(profile))
    rnd = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    totals = {"runs": 0, "acked": 0, "in_flight_applied": 0, "aliases": 0}
    for run in range(runs):
        child = subprocess.Popen([sys.executable, "-m", "m2m_gpu.crashtest", "--child",
                                  "--dir", str(root), "--run", str(run), "--fsync", fsync,
                                  "--tiers", json.dumps(tiers), "--profile", profile],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        line = child.stdout.readline()
        if line.strip() != b"ready":
            child.kill()
            raise AssertionError(f"run {run}: child did not start: {line!r} "
                                 f"{child.stderr.read().decode()[-2000:]}")
        time.sleep(rnd.uniform(0, max_delay))
        out, err = kill_and_read(child)
        assert child.returncode == -signal.SIGKILL, (child.returncode, err.decode()[-2000:])
        acked = sum(1 for x in out.splitlines() if x.startswith(b"ack "))
        for i in range(acked):
            apply(shadow, run, i, profile)
        store = SplatStore.open(root, backend="cpu", fsync=fsync, tiers=tiers)
        store.check_integrity()
        got = digest(store)
        if got != digest(shadow):  # the write in flight at the kill may have landed
            apply(shadow, run, acked, profile)
            totals["in_flight_applied"] += 1
            assert got == digest(shadow), f"run {run}: acknowledged writes lost or altered"
        store.close()
        totals["runs"] += 1
        totals["acked"] += acked
        totals["aliases"] = len(shadow.aliases())
        log(f"run {run}: {acked} writes acknowledged, store has {len(shadow)} splats")
    return totals


def kill_and_read(child) -> tuple[bytes, bytes]:
    """SIGKILL ``child`` and return the rest of its stdout and stderr. Read through the
    same buffered files that ``readline()`` used: ``communicate()`` reads the raw pipes
    and misses acknowledgements already buffered together with "ready" (the harness
    then counted fewer acknowledged writes than the child had made)."""
    child.send_signal(signal.SIGKILL)
    out, err = child.stdout.read(), child.stderr.read()
    child.wait()
    return out, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--fsync", default="every", choices=("every", "batch", "off"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tiers", default="null", help=argparse.SUPPRESS)
    ap.add_argument("--tiered", action="store_true", help="tiny hot/warm budgets")
    ap.add_argument("--profile", default="plain", choices=sorted(PROFILES),
                    help="plain writes; learning: + dedup, merges, prunes, consolidation; "
                         "hrm2: learning with an HRM2 index")
    args = ap.parse_args()
    if args.child:
        writer(args.dir, args.run, args.fsync, json.loads(args.tiers), args.profile)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "store"
        t0 = time.perf_counter()
        totals = crash_loop(root, args.runs, args.fsync,
                            tiers=TIERED if args.tiered else None, profile=args.profile)
        print(f"{totals['runs']} kills, {totals['acked']} acknowledged writes, all present "
              f"({totals['in_flight_applied']} in-flight writes had landed) in "
              f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
