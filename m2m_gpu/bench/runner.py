"""One benchmark run: the machine's limits, then every case of a preset on every backend
(and the installed baselines once per case), with progress and a live table on the
terminal; returns the result document of ``schema.json``."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

from .. import __version__
from ..backends import get_backend, probe_all
from . import cases as cases_mod
from . import limits as limits_mod
from .presets import PRESETS, cases

SCHEMA_ID = "m2m-gpu-bench/1"
BASELINES = ("faiss", "hnswlib", "torch")


def installed_baselines() -> tuple[str, ...]:
    found = []
    for name in BASELINES:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - not installed, or broken: not a baseline here
            continue
        found.append(name)
    return tuple(found)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("m2m-gpu", "numpy", "faiss-cpu", "faiss-gpu", "hnswlib", "torch",
                 "cupy-cuda12x", "cupy-cuda13x", "kp", "numba"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    out["m2m-gpu"] = __version__
    return out


def machine() -> dict:
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"system": platform.system(), "release": platform.release(),
            "arch": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_bytes": mem}


def git_revision() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, cwd=Path(__file__).parent, timeout=10)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def derive(row: dict, limit: dict) -> None:
    """Achieved rates from the cost model, and their fractions of the limits."""
    t = row["timing"]["median_s"]
    b, f = row["model"].get("bytes"), row["model"].get("flops")
    gb = None if b is None else b / t / 1e9
    gf = None if f is None else f / t / 1e9
    row["achieved"] = {"gb_s": gb, "gflop_s": gf}
    bw, peak = limit["bandwidth_gb_s"], limit["peak_gflop_s"]
    frac = {"bandwidth": None if gb is None or not bw else gb / bw,
            "compute": None if gf is None or not peak else gf / peak,
            "against": limit["source"]}
    over = [k for k in ("bandwidth", "compute") if frac[k] is not None and frac[k] > 1.0]
    if over:  # a limit measured too low, or a cost model that overcounts: never hidden
        frac["over_limit"] = over
    row["fraction_of_limit"] = frac


def run(preset: str = "quick", backends: list[str] | None = None,
        kernels: list[str] | None = None, baselines: bool = True, ui=None) -> dict:
    """Run a preset; ``ui`` (see :class:`m2m_gpu.bench.ui.Live`) is told about progress."""
    spec = PRESETS[preset]
    infos = {b.name: b.as_dict() for b in probe_all()}
    names = [n for n, i in infos.items() if i["available"]] if backends is None else backends
    bes = [get_backend(n) for n in names]
    found = installed_baselines() if baselines else ()
    ctx = cases_mod.Context(repeat=spec["repeat"], min_time=spec["min_time"], baselines=found)
    todo = cases(spec, kernels)
    doc = {"schema": SCHEMA_ID, "preset": preset,
           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv), "git": git_revision(), "machine": machine(),
           "versions": versions(), "backends": [infos[n] for n in names],
           "baselines": list(found), "settings": {k: v for k, v in spec.items()
                                                  if k != "kernels"},
           "limits": {}, "results": []}
    if ui:
        ui.start(len(todo) * len(bes) + len(bes) + 1)
    doc["limits"]["host"] = limits_mod.host(spec["limit_bytes"], spec["repeat"])
    if ui:
        ui.step("limits: host")
    for be in bes:
        doc["limits"][be.name] = limits_mod.device(be, spec["limit_bytes"], spec["gemm"],
                                                   spec["repeat"])
        if ui:
            ui.step(f"limits: {be.name}")
    if "cpu" not in doc["limits"]:
        doc["limits"]["cpu"] = limits_mod.device(get_backend("cpu"), spec["limit_bytes"],
                                                 spec["gemm"], spec["repeat"])
    for kernel, params in todo:
        fn = cases_mod.KERNELS[kernel]
        first = True
        for be in bes:
            label = f"{kernel} {be.name} " + " ".join(f"{k}={v}" for k, v in params.items()
                                                     if not isinstance(v, list))
            soft = infos[be.name]["device_type"] == "software"
            if soft and params.get("n", 0) > spec["software_max_n"]:
                doc["results"].append({"kernel": kernel, "backend": be.name, "impl": "m2m",
                                       "params": params, "skipped":
                                       f"n > {spec['software_max_n']} on a software Vulkan "
                                       "device (lavapipe) in this preset"})
                rows = []
                if first and baselines:
                    rows = _safe(fn, ctx, None, params, True, kernel, "host")
                    first = False
            else:
                rows = _safe(fn, ctx, be, params, first and baselines, kernel, be.name)
                first = False
            for r in rows:
                if "timing" in r:
                    derive(r, limits_mod.limit_for(r["backend"], infos, doc["limits"]))
                doc["results"].append(r)
            if ui:
                ui.step(label, rows)
    if ui:
        ui.stop()
    return doc


def _safe(fn, ctx, be, params, baselines, kernel, backend) -> list[dict]:
    try:
        return fn(ctx, be, params, baselines)
    except Exception as exc:  # noqa: BLE001 - one failing case must not lose the others
        return [{"kernel": kernel, "backend": backend, "impl": "m2m", "params": params,
                 "error": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc(limit=4)}]


def problems(doc: dict) -> list[str]:
    """Failed checks and errors (the CLI exits non-zero when there are any)."""
    out = []
    for r in doc["results"]:
        if "error" in r:
            out.append(f"{r['kernel']} {r['backend']}: {r['error']}")
        elif "check" in r and not r["check"]["passed"]:
            c = r["check"]
            out.append(f"{r['kernel']} {r['backend']} {r['impl']} {r['params']}: "
                       f"{c['kind']} = {c['value']:.4g} (threshold {c['threshold']:.4g})")
    return out
