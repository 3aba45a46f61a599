"""LangChain's own standard vector-store suite (langchain-tests) against M2MVectorStore,
sync and async, in memory and on a durable path; plus what the suite does not cover:
filters, relevance scores, MMR, feedback, reopening from disk."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from m2m_gpu.integrations.langchain import M2MVectorStore  # noqa: E402


class TestM2MVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, backend):  # the whole suite on every backend
        store = M2MVectorStore(self.get_embeddings(), backend=backend.name)
        yield store
        store.close()


class TestM2MVectorStoreDurable(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path):
        store = M2MVectorStore(self.get_embeddings(), backend="cpu", path=tmp_path / "lc")
        yield store
        store.close()


def _store(**kw):
    return M2MVectorStore(DeterministicFakeEmbedding(size=16), backend="cpu", **kw)


def test_filters_scores_mmr_and_retriever():
    store = _store()
    ids = store.add_texts([f"text {i}" for i in range(20)],
                          [{"lang": "en" if i % 2 else "de", "n": i} for i in range(20)])
    docs = store.similarity_search("text 3", k=5, filter={"lang": "en"})
    assert len(docs) == 5 and all(d.metadata["lang"] == "en" for d in docs)
    assert docs[0].page_content == "text 3" and docs[0].id == ids[3]
    scored = store.similarity_search_with_relevance_scores("text 3", k=20)
    assert all(0.0 <= s <= 1.0 for _, s in scored) and scored[0][1] == pytest.approx(1.0)
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    mmr = store.max_marginal_relevance_search("text 3", k=4, fetch_k=10)
    assert len({d.id for d in mmr}) == 4 and mmr[0].page_content == "text 3"
    got = store.as_retriever(search_kwargs={"k": 2, "filter": {"n": {"$gte": 18}}}).invoke("x")
    assert sorted(d.metadata["n"] for d in got) == [18, 19]
    store.delete(filter={"lang": "de"})
    assert len(store.store) == 10


def test_feedback_changes_the_splat_ranking():
    """rank="splat" orders by alpha exp(-kappa d2): a document named irrelevant for its
    own query again and again weakens (alpha falls) until broader, stronger splats
    outrank it; rank="distance" still puts it first."""
    store = _store(rank="splat", kappa0=0.5, auto_consolidate=False)
    ids = store.add_texts(["alpha", "beta", "gamma"])
    assert store.similarity_search("gamma", k=1)[0].id == ids[2]
    for _ in range(40):
        store.feedback("gamma", irrelevant=[ids[2]])
    assert store.similarity_search("gamma", k=1)[0].id != ids[2]
    by_distance = M2MVectorStore(store.embedding, store=store.store, rank="distance")
    assert by_distance.similarity_search("gamma", k=1)[0].id == ids[2]


def test_a_durable_store_reopens_with_its_documents(tmp_path):
    store = _store(path=tmp_path / "s")
    store.add_documents([Document(page_content="kept", metadata={"a": 1}, id="k1")])
    store.close()
    again = _store(path=tmp_path / "s")
    assert again.get_by_ids(["k1"]) == [Document(page_content="kept", metadata={"a": 1},
                                                 id="k1")]
    again.close()


def test_from_texts_and_reserved_key():
    store = M2MVectorStore.from_texts(["a", "b"], DeterministicFakeEmbedding(size=8),
                                      ids=["1", "2"], backend="cpu")
    assert [d.id for d in store.similarity_search("a", k=2)] == ["1", "2"]
    with pytest.raises(ValueError, match="reserved"):
        store.add_texts(["c"], [{"__text__": "x"}])
    assert np.isfinite(store.similarity_search_with_score("b", k=1)[0][1])
