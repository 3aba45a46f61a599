"""A LlamaIndex vector store over a :class:`m2m_gpu.SplatStore`.

``pip install 'm2m-gpu[llamaindex]'``::

    from llama_index.core import StorageContext, VectorStoreIndex
    from m2m_gpu.integrations.llamaindex import M2MVectorStore

    vector_store = M2MVectorStore(path="memories/")           # durable; any backend=
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=vector_store))

Nodes are splats: the node (text included: ``stores_text`` is True) is kept in the splat's
metadata as LlamaIndex's own ``node_to_metadata_dict`` writes it, so the node comes back
whole and metadata filters apply to the node's metadata keys. ``MetadataFilters`` map to
this package's filter language (:mod:`m2m_gpu.filters`): ``==, !=, >, >=, <, <=, in, nin,
any, all, contains`` and the ``and`` / ``or`` / ``not`` conditions; ``text_match`` and
``is_empty`` have no counterpart there and raise ``InvalidInputError`` naming them.
Similarities are ``1 - d2 / 2``: the cosine similarity under the default cosine metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import (
        metadata_dict_to_node,
        node_to_metadata_dict,
    )
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("m2m_gpu.integrations.llamaindex needs llama-index-core: "
                      "pip install 'm2m-gpu[llamaindex]'") from exc

from ..errors import InvalidInputError
from ..store import SplatStore

NODE_ID_KEY = "__node_id__"  # the node id, in its splat's metadata (for node_ids= queries)
_OPS = {FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
        FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in",
        FilterOperator.NIN: "$nin", FilterOperator.ANY: "$in",
        FilterOperator.CONTAINS: "$contains"}


def to_filter(filters: MetadataFilters | None) -> dict | None:
    """LlamaIndex ``MetadataFilters`` as a filter of :mod:`m2m_gpu.filters`."""
    if filters is None or not filters.filters:
        return None
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            sub = to_filter(f)
            if sub is not None:
                parts.append(sub)
        elif f.operator == FilterOperator.EQ:
            parts.append({f.key: f.value})
        elif f.operator == FilterOperator.ALL:
            parts.append({"$and": [{f.key: {"$contains": v}} for v in f.value]})
        elif f.operator in _OPS:
            parts.append({f.key: {_OPS[f.operator]: f.value}})
        else:
            raise InvalidInputError(f"filter operator {f.operator.value!r} has no counterpart "
                                    "in m2m_gpu's filter language (==, !=, >, >=, <, <=, in, "
                                    "nin, any, all, contains)")
    if not parts:
        return None
    cond = filters.condition or FilterCondition.AND
    if cond == FilterCondition.NOT:
        return {"$not": parts[0] if len(parts) == 1 else {"$and": parts}}
    if len(parts) == 1:
        return parts[0]
    return {"$or" if cond == FilterCondition.OR else "$and": parts}


class M2MVectorStore(BasePydanticVectorStore):
    stores_text: bool = True
    flat_metadata: bool = False
    path: str | None = None
    metric: str = "cosine"
    rank: str = "distance"
    _store: SplatStore | None = PrivateAttr(default=None)
    _backend: Any = PrivateAttr(default=None)
    _options: dict = PrivateAttr(default_factory=dict)

    def __init__(self, path: str | Path | None = None, metric: str = "cosine",
                 backend: Any = None, rank: str = "distance",
                 store: SplatStore | None = None, **store_options: Any) -> None:
        if rank not in ("distance", "splat"):
            raise InvalidInputError(f"rank must be 'distance' or 'splat', got {rank!r}")
        super().__init__(path=None if path is None else str(path), metric=metric, rank=rank)
        self._backend, self._options, self._store = backend, store_options, store
        if store is None and path is not None and (Path(path) / "manifest.json").exists():
            self._store = SplatStore.open(path, backend=backend)

    @classmethod
    def class_name(cls) -> str:
        return "M2MVectorStore"

    @property
    def client(self) -> SplatStore | None:
        """The SplatStore underneath (None until the first add, which fixes its dim)."""
        return self._store

    def _store_for(self, dim: int) -> SplatStore:
        if self._store is None:
            self._store = SplatStore(dim, metric=self.metric, backend=self._backend,
                                     path=self.path, **self._options)
        return self._store

    # ---- writing --------------------------------------------------------------------------
    def add(self, nodes, **kwargs: Any) -> list[str]:
        nodes = list(nodes)
        if not nodes:
            return []
        vectors = np.asarray([n.get_embedding() for n in nodes], dtype=np.float32)
        meta = [{**node_to_metadata_dict(n, remove_text=False,
                                         flat_metadata=self.flat_metadata),
                 NODE_ID_KEY: n.node_id} for n in nodes]
        ids = [n.node_id for n in nodes]
        self._store_for(vectors.shape[1]).add(vectors, ids=ids, metadata=meta)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        if self._store is not None:
            self._store.delete(filter={"ref_doc_id": ref_doc_id})

    def delete_nodes(self, node_ids: list[str] | None = None,
                     filters: MetadataFilters | None = None, **delete_kwargs: Any) -> None:
        if self._store is None:
            return
        filt = to_filter(filters)
        if node_ids is not None:
            keep = set(node_ids)
            if filt is not None:
                keep &= set(self._store.ids(filter=filt))
            self._store.delete(sorted(keep))
        elif filt is not None:
            self._store.delete(filter=filt)

    def clear(self) -> None:
        if self._store is not None:
            self._store.delete(self._store.ids())

    # ---- reading --------------------------------------------------------------------------
    def get_nodes(self, node_ids: list[str] | None = None,
                  filters: MetadataFilters | None = None) -> list[BaseNode]:
        if self._store is None:
            return []
        filt = to_filter(filters)
        wanted = self._store.ids(filter=filt)
        if node_ids is not None:
            matching = set(wanted)
            wanted = [i for i in node_ids if i in matching]
        return [self._node(r["metadata"], r["vector"]) for r in self._store.get(wanted)
                if r is not None]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if self._store is None or query.query_embedding is None or len(self._store) == 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        filt = to_filter(query.filters)
        restrict = []
        if query.node_ids:
            restrict.append({NODE_ID_KEY: {"$in": list(query.node_ids)}})
        if query.doc_ids:
            restrict.append({"ref_doc_id": {"$in": list(query.doc_ids)}})
        if restrict:
            filt = {"$and": [*restrict, *([filt] if filt else [])]}
        res = self._store.search(np.asarray(query.query_embedding, np.float32),
                                 k=max(1, int(query.similarity_top_k)), filter=filt,
                                 rank=self.rank)
        hits = res[0]
        nodes = [self._node(h.metadata) for h in hits]
        return VectorStoreQueryResult(nodes=nodes,
                                      similarities=[1.0 - h.distance / 2.0 for h in hits],
                                      ids=[str(h.id) for h in hits])

    @staticmethod
    def _node(meta: dict, vector=None) -> BaseNode:
        node = metadata_dict_to_node(meta)
        if vector is not None:
            node.embedding = np.asarray(vector, np.float32).tolist()
        return node

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
