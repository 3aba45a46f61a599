#!/usr/bin/env python3
"""A/B of the cpu backend's top-k seeding (``ops.host_topk.SEED_ROWS``), with FAISS in the same run.

The running top-k of each query block is seeded by a full selection (``argpartition``)
over the first rows of the first tile, and the rest is compared with the bound they give.
"seed 512" is the shipped setting; "seed whole tile" selects over the first tile's every
entry (the behaviour before). Both must return the same ids (checked first); then the
settings are timed interleaved (rounds alternate, so drift on a shared machine hits both)
for exact k-NN and for energy, whose direct-form correction keeps a running top-4.

    python bench/bench_topk_seed.py            # n = 10K, 200K, 1M; d = 64; 64 queries
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from m2m_gpu import IndexFlatL2
from m2m_gpu.backends import get_backend
from m2m_gpu.bench.cases import Context, _params, resident
from m2m_gpu.bench.runner import git_revision, machine
from m2m_gpu.bench.timing import measure
from m2m_gpu.ops import host_topk as cpu

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"seed 512": 512, "seed whole tile": 1 << 30}


def interleaved(fns: dict, rounds: int, repeat: int) -> dict:
    """Median of per-round medians for each fn, rounds alternating between them."""
    got = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (setup, fn) in fns.items():
            setup()
            got[name].append(measure(fn, repeat=repeat, min_time=0.1)["median_s"])
    return {name: float(np.median(v)) for name, v in got.items()}


def setting(rows: int):
    return lambda: setattr(cpu, "SEED_ROWS", rows)


def one(n: int, d: int, m: int, rounds: int, repeat: int) -> dict:
    """Check, then time both settings (and FAISS) at one database size."""
    be = get_backend("cpu")
    X, Q = Context().data(n, d, m)
    index = IndexFlatL2(d, backend="cpu")
    index.add(X)
    ids = {}
    for name, rows in SETTINGS.items():
        cpu.SEED_ROWS = rows
        ids[name] = index.search(Q, 10)[1]
    assert np.array_equal(ids["seed 512"], ids["seed whole tile"]), "settings disagree"

    def search():
        return index.search(Q, 10)

    fns = {name: (setting(rows), search) for name, rows in SETTINGS.items()}
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        fi = faiss.IndexFlatL2(d)
        fi.add(X)
        assert (fi.search(Q, 10)[1] == ids["seed 512"]).mean() > 0.99
        fns["faiss IndexFlatL2"] = (lambda: None, lambda: fi.search(Q, 10))
    knn = interleaved(fns, rounds, repeat)
    xn, pn, sq = resident(be, X, _params(n))

    def energy_call():
        return be.energy(Q, xn, pn, sqnorms=sq)

    energy = interleaved({name: (setting(rows), energy_call)
                          for name, rows in SETTINGS.items()}, rounds, repeat)
    cpu.SEED_ROWS = SETTINGS["seed 512"]
    return {"n": n, "knn_median_s": knn, "energy_median_s": energy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 200_000, 1_000_000])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    out = {"machine": machine(), "git": git_revision(), "d": args.d, "m": args.m, "k": 10,
           "results": []}
    for n in args.n:
        row = one(n, args.d, args.m, args.rounds, args.repeat)
        out["results"].append(row)
        for what in ("knn", "energy"):
            line = "  ".join(f"{k}: {v * 1e3:.2f} ms" for k, v in row[f"{what}_median_s"].items())
            print(f"n={n:>8}  {what:<6}  {line}")
    path = RESULTS / f"topk-seed-cpu{out['machine']['cpus']}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
