"""Compiled loops for the cpu backend, through Numba when it is installed.

NumPy is fast for whole-array work but pays a Python step per small product; the HRM2 cell
scan is thousands of small products per batch (one per probed cell), so on cpu it is a loop
compiled with Numba. Without Numba (or with ``M2M_NO_JIT=1``) the cpu backend keeps its NumPy
path, which gives the same results more slowly; ``tests/test_hrm2.py`` runs both.

The kernels here rank on the same keys as the NumPy path and break ties by the smaller row
index, so the selected set does not depend on the thread count or on the order of the cells.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache


@cache
def _installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def available() -> bool:
    """True when the compiled loops can be used (Numba installed, not switched off)."""
    return _installed() and os.environ.get("M2M_NO_JIT", "") in ("", "0")


_loaded = None


def _kernels():
    global _loaded
    if _loaded is None:
        from . import _jit_kernels  # Numba is imported (and the loops compiled) here, once

        _loaded = _jit_kernels
    return _loaded


def _pool():
    """The cpu backend: its thread pool runs the compiled loops (they release the GIL)."""
    from . import get_backend

    return get_backend("cpu")


def threads() -> int:
    return _pool().threads if available() else 1


def scan_cells(queries, rows, sqnorms, ranges, probes, k, mode, params=None, dequant=None):
    """The compiled HRM2 cell scan, over float32 rows or codes (see
    ``_jit_kernels.scan_cells``)."""
    return _kernels().scan_cells(queries, rows, sqnorms, ranges, probes, k, mode, params,
                                 pool=_pool(), dequant=dequant)


def route(queries, coarse, fine, fine_ranges, p1, p2):
    """The compiled two-level routing (see ``_jit_kernels.route``)."""
    return _kernels().route(queries, coarse, fine, fine_ranges, p1, p2, pool=_pool())


def one_searcher(coarse, fine, fine_ranges, ranges, rows, codes=None, codec=None,
                 spill_of=None, code_sq=None):
    """One query's routing, scan and ranking in one compiled call, as a function made once
    per layout (see ``_jit_kernels.one_searcher``)."""
    return _kernels().one_searcher(coarse, fine, fine_ranges, ranges, rows, codes, codec,
                                   spill_of, code_sq)


def project(queries, basis, mean):
    """``basis (q - mean)`` per query (``Codec.queries``), compiled: no BLAS call,
    whose spinning threads would hold the cores the scan that follows needs."""
    return _kernels().project(queries, basis, mean)


def d2_at(queries, rows, pos):
    """Direct-form d2 of each query to the rows at its positions (see
    ``_jit_kernels.d2_at``)."""
    return _kernels().d2_at(queries, rows, pos, pool=_pool())


def sort_scan_rows(keys, ids, d2):
    """A scan's (keys, ids, d2) sorted by (key, id; -1 last), in place where contiguous
    (see ``_jit_kernels.sort_scan_rows``)."""
    return _kernels().sort_scan_rows(keys, ids, d2)


def kmeans_sums(x, assign, k):
    """Per-centroid float64 sums and counts of the rows of ``x`` (see
    ``_jit_kernels.kmeans_sums``)."""
    return _kernels().kmeans_sums(x, assign, k)
