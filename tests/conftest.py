"""Shared fixtures: every kernel test runs once per backend.

A backend that is not available here is skipped with the reason its probe gave, unless it
is listed in ``M2M_REQUIRE_BACKENDS`` (e.g. ``cpu,vulkan`` in CI): then it fails. A Vulkan
run is always a Vulkan run: backends are fetched by name, and a named backend is never
replaced by another.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from m2m_gpu import backends
from m2m_gpu.backends import NAMES
from m2m_gpu.testing import backend_or_skip


def pytest_report_header(config):
    lines = []
    for info in backends.probe_all():
        state = f"available: {info.device}" if info.available else f"missing: {info.reason}"
        lines.append(f"m2m backend {info.name}: {state}")
    lines.append(f"M2M_REQUIRE_BACKENDS={os.environ.get('M2M_REQUIRE_BACKENDS', '')!r}")
    return lines


@pytest.fixture(params=NAMES)
def backend(request):
    """The backend instance for this parametrisation (skipped or failed if missing)."""
    return backend_or_skip(request.param)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiny tile and chunk budgets: a kernel's merge runs across many database tiles (cpu,
    cuda), many query chunks (cuda) and many device buffers (vulkan)."""
    from m2m_gpu.backends import cuda, vulkan
    from m2m_gpu.ops import host_topk

    monkeypatch.setattr(host_topk, "BATCH_TILE_BYTES", 4096)
    monkeypatch.setattr(host_topk, "SCAN_TILE_ROWS", 37)
    monkeypatch.setattr(cuda, "TILE_BUDGET_BYTES", 4096)
    monkeypatch.setattr(cuda, "QUERY_CHUNK", 7)
    monkeypatch.setattr(vulkan, "TILE_BUDGET_BYTES", 4096)
    monkeypatch.setattr(vulkan, "CHUNK_BYTES", 64 * 1024)


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)
