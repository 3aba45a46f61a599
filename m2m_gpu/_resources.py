"""Where the kernel sources are: inside the installed wheel, or at the top of a source tree."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def _find(kind: str) -> Path:
    for candidate in (_PKG / "_data" / kind, _PKG.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"m2m_gpu cannot find its '{kind}/' directory (looked in {_PKG / '_data'} and "
        f"{_PKG.parent}); the installation is incomplete"
    )


def shader_dir() -> Path:
    """Directory with the GLSL compute shaders (.comp) and their SPIR-V (.spv)."""
    return _find("shaders")


def kernel_dir() -> Path:
    """Directory with the CUDA sources (.cu)."""
    return _find("kernels")
