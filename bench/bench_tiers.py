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
    """GB/s of the copy the streamed blocks go through, on this backend."""
    host = np.ones(nbytes // 4, dtype=np.float32)
    if be.name == "cuda":
        import cupy as cp
        import cupyx

        pinned = cupyx.empty_pinned(host.shape, dtype=np.float32)
        pinned[:] = host
        dev = cp.empty(host.shape, dtype=cp.float32)

        def run():
            dev.set(pinned)
            cp.cuda.get_current_stream().synchronize()

        what = "host-to-device, page-locked (cupy set)"
    elif be.name == "vulkan":
        def run():
            be.from_host(host)

        what = "host-to-device (kp tensor + OpTensorSyncDevice)"
    else:
        dst = np.empty_like(host)

        def run():
            np.copyto(dst, host)

        what = "host memcpy (np.copyto)"
    t = timeit(run, repeat)
    return {"what": what, "bytes": nbytes, "gb_per_s": nbytes / t["median_s"] / 1e9}


def evict(store) -> None:
    """Drop the cold tier's file pages from the page cache (clean pages only: fsync first)."""
    cold = store._rows._cold
    paths = [cold._spill_path] if cold._spill_path is not None else []
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> int:
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
    args = ap.parse_args()
    be = backends.get_backend(args.backend)
    n, d = args.n, args.d
    X = m2m_gpu.synthetic(n, d, seed=4, kind="clustered", spread=0.3)
    Q = m2m_gpu.synthetic(args.m, d, seed=4, kind="clustered", spread=0.3, part="queries")
    row = 4 * d
    layouts = {
        "memory": None,
        "hot+warm": {"hot_bytes": n // 4 * row, "block_bytes": args.block_mb << 20},
        "hot+warm+cold": {"hot_bytes": n // 4 * row, "warm_bytes": n // 4 * row,
                          "block_bytes": args.block_mb << 20},
    }
    bw = copy_bandwidth(be)
    print(f"{be.name} ({be.info.device}): n={n:,} d={d} batch={args.m} k={args.k}; "
          f"copy bandwidth {bw['gb_per_s']:.1f} GB/s ({bw['what']})", flush=True)
    res = {"backend": be.info.as_dict(), "n": n, "d": d, "m": args.m, "k": args.k,
           "copy_bandwidth": bw, "evict": args.evict, "layouts": []}
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
    res["meta"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "git": git_revision(), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "python": platform.python_version()}
    tag = "-evict" if args.evict else ""
    out = Path(args.out) if args.out else \
        RESULTS / f"tiers-{be.name}-n{n}-d{d}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
