"""``m2m-gpu`` command line (typer): ``info``, ``bench``, ``report``, ``mcp`` and
``serve``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="GPU compute kernels for Gaussian-splat vector memory.")


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False):
    """List backends: available or not and why, devices, library and driver versions."""
    import m2m_gpu

    report = m2m_gpu.info()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"m2m-gpu {report['version']}")
    for b in report["backends"]:
        state = "available" if b["available"] else "not available"
        print(f"\n{b['name']}: {state}")
        if b["available"]:
            print(f"  device: {b['device']} ({b['device_type']})")
        else:
            print(f"  why: {b['reason']}")
        for lib, version in b["versions"].items():
            print(f"  {lib}: {version}")
    print(f"\nauto: {report['auto']['reason']}")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="under two minutes on 2 cores")] = False,
    standard: Annotated[bool, typer.Option("--standard")] = False,
    full: Annotated[bool, typer.Option("--full")] = False,
    preset: Annotated[str | None, typer.Option(
        help="a preset by name: tiny (seconds, for tests), quick, gpu (one GPU, about two "
             "minutes), standard, full")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", "-b", help="cpu, cuda or vulkan (repeatable; default: all available)")]
    = None,
    kernel: Annotated[list[str] | None, typer.Option(
        "--kernel", "-k", help="knn, splat_topk, energy, hebbian, kmeans_assign, hrm2, "
                               "tiered (repeatable; default: all)")] = None,
    out: Annotated[Path, typer.Option(help="directory for the JSON, plots and report")]
    = Path("bench/results"),
    name: Annotated[str | None, typer.Option(help="file stem (default: bench-PRESET-HOST)")]
    = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines")] = False,
):
    """Sweep the kernels over every available backend against the installed baselines,
    with the machine's limits measured in the same run; write JSON, plots and a report."""
    from .bench import report as report_mod
    from .bench import runner, schema
    from .bench.presets import PRESETS
    from .bench.ui import Live

    chosen = [p for p, on in (("quick", quick), ("standard", standard), ("full", full)) if on]
    chosen += [preset] if preset else []
    if len(chosen) > 1:
        raise typer.BadParameter("choose one of --quick, --standard, --full, --preset")
    preset = chosen[0] if chosen else "quick"
    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    from .bench.cases import KERNELS

    bad = [k for k in kernel or [] if k not in KERNELS]
    if bad:
        raise typer.BadParameter(f"unknown kernels {bad}; known: {sorted(KERNELS)}")
    ui = Live() if sys.stderr.isatty() else _Plain()
    doc = runner.run(preset, backends=backend or None, kernels=kernel or None,
                     baselines=not no_baselines, ui=ui)
    schema.validate(doc)
    stem = name or f"bench-{preset}-" + "-".join(b["name"] for b in doc["backends"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(doc, indent=1))
    md, html, plots = report_mod.write([doc], out, stem)
    print(f"wrote {path}, {md}, {html} and {len(plots)} plots", file=sys.stderr)
    problems = runner.problems(doc)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    raise typer.Exit(1 if problems else 0)


class _Plain:
    """Progress as plain lines (output that is not a terminal, e.g. CI logs)."""

    def start(self, total: int) -> None:
        self.total, self.done = total, 0

    def step(self, label: str, rows=None) -> None:
        from .bench.ui import _fmt_row

        self.done += 1
        print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)
        for r in rows or []:
            print("    " + " | ".join(_fmt_row(r)), file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(help="JSON files of m2m-gpu bench runs")],
    out: Annotated[Path, typer.Option(help="output directory")] = Path("bench/results"),
    name: Annotated[str, typer.Option(help="file stem")] = "report",
):
    """Compare runs side by side: Markdown and HTML with the plots embedded."""
    from .bench import report as report_mod
    from .bench import schema

    docs = report_mod.load(results)
    for p, d in zip(results, docs, strict=True):
        try:
            schema.validate(d)
        except Exception as e:  # noqa: BLE001 - name the file and the field
            raise typer.BadParameter(f"{p}: not an m2m-gpu bench result: {e}") from None
    md, html, plots = report_mod.write(docs, out, name)
    print(f"wrote {md}, {html} and {len(plots)} plots")


