"""The machine's own limits, measured in the same run as the kernels they put in context.

* host memory bandwidth: ``np.copyto`` of a buffer much larger than the caches (at least
  ``MIN_BYTES``, whatever the preset), counted as bytes read + bytes written (the STREAM
  "copy" convention);
* device memory bandwidth, host <-> device bandwidth and the peak arithmetic rate: through
  the operations the backend offers (``Backend.limit_ops``: cuda's page-locked copies,
  device copy and cuBLAS; vulkan's Kompute uploads; numpy's BLAS on cpu). What a backend
  cannot measure is reported as ``None`` with its reason.
* the peak is the best rate of square float32 products grown from the preset's size until
  one takes ``PEAK_SECONDS`` (or ``PEAK_MAX`` is reached): small products never reach the
  peak, and a peak measured too low made kernels look faster than the machine.
"""

from __future__ import annotations

import numpy as np

from .timing import measure

MIN_BYTES = 64 << 20  # bandwidth buffers: larger than any last-level cache here
PEAK_SECONDS = 0.05  # the peak search stops at a product that takes this long
PEAK_MAX = 16384  # ... or at this size


def host(nbytes: int, repeat: int) -> dict:
    nbytes = max(int(nbytes), MIN_BYTES)
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = measure(lambda: np.copyto(dst, src), repeat=repeat)
    return {"bandwidth_gb_s": 2 * nbytes / t["median_s"] / 1e9, "bytes": nbytes,
            "what": "np.copyto, bytes read + written", "timing": t}


def peak(be, make, start: int, repeat: int, what: str) -> dict:
    """Best GFLOP/s over products of growing size (see the module docstring)."""
    size, best, sizes = max(256, int(start)), None, []
    while True:
        fn = make(size)
        t = measure(fn, be.synchronize, repeat=repeat)
        rate = 2 * size**3 / t["median_s"] / 1e9
        sizes.append({"size": size, "gflop_s": rate})
        if best is None or rate > best["gflop_s"]:
            best = {"gflop_s": rate, "size": size, "timing": t}
        if t["median_s"] >= PEAK_SECONDS or size * 2 > PEAK_MAX:
            break
        size *= 2
    return {**best, "what": what, "sizes": sizes}


def device(be, nbytes: int, gemm_size: int, repeat: int) -> dict:
    """Limits of backend ``be`` (see the module docstring); ``None`` where not measurable,
    with the reason."""
    nbytes = max(int(nbytes), MIN_BYTES)
    out: dict = {"backend": be.name, "device": be.info.device, "bytes": nbytes}
    ops = be.limit_ops(nbytes)
    why = ops.get("why_not", {})
    for name, key, factor in (("h2d", "h2d_gb_s", 1), ("d2h", "d2h_gb_s", 1),
                              ("device_copy", "device_bandwidth_gb_s", 2)):
        if name in ops:
            fn, what = ops[name]
            t = measure(fn, be.synchronize, repeat=repeat)
            out[key] = factor * nbytes / t["median_s"] / 1e9
            out[f"{name}_what"] = what
        else:
            out[key] = None
            out[f"{name}_why"] = why.get(name, "not offered by the backend")
    out["transfer_what"] = out.get("h2d_what", why.get("h2d", ""))
    if "gemm" in ops:
        make, what = ops["gemm"]
        out["gemm"] = peak(be, make, gemm_size, repeat, what)
        out["peak_gflop_s"], out["peak_what"] = out["gemm"]["gflop_s"], what
    else:
        out["gemm"], out["peak_gflop_s"] = None, None
        out["peak_what"] = "not measured: " + why.get("gemm", "no BLAS")
    return out


def limit_for(backend: str, infos: dict, lim: dict) -> dict:
    """The bandwidth (GB/s) and peak (GFLOP/s) a result on ``backend`` is measured against,
    and where they come from: host limits for code running on the CPU (the cpu backend,
    host baselines, a Vulkan driver on the CPU), else the backend's own measurement, with
    what it could not measure taken from another backend on a GPU of the same machine."""
    host = {"bandwidth_gb_s": lim["host"]["bandwidth_gb_s"],
            "peak_gflop_s": lim.get("cpu", {}).get("peak_gflop_s")}
    kind = infos.get(backend, {}).get("device_type", "cpu" if backend == "host" else "")
    if kind in ("cpu", "software"):
        why = "host" if kind == "cpu" else f"host ({backend} runs on the CPU)"
        return {**host, "source": why}
    dev = lim.get(backend, {})
    out = {"bandwidth_gb_s": dev.get("device_bandwidth_gb_s"),
           "peak_gflop_s": dev.get("peak_gflop_s"), "source": backend}
    for other, ol in lim.items():
        if other == backend or infos.get(other, {}).get("device_type") != "gpu":
            continue
        for key in ("bandwidth_gb_s", "peak_gflop_s"):
            theirs = ol.get("device_bandwidth_gb_s" if key == "bandwidth_gb_s" else key)
            if out[key] is None and theirs is not None:
                out[key] = theirs
                out["source"] = f"{backend}, with {other}'s measurement of the same GPU"
    return out
