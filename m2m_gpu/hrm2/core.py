"""HRM2: the trained centroids, their router, the cell layout and its scanner, together.

Adds go to their nearest fine cell at once, into the overflow region (see
:mod:`.layout`). When the overflow passes ``REBUILD_OVERFLOW`` of the rows, the layout is
rebuilt; when the largest cell passes ``REBUILD_IMBALANCE`` times the mean, the centroids
are retrained too.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..backends import Backend, get_backend
from ..backends.base import MODE_DISTANCE, PARAM_ALPHA
from ..codecs import Codec
from ..codecs import check_name as check_codec
from ..errors import InvalidInputError
from ..inputs import check_count
from ..tiers import TierManager, TierOptions
from . import search as _search
from . import train as _train
from .layout import CellLayout
from .routing import Router
from .scan import CellScanner
from .train import REFINE_ITERS, Centroids

REBUILD_OVERFLOW = 0.25  # share of rows living in the overflow region before a re-layout
REBUILD_IMBALANCE = 8.0  # largest cell / mean cell size before the centroids are retrained
LOG_AFTER = 2.0  # seconds: a training that takes longer says so (log line, INFO)
log = logging.getLogger("m2m_gpu.hrm2")


class HRM2:
    """The routing structure and the cell-ordered rows on one backend (squared L2).

    Positions are row indexes in the cell-ordered layout; ``ids[pos]`` maps them back to
    the caller's ids (int64). Methods that change the index run one at a time and never
    during a search (the caller's lock); :meth:`search` may run in several threads at once.
    """

    def __init__(self, d: int, backend: str | Backend | None = None, n1: int | None = None,
                 n2: int | None = None, *, seed: int = 0, kmeans_iters: int = 10,
                 max_points_per_centroid: int = 256, refine_iters: int = REFINE_ITERS,
                 tiers: TierOptions | None = None, cold_dir=None,
                 codec: str | None = None, spill: bool = False) -> None:
        self.d = d
        self.backend = get_backend(backend)
        self.n1_opt = check_count("n1", n1, allow_none=True)
        self.n2_opt = check_count("n2", n2, allow_none=True)
        self.seed = seed
        self.kmeans_iters = kmeans_iters
        self.mppc = max_points_per_centroid
        self.refine_iters = refine_iters
        self.trained = False
        self.rebuilds = 0
        self.centroids: Centroids | None = None
        self.router: Router | None = None
        self.layout = CellLayout(d, self.backend, tiers or TierOptions(), cold_dir,
                                 check_codec(codec, d))
        if not isinstance(spill, (bool, np.bool_)):
            raise InvalidInputError(f"spill must be True or False, got {spill!r}")
        if spill and codec is None:
            raise InvalidInputError("spill=True needs a codec (e.g. codec='sq8'): only "
                                    "the compressed copies of the rows are spilled")
        self.spill = bool(spill)
        self.scanner = CellScanner(self.layout)
        self._alpha_params = None  # the last unfiltered params (the hotness policy's alpha)

    # ---- training -------------------------------------------------------------------------
    def train(self, x: np.ndarray, *, encode: bool = True) -> None:
        """Coarse k-means, fine k-means inside each coarse cell, then ``refine_iters``
        Lloyd iterations of all fine centroids together (on the backend). The rows already
        laid out stay where they are until the next :meth:`set_rows`; a codec is trained on
        the same rows (the held rows are encoded again unless ``encode=False``: a re-layout
        follows at once). A training that takes
        more than ``LOG_AFTER`` seconds says so in a log line (``m2m_gpu.hrm2``, INFO)."""
        t0 = time.perf_counter()
        self.set_centroids(_train.train(
            x, self.backend, self.n1_opt, self.n2_opt, seed=self.seed,
            kmeans_iters=self.kmeans_iters, max_points_per_centroid=self.mppc,
            refine_iters=self.refine_iters))
        if self.layout.codec_name is not None:  # SQ8's ranges from the training rows
            self.layout.set_codec(Codec.train(self.layout.codec_name, x), encode=encode)
        took = time.perf_counter() - t0
        if took > LOG_AFTER:
            log.info("hrm2: trained %d x %d cells on %d rows of %d dims in %.1f s (%s)",
                     self.centroids.coarse.shape[0], self.centroids.cells,
                     x.shape[0], x.shape[1], took, self.backend.name)

    def set_centroids(self, centroids: Centroids) -> None:
        """Take trained centroids (another index's, for the same data): no k-means."""
        self.centroids = centroids
        self.router = Router(centroids, self.backend)
        self.layout.spill_to = self.router.second_cells if self.spill else None
        self.trained = True

    coarse = property(lambda self: self.centroids.coarse)
    fine = property(lambda self: self.centroids.fine)
    parent = property(lambda self: self.centroids.parent)
    fine_ranges = property(lambda self: self.centroids.fine_ranges)

    def probes(self, p1: int | None, p2: int | None) -> tuple[int, int]:
        """``(p1, p2)`` with the defaults of :func:`default_probes` for what is None."""
        return self.router.probes(p1, p2)

    def assign_p1(self) -> int:
        return self.router.assign_p1()

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The fine cell of each row (see :meth:`Router.assign`)."""
        return self.router.assign(x)

    def route(self, q: np.ndarray, p1: int, p2: int):
        """Fine cells to scan per query, nearest first (see :meth:`Router.route`)."""
        return self.router.route(q, p1, p2)

    # ---- the layout, read-only views ------------------------------------------------------
    ntotal = property(lambda self: self.layout.ntotal)
    tier_options = property(lambda self: self.layout.tier_options)
    ids = property(lambda self: self.layout.ids)
    cell_of = property(lambda self: self.layout.cell_of)
    dead = property(lambda self: self.layout.dead)
    sqnorms = property(lambda self: self.layout.sqnorms)
    main_end = property(lambda self: self.layout.main_end)
    ranges = property(lambda self: self.layout.ranges)
    radius = property(lambda self: self.layout.radius)

    @property
    def tiers(self) -> TierManager:
        """Where the rows live: position ``p`` is slot ``p`` of this tier manager."""
        return self.layout.tiers

    def rows_at(self, pos) -> np.ndarray:
        """Host float32 rows at positions ``pos``."""
        return self.layout.rows_at(pos)

    def ids_of(self, pos: np.ndarray) -> np.ndarray:
        """The caller's ids of the positions ``pos`` (a search's; -1 pads stay -1)."""
        out = self.layout.ids.take(pos, mode="clip")
        pad = pos < 0
        if pad.any():
            out[pad] = -1
        return out

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """The live position of each id (-1 where absent); ids are non-negative ints."""
        return self.layout.positions_of(ids)

    def live_positions(self) -> np.ndarray:
        return self.layout.live_positions()

    def mask_params(self) -> np.ndarray | None:
        return self.layout.mask_params()

    def params_by_position(self, by_id: np.ndarray) -> np.ndarray:
        """Params kept by id, in position order, alpha 0 at the dead positions."""
        return self.layout.params_by_position(by_id)

    def dead_share(self) -> float:
        return self.layout.dead_share()

    def check(self, live_ids: np.ndarray | None = None) -> list[str]:
        return self.layout.check(live_ids)

    def device_bytes(self) -> int:
        """Bytes of rows in the hot tier (device memory)."""
        return self.layout.rows.device_bytes()

    # ---- rows -------------------------------------------------------------------------------
    def clear_rows(self) -> None:
        """No rows; the centroids stay (the next add lays the rows out again)."""
        self.layout.clear()
        self._alpha_params = None

    def close(self) -> None:
        self.layout.close()

    def set_cold_dir(self, directory) -> None:
        """Where the spill file of this and every later layout goes."""
        self.layout.rows.set_cold_dir(directory)

    def set_rows(self, x: np.ndarray, ids: np.ndarray, cells: np.ndarray | None = None) -> None:
        """Lay out all rows grouped by fine cell (a full re-layout). A row whose id was
        already indexed keeps its access history (the tier placement policy's input)."""
        x = np.asarray(x, np.float32)
        ids = np.asarray(ids, np.int64)
        second = None
        if cells is None and x.shape[0] and self.layout.spill_to is not None:
            cells, second = self.router.assign_two(x)  # one routing pass for both
        elif cells is None:
            cells = self.assign(x) if x.shape[0] else np.zeros(0, np.int64)
        self.layout.set_rows(x, ids, cells, self.centroids.fine, second)

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Rows into an empty index are laid out; into a filled one they go via add_rows."""
        if self.ntotal == 0:
            self.set_rows(x, ids)
        else:
            self.add_rows(x, ids)

    def add_rows(self, x: np.ndarray, ids: np.ndarray) -> None:
        """New rows go to their nearest fine cell now, via the sorted overflow region, or
        the whole layout is rebuilt when the overflow would pass ``REBUILD_OVERFLOW``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        ids = np.asarray(ids, np.int64)
        r = x.shape[0]
        cells = self.assign(x)
        L = self.layout
        if L.ntotal - L.main_end + r > REBUILD_OVERFLOW * max(1, L.main_end):
            live = L.live_positions()
            self.rebuild(np.concatenate([live, -1 - np.arange(r, dtype=np.int64)]), x,
                         np.concatenate([L.ids[live], ids]),
                         np.concatenate([L.cell_of[live], cells]))
            return
        L.append_overflow(x, ids, cells)

    def remove_positions(self, drop: np.ndarray) -> None:
        """Drop positions (and any left dead): a full re-layout."""
        self.layout.drop(drop)

    def relocate(self, pos: np.ndarray, x: np.ndarray) -> int:
        """Rows at positions ``pos`` now hold ``x`` (a splat's mu moved). A row still
        nearest its cell is rewritten in place; one that crossed into another cell is left
        dead at its old position (masked from then on) and added to its new cell, so it
        is found where queries now look. Dead positions go at the next re-layout. Returns
        how many rows changed cell."""
        pos = np.asarray(pos, np.int64)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if pos.size == 0:
            return 0
        moved = self.layout.relocate(pos, x, self.assign(x))
        if moved.any():
            self.add_rows(x[moved], self.layout.ids[pos[moved]])
        return int(moved.sum())

    def mark_dead(self, pos: np.ndarray) -> None:
        """Mask positions (-1 ignored); they go at the next re-layout."""
        self.layout.mark_dead(pos)

    def renumber(self, remap: np.ndarray) -> None:
        """Id ``i`` is now ``remap[i]`` (``< 0``: gone, its position masked)."""
        self.layout.renumber(remap)

    def rebuild(self, src: np.ndarray, new_rows: np.ndarray, ids: np.ndarray,
                cells: np.ndarray) -> None:
        """Re-layout of ``src`` (as in :meth:`CellLayout.relayout`); retrain first when
        cells are unbalanced past REBUILD_IMBALANCE (training reads every row into host
        memory)."""
        self.rebuilds += 1
        sizes = np.bincount(cells, minlength=self.centroids.cells)
        if src.size and sizes.max() > REBUILD_IMBALANCE * max(1.0, sizes.mean()):
            x = self.layout.gather_sources(src, new_rows)
            self.train(x, encode=False)  # set_rows encodes them
            self.set_rows(x, ids)
            return
        L = self.layout
        L.relayout(src, new_rows, ids, cells, self.centroids.fine, L.history(src))

    # ---- search -----------------------------------------------------------------------------
    def search(self, q: np.ndarray, k: int, p1: int, p2: int, *, adaptive: bool = False,
               ratio: float | None = None, mode: int = MODE_DISTANCE, params=None,
               cache: bool = True, rerank: int = _search.RERANK):
        """``(keys, positions, d2, report)`` (host) for validated float32 queries ``q``,
        best first, ties by position. ``params``: host float32[ntotal, PARAM_WIDTH] in
        position order (None: alpha = kappa = 1, dead positions masked); its device copy is
        kept for the next search with the same array unless ``cache=False`` (a filter's
        one-off mask). Safe in several threads at once; moves no row (see
        :meth:`rebalance_due`). With a codec, the codes are scanned for the best
        ``rerank * k`` rows per query, which are ranked again on their float32 rows."""
        if params is not None and cache:
            self._alpha_params = params
        return _search.search(self.router, self.layout, self.scanner, q, k, p1, p2,
                              adaptive=adaptive, ratio=ratio, mode=mode, params=params,
                              cache=cache, rerank=rerank)

    def one_query(self) -> _search.OneQuery | None:
        """The single-query search (:class:`~.search.OneQuery`: fixed probing, squared
        distances, no filter), or None where this layout cannot take it or holds no rows
        (or is not trained)."""
        if self.router is None or not self.layout.ntotal:
            return None
        return _search.one_query(self.router, self.layout, self.scanner)

    # ---- tiers (writers only) ---------------------------------------------------------------
    def rebalance_due(self) -> bool:
        """Whether a placement pass is due (``rebalance_every`` searches since the last one,
        or the hot tier over its budget after running out of device memory)."""
        return self.layout.rows.rebalance_due()

    def rebalance(self) -> dict:
        """Place rows by the tier policy now (alpha from the last unfiltered params)."""
        p = self._alpha_params
        n = self.ntotal
        alpha = p[:, PARAM_ALPHA] if p is not None and p.shape[0] == n else \
            np.ones(n, np.float32)
        return self.layout.rebalance(alpha)

    def rebalance_if_due(self) -> dict:
        return self.rebalance() if self.rebalance_due() else {}

