#!/usr/bin/env python3
"""A/B of durable single adds (``fsync="every"``) between two git revisions, interleaved.

Each revision is checked out in a temporary worktree; rounds alternate between them (a
fresh process each, importing that worktree's ``m2m_gpu``), so drift in the machine's fsync
rate hits both. Each round: 1,000 seeded splats, then single-vector adds for ``--seconds``
after a short warm-up, then the store is reopened and compared with what was written.
Reports the median adds/s per revision and their ratio.

    python bench/bench_persist_ab.py --base 5ae8987 [--head HEAD] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

CHILD = r"""
import json, sys, tempfile, time
import numpy as np
from m2m_gpu import SplatStore
seconds = float(sys.argv[1])
d = tempfile.mkdtemp(prefix="m2m-ab-")
rng = np.random.default_rng(0)
vecs = rng.standard_normal((100_000, 64)).astype(np.float32)
store = SplatStore(64, backend="cpu", path=d + "/s", fsync="every")
store.add(vecs[:1000], ids=[f"seed{i}" for i in range(1000)])
def run(seconds, tag):
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        store.add(vecs[1000 + n % 90_000], ids=[f"{tag}{n}"])
        n += 1
    return n / (time.perf_counter() - t0), n
run(0.3, "w")
rate, n = run(seconds, "a")
count = len(store)
store.close()
again = SplatStore.open(d + "/s", backend="cpu")
assert len(again) == count, "reopened store differs"
import m2m_gpu
print(json.dumps({"rate": rate, "adds": n, "module": m2m_gpu.__file__}))
"""


def worktree(rev: str, base: Path) -> Path:
    path = base / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)
    return path


def one(tree: Path, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(seconds)], check=True,
                         capture_output=True, text=True, cwd=tree,
                         env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])["rate"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="m2m-ab-trees-"))
    trees = {}
    try:
        for rev in (args.base, args.head):
            trees[rev] = worktree(rev, tmp)
        rates = {rev: [] for rev in trees}
        for r in range(args.rounds):
            for rev, tree in (trees.items() if r % 2 == 0 else reversed(trees.items())):
                rates[rev].append(one(tree, args.seconds))
            print(f"round {r}: " + ", ".join(f"{rev} {rates[rev][-1]:,.0f}/s" for rev in trees),
                  flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)
    med = {rev: float(np.median(v)) for rev, v in rates.items()}
    res = {"case": "single adds, fsync=every, d=64", "rounds": args.rounds,
           "seconds": args.seconds, "rates": rates, "median": med,
           "head_vs_base": med[args.head] / med[args.base]}
    print(f"median adds/s: base {args.base} {med[args.base]:,.0f}, head {args.head} "
          f"{med[args.head]:,.0f}: {res['head_vs_base']:.2f}x")
    out = Path(args.out) if args.out else RESULTS / "persist-ab-cpu2.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
