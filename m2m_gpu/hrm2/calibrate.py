"""Probing chosen for a recall target: the smallest ``nprobe`` whose recall@k on a sample
of queries reaches the target, measured against exact answers over the stored rows.

``IndexHRM2(..., target_recall=0.95)`` keeps a held-out sample of its training rows (up
to ``SAMPLE`` rows, a seeded draw) and calibrates after the adds that change its size by
more than ``REGROW``; :meth:`IndexHRM2.calibrate` does it on demand, on any queries.
Recall grows with ``nprobe`` (``p1`` follows ``p2`` when left to its default), so a
binary search over ``1 .. nlist`` finds the smallest setting that reaches the target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

SAMPLE = 256  # calibration queries kept from the training rows
REGROW = 0.25  # recalibrate when the index has grown or shrunk by this share since
log = logging.getLogger("m2m_gpu.hrm2")


@dataclass
class Calibration:
    nprobe: int
    recall: float  # recall@k of the sample at nprobe
    target: float
    k: int
    queries: int
    ntotal: int  # the index size it was measured at
    reached: bool  # False: even probing every cell stays under the target


def held_out(rows: np.ndarray, seed: int) -> np.ndarray:
    """Up to SAMPLE rows of ``rows``, a seeded draw without replacement."""
    n = rows.shape[0]
    pick = np.random.default_rng(seed).choice(n, size=min(SAMPLE, n), replace=False)
    return np.ascontiguousarray(rows[np.sort(pick)])


def exact_ids(index, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids of the exact top-k among the stored rows (the index's own geometry)."""
    from ..knn import knn

    h = index.hrm2
    live = h.live_positions()
    stored = h.rows_at(live)
    q = queries if index._lift is None else index._lift.queries(queries)
    _, pos = knn(q, stored, min(k, live.size), metric="l2", backend=h.backend)
    return h.ids[live[np.asarray(pos)]]


def recall(index, queries: np.ndarray, truth: np.ndarray, k: int, nprobe: int) -> float:
    _, got = index._search(queries, k, nprobe)
    return float(np.mean([len(set(g.tolist()) & set(t.tolist())) / truth.shape[1]
                          for g, t in zip(got, truth, strict=True)]))


def calibrate(index, queries: np.ndarray, target: float, k: int = 10) -> Calibration:
    k = min(k, index.ntotal)
    truth = exact_ids(index, queries, k)
    lo, hi = 1, index.nlist
    best = recall(index, queries, truth, k, hi)
    if best < target:
        out = Calibration(hi, best, target, k, len(queries), index.ntotal, False)
    else:
        at_hi = best
        while lo < hi:  # the smallest nprobe reaching the target
            mid = (lo + hi) // 2
            r = recall(index, queries, truth, k, mid)
            if r >= target:
                hi, at_hi = mid, r
            else:
                lo = mid + 1
        out = Calibration(hi, at_hi, target, k, len(queries), index.ntotal, True)
    log.info("hrm2: nprobe %d gives recall@%d %.3f on %d queries (target %.3f%s)",
             out.nprobe, k, out.recall, out.queries, target,
             "" if out.reached else ", not reached")
    return out
