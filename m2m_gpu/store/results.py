"""What the store's calls return: search hits, energies, and reports of what changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class Hit(NamedTuple):
    id: Any
    score: float  # alpha * exp(-kappa d2)
    log_score: float  # log(alpha) - kappa d2, the ranking key of rank="splat"
    distance: float  # d2 (squared L2; 2 - 2 cos under cosine)
    metadata: dict


@dataclass
class SearchResult:
    """Results of :meth:`SplatStore.search`: row q holds query q's hits, best first.

    ``ids`` and ``metadata`` are lists of lists; ``scores``, ``log_scores`` and
    ``distances`` are float32 arrays of shape (queries, hits). Every query gets
    ``min(k, matching splats)`` hits. ``result[q]`` is a list of :class:`Hit`.
    """

    ids: list[list[Any]]
    scores: np.ndarray
    log_scores: np.ndarray
    distances: np.ndarray
    metadata: list[list[dict]]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, q: int) -> list[Hit]:
        return [Hit(i, float(s), float(ls), float(dd), m) for i, s, ls, dd, m in zip(
            self.ids[q], self.scores[q], self.log_scores[q], self.distances[q],
            self.metadata[q], strict=True)]

    def __iter__(self):
        return (self[q] for q in range(len(self)))


@dataclass
class EnergyResult:
    """``energy[q] = -log sum_i alpha_i exp(-kappa_i d2)`` (+inf for an empty store) and
    ``confidence = sigmoid(-energy) = mass / (1 + mass)``, where ``mass = exp(-energy)`` is
    the total score the store gives the query: 0.5 at the centre of a lone unit splat,
    towards 1 where memories agree, towards 0 far from every memory."""

    energy: np.ndarray
    confidence: np.ndarray
    gradient: np.ndarray | None = None


@dataclass
class ConsolidationReport:
    pruned: list[Any] = field(default_factory=list)  # ids removed for alpha < alpha_prune
    merged: list[tuple[Any, Any]] = field(default_factory=list)  # (absorbed id, survivor id)
    rounds: int = 0
    before: int = 0
    after: int = 0
    reason: str = "manual"


@dataclass
class DecayReport:
    """What ``decay`` did: the time that passed, the factor every alpha was multiplied by
    (for splats last touched at the previous clock), and the consolidation it triggered
    (``auto_consolidate``), if any: its ``pruned`` ids are gone from the store."""

    elapsed: float
    factor: float
    consolidation: ConsolidationReport | None = None

    @property
    def pruned(self) -> list:
        return list(self.consolidation.pruned) if self.consolidation else []


