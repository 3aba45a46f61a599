"""Crash test of a store on a path: a child process writes (adds, feedback, deletes, decay)
in a loop, acknowledging each write on stdout once the call has returned, and is killed
with SIGKILL at a random moment; the store is then reopened and compared with a shadow
store that applied exactly the acknowledged writes (plus, possibly, the one write in flight
when the child died). Some writes are checkpoints, so kills also land inside checkpoints.
Repeated ``runs`` times on the same directory.

    python -m m2m_gpu.crashtest --runs 500 [--dir DIR] [--fsync every|batch|off] [--tiered]

``--tiered`` opens the store (child and parent) with tiny hot and warm budgets, so most
vectors live in the cold tier: the checkpoint's memory-mapped vectors file and the spill.

``tests/test_persist.py`` runs it 50 times. Every write is a function of (run, op index) and
of the writes acknowledged before it, so the parent can replay them exactly.
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


def plan(run: int, i: int, alive: list) -> tuple[str, dict]:
    """The i-th write of a run, given the ids this run added and has not deleted."""
    rng = np.random.default_rng([run, i])
    kind = "add" if i < 3 or not alive else rng.choice(
        ["add", "add", "feedback", "delete", "decay", "checkpoint"], p=[.3, .2, .2, .15, .1, .05])
    if kind == "add":
        ids = [f"{run}-{i}-{j}" for j in range(3)]
        return "add", {"vectors": rng.standard_normal((3, DIM)).astype(np.float32),
                       "ids": ids, "metadata": {"run": run, "op": i}}
    if kind == "feedback":
        rel = [alive[int(rng.integers(len(alive)))]]
        return "feedback", {"queries": rng.standard_normal(DIM).astype(np.float32),
                            "relevant": rel}
    if kind == "delete":
        return "delete", {"ids": [alive[int(rng.integers(len(alive)))]]}
    if kind == "checkpoint":
        return "checkpoint", {}
    return "decay", {"dt": float(rng.uniform(1, 1000))}


def apply(store, run: int, i: int, alive: list) -> None:
    kind, a = plan(run, i, alive)
    if kind == "add":
        store.add(a["vectors"], ids=a["ids"], metadata=a["metadata"])
        alive.extend(a["ids"])
    elif kind == "feedback":
        store.feedback(a["queries"], relevant=a["relevant"])
    elif kind == "delete":
        store.delete(a["ids"])
        alive.remove(a["ids"][0])
    elif kind == "checkpoint":
        if store.path is not None:  # the shadow store lives in memory only
            store.checkpoint()
    else:
        store.decay(store.clock + a["dt"])


def writer(path: str, run: int, fsync: str, tiers: dict | None = None) -> None:
    """The child: open, then write forever, acknowledging each write."""
    from m2m_gpu import SplatStore

    store = SplatStore.open(path, backend="cpu", fsync=fsync, tiers=tiers)
    alive: list = []
    print("ready", flush=True)
    i = 0
    while True:
        apply(store, run, i, alive)
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
               max_delay: float = 0.3, log=print, tiers: dict | None = None) -> dict:
    """Run the crash test; raises AssertionError on the first lost or corrupted write."""
    from m2m_gpu import SplatStore

    root = Path(root)
    SplatStore(DIM, metric="l2", backend="cpu", path=root).close()
    shadow = SplatStore(DIM, metric="l2", backend="cpu")
    rnd = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    totals = {"runs": 0, "acked": 0, "in_flight_applied": 0, "torn_tails": 0}
    for run in range(runs):
        child = subprocess.Popen([sys.executable, "-m", "m2m_gpu.crashtest", "--child",
                                  "--dir", str(root), "--run", str(run), "--fsync", fsync,
                                  "--tiers", json.dumps(tiers)],
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
        alive: list = []
        for i in range(acked):
            apply(shadow, run, i, alive)
        store = SplatStore.open(root, backend="cpu", fsync=fsync, tiers=tiers)
        store.check_integrity()
        got = digest(store)
        if got != digest(shadow):  # the write in flight at the kill may have landed
            apply(shadow, run, acked, alive)
            totals["in_flight_applied"] += 1
            assert got == digest(shadow), f"run {run}: acknowledged writes lost or altered"
        store.close()
        totals["runs"] += 1
        totals["acked"] += acked
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
    args = ap.parse_args()
    if args.child:
        writer(args.dir, args.run, args.fsync, json.loads(args.tiers))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "store"
        t0 = time.perf_counter()
        totals = crash_loop(root, args.runs, args.fsync,
                            tiers=TIERED if args.tiered else None)
        print(f"{totals['runs']} kills, {totals['acked']} acknowledged writes, all present "
              f"({totals['in_flight_applied']} in-flight writes had landed) in "
              f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
