#!/usr/bin/env python3
"""Exact k-NN benchmark: every available m2m backend against NumPy brute force and
faiss.IndexFlatL2, measured in the same run.

For each (d, batch m, k): results are checked against FAISS (or NumPy) first, then every
method is warmed up, run ``--repeat`` times (device synchronised: results come back to the
host), and reported as median / p10 / p90 with ratios to the baselines. The time to read the
database once (a NumPy reduction over the same array) is measured too, because one query is
bound by memory bandwidth. Output: a table on stdout and JSON in bench/results/.

    python bench/bench_knn.py                 # n = 100,000; d = 128, 640; m = 1, 256; k = 10, 64
    python bench/bench_knn.py --quick         # a small smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

import m2m_gpu
from m2m_gpu import backends
from m2m_gpu.bench.cases import recall
from m2m_gpu.bench.runner import git_revision
from m2m_gpu.bench.timing import measure

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn, repeat: int, warmup: int = 1) -> dict:
    """Median, p10/p90/p99 and the samples of ``fn()`` (the suite's own timing)."""
    return measure(fn, warmup=warmup, repeat=repeat)


def numpy_brute_force(Q, X, k, xsq):
    """The plain NumPy baseline: one GEMM, the norms, argpartition, sort."""
    d2 = xsq[None, :] - 2.0 * (Q @ X.T)
    idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(d2, idx, 1)
    order = np.argsort(part, axis=1)
    I = np.take_along_axis(idx, order, 1)
    D = np.take_along_axis(part, order, 1) + (Q * Q).sum(1, keepdims=True)
    return D, I


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 640])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 64])
    ap.add_argument("--backends", nargs="+", default=None,
                    help="m2m backends to run (default: every available one)")
    ap.add_argument("--repeat", type=int, default=9, help="timed runs per case (after warmup)")
    ap.add_argument("--all", action="store_true",
                    help="also run the slow cases on software Vulkan drivers (lavapipe)")
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.n, args.dims, args.batches, args.ks, args.repeat = 20_000, [64], [1, 32], [10], 3

    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss not installed: FAISS baseline skipped (pip install faiss-cpu)")

    auto_name, auto_why = backends.auto_choice()
    print(f"m2m-gpu {m2m_gpu.__version__}; {auto_why}")
    names = args.backends or [b.name for b in backends.probe_all() if b.available]
    names = sorted(names, key=lambda n: n != auto_name)  # the best available one first
    infos = {n: backends.probe(n) for n in names}
    print("backends: " + ", ".join(f"{n} ({infos[n].device})" for n in names))

    rng = np.random.default_rng(args.seed)
    cases = []
    for d in args.dims:
        X = rng.standard_normal((args.n, d), dtype=np.float32)
        xsq = np.einsum("ij,ij->i", X, X)
        read = timeit(lambda X=X: X.sum(), repeat=args.repeat)
        print(f"\nn={args.n} d={d}: reading the database once (X.sum()) takes "
              f"{read['median_s'] * 1e3:.2f} ms ({X.nbytes / read['median_s'] / 1e9:.1f} GB/s)")
        findex = None
        if faiss is not None:
            findex = faiss.IndexFlatL2(d)
            findex.add(X)
        indexes = {}
        for name in names:
            idx = m2m_gpu.IndexFlatL2(d, backend=name)
            idx.add(X)
            indexes[name] = idx
        for m in args.batches:
            Q = rng.standard_normal((m, d), dtype=np.float32)
            for k in args.ks:
                case = run_case(X, xsq, Q, k, read, findex, indexes, infos, args)
                print_case(case)
                cases.append(case)

    report = {
        "benchmark": "knn",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "m2m_gpu": m2m_gpu.info(),
        "faiss": getattr(faiss, "__version__", None) if faiss else None,
        "parameters": vars(args) | {"out": str(args.out)},
        "cases": cases,
        "speed_bar": speed_bar(cases),
    }
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"knn-{platform.node() or 'host'}-{dt.date.today()}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nspeed bar (cpu backend): {json.dumps(report['speed_bar'], indent=2)}")
    print(f"wrote {out}")
    return 0


