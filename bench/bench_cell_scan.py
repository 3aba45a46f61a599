"""What bounds the cpu cell scan: its rate over float32 rows, float16 and SQ8 codes, on one
thread and on all, against this machine's streaming read bandwidth and its BLAS GEMM
rate, measured in the same run.

    python bench/bench_cell_scan.py                      # 1M x 64, HRM2's default shape
    python bench/bench_cell_scan.py --n 62699 --d 384 --cells 992 --p2 64

The layout is HRM2's: ``cells`` equal contiguous cells, each of 256 queries probing ``p2``
distinct random cells (the same probes for every variant). The scan is the cpu backend's
compiled kernel, called directly (``_jit_kernels.scan_cells``); each variant is first
checked against an exact NumPy scan of the decoded rows (same ids). Reported per variant:
row-query pairs per second, the bytes of rows read per second (each probed cell read once
per batch) and the ratios to the read bandwidth and to the GEMM rate. A scan whose bytes/s
is near the read bandwidth is bound by memory; one far below both it and the GEMM rate is
bound by its own loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _out import save  # noqa: E402
from bench_knn import git_revision, timeit  # noqa: E402

from m2m_gpu.backends import _jit, get_backend  # noqa: E402
from m2m_gpu.backends.cpu import CpuBackend  # noqa: E402
from m2m_gpu.codecs import Codec  # noqa: E402


def read_bandwidth(repeat: int) -> float:
    """Bytes/s of a NumPy sum over 512 MB (far larger than the caches), on one thread."""
    a = np.ones(128 << 20, np.float32)
    t = timeit(lambda: float(a.sum()), repeat)["median_s"]
    return a.nbytes / t


def gemm_rate(d: int, repeat: int) -> float:
    """Multiply-adds/s of one large float32 GEMM (BLAS on all its threads)."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((2048, d), dtype=np.float32)
    B = rng.standard_normal((8192, d), dtype=np.float32)
    t = timeit(lambda: A @ B.T, repeat)["median_s"]
    return 2048 * 8192 * d / t


def exact_ids(q, rows, ranges, probes, k):
    """Each query's k nearest rows among its probed cells, NumPy (ties: smaller row)."""
    out = np.empty((q.shape[0], k), np.int64)
    for i in range(q.shape[0]):
        pos = np.concatenate([np.arange(*ranges[c]) for c in probes[i]])
        d2 = ((rows[pos] - q[i]) ** 2).sum(1)
        out[i] = pos[np.lexsort((pos, d2))[:k]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--cells", type=int, default=3969)
    ap.add_argument("--p2", type=int, default=16)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not _jit.available():
        print("the compiled scan needs Numba (pip install 'm2m-gpu[jit]')")
        return 1
    from m2m_gpu.backends import _jit_kernels as jk

    n, d, C, m, k = args.n, args.d, args.cells, args.m, args.k
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((n, d), dtype=np.float32)
    edges = np.linspace(0, n, C + 1).astype(np.int64)
    ranges = np.stack([edges[:-1], edges[1:]], 1)
    q = rng.standard_normal((m, d), dtype=np.float32)
    probes = np.stack([rng.choice(C, args.p2, replace=False) for _ in range(m)])
    probed = np.unique(probes)
    pairs = float(sum((ranges[probes, 1] - ranges[probes, 0]).sum(1)))
    cell_rows = float((ranges[probed, 1] - ranges[probed, 0]).sum())  # read once a batch
    sq8 = Codec.train("sq8", rows[:50_000])
    fp16 = Codec.train("fp16", rows[:50_000])
    variants = {"float32": (rows, None, rows), "fp16": (fp16.encode(rows), None, None),
                "sq8": (sq8.encode(rows), sq8.dequant, None)}
    base = get_backend("cpu")
    pools = {1: CpuBackend(base.info, threads=1), base.threads: base}
    bw = read_bandwidth(args.repeat)
    gemm = gemm_rate(d, args.repeat)
    res = {"params": vars(args), "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "git": git_revision(),
           "read_bandwidth_GBps": bw / 1e9, "gemm_GMAddps": gemm / 1e9,
           "pairs_per_batch": pairs, "cell_rows_read_per_batch": cell_rows, "scan": []}
    check = slice(0, 16)
    for name, (data, dq, decoded) in variants.items():
        codec = {"fp16": fp16, "sq8": sq8}.get(name)
        flat = decoded if decoded is not None else codec.decode(data)
        sqn = np.einsum("ij,ij->i", flat, flat).astype(np.float32)
        width = data.dtype.itemsize * data.shape[1]  # bytes per stored row
        want = exact_ids(q[check], flat, ranges, probes[check], k)
        for threads, pool in pools.items():
            def run(pool=pool, data=data, dq=dq, sqn=sqn):
                return jk.scan_cells(q, data, sqn, ranges, probes, k, 0, None, pool=pool,
                                     dequant=dq)
            _, got = run()
            same = bool((got[check] == want).all())
            t = timeit(run, args.repeat)
            s = t["median_s"]
            res["scan"].append({
                "rows": name, "threads": threads, "ids_match_exact": same,
                "median_ms": s * 1e3, "qps": m / s, "Mpairs_per_s": pairs / s / 1e6,
                "GMAdd_per_s": pairs * d / s / 1e9,
                "GBps_rows_read": cell_rows * width / s / 1e9,
                "over_read_bandwidth": cell_rows * width / s / bw,
                "over_gemm": pairs * d / s / gemm, "samples_s": t.get("samples_s")})
            print(f"{name:8s} {threads} thr: {m / s:9.0f} q/s  {pairs / s / 1e6:7.1f} "
                  f"Mpairs/s  {cell_rows * width / s / 1e9:5.1f} GB/s "
                  f"({cell_rows * width / s / bw:.2f}x read bw)  ids ok: {same}")
    save(res, args.out, f"cell-scan-cpu{os.cpu_count()}-n{n}-d{d}")
    return 0 if all(r["ids_match_exact"] for r in res["scan"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
