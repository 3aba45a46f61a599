"""Kernel entry points take what they are given in any dtype and layout (defect 5 of the
CUDA review): float64, Fortran-ordered and strided native arrays are read as the values
they hold, on every backend; kernels that update in place refuse a layout they would have
to copy (the update would be lost)."""

from __future__ import annotations

import numpy as np
import pytest

from m2m_gpu import InvalidInputError
from m2m_gpu import reference as ref
from m2m_gpu.backends.abi import PARAM_WIDTH, Key
from m2m_gpu.backends.base import HebbianPlan, HebbianRates


def odd_layouts(a: np.ndarray):
    """The same values as float64 Fortran order, and as a strided view."""
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    wide[:, ::2] = a
    return [np.asfortranarray(a.astype(np.float64)), wide[:, ::2]]


def test_knn_splat_energy_and_scan_read_any_layout(backend, rng):
    be = backend
    X = rng.standard_normal((211, 13)).astype(np.float32)
    Q = rng.standard_normal((5, 13)).astype(np.float32)
    P = np.zeros((211, PARAM_WIDTH), np.float32)
    P[:, 0], P[:, 1] = rng.uniform(0.5, 2, 211), rng.uniform(0.5, 2, 211)
    D0, I0 = ref.knn(Q, X, 7)
    E0 = ref.energy(Q, X, P[:, 0], P[:, 1])
    ranges = np.array([[0, 100], [100, 211]])
    probes = np.array([[0, 1]] * 5)
    for q, x in zip(odd_layouts(Q), odd_layouts(X), strict=True):
        qn, xn = be.from_host(q), be.from_host(x)
        D, I = (np.asarray(be.to_host(a)) for a in be.knn(qn, xn, 7, "l2"))
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)
        pn = be.from_host(P.astype(np.float64), like=xn)
        keys, ids, d2 = (np.asarray(be.to_host(a)) for a in
                         be.splat_topk(qn, xn, pn, 7, Key.DISTANCE))
        np.testing.assert_array_equal(ids, I0)
        E = np.asarray(be.to_host(be.energy(qn, xn, pn)))
        np.testing.assert_allclose(E, E0, rtol=1e-4, atol=1e-4)
        _, pos, _ = be.scan_cells(qn, xn, ranges, probes, 7, Key.L2)
        np.testing.assert_array_equal(pos, I0)


def test_in_place_kernels_refuse_a_layout_they_would_copy(backend):
    be = backend
    wrong = be.from_host(np.zeros((4, PARAM_WIDTH), np.float64))
    if not hasattr(wrong, "flags"):  # a VkArray stores float32 whatever it was given
        pytest.skip(f"{be.name} stores every float array as float32: nothing to refuse")
    mu = be.from_host(np.zeros((4, 3), np.float32))
    with pytest.raises(InvalidInputError, match="in place"):
        be.decay(wrong, 1.0, 0.1)
    with pytest.raises(InvalidInputError, match="in place"):
        be.hebbian(mu, wrong, np.zeros((1, 3), np.float32), HebbianPlan.build([0], [1], [1]),
                   HebbianRates())
