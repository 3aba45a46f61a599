"""The store options of SPEC sections 1-2, checked once."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..backends.base import HebbianRates
from ..errors import InvalidInputError, UnknownMetricError

MAX_TIME = 1e38  # clocks and ticks are kept in float32 (largest finite: 3.4e38)
MAX_DECAY_HALF_LIVES = 100.0  # one decay() advancing the clock further is refused (2^-100)

_RATES = HebbianRates()  # the learning rates and clips have one set of defaults


@dataclass(frozen=True)
class StoreOptions:
    """The store options of SPEC sections 1-2, with their defaults."""

    kappa0: float = 10.0
    lr_alpha: float = _RATES.lr_alpha
    lr_kappa: float = _RATES.lr_kappa
    lr_mu: float = _RATES.lr_mu
    alpha_min: float = _RATES.alpha_min
    alpha_max: float = _RATES.alpha_max
    kappa_min: float = _RATES.kappa_min
    kappa_max: float = _RATES.kappa_max
    eps: float = _RATES.eps  # in kappa += lr_kappa / (d2 + eps)
    half_life: float = 30 * 86400.0  # decay half-life, in the units of `now` (30 days in s)
    alpha_prune: float = 0.01
    merge_radius: float = 0.0  # 0 disables merging; pairs with d2 < merge_radius^2 merge
    capacity: int | None = None  # auto-consolidate when the store grows past this
    prune_share: float = 0.25  # auto-consolidate when this share of alpha is under prune
    auto_consolidate: bool = True
    clock: float = 0.0  # the store's time origin; `now` values are relative to it
    dedup: bool = False  # content-hash deduplication: identical vectors stored once

    def check(self) -> None:
        pos = ("kappa0", "alpha_min", "alpha_max", "kappa_min", "kappa_max", "eps", "half_life")
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            if isinstance(v, bool) and name not in ("auto_consolidate", "dedup"):
                raise InvalidInputError(f"option {name} must be a number, got {v!r}")
        for name in ("auto_consolidate", "dedup"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"option {name} must be True or False, got "
                                        f"{getattr(self, name)!r}")
        for name in pos:
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not v > 0 or not math.isfinite(v) and \
                    name != "half_life":
                raise InvalidInputError(f"option {name} must be a positive number, got {v!r}")
        for name in ("lr_alpha", "lr_kappa", "lr_mu", "alpha_prune", "merge_radius",
                     "prune_share"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not v >= 0 or not math.isfinite(v):
                raise InvalidInputError(f"option {name} must be a number >= 0, got {v!r}")
        if self.lr_alpha >= 1:
            raise InvalidInputError("option lr_alpha must be < 1 (alpha *= 1 - lr_alpha)")
        if self.alpha_min > self.alpha_max or self.kappa_min > self.kappa_max:
            raise InvalidInputError("clip ranges need alpha_min <= alpha_max and "
                                    "kappa_min <= kappa_max")
        if not self.kappa_min <= self.kappa0 <= self.kappa_max:
            raise InvalidInputError(f"option kappa0={self.kappa0} is outside [kappa_min, "
                                    f"kappa_max] = [{self.kappa_min}, {self.kappa_max}]")
        if not isinstance(self.clock, numbers.Real) or not math.isfinite(self.clock) or \
                abs(self.clock) > MAX_TIME:
            raise InvalidInputError(f"option clock must be a finite number, got {self.clock!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int)
                                          or self.capacity < 1):
            raise InvalidInputError(f"option capacity must be None or an int >= 1, "
                                    f"got {self.capacity!r}")

    def rates(self, renormalize: bool) -> HebbianRates:
        return HebbianRates(self.lr_alpha, self.lr_kappa, self.lr_mu, self.alpha_min,
                            self.alpha_max, self.kappa_min, self.kappa_max, self.eps,
                            renormalize)



SPLAT_METRICS = ("cosine", "l2")


def check_store_args(dim, metric, index, index_options, options: dict):
    """``SplatStore``'s arguments checked: ``(dim, metric, StoreOptions)``."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InvalidInputError(f"dim must be a positive integer, got {dim!r}")
    name = metric.lower() if isinstance(metric, str) else metric
    if name not in SPLAT_METRICS:
        hint = " (splat scores need a distance; use IndexFlatIP for inner product)" \
            if name == "ip" else ""
        raise UnknownMetricError(f"unknown splat metric {metric!r}; expected one of "
                                 f"{SPLAT_METRICS}{hint}")
    unknown = set(options) - set(StoreOptions.__dataclass_fields__)
    if unknown:
        raise InvalidInputError(f"unknown store options {sorted(unknown)}; known: "
                                f"{sorted(StoreOptions.__dataclass_fields__)}")
    opts = StoreOptions(**options)
    opts.check()
    if index not in ("flat", "hrm2"):
        raise InvalidInputError(f"index must be 'flat' or 'hrm2', got {index!r}")
    if index == "flat" and index_options:
        raise InvalidInputError("index_options apply to index='hrm2' only")
    return int(dim), name, opts
