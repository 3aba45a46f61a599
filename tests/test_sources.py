"""Kernel sources: SPIR-V up to date with its GLSL, everything shipped in the wheel, CUDA
sources compile with nvcc (for sm_80 and sm_90) where nvcc is installed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build_shaders_module():
    spec = importlib.util.spec_from_file_location("build_shaders",
                                                  ROOT / "scripts" / "build_shaders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shaders_copy(tmp_path, monkeypatch):
    """build_shaders pointed at a scratch copy of shaders/ (edits there are safe)."""
    bs = _build_shaders_module()
    shaders = tmp_path / "shaders"
    shutil.copytree(ROOT / "shaders", shaders)
    monkeypatch.setattr(bs, "SHADERS", shaders)
    monkeypatch.setattr(bs, "LOCK", shaders / "spirv.lock.json")
    return bs, shaders


def test_every_shader_has_current_spirv():
    """Fails when a .comp changed after its .spv was built (content hashes, not mtimes:
    a git checkout does not keep file times). Fix: python scripts/build_shaders.py"""
    bs = _build_shaders_module()
    comps = sorted((ROOT / "shaders").glob("*.comp"))
    assert comps, "no shaders found"
    assert bs.stale(bs.load_lock()) == []


def test_staleness_check_detects_an_edited_shader(tmp_path, monkeypatch):
    bs, shaders = _shaders_copy(tmp_path, monkeypatch)
    assert bs.stale(bs.load_lock()) == []
    comp = shaders / "topk_select.comp"
    comp.write_text(comp.read_text() + "\n// edited\n")
    assert bs.stale(bs.load_lock()) == ["topk_select.comp"]


def test_abi_headers_are_generated_from_the_one_definition(tmp_path):
    """kernels/m2m_abi.h and shaders/m2m_abi.glsl equal what m2m_gpu/backends/abi.py
    renders (fix: python scripts/build_shaders.py), and an edit to either is detected."""
    bs = _build_shaders_module()
    assert bs.stale_headers() == []
    from m2m_gpu.backends import abi

    for rel in abi.HEADERS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    assert bs.stale_headers(tmp_path) == []
    header = tmp_path / "kernels" / "m2m_abi.h"
    header.write_text(header.read_text().replace("KEY_IP 1u", "KEY_IP 5u"))
    assert bs.stale_headers(tmp_path) == ["kernels/m2m_abi.h"]
    assert bs.write_headers(tmp_path) == ["kernels/m2m_abi.h"]
    assert bs.stale_headers(tmp_path) == []
    for key in abi.Key:  # every code reaches both languages under one name
        assert f"#define KEY_{key.name} {int(key)}u" in abi.render_c()
        assert f"const uint KEY_{key.name} = {int(key)}u;" in abi.render_glsl()


def test_shader_lock_covers_the_included_header(tmp_path, monkeypatch):
    """A change to the ABI header makes every shader that includes it stale."""
    bs, shaders = _shaders_copy(tmp_path, monkeypatch)
    (shaders / "m2m_abi.glsl").write_text((shaders / "m2m_abi.glsl").read_text() + "// x\n")
    including = sorted(c.name for c in shaders.glob("*.comp")
                       if '#include "m2m_abi.glsl"' in c.read_text())
    assert {"knn_distance.comp", "topk_select.comp", "cells_distance.comp"} <= set(including)
    assert bs.stale(bs.load_lock()) == including


@pytest.mark.skipif(shutil.which("glslangValidator") is None, reason="no glslangValidator")
def test_shaders_compile_cleanly(tmp_path):
    for comp in sorted((ROOT / "shaders").glob("*.comp")):
        res = subprocess.run(["glslangValidator", "-V", "--target-env", "vulkan1.1", str(comp),
                              "-o", str(tmp_path / "out.spv")], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sources_compile(tmp_path, arch):
    for cu in sorted((ROOT / "kernels").glob("*.cu")):
        res = subprocess.run(["nvcc", f"-arch={arch}", "-c", str(cu), "-o",
                              str(tmp_path / f"{cu.stem}.o")], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_wheel_ships_every_kernel_source(tmp_path):
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (build backend) not installed")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = tmp_path.glob("m2m_gpu-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [f"m2m_gpu/_data/shaders/{p.name}" for p in (ROOT / "shaders").iterdir()
                if p.suffix in (".comp", ".spv")]
    expected += [f"m2m_gpu/_data/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.cu")]
    assert len(expected) >= 5
    missing = [e for e in expected if e not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert "m2m_gpu/_data/shaders/spirv.lock.json" in names


def test_installed_package_finds_its_sources():
    from m2m_gpu._resources import kernel_dir, shader_dir

    assert (shader_dir() / "knn_distance.spv").is_file()
    assert (kernel_dir() / "knn.cu").is_file()


def backend_name_branches(paths) -> list[str]:
    """Comparisons of a backend's name with a backend name ("cpu", "cuda", "vulkan"):
    ``be.name == "cuda"``, ``backend in ("cpu", "vulkan")``, ``obj.backend != "cpu"``."""
    import ast

    names = {"cpu", "cuda", "vulkan"}

    def is_name_expr(node) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr in ("name", "backend")
        return isinstance(node, ast.Name) and node.id in ("backend", "be", "name")

    def constants(node) -> set:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(constants(e) for e in node.elts)) if node.elts else set()
        return set()

    found = []
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if any(is_name_expr(s) for s in sides) and \
                    any(constants(s) & names for s in sides):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_backend_name_branches_outside_the_backends():
    """The layers above m2m_gpu/backends/ ask capabilities and plumbing methods, never which
    backend they run on (the count was 27 in the library and 9 in bench/; it is 0)."""
    lib = [p for p in (ROOT / "m2m_gpu").rglob("*.py")
           if "backends" not in p.relative_to(ROOT).parts and p.name != "testing.py"]
    bench = list((ROOT / "bench").rglob("*.py"))
    assert backend_name_branches(lib + bench) == []
    # the detector itself finds them where they are allowed
    assert backend_name_branches([ROOT / "m2m_gpu" / "backends" / "__init__.py"])


def _cuda_signature(source: str, name: str) -> list[tuple[str, str]]:
    """(kind, name) of each parameter of kernel ``name`` in a .cu source (through the
    DISTANCE_KERNEL macro when it is defined by one)."""
    import re

    m = re.search(r'extern "C" __global__ void ' + name + r"\s*\(([^)]*)\)", source)
    if m is None and re.search(r"DISTANCE_KERNEL\(" + name + r",", source):
        m = re.search(r"#define DISTANCE_KERNEL\(name, body\).*?void name\(([^)]*)\)", source,
                      re.S)
    assert m is not None, f"kernel {name} not found"
    params = " ".join(m.group(1).replace("\\", " ").split())
    out = []
    for p in params.split(","):
        words = p.replace("*", " * ").split()
        pname = words[-1]
        if "*" in words:
            out.append(("ids" if "long" in words else "buf", pname))
        else:
            ctype = " ".join(w for w in words[:-1] if w != "const")
            out.append(({"unsigned int": "u32", "unsigned long long": "u64",
                         "long long": "i64", "float": "f32"}[ctype], pname))
    return out


def test_kernel_signatures_match_their_specs():
    """Each abi.KernelSpec is the kernel's signature in its .cu (parameter kinds and names,
    in order) and in its .comp (one binding per buffer in order, ids as int or uint, one
    uint push constant per scalar with the same names, and the same local size), so that
    the one launch in ops/ is right on both backends."""
    import re

    from m2m_gpu.backends.abi import SPECS

    for spec in SPECS:
        cu = (ROOT / "kernels" / f"{spec.module}.cu").read_text()
        want = [tuple(a.split()) for a in spec.args]
        assert _cuda_signature(cu, spec.name) == want, spec.name
        comp = (ROOT / "shaders" / f"{spec.name}.comp").read_text()
        bindings = re.findall(r"binding\s*=\s*(\d+)\)\s*(?:readonly|writeonly)?\s*buffer\s+\w+"
                              r"\s*\{\s*(\w+)\s+\w+\[\]", comp)
        assert [int(b) for b, _ in bindings] == list(range(len(spec.buffers))), spec.name
        kinds = [a.split()[0] for a in spec.args if a.split()[0] in ("buf", "ids")]
        for (_, gtype), kind in zip(bindings, kinds, strict=True):
            assert (gtype in ("int", "uint")) if kind == "ids" else True, (spec.name, gtype)
        block = re.search(r"uniform Push \{(.*?)\} pc;", comp, re.S).group(1)
        block = re.sub(r"//[^\n]*", "", block)
        fields = [f.strip() for decl in block.split(";") if decl.strip()
                  for f in decl.strip().removeprefix("uint").split(",")]
        assert fields == [n for _, n in spec.scalars], (spec.name, fields)
        local = re.search(r"local_size_x = (\d+), local_size_y = (\d+), local_size_z = (\d+)",
                          comp)
        assert tuple(int(v) for v in local.groups()) == spec.local, spec.name
