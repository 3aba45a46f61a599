"""Qdrant's distances on a SplatStore: what is searched and what is reported.

- ``Cosine``: a ``cosine`` store (vectors normalised on the way in, as Qdrant does); score
  = cosine similarity ``1 - d2 / 2``, best first = highest.
- ``Euclid``: an ``l2`` store; score = the distance ``sqrt(d2)``, best first = lowest.
- ``Dot``: an ``l2`` store holding the vectors as given (so they read back exactly), searched
  by an exact inner-product scan (:func:`m2m_gpu.knn`, ``metric="ip"``) over a copy of the
  vectors the collection keeps; score = the dot product. A splat has no geometry under a
  dot product, so the splat routes refuse Dot collections.
"""

from __future__ import annotations

import numpy as np

DISTANCES = ("Cosine", "Euclid", "Dot")


class Geometry:
    def __init__(self, distance: str, size: int) -> None:
        self.distance, self.size = distance, size
        self.metric = "cosine" if distance == "Cosine" else "l2"
        self.by_scan = distance == "Dot"

    @property
    def higher_is_better(self) -> bool:
        return self.distance != "Euclid"

    def scores(self, d2: np.ndarray) -> np.ndarray:
        """Qdrant's score of each hit of a store search from its squared distance."""
        d2 = np.maximum(d2.astype(np.float64), 0.0)
        return 1.0 - d2 / 2.0 if self.distance == "Cosine" else np.sqrt(d2)

    def passes(self, score: float, threshold: float | None) -> bool:
        if threshold is None:
            return True
        return score >= threshold if self.higher_is_better else score <= threshold
