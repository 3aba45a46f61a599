#!/usr/bin/env python3
"""Compile shaders/*.comp to SPIR-V (.spv, committed) and record what each was built from.

    python scripts/build_shaders.py          # rebuild the .spv of every changed .comp
    python scripts/build_shaders.py --all    # rebuild every .spv
    python scripts/build_shaders.py --check  # exit 1 if a .spv is stale or missing

Uses glslangValidator (Debian: glslang-tools), or pyshaderc when it is installed. Staleness
is decided by content, not file times (a git checkout does not keep times): shaders/
spirv.lock.json holds, for each shader, the sha256 of the source its .spv was compiled from
and of the .spv itself. Users never need a compiler; the committed .spv files are used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHADERS = ROOT / "shaders"
LOCK = SHADERS / "spirv.lock.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_lock() -> dict:
    return json.loads(LOCK.read_text()) if LOCK.exists() else {}


def stale(lock: dict) -> list[str]:
    """Names of shaders whose .spv is missing or was not built from the current source."""
    out = []
    for comp in sorted(SHADERS.glob("*.comp")):
        spv = comp.with_suffix(".spv")
        entry = lock.get(comp.name)
        if (
            not spv.exists()
            or entry is None
            or entry.get("source_sha256") != sha256(comp)
            or entry.get("spirv_sha256") != sha256(spv)
        ):
            out.append(comp.name)
    return out


def compile_one(comp: Path, spv: Path) -> str:
    glslang = shutil.which("glslangValidator")
    if glslang:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / spv.name
            res = subprocess.run(
                [glslang, "-V", "--target-env", "vulkan1.1", str(comp), "-o", str(out)],
                capture_output=True, text=True,
            )
            if res.returncode != 0:
                raise SystemExit(
                    f"glslangValidator failed on {comp.name}:\n{res.stdout}{res.stderr}"
                )
            spv.write_bytes(out.read_bytes())
        version = subprocess.run([glslang, "--version"], capture_output=True, text=True)
        return version.stdout.splitlines()[0].strip() if version.stdout else "glslangValidator"
    try:
        import pyshaderc  # type: ignore
    except ImportError:
        raise SystemExit(
            "no shader compiler: install glslang-tools (glslangValidator) or pyshaderc"
        ) from None
    spv.write_bytes(pyshaderc.compile_into_spirv(comp.read_bytes(), "comp", comp.name))
    return "pyshaderc"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="rebuild every shader")
    ap.add_argument("--check", action="store_true", help="only report stale shaders")
    args = ap.parse_args()
    lock = load_lock()
    todo = stale(lock)
    if args.check:
        for name in todo:
            print(f"stale: {name}")
        return 1 if todo else 0
    names = [c.name for c in sorted(SHADERS.glob("*.comp"))] if args.all else todo
    for name in names:
        comp = SHADERS / name
        spv = comp.with_suffix(".spv")
        compiler = compile_one(comp, spv)
        lock[name] = {"source_sha256": sha256(comp), "spirv_sha256": sha256(spv),
                      "compiler": compiler}
        print(f"compiled {name} -> {spv.name}")
    known = {c.name for c in SHADERS.glob("*.comp")}
    lock = {k: v for k, v in sorted(lock.items()) if k in known}
    LOCK.write_text(json.dumps(lock, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
