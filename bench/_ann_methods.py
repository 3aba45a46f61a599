"""The approximate methods ``bench_hrm2.py`` compares, each as a build and a sweep.

A method builds once (timed), then ``points()`` yields ``(setting, search)`` pairs, cheapest
first, where ``search(q, k)`` returns the ids. Every method is measured by the same loop
(``bench_hrm2.sweep``), so none gets a different timing or recall rule.
"""

from __future__ import annotations

import os
import time

import numpy as np

import m2m_gpu

PASSES = 3  # timed passes of a one-query-at-a-time run; the best counts (this VM is noisy)


def one_by_one(search, Q: np.ndarray, warm: int = 20, passes: int = PASSES) -> dict:
    """Latency of ``search(q[None])`` (the ids of one query, shape (1, k)) query by query
    over ``Q`` after ``warm`` untimed calls: p50 / p99 in ms of the pass with the best
    p50, and the ids found."""
    for q in Q[:warm]:
        search(q[None])
    best = None
    for _ in range(passes):
        lat, got = [], []
        for q in Q:
            t = time.perf_counter()
            got.append(search(q[None])[0])
            lat.append(time.perf_counter() - t)
        p50 = float(np.percentile(lat, 50))
        if best is None or p50 < best[0]:
            best = (p50, float(np.percentile(lat, 99)))
    return {"p50_ms": 1e3 * best[0], "p99_ms": 1e3 * best[1], "ids": np.stack(got)}


P2 = (2, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64, 96, 128)
NPROBE = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
EF = (10, 16, 24, 32, 48, 64, 96, 128, 256)


class Method:
    name = ""
    label = ""

    def build(self, x: np.ndarray) -> float:
        """Build on ``x``; returns the seconds it took."""
        raise NotImplementedError

    def points(self):
        raise NotImplementedError

    def close(self) -> None:
        """Free what the method holds (the next one may need the memory)."""


class HRM2(Method):
    """m2m's HRM2; ``codec`` None / fp16 / sq8 / pcaN,sq8; ``adaptive`` probing; ``spill``
    (SOAR spilling of the codes); ``wide``: each p2 also at twice the default ``p1``. A
    variant with a codec takes the trained centroids of ``trained_from`` (no second
    k-means): its build time is that training's plus its own add."""

    def __init__(self, backend: str, codec=None, reranks=(None,), adaptive=False,
                 trained_from: HRM2 | None = None, name: str | None = None,
                 spill: bool = False, wide: bool = False) -> None:
        self.backend, self.codec, self.reranks = backend, codec, reranks
        self.adaptive, self.trained_from, self.spill = adaptive, trained_from, spill
        self.wide = wide  # also sweep twice the default coarse probes (p1)
        tag = (codec or "") + (" adaptive" if adaptive else "") + (" spill" if spill else "")
        self.name = name or \
            "hrm2" + ("_" + codec if codec else "") + ("_adaptive" if adaptive else "")
        self.label = "m2m HRM2" + (f" ({tag.strip()})" if tag else "")
        self.index = None
        self.train_s = 0.0

    def build(self, x):
        t0 = time.perf_counter()
        self.index = m2m_gpu.IndexHRM2(x.shape[1], backend=self.backend, codec=self.codec,
                                       adaptive=self.adaptive, spill=self.spill)
        src = self.trained_from
        if src is not None and src.index is not None:
            self.index.copy_training(src.index)
            self.train_s = src.train_s
        else:
            self.index.train(x)
            self.train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.index.add(x)
        return self.train_s + time.perf_counter() - t1

    @property
    def shape(self) -> dict:
        h = self.index.hrm2
        return {"n1": int(h.coarse.shape[0]), "fine_cells": int(h.centroids.cells),
                "default_p1_p2": list(self.index.probes())}

    def points(self):
        idx = self.index
        n1 = idx.hrm2.coarse.shape[0]
        for p2 in P2:
            if p2 > idx.nlist:
                return
            idx.p1, idx.nprobe = None, p2
            wide = min(n1, 2 * idx.probes()[0])  # twice the default coarse cells
            for p1 in (None, wide) if self.wide and wide > idx.probes()[0] else (None,):
                for rr in self.reranks:
                    idx.p1, idx.nprobe = p1, p2
                    if rr is not None:
                        idx.rerank = rr
                    setting = {"p2": p2} | ({"p1": p1} if p1 is not None else {}) | \
                        ({"rerank": rr} if rr is not None else {})
                    yield setting, lambda q, k: idx.search(q, k)[1]

    def scanned(self) -> float:
        return float(self.index.last_report.vectors.mean())

    def close(self):
        self.index = None


class FaissIVF(Method):
    """faiss IVF-Flat or IVF-SQ8 (``QT_8bit``, residuals encoded, FAISS's default) with
    ``nlist`` lists; its own k-means (the build time is the whole of FAISS's)."""

    def __init__(self, nlist: int, sq8: bool = False) -> None:
        self.nlist, self.sq8 = nlist, sq8
        self.name = "faiss_ivf_sq8" if sq8 else "faiss_ivf_flat"
        self.label = "faiss IndexIVFScalarQuantizer (SQ8)" if sq8 else "faiss IndexIVFFlat"

    def build(self, x):
        import faiss

        t0 = time.perf_counter()
        d = x.shape[1]
        self.quantizer = faiss.IndexFlatL2(d)
        self.index = faiss.IndexIVFScalarQuantizer(
            self.quantizer, d, self.nlist, faiss.ScalarQuantizer.QT_8bit) if self.sq8 \
            else faiss.IndexIVFFlat(self.quantizer, d, self.nlist)
        self.index.train(x)
        self.index.add(x)
        return time.perf_counter() - t0

    def points(self):
        for nprobe in NPROBE:
            if nprobe > self.nlist:
                return
            self.index.nprobe = nprobe
            yield {"nprobe": nprobe}, lambda q, k: self.index.search(q, k)[1]

    def close(self):
        self.index = self.quantizer = None


class Hnsw(Method):
    """hnswlib, ``M`` links, ef_construction 100, on every CPU thread."""

    def __init__(self, M: int) -> None:
        self.M = M
        self.name = f"hnswlib_m{M}"
        self.label = f"hnswlib (M={M})"

    def build(self, x):
        import hnswlib

        t0 = time.perf_counter()
        self.index = hnswlib.Index(space="l2", dim=x.shape[1])
        self.index.init_index(max_elements=x.shape[0], M=self.M, ef_construction=100,
                              random_seed=1)
        self.index.set_num_threads(os.cpu_count() or 1)
        self.index.add_items(x, np.arange(x.shape[0]))
        return time.perf_counter() - t0

    def points(self):
        for ef in EF:
            self.index.set_ef(ef)
            yield {"ef": ef}, lambda q, k: self.index.knn_query(q, k)[0]

    def close(self):
        self.index = None
