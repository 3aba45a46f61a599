"""Learning: Hebbian feedback, decay, and the decisions of consolidation (SPEC section 2).

Each change comes in two halves. A *plan* reads the state and decides (which rows an event
touches, which splats fall under ``alpha_prune``, which pairs merge this round); an
*apply* carries a decision out. Operations log the decision between the two, so replaying
a log applies exactly what the live store decided (kernels on another backend may round
differently; a restart never decides differently).
"""

from __future__ import annotations

import numpy as np

from ..backends.base import MODE_DISTANCE, PARAM_ALPHA, PARAM_KAPPA, HebbianPlan
from ..errors import InvalidInputError
from .state import StoreState

MERGE_ROUNDS_MAX = 64


# ---- feedback -----------------------------------------------------------------------------
def feedback_events(st: StoreState, rel: list[list], irr: list[list]):
    """Per event, the slots named relevant (+1) and irrelevant (-1), as flat arrays
    ``(event, slot, sign)``; an unknown id, or an id on both sides of one event, raises."""
    ev_q, ev_rows, ev_sign = [], [], []
    for e in range(len(rel)):
        r_slots = st.table.slots_for(rel[e])
        i_slots = st.table.slots_for(irr[e])
        both = set(r_slots) & set(i_slots)
        if both:
            names = sorted((st.table.ids[s] for s in both), key=repr)
            raise InvalidInputError(f"event {e}: ids {names} are both relevant and irrelevant")
        for s in r_slots:
            ev_q.append(e), ev_rows.append(s), ev_sign.append(1)
        for s in i_slots:
            ev_q.append(e), ev_rows.append(s), ev_sign.append(-1)
    return (np.array(ev_q, dtype=np.int64), np.array(ev_rows, dtype=np.int64),
            np.array(ev_sign, dtype=np.int64))


def apply_feedback(st: StoreState, q, ev_q, ev_rows, ev_sign) -> np.ndarray:
    """Run the Hebbian kernel for the events and keep hits, dirty flags, ``||mu||^2`` and
    the index in step; returns the slots it touched."""
    plan = HebbianPlan.build(ev_q, ev_rows, ev_sign)
    arrays = st.arrays
    arrays.hebbian(q, plan, st.rates)
    rel_rows = ev_rows[ev_sign > 0]
    moved = np.unique(rel_rows)
    arrays.rows.touch(moved)
    if moved.size:
        np.add.at(st.table.hits, rel_rows, 1)
        st.table.dirty[moved] = True
        if arrays.sq is not None or st.index is not None or st.options.dedup:
            rows = np.asarray(arrays.mu(moved), np.float32)
            arrays.refresh_sq(moved, rows)
            st.rehash(moved, rows)
            if st.index is not None:  # re-assigned if mu crossed into another cell
                st.index.moved(moved, rows)
    st.params_changed()
    return np.unique(plan.rows)


# ---- decay and pruning ----------------------------------------------------------------------
def apply_decay(st: StoreState, now: float) -> None:
    st.arrays.decay(float(now) - st.options.clock, st.lam)
    st.params_changed()
    st.clock = float(now)


def under_prune(st: StoreState, alpha: np.ndarray | None = None) -> np.ndarray:
    """Live slots whose alpha is under ``alpha_prune``."""
    alpha = st.arrays.alpha() if alpha is None else alpha
    return np.flatnonzero(st.table.live & (alpha < st.options.alpha_prune))


def prune_share_reached(st: StoreState) -> str | None:
    """Why an automatic consolidation is due after decay or feedback (more than
    ``prune_share`` of the total alpha under ``alpha_prune``), or None."""
    alpha = st.arrays.alpha()[st.table.live]
    total = float(alpha.sum())
    low = float(alpha[alpha < st.options.alpha_prune].sum())
    if total > 0 and low > st.options.prune_share * total:
        return f"{low / total:.0%} of total alpha is under alpha_prune"
    return None


