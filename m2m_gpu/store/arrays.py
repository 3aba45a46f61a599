"""``SplatArrays``: a store's per-slot arrays on the backend, and the kernels over them.

``mu`` (float32[slots, d]) is held by a :class:`m2m_gpu.tiers.TierManager`: by default all
on the device as one dense matrix; with tier budgets spread over device, host and a
memory-mapped file and streamed through the device. ``params`` (float32[slots, 4]: alpha,
kappa, last_tick, -) stay on the device for every slot, plus ``||mu||^2`` where the backend
uses the fast form (``uses_sqnorms``). A free slot has alpha 0, which every kernel ignores.
The slot count itself is the :class:`~m2m_gpu.store.slots.SlotTable`'s; this class only
follows it (``append`` and ``keep``).
"""

from __future__ import annotations

import numpy as np

from ..backends.base import PARAM_ALPHA, PARAM_WIDTH, HebbianPlan, HebbianRates
from ..ops.splat import combine_energies
from ..ops.topk import merge_by_key
from ..tensor import host_array, to_native
from ..tiers import HOT, TierManager, TierOptions


class SplatArrays:
    def __init__(self, dim: int, backend, tiers: TierOptions, cold_dir=None) -> None:
        self.dim = dim
        self.backend = be = backend
        self.rows = TierManager(dim, be, tiers, cold_dir=cold_dir)
        self.params = be.row_store(PARAM_WIDTH, like=self.rows.hot_store)
        self.sq = be.row_store(1) if be.uses_sqnorms else None

    @property
    def n(self) -> int:
        return self.rows.n

    def close(self) -> None:
        self.rows.close()

    # ---- writing -------------------------------------------------------------------------
    def _sq_rows(self, x: np.ndarray):
        """``||x||^2`` of host rows: the one formula on every path (add, upsert, moves,
        reopen), so a reopened store ranks bit for bit as the live one did."""
        return np.einsum("ij,ij->i", x, x).reshape(-1, 1)

    def append(self, x: np.ndarray, params: np.ndarray) -> None:
        """New slots at the end: host rows ``x`` (float32) and their params."""
        self.rows.place(self.backend.stage_rows(x))
        self.params.append(params)
        if self.sq is not None:
            self.sq.append(self._sq_rows(x))

    def replace(self, slots: np.ndarray, x: np.ndarray, params) -> None:
        """New splats in old slots (upserts): host rows ``x``, a fresh access history."""
        self.rows.scatter(slots, x)
        self.rows.reset(slots)
        self.backend.scatter_rows(self.params.view(), slots, params)
        self.refresh_sq(slots, x)

    def set_vectors(self, slots: np.ndarray, mu: np.ndarray) -> None:
        """Moved splats (feedback, merges): new host rows, ``||mu||^2`` kept in step."""
        self.rows.scatter(slots, mu)
        self.refresh_sq(slots, mu)

    def set_params(self, slots: np.ndarray, params: np.ndarray) -> None:
        self.backend.scatter_rows(self.params.view(), slots, params)

    def zero(self, slots: np.ndarray) -> None:
        """Alpha 0 (and every other parameter): the kernels ignore these rows."""
        self.set_params(slots, np.zeros((slots.size, PARAM_WIDTH), dtype=np.float32))

    def keep(self, keep: np.ndarray) -> None:
        idx = self.backend.index_array(keep)
        self.rows.keep(keep)
        self.params.keep(idx)
        if self.sq is not None:
            self.sq.keep(idx)

    def decay(self, now: float, lam: float) -> None:
        if self.n:
            self.backend.decay(self.params.view(), now, lam)

    def hebbian(self, q, plan: HebbianPlan, rates: HebbianRates) -> None:
        """The Hebbian kernel on the rows ``plan`` names: in place on the dense matrix, or
        (with tiers, rows live in several places) gathered to the device, updated and
        written back. ``||mu||^2`` is the caller's to refresh (:meth:`refresh_sq`)."""
        be = self.backend
        dense = self.rows.dense()
        if dense is not None:
            be.hebbian(dense, self.params.view(), to_native(be, q), plan, rates)
            return
        rows = plan.rows
        mu = self.rows.upload(self.rows.gather(rows))
        prm = self.rows.upload(be.gather_rows(self.params.view(), rows), like=mu)
        local = HebbianPlan(np.arange(rows.size, dtype=np.int64), plan.starts, plan.counts,
                            plan.ev_query, plan.ev_sign)
        be.hebbian(mu, prm, to_native(be, q), local, rates)
        self.rows.scatter(rows, host_array(be.to_host(mu), np.float32))
        be.scatter_rows(self.params.view(), rows, host_array(be.to_host(prm), np.float32))

    def refresh_sq(self, slots: np.ndarray, mu: np.ndarray) -> None:
        """``||mu||^2`` of ``slots`` from their host rows ``mu`` (after a kernel moved them)."""
        if self.sq is not None:
            self.backend.scatter_rows(self.sq.view(), slots, self._sq_rows(mu))

    def restore(self, vectors: np.ndarray, params: np.ndarray, step: int = 1 << 16) -> None:
        """Fill from a checkpoint: ``vectors`` (a memory map), ``params``."""
        n = vectors.shape[0]
        if not n:
            return
        if self.rows.bounded:  # cold until a placement pass reads some
            self.rows.adopt(vectors)
        if not self.rows.bounded or self.sq is not None:
            for a in range(0, n, step):  # one pass over the file
                x = np.ascontiguousarray(vectors[a:a + step], np.float32)
                if not self.rows.bounded:
                    self.rows.place(self.backend.stage_rows(x))
                if self.sq is not None:
                    self.sq.append(self._sq_rows(x))
        self.params.append(self.backend.stage_rows(np.ascontiguousarray(params, np.float32)))

    # ---- reading -------------------------------------------------------------------------
    def mu(self, slots) -> np.ndarray:
        return self.rows.gather(slots)

    def params_of(self, slots) -> np.ndarray:
        return self.backend.gather_rows(self.params.view(), slots)

    def host_params(self) -> np.ndarray:
        if not self.n:
            return np.zeros((0, PARAM_WIDTH), np.float32)
        return np.asarray(self.backend.to_host(self.params.view()), np.float32)

    def alpha(self) -> np.ndarray:
        return self.host_params()[:, PARAM_ALPHA]

    def vector_blocks(self, rows: int = 1 << 16):
        """Every slot's vector in slot order, in host blocks of at most ``rows`` rows."""
        for a in range(0, self.n, rows):
            yield self.rows.gather(np.arange(a, min(self.n, a + rows)))

    def masked_params(self, mask: np.ndarray):
        """A copy of params with alpha = 0 outside ``mask`` (O(slots) on the device)."""
        be = self.backend
        view = self.params.view()
        if self.rows.dense() is None:  # the tier blocks upload their own rows of it
            host = np.array(be.to_host(view))
            host[~mask, PARAM_ALPHA] = 0.0
            return host
        return be.scale_column(view, PARAM_ALPHA, mask.astype(np.float32))

    def _sq_view(self):
        return self.sq.view()[:, 0] if self.sq is not None else None

    def kernel_blocks(self, params):
        """``(slots, mu, params, sqnorms)`` to run a kernel on, covering every slot: the
        dense matrix once (slots None) when every row is hot, else each tier block with its
        rows of ``params`` and ``||mu||^2``. Lazy: on cuda a block's buffer is reused two
        blocks later, so its kernels must be queued before the next block is asked for."""
        mu = self.rows.dense()
        if mu is not None:
            yield None, mu, params, self._sq_view()
            return
        host_params = host_array(self.backend.to_host(params), np.float32)
        sq = self._sq_view()
        for blk in self.rows.blocks():
            prm = self.rows.upload(host_params[blk.slots], like=blk.rows)
            bsq = None if sq is None else np.ascontiguousarray(sq[blk.slots])
            yield blk.slots, blk.rows, prm, bsq

    def topk(self, q, k: int, mode: int, params=None):
        """Top-k over every slot (host ``keys, slots, d2``, best first, ties by slot): one
        kernel call on the dense matrix when every row is hot, else one per tier block,
        merged."""
        be = self.backend
        qn = to_native(be, q)
        parts = []
        for slots, mu, prm, sq in self.kernel_blocks(self.params.view() if params is None
                                                     else params):
            out = be.splat_topk(qn, mu, prm, k if slots is None else min(k, slots.size), mode,
                                sqnorms=sq)
            parts.append((slots, out))  # queued block by block ...
        host = []
        for bslots, (kb, ib, db) in parts:  # ... and read back once all are queued
            ib = np.asarray(be.to_host(ib))
            if bslots is not None:
                ib = np.where(ib >= 0, bslots[np.maximum(ib, 0)], -1)
            host.append((be.to_host(kb), ib, be.to_host(db)))
        return merge_by_key(host, k)

    def energy(self, q, grad: bool):
        """Energy (and gradient) over every slot: one call on the dense matrix, or per tier
        block combined as ``E = -log sum_b exp(-E_b)``, ``G = sum_b exp(E - E_b) G_b``."""
        be = self.backend
        qn = to_native(be, q)
        Es, Gs = [], []
        for _, mu, prm, sq in self.kernel_blocks(self.params.view()):
            out = be.energy(qn, mu, prm, grad=grad, sqnorms=sq)
            Es.append(out[0] if grad else out)
            Gs.append(out[1] if grad else None)
        Es = [np.asarray(be.to_host(e), dtype=np.float32) for e in Es]
        Gs = [np.asarray(be.to_host(g), dtype=np.float32) for g in Gs] if grad else None
        return combine_energies(Es, Gs)

    def nbytes(self) -> int:
        """Bytes of these arrays on the device."""
        return self.rows.nbytes(HOT) + self.params.nbytes + \
            (self.sq.nbytes if self.sq is not None else 0)

    def check(self) -> list[str]:
        problems = self.rows.check()
        if self.params.view().shape[0] != self.n:
            problems.append(f"{self.params.view().shape[0]} params rows for {self.n} vectors")
        return problems
