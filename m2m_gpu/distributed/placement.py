"""Where an id lives, and the global order of ids: both stable across processes and
machines (no ``hash()``, which Python salts per process)."""

from __future__ import annotations

import hashlib
from typing import Any


def _key(id_: Any) -> bytes:
    if isinstance(id_, bool):
        raise TypeError(f"ids must be ints or strings, got {id_!r}")
    if isinstance(id_, int):
        return b"i" + str(id_).encode()
    if isinstance(id_, str):
        return b"s" + id_.encode("utf-8")
    raise TypeError(f"ids must be ints or strings, got {type(id_).__name__}")


def shard_of(id_: Any, shards: int) -> int:
    """The shard that owns ``id_``: blake2b of its typed text, mod ``shards``."""
    digest = hashlib.blake2b(_key(id_), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def id_order(id_: Any) -> tuple:
    """The global order of ids, used to break ties: integers ascending, then strings."""
    return (0, id_, "") if isinstance(id_, int) else (1, 0, id_)
