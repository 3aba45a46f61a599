"""The one definition of what the kernels and the Python drivers agree on.

Key codes (what a distance kernel writes, smaller is better), the splat parameter row, and
the seed entry of a running top-k. ``kernels/m2m_abi.h`` (CUDA) and ``shaders/m2m_abi.glsl``
(GLSL) are generated from this module by ``python scripts/build_shaders.py``; a test fails
when either file is stale, as it does for SPIR-V.

Adding a key code: add a member to :class:`Key`, run ``scripts/build_shaders.py``, then use
``KEY_<NAME>`` in the ``.cu`` and ``.comp`` epilogues.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property


class Key(IntEnum):
    """Key codes of the distance kernels (``knn_distance``, ``cells_distance``).

    ``d2 = sum((q - x)^2)`` in the direct form throughout.
    """

    L2 = 0  # d2
    IP = 1  # -(q . x)
    SPLAT = 2  # kappa * d2 - log(alpha) (= -log-score); alpha <= 0 gives +inf
    DISTANCE = 3  # d2 where alpha > 0, +inf where alpha <= 0 (masked or deleted rows)


# Splat parameters: one float32 row of PARAM_WIDTH per splat (one vec4 / float4 load).
PARAM_ALPHA = 0
PARAM_KAPPA = 1
PARAM_TICK = 2
PARAM_WIDTH = 4  # [alpha, kappa, last_tick, unused]: 16 bytes

# The entries a running top-k starts from. The key is the NaN whose order-preserving uint
# is the largest of all (0xFFFFFFFF), so every real key, +inf and NaN included, beats it and
# a seed never survives once k real rows were seen; its id is -1.
SEED_KEY_BITS = 0x7FFFFFFF
SEED_ID = -1
# Kernels write every NaN key as this one (a positive quiet NaN): NVIDIA arithmetic makes
# 0x7FFFFFFF, the seed's own bits, and x86 (lavapipe) makes 0xFFC00000, which the unsigned
# order puts before -inf. Canonical, a NaN ranks after +inf and before the seeds, as NumPy
# sorts it.
CANONICAL_NAN_BITS = 0x7FC00000

# topk_select flags: ids read from a buffer (merging partial results) instead of
# id_base + column; no running best read (the first pass of a split selection).
SELECT_IDS = 1
SELECT_NO_BEST = 2

# How cells_distance reads its rows (m2m_gpu.codecs): float32; float16 (IEEE binary16 bits,
# two per word in GLSL); SQ8 (one byte per dimension, four per word, rows padded to whole
# words, widened as dequant[c] + dequant[d + c] * byte).
CODEC_F32 = 0
CODEC_F16 = 1
CODEC_SQ8 = 2

# The largest number of workgroups (thread blocks) any launch puts on grid y or z. CUDA's
# limit is 65535 on y and z; Vulkan guarantees 65535 on every dimension. Drivers split
# their launches so that no dimension exceeds it (tests lower it through the backend's
# ``max_grid`` attribute to run the split path on small inputs).
MAX_GRID = 65535


@dataclass(frozen=True)
class KernelSpec:
    """A kernel's signature, the same in its ``.cu`` and its ``.comp``.

    ``args`` in the CUDA parameter order, each ``"<kind> <name>"``: ``buf`` (a float or
    32-bit word buffer), ``ids`` (an index buffer: ``long long`` on CUDA, ``int`` in GLSL),
    or a scalar ``u32`` / ``u64`` / ``i64`` / ``f32`` (``unsigned int``, ``unsigned long
    long``, ``long long``, ``float`` on CUDA; in GLSL every scalar is a ``uint`` push
    constant, in this order, and 64-bit ones must fit in 32 bits). GLSL bindings are the
    buffers in this order. ``local``: the CUDA block and the GLSL ``local_size``.
    ``tests/test_sources.py`` checks both sources against these specs.
    """

    name: str
    module: str  # kernels/<module>.cu
    args: tuple[str, ...]
    local: tuple[int, int, int]

    @cached_property
    def kinds(self) -> list[str]:
        """The kind of each argument, in order (parsed once: launches read it)."""
        return [a.split()[0] for a in self.args]

    @cached_property
    def buffers(self) -> list[str]:
        return [a.split()[1] for a in self.args if a.split()[0] in ("buf", "ids")]

    @cached_property
    def scalars(self) -> list[tuple[str, str]]:
        return [tuple(a.split()) for a in self.args if a.split()[0] not in ("buf", "ids")]


KNN_DISTANCE = KernelSpec(
    "knn_distance", "knn",
    ("buf q", "buf x", "buf keys", "u32 mq", "u32 t", "u32 d", "u64 offset", "u32 metric",
     "buf params", "u32 rows_f16"), (16, 16, 1))
KNN_DISTANCE_ROWS = KernelSpec(
    "knn_distance_rows", "knn",
    ("buf q", "buf x", "buf keys", "u32 mq", "u32 t", "u32 d", "u64 offset", "u32 metric",
     "buf params", "u32 rows_f16"), (256, 1, 1))
TOPK_SELECT = KernelSpec(
    "topk_select", "knn",
    ("buf tile", "ids tile_ids", "buf bk_in", "ids bi_in", "buf bk_out", "ids bi_out",
     "u32 t", "u32 k", "i64 id_base", "u32 segments", "u32 flags"), (256, 1, 1))
CELLS_DISTANCE = KernelSpec(
    "cells_distance", "knn",
    ("buf q", "buf x", "ids segs", "buf keys", "u32 m", "u32 d", "u32 t", "u32 p",
     "u32 mode", "buf params", "u32 fill", "buf dequant", "u32 codec"), (128, 1, 1))
ENERGY_ACCUMULATE = KernelSpec(
    "energy_accumulate", "splat",
    ("buf tile", "buf state", "buf grad", "buf params", "buf mu", "u32 t", "u32 d",
     "u64 offset", "u32 want_grad"), (256, 1, 1))
SPECS = (KNN_DISTANCE, KNN_DISTANCE_ROWS, TOPK_SELECT, CELLS_DISTANCE, ENERGY_ACCUMULATE)

_CONSTANTS = {
    **{f"KEY_{k.name}": int(k) for k in Key},
    "PARAM_ALPHA": PARAM_ALPHA,
    "PARAM_KAPPA": PARAM_KAPPA,
    "PARAM_TICK": PARAM_TICK,
    "PARAM_WIDTH": PARAM_WIDTH,
    "SEED_KEY_BITS": SEED_KEY_BITS,
    "CANONICAL_NAN_BITS": CANONICAL_NAN_BITS,
    "SELECT_IDS": SELECT_IDS,
    "SELECT_NO_BEST": SELECT_NO_BEST,
    "CODEC_F32": CODEC_F32,
    "CODEC_F16": CODEC_F16,
    "CODEC_SQ8": CODEC_SQ8,
}

_BANNER = ("Generated from m2m_gpu/backends/abi.py by scripts/build_shaders.py; "
           "do not edit.")


def _value(name: str, value: int) -> str:
    return f"0x{value:08X}u" if name.endswith("_BITS") else f"{value}u"


def render_c() -> str:
    """The CUDA header (``kernels/m2m_abi.h``)."""
    lines = [f"// {_BANNER}", "#pragma once"]
    lines += [f"#define {n} {_value(n, v)}" for n, v in _CONSTANTS.items()]
    return "\n".join(lines) + "\n"


def render_glsl() -> str:
    """The GLSL include (``shaders/m2m_abi.glsl``)."""
    lines = [f"// {_BANNER}"]
    lines += [f"const uint {n} = {_value(n, v)};" for n, v in _CONSTANTS.items()]
    return "\n".join(lines) + "\n"


HEADERS = {"kernels/m2m_abi.h": render_c, "shaders/m2m_abi.glsl": render_glsl}
