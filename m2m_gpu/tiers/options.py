"""The tier numbers and names, :class:`TierOptions` (budgets and policy) and :class:`Block`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import InvalidInputError

HOT, WARM, COLD = 0, 1, 2
TIER_NAMES = ("hot", "warm", "cold")
POLICIES = ("hotness", "lru", "lfu")


@dataclass(frozen=True)
class TierOptions:
    """Budgets and policy. ``None`` budgets are unbounded: the default manager keeps every
    row hot (until the device runs out of memory); ``warm_bytes=None`` with a hot budget
    keeps everything else in host RAM, and ``warm_bytes=0`` sends it to the cold file."""

    hot_bytes: int | None = None
    warm_bytes: int | None = None
    policy: str = "hotness"
    tau: float = 256.0  # hotness decay time, in calls (searches + feedback)
    block_bytes: int = 64 << 20  # most vector bytes per streamed block
    rebalance_every: int = 32  # calls between placement passes
    cold_dir: str | None = None  # the spill file's directory (default: the store's, or tmp)

    @classmethod
    def parse(cls, obj: Any) -> TierOptions:
        if obj is None:
            return cls()
        if isinstance(obj, TierOptions):
            out = obj
        elif isinstance(obj, dict):
            known = {f.name for f in fields(cls)}
            unknown = set(obj) - known
            if unknown:
                raise InvalidInputError(f"unknown tier options {sorted(unknown)}; known: "
                                        f"{sorted(known)}")
            out = cls(**obj)
        else:
            raise InvalidInputError(f"tiers must be a dict or TierOptions, got "
                                    f"{type(obj).__name__}")
        out.check()
        return out

    def check(self) -> None:
        for name in ("hot_bytes", "warm_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 0):
                raise InvalidInputError(f"tier option {name} must be None or an int >= 0, "
                                        f"got {v!r}")
        if self.policy not in POLICIES:
            raise InvalidInputError(f"tier policy must be one of {POLICIES}, got "
                                    f"{self.policy!r}")
        if not isinstance(self.tau, (int, float)) or not self.tau > 0 or \
                not math.isfinite(self.tau):
            raise InvalidInputError(f"tier option tau must be a positive number, got "
                                    f"{self.tau!r}")
        for name in ("block_bytes", "rebalance_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidInputError(f"tier option {name} must be an int >= 1, got {v!r}")

    @property
    def bounded(self) -> bool:
        return self.hot_bytes is not None or self.warm_bytes is not None


@dataclass
class Block:
    """Rows of one tier on the device: ``slots`` (ascending) and ``rows`` (native)."""

    tier: int
    slots: np.ndarray
    rows: Any