# ---- merging ------------------------------------------------------------------------------
def plan_merge_round(st: StoreState) -> tuple[np.ndarray, np.ndarray] | None:
    """One round of merging: ``(pairs, pending)`` or None when nothing is left to do.

    Candidates are the dirty live splats; each one's nearest other splat closer than
    ``merge_radius`` is its partner. A pair is accepted when it is the closest candidate
    pair of both its ends (exact ties: the first in slot order, pairs disjoint). ``pairs``
    are slots ``(a, b)``; ``pending`` are the candidates that had a partner close enough
    (they stay dirty for the next round); the other candidates are settled."""
    table = st.table
    cand = np.flatnonzero(table.dirty & table.live)
    if cand.size == 0 or len(table) < 2:
        return None
    r2 = np.float32(st.options.merge_radius) ** 2
    qrows = st.arrays.mu(cand)
    kk = min(3, len(table))
    _, nb, d2 = st.arrays.topk(qrows, kk, MODE_DISTANCE)
    other = nb != cand[:, None]
    first = np.argmax(other, axis=1)  # nearest neighbour that is not the row itself
    j = nb[np.arange(cand.size), first]
    dj = d2[np.arange(cand.size), first]
    ok = other.any(axis=1) & (dj < r2) & (j >= 0)
    a, b, dist = cand[ok], j[ok], dj[ok]
    if a.size == 0:
        return np.zeros((0, 2), np.int64), a
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pairs, idx = np.unique(np.stack([lo, hi], 1), axis=0, return_index=True)
    dist = dist[idx]
    best = np.full(table.n, np.inf)
    np.minimum.at(best, pairs[:, 0], dist)
    np.minimum.at(best, pairs[:, 1], dist)
    pairs = pairs[(best[pairs[:, 0]] == dist) & (best[pairs[:, 1]] == dist)]
    used = np.zeros(table.n, dtype=bool)  # exact ties: keep pairs disjoint
    keep = []
    for p, (s1, s2) in enumerate(pairs.tolist()):  # over accepted pairs only, not splats
        if not used[s1] and not used[s2]:
            used[s1] = used[s2] = True
            keep.append(p)
    return pairs[keep], a


def orient_pairs(st: StoreState, pairs: np.ndarray) -> list[tuple]:
    """``(absorbed id, survivor id)`` per pair: the larger alpha survives (the first of
    the pair on a tie)."""
    if not len(pairs):
        return []
    p = st.arrays.params_of(pairs.reshape(-1))[:, PARAM_ALPHA].reshape(-1, 2)
    first_wins = p[:, 0] >= p[:, 1]
    surv = np.where(first_wins, pairs[:, 0], pairs[:, 1])
    gone = np.where(first_wins, pairs[:, 1], pairs[:, 0])
    return [(st.table.ids[g], st.table.ids[s]) for g, s in zip(gone.tolist(), surv.tolist(),
                                                                strict=True)]


def apply_merge(st: StoreState, merged: list, pending: list) -> None:
    """Carry out one merge round: candidates settle except ``pending`` (ids), and each
    ``(absorbed, survivor)`` pair becomes one splat at the alpha-weighted mean (alpha
    summed, the smaller kappa); the absorbed id resolves to the survivor from then on."""
    table = st.table
    table.dirty[table.dirty & table.live] = False
    if pending:
        table.dirty[np.array(table.slots_for(pending), dtype=np.int64)] = True
    if not merged:
        return
    gone = np.array([table.slot[g] for g, _ in merged], dtype=np.int64)
    surv = np.array([table.slot[s] for _, s in merged], dtype=np.int64)
    pg, ps = st.arrays.params_of(gone), st.arrays.params_of(surv)
    wg, ws = pg[:, PARAM_ALPHA].astype(np.float64), ps[:, PARAM_ALPHA].astype(np.float64)
    mu = (wg[:, None] * st.arrays.mu(gone).astype(np.float64) +
          ws[:, None] * st.arrays.mu(surv).astype(np.float64)) / (wg + ws)[:, None]
    if st.metric == "cosine":
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    params = ps.astype(np.float32).copy()
    params[:, PARAM_ALPHA] = pg[:, PARAM_ALPHA] + ps[:, PARAM_ALPHA]
    params[:, PARAM_KAPPA] = np.minimum(pg[:, PARAM_KAPPA], ps[:, PARAM_KAPPA])
    st.moved(surv, mu.astype(np.float32))
    st.arrays.set_params(surv, params)
    for g, s in merged:
        table.retarget(g, s)
    table.hits[surv] += table.hits[gone]
    table.dirty[surv] = True
    st.free(np.sort(gone))  # may compact: slots change, ids do not
    for g, s in merged:
        table.alias[g] = s
