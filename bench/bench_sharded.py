"""ShardedStore on a local Ray instance: add and search-batch throughput with 1, 2 and 4
shards against one in-process SplatStore (in memory, and durable like the shards) on the
same data in the same run, with Ray's own cost per call (an empty call, and one carrying a
batch) stated. Every sharded search is checked equal to the single store's first.

Results: ``bench/results/sharded-cpu.json`` (with the bytes per splat the README's plan
for a billion vectors starts from).

    python bench/bench_sharded.py [--points 100000] [--dim 128] [--batch 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _out import save  # noqa: E402

import m2m_gpu  # noqa: E402


def rate(fn, items, per_item: int = 1, repeat: int = 1) -> dict:
    """Items (times ``per_item``) per second, best of ``repeat`` passes; p50 per call."""
    best, lat = 0.0, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for it in items:
            t = time.perf_counter()
            fn(it)
            lat.append(time.perf_counter() - t)
        best = max(best, len(items) * per_item / (time.perf_counter() - t0))
    return {"per_s": best, "p50_ms_per_call": 1e3 * float(np.percentile(lat, 50))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import ray

    from m2m_gpu.distributed import ShardedStore

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.points, args.dim)).astype(np.float32)
    Q = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    ids = list(range(args.points))
    batches = [(X[a : a + args.batch], ids[a : a + args.batch])
               for a in range(0, args.points, args.batch)]
    res: dict = {"machine": platform.node(), "cpus": os.cpu_count(), "backend": "cpu",
                 "points": args.points, "dim": args.dim, "add_batch": args.batch,
                 "search_batch": args.queries, "k": 10,
                 "note": "every shard and the driver share this machine's cores"}

    @ray.remote
    class Echo:
        def call(self, x=None):
            return None

    echo = Echo.remote()
    ray.get(echo.call.remote())
    res["ray_call_ms"] = {
        "empty": rate(lambda _: ray.get(echo.call.remote()), range(200))["p50_ms_per_call"],
        "with_an_add_batch": rate(lambda b: ray.get(echo.call.remote(b[0])),
                                  batches[:50])["p50_ms_per_call"]}

    with tempfile.TemporaryDirectory() as d:
        one = m2m_gpu.SplatStore(args.dim, metric="cosine", backend="cpu")
        res["one_store_in_memory"] = {"add": rate(lambda b: one.add(b[0], ids=b[1]), batches,
                                                  args.batch)}
        durable = m2m_gpu.SplatStore(args.dim, metric="cosine", backend="cpu",
                                     path=Path(d) / "one")
        res["one_store_durable"] = {"add": rate(lambda b: durable.add(b[0], ids=b[1]),
                                                batches, args.batch)}
        want = one.search(Q, k=10)
        for name, s in (("one_store_in_memory", one), ("one_store_durable", durable)):
            s.search(Q, k=10)
            res[name]["search"] = rate(lambda _, s=s: s.search(Q, k=10), range(10),
                                       args.queries, repeat=2)
        res["one_store_bytes_per_splat"] = {
            "device": durable.stats()["device_bytes"] / len(durable),
            "disk": sum(f.stat().st_size for f in (Path(d) / "one").iterdir()) / len(durable)}
        durable.close()
        for n in (1, 2, 4):
            sh = ShardedStore(args.dim, shards=n, path=Path(d) / f"sh{n}", backend="cpu")
            add = rate(lambda b, sh=sh: sh.add(b[0], ids=b[1]), batches, args.batch)
            got = sh.search(Q, k=10)
            assert got.ids == want.ids, f"{n} shards: results differ from one store"
            search = rate(lambda _, sh=sh: sh.search(Q, k=10), range(10), args.queries,
                          repeat=2)
            res[f"shards_{n}"] = {"add": add, "search": search, "equal_to_one_store": True}
            print(n, add, search, flush=True)
            sh.close()
        # approximate search: HRM2 in every shard, recall@10 against the shards' exact answers
        sh = ShardedStore(args.dim, shards=2, path=Path(d) / "hrm2", backend="cpu",
                          index="hrm2", index_options={"train_min": args.points // 4})
        C = m2m_gpu.synthetic(args.points, args.dim, seed=1, kind="clustered")
        CQ = m2m_gpu.synthetic(args.queries, args.dim, seed=1, kind="clustered",
                               part="queries")
        for a in range(0, args.points, args.batch):
            sh.add(C[a : a + args.batch], ids=ids[a : a + args.batch])
        exact = sh.search(CQ, k=10, exact=True)
        approx = sh.search(CQ, k=10)
        res["hrm2_2_shards_clustered"] = {
            "recall10_vs_exact": float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(
                approx.ids, exact.ids, strict=True)])),
            "search": rate(lambda _: sh.search(CQ, k=10), range(10), args.queries, repeat=2),
            "exact_search": rate(lambda _: sh.search(CQ, k=10, exact=True), range(10),
                                 args.queries, repeat=2)}
        sh.close()
    for n in (1, 2, 4):
        for op in ("add", "search"):
            res.setdefault("ratios", {})[f"shards_{n}_{op}_vs_one_store_in_memory"] = (
                res[f"shards_{n}"][op]["per_s"] / res["one_store_in_memory"][op]["per_s"])
            res["ratios"][f"shards_{n}_{op}_vs_one_store_durable"] = (
                res[f"shards_{n}"][op]["per_s"] / res["one_store_durable"][op]["per_s"])
    ray.shutdown()
    save(res, args.out, "sharded-cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
