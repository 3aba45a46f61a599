"""Compressed row storage for scans: float16 and 8-bit scalar quantisation (SQ8), each
optionally after a PCA projection.

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

``pcaN,fp16`` and ``pcaN,sq8`` (FAISS's factory spelling) code a row of ``d`` dimensions
by its ``N`` coordinates on the leading principal directions of the training rows,
``y = B (x - mean)`` (``B`` orthonormal rows), and queries the same way. The squared
distance of two projected rows is a lower bound of theirs, short of the part outside the
``N`` directions: the scan reads ``N / d`` of the values and ranks close to the exact
order where those directions hold most of the variance (sentence embeddings: 128 of 384
keep about 80%), and the re-ranking on the float32 rows repairs the rest (with more
candidates than without the projection: see ``rerank``). Adding the residual lengths
(the lower bound ``(|r_q| - |r_x|)^2``, or ``|r_x|^2``) ranked no better on the text
embeddings of ``bench/bench_hrm2.py``; the plain projection is kept.

What the kernels read: the code array (``float16[n, D]``, or ``uint32[n, ceil(D / 4)]``,
``D`` the code dimension: ``d``, or ``N``) and ``dequant`` (``float32[2, D]``: the
offsets, then the scales), and the queries as :meth:`Codec.queries` makes them. This
module is also the reference: a compressed scan must equal an exact scan of those queries
over :meth:`Codec.decode` of the codes, and the callers re-rank its best candidates on
the float32 rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

NAMES = ("fp16", "sq8")
SQ8_LEVELS = 255
FP16_MAX = 65504.0
PCA_SAMPLE = 1 << 16  # rows the principal directions are measured on (a strided sample)
_SPEC = re.compile(r"^(?:pca([0-9]+),)?(fp16|sq8)$")


def parse(spec: str) -> tuple[int | None, str]:
    """``(N or None, quantiser)`` of a checked codec spec (see :func:`check_name`)."""
    dims, name = _SPEC.match(spec).groups()
    return (None if dims is None else int(dims)), name


def check_name(spec, d: int | None = None) -> str | None:
    """``spec`` (None, ``"fp16"``, ``"sq8"``, ``"pcaN,fp16"`` or ``"pcaN,sq8"``, any case,
    spaces ignored) in its canonical spelling, or a clear error; with ``d``, ``N`` must
    be below it (from 1 to ``d - 1``)."""
    from .errors import InvalidInputError

    if spec is None:
        return None
    form = spec.lower().replace(" ", "") if isinstance(spec, str) else None
    hit = None if form is None else _SPEC.match(form)
    if hit is None:
        raise InvalidInputError(f"codec must be None, 'fp16', 'sq8', 'pcaN,fp16' or "
                                f"'pcaN,sq8', got {spec!r}")
    dims = None if hit.group(1) is None else int(hit.group(1))
    if dims is not None and (dims < 1 or (d is not None and dims >= d)):
        raise InvalidInputError(f"codec {spec!r}: the projection keeps N dimensions of the "
                                f"{d if d is not None else 'd'}, N from 1 to "
                                f"{'d - 1' if d is None else d - 1}, got {dims}")
    return form if dims is None else f"pca{dims},{hit.group(2)}"


@dataclass(frozen=True)
class Codec:
    name: str  # the quantiser: "fp16" or "sq8"
    offset: np.ndarray  # float32[D]
    scale: np.ndarray  # float32[D]
    basis: np.ndarray | None = None  # float32[N, d]: the principal directions (rows)
    mean: np.ndarray | None = None  # float32[d]

    @classmethod
    def fp16(cls, d: int) -> Codec:
        return cls("fp16", np.zeros(d, np.float32), np.ones(d, np.float32))

    @classmethod
    def train(cls, spec: str, x: np.ndarray) -> Codec:
        """The codec ``spec`` for rows like ``x`` (SQ8: the range of each coded dimension
        over ``x``; an empty ``x`` gives the range [0, 0]; a projection: the principal
        directions of ``x``, on at most ``PCA_SAMPLE`` of its rows)."""
        x = np.asarray(x, np.float32)
        dims, name = parse(check_name(spec))
        if dims is None:
            return cls._quantiser(name, x)
        basis, mean = principal_directions(x, dims)
        proj = cls(name, np.zeros(dims, np.float32), np.ones(dims, np.float32), basis, mean)
        if name == "fp16" or not x.shape[0]:
            return cls(name, *cls._quantiser(name, x[:0, :dims]).dequant, basis, mean)
        step = PCA_SAMPLE  # the ranges of the projected rows, a block at a time
        lo = np.full(dims, np.inf, np.float32)
        hi = np.full(dims, -np.inf, np.float32)
        for s in range(0, x.shape[0], step):
            z = proj.project(x[s : s + step])
            np.minimum(lo, z.min(axis=0), out=lo)
            np.maximum(hi, z.max(axis=0), out=hi)
        q = cls.from_range(lo, hi)
        return cls(name, q.offset, q.scale, basis, mean)

    @classmethod
    def _quantiser(cls, name: str, z: np.ndarray) -> Codec:
        d = z.shape[1]
        if name == "fp16":
            return cls.fp16(d)
        if name != "sq8":
            raise ValueError(f"unknown codec {name!r}")
        if not z.shape[0]:
            return cls.from_range(np.zeros(d, np.float32), np.zeros(d, np.float32))
        return cls.from_range(z.min(axis=0), z.max(axis=0))

    @classmethod
    def from_range(cls, lo: np.ndarray, hi: np.ndarray) -> Codec:
        """SQ8 over the per-dimension range ``[lo, hi]`` (measured elsewhere)."""
        lo = np.asarray(lo, np.float32)
        return cls("sq8", lo, ((np.asarray(hi, np.float64) - lo) / SQ8_LEVELS)
                   .astype(np.float32))

    @property
    def d(self) -> int:
        """The code dimension (``N`` after a projection)."""
        return int(self.offset.shape[0])

    @property
    def d_in(self) -> int:
        """The dimension of the rows coded (``d``)."""
        return self.d if self.basis is None else int(self.basis.shape[1])

    @property
    def projected(self) -> bool:
        return self.basis is not None

    @property
    def spec(self) -> str:
        return self.name if self.basis is None else f"pca{self.basis.shape[0]},{self.name}"

    @cached_property
    def dequant(self) -> np.ndarray:
        """``float32[2, D]``: offsets, then scales (what the kernels read)."""
        return np.ascontiguousarray(np.stack([self.offset, self.scale]), dtype=np.float32)

    @property
    def row_bytes(self) -> int:
        return 2 * self.d if self.name == "fp16" else 4 * (-(-self.d // 4))

    def project(self, x: np.ndarray) -> np.ndarray:
        """The rows as the codes hold them: ``x`` itself, or ``B (x - mean)`` (this module's
        reference arithmetic)."""
        x = np.asarray(x, np.float32)
        if self.basis is None:
            return x
        return np.ascontiguousarray((x - self.mean) @ self.basis.T, dtype=np.float32)

    def queries(self, q: np.ndarray) -> np.ndarray:
        """The queries a scan of the codes takes (C-contiguous float32): ``q`` itself, or
        projected as the rows are (compiled where Numba is: without a BLAS call, whose
        spinning threads would hold the cores the scan that follows needs)."""
        q = np.asarray(q, np.float32)
        if self.basis is None:
            return q
        from .backends import _jit

        if _jit.available():
            return _jit.project(q, self.basis, self.mean)
        return self.project(q)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes of the float32 rows ``x`` (``float16[n, D]`` or ``uint32[n, ceil(D/4)]``)."""
        x = self.project(x)
        if self.name == "fp16":  # clipped to float16's finite range: no code is inf
            return np.clip(x, -FP16_MAX, FP16_MAX).astype(np.float16)
        n, d = x.shape
        safe = np.where(self.scale > 0, self.scale, np.float32(1.0))
        c = np.rint((x - self.offset) / safe)
        out = np.zeros((n, 4 * (-(-d // 4))), np.uint8)
        out[:, :d] = np.clip(c, 0, SQ8_LEVELS).astype(np.uint8)
        return out.view("<u4")

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The float32 rows the codes stand for, in the code space (what a compressed scan
        measures; after a projection, the ``N`` coordinates ``y``)."""
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
        """The codec of a scan's codes (float16, or SQ8 with ``dequant`` [2, d]), in the
        code space (the queries are the scan's)."""
        if np.dtype(codes.dtype) == np.float16:
            return cls.fp16(d)
        dq = np.asarray(dequant, np.float32)
        return cls("sq8", dq[0], dq[1])

    def state(self) -> dict:
        """What saving keeps (see :meth:`from_state`): arrays, and the spec."""
        out = {"spec": self.spec, "offset": self.offset, "scale": self.scale}
        if self.basis is not None:
            out |= {"basis": self.basis, "mean": self.mean}
        return out

    @classmethod
    def from_state(cls, state: dict) -> Codec:
        dims, name = parse(check_name(str(state["spec"])))
        f32 = lambda key: np.asarray(state[key], np.float32)  # noqa: E731
        return cls(name, f32("offset"), f32("scale"),
                   None if dims is None else f32("basis"),
                   None if dims is None else f32("mean"))


def principal_directions(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """``(basis float32[dims, d], mean float32[d])``: the ``dims`` directions of largest
    variance of the rows ``x`` (on a strided sample of at most ``PCA_SAMPLE`` rows), each
    signed so its largest component is positive; with no rows, the first axes."""
    n, d = x.shape
    if not n:
        return np.eye(dims, d, dtype=np.float32), np.zeros(d, np.float32)
    s = x[:: max(1, -(-n // PCA_SAMPLE))].astype(np.float64)
    mean = s.mean(axis=0)
    s -= mean
    _, vecs = np.linalg.eigh(s.T @ s)
    basis = vecs[:, ::-1][:, :dims].T  # largest variance first
    big = np.abs(basis).argmax(axis=1)
    basis *= np.sign(basis[np.arange(dims), big])[:, None]
    return np.ascontiguousarray(basis, np.float32), mean.astype(np.float32)


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
