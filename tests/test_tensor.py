"""One tensor API: DeviceArray on every backend, conversions, DLPack, counted copies."""

from __future__ import annotations

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu import DeviceArray


def test_device_array_round_trip(backend, rng):
    host = rng.standard_normal((37, 5)).astype(np.float32)
    t = m2m_gpu.tensor(host, backend=backend.name)
    assert isinstance(t, DeviceArray)
    assert t.shape == (37, 5) and t.dtype == np.float32 and t.backend == backend.name
    np.testing.assert_array_equal(t.numpy(), host)
    np.testing.assert_array_equal(np.asarray(t), host)
    back = t.to("cpu")
    assert back.backend == "cpu"
    np.testing.assert_array_equal(back.numpy(), host)
    again = back.to(backend.name)
    assert again.backend == backend.name
    np.testing.assert_array_equal(again.numpy(), host)


def test_copies_are_counted(backend, rng):
    host = rng.standard_normal((100, 8)).astype(np.float32)
    backend.transfers.reset()
    t = m2m_gpu.tensor(host, backend=backend.name)
    t.numpy()
    stats = backend.transfers.snapshot()
    if backend.name == "cpu":  # host memory is the device: nothing moves
        assert stats == {"h2d_bytes": 0, "d2h_bytes": 0, "h2d_copies": 0, "d2h_copies": 0}
    else:
        assert stats["h2d_bytes"] == host.nbytes and stats["d2h_bytes"] == host.nbytes


def test_knn_on_device_arrays_returns_device_arrays(backend, rng):
    X = rng.standard_normal((50, 6)).astype(np.float32)
    Q = rng.standard_normal((4, 6)).astype(np.float32)
    D, I = m2m_gpu.knn(m2m_gpu.tensor(Q, backend.name), m2m_gpu.tensor(X, backend.name), 3,
                       backend=backend.name)
    assert isinstance(D, DeviceArray) and D.backend == backend.name
    assert backend.is_native(D.data) and backend.is_native(I.data)
    Dn, In = m2m_gpu.knn(Q, X, 3, backend="cpu")
    np.testing.assert_allclose(D.numpy(), Dn, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(I.numpy(), In)


def test_dlpack_out_of_cpu_arrays(rng):
    host = rng.standard_normal((4, 3)).astype(np.float32)
    t = m2m_gpu.tensor(host, backend="cpu")
    np.testing.assert_array_equal(np.from_dlpack(t), host)


def test_vulkan_arrays_have_no_dlpack_and_say_so():
    from m2m_gpu.backends import probe

    if not probe("vulkan").available:
        pytest.skip("vulkan not available")
    t = m2m_gpu.tensor(np.ones((2, 2), np.float32), backend="vulkan")
    with pytest.raises(BufferError, match="no DLPack"):
        t.__dlpack__()


def test_torch_in_torch_out(backend, rng):
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(rng.standard_normal((30, 4)).astype(np.float32))
    Q = torch.from_numpy(rng.standard_normal((3, 4)).astype(np.float64))
    D, I = m2m_gpu.knn(Q, X, 2, backend=backend.name)
    assert isinstance(D, torch.Tensor) and isinstance(I, torch.Tensor)
    assert D.dtype == torch.float32 and I.dtype == torch.int64
    Dn, In = m2m_gpu.knn(Q.numpy(), X.numpy(), 2, backend="cpu")
    np.testing.assert_array_equal(I.numpy(), In)


def test_torch_cuda_and_cupy_share_memory_without_copies():
    """torch CUDA <-> CuPy through DLPack: results on the device, no bytes moved."""
    from m2m_gpu.backends import probe

    if not probe("cuda").available:
        pytest.skip("cuda not available")
    torch = pytest.importorskip("torch")
    import cupy

    be = m2m_gpu.get_backend("cuda")
    X = torch.randn(500, 16, device="cuda")
    Q = torch.randn(7, 16, device="cuda")
    be.transfers.reset()
    D, I = m2m_gpu.knn(Q, X, 5, backend="cuda")
    assert D.is_cuda and I.is_cuda
    assert be.transfers.snapshot()["h2d_bytes"] == 0
    assert be.transfers.snapshot()["d2h_bytes"] == 0
    Dc, Ic = m2m_gpu.knn(cupy.from_dlpack(Q), cupy.from_dlpack(X), 5, backend="cuda")
    assert isinstance(Dc, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(Ic), I.cpu().numpy())


def test_torch_bfloat16_is_widened(backend, rng):
    """bfloat16 tensors (common for model embeddings) are accepted and widened to float32;
    NumPy has no bfloat16, so t.numpy() alone would fail."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(rng.standard_normal((40, 6)).astype(np.float32)).to(torch.bfloat16)
    D, I = m2m_gpu.knn(x[:4], x, 3, backend=backend.name)
    want = m2m_gpu.knn(x[:4].float().numpy(), x.float().numpy(), 3, backend="cpu")[1]
    assert isinstance(I, torch.Tensor) and D.dtype == torch.float32
    np.testing.assert_array_equal(I.numpy(), want)
