"""Rows on their way to the device: every row as blocks, or chosen rows as one block."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np

from .options import HOT, WARM, Block
from .slotmap import SlotMap
from .stores import ColdRows, HotRows, WarmRows
from .traffic import Traffic


class Streamer:
    """The hot tier is read in place; warm and cold rows are copied up through the
    backend's :meth:`~m2m_gpu.backends.base.Backend.stream` (on cuda the next block's copy
    overlaps the current block's compute) and counted in ``traffic``. It only reads:
    several threads may stream at once while no write runs."""

    def __init__(self, backend, slotmap: SlotMap, hot: HotRows, warm: WarmRows,
                 cold: ColdRows, traffic: Traffic, block_rows: int) -> None:
        self.backend = backend
        self._map, self._hot, self._warm, self._cold = slotmap, hot, warm, cold
        self.traffic = traffic
        self.block_rows = block_rows

    def blocks(self) -> Iterator[Block]:
        """Every row once: the hot tier in one block, then warm and cold rows in blocks of
        at most ``block_rows``, each block's slots ascending."""
        hot = self._map.slots(HOT)
        if hot.size:
            yield Block(HOT, hot, self._hot.view())
        specs = self._map.block_plan(self.block_rows)
        if not specs:
            return
        sources = [partial(self._host_block, tier, slots, start)
                   for tier, slots, start in specs]
        for (tier, slots, _), rows in zip(specs, self.backend.stream(sources), strict=True):
            self.traffic.streamed_block(slots.size * self._hot.row_bytes)
            yield Block(tier, slots, rows)

    def _host_block(self, tier: int, slots: np.ndarray, start) -> np.ndarray:
        if tier == WARM:
            return self._warm.block(start, slots.size)
        return self._cold.read(self._map.pos[slots])

    def fetch(self, host: np.ndarray, like=None):
        """Host rows as one device block, counted as streamed."""
        self.traffic.streamed_block(host.nbytes)
        return self.upload(host, like)

    def upload(self, host: np.ndarray, like=None):
        """A host block on the device (cpu: the block itself, no copy)."""
        return self.backend.from_host(np.ascontiguousarray(host), like=like)
