"""The collections under one server directory: ``DIR/<name>/`` each, opened on start."""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from .collection import CONFIG, Collection, NotFound
from .qdrant import BadRequest
from .text_collection import TextCollection, is_text

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
TRASH = ".deleted-"


class AlreadyExists(ValueError):
    """Creating a collection that is there."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadRequest(f"collection name {name!r} must be 1-64 letters, digits, '_' or "
                         "'-', starting with a letter or digit")
    return name


class Registry:
    def __init__(self, root: str | Path, backend: Any = None) -> None:
        self.root, self.backend = Path(root), backend
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._open: dict[str, Collection] = {}
        for old in self.root.glob(TRASH + "*"):  # a delete that a crash interrupted
            shutil.rmtree(old, ignore_errors=True)
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and NAME.fullmatch(d.name):
                if (d / CONFIG).exists():
                    text = is_text(d)
                    self._open[d.name] = TextCollection.open_text(d, text, backend) if text \
                        else Collection.open(d, backend)
                else:  # a create that a crash interrupted before its commit point
                    shutil.rmtree(d, ignore_errors=True)

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
        return self._create(name, lambda path: TextCollection.create_text(
            path, encoder, self.backend))

    def _create(self, name: str, make) -> Collection:
        check_name(name)
        with self._lock:
            if name in self._open or (self.root / name).exists():
                raise AlreadyExists(f"Collection `{name}` already exists!")
            try:
                col = make(self.root / name)
            except BaseException:
                shutil.rmtree(self.root / name, ignore_errors=True)  # nothing half made
                raise
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
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()
