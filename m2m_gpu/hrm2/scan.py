"""Scanning the probed cells of a :class:`~.layout.CellLayout` exactly.

When every row is hot the scan runs in place on the dense matrix. Otherwise the hot rows
are scanned in place (each tier keeps its rows in position order, so a cell's hot rows are
one range of the hot tier) and the probed rows that are not hot are fetched to the device
in blocks of about ``block_rows`` and scanned by the same kernel; the parts are merged by
(key, position), the order every layout returns (``Backend.scan_cells``; on cpu a compiled
loop that reads each probed cell once for all the queries of a batch that probe it).

Device copies of the position-ordered params and norms are kept between searches
(:meth:`CellScanner.cached`), built at most once per change under a small lock, so
concurrent searches share them.
"""

from __future__ import annotations

import numpy as np

from ..locking import ForkSafeLock
from ..ops.topk import merge_by_key
from ..tiers import HOT
from .layout import CellLayout, expand


def _uncached(name, source, make):
    return make()


class CellScanner:
    def __init__(self, layout: CellLayout) -> None:
        self.layout = layout
        self._cache: dict = {}
        self._codes: dict = {}
        self._lock = ForkSafeLock(reentrant=True)  # a make() may read another cached value

    def cached(self, name: str, source, make):
        """``make()``, kept while ``source`` is the same object and neither the layout's
        rows nor the hot tier have changed. Double-checked: concurrent callers build it
        once."""
        key = (self.layout.version, self.layout.tiers.version)
        return self._kept(self._cache, key, name, source, make)

    def host_codes(self):
        """``(rows, sqnorms, ranges)`` of the code space on the host (``CellLayout``'s
        ``code_rows``, ``code_sqnorms``, ``code_ranges``: with the spilled copies), made
        once per change of the layout for the batch scan and the one-query path alike."""
        L = self.layout
        return self.cached_codes("host_codes", None, lambda: (
            L.code_rows(), L.code_sqnorms(), L.code_ranges()))

    def cached_codes(self, name: str, source, make):
        """As :meth:`cached`, for the compressed copies: kept while the layout's rows are
        the same (tier moves leave the codes as they are)."""
        return self._kept(self._codes, self.layout.version, name, source, make)

    def _kept(self, store: dict, key, name: str, source, make):
        hit = store.get(name)
        if hit is not None and hit[0] is source and hit[1] == key:
            return hit[2]
        with self._lock:
            hit = store.get(name)
            if hit is not None and hit[0] is source and hit[1] == key:
                return hit[2]
            if any(v[1] != key for v in store.values()):
                store.clear()  # the layout changed: drop stale device copies
            value = make()
            store[name] = (source, key, value)
            return value

    def scan(self, qn, probes: np.ndarray, k: int, mode: int, params, cache: bool,
             block_rows: int | None = None):
        """``(keys, positions, d2)`` top-k over the ranges ``probes`` (int64[m, P], -1 pad)
        for the native queries ``qn``. ``params``: host float32[ntotal, PARAM_WIDTH] or
        None; its device copies are kept unless ``cache=False``. ``block_rows``: fetch
        every probed row (hot ones too) in blocks of at most that many rows instead of
        reading the hot tier in place (after running out of device memory)."""
        L, tm = self.layout, self.layout.tiers
        be = L.backend
        sq_all = L.sqnorms if be.uses_sqnorms else None
        keep = self.cached if cache else _uncached
        parts = []
        hot_ranges = None
        if block_rows is None:
            dense = tm.dense()
            if dense is not None:
                prm = None if params is None else keep(
                    "params", params, lambda: tm.upload(params, dense))
                sq = None if sq_all is None else self.cached(
                    "sq", None, lambda: be.from_host(sq_all))
                return merge_by_key([be.scan_cells(qn, dense, L.ranges, probes, k, mode, prm,
                                                   sq)], k)
            hot = tm.hot_slots
            hot_ranges = np.searchsorted(hot, L.ranges)  # hot rows are in position order
            if hot.size:
                rows = tm.hot_store.view()
                prm = None if params is None else keep(
                    "hot_params", params, lambda: tm.upload(params[hot], rows))
                sq = None if sq_all is None else self.cached(
                    "hot_sq", None, lambda: be.from_host(np.ascontiguousarray(sq_all[hot])))
                kk, pp, dd = be.scan_cells(qn, rows, hot_ranges, probes, k, mode, prm, sq)
                parts.append((kk, np.where(pp >= 0, hot[np.maximum(pp, 0)], -1), dd))
        parts += self._fetched(qn, probes, k, mode, params, sq_all, hot_ranges,
                               block_rows or tm.block_rows)
        if not parts:
            m = probes.shape[0]
            return (np.full((m, k), np.inf, np.float32), np.full((m, k), -1, np.int64),
                    np.full((m, k), np.inf, np.float32))
        return merge_by_key(parts, k)

    def scan_codes(self, qn, probes: np.ndarray, k: int, mode: int, params, cache: bool,
                   ranked: bool = True):
        """``(keys, positions, d2)`` top-k over the code ranges ``probes``
        (``CellLayout.code_probes``) ranked on the compressed rows (d2 of the decoded rows).
        The codes (with the spilled copies, when spilled) are held whole on the device (a
        copy kept until the layout changes), whatever tier the float32 rows are in.
        ``params`` are in position order. A spilled copy found is reported at its row's
        position, so a position may come twice. ``ranked=False``: only the positions found
        count (see ``Backend.scan_cells``)."""
        L = self.layout
        be = L.backend
        keep = self.cached_codes if cache else _uncached
        rows, sqnorms, ranges = self.host_codes()
        codes = self.cached_codes("codes", None, lambda: be.from_host(rows))
        prm = None if params is None else keep(
            "code_params", params, lambda: be.from_host(L.code_params(params), like=codes))
        sq = None if not be.uses_sqnorms else self.cached_codes(
            "code_sq", None, lambda: be.from_host(sqnorms))
        keys, pos, d2 = be.scan_cells(qn, codes, ranges, probes, k, mode, prm, sq,
                                      dequant=L.codec.dequant, ranked=ranked)
        if L.spilled:  # code rows to positions
            at = self.cached_codes("code_positions", None, L.code_positions)
            pos = np.where(pos >= 0, at[np.maximum(pos, 0)], -1)
        return keys, pos, d2

    def _fetched(self, qn, probes, k, mode, params, sq_all, hot_ranges, block_rows):
        """The probed rows not in ``hot_ranges`` (None: every probed row), fetched to the
        device in groups of whole ranges of about ``block_rows`` rows, scanned group by
        group."""
        L, tm = self.layout, self.layout.tiers
        be, ranges = L.backend, L.ranges
        used = np.unique(probes[probes >= 0])
        rest = ranges[used, 1] - ranges[used, 0]
        if hot_ranges is not None:
            rest = rest - (hot_ranges[used, 1] - hot_ranges[used, 0])
        used, rest = used[rest > 0], rest[rest > 0]
        parts = []
        start = 0
        while start < used.size:
            stop = start + max(1, int(np.searchsorted(np.cumsum(rest[start:]), block_rows,
                                                      side="right")))
            group, count = used[start:stop], rest[start:stop]
            pos = expand(ranges[group])
            if hot_ranges is not None:
                pos = pos[tm.tier[pos] != HOT]  # per range, in position order
            local = np.zeros_like(ranges)
            local[group, 1] = np.cumsum(count)
            local[group, 0] = local[group, 1] - count
            rows = tm.fetch(pos, like=tm.hot_store)
            prm = None if params is None else tm.upload(params[pos], rows)
            sq = None if sq_all is None else be.from_host(np.ascontiguousarray(sq_all[pos]))
            kk, pp, dd = be.scan_cells(qn, rows, local, probes, k, mode, prm, sq)
            parts.append((kk, np.where(pp >= 0, pos[np.maximum(pp, 0)], -1), dd))
            start = stop
        return parts
