#!/usr/bin/env python3
"""Exact search over a store 4x larger than its hot budget, against the same store held
fully in memory (one tier), measured in the same run.

Layouts (all from the same writes, Philox data, ``n`` splats of ``d`` float32):

* ``memory``: the default store, every vector hot (the baseline);
* ``hot+warm``: hot budget n/4, the rest in host RAM (page-locked on cuda), streamed;
* ``hot+warm+cold``: hot n/4, warm n/4, the rest in the cold file (memory-mapped),
  streamed; with ``--evict`` the cold file's pages are dropped from the OS page cache
  (``posix_fadvise DONTNEED``) before every timed search, so cold reads come from disk.

Every layout's results are checked to be identical (ids and scores) to the baseline's
before timing. Reported: queries/s (median of ``--repeat`` after a warm-up, device
synchronised), the ratio to ``memory``, bytes streamed per batch and the streaming rate,
against the machine's copy bandwidth measured in the same run (host memcpy on cpu,
host-to-device from page-locked memory on cuda, ``from_host`` on vulkan).

    python bench/bench_tiers.py [--backend auto|cpu|cuda|vulkan] [--n 400000] [--d 64]

``--index hrm2``: the same layouts for the HRM2 approximate index (``IndexHRM2(tiers=...)``,
default probing): hot cells are scanned in place, probed rows that are not hot are fetched
per batch; results are checked identical to the untiered index's (ids and distances) and
recall@k against exact search is reported. The placement policy is given ``--settle``
batches first, so that the cells the queries probe can become hot. ``--local``: the batch is
the ``m`` queries nearest to one query out of a pool of ``16 m`` (a working set concentrated
in one part of the space, as a session's queries are) instead of ``m`` spread over all of it.

``--open``: instead, write a store of ``n`` splats to a directory, then open it in fresh
processes with and without budgets (hot 1/16 of the vectors, warm 0: the rest stays in the
memory-mapped file) and report each process's open time, peak resident memory, and its
anonymous (heap) and file-backed (page cache, reclaimable) resident memory after the open.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import git_revision, timeit  # noqa: E402

import m2m_gpu  # noqa: E402
from m2m_gpu import SplatStore, backends  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def copy_bandwidth(be, nbytes: int = 64 << 20, repeat: int = 5) -> dict:
    """GB/s of the copy the streamed blocks go through, on this backend: its host-to-device
    copy (``Backend.limit_ops``), or a host memcpy where it computes in host memory. Bytes
    are counted once (not read + written)."""
    ops = be.limit_ops(nbytes)
    if "h2d" in ops:
        copy, what = ops["h2d"]

        def run():
            copy()
            be.synchronize()
    else:
        host = np.ones(nbytes // 4, dtype=np.float32)
        dst = np.empty_like(host)

        def run():
            np.copyto(dst, host)

        what = "host memcpy (np.copyto)"
    t = timeit(run, repeat)
    return {"what": what, "bytes": nbytes, "gb_per_s": nbytes / t["median_s"] / 1e9}


def evict(store) -> None:
    """Drop the cold tier's file pages from the page cache (clean pages only: fsync first)."""
    cold = store._st.arrays.rows._cold
    paths = [cold.spill_path] if cold.spill_path is not None else []
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def open_child(path: str, budget: str) -> None:
    import resource

    tiers = json.loads(budget)
    t0 = time.perf_counter()
    store = SplatStore.open(path, backend="cpu", tiers=tiers, verify=True)
    t = time.perf_counter() - t0
    status = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines() if ":" in line)
    mib = lambda key: int(status[key].split()[0]) / 1024  # noqa: E731 (kB)
    print(json.dumps({"open_s": t, "peak_rss_mib":
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "anon_rss_mib": mib("RssAnon"), "file_rss_mib": mib("RssFile"),
                      "tiers": {k: store.stats()["tiers"][k]["splats"]
                                for k in ("hot", "warm", "cold")}}))


