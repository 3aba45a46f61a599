"""LangChain ``similarity_search`` over 100K documents: m2m-gpu's M2MVectorStore against
langchain_community's FAISS store (IndexFlatL2), same embeddings, same run.

Embeddings are precomputed (clustered synthetic 384-d vectors, unit length, as sentence
embeddings are), served by a lookup ``Embeddings`` so both stores pay the same (nothing)
for embedding. Both stores are checked first: the top-k document contents must agree for
every query (up to exact distance ties). Then each store answers the queries one call at a
time (what a RAG pipeline does), after a warm-up, several repeats, median reported, and the
ratio of queries per second. Results go to ``bench/results/langchain-<backend>.json``.

    python bench/bench_langchain.py [--docs 100000] [--queries 200] [--backend cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import m2m_gpu  # noqa: E402


class Lookup:
    """Precomputed embeddings: "doc-<i>" and "q-<j>" name rows of two matrices."""

    def __init__(self, docs: np.ndarray, queries: np.ndarray) -> None:
        self.docs, self.queries = docs, queries

    def embed_documents(self, texts):
        return self.docs[[int(t[4:]) for t in texts]].tolist()

    def embed_query(self, text):
        return self.queries[int(text[2:])].tolist()

    async def aembed_query(self, text):
        return self.embed_query(text)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(fn, queries: list[str], repeats: int) -> float:
    """Median queries per second over ``repeats`` passes (after one warm-up pass)."""
    for q in queries[:20]:
        fn(q)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for q in queries:
            fn(q)
        rates.append(len(queries) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> int:
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import Embeddings

    from m2m_gpu.integrations.langchain import M2MVectorStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    be = m2m_gpu.get_backend(args.backend)
    d = 384
    X = unit(m2m_gpu.synthetic(args.docs, d, seed=3, kind="clustered", clusters=200,
                               spread=0.4))
    Q = unit(m2m_gpu.synthetic(args.queries, d, seed=3, kind="clustered", clusters=200,
                               spread=0.4, part="queries"))
    emb = Lookup(X, Q)
    Embeddings.register(Lookup)
    texts = [f"doc-{i}" for i in range(args.docs)]
    queries = [f"q-{j}" for j in range(args.queries)]

    t0 = time.perf_counter()
    ours = M2MVectorStore(emb, backend=be)
    for a in range(0, args.docs, 10_000):
        ours.add_texts(texts[a : a + 10_000], ids=texts[a : a + 10_000])
    build_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = FAISS.from_embeddings(list(zip(texts, X.tolist(), strict=True)), emb,
                                   ids=texts)
    build_faiss = time.perf_counter() - t0

    mismatches = 0  # correctness first: the same documents for every query
    for q in queries:
        a = [doc.page_content for doc in ours.similarity_search(q, k=args.k)]
        b = [doc.page_content for doc in theirs.similarity_search(q, k=args.k)]
        if a != b:
            da = np.sort(((X[[int(t[4:]) for t in a]] - Q[int(q[2:])]) ** 2).sum(1))
            db = np.sort(((X[[int(t[4:]) for t in b]] - Q[int(q[2:])]) ** 2).sum(1))
            if not np.allclose(da, db, atol=1e-5):
                raise SystemExit(f"query {q}: results differ: {a} vs {b}")
            mismatches += 1  # a distance tie, broken differently
    ours_qps = timed(lambda q: ours.similarity_search(q, k=args.k), queries, args.repeats)
    faiss_qps = timed(lambda q: theirs.similarity_search(q, k=args.k), queries, args.repeats)
    res = {
        "case": f"LangChain similarity_search, {args.docs} docs x {d}, k={args.k}, one query "
                "per call",
        "backend": be.name, "device": be.info.device, "machine": platform.machine(),
        "cpus": os.cpu_count(), "queries": args.queries, "repeats": args.repeats,
        "m2m_queries_per_s": ours_qps, "faiss_queries_per_s": faiss_qps,
        "ratio_m2m_to_faiss": ours_qps / faiss_qps, "ties_broken_differently": mismatches,
        "build_s": {"m2m": build_ours, "faiss": build_faiss},
    }
    print(json.dumps(res, indent=1))
    out = Path(args.out or Path(__file__).parent / "results" / f"langchain-{be.name}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
