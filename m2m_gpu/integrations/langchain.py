"""A LangChain ``VectorStore`` over a :class:`m2m_gpu.SplatStore`.

``pip install 'm2m-gpu[langchain]'``::

    from m2m_gpu.integrations.langchain import M2MVectorStore

    store = M2MVectorStore(embeddings, path="memories/")    # durable; any backend=
    store.add_texts(["..."], metadatas=[{"lang": "en"}])
    store.similarity_search("query", k=4, filter={"lang": "en"})
    store.feedback("query", relevant=[doc_id])               # Hebbian learning

Documents are splats: the text is kept in the splat's metadata under ``TEXT_KEY`` beside
the document's own metadata, so metadata filters (this package's filter language,
:mod:`m2m_gpu.filters`) apply to the document metadata as written. Ids are strings
(uuid4 when not given); adding an id that exists replaces it. The async methods are
LangChain's defaults (the sync ones in an executor); the store is thread-safe.

Scores: ``similarity_search_with_score`` gives the squared L2 distance of the (cosine:
normalised) vectors, lower is closer, as LangChain's FAISS store does;
``similarity_search_with_relevance_scores`` maps it into [0, 1]: ``1 - d2 / 4`` under
cosine (= (1 + cos) / 2), ``1 / (1 + d2)`` under l2. ``rank="splat"`` orders results by the
splat score ``alpha exp(-kappa d2)`` (what feedback and decay change) instead of distance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("m2m_gpu.integrations.langchain needs langchain-core: "
                      "pip install 'm2m-gpu[langchain]'") from exc

from ..errors import InvalidInputError
from ..store import SplatStore

TEXT_KEY = "__text__"  # where a document's text lives in its splat's metadata


class M2MVectorStore(VectorStore):
    def __init__(self, embedding: Embeddings, *, path: str | Path | None = None,
                 metric: str = "cosine", backend: Any = None, rank: str = "distance",
                 store: SplatStore | None = None, **store_options: Any) -> None:
        if rank not in ("distance", "splat"):
            raise InvalidInputError(f"rank must be 'distance' or 'splat', got {rank!r}")
        self.embedding = embedding
        self.rank = rank
        self._metric, self._backend, self._options = metric, backend, store_options
        self._path = None if path is None else Path(path)
        self.store = store
        if store is None and self._path is not None and (self._path / "manifest.json").exists():
            self.store = SplatStore.open(self._path, backend=backend)

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def _store_for(self, dim: int) -> SplatStore:
        if self.store is None:  # the dimension is the first embedding's
            self.store = SplatStore(dim, metric=self._metric, backend=self._backend,
                                    path=self._path, **self._options)
        return self.store

    # ---- writing --------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        metadatas = [dict(m or {}) for m in metadatas] if metadatas else [{} for _ in texts]
        if len(metadatas) != len(texts):
            raise InvalidInputError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        for m in metadatas:
            if TEXT_KEY in m:
                raise InvalidInputError(f"metadata key {TEXT_KEY!r} is reserved for the text")
        ids = [str(i) if i is not None else str(uuid.uuid4())
               for i in (ids if ids is not None else [None] * len(texts))]
        vectors = np.asarray(self.embedding.embed_documents(texts), dtype=np.float32)
        store = self._store_for(vectors.shape[1])
        store.add(vectors, ids=ids,
                  metadata=[{**m, TEXT_KEY: t} for m, t in zip(metadatas, texts, strict=True)])
        return ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        if "ids" not in kwargs and any(d.id is not None for d in documents):
            kwargs["ids"] = [d.id for d in documents]
        return self.add_texts([d.page_content for d in documents],
                              [d.metadata for d in documents], **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by ids (missing ones are ignored), or every document matching
        ``filter=``; with neither, nothing is deleted."""
        if self.store is None:
            return True
        if kwargs.get("filter") is not None:
            self.store.delete(filter=kwargs["filter"])
        elif ids:
            self.store.delete(list(ids))
        return True

    def feedback(self, query: str, relevant: Sequence[str] = (),
                 irrelevant: Sequence[str] = ()) -> int:
        """Hebbian feedback (SPEC section 2): the ``relevant`` documents move towards the
        query and grow stronger, the ``irrelevant`` ones weaken. Changes later rankings
        with ``rank="splat"``; returns the events applied."""
        if self.store is None:
            return 0
        q = np.asarray(self.embedding.embed_query(query), dtype=np.float32)
        return self.store.feedback(q, relevant=list(relevant), irrelevant=list(irrelevant))

    # ---- reading --------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if self.store is None:
            return []
        return [_document(r["id"], r["metadata"]) for r in self.store.get(list(ids))
                if r is not None]

    def _search(self, vector, k: int, filt: dict | None):
        if self.store is None or k < 1:
            return []
        res = self.store.search(np.asarray(vector, np.float32), k=k, filter=filt,
                                rank=self.rank)
        return res[0]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: dict | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        return [(_document(h.id, h.metadata), float(h.distance))
                for h in self._search(embedding, k, filter)]

    def similarity_search_with_score(self, query: str, k: int = 4,
                                     filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(
            self.embedding.embed_query(query), k, filter)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k,
                                                                           filter)]

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None,
                          **kwargs: Any) -> list[Document]:
        return self.similarity_search_by_vector(self.embedding.embed_query(query), k, filter)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self._metric == "cosine":
            return lambda d2: float(min(1.0, max(0.0, 1.0 - d2 / 4.0)))
        return lambda d2: 1.0 / (1.0 + max(0.0, d2))

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4,
                                                fetch_k: int = 20, lambda_mult: float = 0.5,
                                                filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        hits = self._search(embedding, fetch_k, filter)
        if not hits:
            return []
        found = self.store.get([h.id for h in hits])
        vectors = np.stack([r["vector"] for r in found])
        picks = maximal_marginal_relevance(np.asarray(embedding, np.float32), vectors,
                                           lambda_mult=lambda_mult, k=k)
        return [_document(hits[i].id, hits[i].metadata) for i in picks]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                      lambda_mult: float = 0.5, filter: dict | None = None,
                                      **kwargs: Any) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, filter)

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings,
                   metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                   **kwargs: Any) -> M2MVectorStore:
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _document(id_: Any, meta: dict) -> Document:
    meta = dict(meta)
    text = meta.pop(TEXT_KEY, "")
    return Document(page_content=text, metadata=meta, id=str(id_))
