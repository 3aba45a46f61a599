"""BM25 over the texts of a TextMemory: incremental adds and deletes, no re-index.

Okapi BM25 with Lucene's idf ``log(1 + (N - df + 0.5) / (df + 0.5))`` (it stays positive)
and Anserini's defaults ``k1 = 0.9``, ``b = 0.4``: the textbook ``b = 0.75`` favours short
texts so strongly that on the Debian known-item set (a mix of one-line and long texts) it
cost 17 MRR points (``bench/bench_text_memory.py``). Tokens: lowercased runs of letters and
digits, English stop words dropped, Snowball-stemmed (PyStemmer's English stemmer; 3 more
points there); the same function at index and query time. Postings are dicts term -> {doc: tf},
so adding or deleting a document touches only its own terms. The state is derived from
the stored texts, so a durable TextMemory rebuilds it on open from what its store holds.

Own scoring rather than ``bm25s``: that library builds a static index (adds and deletes
mean re-indexing), and the memory's writes are one text at a time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

K1, B = 0.9, 0.4
_TOKEN = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be
because been before being below between both but by can did do does doing down during each
few for from further had has have having he her here hers herself him himself his how i if
in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very
was we were what when where which while who whom why will with you your yours yourself
yourselves""".split())


_STEMMER: list = []


def _stem(words: list[str]) -> list[str]:
    if not _STEMMER:  # made on first use: import m2m_gpu stays light
        import Stemmer

        _STEMMER.append(Stemmer.Stemmer("english"))
    return _STEMMER[0].stemWords(words)


def tokens(text: str) -> list[str]:
    """The index and query terms of ``text``: words, stop words dropped, stemmed."""
    return _stem([t for t in _TOKEN.findall(text.lower()) if t not in STOP_WORDS])


class BM25:
    def __init__(self) -> None:
        self.postings: dict[str, dict[Any, int]] = {}
        self.lengths: dict[Any, int] = {}
        self.terms: dict[Any, tuple[str, ...]] = {}  # each document's distinct terms
        self.total = 0  # sum of document lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, doc: Any, text: str) -> None:
        """Index ``text`` as document ``doc`` (replacing what ``doc`` held)."""
        self.remove(doc)
        counts = Counter(tokens(text))
        for term, tf in counts.items():
            self.postings.setdefault(term, {})[doc] = tf
        n = sum(counts.values())
        self.lengths[doc] = n
        self.terms[doc] = tuple(counts)
        self.total += n

    def remove(self, doc: Any) -> None:
        n = self.lengths.pop(doc, None)
        if n is None:
            return
        self.total -= n
        for term in self.terms.pop(doc):
            p = self.postings[term]
            del p[doc]
            if not p:
                del self.postings[term]

    def scores(self, query: str, allowed=None) -> dict[Any, float]:
        """BM25 score of every document sharing a term with ``query`` (and in ``allowed``,
        a set, when given)."""
        N = len(self.lengths)
        if N == 0:
            return {}
        avgdl = self.total / N or 1.0
        out: dict[Any, float] = {}
        for term in set(tokens(query)):
            p = self.postings.get(term)
            if not p:
                continue
            idf = math.log(1.0 + (N - len(p) + 0.5) / (len(p) + 0.5))
            for doc, tf in p.items():
                if allowed is not None and doc not in allowed:
                    continue
                dl = self.lengths[doc]
                out[doc] = out.get(doc, 0.0) + idf * tf * (K1 + 1) / (
                    tf + K1 * (1 - B + B * dl / avgdl))
        return out

    def top(self, query: str, k: int, allowed=None) -> list[tuple[Any, float]]:
        """The ``k`` best ``(doc, score)``, best first; ties by repr of the id."""
        s = self.scores(query, allowed)
        return sorted(s.items(), key=lambda kv: (-kv[1], repr(kv[0])))[:k]