def run_case(X, xsq, Q, k, read, findex, indexes, infos, args) -> dict:
    """One (d, m, k) case: the reference answer, then every method checked and timed."""
    m, d = Q.shape
    case = {"n": X.shape[0], "d": d, "m": m, "k": k, "metric": "l2", "read_once": read,
            "methods": {}}
    reps = max(3, args.repeat // 3) if m > 1 else args.repeat
    methods = case["methods"]
    if findex is not None:
        Dref, Iref = findex.search(Q, k)
        methods["faiss.IndexFlatL2"] = timeit(lambda: findex.search(Q, k), reps)
    else:
        Dref, Iref = numpy_brute_force(Q, X, k, xsq)
    methods["numpy"] = timeit(lambda: numpy_brute_force(Q, X, k, xsq), reps)
    methods["numpy"]["recall_vs_ref"] = recall(numpy_brute_force(Q, X, k, xsq)[1], Iref)
    for name, index in indexes.items():
        methods.update(run_backend(name, index, infos[name], X, Q, k, Dref, Iref, reps, args))
    add_ratios(case)
    return case


def run_backend(name, index, info, X, Q, k, Dref, Iref, reps, args) -> dict:
    """The index search (database resident on the device) and the functional knn()
    (validates and moves the database every call) of one backend, results checked first."""
    software = info.device_type == "software"
    if software and Q.shape[0] > 1 and X.shape[1] > 128 and not args.all:
        return {f"m2m.{name}.IndexFlatL2": {
            "skipped": "software Vulkan driver: a correctness backend, slow at this size "
                       "(run with --all)"}}
    reps = 1 if software else reps
    out = {}
    D, I = index.search(Q, k)
    np.testing.assert_allclose(np.sort(D, 1), np.sort(Dref, 1), rtol=1e-3, atol=1e-2)
    rec = recall(I, Iref)
    assert rec >= 0.99, f"{name}: recall {rec} against the reference"
    out[f"m2m.{name}.IndexFlatL2"] = timeit(lambda: index.search(Q, k), reps)
    out[f"m2m.{name}.IndexFlatL2"]["recall_vs_ref"] = rec
    if not software:
        res = timeit(lambda: m2m_gpu.knn(Q, X, k, backend=name), reps)
        res["recall_vs_ref"] = recall(m2m_gpu.knn(Q, X, k, backend=name)[1], Iref)
        out[f"m2m.{name}.knn()"] = res
    return out


def add_ratios(case: dict) -> None:
    base = case["methods"]
    for res in base.values():
        if "median_s" not in res:
            continue
        for ref in ("faiss.IndexFlatL2", "numpy"):
            if ref in base and "median_s" in base[ref]:
                res[f"time_ratio_vs_{ref}"] = res["median_s"] / base[ref]["median_s"]
        res["time_ratio_vs_read_once"] = res["median_s"] / case["read_once"]["median_s"]


def print_case(case: dict) -> None:
    print(f"  m={case['m']:<4} k={case['k']:<3}", end="")
    for name, res in case["methods"].items():
        if "median_s" in res:
            vs = res.get("time_ratio_vs_faiss.IndexFlatL2")
            ratio = f" ({vs:.2f}x faiss)" if vs and name != "faiss.IndexFlatL2" else ""
            print(f" | {name} {res['median_s'] * 1e3:8.2f} ms{ratio}", end="")
        else:
            print(f" | {name} skipped", end="")
    print()


def speed_bar(cases: list[dict]) -> dict:
    """The issue's bar, CPU backend, d = 640, k = 64: one query no slower than FAISS and
    within 1.25x of one read of the database; 256 queries no slower than FAISS."""
    out = {}
    for case in cases:
        if case["d"] != 640 or case["k"] != 64 or case["m"] not in (1, 256):
            continue
        for method in ("m2m.cpu.IndexFlatL2", "m2m.cpu.knn()"):
            res = case["methods"].get(method)
            if not res or "time_ratio_vs_faiss.IndexFlatL2" not in res:
                continue
            entry = {"time_ratio_vs_faiss": round(res["time_ratio_vs_faiss.IndexFlatL2"], 3),
                     "no_slower_than_faiss": res["time_ratio_vs_faiss.IndexFlatL2"] <= 1.0}
            if case["m"] == 1:
                entry["time_ratio_vs_read_once"] = round(res["time_ratio_vs_read_once"], 3)
                entry["within_1.25x_of_read"] = res["time_ratio_vs_read_once"] <= 1.25
            out[f"{method} m={case['m']}"] = entry
    return out


if __name__ == "__main__":
    sys.exit(main())
