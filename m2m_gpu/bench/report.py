"""``m2m-gpu report RESULTS...``: Markdown and HTML comparing runs side by side (e.g.
lavapipe against CPU, H100 against H200, CUDA against Vulkan on one GPU), plots embedded."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

from .plots import all_plots, label


def load(paths: list[Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def _params(p: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items() if not isinstance(v, list))


def _frac(r: dict) -> str:
    f = r.get("fraction_of_limit", {})
    parts = []
    if f.get("bandwidth") is not None:
        parts.append(f"{f['bandwidth']:.0%} bw")
    if f.get("compute") is not None:
        parts.append(f"{f['compute']:.0%} peak")
    if f.get("over_limit"):
        parts.append("ABOVE the measured limit (" + ", ".join(f["over_limit"]) + ")")
    return ", ".join(parts)


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "error"
    ok = "" if r["check"]["passed"] else " (check FAILED)"
    return f"{r['throughput']['value']:,.0f} {r['throughput']['unit']}{ok}"


def tables(docs: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report."""
    names = [f"{chr(65 + i)}: {label(d)}" for i, d in enumerate(docs)]
    out = []
    out.append(("Runs", ["run", "preset", "created", "git", "cpu", "backends", "baselines"],
                [[n, d["preset"], d["created"], d["git"], d["machine"]["cpu"],
                  ", ".join(f"{b['name']} ({b['device']})" for b in d["backends"]),
                  ", ".join(d["baselines"]) or "-"] for n, d in zip(names, docs, strict=True)]))
    lim_rows = []
    for n, d in zip(names, docs, strict=True):
        lim_rows.append([n, "host", f"{d['limits']['host']['bandwidth_gb_s']:.1f}", "", "", "", ""])
        for be, lim in d["limits"].items():
            if be == "host":
                continue
            g = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
            lim_rows.append([n, be, g(lim["device_bandwidth_gb_s"]), g(lim["h2d_gb_s"]),
                             g(lim["d2h_gb_s"]), g(lim["peak_gflop_s"]), lim["peak_what"]])
    out.append(("Measured limits (GB/s, GFLOP/s)",
                ["run", "backend", "memory bw", "host->device", "device->host", "peak",
                 "peak from"], lim_rows))
    by_kernel = defaultdict(dict)
    for i, d in enumerate(docs):
        for r in d["results"]:
            key = (r["backend"], r["impl"], _params(r["params"]))
            by_kernel[r["kernel"]].setdefault(key, [None] * len(docs))[i] = r
    for kern, cases in by_kernel.items():
        if len(docs) == 1:
            head = ["backend", "impl", "params", "median", "p10 / p90 / p99", "throughput",
                    "of limit", "check"]
            rows = []
            for (be, impl, ps), (r,) in cases.items():
                if r is None or "timing" not in r:
                    rows.append([be, impl, ps, _cell(r), "", "", "", ""])
                    continue
                t = r["timing"]
                ms = lambda v: f"{v * 1e3:.3g}"  # noqa: E731
                c = r["check"]
                rows.append([be, impl, ps, f"{ms(t['median_s'])} ms",
                             f"{ms(t['p10_s'])} / {ms(t['p90_s'])} / {ms(t['p99_s'])} ms",
                             _cell(r), _frac(r),
                             f"{'ok' if c['passed'] else 'FAILED'} {c['kind']} "
                             f"{c['value']:.4g}"])
        else:
            head = ["backend", "impl", "params"] + [n.split(":")[0] for n in names] + \
                [f"{chr(65 + i)}/A" for i in range(1, len(docs))]
            rows = []
            for (be, impl, ps), rs in cases.items():
                ratios = []
                base = rs[0]
                for r in rs[1:]:
                    ok = base is not None and r is not None and "timing" in base and \
                        "timing" in r
                    ratios.append(f"{r['throughput']['value'] / base['throughput']['value']:.2f}x"
                                  if ok else "")
                rows.append([be, impl, ps] + [_cell(r) for r in rs] + ratios)
        out.append((f"{kern}", head, rows))
    return out


def _md_table(head, rows) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def write(docs: list[dict], out: Path, stem: str = "report") -> tuple[Path, Path, list[Path]]:
    """``out/stem.md``, ``out/stem.html`` and the plots beside them."""
    out.mkdir(parents=True, exist_ok=True)
    plots = all_plots(docs, out, stem)
    secs = tables(docs)
    intro = ("Throughput is per second; `of limit` is the achieved rate of the cost model "
             "(bytes a call must move, floating-point operations) as a fraction of the "
             "limit measured in the same run (memory bandwidth, or the peak of a large "
             "matrix product). Every case was checked against the reference before timing.")
    md = [f"# m2m-gpu benchmark report\n\n{intro}\n"]
    for title, head, rows in secs:
        md.append(f"## {title}\n\n{_md_table(head, rows)}\n")
    md.append("## Plots\n")
    md += [f"![{p.stem}]({p.name})\n" for p in plots]
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(md))
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>m2m-gpu benchmark report"
         "</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
         "padding:3px 6px}th{background:#eee}</style></head><body>",
         "<h1>m2m-gpu benchmark report</h1>", f"<p>{html.escape(intro)}</p>"]
    for title, head, rows in secs:
        h.append(f"<h2>{html.escape(title)}</h2><table><tr>" +
                 "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>")
        h += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
              for r in rows]
        h.append("</table>")
    h.append("<h2>Plots</h2>")
    h += [f"<p><img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'></p>"
          for p in plots]
    h.append("</body></html>")
    html_path = out / f"{stem}.html"
    html_path.write_text("\n".join(h))
    return md_path, html_path, plots
