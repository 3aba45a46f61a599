"""Fixtures for the pytest-benchmark micro-benchmarks (``bench/micro``).

Sizes come from the environment so that the same file serves a quick smoke run and a real
measurement: ``M2M_MICRO_N`` (rows, default 20000), ``M2M_MICRO_D`` (64), ``M2M_MICRO_M``
(queries, 64), ``M2M_MICRO_ROUNDS`` (timed rounds, 20). A backend that is not available
is skipped, unless ``M2M_REQUIRE_BACKENDS`` names it (then it fails), as in ``tests/``.
"""

from __future__ import annotations

import os

import pytest

from m2m_gpu.backends import NAMES
from m2m_gpu.bench.cases import Context, _params
from m2m_gpu.testing import backend_or_skip


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SIZES = {"n": _env_int("M2M_MICRO_N", 20000), "d": _env_int("M2M_MICRO_D", 64),
         "m": _env_int("M2M_MICRO_M", 64), "k": 10}
ROUNDS = _env_int("M2M_MICRO_ROUNDS", 20)
WARMUP = 3


@pytest.fixture(params=NAMES)
def backend(request):
    return backend_or_skip(request.param)


@pytest.fixture(scope="session")
def _data():
    ctx = Context()
    X, Q = ctx.data(SIZES["n"], SIZES["d"], SIZES["m"])
    return X, Q, _params(SIZES["n"])


@pytest.fixture
def data(_data):
    """Clustered Philox data (the suite's), float32: X (n, d), Q (m, d), params (n, 4).
    Fresh copies per test: the cpu backend works in place on the arrays it is given."""
    return tuple(a.copy() for a in _data)


@pytest.fixture
def timed(benchmark):
    """``timed(group, fn, sync)``: checkable result of one call, then ``ROUNDS`` timed
    rounds after ``WARMUP`` untimed ones, each round ending with the device sync (so a
    round is the whole kernel, not its launch)."""

    def run(group: str, fn, sync=lambda: None):
        benchmark.group = group
        benchmark.extra_info.update(SIZES)

        def call():
            out = fn()
            sync()
            return out

        return benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)

    return run

