"""Sweep presets: which kernels run at which parameters.

Each kernel has a list of parameter grids (every combination of a grid's lists is one
case). ``software_max_n``: on a software Vulkan device (lavapipe: Vulkan on the CPU) cases
with more rows than this are recorded as skipped, with the reason, instead of run.
"""

from __future__ import annotations

import itertools

PRESETS: dict[str, dict] = {
    "tiny": {  # seconds: the test suite's sweep (every kernel, a few hundred rows)
        "repeat": 2, "min_time": 0.0, "limit_bytes": 4 << 20, "gemm": 256,
        "software_max_n": 2_000,
        "kernels": {
            "knn": [{"n": [500, 1500], "d": [16], "m": [8], "k": [5], "metric": ["l2"],
                     "dtype": ["float32", "float16"]}],
            "splat_topk": [{"n": [500], "d": [16], "m": [8], "k": [5]}],
            "energy": [{"n": [500], "d": [16], "m": [8]}],
            "hebbian": [{"n": [500], "d": [16], "m": [32]}],
            "kmeans_assign": [{"n": [800], "d": [16]}],
            "hrm2": [{"n": [1500], "d": [16], "m": [16], "k": [5], "probes": [[2, 8]],
                      "ef": [[16]]}],
            "tiered": [{"n": [800], "d": [16], "m": [8], "k": [5]}],
        },
    },
    "quick": {  # under two minutes on a 2-core CPU with lavapipe
        "repeat": 5, "min_time": 0.1, "limit_bytes": 64 << 20, "gemm": 1024,
        "software_max_n": 20_000,
        "kernels": {
            "knn": [{"n": [10_000, 50_000], "d": [64], "m": [64], "k": [10],
                     "metric": ["l2"], "dtype": ["float32", "float16"]}],
            "splat_topk": [{"n": [10_000, 50_000], "d": [64], "m": [64], "k": [10]}],
            "energy": [{"n": [10_000, 50_000], "d": [64], "m": [64]}],
            "hebbian": [{"n": [10_000], "d": [64], "m": [256]}],
            "kmeans_assign": [{"n": [20_000], "d": [64]}],
            "hrm2": [{"n": [20_000], "d": [64], "m": [256], "k": [10],
                      "probes": [[2, 4, 8, 16]], "ef": [[16, 32, 64]]}],
            "tiered": [{"n": [20_000], "d": [64], "m": [64], "k": [10]}],
        },
    },
    "gpu": {  # one GPU in about two minutes (scripts/gpu_check.sh): the GPU-sized cases
        "repeat": 5, "min_time": 0.2, "limit_bytes": 1 << 30, "gemm": 2048,
        "software_max_n": 20_000,
        "kernels": {
            "knn": [{"n": [100_000, 1_000_000], "d": [128], "m": [1, 256], "k": [10],
                     "metric": ["l2"], "dtype": ["float32", "float16"]}],
            "splat_topk": [{"n": [1_000_000], "d": [128], "m": [1, 256], "k": [10]}],
            "energy": [{"n": [1_000_000], "d": [128], "m": [256]}],
            "hebbian": [{"n": [100_000], "d": [128], "m": [16384]}],
            "kmeans_assign": [{"n": [1_000_000], "d": [128]}],
            "hrm2": [{"n": [200_000], "d": [64], "m": [1000], "k": [10],
                      "probes": [[8, 32]], "ef": [[64]]}],
            "tiered": [{"n": [1_000_000], "d": [64], "m": [256], "k": [10]}],
        },
    },
    "standard": {
        "repeat": 10, "min_time": 0.5, "limit_bytes": 256 << 20, "gemm": 2048,
        "software_max_n": 100_000,
        "kernels": {
            "knn": [{"n": [10_000, 100_000, 1_000_000], "d": [64, 128], "m": [1, 256],
                     "k": [10], "metric": ["l2"], "dtype": ["float32", "float16"]},
                    {"n": [100_000], "d": [128], "m": [256], "k": [1, 100],
                     "metric": ["ip", "cosine"], "dtype": ["float32"]}],
            "splat_topk": [{"n": [100_000, 1_000_000], "d": [128], "m": [256], "k": [10]}],
            "energy": [{"n": [100_000, 1_000_000], "d": [128], "m": [256]}],
            "hebbian": [{"n": [100_000], "d": [128], "m": [1024, 16384]}],
            "kmeans_assign": [{"n": [100_000, 1_000_000], "d": [128]}],
            "hrm2": [{"n": [200_000], "d": [64], "m": [1000], "k": [10],
                      "probes": [[4, 8, 16, 32, 64]], "ef": [[16, 32, 64, 128]]}],
            "tiered": [{"n": [400_000], "d": [64], "m": [256], "k": [10]}],
        },
    },
    "full": {
        "repeat": 20, "min_time": 1.0, "limit_bytes": 1 << 30, "gemm": 4096,
        "software_max_n": 200_000,
        "kernels": {
            "knn": [{"n": [10_000, 100_000, 1_000_000, 4_000_000], "d": [64, 128, 384, 768],
                     "m": [1, 64, 1024], "k": [1, 10, 100], "metric": ["l2", "ip", "cosine"],
                     "dtype": ["float32", "float16"]}],
            "splat_topk": [{"n": [100_000, 1_000_000, 4_000_000], "d": [128, 384],
                            "m": [256], "k": [10, 100]}],
            "energy": [{"n": [100_000, 1_000_000, 4_000_000], "d": [128, 384], "m": [256]}],
            "hebbian": [{"n": [1_000_000], "d": [128, 384], "m": [1024, 65536]}],
            "kmeans_assign": [{"n": [1_000_000, 4_000_000], "d": [128]}],
            "hrm2": [{"n": [1_000_000], "d": [64, 128], "m": [1000], "k": [10],
                      "probes": [[4, 8, 16, 32, 64, 128]], "ef": [[16, 32, 64, 128, 256]]}],
            "tiered": [{"n": [4_000_000], "d": [64], "m": [256], "k": [10]}],
        },
    },
}


def expand(grids: list[dict]) -> list[dict]:
    """Every combination of each grid's lists, in order."""
    out = []
    for g in grids:
        keys = list(g)
        for combo in itertools.product(*(g[k] for k in keys)):
            out.append(dict(zip(keys, combo, strict=True)))
    return out


def cases(preset: dict, kernels: list[str] | None = None) -> list[tuple[str, dict]]:
    return [(kern, p) for kern, grids in preset["kernels"].items()
            if kernels is None or kern in kernels for p in expand(grids)]
