"""The benchmark suite (``m2m-gpu bench`` / ``m2m-gpu report``): a tiny sweep on each
backend produces JSON that validates against the documented schema, every case checked
against the reference, plots and a report; the schema rejects what it should."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess
import sys

import jsonschema
import pytest

from m2m_gpu.bench import report, runner, schema


@pytest.fixture(scope="module")
def cpu_doc():
    return runner.run("tiny", backends=["cpu"])


def test_tiny_sweep_validates_and_every_check_passes(backend):
    doc = runner.run("tiny", backends=[backend.name], baselines=False)
    schema.validate(doc)
    assert runner.problems(doc) == []
    ran = [r for r in doc["results"] if "timing" in r]
    assert {r["kernel"] for r in ran} == {"knn", "splat_topk", "energy", "hebbian",
                                          "kmeans_assign", "hrm2", "tiered"}
    assert all(r["backend"] == backend.name and r["impl"] == "m2m" for r in ran)
    knn = {(r["params"]["n"], r["params"]["dtype"]): r for r in ran if r["kernel"] == "knn"}
    assert set(knn) == {(n, t) for n in (500, 1500) for t in ("float32", "float16")}
    for n in (500, 1500):  # the cost model counts the bytes each storage dtype reads
        assert knn[(n, "float32")]["model"]["bytes"] - knn[(n, "float16")]["model"]["bytes"] \
            == 2 * n * 16
    for r in ran:
        t = r["timing"]
        assert t["repeats"] == len(t["samples_s"]) >= 2
        assert t["p10_s"] <= t["median_s"] <= t["p90_s"] <= t["p99_s"]
        assert r["throughput"]["value"] > 0
    lim = doc["limits"][backend.name]
    assert lim["backend"] == backend.name
    if backend.name == "cpu":
        assert lim["peak_gflop_s"] > 0 and lim["h2d_gb_s"] is None
    else:
        assert lim["h2d_gb_s"] > 0


def test_baselines_are_checked_and_labelled(cpu_doc):
    base = [r for r in cpu_doc["results"] if r["backend"] == "host"]
    assert {"numpy"} <= {r["impl"] for r in base}
    for name in cpu_doc["baselines"]:
        assert any(r["impl"].startswith(name) for r in base), name
    assert all(r["check"]["passed"] for r in base)
    half = {r["impl"] for r in base if r["kernel"] == "knn" and r["params"]["dtype"] == "float16"}
    assert half == ({"faiss-sq-fp16"} if "faiss" in cpu_doc["baselines"] else set())
    hr = [r for r in cpu_doc["results"] if r["kernel"] == "hrm2" and r["impl"] == "m2m"]
    assert [r["params"]["probe"] for r in hr] == [2, 8]
    assert hr[0]["recall"] <= hr[1]["recall"]  # more cells probed, no worse recall


def test_schema_rejects_broken_documents(cpu_doc):
    bad = copy.deepcopy(cpu_doc)
    del bad["machine"]
    with pytest.raises(jsonschema.ValidationError, match="machine"):
        schema.validate(bad)
    bad = copy.deepcopy(cpu_doc)
    ran = next(r for r in bad["results"] if "timing" in r)
    del ran["timing"]["samples_s"]
    with pytest.raises(jsonschema.ValidationError):
        schema.validate(bad)
    bad = copy.deepcopy(cpu_doc)
    bad["results"][0]["kernel"] = "no_such_kernel"
    with pytest.raises(jsonschema.ValidationError):
        schema.validate(bad)


def test_a_failed_check_is_reported(cpu_doc):
    doc = copy.deepcopy(cpu_doc)
    r = next(r for r in doc["results"] if r["kernel"] == "knn" and r["impl"] == "m2m")
    r["check"]["passed"] = False
    assert any("knn cpu m2m" in p for p in runner.problems(doc))


def test_report_compares_runs_side_by_side(cpu_doc, tmp_path):
    other = copy.deepcopy(cpu_doc)
    for r in other["results"]:
        if "timing" in r:
            r["throughput"]["value"] *= 2
    md, html, plots = report.write([cpu_doc, other], tmp_path, "cmp")
    text = md.read_text()
    assert "B/A" in text and "2.00x" in text
    assert {p.name for p in plots} == {"cmp-latency.png", "cmp-recall-qps.png",
                                       "cmp-roofline.png"}
    assert all(p.stat().st_size > 10_000 for p in plots)
    assert "<img src='cmp-latency.png'" in html.read_text()


def test_cli_bench_and_report_end_to_end(tmp_path):
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, "-m", "m2m_gpu.cli", "bench", "--preset", "tiny",
                        "--backend", "cpu", "--kernel", "knn", "--kernel", "hrm2",
                        "--out", str(out), "--name", "t"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "t.json").read_text())
    schema.validate(doc)
    assert {x["kernel"] for x in doc["results"]} == {"knn", "hrm2"}
    assert (out / "t.md").exists() and (out / "t-recall-qps.png").exists()
    r = subprocess.run([sys.executable, "-m", "m2m_gpu.cli", "report", str(out / "t.json"),
                        str(out / "t.json"), "--out", str(out), "--name", "both"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "B/A" in (out / "both.md").read_text()
    r = subprocess.run([sys.executable, "-m", "m2m_gpu.cli", "bench", "--preset", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unknown preset" in r.stderr


def test_micro_benchmarks_run_checked_and_grouped_per_kernel(tmp_path):
    """bench/micro under pytest-benchmark: every kernel's check passes on every available
    backend (required ones must be there), and the JSON groups the timings per kernel."""
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, M2M_MICRO_N="2000", M2M_MICRO_M="32", M2M_MICRO_ROUNDS="2")
    out = tmp_path / "micro.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(root / "bench" / "micro"), f"--benchmark-json={out}"],
                       capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    groups = {b["group"] for b in doc["benchmarks"]}
    assert groups == {"knn-l2", "knn-ip", "knn-ip-float16", "splat_topk", "energy", "hebbian",
                      "decay", "kmeans_assign", "kmeans_sums", "philox", "hrm2_search"}
    ran = {(b["params"] or {}).get("backend") for b in doc["benchmarks"]} - {None}
    from m2m_gpu import backends

    assert ran == {i.name for i in backends.probe_all() if i.available}
    for b in doc["benchmarks"]:
        assert b["stats"]["rounds"] == 2 and b["stats"]["median"] > 0
        assert b["extra_info"]["n"] == 2000


def test_limits_are_real_and_fractions_above_them_are_flagged(cpu_doc):
    """The machine's limits reach what they claim on every preset (bandwidth from buffers
    larger than the caches, the peak from products grown until one takes long enough), so
    no kernel lands above them; and a result above a limit is flagged, never shown as a
    plain percentage (the tiny preset used to report 502% of a 256 x 256 product)."""
    from m2m_gpu.bench import limits

    lim = cpu_doc["limits"]
    assert lim["host"]["bytes"] >= limits.MIN_BYTES
    sizes = lim["cpu"]["gemm"]["sizes"]
    last = sizes[-1]
    seconds = 2 * last["size"] ** 3 / (last["gflop_s"] * 1e9)  # the last product's time
    assert seconds >= limits.PEAK_SECONDS or 2 * last["size"] > limits.PEAK_MAX
    assert lim["cpu"]["peak_gflop_s"] == max(s["gflop_s"] for s in sizes)
    for r in cpu_doc["results"]:
        f = r.get("fraction_of_limit")
        if not f:
            continue
        over = [k for k in ("bandwidth", "compute") if f[k] is not None and f[k] > 1.0]
        assert over == f.get("over_limit", []), r
    row = copy.deepcopy(next(r for r in cpu_doc["results"] if r.get("model", {}).get("flops")))
    runner.derive(row, {"bandwidth_gb_s": 1e-9, "peak_gflop_s": 1e-9, "source": "test"})
    assert row["fraction_of_limit"]["over_limit"] == ["bandwidth", "compute"]
    assert "ABOVE the measured limit" in report._frac(row)
