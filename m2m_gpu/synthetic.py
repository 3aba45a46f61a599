"""Seeded data from the counter-based Philox4x32-10 generator, the same on every backend.

Every value is a pure function of ``(seed, stream, row, column)``, so any slice of rows can
be generated on its own, in any order, on any backend, and gives the same data as the whole.

Layout (what every backend's kernel computes):

* key ``(seed mod 2^32, seed >> 32)``; counter ``(column >> 2, row mod 2^32, row >> 32,
  stream)``; element ``(row, column)`` uses word ``column mod 4`` of that block.
* uniform ``u = (2 * (w >> 9) + 1) * 2^-24``: exact in float32, strictly inside (0, 1).
* normal: Box-Muller on the word pairs (0, 1) and (2, 3):
  ``sqrt(-2 ln u0) * cos(2 pi u1)``, ``... * sin(2 pi u1)``, and the same for (u2, u3).
* cluster of a row: word 0 of counter ``(0xFFFFFFFF, row lo, row hi, stream)``, mapped to
  ``(w * clusters) >> 32``.

The raw words are bit-identical on every backend. Normals go through ``log``, ``cos`` and
``sin``, whose last bits differ between libraries (GLSL only bounds their error), so they
agree to the tolerance in ``tests/tolerances.py``, not bit for bit.

Streams: 0 database rows, 1 query rows, 2 cluster centres.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .errors import InvalidInputError
from .reference import philox4x32

STREAM_DATA, STREAM_QUERIES, STREAM_CENTERS = 0, 1, 2
ASSIGN_BLOCK = 0xFFFFFFFF
KINDS = ("gaussian", "clustered")


def key_of(seed: int) -> tuple[int, int]:
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise InvalidInputError(f"seed must be in [0, 2^64), got {seed}")
    return seed & 0xFFFFFFFF, seed >> 32


def counters(row0: int, rows: int, blocks: int, stream: int) -> np.ndarray:
    """uint32[rows * blocks, 4] counters of a slice, row-major (row, block)."""
    r = np.arange(row0, row0 + rows, dtype=np.uint64)
    b = np.arange(blocks, dtype=np.uint64)
    out = np.empty((rows, blocks, 4), dtype=np.uint32)
    out[..., 0] = b[None, :]
    out[..., 1] = (r & np.uint64(0xFFFFFFFF))[:, None]
    out[..., 2] = (r >> np.uint64(32))[:, None]
    out[..., 3] = stream
    return out.reshape(-1, 4)


def words(row0: int, rows: int, d: int, seed: int, stream: int) -> np.ndarray:
    """The raw Philox words of elements (row, column): uint32[rows, d] (host reference)."""
    blocks = -(-d // 4)
    w = philox4x32(counters(row0, rows, blocks, stream), key_of(seed))
    return w.reshape(rows, blocks * 4)[:, :d]


def uniforms(w: np.ndarray) -> np.ndarray:
    return ((w >> np.uint32(9)).astype(np.float64) * 2.0 + 1.0) * 2.0**-24


def normals_from_words(w4: np.ndarray) -> np.ndarray:
    """Box-Muller of uint32[..., 4] word blocks -> float64[..., 4]."""
    u = uniforms(w4)
    r01 = np.sqrt(-2.0 * np.log(u[..., 0]))
    r23 = np.sqrt(-2.0 * np.log(u[..., 2]))
    t1, t3 = 2.0 * np.pi * u[..., 1], 2.0 * np.pi * u[..., 3]
    return np.stack([r01 * np.cos(t1), r01 * np.sin(t1), r23 * np.cos(t3), r23 * np.sin(t3)],
                    axis=-1)


def normals(row0: int, rows: int, d: int, seed: int, stream: int) -> np.ndarray:
    """float64[rows, d] standard normals (host reference)."""
    blocks = -(-d // 4)
    w = philox4x32(counters(row0, rows, blocks, stream), key_of(seed)).reshape(rows, blocks, 4)
    return normals_from_words(w).reshape(rows, blocks * 4)[:, :d]


def assignments(row0: int, rows: int, seed: int, stream: int, clusters: int) -> np.ndarray:
    """int64[rows]: the mixture component of each row (host reference)."""
    c = counters(row0, rows, 1, stream)
    c[:, 0] = ASSIGN_BLOCK
    w = philox4x32(c, key_of(seed))[:, 0].astype(np.uint64)
    return ((w * np.uint64(clusters)) >> np.uint64(32)).astype(np.int64)


def reference(n: int, d: int, seed: int = 0, kind: str = "gaussian", *, clusters: int = 64,
              spread: float = 0.3, part: str = "data", start: int = 0) -> np.ndarray:
    """float64 data exactly as :func:`synthetic` defines it (the test reference)."""
    kind, stream, clusters = _check(n, d, kind, part, clusters, start)
    z = normals(start, n, d, seed, stream)
    if kind == "gaussian":
        return z
    centers = normals(0, clusters, d, seed, STREAM_CENTERS).astype(np.float32)
    return centers[assignments(start, n, seed, stream, clusters)] + np.float32(spread) * z


def _check(n, d, kind, part, clusters, start):
    if kind not in KINDS:
        raise InvalidInputError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if part not in ("data", "queries"):
        raise InvalidInputError(f"part must be 'data' or 'queries', got {part!r}")
    for name, v, low in (("n", n, 0), ("d", d, 1), ("start", start, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {v!r}")
    if kind == "clustered" and (not isinstance(clusters, (int, np.integer)) or clusters < 1):
        raise InvalidInputError(f"clusters must be an integer >= 1, got {clusters!r}")
    return kind, STREAM_DATA if part == "data" else STREAM_QUERIES, int(clusters)


def synthetic(n: int, d: int, seed: int = 0, kind: str = "gaussian", *, clusters: int = 64,
              spread: float = 0.3, part: str = "data", start: int = 0,
              backend: str | Backend | None = None, device: bool = False) -> Any:
    """``n`` rows of ``d`` float32 values, rows ``start .. start + n`` of the dataset.

    ``kind="gaussian"``: independent standard normals. ``kind="clustered"``: a mixture of
    ``clusters`` Gaussians whose centres are standard normal vectors (drawn from the same
    seed) and whose spread (standard deviation per coordinate) is ``spread``; that is the
    structure real embeddings have. ``part="queries"`` draws query rows from the same
    distribution (the same centres) with an independent stream. Generated on ``backend``;
    returns a NumPy array, or a :class:`m2m_gpu.DeviceArray` with ``device=True``.
    """
    from .tensor import DeviceArray

    kind, stream, clusters = _check(n, d, kind, part, clusters, start)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidInputError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    key_of(seed)  # the same error on every backend for a seed outside Philox's key range
    seed = int(seed)
    be = get_backend(backend)
    centers = None
    if kind == "clustered":
        centers = be.philox(0, clusters, d, seed, STREAM_CENTERS)
    out = be.philox(int(start), int(n), int(d), seed, stream, centers=centers,
                    spread=float(spread))
    return DeviceArray(be, out) if device else be.to_host(out)


def dataset(n: int, m: int, d: int, seed: int = 0, kind: str = "clustered", k: int = 10,
            metric: str = "l2", backend: str | Backend | None = None, **kw):
    """``(database, queries, (D, I))``: Philox data, matching queries and exact ground truth
    from :func:`m2m_gpu.knn` on the same backend."""
    from .knn import knn

    x = synthetic(n, d, seed, kind, backend=backend, **kw)
    q = synthetic(m, d, seed, kind, part="queries", backend=backend, **kw)
    return x, q, knn(q, x, k, metric=metric, backend=backend)
