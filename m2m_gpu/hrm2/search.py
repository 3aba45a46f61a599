"""One HRM2 search: route, scan the probed cells (in two rounds when adaptive), report.

Adaptive probing: the fine cells are scanned nearest first in two rounds; after the first
quarter, a cell is skipped when it cannot hold anything better than the query's current
k-th result (lower bound ``(|q - c| - radius_c)^2`` from the cell's radius: exact for l2),
or when its centroid is more than ``ratio`` times farther than the nearest one (the query
sits deep inside its cell). Every search reports how many cells and vectors each query
scanned.

A search reads the router and the layout and moves no row: the rows of the scanned cells
are counted as accessed, and running out of device memory caps the hot tier and retries
with smaller fetched blocks; the placement pass that acts on both is the writer's
(:meth:`m2m_gpu.hrm2.HRM2.rebalance`, when :meth:`~m2m_gpu.hrm2.HRM2.rebalance_due`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends import _jit
from ..backends.base import MODE_DISTANCE
from ..ops.topk import merge_by_key, sort_rows
from .layout import CellLayout
from .routing import Router
from .scan import CellScanner

RERANK = 4  # with a codec: candidates per result re-ranked exactly (FAISS's k_factor)
RETRIES = 2  # scans retried after running out of device memory (three tries in all)


@dataclass
class ProbeReport:
    cells: np.ndarray  # int64[m]: fine cells scanned per query
    vectors: np.ndarray  # int64[m]: rows scanned per query


def search(router: Router, layout: CellLayout, scanner: CellScanner, q: np.ndarray, k: int,
           p1: int, p2: int, *, adaptive: bool, ratio: float | None, mode: int, params,
           cache: bool, rerank: int = RERANK):
    """``(keys, positions, d2, report)`` (host) for validated float32 queries ``q``, best
    first, ties by position (see :meth:`m2m_gpu.hrm2.HRM2.search`)."""
    be = layout.backend
    coded = layout.codec is not None
    if q.shape[0] == 1 and q.flags.c_contiguous and not adaptive and \
            mode == MODE_DISTANCE and params is None:
        one = one_query(router, layout, scanner)
        found = None if one is None else one(q, k, p1, p2, rerank)
        if found is not None:
            d2, pos, _, report = found
            return d2.copy(), pos, d2, report
    cells, cdist = router.route(q, p1, p2)
    C = router.centroids.cells
    if adaptive and ratio is not None:
        far = cdist > (ratio**2) * cdist[:, :1]
        cells = np.where(far, -1, cells)
    qn = be.from_host(q)
    qc = qn if not coded or not layout.codec.projected else \
        be.from_host(layout.codec.queries(q))  # the queries in the codes' space
    if params is None:
        params, cache = layout.mask_params(), False

    def scan(c):
        if coded:
            _, cand, _ = scanner.scan_codes(qc, layout.code_probes(c), rerank * k, mode,
                                            params, cache, ranked=False)  # ranked again next
            if layout.spilled:  # a row found in two of its cells counts once
                cand = _distinct(cand)
            return exact_rerank(layout, q, cand, k, mode, params)
        probes = np.concatenate([c, np.where(c >= 0, c + C, -1)], 1)
        return _scan_retrying(layout, scanner, qn, probes, k, mode, params, cache)

    if not adaptive or cells.shape[1] < 4:
        keys, pos, d2 = scan(cells)
        scanned = cells
    else:
        first = max(1, cells.shape[1] // 4)
        keys, pos, d2 = scan(cells[:, :first])
        kth = d2[:, -1]  # +inf while fewer than k found
        rad = layout.radius[np.where(cells >= 0, cells, 0)]
        lower = np.maximum(np.sqrt(cdist) - rad, 0) ** 2
        rest = cells[:, first:]
        rest = np.where(lower[:, first:] < kth[:, None], rest, -1)
        scanned = np.concatenate([cells[:, :first], rest], 1)
        if (rest >= 0).any():
            twice = coded and layout.spilled  # a row found in each round: counted once
            keys, pos, d2 = merge_by_key([(keys, pos, d2), scan(rest)], 2 * k if twice
                                         else k)
            if twice:
                keys, pos, d2 = _once(keys, pos, d2, k)
    return keys, pos, d2, _scanned(layout, scanner, scanned)


def _distinct(cand: np.ndarray) -> np.ndarray:
    """Each row's positions once (repeats become -1 pads; the order does not matter)."""
    s = np.sort(cand, axis=1)
    if s.shape[1] > 1:
        s[:, 1:][s[:, 1:] == s[:, :-1]] = -1
    return s


def _once(keys: np.ndarray, pos: np.ndarray, d2: np.ndarray, k: int):
    """The k best of rows sorted by (key, position) with each position kept once (a
    repeat has the same key, exactly: the same row ranked by the same arithmetic, so it
    sits next to its first)."""
    again = np.zeros(pos.shape, bool)
    again[:, 1:] = (pos[:, 1:] == pos[:, :-1]) & (pos[:, 1:] >= 0)
    if again.any():
        keys, pos, d2 = (np.where(again, pad, a) for a, pad in
                         ((keys, np.inf), (pos, -1), (d2, np.inf)))
        keys, pos, d2 = sort_rows(keys, pos, d2)
    return keys[:, :k], pos[:, :k], d2[:, :k]


