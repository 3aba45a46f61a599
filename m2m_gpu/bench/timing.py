"""Timing: warm up, synchronise the device, repeat, and summarise the samples."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def summarise(samples: list[float]) -> dict:
    """median, p10, p90, p99, mean and min of ``samples`` (seconds), and the samples."""
    s = np.asarray(samples, dtype=np.float64)
    pct = np.percentile(s, [10, 50, 90, 99])
    return {"median_s": float(pct[1]), "p10_s": float(pct[0]), "p90_s": float(pct[2]),
            "p99_s": float(pct[3]), "mean_s": float(s.mean()), "min_s": float(s.min()),
            "repeats": int(s.size), "samples_s": [float(x) for x in s]}


def measure(fn: Callable[[], object], sync: Callable[[], None] = lambda: None, *,
            warmup: int = 1, repeat: int = 5, min_time: float = 0.0,
            max_repeat: int = 200) -> dict:
    """Time ``fn(); sync()``: ``warmup`` untimed calls, then at least ``repeat`` timed ones,
    more (up to ``max_repeat``) until ``min_time`` seconds have been timed, so that short
    kernels get enough samples for their tail percentiles."""
    for _ in range(warmup):
        fn()
        sync()
    samples: list[float] = []
    while len(samples) < repeat or (sum(samples) < min_time and len(samples) < max_repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return summarise(samples)
