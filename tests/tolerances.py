"""The one tolerance table: (quantity, backend) -> (rtol, atol).

Every backend computes in float32; the references compute in float64 with the direct form.

* knn / splat distances: the cpu backend ranks with the fast form and recomputes the direct
  form for the results; the GPU kernels use the direct form throughout. float16 input is
  converted first, so its rounding is in the input both sides see. float16 storage
  (``IndexFlat(dtype="float16")``) is compared with the reference over the stored, rounded
  rows (``reconstruct_n``), so the same tolerances apply.
* log_score = log(alpha) - kappa d2: kappa (up to 100) multiplies the error of d2, hence an
  absolute term scaled by kappa_max * the distance tolerance.
* energy: a float32 log-sum-exp over every splat; the cpu backend corrects its largest terms
  to the direct form; the gradient is a sum of n weighted vectors.
* hebbian: float32 recurrences over up to thousands of sequential events per splat.
* kmeans_sums: sums of up to thousands of rows; the GPU kernels add in float32 with Kahan
  compensation, the cpu backend in float64.
* philox_normal: Box-Muller goes through log/cos/sin, whose last bits differ by library
  (the raw Philox words are compared bit for bit, with no tolerance).
"""

from __future__ import annotations

import numpy as np

BACKENDS = ("cpu", "cuda", "vulkan")

_BASE = {
    "knn": (1e-5, 1e-5),
    "splat_d2": (1e-5, 1e-5),
    "log_score": (1e-5, 1e-3),
    "energy": (1e-5, 1e-5),
    "energy_grad": (1e-4, 1e-4),
    "hebbian": (1e-5, 1e-5),
    "decay": (1e-6, 1e-7),
    "philox_normal": (1e-5, 1e-5),
    "kmeans_sums": (1e-5, 1e-4),
}

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    (what, be): tol for what, tol in _BASE.items() for be in BACKENDS
}


def tolerance(backend: str, dtype=np.float32, what: str = "knn") -> tuple[float, float]:
    """``dtype`` is the input dtype (all are converted to float32 first; kept for callers
    that state it)."""
    np.dtype(dtype)  # a bad dtype is a test bug
    return TOLERANCES[(what, backend)]
