"""Backend registry: resolution order, errors that say why, auto's report, lazy imports."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import m2m_gpu
from m2m_gpu import BackendUnavailableError, UnknownBackendError, backends
from m2m_gpu.backends import BackendInfo


@pytest.fixture(autouse=True)
def fresh_registry():
    backends._reset_for_tests()
    yield
    backends._reset_for_tests()


def test_explicit_name_wins_over_environment(monkeypatch):
    monkeypatch.setenv("M2M_BACKEND", "no-such-backend")
    assert m2m_gpu.get_backend("cpu").name == "cpu"


def test_environment_variable_is_used(monkeypatch):
    monkeypatch.setenv("M2M_BACKEND", "cpu")
    assert m2m_gpu.get_backend().name == "cpu"
    monkeypatch.setenv("M2M_BACKEND", "no-such-backend")
    with pytest.raises(UnknownBackendError, match="no-such-backend"):
        m2m_gpu.get_backend()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownBackendError, match="cpu, cuda, vulkan"):
        m2m_gpu.get_backend("metal")


def _pretend(monkeypatch, **available):
    """Make the probes report what a given machine would (name -> BackendInfo)."""
    real = backends.probe

    def fake(name, *, refresh=False):
        return available[name] if name in available else real(name, refresh=refresh)

    monkeypatch.setattr(backends, "probe", fake)


def test_named_but_missing_backend_raises_with_reason(monkeypatch):
    _pretend(monkeypatch, cuda=BackendInfo("cuda", False, "CuPy is not installed"))
    with pytest.raises(BackendUnavailableError, match="'cuda' is not available: CuPy is not"):
        m2m_gpu.get_backend("cuda")


def test_named_backend_is_never_replaced(monkeypatch):
    _pretend(monkeypatch, vulkan=BackendInfo("vulkan", False, "no Vulkan loader"))
    with pytest.raises(BackendUnavailableError, match="no Vulkan loader"):
        m2m_gpu.knn([[1.0]], [[1.0]], 1, backend="vulkan")


def test_real_missing_backends_say_why():
    for info in backends.probe_all():
        assert info.available or info.reason, info
        if not info.available:
            with pytest.raises(BackendUnavailableError, match=info.name):
                m2m_gpu.get_backend(info.name)


def test_auto_order_and_report(monkeypatch, caplog):
    gpu = BackendInfo("vulkan", True, device="Some GPU", device_type="gpu")
    soft = BackendInfo("vulkan", True, device="llvmpipe (LLVM 15)", device_type="software")
    no_cuda = BackendInfo("cuda", False, "no CUDA device")
    cuda = BackendInfo("cuda", True, device="H100", device_type="gpu")

    cases = [
        (dict(cuda=cuda, vulkan=gpu), "cuda"),
        (dict(cuda=no_cuda, vulkan=gpu), "vulkan"),
        (dict(cuda=no_cuda, vulkan=soft), "cpu"),  # lavapipe only when asked for by name
    ]
    for probes, expected in cases:
        backends._reset_for_tests()
        monkeypatch.undo()
        _pretend(monkeypatch, **probes)
        with caplog.at_level(logging.INFO, logger="m2m_gpu"):
            name, why = backends.auto_choice()
        assert name == expected
        assert f"auto chose {expected!r}" in why
        assert why in caplog.text
    assert "software driver" in why and "no CUDA device" in why


def test_info_lists_every_backend():
    report = m2m_gpu.info()
    assert [b["name"] for b in report["backends"]] == ["cpu", "cuda", "vulkan"]
    cpu = report["backends"][0]
    assert cpu["available"] and cpu["versions"]["numpy"]
    assert report["auto"]["backend"] in ("cpu", "cuda", "vulkan")
    for b in report["backends"]:
        assert b["available"] or b["reason"]


def test_cli_info_json():
    res = subprocess.run([sys.executable, "-m", "m2m_gpu.cli", "info", "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(res.stdout)
    assert {b["name"] for b in report["backends"]} == {"cpu", "cuda", "vulkan"}


def test_import_is_light():
    """`import m2m_gpu` imports neither CuPy, Kompute, Numba (nor LLVM) nor torch, and the
    cpu backend's first use does not load Numba either: it comes with the first compiled
    HRM2 loop (checked in fresh processes)."""
    heavy = "('cupy', 'kp', 'numba', 'llvmlite', 'torch')"
    code = (f"import sys, m2m_gpu; print(sorted(m for m in {heavy} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == "[]"
    code = ("import sys, numpy as np, m2m_gpu; "
            "m2m_gpu.knn(np.ones((2, 3), 'f4'), np.ones((5, 3), 'f4'), 2, backend='cpu'); "
            "m2m_gpu.IndexFlatL2(3).add(np.ones((4, 3), 'f4')); "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == "[]"


def test_vulkan_probe_survives_a_missing_driver(monkeypatch):
    """kp.Manager() aborts the process without a driver; the probe runs it in a child."""
    from m2m_gpu.backends import vulkan

    monkeypatch.setenv("VK_ICD_FILENAMES", "/nonexistent/icd.json")
    monkeypatch.setenv("VK_DRIVER_FILES", "/nonexistent/icd.json")
    vulkan._list_devices.cache_clear()
    try:
        info = vulkan.probe()
    finally:
        vulkan._list_devices.cache_clear()
    assert not info.available
    assert info.reason  # e.g. "kp.Manager() failed (signal 6)" or "no Vulkan loader"


def test_cuda_probe_failures_name_their_cause():
    """The cuda probe compiles and launches a test kernel; what CuPy raises when it cannot
    is turned into a reason a user can act on (no cupy is needed to check the wording)."""
    from m2m_gpu.backends.cuda import _explain

    cases = {
        RuntimeError("Failed to find CUDA headers (cuda_runtime.h)"): "[ctk]",
        OSError("libnvrtc.so.12: cannot open shared object file"): "NVRTC",
        RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient"):
            "driver is too old",
        ValueError("something else"): "see the error",
    }
    for exc, words in cases.items():
        why = _explain(exc)
        assert words in why and type(exc).__name__ in why, why


def test_arrays_on_another_gpu_are_refused():
    """A CuPy array on cuda:1 handed to the cuda backend on cuda:0 is refused, not read
    through the wrong device's pointers. Needs two CUDA devices."""
    info = backends.probe("cuda")
    if not info.available:
        pytest.skip(f"cuda: {info.reason}")
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    be = backends.get_backend("cuda")
    with cupy.cuda.Device(1):
        other = cupy.ones((4, 3), dtype=cupy.float32)
    with pytest.raises(m2m_gpu.InvalidInputError, match="cuda:1"):
        m2m_gpu.knn(other, other, 2, backend=be)
