"""The Qdrant integrations of LangChain and LlamaIndex, unchanged, against the real server:
a LangChain session through ``langchain_qdrant`` answered exactly as qdrant-client's own
local mode answers it, filters and MMR, and a LlamaIndex index built and queried through
``llama_index.vector_stores.qdrant``.

(LangChain's standard vector-store suite is not run here: ``langchain_qdrant`` returns
documents without ``id`` and with ``_id`` in the metadata, which that suite refuses on any
Qdrant server.)"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("langchain_qdrant")

from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_qdrant import QdrantVectorStore  # noqa: E402
from qdrant_client import QdrantClient, models  # noqa: E402

from .serving import Server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("peers")) as s:
        yield s


def _langchain_workload(client: QdrantClient) -> list:
    """A scripted LangChain session on one Qdrant client; what it saw, in order."""
    emb = DeterministicFakeEmbedding(size=24)
    client.create_collection("w", vectors_config=models.VectorParams(
        size=24, distance=models.Distance.COSINE))
    store = QdrantVectorStore(client=client, collection_name="w", embedding=emb)
    texts = [f"passage {i} on {['rust', 'gpus', 'tea', 'maps'][i % 4]}" for i in range(40)]
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(40)]
    store.add_texts(texts, metadatas=[{"topic": i % 4, "n": i, "tags": ["x", "y"][: i % 3]}
                                      for i in range(40)], ids=ids)
    seen: list = []

    def docs(result):
        return [(d.page_content, {k: v for k, v in d.metadata.items()
                                  if k != "_collection_name"}) for d in result]

    def scored(result):
        return [(d.page_content, round(s, 4)) for d, s in result]

    for q in ("passage 3 about maps", "tea", "passage 17"):  # none a stored text: no ties
        seen.append(docs(store.similarity_search(q, k=5)))
        seen.append(scored(store.similarity_search_with_score(q, k=5)))
        for f in (models.Filter(must=[models.FieldCondition(
                      key="metadata.topic", match=models.MatchAny(any=[1, 2]))]),
                  models.Filter(must_not=[models.FieldCondition(
                      key="metadata.n", range=models.Range(gte=10, lt=30))],
                      should=[models.FieldCondition(key="metadata.tags",
                                                    match=models.MatchValue(value="y")),
                              models.FieldCondition(key="metadata.topic",
                                                    match=models.MatchValue(value=0))])):
            seen.append(scored(store.similarity_search_with_score(q, k=6, filter=f)))
        seen.append(docs(store.max_marginal_relevance_search(q, k=4, fetch_k=15,
                                                             lambda_mult=0.5)))
    store.delete(ids[:5])
    seen.append(docs(store.get_by_ids(ids[:8])))
    seen.append(client.count("w").count)
    seen.append(docs(store.similarity_search("passage 2 on tea", k=3)))
    return seen


def test_langchain_qdrant_sees_what_it_sees_on_qdrants_own_local_mode(server):
    """The same LangChain session on qdrant-client's local mode (Qdrant's own Python
    implementation of its semantics) and on this server: identical answers."""
    want = _langchain_workload(QdrantClient(":memory:"))
    got = _langchain_workload(QdrantClient(url=server.url))
    assert got == want


def test_langchain_filters_scores_and_mmr(server):
    emb = DeterministicFakeEmbedding(size=32)
    texts = [f"text number {i} about {['cats', 'dogs', 'gpus'][i % 3]}" for i in range(30)]
    store = QdrantVectorStore.from_texts(
        texts, emb, metadatas=[{"source": "abc"[i % 3], "i": i} for i in range(30)],
        url=server.url, collection_name="lc-filters")
    hit = store.similarity_search(texts[4], k=1)[0]
    assert hit.page_content == texts[4] and hit.metadata["i"] == 4
    only_a = models.Filter(must=[models.FieldCondition(key="metadata.source",
                                                       match=models.MatchValue(value="a"))])
    scored = store.similarity_search_with_score(texts[4], k=5, filter=only_a)
    assert len(scored) == 5 and all(d.metadata["source"] == "a" for d, _ in scored)
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    want = np.array(emb.embed_query(texts[4]))
    got = np.array(emb.embed_query(scored[0][0].page_content))
    assert scored[0][1] == pytest.approx(
        want @ got / np.linalg.norm(want) / np.linalg.norm(got), abs=1e-5)
    mmr = store.max_marginal_relevance_search(texts[1], k=4, fetch_k=12, lambda_mult=0.3)
    assert mmr[0].page_content == texts[1] and len({d.page_content for d in mmr}) == 4
    ids = store.add_texts(["one more"])
    assert store.get_by_ids(ids)[0].page_content == "one more"
    store.delete(ids)
    assert store.get_by_ids(ids) == []


def test_llamaindex_qdrant_store_builds_and_queries(server):
    pytest.importorskip("llama_index.vector_stores.qdrant")
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
    from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaQdrant

    client = QdrantClient(url=server.url)
    store = LlamaQdrant(client=client, collection_name="li")
    docs = [Document(text=f"note {i}", metadata={"k": i % 2}) for i in range(10)]
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=MockEmbedding(embed_dim=8))
    assert client.count("li").count == 10
    info = client.get_collection("li")
    assert "doc_id" in info.payload_schema  # the payload index it asked for is reported
    nodes = index.as_retriever(similarity_top_k=4, filters=MetadataFilters(
        filters=[MetadataFilter(key="k", value=1)])).retrieve("note")
    assert len(nodes) == 4 and all(n.node.metadata["k"] == 1 for n in nodes)
    index.delete_ref_doc(docs[0].doc_id, delete_from_docstore=True)
    assert client.count("li").count == 9
