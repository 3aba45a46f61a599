"""Helpers shared by the test suite (``tests/``) and the micro-benchmarks
(``bench/micro/``); they import pytest, which only those need.

A backend that is not available here is skipped with the reason its probe gave, unless it
is listed in ``M2M_REQUIRE_BACKENDS`` (e.g. ``cpu,vulkan`` in CI): then it fails.
"""

from __future__ import annotations

import os

import pytest

from . import backends
from .backends import NAMES, Backend


def required_backends() -> set[str]:
    raw = os.environ.get("M2M_REQUIRE_BACKENDS", "")
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    unknown = names - set(NAMES)
    if unknown:
        raise pytest.UsageError(f"M2M_REQUIRE_BACKENDS names unknown backends: {unknown}")
    return names


def backend_or_skip(name: str) -> Backend:
    """The backend called ``name``; skips the test if it is missing, fails it if it is
    missing and required. A named backend is never replaced by another."""
    info = backends.probe(name)
    if not info.available:
        if name in required_backends():
            pytest.fail(f"required backend {name!r} is not available: {info.reason}")
        pytest.skip(f"backend {name!r} not available: {info.reason}")
    be = backends.get_backend(name)
    assert be.name == name
    return be
