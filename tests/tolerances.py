"""The one tolerance table: (backend, input dtype) -> (rtol, atol) for distances.

Every backend computes in float32. The reference computes in float64 with the direct form.
The cpu backend ranks with the fast form and then recomputes the direct form for the k
results; the GPU kernels use the direct form throughout; float16 input is converted first,
so its rounding is in the input both sides see.
"""

from __future__ import annotations

import numpy as np

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    ("cpu", "float32"): (1e-5, 1e-5),
    ("cpu", "float64"): (1e-5, 1e-5),
    ("cpu", "float16"): (1e-5, 1e-5),
    ("cuda", "float32"): (1e-5, 1e-5),
    ("cuda", "float64"): (1e-5, 1e-5),
    ("cuda", "float16"): (1e-5, 1e-5),
    ("vulkan", "float32"): (1e-5, 1e-5),
    ("vulkan", "float64"): (1e-5, 1e-5),
    ("vulkan", "float16"): (1e-5, 1e-5),
}


def tolerance(backend: str, dtype) -> tuple[float, float]:
    return TOLERANCES[(backend, np.dtype(dtype).name)]
