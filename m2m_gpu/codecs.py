"""Compressed row storage for scans: float16 and 8-bit scalar quantisation (SQ8).

A codec maps float32 rows to codes and back; the scan kernels read the codes and widen them
in registers, so a compressed scan reads half (float16) or a quarter (SQ8) of the bytes of
a float32 one and ranks on the distances to the *decoded* rows. Decoding is affine per
dimension, ``x[j] = offset[j] + scale[j] * code[j]``:

* ``fp16``: IEEE binary16 values, ``offset 0, scale 1`` (FAISS's ``QT_fp16``); values
  beyond float16's range are clipped to +-65504 (no code is infinite).
* ``sq8``: one byte per dimension over that dimension's trained range,
  ``scale = (max - min) / 255`` (FAISS's ``QT_8bit``); values outside the trained range
  are clipped to it. Codes are stored four per 32-bit word, dimension ``4w + b`` in byte
  ``b`` (little-endian) of word ``w``, each row padded to whole words with zero codes
  (``offset`` and ``scale`` are 0 there, so padding adds nothing to a distance).

What the kernels read: the code array (``float16[n, d]``, or ``uint32[n, ceil(d / 4)]``)
and ``dequant`` (``float32[2, d]``: the offsets, then the scales). This module is also the
reference: a compressed scan must equal an exact scan over :meth:`Codec.decode` of the
codes, and the callers re-rank its best candidates on the float32 rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

NAMES = ("fp16", "sq8")
SQ8_LEVELS = 255
FP16_MAX = 65504.0


def check_name(name) -> str | None:
    """``name`` (None, "fp16" or "sq8", any case) or a clear error."""
    from .errors import InvalidInputError

    if name is None:
        return None
    if isinstance(name, str) and name.lower() in NAMES:
        return name.lower()
    raise InvalidInputError(f"codec must be None, 'fp16' or 'sq8', got {name!r}")


@dataclass(frozen=True)
class Codec:
    name: str
    offset: np.ndarray  # float32[d]
    scale: np.ndarray  # float32[d]

    @classmethod
    def fp16(cls, d: int) -> Codec:
        return cls("fp16", np.zeros(d, np.float32), np.ones(d, np.float32))

    @classmethod
    def train(cls, name: str, x: np.ndarray) -> Codec:
        """The codec ``name`` for rows like ``x`` (SQ8: the range of each dimension of
        ``x``; an empty ``x`` gives the range [0, 0])."""
        x = np.asarray(x, np.float32)
        d = x.shape[1]
        if name == "fp16":
            return cls.fp16(d)
        if name != "sq8":
            raise ValueError(f"unknown codec {name!r}")
        if not x.shape[0]:
            return cls.from_range(np.zeros(d, np.float32), np.zeros(d, np.float32))
        return cls.from_range(x.min(axis=0), x.max(axis=0))

    @classmethod
    def from_range(cls, lo: np.ndarray, hi: np.ndarray) -> Codec:
        """SQ8 over the per-dimension range ``[lo, hi]`` (measured elsewhere)."""
        lo = np.asarray(lo, np.float32)
        return cls("sq8", lo, ((np.asarray(hi, np.float64) - lo) / SQ8_LEVELS)
                   .astype(np.float32))

    @property
    def d(self) -> int:
        return int(self.offset.shape[0])

    @cached_property
    def dequant(self) -> np.ndarray:
        """``float32[2, d]``: offsets, then scales (what the kernels read)."""
        return np.ascontiguousarray(np.stack([self.offset, self.scale]), dtype=np.float32)

    @property
    def row_bytes(self) -> int:
        return 2 * self.d if self.name == "fp16" else 4 * (-(-self.d // 4))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes of the float32 rows ``x`` (``float16[n, d]`` or ``uint32[n, ceil(d/4)]``)."""
        x = np.asarray(x, np.float32)
        if self.name == "fp16":  # clipped to float16's finite range: no code is inf
            return np.clip(x, -FP16_MAX, FP16_MAX).astype(np.float16)
        n, d = x.shape
        safe = np.where(self.scale > 0, self.scale, np.float32(1.0))
        c = np.rint((x - self.offset) / safe)
        out = np.zeros((n, 4 * (-(-d // 4))), np.uint8)
        out[:, :d] = np.clip(c, 0, SQ8_LEVELS).astype(np.uint8)
        return out.view("<u4")

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The float32 rows the codes stand for (what a compressed scan measures)."""
        if self.name == "fp16":
            return np.asarray(codes, np.float16).astype(np.float32)
        raw = np.ascontiguousarray(codes, dtype="<u4").view(np.uint8)[:, : self.d]
        return (self.offset + self.scale * raw.astype(np.float32)).astype(np.float32)

    def sqnorms(self, codes: np.ndarray, step: int = 1 << 16) -> np.ndarray:
        """Squared norms of the decoded rows (a block at a time): the cpu scan ranks with
        them."""
        out = np.empty(codes.shape[0], np.float32)
        for s in range(0, codes.shape[0], step):
            x = self.decode(codes[s : s + step])
            out[s : s + step] = np.einsum("ij,ij->i", x, x)
        return out

    @classmethod
    def of(cls, codes, d: int, dequant) -> Codec:
        """The codec of a scan's codes (float16, or SQ8 with ``dequant`` [2, d])."""
        if np.dtype(codes.dtype) == np.float16:
            return cls.fp16(d)
        dq = np.asarray(dequant, np.float32)
        return cls("sq8", dq[0], dq[1])

    def state(self) -> dict:
        """What saving keeps (see :meth:`from_state`)."""
        return {"name": self.name, "offset": self.offset, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict) -> Codec:
        return cls(str(state["name"]), np.asarray(state["offset"], np.float32),
                   np.asarray(state["scale"], np.float32))


def check_codes(codes, d: int, dequant) -> str:
    """What a scan's row array holds (``"f32"``, ``"fp16"``, ``"sq8"``), checked against
    the query dimension ``d``: an error naming the problem otherwise."""
    from .errors import InvalidInputError

    kind = codes_dtype(codes)
    width = {"f32": d, "fp16": d, "sq8": -(-d // 4)}[kind]
    if len(codes.shape) != 2 or codes.shape[1] != width:
        raise InvalidInputError(f"{kind} rows for {d}-dimensional queries must have "
                                f"{width} columns, got shape {tuple(codes.shape)}")
    if kind == "sq8":
        if dequant is None or np.shape(dequant) != (2, d):
            raise InvalidInputError(f"SQ8 codes need their dequant table of shape (2, {d}) "
                                    f"(offsets, scales), got "
                                    f"{None if dequant is None else np.shape(dequant)}")
    return kind


def codes_dtype(codes) -> str:
    """``"f32"``, ``"fp16"`` or ``"sq8"``: what a scan's row array holds (by its dtype)."""
    dt = np.dtype(codes.dtype)
    if dt == np.float16:
        return "fp16"
    if dt == np.uint32:
        return "sq8"
    return "f32"
