"""Bad input the reliability probe (defect 15) saw accepted silently or answered with a raw
``RecursionError`` / ``ValueError`` / ``FileExistsError``: each is now an
:class:`InvalidInputError` naming the problem, and nothing stored changes."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu.crashtest import digest


def _nested(depth: int, make):
    obj = {"a": 1}
    for _ in range(depth):
        obj = make(obj)
    return obj


@pytest.fixture()
def store():
    s = m2m_gpu.SplatStore(4, backend="cpu")
    s.add(np.eye(4, dtype=np.float32), ids=list("abcd"))
    return s


CASES = {
    "metadata nested 5000 deep": lambda s, tmp: s.add(
        np.ones(4, np.float32), metadata=_nested(5000, lambda o: {"a": o})),
    "filter nested 3000 deep": lambda s, tmp: s.search(
        np.ones(4, np.float32), filter=_nested(3000, lambda o: {"$not": o})),
    "save onto a regular file": lambda s, tmp: s.save(tmp),
    "decay(True)": lambda s, tmp: s.decay(True),
    "capacity=True": lambda s, tmp: m2m_gpu.SplatStore(4, backend="cpu", capacity=True),
    "dedup='yes'": lambda s, tmp: m2m_gpu.SplatStore(4, backend="cpu", dedup="yes"),
    "kappa0 above kappa_max": lambda s, tmp: m2m_gpu.SplatStore(4, backend="cpu", kappa0=1e6),
    "clock=nan": lambda s, tmp: m2m_gpu.SplatStore(4, backend="cpu", clock=float("nan")),
    "IndexHRM2(n1=0)": lambda s, tmp: m2m_gpu.IndexHRM2(4, n1=0, backend="cpu"),
    "splat_topk with 3 alphas for 4 rows": lambda s, tmp: m2m_gpu.splat_topk(
        np.ones((1, 4), np.float32), np.eye(4, dtype=np.float32), np.ones(3, np.float32),
        np.ones(4, np.float32), 2),
    "splat_topk with alpha='x'": lambda s, tmp: m2m_gpu.splat_topk(
        np.ones((1, 4), np.float32), np.eye(4, dtype=np.float32), "x",
        np.ones(4, np.float32), 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clear_error_and_changes_nothing(store, tmp_path, case):
    target = tmp_path / "a-file"
    target.write_text("not a store")
    before = digest(store)
    with pytest.raises(m2m_gpu.InvalidInputError):
        CASES[case](store, target)
    assert digest(store) == before and target.read_text() == "not a store"


@pytest.mark.parametrize("i0,ni", [(-5, 3), (2, 5), (0, -1), (True, 1)])
def test_reconstruct_n_refuses_rows_it_does_not_hold(i0, ni):
    index = m2m_gpu.IndexFlatL2(4, backend="cpu")
    index.add(np.eye(4, dtype=np.float32))
    with pytest.raises(m2m_gpu.InvalidInputError, match="reconstruct_n"):
        index.reconstruct_n(i0, ni)
    np.testing.assert_array_equal(index.reconstruct_n(1, 2), np.eye(4, dtype=np.float32)[1:3])
