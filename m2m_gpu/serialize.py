"""Saving and loading indexes: ``write_index`` / ``read_index`` / ``serialize_index`` /
``deserialize_index`` (FAISS's names), and pickling through the same bytes, so an index
crosses process boundaries (``multiprocessing``, joblib, Ray).

Format, all little-endian::

    b"M2MIDX\\0\\1" | u32 header length | JSON header | raw arrays | u32 CRC32 of all before

The header names the class, its settings, the backend it was built on, and each array's
name, dtype and shape. Nothing is read with pickle. A flat index stores its vectors as
held (float16 stays float16; cosine vectors as normalised), an ``IndexIDMap`` also its ids,
and an ``IndexHRM2`` its trained centroids with its vectors and ids: it reloads without
k-means (the cells are laid out again from the centroids), and with a codec its trained
part (``codec_offset``, ``codec_scale``; after a projection ``codec_basis``,
``codec_mean``): the codes are made again. ``format_version`` is the oldest version that
reads everything in the file: 1, 2 with a codec, 3 with a projecting one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from typing import Any

import numpy as np

from .backends import NAMES, get_backend, probe
from .errors import InvalidInputError, StoreFormatError
from .locking import holding

MAGIC = b"M2MIDX\x00\x01"
FORMAT_VERSION = 3  # 2: an IndexHRM2 over compressed cells (its codec and SQ8 ranges);
# 3: a codec with a projection (its principal directions and mean)
_U32 = struct.Struct("<I")


def _flat_classes() -> dict:
    from . import index

    return {c.__name__: c for c in (index.IndexFlat, index.IndexFlatL2, index.IndexFlatIP,
                                    index.IndexFlatCosine)}


# ---- writing ----------------------------------------------------------------------------
def _flat_parts(index) -> tuple[dict, dict]:
    rows = np.asarray(index.backend.to_host(index._rows.view()))[: index.ntotal]
    return ({"class": type(index).__name__, "d": index.d, "metric": index.metric,
             "dtype": index.dtype.name}, {"vectors": rows})


def _idmap_parts(index) -> tuple[dict, dict]:
    head, arrays = _flat_parts(index.index)
    return {"class": "IndexIDMap", "inner": head}, {**arrays, "ids": index.id_map}


def _parts_of(index):
    """The function that takes ``index`` apart (checked before any lock is taken)."""
    from .hrm2 import IndexHRM2
    from .idmap import IndexIDMap
    from .index import IndexFlat

    for cls, parts in ((IndexIDMap, _idmap_parts), (IndexFlat, _flat_parts),
                       (IndexHRM2, _hrm2_parts)):
        if isinstance(index, cls):
            return parts
    raise InvalidInputError(f"cannot serialise a {type(index).__name__}: write_index takes "
                            "IndexFlat*, IndexIDMap and IndexHRM2 (SplatStore has its own "
                            "directory format: SplatStore(path=...), save())")


def _hrm2_parts(index) -> tuple[dict, dict]:
    h = index.hrm2
    head = {"class": "IndexHRM2", "d": index.d, "metric": index.metric,
            "n1": h.n1_opt, "n2": h.n2_opt, "p1": index.p1, "p2": index.p2,
            "adaptive": bool(index.adaptive), "ratio": index.ratio, "seed": h.seed,
            "next_id": int(index._next_id), "trained": bool(index.is_trained),
            "ip_norm": index._lift.norm if index._lift is not None else None,
            "target_recall": index.target_recall,
            "codec": index.codec, "rerank": index.rerank,
            "refine_iters": h.refine_iters, "spill": index.spill,
            "calibration": None if index.calibration is None else
            dataclasses.asdict(index.calibration)}
    arrays = {}
    if index.is_trained:
        c = h.centroids
        arrays = {"coarse": c.coarse, "fine": c.fine, "parent": c.parent,
                  "fine_ranges": c.fine_ranges}
        live = h.live_positions()
        arrays["vectors"] = h.rows_at(live)
        arrays["ids"] = h.ids[live]
        if h.layout.codec is not None:  # SQ8's ranges, a projection (codes made again)
            arrays |= {f"codec_{key}": value for key, value in h.layout.codec.state().items()
                       if key != "spec"}
    if index._sample is not None:
        arrays["calibration_sample"] = index._sample
    return head, arrays


def index_bytes(index) -> bytes:
    """The bytes of ``index`` in the format above."""
    parts = _parts_of(index)
    with holding(index, "read"):  # a consistent picture, while writers wait
        head, arrays = parts(index)
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    # the oldest version that holds everything written: a reader from before codecs
    # refuses an index it would load without them, and reads every other file
    version = 1 if not head.get("codec") else 3 if head["codec"].startswith("pca") else 2
    head = {**head, "format_version": version, "backend": index.backend.name,
            "arrays": [[k, a.dtype.newbyteorder("<").str, list(a.shape)]
                       for k, a in arrays.items()]}
    hjson = json.dumps(head, separators=(",", ":")).encode()
    body = b"".join([MAGIC, _U32.pack(len(hjson)), hjson] +
                    [a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
                     for a in arrays.values()])
    return body + _U32.pack(zlib.crc32(body))


def serialize_index(index) -> np.ndarray:
    """The index as a NumPy uint8 array (``faiss.serialize_index``)."""
    return np.frombuffer(index_bytes(index), dtype=np.uint8).copy()


def write_index(index, path: str | os.PathLike) -> None:
    """Write ``index`` to the file ``path`` (replaced atomically: a temporary file, fsynced,
    renamed over it)."""
    data = index_bytes(index)
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- reading ----------------------------------------------------------------------------
def _parse(data: bytes, where: str):
    if len(data) < len(MAGIC) + 8 or data[: len(MAGIC)] != MAGIC:
        raise StoreFormatError(f"{where}: not an m2m-gpu index (bad magic)")
    (crc,) = _U32.unpack_from(data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise StoreFormatError(f"{where}: checksum mismatch (damaged or truncated)")
    (hl,) = _U32.unpack_from(data, len(MAGIC))
    off = len(MAGIC) + 4
    try:
        head = json.loads(data[off : off + hl])
        if head["format_version"] > FORMAT_VERSION:
            raise StoreFormatError(f"{where}: format version {head['format_version']} is "
                                   "newer than this m2m-gpu reads; upgrade m2m-gpu")
        off += hl
        arrays = {}
        for name, dt, shape in head["arrays"]:
            dtype = np.dtype(dt)
            count = int(np.prod(shape)) if shape else 1
            arrays[name] = np.frombuffer(data, dtype, count, off).reshape(shape).astype(
                dtype.newbyteorder("="))
            off += count * dtype.itemsize
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(f"{where}: malformed index header ({exc})") from None
    if off != len(data) - 4:
        raise StoreFormatError(f"{where}: {len(data) - 4 - off} unexpected bytes")
    return head, arrays


def _backend(name: str, backend):
    if backend is not None:
        return get_backend(backend)
    return get_backend(name if name in NAMES and probe(name).available else None)


def _flat_from(head: dict, arrays: dict, be):
    from .index import IndexFlat

    cls = _flat_classes().get(head["class"])
    if cls is None:
        raise StoreFormatError(f"unknown flat index class {head['class']!r}")
    index = cls.__new__(cls)
    IndexFlat.__init__(index, head["d"], head["metric"], be, head["dtype"])
    rows = arrays["vectors"]
    if rows.ndim != 2 or rows.shape[1] != index.d:
        raise StoreFormatError(f"vectors of shape {rows.shape} for d={index.d}")
    if rows.shape[0]:  # as held: no second normalisation, no rounding
        index._load_rows(rows)
    return index


def _hrm2_from(head: dict, arrays: dict, be):
    from .hrm2 import IndexHRM2
    from .hrm2.search import RERANK
    from .hrm2.train import Centroids

    index = IndexHRM2(head["d"], head["n1"], head["n2"], head["metric"], be.name,
                      seed=head["seed"], p1=head["p1"], p2=head["p2"],
                      adaptive=head["adaptive"], ratio=head["ratio"],
                      codec=head.get("codec"), rerank=head.get("rerank", RERANK),
                      spill=bool(head.get("spill", False)),
                      **({"refine_iters": head["refine_iters"]} if "refine_iters" in head
                         else {}))
    if index._lift is not None:
        index._lift.norm = head["ip_norm"]
    if head["trained"]:
        index.hrm2.set_centroids(Centroids(arrays["coarse"], arrays["fine"],
                                           arrays["parent"], arrays["fine_ranges"]))
        if "codec_offset" in arrays:
            from .codecs import Codec

            index.hrm2.layout.set_codec(Codec.from_state(
                {"spec": head["codec"]} | {key[len("codec_"):]: value for key, value in
                                           arrays.items() if key.startswith("codec_")}))
        index._add(arrays["vectors"], arrays["ids"])
    index._next_id = int(head["next_id"])
    # the recall target last: loading the rows above must not recalibrate
    index.target_recall = head.get("target_recall")
    index._sample = arrays.get("calibration_sample")
    if head.get("calibration") is not None:
        from .hrm2.calibrate import Calibration

        index.calibration = Calibration(**head["calibration"])
    return index


def _from(data: bytes, where: str, backend=None):
    head, arrays = _parse(bytes(data), where)
    be = _backend(head.get("backend", "cpu"), backend)
    try:
        if head["class"] == "IndexIDMap":
            from .idmap import IndexIDMap

            out = IndexIDMap(_flat_from(head["inner"], {"vectors": arrays["vectors"][:0]}, be))
            out.index._load_rows(arrays["vectors"])
            out.id_map = arrays["ids"].astype(np.int64)
            if out.id_map.shape[0] != out.index.ntotal:
                raise StoreFormatError(f"{where}: {out.id_map.shape[0]} ids for "
                                       f"{out.index.ntotal} vectors")
            return out
        if head["class"] == "IndexHRM2":
            return _hrm2_from(head, arrays, be)
        return _flat_from(head, arrays, be)
    except (KeyError, TypeError) as exc:
        raise StoreFormatError(f"{where}: malformed index ({exc})") from None


def deserialize_index(data: Any, backend=None):
    """An index from ``serialize_index``'s array (or bytes); on ``backend``, else the one it
    was built on if available here, else the default."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    return _from(raw, "serialized index", backend)


def read_index(path: str | os.PathLike, backend=None):
    """The index ``write_index`` wrote to ``path`` (see :func:`deserialize_index`)."""
    with open(path, "rb") as f:
        return _from(f.read(), os.fspath(path), backend)


def _from_bytes(data: bytes):
    """Unpickling: the index, on the backend it was built on if this process has it."""
    return _from(data, "pickled index")