def exact_rerank(layout: CellLayout, q: np.ndarray, cand: np.ndarray, k: int, mode: int,
                 params):
    """The k best of the candidate positions ``cand`` (int64[m, c], -1 pad; found on the
    codes) ranked again on their float32 rows, read from whatever tier holds them:
    ``(keys, positions, d2)`` as a scan returns them (``ops.host_cells.finish_scan``)."""
    from ..ops.host_cells import finish_scan

    dense = layout.tiers.dense()
    jit = getattr(layout.backend, "jit", False)  # one arithmetic whatever the tiers
    if isinstance(dense, np.ndarray) and jit:
        rows, local = dense, None  # every row on the host: read in place
    else:
        safe = np.where(cand >= 0, cand, 0)
        uniq, inv = np.unique(safe, return_inverse=True)
        rows, local = layout.rows_at(uniq), inv.reshape(safe.shape)
    keys, pos, d2 = finish_scan(q, rows, cand, mode, params, local, jit=jit)
    return keys[:, :k], pos[:, :k], d2[:, :k]


def _scanned(layout: CellLayout, scanner: CellScanner, scanned: np.ndarray) -> ProbeReport:
    """What the queries scanned (int64[m, P] cells, -1 pad): counted as accessed by the
    tier policy, and reported."""
    sizes = scanner.cached("sizes", None, layout.cell_sizes)
    hit = scanned >= 0
    counted = np.where(hit, sizes[np.where(hit, scanned, 0)], 0)
    layout.touch(scanned)
    return ProbeReport(hit.sum(1), counted.sum(1))


def one_query(router: Router, layout: CellLayout, scanner: CellScanner) -> OneQuery | None:
    """The single-query search of this layout, or None where it does not apply (no
    compiled loops, not every row hot on the host). Kept until the layout or the tiers
    change (:meth:`CellScanner.cached`)."""
    return scanner.cached("one", router, lambda: OneQuery.of(router, layout, scanner))


class OneQuery:
    """One query on the cpu backend with every row hot: routing, scan, ranking and the
    report's counts in one compiled call (``_jit.one_searcher``), without the batch path's
    grouping and merges, and with the per-layout arguments (the rows among them) made
    once. With a codec the call scans the codes (with the query projected first, after a
    projection) for the ``rerank * k`` best rows and ranks those again on their float32
    rows. Same answer as the batch path with the same probes (to the rounding of the two
    forms of d2 at the candidates' boundary): the direct-form d2, ties by position."""

    __slots__ = ("_layout", "_search")

    def __init__(self, layout: CellLayout, search) -> None:
        self._layout, self._search = layout, search

    @classmethod
    def of(cls, router: Router, layout: CellLayout,
           scanner: CellScanner) -> OneQuery | None:
        rows = layout.tiers.dense() if getattr(layout.backend, "jit", False) else None
        if rows is None:
            return None
        c, L = router.centroids, layout
        if L.codec is None:
            return cls(L, _jit.one_searcher(c.coarse, c.fine, c.fine_ranges, L.ranges, rows))
        codes, code_sq, ranges = scanner.host_codes()  # the batch scan's, shared
        return cls(L, _jit.one_searcher(c.coarse, c.fine, c.fine_ranges, ranges, rows, codes,
                                        L.codec, L.spill_of if L.spilled else None,
                                        code_sq))

    def __call__(self, q: np.ndarray, k: int, p1: int, p2: int, rerank: int = RERANK):
        """``(d2 float32[1, k], positions int64[1, k], ids int64[1, k], report)`` for the
        C-contiguous float32 query ``q`` (shape (1, d)); pads: inf / -1. None, with nothing
        counted, when a value of ``q`` is NaN, inf or from 2**50 up in magnitude: the
        general path validates and searches it."""
        L = self._layout
        cells, d2, pos, ids, ncells, nrows = self._search(q[0], p1, p2, L.dead, L.ids, k,
                                                          rerank)
        if ncells < 0:
            return None
        L.touch(cells)
        return d2, pos, ids, ProbeReport(np.array([ncells]), np.array([nrows]))


def _scan_retrying(layout: CellLayout, scanner: CellScanner, qn, probes, k, mode, params,
                   cache):
    """The scan; when the device runs out of memory inside it, again with smaller fetched
    blocks (:meth:`~.rows.CellRows.out_of_memory`)."""
    block = layout.rows.stream_block()
    for attempt in range(RETRIES + 1):
        try:
            return scanner.scan(qn, probes, k, mode, params, cache, block)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if attempt == RETRIES or not layout.backend.is_out_of_memory(exc):
                raise
            block = layout.rows.out_of_memory(exc, block)
