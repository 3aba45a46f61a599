"""Backend.stream, the block upload the memory tiers use (on cuda: double-buffered copies on
a side stream through two fixed page-locked buffers). Same tests on every backend: the
results of kernels queued on each block, read back only after the whole stream; work
queued before the stream starts; a stream abandoned half-way."""

from __future__ import annotations

import numpy as np

from m2m_gpu import reference as ref


def _blocks(rng, sizes, d):
    return [rng.standard_normal((s, d)).astype(np.float32) for s in sizes]


def test_kernels_on_every_streamed_block_read_back_at_the_end(backend, rng):
    d, k = 16, 5
    host = _blocks(rng, [300, 300, 300, 300, 41], d)
    q = rng.standard_normal((7, d)).astype(np.float32)
    qn = backend.from_host(q)
    pending = [backend.knn(qn, blk, k, "l2")  # queued block by block, read at the end
               for blk in backend.stream([lambda h=h: h for h in host])]
    for (D, I), h in zip(pending, host, strict=True):
        Dr, Ir = ref.knn(q, h, k, "l2")
        np.testing.assert_array_equal(np.asarray(backend.to_host(I)), Ir)
        np.testing.assert_allclose(np.asarray(backend.to_host(D)), Dr, rtol=1e-4, atol=1e-4)


def test_work_queued_before_the_stream_is_not_overwritten(backend, rng):
    """A large search is queued (not synchronised) on resident rows, then a stream starts
    at once: its uploads must not land in memory that the search still uses."""
    d = 32
    resident = rng.standard_normal((20000, d)).astype(np.float32)
    q = rng.standard_normal((64, d)).astype(np.float32)
    qn = backend.from_host(q)
    D0, I0 = backend.knn(qn, backend.from_host(resident), 10, "l2")
    host = _blocks(rng, [5000, 5000, 123], d)
    streamed = [np.asarray(backend.to_host(b)).copy()
                for b in backend.stream([lambda h=h: h for h in host])]
    for got, want in zip(streamed, host, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(backend.to_host(I0)), ref.knn(q, resident, 10)[1])


def test_an_abandoned_stream_leaves_the_backend_usable(backend, rng):
    d = 8
    host = _blocks(rng, [400, 400, 400, 400], d)
    gen = backend.stream([lambda h=h: h for h in host])
    first = next(gen)
    np.testing.assert_array_equal(np.asarray(backend.to_host(first)), host[0])
    gen.close()  # stops with the second block's copy possibly in flight
    again = [np.asarray(backend.to_host(b)).copy()
             for b in backend.stream([lambda h=h: h for h in host[::-1]])]
    for got, want in zip(again, host[::-1], strict=True):
        np.testing.assert_array_equal(got, want)
    assert list(backend.stream([])) == []
