"""Where the standalone benchmarks put their results."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save(res: dict, out: str | None, name: str) -> Path:
    """Print ``res`` and write it to ``out`` (default ``bench/results/<name>.json``)."""
    print(json.dumps(res, indent=1))
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")
    return path
