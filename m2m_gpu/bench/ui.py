"""Terminal output of a run: a progress bar and a live table of the latest results
(rich), or plain lines when the output is not a terminal."""

from __future__ import annotations


def _fmt_row(r: dict) -> tuple[str, ...]:
    p = r.get("params", {})
    shape = " ".join(f"{k}={p[k]}" for k in ("n", "d", "m", "k", "metric", "probe", "layout")
                     if k in p)
    if "skipped" in r:
        return (r["kernel"], r["backend"], r["impl"], shape, "skipped", "", "", "")
    if "error" in r:
        return (r["kernel"], r["backend"], r["impl"], shape, "ERROR", "", "", "")
    t = r["timing"]
    frac = r.get("fraction_of_limit", {})
    best = max((v for v in (frac.get("bandwidth"), frac.get("compute")) if v is not None),
               default=None)
    ok = "ok" if r["check"]["passed"] else "FAILED"
    return (r["kernel"], r["backend"], r["impl"], shape,
            f"{t['median_s'] * 1e3:.3g} ms", f"{r['throughput']['value']:,.0f} "
            f"{r['throughput']['unit']}", "" if best is None else f"{best:.0%}",
            f"{ok} {r['check']['kind']}={r['check']['value']:.3g}")


HEAD = ("kernel", "backend", "impl", "params", "median", "throughput", "of limit", "check")


class Live:
    """Progress and a table of the last ``rows`` results."""

    def __init__(self, console=None, rows: int = 18) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.rows = rows
        self.recent: list[tuple[str, ...]] = []
        self._live = None

    def _table(self):
        from rich.table import Table

        t = Table(*HEAD, expand=False, header_style="bold")
        for r in self.recent[-self.rows:]:
            style = "red" if ("FAILED" in r[-1] or r[4] == "ERROR") else None
            t.add_row(*r, style=style)
        return t

    def _render(self):
        from rich.console import Group

        return Group(self._table(), self.progress)

    def start(self, total: int) -> None:
        from rich.live import Live as RichLive
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console)
        self.task = self.progress.add_task("measuring the machine's limits", total=total)
        self._live = RichLive(self._render(), console=self.console, refresh_per_second=4,
                              transient=False)
        self._live.start()

    def step(self, label: str, rows: list[dict] | None = None) -> None:
        self.recent += [_fmt_row(r) for r in rows or []]
        self.progress.update(self.task, advance=1, description=label[:60])
        self._live.update(self._render())

    def stop(self) -> None:
        self.progress.update(self.task, description="done")
        self._live.update(self._render())
        self._live.stop()
