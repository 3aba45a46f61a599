"""HRM2: hierarchical routing over two levels of k-means (SPEC section 3).

``n1`` coarse centroids over the data; ``n1 * n2`` fine centroids in all, each coarse cell
getting a share in proportion to its rows (so fine cells are of similar size where the data
is dense and where it is sparse), trained by k-means on that cell's rows and then refined
together (``REFINE_ITERS`` Lloyd iterations over all fine centroids, each fine centroid
joining its nearest coarse cell), so that fine cells follow the data, not the coarse
boundaries. Rows are stored on the device grouped by fine cell, so a probe reads one
contiguous range. A query scores the coarse centroids, keeps the best ``p1`` coarse cells,
scores their fine centroids, keeps the best ``p2`` fine cells, and scans their rows exactly.

Memory tiers: the rows live in a :class:`m2m_gpu.tiers.TierManager` keyed by position
(``tiers=``; default: all on the device, one dense matrix); hot cells are scanned in place,
probed rows that are not hot are fetched in blocks. The rows of every probed cell count as
accessed, so the placement policy (run by writers, never by a search) keeps the cells that
queries probe hot.

Defaults from n (``default_shape``): about ``4 sqrt(n)`` fine cells in total (the usual IVF
rule), as ``n1 = round(sqrt(4 sqrt(n)))`` coarse cells and ``n2 = n1`` fine cells per coarse
cell on average; ``p2 = max(16, total // 256)`` (recall@10 about 0.99 on the clustered
benchmark data at 100K and 1M) and ``p1 = clamp(ceil(16 p2 / n2), max(2, n1 // 8), n1)``
(about 16 fine candidates per fine cell probed: on real embeddings a query's best fine cells
are spread over many coarse cells).

The package, by lifetime: :mod:`.train` (trained once: shape, probes, k-means, refinement),
:mod:`.routing` (queries and rows to cells), :mod:`.layout` (laid out per rebuild: positions,
ids, dead mask, cell ranges, radii, the tier manager), :mod:`.scan` (the probed cells'
rows, device copies), :mod:`.search` (per call: two-round adaptive probing, the report),
:mod:`.core` (``HRM2``, the four together) and :mod:`.index` (``IndexHRM2``, FAISS-shaped).
"""

from .core import HRM2, REBUILD_IMBALANCE, REBUILD_OVERFLOW
from .index import IndexHRM2
from .layout import CellLayout
from .routing import ASSIGN_P1_MIN, Router
from .scan import CellScanner
from .search import ProbeReport
from .train import (
    MIN_ROWS_PER_FINE_CELL,
    REFINE_ITERS,
    Centroids,
    default_probes,
    default_shape,
    split_cells,
)

__all__ = [
    "ASSIGN_P1_MIN",
    "HRM2",
    "MIN_ROWS_PER_FINE_CELL",
    "REBUILD_IMBALANCE",
    "REBUILD_OVERFLOW",
    "REFINE_ITERS",
    "CellLayout",
    "CellScanner",
    "Centroids",
    "IndexHRM2",
    "ProbeReport",
    "Router",
    "default_probes",
    "default_shape",
    "split_cells",
]
