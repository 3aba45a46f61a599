"""Progress bars for long work (text ingests, HRM2 builds): rich, on stderr, only when
stderr is a terminal and the caller wants one; otherwise nothing at all."""

from __future__ import annotations

import sys


class Progress:
    """``with Progress(total, "label", wanted) as advance: ... advance(n)``."""

    def __init__(self, total: int, label: str, wanted: bool = True) -> None:
        self.bar = None
        if wanted and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(transient=True, console=Console(stderr=True))
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        if self.bar is None:
            return lambda n=1: None
        self.bar.start()
        return lambda n=1: self.bar.advance(self.task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
