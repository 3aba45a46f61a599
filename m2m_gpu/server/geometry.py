"""Qdrant's distances on a SplatStore: what is stored, what is searched, what is reported.

- ``Cosine``: a ``cosine`` store (vectors normalised on the way in, as Qdrant does); score
  = cosine similarity ``1 - d2 / 2``, best first = highest.
- ``Euclid``: an ``l2`` store; score = the distance ``sqrt(d2)``, best first = lowest.
- ``Dot``: an ``l2`` store of lifted vectors ``[v, sqrt(M^2 - |v|^2)]`` (every stored row has
  norm ``M``), queried with ``[x, 0]``: then ``d2 = |x|^2 + M^2 - 2 x.v``, so the nearest
  rows are those of largest dot product, and the score ``x.v = (|x|^2 + M^2 - d2) / 2``
  is exact. ``M`` is kept above every stored norm: a vector longer than ``M`` re-lifts the
  collection with ``M`` doubled past it (one batched upsert). ``M`` needs no file of its
  own: it is the norm of any stored row.
"""

from __future__ import annotations

import numpy as np

DISTANCES = ("Cosine", "Euclid", "Dot")


class Geometry:
    def __init__(self, distance: str, size: int) -> None:
        self.distance, self.size = distance, size
        self.metric = "cosine" if distance == "Cosine" else "l2"
        self.stored_dim = size + 1 if distance == "Dot" else size
        self.bound = 0.0  # Dot: M

    @property
    def higher_is_better(self) -> bool:
        return self.distance != "Euclid"

    def attach(self, stored_row: np.ndarray | None) -> None:
        """Dot: read ``M`` back from one stored row (None: an empty collection)."""
        if self.distance == "Dot" and stored_row is not None:
            self.bound = float(np.linalg.norm(stored_row.astype(np.float64)))

    def needs_relift(self, vectors: np.ndarray) -> float | None:
        """Dot: the new bound when ``vectors`` do not fit under the current one."""
        if self.distance != "Dot" or vectors.shape[0] == 0:
            return None
        top = float(np.sqrt((vectors.astype(np.float64) ** 2).sum(1).max()))
        if top <= self.bound:
            return None
        return max(2.0 * top, 1.0)

    def to_stored(self, vectors: np.ndarray, bound: float | None = None) -> np.ndarray:
        if self.distance != "Dot":
            return vectors
        m = self.bound if bound is None else bound
        sq = (vectors.astype(np.float64) ** 2).sum(1)
        extra = np.sqrt(np.maximum(m * m - sq, 0.0)).astype(np.float32)
        return np.concatenate([vectors, extra[:, None]], axis=1)

    def from_stored(self, rows: np.ndarray) -> np.ndarray:
        return rows[:, : self.size] if self.distance == "Dot" else rows

    def to_query(self, queries: np.ndarray) -> np.ndarray:
        if self.distance != "Dot":
            return queries
        return np.concatenate([queries, np.zeros((queries.shape[0], 1), np.float32)], axis=1)

    def scores(self, d2: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Qdrant's score of each hit from its squared distance (rows: queries)."""
        d2 = np.maximum(d2.astype(np.float64), 0.0)
        if self.distance == "Cosine":
            return 1.0 - d2 / 2.0
        if self.distance == "Euclid":
            return np.sqrt(d2)
        qn = (queries.astype(np.float64) ** 2).sum(1, keepdims=True)
        return (qn + self.bound**2 - d2) / 2.0

    def passes(self, score: float, threshold: float | None) -> bool:
        if threshold is None:
            return True
        return score >= threshold if self.higher_is_better else score <= threshold
