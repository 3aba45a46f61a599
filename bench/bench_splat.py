#!/usr/bin/env python3
"""Splat kernel benchmarks, each against a baseline measured in the same run.

* energy: the fused streaming kernel against NumPy building the m x n log-score matrix
  (float64, max-shifted log-sum-exp). At m = 1024, n = 1,000,000 that matrix is 8 GB, more
  than fits next to its temporaries on a 24 GB machine, so the NumPy baseline is chunked over
  queries (``--numpy-chunk`` rows at a time, stated in the JSON); peak memory of both is
  measured with tracemalloc (NumPy reports its allocations there).
* hebbian: feedback events per second per backend, with ``--collide`` of the events on the
  same few splats, against the sequential NumPy reference loop (the semantics' definition).
* splat_topk vs knn: the price of splat ranking over plain ranking on the same backend,
  database and norms resident (target: under 10% extra).

Every case checks its result against the reference before timing. Data comes from the
Philox generator. Output: a table and JSON in bench/results/.

    python bench/bench_splat.py              # the sizes of the issue (minutes on 2 cores)
    python bench/bench_splat.py --quick      # small, for a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import git_revision, timeit  # noqa: E402

import m2m_gpu  # noqa: E402
from m2m_gpu import backends  # noqa: E402
from m2m_gpu import reference as ref  # noqa: E402
from m2m_gpu.backends.base import MODE_SPLAT, PARAM_WIDTH, HebbianPlan, HebbianRates  # noqa: E402
from m2m_gpu.bench.cases import host as sync_host  # noqa: E402
from m2m_gpu.bench.cases import resident  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def peak_bytes(fn) -> tuple[object, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def numpy_energy(Q, X, alpha, kappa, chunk):
    """The baseline: the m x n log-score matrix per chunk of queries, float64."""
    xsq = (X.astype(np.float64) ** 2).sum(1)
    la = np.log(alpha.astype(np.float64))
    out = np.empty(Q.shape[0])
    for a in range(0, Q.shape[0], chunk):
        q = Q[a : a + chunk].astype(np.float64)
        d2 = np.maximum((q * q).sum(1)[:, None] + xsq[None, :] - 2.0 * (q @ X.T), 0.0)
        lg = la[None, :] - kappa[None, :] * d2
        top = lg.max(1, keepdims=True)
        out[a : a + chunk] = -(top[:, 0] + np.log(np.exp(lg - top).sum(1)))
    return out


def params_for(n, rng):
    p = np.zeros((n, PARAM_WIDTH), np.float32)
    p[:, 0] = rng.uniform(0.2, 3.0, n)
    p[:, 1] = rng.uniform(5.0, 20.0, n)
    return p


def bench_energy(be, n, m, d, repeat, chunk, rng, run_baseline):
    X = m2m_gpu.synthetic(n, d, seed=1, kind="clustered", spread=0.3)
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # cosine-like store: unit vectors
    Q = m2m_gpu.synthetic(m, d, seed=1, kind="clustered", spread=0.3, part="queries")
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    P = params_for(n, rng)
    xn, pn, sq = resident(be, X, P)
    qn = be.from_host(Q)
    run = lambda: sync_host(be, be.energy(qn, xn, pn, sqnorms=sq))  # noqa: E731
    E, fused_peak = peak_bytes(run)
    check = slice(0, min(m, 16))
    Er = ref.energy(Q[check], X, P[:, 0], P[:, 1])
    err = float(np.max(np.abs(E[check] - Er) / np.maximum(1, np.abs(Er))))
    out = {"kernel": "energy", "backend": be.name, "n": n, "m": m, "d": d,
           "max_rel_err_vs_reference": err, "fused": timeit(run, repeat),
           "fused_peak_bytes": fused_peak}
    if run_baseline:
        base = lambda: numpy_energy(Q, X, P[:, 0], P[:, 1].astype(np.float64), chunk)  # noqa: E731
        Eb, base_peak = peak_bytes(base)
        out["numpy"] = timeit(base, max(1, repeat // 2), warmup=0)
        out["numpy_peak_bytes"] = base_peak
        out["numpy_chunk_queries"] = chunk
        out["numpy_full_matrix_bytes"] = m * n * 8
        out["speedup_vs_numpy"] = out["numpy"]["median_s"] / out["fused"]["median_s"]
        out["memory_ratio_numpy_over_fused"] = base_peak / max(1, fused_peak)
        out["max_rel_diff_numpy"] = float(np.max(np.abs(Eb - E) / np.maximum(1, np.abs(Eb))))
    return out


def bench_hebbian(be, n, d, events, collide, repeat, rng):
    X = m2m_gpu.synthetic(n, d, seed=2)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = m2m_gpu.synthetic(events, d, seed=2, part="queries")
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    hot = rng.choice(n, 8, replace=False)
    hit = rng.random(events) < collide
    rel = np.where(hit, rng.choice(hot, events), rng.integers(0, n, events))
    irr = (rel + 1 + rng.integers(0, n - 1, events)) % n  # never the relevant one
    plan = HebbianPlan.build(np.repeat(np.arange(events), 2),
                             np.stack([rel, irr], 1).ravel(), np.tile([1, -1], events))
    P = params_for(n, rng)
    rates = HebbianRates(renormalize=True)
    small = min(events, 300)  # the sequential reference is slow: check a prefix
    mr, ar, kr = ref.hebbian(X, P[:, 0], P[:, 1], Q[:small], [[r] for r in rel[:small]],
                             [[i] for i in irr[:small]], metric="cosine")
    pfx = HebbianPlan.build(np.repeat(np.arange(small), 2),
                            np.stack([rel[:small], irr[:small]], 1).ravel(),
                            np.tile([1, -1], small))
    xn, pn, _ = resident(be, X.copy(), P.copy())
    be.hebbian(xn, pn, be.from_host(Q[:small]), pfx, rates)
    err = float(max(np.abs(be.to_host(xn) - mr).max(), np.abs(be.to_host(pn)[:, 0] - ar).max()))
    xn, pn, _ = resident(be, X.copy(), P.copy())
    qn = be.from_host(Q)

    def run():
        be.hebbian(xn, pn, qn, plan, rates)
        be.gather_rows(pn, np.array([0]))  # reading one row waits for the kernel

    t = timeit(run, repeat)

    def numpy_loop():
        ref.hebbian(X, P[:, 0], P[:, 1], Q[:small], [[r] for r in rel[:small]],
                    [[i] for i in irr[:small]], metric="cosine")

    tb = timeit(numpy_loop, 1, warmup=0)
    eps = events / t["median_s"]
    eps_ref = small / tb["median_s"]
    return {"kernel": "hebbian", "backend": be.name, "n": n, "d": d, "events": events,
            "colliding_share": collide, "max_events_on_one_splat": int(plan.counts.max()),
            "max_abs_err_vs_reference": err, "time": t, "events_per_s": eps,
            "reference_loop_events_per_s": eps_ref, "speedup_vs_reference_loop": eps / eps_ref}


def bench_topk_vs_knn(be, n, m, d, k, repeat, rng):
    X = m2m_gpu.synthetic(n, d, seed=3, kind="clustered")
    Q = m2m_gpu.synthetic(m, d, seed=3, kind="clustered", part="queries")
    P = params_for(n, rng)
    xn, pn, sq = resident(be, X, P)
    qn = be.from_host(Q)
    splat = lambda: sync_host(be, be.splat_topk(qn, xn, pn, k, MODE_SPLAT, sqnorms=sq))  # noqa: E731
    plain = lambda: sync_host(be, be.knn(qn, xn, k, "l2", database_sqnorms=sq))  # noqa: E731
    keys, ids, _ = splat()
    c = slice(0, min(m, 8))
    L, I, _ = ref.splat_topk(Q[c], X, P[:, 0], P[:, 1], k)
    agree = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids[c], I, strict=True)]))
    ts, tk = timeit(splat, repeat), timeit(plain, repeat)
    return {"kernel": "splat_topk_vs_knn", "backend": be.name, "n": n, "m": m, "d": d, "k": k,
            "overlap_with_reference": agree, "splat_topk": ts, "knn": tk,
            "extra_cost": ts["median_s"] / tk["median_s"] - 1.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backends", nargs="+", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--numpy-chunk", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = args.backends or [b.name for b in backends.probe_all() if b.available]
    rng = np.random.default_rng(0)
    q = args.quick
    results = []

    def emit(r):
        results.append(r)
        keys = ("speedup_vs_numpy", "events_per_s", "extra_cost", "memory_ratio_numpy_over_fused")
        extra = ", ".join(f"{k}={r[k]:.3g}" for k in keys if k in r)
        print(f"{r['kernel']:<18} {r['backend']:<7} " + ", ".join(
            f"{k}={r[k]}" for k in ("n", "m", "d", "k", "events") if k in r) + f"  {extra}",
            flush=True)

    for name in names:
        be = backends.get_backend(name)
        soft = be.info.device_type == "software"
        big = not q and not soft  # lavapipe: correctness-sized cases only
        emit(bench_energy(be, 1_000_000 if big else 20_000, 1024 if big else 64, 64,
                          args.repeat, args.numpy_chunk, rng, run_baseline=True))
        emit(bench_hebbian(be, 100_000 if not q else 10_000, 64, 20_000 if not q else 2_000,
                           0.1, args.repeat, rng))
        for m in (1, 256):
            if soft and m > 1 and not q:
                continue
            emit(bench_topk_vs_knn(be, 1_000_000 if big else 50_000, m, 64, 10,
                                   2 * args.repeat + 1, rng))  # a small difference: more runs
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_revision(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "backends": [backends.probe(n).as_dict() for n in names], "quick": q}
    out = Path(args.out) if args.out else RESULTS / ("splat-quick.json" if q else "splat.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sys.exit(rc)
