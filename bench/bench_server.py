"""Load benchmark of ``m2m-gpu serve``: search and upsert throughput and latency with 1, 8
and 32 concurrent clients on loopback, against qdrant-client's own local mode (Qdrant's
in-process Python implementation, in memory and on a path) on the same data in the same
run, and the server's own in-process cost (the SplatStore call alone, in memory and
durable) for reference.

The server runs in its own process (started here, cpu backend); the clients are one
asyncio process with httpx. Before timing, every query's top-10 from the server is checked
against local mode's. Each figure: a warm-up, then ``--requests`` requests per level.
Results: ``bench/results/server-<backend>.json``.

    python bench/bench_server.py [--points 20000] [--dim 128] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
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
from tests.serving import Server  # noqa: E402


def pct(lat: list[float]) -> dict:
    return {"p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99))}


async def drive(url: str, bodies: list[tuple[str, str, dict]], concurrency: int) -> dict:
    """Send ``bodies`` (method, path, json) with ``concurrency`` clients in flight."""
    import httpx

    lat: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker():
            while not queue.empty():
                method, path, body = queue.get_nowait()
                t = time.perf_counter()
                r = await client.request(method, path, json=body)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"requests_per_s": len(bodies) / wall, **pct(lat)}


def timed(fn, items) -> dict:
    lat = []
    t0 = time.perf_counter()
    for it in items:
        t = time.perf_counter()
        fn(it)
        lat.append(time.perf_counter() - t)
    return {"requests_per_s": len(items) / (time.perf_counter() - t0), **pct(lat)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import httpx
    from qdrant_client import QdrantClient, models

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.points, args.dim)).astype(np.float32)
    Q = rng.standard_normal((args.requests, args.dim)).astype(np.float32)
    payloads = [{"group": int(i % 10)} for i in range(args.points)]
    flt = {"must": [{"key": "group", "match": {"any": [1, 2, 3]}}]}

    local = QdrantClient(":memory:")
    local.create_collection("b", vectors_config=models.VectorParams(
        size=args.dim, distance=models.Distance.COSINE))
    local.upload_points("b", [models.PointStruct(id=i, vector=x.tolist(), payload=p)
                              for i, (x, p) in enumerate(zip(X, payloads, strict=True))])
    store = m2m_gpu.SplatStore(args.dim, metric="cosine", backend="cpu")
    store.add(X, ids=list(range(args.points)), metadata=payloads)

    res: dict = {"machine": platform.node(), "cpus": os.cpu_count(), "backend": "cpu",
                 "points": args.points, "dim": args.dim, "requests_per_level": args.requests,
                 "note": "server and clients share this machine's cores"}
    with tempfile.TemporaryDirectory() as d, Server(Path(d) / "srv") as srv:
        httpx.put(srv.url + "/collections/b", json={"vectors": {"size": args.dim,
                                                                "distance": "Cosine"}})
        for a in range(0, args.points, 5000):
            httpx.put(srv.url + "/collections/b/points?wait=true", timeout=120, json={
                "points": [{"id": i, "vector": X[i].tolist(), "payload": payloads[i]}
                           for i in range(a, min(a + 5000, args.points))]})
        # correctness: the server's top-10 equals local mode's, with and without a filter
        agree = 0
        for q in Q[:50]:
            for f in (None, flt):
                got = httpx.post(srv.url + "/collections/b/points/query", json={
                    "query": q.tolist(), "limit": 10, "filter": f}).json()["result"]["points"]
                want = local.query_points("b", query=q.tolist(), limit=10, query_filter=(
                    None if f is None else models.Filter(**f))).points
                agree += [p["id"] for p in got] == [p.id for p in want]
        res["top10_equal_to_local_mode"] = agree / 100

        search = [("POST", "/collections/b/points/query", {"query": q.tolist(), "limit": 10})
                  for q in Q]
        base = args.points + 1_000_000
        res["server"] = {"search": {}, "upsert": {}}
        for c in (1, 8, 32):
            asyncio.run(drive(srv.url, search[:50], c))  # warm-up
            res["server"]["search"][c] = asyncio.run(drive(srv.url, search, c))
            ups = [("PUT", "/collections/b/points?wait=true", {"points": [
                {"id": base + c * 100_000 + n, "vector": Q[n].tolist(), "payload": {"g": 1}}]})
                for n in range(args.requests)]
            res["server"]["upsert"][c] = asyncio.run(drive(srv.url, ups, c))
            print(c, res["server"]["search"][c], res["server"]["upsert"][c], flush=True)

    res["qdrant_local_mode"] = {
        "search": timed(lambda q: local.query_points("b", query=q.tolist(), limit=10), Q),
        "upsert": timed(lambda n: local.upsert("b", [models.PointStruct(
            id=base + 9_000_000 + n, vector=Q[n].tolist(), payload={"g": 1})]),
            range(args.requests))}
    with tempfile.TemporaryDirectory() as d:  # local mode on a path: it persists
        on_disk = QdrantClient(path=str(Path(d) / "q"))
        on_disk.create_collection("b", vectors_config=models.VectorParams(
            size=args.dim, distance=models.Distance.COSINE))
        res["qdrant_local_mode_path"] = {"upsert": timed(lambda n: on_disk.upsert(
            "b", [models.PointStruct(id=n, vector=Q[n].tolist(), payload={"g": 1})]),
            range(args.requests))}
        on_disk.close()
        durable = m2m_gpu.SplatStore(args.dim, metric="cosine", backend="cpu",
                                     path=Path(d) / "s")
        res["in_process_store_durable"] = {"upsert": timed(lambda n: durable.add(
            Q[n : n + 1], ids=[n], metadata=[{"g": 1}]), range(args.requests))}
        durable.close()
    res["in_process_store"] = {
        "search": timed(lambda q: store.search(q, k=10, rank="distance"), Q),
        "upsert": timed(lambda n: store.add(Q[n : n + 1], ids=[base + 8_000_000 + n],
                                            metadata=[{"g": 1}]), range(args.requests))}
    for who in ("server", "qdrant_local_mode", "qdrant_local_mode_path", "in_process_store",
                "in_process_store_durable"):
        for op in res[who]:
            r = res[who][op]
            best = max(r.values(), key=lambda v: v["requests_per_s"]) if who == "server" else r
            res.setdefault("ratios", {})[f"{who}_{op}_vs_local_mode"] = (
                best["requests_per_s"] / res["qdrant_local_mode"][op]["requests_per_s"])
    save(res, args.out, "server-cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
