"""Tie-tolerant comparison of k-NN results with the NumPy reference (after FAISS's
contrib/evaluation: any order among equal distances is accepted)."""

from __future__ import annotations

import numpy as np

from m2m_gpu import reference


def assert_knn_matches(D, I, queries, database, k, metric, rtol, atol):
    """D and I must be what the reference gives, up to the order of tied distances.

    * distances, row by row, equal the reference's within (rtol, atol) of the scale;
    * every returned id is a real row (or -1 exactly where the reference pads), distinct
      within its row, and its true distance equals the distance reported for it;
    so the returned set can differ from the reference's only among equal distances.
    """
    D = np.asarray(D)
    I = np.asarray(I)
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(database, dtype=np.float64)
    Dr, Ir = reference.knn(q, x, k, metric)
    assert D.shape == Dr.shape == I.shape, (D.shape, Dr.shape, I.shape)
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert np.array_equal(I == -1, Ir == -1), "padding differs from the reference"
    assert np.array_equal(np.isinf(D), np.isinf(Dr)), "infinite entries differ"
    finite = np.isfinite(Dr)
    scale = max(1.0, float(np.abs(Dr[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(D[finite], Dr[finite], rtol=rtol, atol=atol * scale)
    if q.shape[0] == 0 or x.shape[0] == 0:
        return
    full = reference.pairwise(q, x, metric)
    for row in range(I.shape[0]):
        real = I[row][I[row] >= 0]
        assert len(set(real.tolist())) == real.size, f"row {row}: duplicate ids"
        assert ((real >= 0) & (real < x.shape[0])).all()
        np.testing.assert_allclose(
            D[row][: real.size], full[row, real], rtol=rtol, atol=atol * scale,
            err_msg=f"row {row}: reported distances do not belong to the returned ids",
        )
