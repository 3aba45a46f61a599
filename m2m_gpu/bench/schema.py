"""The JSON schema of a benchmark run (``schema.json``, JSON Schema 2020-12) and its
validation (with the ``jsonschema`` package, in the ``bench`` and ``dev`` extras)."""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).with_name("schema.json")


def load() -> dict:
    return json.loads(PATH.read_text())


def validate(doc: dict) -> None:
    """Raise ``jsonschema.ValidationError`` naming the first field that does not fit."""
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - the extras install it
        raise RuntimeError("validating benchmark JSON needs the jsonschema package "
                           "(pip install 'm2m-gpu[bench]')") from e
    jsonschema.Draft202012Validator(load()).validate(doc)
