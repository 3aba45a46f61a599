"""What the tiers move and stream, counted (thread-safe: concurrent searches stream)."""

from __future__ import annotations

import numpy as np

from ..locking import ForkSafeLock
from .options import COLD, HOT, TIER_NAMES, WARM


class Traffic:
    """Splats and bytes moved per direction (``moves["cold->hot"]``, ...) and blocks and
    bytes streamed to the device (``streamed``). Readers in several threads count their
    streamed blocks at once: the counts and :meth:`snapshot` hold a lock."""

    def __init__(self, row_bytes: int) -> None:
        self.row_bytes = row_bytes
        self.moves = {f"{a}->{b}": {"splats": 0, "bytes": 0}
                      for a in TIER_NAMES for b in TIER_NAMES if a != b}
        self.streamed = {"blocks": 0, "bytes": 0}
        self._lock = ForkSafeLock()

    def moved(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Slots went from tiers ``src`` to tiers ``dst`` (element by element)."""
        with self._lock:
            for a in (HOT, WARM, COLD):
                for b in (HOT, WARM, COLD):
                    n = int(((src == a) & (dst == b)).sum()) if a != b else 0
                    if n:
                        key = f"{TIER_NAMES[a]}->{TIER_NAMES[b]}"
                        self.moves[key]["splats"] += n
                        self.moves[key]["bytes"] += n * self.row_bytes

    def splats_moved(self) -> dict[str, int]:
        with self._lock:
            return {k: v["splats"] for k, v in self.moves.items()}

    def streamed_block(self, nbytes: int) -> None:
        with self._lock:
            self.streamed["blocks"] += 1
            self.streamed["bytes"] += int(nbytes)

    def snapshot(self) -> dict:
        """Copies: ``{"moves": ..., "streamed": ...}``."""
        with self._lock:
            return {"moves": {k: dict(v) for k, v in self.moves.items()},
                    "streamed": dict(self.streamed)}
