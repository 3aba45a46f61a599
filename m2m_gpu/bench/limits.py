"""The machine's own limits, measured in the same run as the kernels they put in context.

* host memory bandwidth: ``np.copyto`` of a buffer much larger than the caches, counted as
  bytes read + bytes written (the STREAM "copy" convention);
* device memory bandwidth (cuda): a device-to-device copy, counted the same way;
* host <-> device bandwidth: cuda from and to page-locked host memory; vulkan through
  Kompute's staging (``from_host`` / ``to_host``); on cpu there is no transfer;
* peak arithmetic rate: a large float32 matrix product through the backend's own library
  (NumPy's BLAS on cpu, cuBLAS through CuPy on cuda). Kompute reaches no vendor BLAS, so on
  vulkan the peak is not measured and vulkan results are given against bandwidth only.
"""

from __future__ import annotations

import numpy as np

from .timing import measure


def host(nbytes: int, repeat: int) -> dict:
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = measure(lambda: np.copyto(dst, src), repeat=repeat)
    return {"bandwidth_gb_s": 2 * nbytes / t["median_s"] / 1e9, "bytes": nbytes,
            "what": "np.copyto, bytes read + written", "timing": t}


def _gemm(be, size: int, repeat: int) -> dict | None:
    if be.name == "cpu":
        a = np.ones((size, size), np.float32)
        fn, sync, lib = (lambda: a @ a), (lambda: None), "numpy matmul (BLAS)"
    elif be.name == "cuda":
        import cupy as cp

        a = cp.ones((size, size), cp.float32)
        fn, sync, lib = (lambda: a @ a), be.synchronize, "cupy matmul (cuBLAS)"
    else:
        return None
    t = measure(fn, sync, repeat=repeat)
    return {"gflop_s": 2 * size**3 / t["median_s"] / 1e9, "size": size, "what": lib,
            "timing": t}


def device(be, nbytes: int, gemm_size: int, repeat: int) -> dict:
    """Limits of backend ``be`` (see the module docstring); ``None`` where not measurable,
    with the reason."""
    out: dict = {"backend": be.name, "device": be.info.device}
    host_buf = np.ones(nbytes // 4, dtype=np.float32)
    if be.name == "cuda":
        import cupy as cp
        import cupyx

        pinned = cupyx.empty_pinned(host_buf.shape, dtype=np.float32)
        pinned[:] = host_buf
        dev = cp.empty(host_buf.shape, dtype=cp.float32)
        dev2 = cp.empty_like(dev)
        h2d = measure(lambda: dev.set(pinned), be.synchronize, repeat=repeat)
        d2h = measure(lambda: dev.get(out=pinned), be.synchronize, repeat=repeat)
        dd = measure(lambda: cp.copyto(dev2, dev), be.synchronize, repeat=repeat)
        out["h2d_gb_s"] = nbytes / h2d["median_s"] / 1e9
        out["d2h_gb_s"] = nbytes / d2h["median_s"] / 1e9
        out["device_bandwidth_gb_s"] = 2 * nbytes / dd["median_s"] / 1e9
        out["transfer_what"] = "cupy set/get with page-locked host memory"
    elif be.name == "vulkan":
        native = be.from_host(host_buf)
        h2d = measure(lambda: be.from_host(host_buf), repeat=repeat)
        d2h = measure(lambda: be.to_host(native), repeat=repeat)
        out["h2d_gb_s"] = nbytes / h2d["median_s"] / 1e9
        out["d2h_gb_s"] = nbytes / d2h["median_s"] / 1e9
        out["device_bandwidth_gb_s"] = None
        out["transfer_what"] = "Kompute tensor upload / download (staging buffers)"
        out["device_bandwidth_why"] = "no device copy kernel is exposed through Kompute"
    else:
        out["h2d_gb_s"] = out["d2h_gb_s"] = None
        out["device_bandwidth_gb_s"] = None
        out["transfer_what"] = "none: the cpu backend computes in host memory"
    peak = _gemm(be, gemm_size, repeat)
    out["peak_gflop_s"] = None if peak is None else peak["gflop_s"]
    out["peak_what"] = "not measured: Kompute reaches no vendor BLAS" if peak is None \
        else peak["what"]
    out["gemm"] = peak
    return out
