"""Durable storage of a SplatStore (SPEC section 5): a directory with a manifest, flat
little-endian data files and a write-ahead log.

Directory layout (generation ``g`` = the checkpoint the files belong to)::

    manifest.json        format version, dim, dtype, metric, options, counts, generation,
                         and the size and CRC32 of every data file of generation g
    vectors-g.f32        float32[slots, dim], little-endian, row-major (memory-mappable)
    params-g.f32         float32[slots, 4]: alpha, kappa, last tick, -
    hits-g.i64           int64[slots]
    flags-g.u8           uint8[slots]: bit 0 live, bit 1 dirty (merge candidate)
    records-g.jsonl      one JSON line per slot: [id, metadata] or null for a free slot
    state-g.json         clock, next generated id, aliases (merged id -> survivor)
    wal-g.log            the write-ahead log of every change since checkpoint g
    m2m-cold-*.f32       scratch: vectors a tiered store demoted to its cold tier since the
                         checkpoint (also in the log); removed on open

A checkpoint writes generation g+1's files, then the new manifest (written to a temporary
file, fsynced and renamed over the old one: the commit point), then removes generation g.
A crash at any moment leaves either the old manifest with its files and log, or the new
one with its files and an empty log.

Log records: ``u32 length | u32 CRC32 | body`` with ``body = u32 header length | JSON header
| raw little-endian arrays`` (dtype and shape of each are in the header). On open the log is
read up to the first record whose length or CRC does not check out; a torn last record is
cut, damage followed by more records is refused (or moved aside with ``repair=True``).
Nothing is ever read with pickle: arrays are raw bytes, everything else JSON.

Record kinds (format version 2; :mod:`m2m_gpu.store.ops` writes and applies them): ``add``
(ids, metadata, the dedup aliases chosen, the vectors stored), ``delete``, ``meta``,
``feedback`` (queries and ids), ``decay`` (the new clock), ``prune`` (the ids removed),
``merge`` (one round's absorbed/survivor pairs and the candidates still pending),
``compact``, and ``end``, which closes a group opened by a record whose header has
``"group": "begin"`` (a consolidation; replay applies a group only once closed). Version 1
logged ``consolidate`` as an intent and left automatic consolidations to replay.

``fsync`` policies: ``"every"`` (default): each change is fsynced before the call returns,
so an acknowledged write survives a process kill and a power loss. ``"batch"``: fsync once
every ``BATCH_RECORDS`` records and on checkpoint/close; a process kill loses nothing
acknowledged (the bytes are in the OS page cache), a power loss can lose up to the last
``BATCH_RECORDS`` acknowledged writes. ``"off"``: never fsync (the OS writes back when it
likes): for bulk loads followed by ``checkpoint()``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreFormatError

FORMAT_VERSION = 2  # 2: log records hold outcomes (prune, merge, dedup aliases)
WAL_MAGIC = b"M2MWAL01"
BATCH_RECORDS = 64
FSYNC_POLICIES = ("every", "batch", "off")
_REC = struct.Struct("<II")  # length, crc32
_U32 = struct.Struct("<I")
_WAL_HEAD = struct.Struct("<8sQ")  # magic, generation
WAL_HEAD_BYTES = _WAL_HEAD.size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def crc32_file(path: Path, chunk: int = 1 << 22) -> int:
    """CRC32 of a file, streamed (never the whole file in memory)."""
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


def write_file(path: Path, data: bytes | np.ndarray) -> dict:
    """Write, fsync; return ``{"bytes", "crc32"}``."""
    return write_chunks(path, [data.tobytes() if isinstance(data, np.ndarray) else data])


def write_chunks(path: Path, chunks) -> dict:
    """Write an iterable of byte strings one after another (never all in memory), fsync;
    return ``{"bytes", "crc32"}``."""
    crc, size = 0, 0
    with open(path, "wb") as f:
        for raw in chunks:
            f.write(raw)
            crc, size = zlib.crc32(raw, crc), size + len(raw)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": size, "crc32": crc}


def le(a: np.ndarray, dtype: str) -> np.ndarray:
    """C-contiguous little-endian copy (or view) of ``a`` as ``dtype``."""
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))


# ---- write-ahead log ---------------------------------------------------------------------------
@dataclass
class Record:
    op: str
    header: dict
    arrays: list[np.ndarray]
    offset: int = 0  # where the record starts in its log


def encode_record(op: str, header: dict, arrays: list[np.ndarray]) -> bytes:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    specs = [[a.dtype.newbyteorder("<").str, list(a.shape)] for a in arrays]
    head = json.dumps({"op": op, "arrays": specs, **header}, separators=(",", ":")).encode()
    body = b"".join([_U32.pack(len(head)), head] +
                    [a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays])
    return _REC.pack(len(body), zlib.crc32(body)) + body


def decode_body(body: bytes) -> Record:
    (hl,) = _U32.unpack_from(body, 0)
    header = json.loads(body[4 : 4 + hl])
    off = 4 + hl
    arrays = []
    for dt, shape in header.pop("arrays"):
        dtype = np.dtype(dt)
        count = int(np.prod(shape)) if shape else 1
        a = np.frombuffer(body, dtype=dtype, count=count, offset=off).reshape(shape)
        arrays.append(a.astype(dtype.type, copy=True))  # native byte order
        off += count * dtype.itemsize
    if off != len(body):
        raise ValueError("record body size does not match its arrays")
    return Record(header.pop("op"), header, arrays)


def read_wal(path: Path, generation: int) -> tuple[list[Record], int, int]:
    """``(records, good_bytes, file_bytes)``: every record up to the first torn or corrupt
    one; ``good_bytes`` is where that one starts. See :func:`damage_in_the_middle`."""
    data = path.read_bytes()
    if len(data) < _WAL_HEAD.size:
        return [], 0, len(data)
    magic, gen = _WAL_HEAD.unpack_from(data, 0)
    if magic != WAL_MAGIC:
        raise StoreFormatError(f"{path}: not an m2m-gpu write-ahead log")
    if gen != generation:
        raise StoreFormatError(f"{path}: log of generation {gen}, manifest says {generation}")
    off, records = _WAL_HEAD.size, []
    while off + _REC.size <= len(data):
        length, crc = _REC.unpack_from(data, off)
        end = off + _REC.size + length
        if end > len(data):
            break  # torn: the record was not written whole
        body = data[off + _REC.size : end]
        if zlib.crc32(body) != crc:
            break
        try:
            rec = decode_body(body)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            break
        rec.offset = off
        records.append(rec)
        off = end
    return records, off, len(data)


def damage_in_the_middle(path: Path, good: int) -> bool:
    """Whether the bad record at ``good`` is followed by more of the file: its length field
    says it ends before the file does (a CRC or decoding failure), as opposed to a torn
    last record (not written whole), which is the only damage a crash can cause."""
    data = path.read_bytes()
    if good + _REC.size > len(data):
        return False
    length, _ = _REC.unpack_from(data, good)
    return good + _REC.size + length < len(data)


def move_aside(path: Path, good: int) -> Path:
    """Copy the bytes of ``path`` from ``good`` on to ``<path>.corrupt-<n>`` (n: the first
    free number), fsync it, and cut ``path`` at ``good``."""
    n = 1
    while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    with open(path, "rb") as src:
        src.seek(good)
        tail = src.read()
    with open(aside, "wb") as dst:
        dst.write(tail)
        dst.flush()
        os.fsync(dst.fileno())
    with open(path, "r+b") as f:
        f.truncate(max(good, _WAL_HEAD.size))
        os.fsync(f.fileno())
    return aside


class Wal:
    """Append-only log file; each record is one ``os.write`` (no user-space buffer)."""

    def __init__(self, path: Path, generation: int, fsync: str, create: bool) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.path, self.fsync, self.generation = Path(path), fsync, generation
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_TRUNC if create else 0)
        self.fd = os.open(self.path, flags, 0o644)
        if create:
            os.write(self.fd, _WAL_HEAD.pack(WAL_MAGIC, generation))
            os.fsync(self.fd)
        self.unsynced = 0
        self.bytes = os.fstat(self.fd).st_size
        self.failed: BaseException | None = None

    def append(self, op: str, header: dict, arrays: list[np.ndarray]) -> None:
        """Append one record (and fsync it, per the policy). If writing or syncing fails
        (disk full, EIO), the file is cut back to the last good record before the error
        propagates, so no torn record is left for later writes to follow (a replay stops
        at the first torn record); if even that fails, the log refuses every later write."""
        if self.failed is not None:
            raise OSError(f"the log {self.path} could not be repaired after an earlier write "
                          f"error ({self.failed}); reopen the store") from self.failed
        rec = encode_record(op, header, arrays)
        view, done = memoryview(rec), 0
        try:
            while done < len(rec):
                done += os.write(self.fd, view[done:])
            self.unsynced += 1
            if self.fsync == "every" or (self.fsync == "batch"
                                         and self.unsynced >= BATCH_RECORDS):
                self.sync()
        except BaseException as exc:
            self._roll_back(exc)
            raise
        self.bytes += len(rec)

    def cut(self, offset: int) -> None:
        """Cut the log back to ``offset`` (a record boundary, e.g. ``bytes`` before an
        append whose change then failed to apply)."""
        os.ftruncate(self.fd, offset)
        if self.fsync != "off":
            os.fsync(self.fd)
        self.bytes = offset
        self.unsynced = 0

    def _roll_back(self, exc: BaseException) -> None:
        try:
            os.ftruncate(self.fd, self.bytes)
            if self.fsync != "off":
                os.fsync(self.fd)
            self.unsynced = 0
        except OSError as again:
            self.failed = again

    def sync(self) -> None:
        if self.unsynced and self.fsync != "off":
            os.fsync(self.fd)
        self.unsynced = 0

    def close(self) -> None:
        if self.fd is not None:
            if self.fsync != "off":
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None


# ---- the writer's lock ---------------------------------------------------------------------------
LOCK_FILE = "lock"


def lock_directory(root: Path) -> int:
    """Take the store directory's exclusive writer lock (``flock`` on ``root/lock``, held
    until :func:`unlock_directory` or the process ends); ``StoreLockedError`` if another
    handle, in this process or another, holds it."""
    import fcntl

    from .errors import StoreLockedError

    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{root} is open for writing elsewhere (its lock file is "
                               "held); close that store first") from None
    return fd


def unlock_directory(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


# ---- snapshot files ----------------------------------------------------------------------------
FILES = {  # name -> file name pattern of generation g
    "vectors": "vectors-{g}.f32",
    "params": "params-{g}.f32",
    "hits": "hits-{g}.i64",
    "flags": "flags-{g}.u8",
    "records": "records-{g}.jsonl",
    "state": "state-{g}.json",
}


SPILL_PREFIX = "m2m-cold-"  # the cold tier's scratch spill files (m2m_gpu.tiers); never data


def wal_name(generation: int) -> str:
    return f"wal-{generation}.log"


def write_snapshot(path: Path, generation: int, manifest: dict, arrays: dict[str, Any],
                   records: list, state: dict) -> dict:
    """Write generation ``generation``'s files and commit them with the manifest (atomic
    rename); an empty log for the generation is created before the commit. An array may
    also be given as an iterable of row blocks (the vectors of a tiered store, streamed).
    Returns the manifest written."""
    path.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, dtype in (("vectors", "f4"), ("params", "f4"), ("hits", "i8"), ("flags", "u1")):
        target = path / FILES[name].format(g=generation)
        data = arrays[name]
        blocks = [data] if isinstance(data, np.ndarray) else data
        files[name] = write_chunks(target, (le(b, dtype).tobytes() for b in blocks))
    lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    files["records"] = write_file(path / FILES["records"].format(g=generation), lines)
    files["state"] = write_file(path / FILES["state"].format(g=generation),
                                json.dumps(state).encode())
    Wal(path / wal_name(generation), generation, "every", create=True).close()
    manifest = {**manifest, "format_version": FORMAT_VERSION, "generation": generation,
                "files": {k: {"name": FILES[k].format(g=generation), **v}
                          for k, v in files.items()}}
    manifest["manifest_crc32"] = manifest_crc32(manifest)
    tmp = path / "manifest.json.tmp"
    write_file(tmp, json.dumps(manifest, indent=1).encode())
    os.replace(tmp, path / "manifest.json")  # the commit point
    fsync_dir(path)
    for old in path.iterdir():  # files of earlier generations
        stem = old.name.split("-", 1)
        if len(stem) == 2 and stem[0] in ("vectors", "params", "hits", "flags", "records",
                                          "state", "wal"):
            g = stem[1].split(".", 1)[0]
            if g.isdigit() and int(g) != generation:
                old.unlink()
    return manifest


def map_vectors(path: Path, slots: int, dim: int) -> np.ndarray:
    """A read-only memory map of a vectors file (an empty array for an empty store)."""
    if slots == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype="<f4", mode="r", shape=(slots, dim))


def read_manifest(path: Path) -> dict:
    mpath = Path(path) / "manifest.json"
    if not mpath.exists():
        raise StoreFormatError(f"{path}: no manifest.json (not an m2m-gpu store directory)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise StoreFormatError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise StoreFormatError(f"{mpath}: not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise StoreFormatError(f"{mpath}: no format_version")
    if version > FORMAT_VERSION:
        raise StoreFormatError(f"{mpath}: format version {version} is newer than this "
                               f"m2m-gpu understands ({FORMAT_VERSION}); upgrade m2m-gpu")
    if "manifest_crc32" in manifest and manifest["manifest_crc32"] != manifest_crc32(manifest):
        raise StoreFormatError(f"{mpath}: its checksum does not match its contents")
    check_manifest(manifest, mpath)
    return manifest


def manifest_crc32(manifest: dict) -> int:
    """CRC32 of a manifest's canonical JSON, without its own checksum field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def check_manifest(m: dict, where) -> None:
    """Every field the store reads, of the right type, and file sizes that match the
    counts; a ``StoreFormatError`` naming the field otherwise."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise StoreFormatError(f"{where}: {what}")

    def integer(v, low=0) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    need(integer(m.get("dim"), 1), "dim must be an integer >= 1")
    need(isinstance(m.get("metric"), str), "metric must be a string")
    need(integer(m.get("generation"), 1), "generation must be an integer >= 1")
    need(isinstance(m.get("options"), dict), "options must be an object")
    counts = m.get("counts")
    need(isinstance(counts, dict) and integer(counts.get("slots")), "counts.slots must be "
         "an integer >= 0")
    files = m.get("files")
    need(isinstance(files, dict), "files must be an object")
    for name in FILES:
        info = files.get(name)
        need(isinstance(info, dict) and isinstance(info.get("name"), str)
             and "/" not in info["name"] and integer(info.get("bytes"))
             and integer(info.get("crc32")), f"files.{name} must have name, bytes and crc32")
    slots, dim = counts["slots"], m["dim"]
    for name, row in (("vectors", 4 * dim), ("params", 16), ("hits", 8), ("flags", 1)):
        need(files[name]["bytes"] == slots * row,
             f"files.{name} has {files[name]['bytes']} bytes, but {slots} slots need "
             f"{slots * row}")


def read_snapshot(path: Path, manifest: dict, verify: bool = True):
    """``(arrays, records, state)`` of the manifest's generation. ``verify`` checks every
    file's size and CRC32 (streamed)."""
    path = Path(path)
    files = manifest["files"]
    slots, dim = manifest["counts"]["slots"], manifest["dim"]
    for info in files.values():
        f = path / info["name"]
        if not f.exists():
            raise StoreFormatError(f"{f}: missing")
        if f.stat().st_size != info["bytes"]:
            raise StoreFormatError(f"{f}: {f.stat().st_size} bytes, manifest says "
                                   f"{info['bytes']}")
        if verify and crc32_file(f) != info["crc32"]:
            raise StoreFormatError(f"{f}: CRC32 does not match the manifest")
    shapes = {"vectors": ("<f4", (slots, dim)), "params": ("<f4", (slots, 4)),
              "hits": ("<i8", (slots,)), "flags": ("u1", (slots,))}
    arrays = {}
    for name, (dt, shape) in shapes.items():
        f = path / files[name]["name"]
        if name == "vectors":  # memory-mapped: read only where the caller touches it
            arrays[name] = map_vectors(f, slots, dim)
        else:
            arrays[name] = np.fromfile(f, dtype=dt).reshape(shape)
    records = [json.loads(line) for line in
               (path / files["records"]["name"]).read_text().splitlines()]
    if len(records) != slots:
        raise StoreFormatError(f"{path}: {len(records)} records for {slots} slots")
    state = json.loads((path / files["state"]["name"]).read_text())
    return arrays, records, state
