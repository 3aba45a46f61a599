#!/usr/bin/env python3
"""Every kernel of one backend, once, small, checked against the NumPy reference: what
scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck), so that each
CUDA kernel (knn_distance, knn_distance_rows and their float16 forms, topk_select in one
and two passes, cells_distance, energy_accumulate, hebbian, decay, philox, kmeans_sums)
and the double-buffered stream are launched at least once, at awkward sizes.

    python scripts/kernel_smoke.py cuda      # exit 1 on any mismatch
"""

from __future__ import annotations

import sys

import numpy as np

import m2m_gpu
from m2m_gpu import reference as ref
from m2m_gpu.backends.abi import PARAM_WIDTH, Key
from m2m_gpu.backends.base import HebbianPlan, HebbianRates


def check(name: str, ok: bool, failures: list) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    if not ok:
        failures.append(name)


def main(backend: str) -> int:
    be = m2m_gpu.get_backend(backend)
    rng = np.random.default_rng(5)
    fails: list[str] = []
    n, d = 5003, 37
    X = rng.standard_normal((n, d)).astype(np.float32)
    for m in (1, 3, 70):  # rows kernel + split select; block kernel
        Q = rng.standard_normal((m, d)).astype(np.float32)
        for metric in ("l2", "ip"):
            D, I = m2m_gpu.knn(Q, X, 11, metric, backend=backend)
            check(f"knn m={m} {metric}", np.array_equal(I, ref.knn(Q, X, 11, metric)[1]), fails)
        half = m2m_gpu.IndexFlatL2(d, dtype="float16", backend=backend)
        half.add(X)
        rows = half.reconstruct_n(0, n)
        check(f"knn float16 m={m}",
              np.array_equal(half.search(Q, 7)[1], ref.knn(Q, rows, 7)[1]), fails)
        a, kap = rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
        L, Is, _ = m2m_gpu.splat_topk(Q, X, a, kap, 9, backend=backend)
        check(f"splat_topk m={m}", np.allclose(L, ref.splat_topk(Q, X, a, kap, 9)[0],
                                               rtol=1e-4, atol=1e-4), fails)
        E, G = m2m_gpu.energy(Q, X, a, kap, grad=True, backend=backend)
        Er, Gr = ref.energy(Q, X, a, kap, grad=True)
        check(f"energy+grad m={m}", np.allclose(E, Er, rtol=1e-4, atol=1e-3) and
              np.allclose(G, Gr, rtol=1e-3, atol=1e-3), fails)
        ranges = np.array([[0, 1000], [1000, 1001], [1001, 5003]])
        probes = np.tile([[2, -1, 0]], (m, 1))
        _, pos, _ = be.scan_cells(be.from_host(Q), be.from_host(X), ranges, probes, 6, Key.L2)
        rows_ = np.r_[0:1000, 1001:5003]
        want = rows_[ref.knn(Q, X[rows_], 6)[1]]
        check(f"scan_cells m={m}", np.array_equal(pos, want), fails)
    P = np.zeros((n, PARAM_WIDTH), np.float32)
    P[:, 0], P[:, 1] = 1.0, 2.0
    xn = be.from_host(X.copy())
    pn = be.from_host(P.copy(), like=xn)
    Qh = rng.standard_normal((4, d)).astype(np.float32)
    plan = HebbianPlan.build([0, 1, 2, 3], [5, 5, 9, 4000], [1, -1, 1, 1])
    be.hebbian(xn, pn, be.from_host(Qh), plan, HebbianRates())
    mu_r, a_r, k_r = ref.hebbian(X, P[:, 0], P[:, 1], Qh, [[5], [], [9], [4000]],
                                 [[], [5], [], []])
    check("hebbian", np.allclose(be.to_host(xn), mu_r, atol=1e-5) and
          np.allclose(be.to_host(pn)[:, 0], a_r, atol=1e-5), fails)
    be.decay(pn, 10.0, 0.01)
    check("decay", np.allclose(be.to_host(pn)[:, 2], 10.0), fails)
    got = m2m_gpu.synthetic(3000, 9, seed=4, kind="clustered", clusters=7, backend=backend)
    check("philox", np.allclose(got, m2m_gpu.synthetic(3000, 9, seed=4, kind="clustered",
                                                      clusters=7, backend="cpu"),
                                rtol=1e-5, atol=1e-5), fails)
    assign = rng.integers(0, 13, n)
    sums, counts = be.kmeans_sums(be.from_host(X), assign, 13)
    want = np.zeros((13, d))
    np.add.at(want, assign, X.astype(np.float64))
    check("kmeans_sums", np.allclose(sums, want, atol=1e-3), fails)
    blocks = [X[s : s + 700] for s in range(0, n, 700)]
    out = [np.asarray(be.to_host(b)).copy() for b in be.stream([lambda b=b: b for b in blocks])]
    check("stream", all(np.array_equal(a, b) for a, b in zip(out, blocks, strict=True)), fails)
    print(f"{backend}: {len(fails)} failed" + (f": {', '.join(fails)}" if fails else ""))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
