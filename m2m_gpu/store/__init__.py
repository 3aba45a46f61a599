"""``SplatStore``: ids, metadata, feedback, decay and consolidation over the splat kernels.

The store is a facade (:mod:`m2m_gpu.store.splat_store`) over parts with one owner per
invariant: the slot table (:mod:`.slots`), the splat arrays on the device (:mod:`.arrays`),
search and energy (:mod:`.reader`), learning (:mod:`.learning`, :mod:`.consolidation`),
operations and their log records (:mod:`.ops`), the log and checkpoints (:mod:`.durable`,
:mod:`.snapshots`) and checks (:mod:`.integrity`).

Index. ``index="flat"`` (default) ranks every splat exactly. ``index="hrm2"`` adds an HRM2
index (:mod:`m2m_gpu.store_index`) once the store holds ``index_options["train_min"]``
splats: searches then scan only the probed cells, and every change to a splat (add, upsert,
feedback that moves mu, delete, merge, decay) is passed on to the index, so a splat whose mu
crosses into another cell is re-assigned and stays findable. ``search(..., exact=True)``
ranks every splat whatever the index. With tier budgets the index's copy of the vectors
(the one searched) takes them, and the store's own copy stays in the cold tier.
"""

from .durable import CHECKPOINT_BYTES
from .options import MAX_DECAY_HALF_LIVES, SPLAT_METRICS, StoreOptions
from .results import ConsolidationReport, DecayReport, EnergyResult, Hit, SearchResult
from .splat_store import SplatStore
from .state import COMPACT_MIN_FREE

__all__ = ["CHECKPOINT_BYTES", "COMPACT_MIN_FREE", "MAX_DECAY_HALF_LIVES", "SPLAT_METRICS",
           "ConsolidationReport", "DecayReport", "EnergyResult", "Hit", "SearchResult",
           "SplatStore", "StoreOptions"]