@app.command()
def mcp(
    path: Annotated[Path, typer.Option(help="the memory's directory (made if missing)")],
    backend: Annotated[str, typer.Option(help="cpu, cuda, vulkan or auto")] = "auto",
    encoder: Annotated[str, typer.Option(help="minilm (all-MiniLM-L6-v2, offline), hashed "
                                              "(no model: bag of hashed words), a "
                                              "sentence-transformers name or directory, or "
                                              "hf:NAME (a mean-pooled transformer)")
                       ] = "minilm",
):
    """Serve a TextMemory over the Model Context Protocol on stdio (remember, recall,
    feedback, forget)."""
    from .text import TextMemory, resolve_encoder
    from .text.mcp_server import build

    try:
        enc = resolve_encoder(encoder)
    except (OSError, ValueError) as exc:  # no such model, or not a model directory
        raise typer.BadParameter(f"--encoder {encoder!r}: {exc}") from exc
    memory = TextMemory(path=path, encoder=enc, backend=None if backend == "auto" else backend)
    try:
        build(memory).run("stdio")
    finally:
        memory.close()


@app.command()
def serve(
    path: Annotated[Path, typer.Option(help="the server's directory: one store per collection")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (Qdrant's REST port by default)")] = 6333,
    backend: Annotated[str, typer.Option(help="cpu, cuda, vulkan or auto")] = "auto",
    api_key: Annotated[str | None, typer.Option(envvar="M2M_API_KEY",
                                                help="the read-write key (api-key header)")
                       ] = None,
    read_only_key: Annotated[list[str] | None, typer.Option(
        help="a key that may only read (repeatable)")] = None,
    allow_remote_without_key: Annotated[bool, typer.Option(
        help="bind a non-loopback address with no API key configured")] = False,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body")] = 64 << 20,
    max_points: Annotated[int, typer.Option(help="most points in one request")] = 100_000,
    text_encoder: Annotated[list[str] | None, typer.Option(
        help="an encoder text collections may use besides hashed and minilm: a "
             "sentence-transformers name or directory, or hf:NAME (repeatable)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level")] = "info",
):
    """Serve the collections under PATH over REST in Qdrant's wire shape (qdrant-client
    works against it), with splat routes, API keys, limits and /metrics."""
    import ipaddress

    import uvicorn

    from .server import create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not (api_key or read_only_key) and not loopback and not allow_remote_without_key:
        raise typer.BadParameter(f"--host {host} is not a loopback address and no API key is "
                                 "set: pass --api-key, or --allow-remote-without-key")
    server_app = create_app(path, backend=None if backend == "auto" else backend,
                            api_key=api_key, read_only_keys=read_only_key or [],
                            max_body_bytes=max_body_bytes, max_points=max_points,
                            text_encoders=("hashed", "minilm", *(text_encoder or [])))
    uvicorn.run(server_app, host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=10)


def _is_usage_error(exc: BaseException) -> bool:
    """Click's exceptions (usage errors, bad parameters, no command), whether click is
    installed on its own or vendored inside typer (typer >= 0.29 ships ``typer._click``)."""
    return any(k.__name__ == "ClickException" for k in type(exc).__mro__) and \
        hasattr(exc, "show")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Usage errors, unknown presets or kernels and backends that cannot run
    print one line saying so (no traceback) and exit with 2."""
    from .errors import M2MError

    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except M2MError as e:  # e.g. a backend asked for by name that cannot run here
        print(f"m2m-gpu: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _is_usage_error(e):
            raise
        e.show()
        return 2 if getattr(e, "exit_code", 2) in (1, 2) else e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
