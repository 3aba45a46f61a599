#!/usr/bin/env python3
"""Durable write throughput of a SplatStore on a path, per fsync policy, against the
machine's raw fsync rate measured in the same run (same directory, same file system).

Cases: single-vector adds, adds of 100 vectors, and single feedback events, d = 64, each
for ``--seconds`` (after a warm-up), with fsync ``every``, ``batch`` and ``off``, plus the
same writes on an in-memory store (no log) as the ceiling. The raw reference: a loop of
64-byte ``os.write`` + ``os.fsync`` on one file. Every store is reopened afterwards and
compared with the written state (all writes present) before its numbers are reported.

Then searches of one store from 1 and from 2 threads in the same run (batches of 16
queries, k = 10, 50,000 splats), and from 2 threads serialised by a lock of the caller's
(the baseline: the store's old one-lock model). Searches hold the store's read lock and
run side by side; on the cpu backend each search already spreads over every core through
the backend's pool, so on a small machine side by side cannot give much more.

    python bench/bench_persist.py [--dir DIR] [--seconds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import git_revision  # noqa: E402

from m2m_gpu import SplatStore  # noqa: E402
from m2m_gpu.crashtest import digest  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
D = 64


def raw_fsync_rate(directory: Path, seconds: float) -> float:
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = b"x" * 64
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            os.write(fd, block)
            os.fsync(fd)
            n += 1
    finally:
        os.close(fd)
        path.unlink()
    return n / (time.perf_counter() - t0)


def run_case(kind: str, store, seconds: float, rng) -> tuple[int, float]:
    vecs = rng.standard_normal((100_000, D)).astype(np.float32)
    n, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if kind == "add1":
            store.add(vecs[i % len(vecs)], ids=[f"a{i}"])
            n += 1
        elif kind == "add100":
            j = (i * 100) % (len(vecs) - 100)
            store.add(vecs[j : j + 100], ids=[f"b{i}-{r}" for r in range(100)])
            n += 100
        else:
            store.feedback(vecs[i % len(vecs)], relevant=[f"seed{i % 1000}"])
            n += 1
        i += 1
    return n, time.perf_counter() - t0


def search_threads(seconds: float, rng) -> dict:
    import threading

    store = SplatStore(D, backend="cpu")
    store.add(rng.standard_normal((50_000, D)).astype(np.float32))
    queries = rng.standard_normal((64, 16, D)).astype(np.float32)
    want = store.search(queries[0], k=10).ids  # one answer to check the threads against

    one_at_a_time = threading.Lock()  # the baseline: searches serialised by the caller

    def search(q, serialise: bool):
        if not serialise:
            return store.search(q, k=10)
        with one_at_a_time:
            return store.search(q, k=10)

    def rate(threads: int, serialise: bool = False) -> float:
        done, stop = [0] * threads, time.perf_counter() + seconds

        def loop(t: int) -> None:
            i = t
            while time.perf_counter() < stop:
                res = search(queries[i % len(queries)], serialise)
                if i % len(queries) == 0:
                    assert res.ids == want, "a concurrent search gave another answer"
                done[t] += 1
                i += threads
        ts = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(done) / (time.perf_counter() - t0)

    rate(1)  # warm-up
    one, two, two_serial = rate(1), rate(2), rate(2, serialise=True)
    print(f"search   1 thread {one:8,.1f} batches/s, 2 threads {two:8,.1f} batches/s "
          f"({two / one:.2f}x), 2 threads one at a time {two_serial:8,.1f} batches/s "
          f"(side by side: {two / two_serial:.2f}x)", flush=True)
    return {"one_thread_batches_per_s": one, "two_threads_batches_per_s": two,
            "two_threads_serialised_batches_per_s": two_serial, "ratio": two / one,
            "ratio_to_serialised": two / two_serial, "batch": 16, "k": 10,
            "splats": 50_000, "cpus": os.cpu_count()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="directory on the file system to measure")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="m2m-persist-"))
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds = rng.standard_normal((1000, D)).astype(np.float32)
    raw = raw_fsync_rate(base, args.seconds)
    print(f"raw fsync: {raw:,.0f} fsyncs/s ({base})", flush=True)
    res = {"raw_fsync_per_s": raw, "cases": [], "dir": str(base)}
    for kind in ("add1", "add100", "feedback"):
        for policy in ("memory", "every", "batch", "off"):
            path = base / f"{kind}-{policy}"
            shutil.rmtree(path, ignore_errors=True)
            store = SplatStore(D, backend="cpu", path=None if policy == "memory" else path,
                               fsync="every" if policy == "memory" else policy)
            store.add(seeds, ids=[f"seed{i}" for i in range(1000)])
            run_case(kind, store, min(0.2, args.seconds / 5), rng)  # warm-up
            n, t = run_case(kind, store, args.seconds, rng)
            ok = None
            if policy != "memory":  # every acknowledged write is on disk
                want = digest(store)
                store.close()
                ok = digest(SplatStore.open(path, backend="cpu")) == want
                assert ok, f"{kind}/{policy}: reopened store differs"
                shutil.rmtree(path)
            rate = n / t
            row = {"case": kind, "fsync": policy, "ops_per_s": rate, "ops": n, "seconds": t,
                   "vs_raw_fsync": rate / raw, "reopened_equal": ok}
            res["cases"].append(row)
            print(f"{kind:9s} {policy:7s} {rate:12,.0f} ops/s  ({rate / raw:6.2f}x raw fsync)",
                  flush=True)
    res["search_threads"] = search_threads(args.seconds, rng)
    res["meta"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "git": git_revision(), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "python": platform.python_version()}
    out = Path(args.out) if args.out else RESULTS / "persist-cpu2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
