#!/usr/bin/env python3
"""Generate the kernel ABI headers, compile shaders/*.comp to SPIR-V (.spv, committed) and
record what each was built from.

    python scripts/build_shaders.py          # headers, then the .spv of every changed .comp
    python scripts/build_shaders.py --all    # rebuild every .spv
    python scripts/build_shaders.py --check  # exit 1 if a header or .spv is stale or missing

The headers kernels/m2m_abi.h and shaders/m2m_abi.glsl (key codes, the splat parameter
row, the top-k seed) are rendered from m2m_gpu/backends/abi.py, their one definition.

Uses glslangValidator (Debian: glslang-tools), or pyshaderc when it is installed. Staleness
is decided by content, not file times (a git checkout does not keep times): shaders/
spirv.lock.json holds, for each shader, the sha256 of the source its .spv was compiled from
and of the .spv itself. Users never need a compiler; the committed .spv files are used.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHADERS = ROOT / "shaders"
LOCK = SHADERS / "spirv.lock.json"
INCLUDE = "m2m_abi.glsl"  # the one header a shader may include (GL_GOOGLE_include_directive)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_sha256(comp: Path) -> str:
    """Hash of what a .spv is built from: the .comp and, if it includes it, the ABI header."""
    data = comp.read_bytes()
    header = comp.parent / INCLUDE
    if f'#include "{INCLUDE}"'.encode() in data and header.exists():
        data += b"\0" + header.read_bytes()
    return hashlib.sha256(data).hexdigest()


def abi_module():
    """m2m_gpu.backends.abi loaded from this tree (without importing the package)."""
    spec = importlib.util.spec_from_file_location(
        "m2m_abi", ROOT / "m2m_gpu" / "backends" / "abi.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def stale_headers(root: Path = ROOT) -> list[str]:
    """Generated headers whose content differs from what abi.py renders."""
    abi = abi_module()
    return [rel for rel, render in abi.HEADERS.items()
            if not (root / rel).exists() or (root / rel).read_text() != render()]


def write_headers(root: Path = ROOT) -> list[str]:
    written = []
    for rel in stale_headers(root):
        (root / rel).write_text(abi_module().HEADERS[rel]())
        written.append(rel)
    return written


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
            or entry.get("source_sha256") != source_sha256(comp)
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
    if args.check:
        todo = stale_headers() + stale(load_lock())
        for name in todo:
            print(f"stale: {name}")
        return 1 if todo else 0
    for rel in write_headers():
        print(f"generated {rel}")
    lock = load_lock()
    todo = stale(lock)
    names = [c.name for c in sorted(SHADERS.glob("*.comp"))] if args.all else todo
    for name in names:
        comp = SHADERS / name
        spv = comp.with_suffix(".spv")
        compiler = compile_one(comp, spv)
        lock[name] = {"source_sha256": source_sha256(comp), "spirv_sha256": sha256(spv),
                      "compiler": compiler}
        print(f"compiled {name} -> {spv.name}")
    known = {c.name for c in SHADERS.glob("*.comp")}
    lock = {k: v for k, v in sorted(lock.items()) if k in known}
    LOCK.write_text(json.dumps(lock, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
