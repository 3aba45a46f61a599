#!/usr/bin/env python3
"""Single-query latency on a GPU backend: the small-batch path (the one-query-per-workgroup
distance kernel ``knn_distance_rows`` and the selection split over many workgroups) against
the path before (16-query distance tiles, one selection workgroup per query), and the
distance kernel alone, in the same run, with FAISS flat on the host as the baseline.

For each size: the database is resident on the device; every path is first checked
against the float64 reference (ids equal, distances close; FAISS agrees too); then they are timed
interleaved (rounds alternate, so drift on a shared machine hits both), with the
workgroups each launches per query counted (``Backend.launches``).

    python bench/bench_small_batch.py --backend vulkan             # 100K x 128, 1M x 64
    python bench/bench_small_batch.py --backend cuda --sizes 1000000x128,4000000x64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from m2m_gpu import get_backend, synthetic
from m2m_gpu import reference as ref
from m2m_gpu.bench.runner import git_revision, machine
from m2m_gpu.bench.timing import measure
from m2m_gpu.ops import knn as knn_ops

RESULTS = Path(__file__).resolve().parent / "results"
# name: (ops.knn.SPLIT_SELECT, ops.knn.ROWS_KERNEL_QUERIES)
PATHS = {"shipped": (True, knn_ops.ROWS_KERNEL_QUERIES),
         "rows kernel, one select workgroup": (False, knn_ops.ROWS_KERNEL_QUERIES),
         "before": (False, 0)}


def use(path: str) -> None:
    knn_ops.SPLIT_SELECT, knn_ops.ROWS_KERNEL_QUERIES = PATHS[path]


def exact_knn(Q, X, k, chunk: int = 65536):
    """The reference's answer (float64 direct form, ties by id), in row chunks so that a
    million rows do not need an (m, n, d) float64 array."""
    best_d = np.full((Q.shape[0], 0), np.inf)
    best_i = np.zeros((Q.shape[0], 0), np.int64)
    for s in range(0, X.shape[0], chunk):
        full = ref.pairwise(Q, X[s : s + chunk], "l2")
        best_d = np.concatenate([best_d, full], 1)
        best_i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + full.shape[1]),
                                                         full.shape)], 1)
        order = np.lexsort((best_i, best_d), axis=-1)[:, :k]
        best_d = np.take_along_axis(best_d, order, 1)
        best_i = np.take_along_axis(best_i, order, 1)
    return best_d.astype(np.float32), best_i


def workgroups(be, fn) -> dict:
    before = dict(be.launches)
    fn()
    return {k: be.launches[k] - before[k] for k in before}


def one(be, n: int, d: int, k: int, queries: int, rounds: int, repeat: int) -> dict:
    X = synthetic(n, d, seed=3, kind="clustered", clusters=64)
    Q = synthetic(queries, d, seed=3, kind="clustered", clusters=64, part="queries")
    xn = be.from_host(X)
    qs = [be.from_host(Q[i : i + 1]) for i in range(queries)]

    def search(i=0):
        D, I = be.knn(qs[i], xn, k, "l2")
        return np.asarray(be.to_host(D)), np.asarray(be.to_host(I))

    import faiss

    flat = faiss.IndexFlatL2(d)
    flat.add(X)
    _, If = flat.search(Q, k)
    Dr, Ir = exact_knn(Q, X, k)  # float64, direct form: the exact answer, ties by id
    for name in PATHS:
        use(name)
        for i in range(queries):
            D, I = search(i)
            assert np.array_equal(I[0], Ir[i]), f"{name}: ids differ from the reference"
            np.testing.assert_allclose(D[0], Dr[i], rtol=1e-4, atol=1e-3)
    assert np.mean([np.isin(If[i], Ir[i]).mean() for i in range(queries)]) > 0.99
    out = {"n": n, "d": d, "k": k, "queries": queries, "paths": {}}
    samples = {name: [] for name in PATHS}
    for _ in range(rounds):
        for name in PATHS:
            use(name)
            samples[name].append(measure(lambda: search(0), be.synchronize,
                                         repeat=repeat)["median_s"])
    for name in PATHS:
        use(name)
        out["paths"][name] = {"median_s": float(np.median(samples[name])),
                              "round_medians_s": samples[name],
                              "per_query": workgroups(be, lambda: search(0))}
    use("shipped")
    out["speedup"] = out["paths"]["before"]["median_s"] / out["paths"]["shipped"]["median_s"]
    out["faiss_host_s"] = measure(lambda: flat.search(Q[:1], k), repeat=repeat)["median_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vulkan")
    ap.add_argument("--sizes", default="100000x128,1000000x64", help="NxD,NxD,...")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=4, help="queries checked (one timed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    be = get_backend(args.backend)
    doc = {"benchmark": "small_batch", "backend": be.name, "device": be.info.device,
           "device_type": be.info.device_type, "select_groups": be.select_groups,
           "git": git_revision(), "machine": machine(), "results": []}
    for size in args.sizes.split(","):
        n, d = (int(v) for v in size.lower().split("x"))
        r = one(be, n, d, args.k, args.queries, args.rounds, args.repeat)
        doc["results"].append(r)
        cells = [f"{name} {p['median_s'] * 1e3:.1f} ms ({p['per_query']['workgroups']} "
                 f"workgroups)" for name, p in r["paths"].items()]
        print(f"{be.name} {n}x{d} k={args.k}: " + "; ".join(cells) +
              f"; before/shipped {r['speedup']:.2f}x; faiss host "
              f"{r['faiss_host_s'] * 1e3:.1f} ms", flush=True)
    out = Path(args.out) if args.out else RESULTS / f"small-batch-{be.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
