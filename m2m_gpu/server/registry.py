"""The collections under one server directory: ``DIR/<name>/`` each, opened on start."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from ..persist import fsync_dir
from .collection import CONFIG, Collection, NotFound, read_config
from .qdrant import BadRequest
from .text_collection import TextCollection

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
TRASH = ".deleted-"
BUILDING = ".creating-"
log = logging.getLogger("m2m_gpu.server")


class AlreadyExists(ValueError):
    """Creating a collection that is there."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadRequest(f"collection name {name!r} must be 1-64 letters, digits, '_' or "
                         "'-', starting with a letter or digit")
    return name


class Registry:
    """Collections live in ``root/<name>/`` once complete. A create builds the collection
    under ``root/.creating-<name>-<tag>/`` and renames it into place (the commit point); a
    delete renames it to ``root/.deleted-<name>-<tag>/`` first. On start only those two
    kinds of leftovers are removed: any other directory is left alone."""

    def __init__(self, root: str | Path, backend: Any = None,
                 text_encoders: tuple[str, ...] = ("hashed", "minilm")) -> None:
        self.root, self.backend = Path(root), backend
        self.text_encoders = tuple(text_encoders)  # what a text collection may load
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._open: dict[str, Collection] = {}
        self._creating: set[str] = set()
        for old in [*self.root.glob(TRASH + "*"), *self.root.glob(BUILDING + "*")]:
            shutil.rmtree(old, ignore_errors=True)  # an interrupted delete or create
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and NAME.fullmatch(d.name) and (d / CONFIG).exists():
                self._open[d.name] = self._load(d)
            elif not d.name.startswith("."):
                log.warning("%s is not a collection (no %s): left alone", d, CONFIG)

    def _load(self, d: Path) -> Collection:
        cfg = read_config(d)
        if cfg.get("kind") == "text":
            return TextCollection.open_text(d, cfg, self.backend)
        return Collection.open(d, self.backend, cfg)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    def get(self, name: str) -> Collection:
        with self._lock:
            col = self._open.get(name)
        if col is None:
            raise NotFound(f"Collection `{name}` doesn't exist!")
        return col

    def exists(self, name: str) -> bool:
        with self._lock:
            return name in self._open

    def create(self, name: str, size: Any, distance: Any, vector_name: str = "") -> Collection:
        return self._create(name, lambda path: Collection.create(
            path, size, distance, self.backend, vector_name))

    def create_text(self, name: str, encoder: Any) -> Collection:
        if encoder not in self.text_encoders:  # loading a model runs its files' code
            raise BadRequest(f"encoder {encoder!r} is not one this server allows "
                             f"({', '.join(self.text_encoders)}; see serve --text-encoder)")
        return self._create(name, lambda path: TextCollection.create_text(
            path, encoder, self.backend))

    def _create(self, name: str, make) -> Collection:
        check_name(name)
        with self._lock:  # reserve the name; the build runs outside the lock (a model load
            # may take seconds, and every request looks collections up under this lock)
            if name in self._open or name in self._creating or (self.root / name).exists():
                raise AlreadyExists(f"Collection `{name}` already exists!")
            self._creating.add(name)
        building = self.root / f"{BUILDING}{name}-{uuid.uuid4().hex[:8]}"
        try:
            make(building).close()
            os.rename(building, self.root / name)  # the commit point
            fsync_dir(self.root)
            col = self._load(self.root / name)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)  # nothing half made
            raise
        finally:
            with self._lock:
                self._creating.discard(name)
        with self._lock:
            self._open[name] = col
        return col

    def delete(self, name: str) -> bool:
        with self._lock:
            col = self._open.pop(name, None)
            if col is None:
                return False
            col.close()
            trash = self.root / f"{TRASH}{name}-{uuid.uuid4().hex[:8]}"
            (self.root / name).rename(trash)  # atomic: gone from the next start on
            fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()