def open_bench(args) -> int:
    import subprocess
    import tempfile

    n, d = args.n, args.d
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "store"
        s = SplatStore(d, metric="l2", backend="cpu", path=path, fsync="off")
        for a in range(0, n, 1 << 16):
            s.add(m2m_gpu.synthetic(min(1 << 16, n - a), d, seed=5, start=a))
        s.checkpoint()
        s.close()
        del s
        vec_mib = n * d * 4 / 2**20
        res = {"n": n, "d": d, "vectors_mib": vec_mib, "cases": []}
        budgets = {"no budgets": None,
                   "hot 1/16, warm 0": {"hot_bytes": n * d * 4 // 16, "warm_bytes": 0}}
        for name, tiers in budgets.items():
            out = subprocess.run([sys.executable, __file__, "--open-child", str(path),
                                  json.dumps(tiers)], capture_output=True, text=True,
                                 check=True).stdout
            row = {"case": name, **json.loads(out.strip().splitlines()[-1])}
            res["cases"].append(row)
            print(f"open {name:18s} {row['open_s']:6.2f} s, peak RSS "
                  f"{row['peak_rss_mib']:5.0f} MiB, now anonymous {row['anon_rss_mib']:5.0f} "
                  f"MiB + file-backed {row['file_rss_mib']:5.0f} MiB (vectors "
                  f"{vec_mib:.0f} MiB), tiers "
                  f"{row['tiers']}", flush=True)
    res["meta"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "git": git_revision(), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "python": platform.python_version()}
    out = Path(args.out) if args.out else RESULTS / f"tiers-open-cpu-n{n}-d{d}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


def hrm2_layouts(args, be, X, Q, layouts, bw, res) -> None:
    """Each layout of an IndexHRM2: identical to the untiered index, recall, q/s."""
    from m2m_gpu.hrm2 import IndexHRM2

    n = X.shape[0]
    _, exact = m2m_gpu.knn(Q, X, args.k, backend=be.name)
    ref = None
    base_qps = None
    for name, tiers in layouts.items():
        t0 = time.perf_counter()
        if ref is None:  # k-means once, on cpu (slow on lavapipe); every layout takes it
            first = IndexHRM2(args.d, backend="cpu")
            first.train(X)
        idx = IndexHRM2(args.d, backend=be.name, tiers=tiers)
        idx.copy_training(first)
        for a in range(0, n, 1 << 17):
            idx.add(X[a : a + (1 << 17)])
        build = time.perf_counter() - t0
        for _ in range(args.settle):  # the policy sees which cells these queries probe
            got = idx.search(Q, args.k)
        idx.hrm2.rebalance()
        got = idx.search(Q, args.k)
        ref = ref or got
        identical = np.array_equal(got[1], ref[1]) and np.array_equal(got[0], ref[0])
        assert identical, f"{name}: results differ from the untiered index"
        recall = float(np.mean([np.intersect1d(a, b).size / args.k
                                for a, b in zip(got[1], exact, strict=True)]))
        tm = idx.hrm2.tiers
        before = dict(tm.stats()["streamed"])

        def run(idx=idx):
            idx.search(Q, args.k)
            be.synchronize()

        t = timeit(run, args.repeat)
        after = tm.stats()
        calls = args.repeat + 1
        per_batch = (after["streamed"]["bytes"] - before["bytes"]) / calls
        qps = args.m / t["median_s"]
        base_qps = base_qps or qps
        rate = per_batch / t["median_s"] / 1e9
        scanned = float(idx.last_report.vectors.mean())
        res["layouts"].append({
            "layout": name, "tiers": tiers, "identical_to_memory": identical,
            "recall": recall, "qps": qps, "vs_memory": qps / base_qps, "build_s": build,
            "vectors_scanned_per_query": scanned, "streamed_bytes_per_batch": per_batch,
            "streamed_gb_per_s": rate, "streamed_vs_copy_bandwidth": rate / bw["gb_per_s"],
            "tier_splats": {k: after[k]["splats"] for k in ("hot", "warm", "cold")},
            "moves": {k: v for k, v in after["moves"].items() if v["splats"]}, "timing": t})
        print(f"{name:14s} {qps:10,.0f} q/s  {qps / base_qps:5.2f}x memory  recall@{args.k} "
              f"{recall:.3f}  streamed {per_batch / 2**20:7.1f} MiB/batch at "
              f"{rate * 1e3:7.1f} MB/s  identical={identical}", flush=True)
        idx.hrm2.tiers.close()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--open-child":
        open_child(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", help="cpu, cuda, vulkan or auto")
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--m", type=int, default=256, help="queries per batch")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--block-mb", type=int, default=64)
    ap.add_argument("--evict", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--index", default="flat", choices=["flat", "hrm2"])
    ap.add_argument("--settle", type=int, default=4, help="hrm2: batches before timing")
    ap.add_argument("--local", action="store_true", help="hrm2: a concentrated query batch")
    ap.add_argument("--open", action="store_true", help="measure opening a stored store")
    ap.add_argument("--dir", default=None, help="--open: where to write the store")
    args = ap.parse_args()
    if args.open:
        return open_bench(args)
    be = backends.get_backend(args.backend)
    n, d = args.n, args.d
    X = m2m_gpu.synthetic(n, d, seed=4, kind="clustered", spread=0.3)
    Q = m2m_gpu.synthetic(args.m, d, seed=4, kind="clustered", spread=0.3, part="queries")
    if args.local:
        pool = m2m_gpu.synthetic(16 * args.m, d, seed=4, kind="clustered", spread=0.3,
                                 part="queries")
        Q = pool[np.argsort(((pool - pool[0]) ** 2).sum(1), kind="stable")[: args.m]]
    row = 4 * d
    layouts = {
        "memory": None,
        "hot+warm": {"hot_bytes": n // 4 * row, "block_bytes": args.block_mb << 20},
        "hot+warm+cold": {"hot_bytes": n // 4 * row, "warm_bytes": n // 4 * row,
                          "block_bytes": args.block_mb << 20},
    }
    bw = copy_bandwidth(be)
    print(f"{be.name} ({be.info.device}): {args.index} n={n:,} d={d} batch={args.m} "
          f"k={args.k}; copy bandwidth {bw['gb_per_s']:.1f} GB/s ({bw['what']})", flush=True)
    res = {"backend": be.info.as_dict(), "index": args.index, "local": args.local,
           "n": n, "d": d, "m": args.m,
           "k": args.k, "copy_bandwidth": bw, "evict": args.evict, "layouts": []}
    if args.index == "hrm2":
        hrm2_layouts(args, be, X, Q, layouts, bw, res)
        return write(res, args, be)
    ref = None
    base_qps = None
    for name, tiers in layouts.items():
        t0 = time.perf_counter()
        store = SplatStore(d, metric="l2", backend=be.name, tiers=tiers)
        for a in range(0, n, 1 << 16):
            store.add(X[a : a + (1 << 16)])
        build = time.perf_counter() - t0
        got = store.search(Q, k=args.k)
        if ref is None:
            ref = got
        identical = got.ids == ref.ids and np.array_equal(got.scores, ref.scores)
        assert identical, f"{name}: results differ from the single-tier store"
        before = dict(store.stats()["tiers"]["streamed"])

        def run(store=store):
            if args.evict:
                evict(store)
            store.search(Q, k=args.k)
            be.synchronize()

        t = timeit(run, args.repeat)
        after = store.stats()["tiers"]
        calls = args.repeat + 1
        per_batch = (after["streamed"]["bytes"] - before["bytes"]) / calls
        qps = args.m / t["median_s"]
        base_qps = base_qps or qps
        rate = per_batch / t["median_s"] / 1e9
        entry = {"layout": name, "tiers": tiers, "identical_to_memory": identical,
                 "qps": qps, "vs_memory": qps / base_qps, "build_s": build,
                 "streamed_bytes_per_batch": per_batch, "streamed_gb_per_s": rate,
                 "streamed_vs_copy_bandwidth": rate / bw["gb_per_s"],
                 "tier_splats": {k: after[k]["splats"] for k in ("hot", "warm", "cold")},
                 "moves": {k: v for k, v in after["moves"].items() if v["splats"]},
                 "timing": t}
        res["layouts"].append(entry)
        print(f"{name:14s} {qps:10,.0f} q/s  {qps / base_qps:5.2f}x memory  "
              f"streamed {per_batch / 2**20:8.1f} MiB/batch at {rate * 1e3:7.1f} MB/s "
              f"({rate / bw['gb_per_s']:.2f} of copy bw)  identical={identical}", flush=True)
        store.close()
        del store
    return write(res, args, be)


def write(res: dict, args, be) -> int:
    n, d = args.n, args.d
    res["meta"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "git": git_revision(), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "python": platform.python_version()}
    tag = ("-hrm2" if args.index == "hrm2" else "") + ("-local" if args.local else "") + \
        ("-evict" if args.evict else "")
    out = Path(args.out) if args.out else \
        RESULTS / f"tiers-{be.name}-n{n}-d{d}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
