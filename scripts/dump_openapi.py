#!/usr/bin/env python3
"""Write the server's OpenAPI schema to docs/openapi.json (tests/test_server.py checks the
served schema equals this committed copy)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from m2m_gpu.server import create_app

    with tempfile.TemporaryDirectory() as d:
        schema = create_app(d, backend="cpu").openapi()
    out = ROOT / "docs" / "openapi.json"
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(schema['paths'])} paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
