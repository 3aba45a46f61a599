"""The benchmark cases: one function per kernel, each checking its result against the
reference before timing it, on one backend, plus the baselines that are installed.

Every case returns result rows (dicts, see ``schema.json``): ``kernel``, ``backend``,
``impl`` (``"m2m"`` or the baseline's name), ``params``, ``check`` (what was compared with
what, the value, the threshold and whether it passed), ``timing`` (see
:func:`m2m_gpu.bench.timing.measure`), ``throughput`` and the cost ``model`` (bytes a call
must read or write at least, and floating-point operations), from which the runner derives
the achieved rates and the fractions of the machine's limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import reference as ref
from ..backends.base import (
    MODE_SPLAT,
    PARAM_ALPHA,
    PARAM_KAPPA,
    PARAM_WIDTH,
    HebbianPlan,
    HebbianRates,
)
from ..synthetic import synthetic
from .timing import measure


@dataclass
class Context:
    """What the cases share in one run: timing settings, data and exact answers (cached
    per shape), and which baselines are installed."""

    repeat: int = 5
    min_time: float = 0.2
    baselines: tuple[str, ...] = ()
    _data: dict = field(default_factory=dict)

    def data(self, n: int, d: int, m: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
        key = ("data", n, d, m, seed)
        if key not in self._data:
            kw = dict(kind="clustered", clusters=max(8, int(math.sqrt(n) / 4)), spread=0.3)
            self._data[key] = (synthetic(n, d, seed=seed, **kw),
                               synthetic(m, d, seed=seed, part="queries", **kw))
        return self._data[key]

    def cached(self, key, make):
        if key not in self._data:
            self._data[key] = make()
        return self._data[key]

    def time(self, fn, sync=lambda: None) -> dict:
        return measure(fn, sync, repeat=self.repeat, min_time=self.min_time)


def row(kernel, backend, impl, params, check, timing, items, unit, model, **extra) -> dict:
    out = {"kernel": kernel, "backend": backend, "impl": impl, "params": dict(params),
           "check": check, "timing": timing,
           "throughput": {"value": items / timing["median_s"], "unit": unit},
           "model": model}
    out.update(extra)
    return out


def check(kind: str, value: float, threshold: float, higher_is_better: bool = True) -> dict:
    ok = value >= threshold if higher_is_better else value <= threshold
    return {"kind": kind, "value": float(value), "threshold": float(threshold),
            "passed": bool(ok)}


def recall(I: np.ndarray, I0: np.ndarray) -> float:
    k = I0.shape[1]
    return float(np.mean([np.intersect1d(a[a >= 0], b).size / k for a, b in zip(I, I0,
                                                                                 strict=True)]))


def exact_l2(ctx: Context, X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    """Exact neighbours (float64, the reference's pairwise form) of Q in X: ids (m, k)."""
    def make():
        out = np.empty((Q.shape[0], k), np.int64)
        x64 = X.astype(np.float64)
        xsq = (x64 * x64).sum(1)
        for s in range(0, Q.shape[0], 64):
            q = Q[s : s + 64].astype(np.float64)
            d2 = xsq[None] - 2 * q @ x64.T
            idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
            order = np.argsort(np.take_along_axis(d2, idx, 1), axis=1, kind="stable")
            out[s : s + 64] = np.take_along_axis(idx, order, 1)
        return out
    return ctx.cached(("exact", id(X), id(Q), k), make)


def _params(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    P = np.zeros((n, PARAM_WIDTH), np.float32)
    P[:, PARAM_ALPHA] = rng.uniform(0.5, 2.0, n)
    P[:, PARAM_KAPPA] = rng.uniform(0.5, 4.0, n)
    return P


def resident(be, X, P):
    """X, P and ||X||^2 (cpu) resident on the device, params chunked like X (vulkan)."""
    xn = be.from_host(X)
    pn = be.from_host(P, like=xn)
    sq = be.from_host(np.einsum("ij,ij->i", X, X).astype(np.float32)) if be.uses_sqnorms \
        else None
    return xn, pn, sq


def host(be, out):
    """Results on the host: what a caller waits for."""
    return tuple(np.asarray(be.to_host(a)) for a in out) if isinstance(out, tuple) \
        else np.asarray(be.to_host(out))


# ---- knn ----------------------------------------------------------------------------------
def knn(ctx: Context, be, p: dict, baselines: bool) -> list[dict]:
    """Exact k-NN through the flat index. ``dtype`` is the storage dtype of the rows
    (float32 or float16, arithmetic float32); the reference searches the stored values."""
    from ..index import IndexFlatCosine, IndexFlatIP, IndexFlatL2

    n, d, m, k, metric = p["n"], p["d"], p["m"], p["k"], p["metric"]
    dtype = np.dtype(p.get("dtype", "float32"))
    X, Q = ctx.data(n, d, m)
    cls = {"l2": IndexFlatL2, "ip": IndexFlatIP, "cosine": IndexFlatCosine}[metric]
    model = {"bytes": dtype.itemsize * n * d + 4 * m * d + 12 * m * k,
             "flops": 2 * m * n * d}
    c = slice(0, min(m, 16))
    # what the index stores: (normalised under cosine, then) rounded to the storage dtype
    Xs = (_unit(X) if metric == "cosine" else X).astype(dtype).astype(np.float32)
    _, I0 = ref.knn(_unit(Q[c]) if metric == "cosine" else Q[c], Xs,
                    k, "ip" if metric == "cosine" else metric)
    out = []
    if be is not None:
        index = cls(d, backend=be.name, dtype=dtype)
        index.add(X)
        _, I = index.search(Q, k)
        chk = check("recall_vs_reference", recall(I[c], I0), 0.99)
        t = ctx.time(lambda: index.search(Q, k), be.synchronize)
        out.append(row("knn", be.name, "m2m", p, chk, t, m, "queries/s", model))
    if baselines:
        out += _knn_baselines(ctx, p, X, Q, I0, c, model, dtype)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _knn_baselines(ctx, p, X, Q, I0, c, model, dtype) -> list[dict]:
    """On the host: NumPy, FAISS IndexFlat and PyTorch mm + topk for float32 storage, and
    FAISS's IndexScalarQuantizer(QT_fp16) for float16 (the one CPU library that stores
    half-precision rows; NumPy and PyTorch have no float16 matrix product there). On a
    CUDA device, when there is one: PyTorch on it, and faiss-gpu's GpuIndexFlat when it is
    installed (rows ``backend="cuda"``, measured against the GPU's limits). Every baseline
    takes host queries and returns host ids, as the m2m calls do."""
    k, metric = p["k"], p["metric"]
    m = Q.shape[0]
    Xb, Qb = (_unit(X), _unit(Q)) if metric == "cosine" else (X, Q)
    xsq = np.einsum("ij,ij->i", Xb, Xb)
    impls = []  # (backend, impl, fn)
    if dtype == np.float32:
        impls.append(("host", "numpy", numpy_knn(Xb, Qb, xsq, k, metric)))
    if "faiss" in ctx.baselines:
        impls += faiss_knn(Xb, Qb, k, metric, dtype)
    if "torch" in ctx.baselines and dtype == np.float32:
        import torch

        impls.append(("host", "torch", torch_knn(Xb, Qb, xsq, k, metric, "cpu")))
        if torch.cuda.is_available():
            impls.append(("cuda", "torch", torch_knn(Xb, Qb, xsq, k, metric, "cuda")))
    out = []
    for backend, name, fn in impls:
        chk = check("recall_vs_reference", recall(fn()[c], I0), 0.99)
        t = ctx.time(fn)
        out.append(row("knn", backend, name, p, chk, t, m, "queries/s", model))
    return out


def numpy_knn(X, Q, xsq, k, metric):
    """NumPy matrix product + ``argpartition``: the textbook baseline (ids, best first)."""
    def fn():
        s = Q @ X.T
        key = xsq[None] - 2 * s if metric == "l2" else -s
        idx = np.argpartition(key, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(key, idx, 1), axis=1)
        return np.take_along_axis(idx, order, 1)

    return fn


def torch_knn(X, Q, xsq, k, metric, device):
    """PyTorch ``mm`` + ``topk`` with the rows resident on ``device``; the queries go up and
    the ids come back on every call (``.cpu()`` waits for the device)."""
    import torch

    tx = torch.from_numpy(X).to(device)
    tsq = torch.from_numpy(xsq).to(device)

    def fn():
        tq = torch.from_numpy(Q).to(device)
        s = tq @ tx.T
        key = tsq[None] - 2 * s if metric == "l2" else -s
        return torch.topk(key, k, dim=1, largest=False).indices.cpu().numpy()

    return fn


def faiss_knn(X, Q, k, metric, dtype, gpu: bool = True) -> list:
    """``[(backend, impl, fn)]``: FAISS's flat index for float32 rows, its
    ``IndexScalarQuantizer(QT_fp16)`` for float16 rows, and with ``gpu`` also faiss-gpu's
    ``GpuIndexFlat`` when faiss-gpu and a GPU are there."""
    import faiss

    d = X.shape[1]
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if dtype == np.float32:
        host = faiss.IndexFlat(d, fmetric)
        name = "faiss"
    else:
        host = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, fmetric)
        name = "faiss-sq-fp16"
    host.add(X)
    out = [("host", name, lambda: host.search(Q, k)[1])]
    if gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = dtype == np.float16
        gpu = faiss.GpuIndexFlat(res, d, fmetric, cfg)
        gpu.add(X)
        out.append(("cuda", "faiss" if dtype == np.float32 else "faiss-fp16",
                    lambda: gpu.search(Q, k)[1]))
    return out


# ---- splat kernels ---------------------------------------------------------------------------
def splat_topk(ctx: Context, be, p: dict, baselines: bool) -> list[dict]:
    n, d, m, k = p["n"], p["d"], p["m"], p["k"]
    X, Q = ctx.data(n, d, m)
    P = _params(n)
    c = slice(0, min(m, 8))
    _, I0, _ = ref.splat_topk(Q[c], X, P[:, PARAM_ALPHA], P[:, PARAM_KAPPA], k)
    model = {"bytes": 4 * (n * d + n * PARAM_WIDTH + m * d) + 12 * m * k,
             "flops": 2 * m * n * d + 3 * m * n}
    out = []
    if be is not None:
        xn, pn, sq = resident(be, X, P)
        qn = be.from_host(Q)
        fn = lambda: host(be, be.splat_topk(qn, xn, pn, k, MODE_SPLAT, sqnorms=sq))  # noqa: E731
        _, I, _ = fn()
        chk = check("overlap_with_reference", recall(I[c], I0), 0.99)
        t = ctx.time(fn, be.synchronize)
        out.append(row("splat_topk", be.name, "m2m", p, chk, t, m, "queries/s", model))
    if baselines:
        alpha, kappa = P[:, PARAM_ALPHA], P[:, PARAM_KAPPA]
        xsq = np.einsum("ij,ij->i", X, X)
        la = np.log(alpha)

        def numpy_splat():
            d2 = np.maximum(xsq[None] - 2 * (Q @ X.T) + np.einsum("ij,ij->i", Q, Q)[:, None],
                            0)
            key = kappa[None] * d2 - la[None]
            idx = np.argpartition(key, k - 1, axis=1)[:, :k]
            return np.take_along_axis(idx, np.argsort(np.take_along_axis(key, idx, 1), 1), 1)

        chk = check("overlap_with_reference", recall(numpy_splat()[c], I0), 0.99)
        t = ctx.time(numpy_splat)
        out.append(row("splat_topk", "host", "numpy", p, chk, t, m, "queries/s", model))
    return out


def energy(ctx: Context, be, p: dict, baselines: bool) -> list[dict]:
    n, d, m = p["n"], p["d"], p["m"]
    X, Q = ctx.data(n, d, m)
    P = _params(n)
    alpha, kappa = P[:, PARAM_ALPHA], P[:, PARAM_KAPPA]
    c = slice(0, min(m, 8))
    E0 = ref.energy(Q[c], X, alpha, kappa)
    model = {"bytes": 4 * (n * d + n * PARAM_WIDTH + 2 * m * d),
             "flops": 2 * m * n * d + 4 * m * n}

    def err(E):
        return float(np.max(np.abs(E[c] - E0) / np.maximum(1.0, np.abs(E0))))

    out = []
    if be is not None:
        xn, pn, sq = resident(be, X, P)
        qn = be.from_host(Q)
        fn = lambda: host(be, be.energy(qn, xn, pn, sqnorms=sq))  # noqa: E731
        chk = check("max_rel_err_vs_reference", err(fn()), 1e-3, higher_is_better=False)
        t = ctx.time(fn, be.synchronize)
        out.append(row("energy", be.name, "m2m", p, chk, t, m, "queries/s", model))
    if baselines:
        xsq = np.einsum("ij,ij->i", X, X)
        la = np.log(alpha)
        step = max(1, (64 << 20) // (4 * n))

        def numpy_energy():
            E = np.empty(m, np.float32)
            for s in range(0, m, step):
                q = Q[s : s + step]
                d2 = np.maximum(xsq[None] - 2 * (q @ X.T) + np.einsum("ij,ij->i", q, q)[:, None],
                                0)
                z = la[None] - kappa[None] * d2
                top = z.max(1, keepdims=True)
                E[s : s + step] = -(top[:, 0] + np.log(np.exp(z - top).sum(1)))
            return E

        chk = check("max_rel_err_vs_reference", err(numpy_energy()), 1e-3,
                    higher_is_better=False)
        t = ctx.time(numpy_energy)
        out.append(row("energy", "host", "numpy", p, chk, t, m, "queries/s", model))
    return out


def hebbian(ctx: Context, be, p: dict, baselines: bool) -> list[dict]:
    """``m`` feedback events (one relevant, one irrelevant splat each) in one batch."""
    n, d, m = p["n"], p["d"], p["m"]
    if be is None:
        return []  # the only baseline, the NumPy reference, is a sequential loop
    X, Q = ctx.data(n, d, m)
    X, Q = _unit(X), _unit(Q)
    rng = np.random.default_rng(5)
    rel = rng.integers(0, n, m)
    irr = (rel + 1 + rng.integers(0, n - 1, m)) % n
    P = _params(n)

    def plan(e):
        return HebbianPlan.build(np.repeat(np.arange(e), 2),
                                 np.stack([rel[:e], irr[:e]], 1).ravel(), np.tile([1, -1], e))

    rates = HebbianRates(renormalize=True)
    small = min(m, 64)
    mr, ar, _ = ref.hebbian(X, P[:, PARAM_ALPHA], P[:, PARAM_KAPPA], Q[:small],
                            [[r] for r in rel[:small]], [[i] for i in irr[:small]],
                            metric="cosine")
    xn, pn, _ = resident(be, X, P)
    be.hebbian(xn, pn, be.from_host(Q[:small]), plan(small), rates)
    err = float(max(np.abs(np.asarray(be.to_host(xn)) - mr).max(),
                    np.abs(np.asarray(be.to_host(pn))[:, PARAM_ALPHA] - ar).max()))
    chk = check("max_abs_err_vs_reference", err, 1e-3, higher_is_better=False)
    xn, pn, _ = resident(be, X, P)
    qn, full = be.from_host(Q), plan(m)
    t = ctx.time(lambda: be.hebbian(xn, pn, qn, full, rates), be.synchronize)
    model = {"bytes": 4 * 2 * m * (2 * d + PARAM_WIDTH) + 4 * m * d, "flops": 2 * m * 6 * d}
    return [row("hebbian", be.name, "m2m", p, chk, t, m, "events/s", model)]


def kmeans_assign(ctx: Context, be, p: dict, baselines: bool) -> list[dict]:
    """Nearest of ``c = 4 sqrt(n)`` centroids for every row (one k-means step's search)."""
    n, d = p["n"], p["d"]
    X, _ = ctx.data(n, d, 1)
    cents = X[:: max(1, n // max(1, int(4 * math.sqrt(n))))].copy()
    c = cents.shape[0]
    model = {"bytes": 4 * (n * d + c * d) + 12 * n, "flops": 2 * n * c * d}
    sample = slice(0, min(n, 512))
    _, A0 = ref.kmeans_assign(X[sample], cents)
    out = []
    if be is not None:
        xn, cn = be.from_host(X), be.from_host(cents)
        fn = lambda: host(be, be.knn(xn, cn, 1, "l2"))  # noqa: E731
        _, A = fn()
        chk = check("agreement_with_reference", float(np.mean(A[sample, 0] == A0)), 0.99)
        t = ctx.time(fn, be.synchronize)
        out.append(row("kmeans_assign", be.name, "m2m", p | {"centroids": c}, chk, t, n,
                       "rows/s", model))
    if baselines and "faiss" in ctx.baselines:
        import faiss

        fi = faiss.IndexFlatL2(d)
        fi.add(cents)
        fn = lambda: fi.search(X, 1)  # noqa: E731
        chk = check("agreement_with_reference", float(np.mean(fn()[1][sample, 0] == A0)), 0.99)
        t = ctx.time(fn)
        out.append(row("kmeans_assign", "host", "faiss", p | {"centroids": c}, chk, t, n,
                       "rows/s", model))
    return out


# ---- approximate and tiered search ----------------------------------------------------------
def hrm2(ctx: Context, be, p: dict, baselines: bool) -> list[dict]:
    """Recall@k against exact search and queries/s, one row per probe setting; the index is
    trained once per data shape (on cpu) and every backend takes the same cells."""
    from ..hrm2 import IndexHRM2

    n, d, m, k = p["n"], p["d"], p["m"], p["k"]
    X, Q = ctx.data(n, d, m)
    I0 = exact_l2(ctx, X, Q, k)

    def trained():
        idx = IndexHRM2(d, backend="cpu")
        idx.train(X)
        return idx

    base = ctx.cached(("hrm2", id(X)), trained)
    cells = base.hrm2.fine.shape[0]
    out = []
    if be is not None:
        idx = IndexHRM2(d, backend=be.name)
        idx.copy_training(base)
        idx.add(X)
        for p2 in p["probes"]:
            idx.nprobe = p2
            _, I = idx.search(Q, k)
            r = recall(I, I0)
            scanned = float(idx.last_report.vectors.mean())
            t = ctx.time(lambda idx=idx: idx.search(Q, k), be.synchronize)
            model = {"bytes": int(4 * scanned * d * m), "flops": int(2 * scanned * d * m)}
            out.append(row("hrm2", be.name, "m2m", p | {"probe": p2, "cells": cells},
                           check("recall", r, 0.0), t, m, "queries/s", model, recall=r,
                           vectors_scanned_per_query=scanned))
    if baselines:
        out += _ann_baselines(ctx, p, X, Q, I0, cells)
    return out


def _ann_baselines(ctx, p, X, Q, I0, cells) -> list[dict]:
    n, d, m, k = p["n"], p["d"], p["m"], p["k"]
    out = []
    if "faiss" in ctx.baselines:
        import faiss

        def build():
            quant = faiss.IndexFlatL2(d)
            ivf = faiss.IndexIVFFlat(quant, d, cells)
            ivf.train(X)
            ivf.add(X)
            return ivf, quant

        ivf, _ = ctx.cached(("ivf", id(X), cells), build)
        for nprobe in p["probes"]:
            ivf.nprobe = nprobe
            r = recall(ivf.search(Q, k)[1], I0)
            t = ctx.time(lambda: ivf.search(Q, k))
            scanned = n * nprobe / cells
            out.append(row("hrm2", "host", "faiss-ivf-flat",
                           p | {"probe": nprobe, "cells": cells}, check("recall", r, 0.0), t,
                           m, "queries/s", {"bytes": int(4 * scanned * d * m),
                                            "flops": int(2 * scanned * d * m)}, recall=r))
    if "hnswlib" in ctx.baselines:
        import hnswlib

        def build():
            h = hnswlib.Index(space="l2", dim=d)
            h.init_index(max_elements=n, M=16, ef_construction=100, random_seed=1)
            h.add_items(X, np.arange(n))
            return h

        h = ctx.cached(("hnsw", id(X)), build)
        for ef in p["ef"]:
            h.set_ef(max(ef, k))
            r = recall(h.knn_query(Q, k)[0].astype(np.int64), I0)
            t = ctx.time(lambda: h.knn_query(Q, k))
            out.append(row("hrm2", "host", "hnswlib", p | {"probe": ef, "M": 16},
                           check("recall", r, 0.0), t, m, "queries/s",
                           {"bytes": None, "flops": None}, recall=r))
    return out


def tiered(ctx: Context, be, p: dict, baselines: bool) -> list[dict]:
    """Exact search of a store 4x larger than its hot budget (the rest in host memory),
    against the same store all in memory, in the same run; results must be identical."""
    from ..store import SplatStore

    n, d, m, k = p["n"], p["d"], p["m"], p["k"]
    if be is None:
        return []
    X, Q = ctx.data(n, d, m)
    out, ref_ids = [], None
    for layout, tiers in (("memory", None), ("hot 1/4 + warm", {"hot_bytes": n // 4 * 4 * d})):
        s = SplatStore(d, metric="l2", backend=be.name, tiers=tiers)
        s.add(X)
        got = s.search(Q, k)
        ref_ids = ref_ids or got.ids
        same = float(got.ids == ref_ids)
        before = s.stats()["tiers"]["streamed"]["bytes"]
        t = ctx.time(lambda s=s: s.search(Q, k), be.synchronize)
        streamed = (s.stats()["tiers"]["streamed"]["bytes"] - before) / (t["repeats"] + 1)
        model = {"bytes": 4 * n * d + int(streamed), "flops": 2 * m * n * d}
        out.append(row("tiered", be.name, "m2m", p | {"layout": layout},
                       check("identical_to_memory", same, 1.0), t, m, "queries/s", model,
                       streamed_bytes_per_call=streamed))
        del s
    return out


KERNELS: dict[str, Any] = {"knn": knn, "splat_topk": splat_topk, "energy": energy,
                           "hebbian": hebbian, "kmeans_assign": kmeans_assign, "hrm2": hrm2,
                           "tiered": tiered}
