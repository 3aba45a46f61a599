"""Memory tiers (SPEC section 4): where each splat's vector lives.

Three tiers, each with a byte budget:

* **hot**: a row store of the active backend (CuPy memory on cuda, Kompute tensors on
  vulkan, NumPy on cpu, where the "device" budget is simulated by the same code);
* **warm**: host RAM, pageable; blocks stream to the device through the backend's
  :meth:`~m2m_gpu.backends.base.Backend.stream` (on cuda: two fixed page-locked staging
  buffers of ``block_bytes`` each, so pinned memory stays bounded by about
  ``4 * block_bytes`` per active stream however large the warm tier grows);
* **cold**: a memory-mapped file: the ``vectors`` file of the store's last checkpoint for
  splats that have not changed since, and a spill file for everything demoted later.

Every slot's vector is in exactly one tier. Budgets count vector bytes (``4 * dim`` per
splat); the splat parameters (16 bytes per splat, and 4 bytes of ``||mu||^2`` on cpu) stay
on the device for every splat, because decay and feedback update them in place.

:class:`TierManager` is the interface that the store (rows = slots) and the HRM2 index
(rows = positions in cell order) use, and nothing else needs to know about:
:meth:`~TierManager.place` new rows, :meth:`~TierManager.promote` and
:meth:`~TierManager.demote` (batched; splats and bytes counted per direction),
:meth:`~TierManager.fetch` chosen rows as one device block,
:meth:`~TierManager.blocks` (every row, tier by tier, as device blocks; warm and cold blocks
are uploaded with the next block's copy overlapping the current block's compute on cuda,
by the backend),
:meth:`~TierManager.gather` / :meth:`~TierManager.scatter` rows by slot, and
:meth:`~TierManager.keep` for compaction. :meth:`~TierManager.rebalance` applies the
placement policy:

* ``"hotness"`` (default): ``alpha * (1 + h)``, with ``h = h * exp(-dt / tau) + accesses``;
* ``"lru"``: the most recently accessed first;
* ``"lfu"``: the most often accessed first.

An access is a splat returned by a search or named relevant in feedback; time ``dt`` counts
calls (searches and feedback events), not seconds. Within each tier rows are kept in
ascending slot order, so the hot tier of an unbounded manager is exactly the dense matrix
the kernels have always used (:meth:`~TierManager.dense`).

When the device runs out of memory while the hot tier grows, the hot budget is set to
what the hot tier holds, the rows go to the warm tier instead, and a warning is logged once.

Modules: :mod:`.options` (tier numbers, :class:`TierOptions`, :class:`Block`),
:mod:`.slotmap` (:class:`SlotMap`: tier and position per slot, the hot and warm slot lists
and their invariants; pure NumPy), :mod:`.stores` (:class:`HotRows` on the device, capped
when it runs out of memory; :class:`WarmRows` in host memory; :class:`ColdRows`, the
memory-mapped files), :mod:`.policy` (:class:`AccessStats`, :func:`plan`) and
:mod:`.manager` (:class:`TierManager`, which coordinates them).
"""

from .manager import TierManager
from .options import COLD, HOT, POLICIES, TIER_NAMES, WARM, Block, TierOptions
from .policy import AccessStats, plan
from .slotmap import SlotMap
from .stores import ColdRows, HotRows, WarmRows

__all__ = ["COLD", "HOT", "POLICIES", "TIER_NAMES", "WARM", "AccessStats", "Block",
           "ColdRows", "HotRows", "SlotMap", "TierManager", "TierOptions", "WarmRows", "plan"]
