"""Consolidation: prune, then merge in rounds, each decision committed as its own operation.

``consolidate(st, commit, reason)`` decides with :mod:`m2m_gpu.store.learning`'s plans and
hands every decision to ``commit`` (the store's: log, then apply; or, replaying a log of
format version 1, apply only), so that what a restart replays is what was decided.
"""

from __future__ import annotations

import logging

from . import learning
from .ops import Merge, Prune
from .results import ConsolidationReport
from .state import StoreState

log = logging.getLogger("m2m_gpu")


def consolidate(st: StoreState, commit, reason: str) -> ConsolidationReport:
    """Prune splats with ``alpha < alpha_prune``, then merge pairs closer than
    ``merge_radius`` (mutually nearest pairs, in rounds until none is left)."""
    table = st.table
    report = ConsolidationReport(before=len(table), reason=reason)
    prune = learning.under_prune(st)
    if prune.size:
        report.pruned = commit(Prune(table.ids_of(prune), reason))
    if st.options.merge_radius > 0:
        for _ in range(learning.MERGE_ROUNDS_MAX):
            plan = learning.plan_merge_round(st)
            if plan is None:
                break
            pairs, pending = plan
            merged = learning.orient_pairs(st, pairs)
            commit(Merge(merged, table.ids_of(pending) if merged else []))
            if not merged:
                break
            report.rounds += 1
            report.merged += merged
        if (table.dirty & table.live).any():  # rounds ran out, or too few splats to pair
            commit(Merge([], []))
    report.after = len(table)
    log.info("consolidate (%s): pruned %d, merged %d, %d -> %d splats", reason,
             len(report.pruned), len(report.merged), report.before, report.after)
    return report
