"""BM25 over the texts of a TextMemory: incremental adds and deletes, no re-index.

Okapi BM25 with Lucene's idf ``log(1 + (N - df + 0.5) / (df + 0.5))`` (it stays positive)
and Anserini's defaults ``k1 = 0.9``, ``b = 0.4``: the textbook ``b = 0.75`` favours short
texts so strongly that on the Debian known-item set (one-line and long texts mixed) it cost
about 16 MRR points. Tokens: lowercased runs of letters and digits, English stop words
dropped, Snowball-stemmed (PyStemmer's English stemmer, about 3 more points); the same
function at index and query time. The state is derived from the stored texts, so a durable
TextMemory rebuilds it on open from what its store holds.

Own scoring rather than ``bm25s``: that library builds a static index (adds and deletes
mean re-indexing), and the memory's writes are one text at a time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

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
    """Postings are dicts term -> {slot: tf} (each document has a slot, reused after a
    delete), so adding or deleting a document touches only its own terms. A query scores
    each of its terms' postings as NumPy arrays (built on first use, dropped when the term
    changes) into one accumulator over the slots."""

    def __init__(self) -> None:
        self.postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.slot: dict[Any, int] = {}
        self.docs: list[Any] = []  # the document in each slot (None: free)
        self._free: list[int] = []
        self.length = np.zeros(0, np.float64)
        self.terms: dict[Any, tuple[str, ...]] = {}  # each document's distinct terms
        self.total = 0  # sum of document lengths

    def __len__(self) -> int:
        return len(self.slot)

    def __iter__(self):
        return iter(list(self.slot))

    def state(self) -> dict[str, dict[Any, int]]:
        """term -> {document: tf}: what the index holds, independent of slots."""
        return {t: {self.docs[s]: tf for s, tf in p.items()} for t, p in self.postings.items()}

    def add(self, doc: Any, text: str) -> None:
        """Index ``text`` as document ``doc`` (replacing what ``doc`` held)."""
        self.remove(doc)
        counts = Counter(tokens(text))
        slot = self._take(doc)
        for term, tf in counts.items():
            self.postings.setdefault(term, {})[slot] = tf
            self._arrays.pop(term, None)
        n = sum(counts.values())
        self.length[slot] = n
        self.terms[doc] = tuple(counts)
        self.total += n

    def _take(self, doc: Any) -> int:
        if self._free:
            slot = self._free.pop()
            self.docs[slot] = doc
        else:
            slot = len(self.docs)
            self.docs.append(doc)
            if slot >= self.length.shape[0]:
                grown = np.zeros(max(1024, 2 * self.length.shape[0]), np.float64)
                grown[: self.length.shape[0]] = self.length
                self.length = grown
        self.slot[doc] = slot
        return slot

    def remove(self, doc: Any) -> None:
        slot = self.slot.pop(doc, None)
        if slot is None:
            return
        self.total -= int(self.length[slot])
        self.length[slot] = 0
        for term in self.terms.pop(doc):
            p = self.postings[term]
            del p[slot]
            self._arrays.pop(term, None)
            if not p:
                del self.postings[term]
        self.docs[slot] = None
        self._free.append(slot)

    def _posting(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        arr = self._arrays.get(term)
        if arr is None:
            p = self.postings.get(term)
            if not p:
                return None
            arr = self._arrays[term] = (np.fromiter(p.keys(), np.int64, len(p)),
                                        np.fromiter(p.values(), np.float64, len(p)))
        return arr

    def _accumulate(self, query: str, allowed) -> tuple[np.ndarray, np.ndarray]:
        """(slots, scores) of the documents sharing a term with ``query`` (and in
        ``allowed``, a set of documents, when given)."""
        N = len(self.slot)
        if N == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        avgdl = self.total / N or 1.0
        acc = np.zeros(len(self.docs), np.float64)
        hit = np.zeros(len(self.docs), bool)
        for term in sorted(set(tokens(query))):
            arr = self._posting(term)
            if arr is None:
                continue
            slots, tf = arr
            idf = math.log(1.0 + (N - slots.shape[0] + 0.5) / (slots.shape[0] + 0.5))
            norm = K1 * (1 - B + B * self.length[slots] / avgdl)
            acc[slots] += idf * tf * (K1 + 1) / (tf + norm)
            hit[slots] = True
        if allowed is not None:
            keep = np.zeros(len(self.docs), bool)
            keep[[self.slot[d] for d in allowed if d in self.slot]] = True
            hit &= keep
        slots = np.flatnonzero(hit)
        return slots, acc[slots]

    def scores(self, query: str, allowed=None) -> dict[Any, float]:
        """BM25 score of every document sharing a term with ``query`` (and in ``allowed``,
        a set, when given)."""
        slots, vals = self._accumulate(query, allowed)
        return {self.docs[s]: float(v) for s, v in zip(slots.tolist(), vals.tolist(),
                                                        strict=True)}

    def top(self, query: str, k: int, allowed=None) -> list[tuple[Any, float]]:
        """The ``k`` best ``(doc, score)``, best first; ties by repr of the id."""
        slots, vals = self._accumulate(query, allowed)
        if k < slots.shape[0]:  # everything tied with the k-th stays in, for the tie rule
            kth = np.partition(vals, slots.shape[0] - k)[slots.shape[0] - k]
            keep = vals >= kth
            slots, vals = slots[keep], vals[keep]
        pairs = [(self.docs[s], v) for s, v in zip(slots.tolist(), vals.tolist(), strict=True)]
        return sorted(pairs, key=lambda kv: (-kv[1], repr(kv[0])))[:k]
