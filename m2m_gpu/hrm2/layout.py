"""The cell layout: HRM2's rows grouped by fine cell, in a tier manager, and the per-position
bookkeeping that goes with them.

Positions are row indexes of the layout; position ``p`` is slot ``p`` of the tier manager.
The main region (positions ``< main_end``) is grouped by cell; adds go to the overflow
region after it, kept sorted by cell too, so cell ``c`` is its main range ``ranges[c]`` plus
its overflow range ``ranges[C + c]``. A row whose mu crossed into another cell, or whose id
was freed, is left *dead* at its position (masked from then on) until the next re-layout.

With a codec and spilling on (``spill_to``: the router's SOAR choice), each full re-layout
also gives every row a second cell: a compressed scan of a cell reads the codes of its main
and overflow ranges, then those of the rows spilled into it (code rows ``ntotal + j``,
copies of the codes at positions ``spill_of[j]``, grouped by cell). Only codes are spilled;
the float32 rows, the ids and every per-position array stay one per row, and a search maps
a spilled code row back to its position (:meth:`CellLayout.code_positions`). Rows added
later have no second cell until the next full re-layout.

:class:`CellLayout` is the one owner of these invariants; the rest of the package and the
store's index change the layout through its methods only. Re-layouts stream the rows
through host memory a block at a time (no full host copy is kept).
"""

from __future__ import annotations

import numpy as np

from ..backends.base import PARAM_ALPHA, PARAM_KAPPA, PARAM_WIDTH
from ..codecs import PCA_SAMPLE, Codec
from ..tiers import TierManager, TierOptions
from .rows import CellRows


def expand(ranges: np.ndarray) -> np.ndarray:
    """Every position of the ``[start, stop)`` ranges, range by range."""
    lens = ranges[:, 1] - ranges[:, 0]
    total = int(lens.sum())
    offsets = np.cumsum(lens) - lens
    return np.repeat(ranges[:, 0] - offsets, lens) + np.arange(total, dtype=np.int64)


