"""PNG plots of one or more runs (matplotlib, Agg): latency against n per backend,
recall against queries/s for approximate search, and achieved rates against the
machine's measured limits (roofline style)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .limits import limit_for


def label(doc: dict) -> str:
    """A short name for a run: its fastest device, else its CPU, and the date."""
    gpus = [b["device"] for b in doc["backends"] if b.get("device_type") == "gpu"]
    where = gpus[0] if gpus else doc["machine"]["cpu"]
    return f"{where[:40]} {doc['created'][:10]}"


def _ok(rows):
    return [r for r in rows if "timing" in r]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_vs_n(docs: list[dict], path: Path) -> Path | None:
    kernels = ("knn", "splat_topk", "energy")
    plt = _plt()
    series = defaultdict(list)
    for doc in docs:
        for r in _ok(doc["results"]):
            if r["kernel"] in kernels:
                p = r["params"]
                key = (r["kernel"], label(doc) if len(docs) > 1 else "", r["backend"], r["impl"],
                       p.get("d"), p.get("m"), p.get("k"), p.get("metric"),
                       p.get("dtype", "float32"))
                series[key].append((p["n"], r["timing"]["median_s"] * 1e3))
    shown = [k for k in kernels if any(s[0] == k for s in series)]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.2), squeeze=False)
    for ax, kern in zip(axes[0], shown, strict=True):
        for key, pts in sorted(series.items(), key=lambda kv: str(kv[0])):
            if key[0] != kern:
                continue
            pts.sort()
            name = f"{key[2]}/{key[3]} d={key[4]} m={key[5]}" + \
                ("" if key[8] == "float32" else f" {key[8]}") + (f" {key[1]}" if key[1] else "")
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (database vectors)")
        ax.set_ylabel("median latency per batch (ms)")
        ax.set_title(kern)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency against database size (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recall_vs_qps(docs: list[dict], path: Path) -> Path | None:
    plt = _plt()
    series = defaultdict(list)
    for doc in docs:
        for r in _ok(doc["results"]):
            if r["kernel"] == "hrm2":
                key = (label(doc) if len(docs) > 1 else "", r["backend"], r["impl"],
                       r["params"]["n"], r["params"]["d"])
                series[key].append((r["recall"], r["throughput"]["value"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for key, pts in sorted(series.items(), key=lambda kv: str(kv[0])):
        pts.sort()
        name = f"{key[2]} ({key[1]}) n={key[3]:,} d={key[4]}" + (f" {key[0]}" if key[0] else "")
        ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=name)
    return _finish(plt, fig, ax, path, "recall@k against exact search", "queries per second",
                   "Approximate search: recall against throughput (up and right is better)",
                   logx=False, legend=7)


def roofline(docs: list[dict], path: Path) -> Path | None:
    """Achieved GFLOP/s against arithmetic intensity (flops per byte of the cost model),
    with each backend's measured ceilings: peak GFLOP/s and bandwidth x intensity."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seen = {}
    named: set[str] = set()
    any_point = False
    for doc in docs:
        tag = f" {label(doc)}" if len(docs) > 1 else ""
        for r in _ok(doc["results"]):
            b, f = r["model"].get("bytes"), r["model"].get("flops")
            if not b or not f or r["impl"] != "m2m":
                continue
            key = r["backend"] + tag
            c = seen.setdefault(key, colors[len(seen) % len(colors)])
            ax.scatter(f / b, r["achieved"]["gflop_s"], color=c, s=22,
                       label=None if key in named else key)
            named.add(key)
            any_point = True
        for be in doc["limits"]:
            if be == "host":
                continue
            key = be + tag
            if key not in seen:
                continue
            infos = {i["name"]: i for i in doc.get("backends", [])}
            roofline = limit_for(be, infos, doc["limits"])
            bw, peak = roofline["bandwidth_gb_s"], roofline["peak_gflop_s"]
            x = np.logspace(-2, 3, 50)
            if bw:
                roof = bw * x if peak is None else np.minimum(bw * x, peak)
                ax.plot(x, roof, color=seen[key], lw=1, ls="--")
    if not any_point:
        plt.close(fig)
        return None
    return _finish(plt, fig, ax, path, "arithmetic intensity (flop per byte of the cost model)",
                   "achieved GFLOP/s",
                   "Achieved rate against the measured limits (dashed: min(peak, bandwidth x I))",
                   logx=True, legend=8)


def _finish(plt, fig, ax, path, xlabel, ylabel, title, logx, legend):
    if logx:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_plots(docs: list[dict], out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [latency_vs_n(docs, out / f"{stem}-latency.png"),
            recall_vs_qps(docs, out / f"{stem}-recall-qps.png"),
            roofline(docs, out / f"{stem}-roofline.png")]
    return [p for p in made if p is not None]
