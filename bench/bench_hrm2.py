#!/usr/bin/env python3
"""HRM2 recall@10 versus queries per second, against faiss IndexIVFFlat and hnswlib, with
exact search as the reference, all measured in the same run.

Data (``--dataset``): ``clustered``: Philox clustered vectors (``--n``, ``--d``), 256 queries
from the same mixture, exact ground truth from ``m2m_gpu.knn``; ``text``: the Debian package
descriptions embedded with all-MiniLM-L6-v2 (scripts/build_text_dataset.py, built on first
use), queries in batches of 256, its stored exact ground truth. Sweeps: HRM2 ``p2`` (fixed and
adaptive probing), faiss IVF-Flat ``nprobe`` with as many lists as HRM2 has fine cells,
hnswlib ``ef`` (M = 16, ef_construction = 100). Each point: recall@10 and the median QPS of
``--repeat`` runs after a warm-up. Build times: HRM2 train + add vs IVF train + add vs HNSW
add. The summary gives, per recall target, the fastest swept point of each method reaching
it (no interpolation) and HRM2's QPS ratio to IVF and to exact search. Output: JSON and a
PNG plot in bench/results/.

    python bench/bench_hrm2.py --n 100000
    python bench/bench_hrm2.py --n 1000000
    python bench/bench_hrm2.py --dataset text
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
from bench_knn import git_revision, recall, timeit  # noqa: E402

import m2m_gpu  # noqa: E402
from m2m_gpu import backends  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def qps(fn, m, repeat):
    t = timeit(fn, repeat)
    return m / t["median_s"], t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("clustered", "text"), default="clustered")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--spread", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--skip-hnsw", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import faiss

    k = args.k
    be = backends.get_backend(args.backend)
    if args.dataset == "text":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
        import build_text_dataset as text

        ds = text.load(text.build(text.DEFAULT_OUT))
        x, q = ds["base"], ds["queries"][: (ds["queries"].shape[0] // args.m) * args.m]
        gt_all = ds["gt_ids"][: q.shape[0], :k]
        args.n, args.d = x.shape
    else:
        kw = dict(kind="clustered", clusters=args.clusters, spread=args.spread)
        x = m2m_gpu.synthetic(args.n, args.d, seed=7, **kw)
        q = m2m_gpu.synthetic(args.m, args.d, seed=7, part="queries", **kw)
    n, d, m = args.n, args.d, args.m
    batches = [q[i : i + m] for i in range(0, q.shape[0], m)]
    res = {"params": vars(args), "curves": {}, "build_s": {}, "exact": {}}
    if args.dataset == "text":
        res["dataset"] = ds["meta"]

    def run_all(search):  # every query batch: (ids, seconds per batch)
        return np.concatenate([search(b) for b in batches])

    flat = m2m_gpu.IndexFlatL2(d, backend=be.name)
    flat.add(x)
    gt = run_all(lambda b: flat.search(b, k)[1])
    if args.dataset == "text":  # the stored ground truth must agree with this exact search
        agree = recall(gt, gt_all)
        assert agree >= 0.999, f"exact search disagrees with the stored ground truth: {agree}"
        gt = gt_all
    q = batches[0]  # timing: the first batch of m queries; recall: every query
    res["exact"]["m2m_flat_qps"], _ = qps(lambda: flat.search(q, k), m, args.repeat)
    fflat = faiss.IndexFlatL2(d)
    fflat.add(x)
    res["exact"]["faiss_flat_qps"], _ = qps(lambda: fflat.search(q, k), m, args.repeat)
    print(f"exact: m2m {res['exact']['m2m_flat_qps']:.0f} qps, "
          f"faiss {res['exact']['faiss_flat_qps']:.0f} qps", flush=True)

    t0 = time.perf_counter()
    idx = m2m_gpu.IndexHRM2(d, backend=be.name)
    idx.train(x)
    idx.add(x)
    res["build_s"]["hrm2"] = time.perf_counter() - t0
    cells = idx.hrm2.fine.shape[0]
    res["hrm2_shape"] = {"n1": int(idx.hrm2.coarse.shape[0]), "fine_cells": int(cells),
                         "default_p1_p2": list(idx.probes())}
    print(f"hrm2 build {res['build_s']['hrm2']:.1f} s, {cells} fine cells", flush=True)
    for adaptive in (False, True):
        curve = []
        idx.adaptive = adaptive
        for p2 in (2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128):
            if p2 > cells:
                break
            idx.nprobe = p2
            I = run_all(lambda b: idx.search(b, k)[1])
            r = recall(I, gt)
            idx.search(q, k)  # the report of the timed batch
            rate, t = qps(lambda: idx.search(q, k), m, args.repeat)
            curve.append({"p2": p2, "recall": r, "qps": rate,
                          "vectors_scanned_mean": float(idx.last_report.vectors.mean()),
                          "time": t})
            print(f"hrm2{' adaptive' if adaptive else ''} p2={p2}: recall {r:.4f}, "
                  f"{rate:.0f} qps, scanned {idx.last_report.vectors.mean():.0f}", flush=True)
        res["curves"]["hrm2_adaptive" if adaptive else "hrm2"] = curve

    t0 = time.perf_counter()
    quant = faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFFlat(quant, d, cells)
    ivf.train(x)
    ivf.add(x)
    res["build_s"]["faiss_ivf"] = time.perf_counter() - t0
    curve = []
    for nprobe in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128):
        ivf.nprobe = nprobe
        I = run_all(lambda b: ivf.search(b, k)[1])
        r = recall(I, gt)
        rate, t = qps(lambda: ivf.search(q, k), m, args.repeat)
        curve.append({"nprobe": nprobe, "recall": r, "qps": rate, "time": t})
        print(f"faiss ivf nprobe={nprobe}: recall {r:.4f}, {rate:.0f} qps", flush=True)
    res["curves"]["faiss_ivf_flat"] = curve

    if not args.skip_hnsw:
        import hnswlib

        t0 = time.perf_counter()
        h = hnswlib.Index(space="l2", dim=d)
        h.init_index(max_elements=n, M=16, ef_construction=100, random_seed=1)
        h.set_num_threads(os.cpu_count() or 1)
        h.add_items(x, np.arange(n))
        res["build_s"]["hnswlib"] = time.perf_counter() - t0
        curve = []
        for ef in (10, 16, 24, 32, 48, 64, 96, 128, 256):
            h.set_ef(max(ef, k))
            I = run_all(lambda b, h=h: h.knn_query(b, k)[0])
            r = recall(I, gt)
            rate, t = qps(lambda h=h: h.knn_query(q, k), m, args.repeat)
            curve.append({"ef": ef, "recall": r, "qps": rate, "time": t})
            print(f"hnswlib ef={ef}: recall {r:.4f}, {rate:.0f} qps", flush=True)
        res["curves"]["hnswlib"] = curve
    print("build seconds:", {k_: round(v, 2) for k_, v in res["build_s"].items()})
    res["summary"] = summarise(res)
    for row in res["summary"]:
        print(row)

    res["meta"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "git": git_revision(), "machine": platform.machine(), "cpus": os.cpu_count(),
                   "numpy": np.__version__, "faiss": faiss.__version__,
                   "backend": be.info.as_dict()}
    stem = f"hrm2-{args.dataset}-n{n}-d{d}"
    out = Path(args.out) if args.out else RESULTS / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    plot(res, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def summarise(res, targets=(0.9, 0.95, 0.99)):
    """Per recall target: the fastest swept point of each method that reaches it, and
    HRM2's (best of fixed and adaptive probing) QPS over IVF's and over exact search."""
    exact = res["exact"]["m2m_flat_qps"]
    rows = []
    for t in targets:
        row = {"recall_target": t}
        for name, curve in res["curves"].items():
            ok = [c for c in curve if c["recall"] >= t]
            row[name] = max(ok, key=lambda c: c["qps"]) if ok else None
        hrm2 = [row[n]["qps"] for n in ("hrm2", "hrm2_adaptive") if row.get(n)]
        best = max(hrm2) if hrm2 else None
        row["hrm2_over_exact"] = best / exact if best else None
        ivf = row.get("faiss_ivf_flat")
        row["hrm2_over_ivf"] = best / ivf["qps"] if best and ivf else None
        hnsw = row.get("hnswlib")
        row["hrm2_over_hnswlib"] = best / hnsw["qps"] if best and hnsw else None
        rows.append({k: (round(v, 3) if isinstance(v, float) else
                         ({kk: vv for kk, vv in v.items() if kk != "time"} if isinstance(v, dict)
                          else v)) for k, v in row.items()})
    return rows


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = {"hrm2": "m2m HRM2", "hrm2_adaptive": "m2m HRM2 (adaptive)",
              "faiss_ivf_flat": "faiss IndexIVFFlat", "hnswlib": "hnswlib (M=16)"}
    for name, curve in res["curves"].items():
        ax.plot([c["recall"] for c in curve], [c["qps"] for c in curve], marker="o",
                label=labels.get(name, name))
    for name, value in res["exact"].items():
        ax.axhline(value, linestyle=":", color="grey")
        ax.annotate(name.replace("_qps", "") + " (exact)", (0.5, value), fontsize=8,
                    xycoords=("axes fraction", "data"))
    p = res["params"]
    ax.set_xlabel(f"recall@{p['k']}")
    ax.set_ylabel(f"queries per second (batch of {p['m']})")
    ax.set_yscale("log")
    data = "clustered" if p["dataset"] == "clustered" else "Debian descriptions, MiniLM"
    ax.set_title(f"n = {p['n']:,}, d = {p['d']}, {data}; backend {p['backend']}, "
                 f"{res['meta']['cpus']} CPU threads", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
