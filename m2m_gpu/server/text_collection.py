"""A collection that is a TextMemory: its texts are stored and searched through the text
routes (``/collections/{name}/text/...``: BM25 + vector, feedback, confidence), and read
through Qdrant's routes like any collection (the payload holds the text under
``__text__``). Qdrant's writes that would bypass the BM25 index (upsert, payload changes)
are refused; deletes forget the texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..text import TextMemory
from .collection import Collection
from .qdrant import BadRequest


class TextCollection(Collection):
    def __init__(self, path: Path, memory: TextMemory, encoder: str) -> None:
        self.memory, self.encoder_name = memory, encoder
        super().__init__(path, memory.splats.dim, "Cosine", memory.splats)

    @classmethod
    def create_text(cls, path: Path, encoder: Any, backend: Any) -> TextCollection:
        if not isinstance(encoder, str) or not encoder:
            raise BadRequest("encoder must be a name: hashed, minilm, a sentence-transformers "
                             "model, or hf:NAME")
        try:
            memory = TextMemory(encoder=encoder, backend=backend)  # resolve it first
        except (ImportError, OSError, ValueError) as exc:
            raise BadRequest(f"encoder {encoder!r}: {exc}") from None
        dim = int(memory.encode(["dimension probe"]).shape[1])
        path.mkdir(parents=True)
        memory = TextMemory(path=path / "store", encoder=memory.encoder, backend=backend,
                            dim=dim, auto_consolidate=False)
        col = cls(path, memory, encoder)
        col.save_config()
        return col

    @classmethod
    def open_text(cls, path: Path, cfg: dict, backend: Any) -> TextCollection:
        memory = TextMemory(path=path / "store", encoder=cfg["encoder"], backend=backend)
        col = cls(path, memory, cfg["encoder"])
        col.payload_indexes = dict(cfg.get("payload_indexes", {}))
        return col

    def config(self) -> dict:
        return {**super().config(), "kind": "text", "encoder": self.encoder_name}

    def close(self) -> None:
        self.memory.close()

    def store_texts(self, texts: list[str], metadata: Any, ids: list | None) -> list:
        with self._write:
            out = self.memory.store(texts, metadata=metadata, ids=ids)
            self._version += 1
            return out

    # Qdrant's writes
    def upsert(self, ids, vectors, payloads) -> None:
        raise BadRequest(f"collection {self.name!r} holds texts: store them with "
                         f"POST /collections/{self.name}/text/store")

    def set_payload(self, *args, **kwargs) -> None:
        raise BadRequest(f"collection {self.name!r} holds texts: their payloads are set "
                         "when they are stored")

    def _forgetting(self):
        return self.memory  # its decay and consolidation keep BM25 in step

    def delete(self, ids: list | None = None, filt: dict | None = None) -> None:
        with self._write:
            if filt is not None:
                ids = self.store.ids(filter=filt)
            if ids:
                self.memory.forget(ids)
            self._version += 1