class CellLayout:
    """Per position: ``ids`` (the caller's int64 ids), ``cell_of``, ``sqnorms`` (|x|^2, the
    cpu scan ranks with it) and ``dead``; per cell: ``ranges`` and ``radius`` (the largest
    distance of a member from its centroid ``fine[c]``: it only grows until the next
    re-layout measures it again). ``version`` changes whenever rows, their norms or their
    positions change (the scan's device copies are kept by it).

    Writers (everything that changes the layout) run one at a time and never during a
    search; besides reading, searches only call :meth:`touch` and ``rows`` (see
    :class:`~.rows.CellRows`), so any number of them may run at once.
    """

    def __init__(self, d: int, backend, tier_options: TierOptions | None = None,
                 cold_dir=None, codec: str | None = None) -> None:
        self.d = d
        self.backend = backend
        self.tier_options = tier_options or TierOptions()
        self.rows = CellRows(d, backend, self.tier_options, cold_dir)
        self.version = 0
        self.fine = np.zeros((0, d), np.float32)  # the centroids of the last re-layout
        # compressed copies of the rows, in position order (m2m_gpu.codecs), when a codec
        # is named: host codes kept in step with every change of the rows
        self.codec_name = codec
        self.codec: Codec | None = None  # trained with the centroids (or on first layout)
        self._codec_here = False  # SQ8 measured on the laid-out rows: measured again
        # SOAR spilling (with a codec): (rows, their cells) -> each row's second cell
        # (-1: none), chosen at each full re-layout; None: no spilling
        self.spill_to = None
        self._reset()

    # ---- state ------------------------------------------------------------------------------
    def clear(self) -> None:
        """No rows (the next add lays them out afresh)."""
        self.rows.clear()
        self._reset()

    def _reset(self) -> None:
        self.sqnorms = np.zeros(0, np.float32)
        self.ids = np.zeros(0, np.int64)
        self.cell_of = np.zeros(0, np.int64)
        self.dead = np.zeros(0, bool)
        self.main_end = 0
        self.ranges = np.zeros((0, 2), np.int64)
        self.radius = np.zeros(0, np.float32)
        self.codes = None if self.codec is None else \
            self.codec.encode(np.zeros((0, self.d), np.float32))
        self.code_sq = np.zeros(0, np.float32)  # |decoded row|^2 (the cpu scan's)
        self._set_spill(np.zeros(0, np.int64))
        self.version += 1

    def close(self) -> None:
        self.rows.close()

    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    @property
    def tiers(self) -> TierManager:
        return self.rows.tm

    def rows_at(self, pos) -> np.ndarray:
        return self.rows.tm.gather(np.asarray(pos, np.int64))

    def live_positions(self) -> np.ndarray:
        return np.flatnonzero(~self.dead)

    def cell_sizes(self) -> np.ndarray:
        """Rows per fine cell (main + overflow, dead ones included, and the spilled copies:
        what a scan reads)."""
        C = self.fine.shape[0]
        lens = self.ranges[:, 1] - self.ranges[:, 0]
        sizes = lens[:C] + lens[C:]
        if self.spilled:
            sizes = sizes + (self.spill_ranges[:, 1] - self.spill_ranges[:, 0])
        return sizes

    # ---- the code space: the codes in position order, then the spilled copies ---------
    @property
    def spilled(self) -> bool:
        return self.spill_of.size > 0

    def code_rows(self) -> np.ndarray:
        """The codes a compressed scan reads: every position's, then the spilled copies."""
        return self.codes if not self.spilled else \
            np.concatenate([self.codes, self.codes[self.spill_of]])

    def code_sqnorms(self) -> np.ndarray:
        return self.code_sq if not self.spilled or not self.code_sq.size else \
            np.concatenate([self.code_sq, self.code_sq[self.spill_of]])

    def code_ranges(self) -> np.ndarray:
        """Ranges over :meth:`code_rows`: main ``[c]``, overflow ``[C + c]`` and (when
        spilled) the copies spilled into cell c, ``[2C + c]``."""
        if not self.spilled:
            return self.ranges
        return np.concatenate([self.ranges, self.spill_ranges + self.ntotal])

    def code_probes(self, cells: np.ndarray) -> np.ndarray:
        """The code ranges a compressed scan of ``cells`` (int64[m, p], -1 pad) reads."""
        C = self.fine.shape[0]
        ok = cells >= 0
        parts = [cells, np.where(ok, cells + C, -1)]
        if self.spilled:
            parts.append(np.where(ok, cells + 2 * C, -1))
        return np.concatenate(parts, 1)

    def code_positions(self) -> np.ndarray:
        """The position of each code row (a spilled copy's: its row's)."""
        return np.concatenate([np.arange(self.ntotal, dtype=np.int64), self.spill_of])

    def code_params(self, params: np.ndarray | None) -> np.ndarray | None:
        """Params in position order extended to the code rows."""
        if params is None or not self.spilled:
            return params
        return np.concatenate([params, params[self.spill_of]])

    def set_codec(self, codec: Codec | None, encode: bool = True) -> None:
        """Use ``codec`` (trained) for the compressed copies; the rows held are encoded
        again with it (``encode=False``: only by a re-layout that the caller runs next)."""
        self.codec = codec
        self._codec_here = False
        if not encode:  # no codes until the re-layout, which spills again
            self._set_spill(np.zeros(0, np.int64))
        self.codes = None if codec is None else self._encode_held() if encode else \
            codec.encode(np.zeros((0, self.d), np.float32))
        self.code_sq = np.zeros(0, np.float32) if codec is None else \
            self._code_sqnorms(self.codes)
        self.version += 1

    def _code_sqnorms(self, codes: np.ndarray) -> np.ndarray:
        """The decoded rows' squared norms where the backend's scan reads them (cpu)."""
        if not self.backend.uses_sqnorms:
            return np.zeros(0, np.float32)
        return self.codec.sqnorms(codes)

    def _encode_held(self) -> np.ndarray:
        n, tm, step = self.ntotal, self.tiers, self.tiers.block_rows
        parts = [self.codec.encode(tm.gather(np.arange(s, min(n, s + step), dtype=np.int64)))
                 for s in range(0, n, step)]
        return np.concatenate(parts) if parts else \
            self.codec.encode(np.zeros((0, self.d), np.float32))

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """The live position of each id (-1 where absent); ids are non-negative ints."""
        live = self.live_positions()
        ids = np.asarray(ids, np.int64)
        top = int(max(ids.max(initial=-1), self.ids.max(initial=-1))) + 1
        where = np.full(top, -1, np.int64)
        where[self.ids[live]] = live
        return where[ids]

    # ---- parameters in position order ----------------------------------------------------
    def mask_params(self) -> np.ndarray | None:
        """Host params that only mask the dead positions (alpha 0), for scans without
        splat parameters; None when nothing is dead."""
        if not self.dead.any():
            return None
        host = np.zeros((self.ntotal, PARAM_WIDTH), np.float32)
        host[:, PARAM_ALPHA] = (~self.dead).astype(np.float32)
        host[:, PARAM_KAPPA] = 1.0
        return host

    def params_by_position(self, by_id: np.ndarray) -> np.ndarray:
        """``by_id[ids[pos]]`` for every position (params kept by id, e.g. a store's by
        slot), with alpha 0 at the dead positions."""
        p = np.ascontiguousarray(by_id[self.ids])
        p[self.dead, PARAM_ALPHA] = 0.0
        return p

    # ---- re-layouts -----------------------------------------------------------------------
    def history(self, old_pos: np.ndarray):
        return self.rows.history(old_pos)

    def set_rows(self, x: np.ndarray, ids: np.ndarray, cells: np.ndarray,
                 fine: np.ndarray, second: np.ndarray | None = None) -> None:
        """Lay out exactly these rows, grouped by ``cells`` of the centroids ``fine``
        (``second``: their second cells when spilling, if already chosen). A row whose id
        was already laid out keeps its access history."""
        history = None
        if self.tiers.bounded and self.ntotal and ids.size and ids.min() >= 0:
            history = self.history(self.positions_of(ids))
        self.relayout(-1 - np.arange(x.shape[0], dtype=np.int64), x, ids, cells, fine,
                      history, second)

    def drop(self, positions: np.ndarray) -> None:
        """Lay the live rows out again without ``positions`` (and without the dead ones)."""
        keep = np.setdiff1d(self.live_positions(), positions)
        self.relayout(keep, np.zeros((0, self.d), np.float32), self.ids[keep],
                      self.cell_of[keep], self.fine, self.history(keep))

    def gather_sources(self, src: np.ndarray, new_rows: np.ndarray) -> np.ndarray:
        """Host rows of ``src`` as :meth:`relayout` reads them (for retraining)."""
        x = np.empty((src.size, self.d), np.float32)
        mine = src >= 0
        x[mine] = self.tiers.gather(src[mine])
        x[~mine] = new_rows[-1 - src[~mine]]
        return x

    def relayout(self, src: np.ndarray, new_rows: np.ndarray, ids: np.ndarray,
                 cells: np.ndarray, fine: np.ndarray, history=None,
                 second: np.ndarray | None = None) -> None:
        """A fresh layout of the rows ``src`` (``>= 0``: a current position; ``< 0``: row
        ``-1 - src`` of ``new_rows``) grouped by cell of the centroids ``fine``; rows stream
        through host memory a block at a time, and cell radii are measured on the way (and,
        when spilling, the rows' second cells chosen, unless ``second`` gives them)."""
        order = np.argsort(cells, kind="stable")
        src, ids, cells = src[order], ids[order], cells[order]
        if history is not None:
            history = (history[0][order], tuple(a[order] for a in history[1]))
        old = self.tiers
        new_rows = np.asarray(new_rows, np.float32)
        mine = src >= 0
        sq = np.empty(src.size, np.float32)
        sq[mine] = self.sqnorms[src[mine]]
        fresh = new_rows[-1 - src[~mine]]
        sq[~mine] = np.einsum("ij,ij->i", fresh, fresh)
        self.fine = fine
        self.radius = np.zeros(fine.shape[0], np.float32)
        if self.codec is None and self.codec_name == "fp16":
            self.codec = Codec.fp16(self.d)  # nothing to train
        # SQ8 or a projection not trained with the centroids (they came from elsewhere):
        # trained on the rows of each full re-layout (SQ8's ranges measured on the way; a
        # projection's on a strided sample taken on the way), then encoded
        measure = self.codec_name not in (None, "fp16") and \
            (self.codec is None or self._codec_here)
        codes = []  # encoded on the way when the codec is trained already
        lo = np.full(self.d, np.inf, np.float32)  # else SQ8's ranges, measured on the way
        hi = np.full(self.d, -np.inf, np.float32)
        sample, stride = [], max(1, -(-src.size // PCA_SAMPLE))
        spill = self.spill_to if self.codec_name is not None else None
        if spill is None:
            second = np.zeros(0, np.int64)
        elif second is not None:
            second, spill = second[order], None  # chosen already
        else:
            second = np.full(src.size, -1, np.int64)

        def rows_of(s: int, e: int) -> np.ndarray:
            part = src[s:e]
            out = np.empty((part.size, self.d), np.float32)
            o = part >= 0
            if o.any():
                out[o] = old.gather(part[o])
            if not o.all():
                out[~o] = new_rows[-1 - part[~o]]
            self._grow_radius(out, cells[s:e])
            if spill is not None and out.shape[0]:
                second[s:e] = spill(out, cells[s:e])
            if not measure and self.codec is not None:
                codes.append(self.codec.encode(out))
            elif measure and out.shape[0] and self.codec_name == "sq8":
                np.minimum(lo, out.min(axis=0), out=lo)
                np.maximum(hi, out.max(axis=0), out=hi)
            elif measure and out.shape[0]:
                sample.append(out[(-s) % stride :: stride])
            return out

        self.rows.rebuild(src.size, rows_of, history)
        self.ids, self.cell_of, self.sqnorms = ids, cells, sq
        if measure and self.ntotal:  # a second pass over the rows
            self.set_codec(Codec.from_range(lo, hi) if self.codec_name == "sq8" else
                           Codec.train(self.codec_name, np.concatenate(sample)))
            self._codec_here = True
        elif self.codec is not None:
            self.codes = np.concatenate(codes) if codes else \
                self.codec.encode(np.zeros((0, self.d), np.float32))
            self.code_sq = self._code_sqnorms(self.codes)
        self.main_end = self.ntotal
        self.dead = np.zeros(self.ntotal, bool)
        self.ranges = self._ranges_from_cells()
        self._set_spill(second)
        self.version += 1

    def _set_spill(self, second: np.ndarray) -> None:
        """The spilled copies: position ``p`` into cell ``second[p]`` (-1: none; an empty
        array: no copies). Per copy ``spill_of`` (its row's position) and ``spill_cells``
        (its cell, sorted); per cell ``spill_ranges`` over the copies."""
        has = np.flatnonzero(second >= 0)
        order = np.argsort(second[has], kind="stable")
        self.spill_of, self.spill_cells = has[order], second[has][order]
        counts = np.bincount(self.spill_cells, minlength=self.fine.shape[0])
        stop = np.cumsum(counts)
        self.spill_ranges = np.stack([stop - counts, stop], 1).astype(np.int64)

    # ---- changes in place -----------------------------------------------------------------
    def append_overflow(self, x: np.ndarray, ids: np.ndarray, cells: np.ndarray) -> None:
        """New rows into their cells' overflow ranges: the old overflow rows and the new
        ones are written again in cell order after the main region (which does not move)."""
        r = x.shape[0]
        tm, m = self.tiers, self.main_end
        tail = np.arange(m, self.ntotal, dtype=np.int64)
        tail_cells = np.concatenate([self.cell_of[tail], cells])
        order = np.argsort(tail_cells, kind="stable")
        tail_rows = np.concatenate([tm.gather(tail), x])[order]
        history = self.history(np.concatenate([tail, np.full(r, -1, np.int64)])[order])
        tm.keep(np.arange(m, dtype=np.int64))  # a prefix: nothing moves
        self.rows.append(tm, order.size, lambda s, e: tail_rows[s:e], history)
        self.ids = np.concatenate([self.ids[:m], np.concatenate([self.ids[m:], ids])[order]])
        self.cell_of = np.concatenate([self.cell_of[:m], tail_cells[order]])
        self.dead = np.concatenate([self.dead[:m], np.concatenate(
            [self.dead[m:], np.zeros(r, bool)])[order]])
        tail_sq = np.concatenate([self.sqnorms[m:], np.einsum("ij,ij->i", x, x)])
        self.sqnorms = np.concatenate([self.sqnorms[:m], tail_sq[order]])
        if self.codec is not None:
            tail = self.codec.encode(tail_rows)
            self.codes = np.concatenate([self.codes[:m], tail])
            self.code_sq = np.concatenate([self.code_sq[:m], self._code_sqnorms(tail)])
        self._grow_radius(x, cells)  # radii only grow with new members
        self.ranges = self._ranges_from_cells()
        self.version += 1

    def relocate(self, pos: np.ndarray, x: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Positions ``pos`` now hold ``x``, whose cells are ``cells``: a row still in its
        cell is rewritten in place; one that crossed into another is marked dead. Returns
        the mask of the crossed ones (the caller adds them to their new cells)."""
        same = cells == self.cell_of[pos]
        if same.any():
            p, r = pos[same], x[same]
            self.tiers.scatter(p, r)
            self.sqnorms[p] = np.einsum("ij,ij->i", r, r)
            if self.codec is not None:
                self.codes[p] = self.codec.encode(r)
                if self.code_sq.size:
                    self.code_sq[p] = self.codec.sqnorms(self.codes[p])
            self._grow_radius(r, cells[same])
            self.version += 1
        moved = ~same
        self.dead[pos[moved]] = True
        return moved

    def mark_dead(self, pos: np.ndarray) -> None:
        """Mask positions (-1 entries are ignored); they go at the next re-layout."""
        pos = np.asarray(pos, np.int64)
        self.dead[pos[pos >= 0]] = True

    def renumber(self, remap: np.ndarray) -> None:
        """The ids were renumbered: id ``i`` is now ``remap[i]``; ``remap[i] < 0``: gone
        (its position is marked dead)."""
        ids = np.asarray(remap, np.int64)[self.ids]
        gone = ids < 0
        self.ids = np.where(gone, 0, ids)
        self.dead |= gone

    def dead_share(self) -> float:
        return float(self.dead.mean()) if self.ntotal else 0.0

    def _grow_radius(self, x: np.ndarray, cells: np.ndarray) -> None:
        diff = x - self.fine[cells]
        np.maximum.at(self.radius, cells, np.sqrt(np.einsum("ij,ij->i", diff, diff)))

    def _ranges_from_cells(self) -> np.ndarray:
        """Main range of cell c: ``[c]``; overflow range: ``[C + c]``."""
        C = self.fine.shape[0]
        main = np.bincount(self.cell_of[: self.main_end], minlength=C)
        tail = np.bincount(self.cell_of[self.main_end :], minlength=C)
        ms = np.cumsum(main) - main
        ts = self.main_end + np.cumsum(tail) - tail
        return np.concatenate([np.stack([ms, ms + main], 1),
                               np.stack([ts, ts + tail], 1)]).astype(np.int64)

    # ---- what searches write -------------------------------------------------------------
    def touch(self, cells: np.ndarray) -> None:
        """The rows of the scanned cells (main and overflow ranges) count as accessed."""
        if not self.tiers.bounded:
            self.rows.touch(None)  # the clock only
            return
        C = self.fine.shape[0]
        cells = np.unique(cells[cells >= 0])
        self.rows.touch(expand(self.ranges[np.concatenate([cells, cells + C])]))

    def rebalance(self, alpha: np.ndarray) -> dict:
        """The tier placement pass (a writer's): dead positions rank last."""
        return self.rows.rebalance(alpha, ~self.dead)

    # ---- introspection ----------------------------------------------------------------------
    def check(self, live_ids: np.ndarray | None = None) -> list[str]:
        """Disagreements within the layout (and, given ``live_ids``, with the ids that
        should be live: each at exactly one live position, and no other live position)."""
        problems = []
        n = self.ntotal
        if not self.tiers.n == n == self.cell_of.size == self.dead.size == self.sqnorms.size:
            problems.append("hrm2 layout: per-position arrays and rows differ in length")
        elif n:
            main, tail = self.cell_of[: self.main_end], self.cell_of[self.main_end :]
            if (np.diff(main) < 0).any() or (np.diff(tail) < 0).any():
                problems.append("hrm2 layout: positions not grouped by cell")
            if not np.array_equal(self.ranges, self._ranges_from_cells()):
                problems.append("hrm2 layout: cell ranges disagree with the positions")
            if self.codec is not None and not np.array_equal(self.codes, self._encode_held()):
                problems.append("hrm2 layout: compressed codes disagree with the rows")
            elif self.code_sq.size and not np.allclose(
                    self.code_sq, self.codec.sqnorms(self.codes), rtol=1e-6):
                problems.append("hrm2 layout: the codes' norms disagree with the codes")
            if self.spilled and ((self.spill_of >= self.main_end).any() or
                                 (self.spill_cells == self.cell_of[self.spill_of]).any() or
                                 (np.diff(self.spill_cells) < 0).any() or
                                 np.unique(self.spill_of).size != self.spill_of.size):
                problems.append("hrm2 layout: a spilled copy outside the main region, in "
                                "its row's own cell, out of cell order or twice")
            live = self.ids[~self.dead]
            if np.unique(live).size != live.size:
                problems.append("hrm2 layout: an id at two live positions")
        if live_ids is not None:
            pos = self.positions_of(np.asarray(live_ids, np.int64))
            if (pos < 0).any() or int((~self.dead).sum()) != np.asarray(live_ids).size:
                problems.append("the hrm2 index does not hold every live splat once")
        return problems + self.tiers.check()
