"""Inner product on unnormalised data as an L2 search (the maximum-inner-product lift).

A row ``x`` becomes ``[x, sqrt(M^2 - |x|^2)]`` and a query ``q`` becomes ``[q, 0]``, with
``M`` the largest row norm: then ``|q' - x'|^2 = |q|^2 + M^2 - 2 q.x``, so the nearest
lifted rows are the rows of largest inner product, and ``q.x = (|q|^2 + M^2 - d2) / 2``.
HRM2's cells and scans stay L2 (on ``d + 1`` dimensions). A row longer than ``M`` raises
``M`` (every stored row is lifted again: rare, O(n)).
"""

from __future__ import annotations

import numpy as np


class MipsLift:
    def __init__(self) -> None:
        self.norm: float | None = None  # M

    def needs(self, x: np.ndarray) -> float | None:
        """The new ``M`` if a row of ``x`` is longer than the current one, else None."""
        if x.shape[0] == 0:
            return None
        top = float(np.sqrt((x.astype(np.float64) ** 2).sum(axis=1).max()))
        return top if self.norm is None or top > self.norm else None

    def rows(self, x: np.ndarray) -> np.ndarray:
        sq = (x.astype(np.float64) ** 2).sum(axis=1)
        extra = np.sqrt(np.maximum(self.norm ** 2 - sq, 0.0))
        return np.ascontiguousarray(np.hstack([x, extra[:, None]]), np.float32)

    @staticmethod
    def queries(q: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([q, np.zeros((q.shape[0], 1), q.dtype)]),
                                    np.float32)

    @staticmethod
    def strip(rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows[:, :-1])

    def similarity(self, q: np.ndarray, d2: np.ndarray) -> np.ndarray:
        qq = (q.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        return ((qq + self.norm ** 2 - d2) / 2.0).astype(np.float32)
