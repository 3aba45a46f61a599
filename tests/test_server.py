"""The server, started for real on a loopback port, driven by Qdrant's own client and by
plain HTTP: a 10K-point round trip equal to the in-process store, all three distances,
API keys on every route, limits, bad input that changes nothing, metrics, the committed
OpenAPI schema, clean SIGTERM and kill -9 losing no acknowledged write."""

from __future__ import annotations

import json
import random
import threading
import uuid

import httpx
import numpy as np
import pytest

qdrant_client = pytest.importorskip("qdrant_client")
pytest.importorskip("fastapi")
from qdrant_client import QdrantClient, models  # noqa: E402

import m2m_gpu  # noqa: E402

from .serving import ROOT, Server  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")

DIM, N = 16, 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("srv")) as s:
        yield s


def data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = list(range(N - 100)) + [str(uuid.UUID(int=int(rng.integers(1 << 62)) + i))
                                  for i in range(100)]
    payloads = [{"n": i, "tag": ["x", "y", "z"][i % 3], "metadata": {"group": i % 5}}
                for i in range(N)]
    return X, ids, payloads


QDRANT_FILTER = models.Filter(
    must=[models.FieldCondition(key="metadata.group", match=models.MatchAny(any=[1, 2]))],
    should=[models.FieldCondition(key="n", range=models.Range(gte=100, lt=5000)),
            models.FieldCondition(key="tag", match=models.MatchValue(value="y"))],
    must_not=[models.FieldCondition(key="tag", match=models.MatchExcept(**{"except": ["x",
                                                                                      "y"]}))])
MORE_FILTERS = [
    models.Filter(must=[models.FieldCondition(key="tag", match=models.MatchExcept(
        **{"except": ["x"]}))]),
    models.Filter(must_not=[models.FieldCondition(key="metadata.group",
                                                  match=models.MatchValue(value=3))],
                  should=[models.Filter(must=[models.FieldCondition(
                      key="n", range=models.Range(gt=9000))])]),
    models.Filter(must=[models.HasIdCondition(has_id=list(range(0, 400, 3))),
                        models.FieldCondition(key="n", range=models.Range(lte=200.5))]),
    models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="none"))]),
    models.Filter(must=[models.IsNullCondition(is_null=models.PayloadField(key="tag"))]),
]
OUR_FILTER = {"$and": [{"metadata.group": {"$in": [1, 2]}},
                       {"$or": [{"n": {"$gte": 100, "$lt": 5000}}, {"tag": "y"}]},
                       {"$not": {"tag": {"$nin": ["x", "y"]}}}]}


def test_qdrant_client_round_trip_equals_the_in_process_store(server):
    X, ids, payloads = data()
    client = QdrantClient(url=server.url, timeout=60)
    client.create_collection("docs", vectors_config=models.VectorParams(
        size=DIM, distance=models.Distance.COSINE))
    assert client.collection_exists("docs") and not client.collection_exists("nope")
    for a in range(0, N, 2500):
        client.upsert("docs", [models.PointStruct(id=i, vector=x.tolist(), payload=p)
                               for i, x, p in zip(ids[a:a + 2500], X[a:a + 2500],
                                                  payloads[a:a + 2500], strict=True)])
    info = client.get_collection("docs")
    assert info.points_count == N and info.config.params.vectors.size == DIM

    local = m2m_gpu.SplatStore(DIM, metric="cosine", backend="cpu")
    local.add(X, ids=ids, metadata=payloads)
    ref = QdrantClient(":memory:")  # Qdrant's own semantics, in qdrant-client's local mode
    ref.create_collection("docs", vectors_config=models.VectorParams(
        size=DIM, distance=models.Distance.COSINE))
    ref.upload_points("docs", [models.PointStruct(id=i, vector=x.tolist(), payload=p)
                               for i, x, p in zip(ids, X, payloads, strict=True)])
    Q = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
    for f in (QDRANT_FILTER, *MORE_FILTERS):
        assert client.count("docs", count_filter=f).count == ref.count("docs",
                                                                       count_filter=f).count
        a = client.query_points("docs", query=Q[0].tolist(), limit=15, query_filter=f).points
        b = ref.query_points("docs", query=Q[0].tolist(), limit=15, query_filter=f).points
        assert [p.id for p in a] == [p.id for p in b]
        np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=1e-5)
    for q in Q:
        got = client.query_points("docs", query=q.tolist(), limit=20,
                                  query_filter=QDRANT_FILTER, with_payload=True).points
        want = local.search(q, k=20, filter=OUR_FILTER, rank="distance")
        assert [p.id for p in got] == want.ids[0]
        np.testing.assert_allclose([p.score for p in got], 1 - want.distances[0] / 2,
                                   atol=1e-5)
        assert [p.payload for p in got] == want.metadata[0]
        unit = X / np.linalg.norm(X, axis=1, keepdims=True)
        cos = unit @ (q / np.linalg.norm(q))
        np.testing.assert_allclose([p.score for p in got], cos[[ids.index(p.id)
                                                                for p in got]], atol=1e-5)
    batch = client.query_batch_points("docs", [
        models.QueryRequest(query=q.tolist(), limit=3, filter=QDRANT_FILTER) for q in Q])
    assert [[p.id for p in r.points] for r in batch] == local.search(
        Q, k=3, filter=OUR_FILTER, rank="distance").ids

    assert client.count("docs", count_filter=QDRANT_FILTER).count == len(
        local.ids(filter=OUR_FILTER))
    seen, offset = [], None
    while True:
        page, offset = client.scroll("docs", limit=999, offset=offset)
        seen += [p.id for p in page]
        if offset is None:
            break
    assert seen == sorted(ids[:-100]) + sorted(ids[-100:])  # integers, then UUIDs

    rec = client.retrieve("docs", [ids[7], ids[-1], 10**9], with_vectors=True)
    assert [r.id for r in rec] == [ids[7], ids[-1]]
    np.testing.assert_allclose(rec[0].vector, X[7] / np.linalg.norm(X[7]), atol=1e-6)
    client.set_payload("docs", {"seen": True}, points=[ids[7]])
    client.overwrite_payload("docs", {"only": 1}, points=[ids[8]])
    assert client.retrieve("docs", [ids[7]])[0].payload == {**payloads[7], "seen": True}
    assert client.retrieve("docs", [ids[8]])[0].payload == {"only": 1}

    client.delete("docs", points_selector=models.PointIdsList(points=ids[:10]))
    client.delete("docs", points_selector=models.FilterSelector(filter=models.Filter(
        must=[models.FieldCondition(key="tag", match=models.MatchValue(value="z"))])))
    local.delete(ids[:10])
    local.delete(filter={"tag": "z"})
    assert client.count("docs").count == len(local)
    q = Q[0].tolist()
    assert [p.id for p in client.query_points("docs", query=q, limit=10).points] == \
        local.search(Q[0], k=10, rank="distance").ids[0]
    client.delete_collection("docs")
    assert not client.collection_exists("docs")


@pytest.mark.parametrize("distance", ["Euclid", "Dot"])
def test_euclid_and_dot_scores_are_qdrants(server, distance):
    rng = np.random.default_rng(2)
    X = (rng.standard_normal((300, 8)) * rng.uniform(0.1, 5, (300, 1))).astype(np.float32)
    client = QdrantClient(url=server.url)
    name = f"d-{distance}"
    client.create_collection(name, vectors_config=models.VectorParams(size=8,
                                                                       distance=distance))
    client.upsert(name, [models.PointStruct(id=i, vector=x.tolist())
                         for i, x in enumerate(X[:100])])
    # longer vectors later: Dot re-lifts the stored ones
    client.upsert(name, models.Batch(ids=list(range(100, 300)), vectors=(X[100:] * 10).tolist()))
    Y = np.concatenate([X[:100], X[100:] * 10]).astype(np.float64)
    for q in rng.standard_normal((4, 8)):
        got = client.query_points(name, query=q.tolist(), limit=7, with_vectors=True).points
        if distance == "Dot":
            s = Y @ q
            order = np.argsort(-s, kind="stable")[:7]
        else:
            s = np.sqrt(((Y - q) ** 2).sum(1))
            order = np.argsort(s, kind="stable")[:7]
        assert [p.id for p in got] == order.tolist()
        np.testing.assert_allclose([p.score for p in got], s[order], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got[0].vector, Y[order[0]], rtol=1e-6)
        thr = float((s[order[3]] + s[order[4]]) / 2)  # between the 4th and 5th
        kept = client.query_points(name, query=q.tolist(), limit=7, score_threshold=thr).points
        assert [p.id for p in kept] == order[:4].tolist()
    by_id = client.query_points(name, query=5, limit=3).points  # the point itself left out
    want = np.argsort(-(Y @ Y[5]) if distance == "Dot" else ((Y - Y[5]) ** 2).sum(1),
                      kind="stable")
    assert [p.id for p in by_id] == [int(i) for i in want if i != 5][:3]
    mmr = models.NearestQuery(nearest=Y[0].tolist(), mmr=models.Mmr(diversity=0.6,
                                                                    candidates_limit=20))
    alone = client.query_points(name, query=mmr, limit=4).points
    batch = client.query_batch_points(name, [models.QueryRequest(query=mmr, limit=4)])
    assert [p.id for p in batch[0].points] == [p.id for p in alone]
    r = httpx.post(f"{server.url}/collections/{name}/points/query", json={"query": 10**6})
    assert r.status_code == 404
    r = httpx.post(f"{server.url}/collections/{name}/points/query", json={
        "query": [0.0] * 8, "prefetch": [{"query": [0.0] * 8}]})
    assert r.status_code == 400 and "prefetch" in r.json()["status"]["error"]
    r = httpx.post(f"{server.url}/collections/{name}/splats/feedback",
                   json={"query": [1.0] * 8, "relevant": [1]})
    assert (r.status_code == 400) == (distance == "Dot"), r.text  # no splat under Dot


def _routes():
    """Every route with a body that is valid for it (collection "k")."""
    pt = {"points": [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4]}]}
    reads = [("GET", "/collections", None), ("GET", "/collections/k", None),
             ("GET", "/collections/k/exists", None),
             ("POST", "/collections/k/points", {"ids": [1]}),
             ("POST", "/collections/k/points/scroll", {}),
             ("POST", "/collections/k/points/count", {}),
             ("POST", "/collections/k/points/query", {"query": [1, 0, 0, 0]}),
             ("POST", "/collections/k/points/query/batch", {"searches": [{"query": [1, 0, 0,
                                                                                   0]}]}),
             ("POST", "/collections/k/points/search", {"vector": [1, 0, 0, 0]}),
             ("POST", "/collections/k/points/search/batch", {"searches": [{"vector": [1, 0, 0,
                                                                                      0]}]}),
             ("POST", "/collections/k/splats/energy", {"queries": [[1, 0, 0, 0]]}),
             ("GET", "/collections/k/splats/stats", None), ("GET", "/metrics", None)]
    writes = [("PUT", "/collections/k2", {"vectors": {"size": 4, "distance": "Dot"}}),
              ("DELETE", "/collections/k", None),
              ("PUT", "/collections/k/points?wait=true", pt),
              ("POST", "/collections/k/points/delete", {"points": [0]}),
              ("POST", "/collections/k/points/payload", {"payload": {"a": 1}, "points": [0]}),
              ("PUT", "/collections/k/points/payload", {"payload": {"a": 1}, "points": [0]}),
              ("POST", "/collections/k/splats/feedback", {"query": [1, 0, 0, 0],
                                                          "relevant": [0]}),
              ("POST", "/collections/k/splats/decay", {"now": 1.0}),
              ("POST", "/collections/k/splats/consolidate", None)]
    return reads, writes


def test_api_keys_guard_every_route_and_a_refused_write_changes_nothing(tmp_path):
    reads, writes = _routes()
    with Server(tmp_path / "k", "--api-key", "rw-secret", "--read-only-key", "ro-1") as srv:
        rw = {"api-key": "rw-secret"}
        assert httpx.put(srv.url + "/collections/k", headers=rw, json={
            "vectors": {"size": 4, "distance": "Cosine"}}).status_code == 200
        assert httpx.put(srv.url + "/collections/k/points?wait=true", headers=rw, json={
            "points": [{"id": 0, "vector": [1, 0, 0, 0], "payload": {"a": 0}}]}
                         ).status_code == 200
        before = httpx.get(srv.url + "/collections/k/splats/stats", headers=rw).json()
        for method, path, body in reads + writes:
            for headers, want in (({}, 401), ({"api-key": "wrong"}, 403),
                                  ({"authorization": "Bearer wrong"}, 403)):
                r = httpx.request(method, srv.url + path, json=body, headers=headers)
                assert r.status_code == want, (method, path, headers, r.text)
        for method, path, body in writes:
            r = httpx.request(method, srv.url + path, json=body, headers={"api-key": "ro-1"})
            assert r.status_code == 403 and "read-only" in r.json()["status"]["error"]
        for method, path, body in reads:
            r = httpx.request(method, srv.url + path, json=body, headers={"api-key": "ro-1"})
            assert r.status_code == 200, (path, r.text)
        r = httpx.get(srv.url + "/collections", headers={"authorization": "Bearer ro-1"})
        assert r.status_code == 200
        r = httpx.get(srv.url + "/collections", headers={"api-key": "é".encode("latin-1")})
        assert r.status_code == 403  # a key outside ASCII is just a wrong key
        for path in ("/", "/healthz", "/readyz"):
            assert httpx.get(srv.url + path).status_code == 200  # probes need no key
        after = httpx.get(srv.url + "/collections/k/splats/stats", headers=rw).json()
        assert after["result"]["count"] == before["result"]["count"] == 1
        assert after["result"]["alpha"] == before["result"]["alpha"]
        got = httpx.post(srv.url + "/collections/k/points", headers=rw,
                         json={"ids": [0], "with_payload": True}).json()["result"]
        assert got == [{"id": 0, "payload": {"a": 0}, "vector": None}]
        assert httpx.get(srv.url + "/collections", headers=rw).json()["result"] == {
            "collections": [{"name": "k"}]}


def test_bad_requests_are_4xx_with_a_named_problem_and_store_nothing(tmp_path):
    with Server(tmp_path / "b", "--max-points", "50", "--max-body-bytes", "200000") as srv:
        u = srv.url
        assert httpx.put(u + "/collections/c", json={
            "vectors": {"size": 3, "distance": "Cosine"}}).status_code == 200
        good = {"id": 1, "vector": [1, 0, 0]}
        cases = [
            ("PUT", "/collections/c/points", {"points": [good, {"id": 2, "vector": [1, 0]}]},
             400, "dimension"),
            ("PUT", "/collections/c/points", {"points": [good, {"id": -5, "vector": [1, 0, 0]}]},
             400, "point id"),
            ("PUT", "/collections/c/points", {"points": [good, {"id": "not-a-uuid",
                                                                "vector": [1, 0, 0]}]},
             400, "point id"),
            ("PUT", "/collections/c/points", {"points": [good, {"id": 2**63,
                                                                "vector": [1, 0, 0]}]},
             400, "2^63"),
            ("PUT", "/collections/c/points", {"points": [{"id": i, "vector": [1, 0, 0]}
                                                         for i in range(51)]}, 400, "limit"),
            ("PUT", "/collections/c/points", {"points": [{"id": 1, "vector": [0, 0, 0]}]},
             400, "zero"),
            ("PUT", "/collections/c/points", {"points": [good]} | {"batch": {
                "ids": [3], "vectors": [[1, 0, 0]]}}, 400, "either"),
            ("POST", "/collections/c/points/query", {"query": [1, 0, 0], "limit": 10**6},
             400, "limit"),
            ("POST", "/collections/c/points/query", {"query": [1, 0, 0], "filter": {
                "must": [{"key": "a", "match": {"text": "x"}}]}}, 400, "not supported"),
            ("POST", "/collections/c/points/count", {"filter": {"must": [
                {"key": "a", "range": {"gte": "x"}}]}}, 400, "number"),
            ("PUT", "/collections/c", {"vectors": {"size": 3, "distance": "Cosine"}}, 409,
             "exists"),
            ("PUT", "/collections/bad.name", {"vectors": {"size": 3, "distance": "Cosine"}},
             400, "name"),
            ("PUT", "/collections/%2E%2E", {"vectors": {"size": 3, "distance": "Cosine"}},
             400, "name"),
            ("PUT", "/collections/x", {"vectors": {"size": 3, "distance": "Manhattan"}},
             400, "distance"),
            ("GET", "/collections/missing", None, 404, "doesn't exist"),
        ]
        deep: dict = {"must": [{"key": "a", "match": {"value": 1}}]}
        for _ in range(40):
            deep = {"must": [deep]}
        cases.append(("POST", "/collections/c/points/count", {"filter": deep}, 400, "deep"))
        for method, path, body, status, words in cases:
            r = httpx.request(method, u + path, json=body)
            assert r.status_code == status, (path, body, r.text)
            assert words in r.json()["status"]["error"], r.text
        for raw in (b"{not json", b"[1, 2", b"\xff\xfe"):
            r = httpx.put(u + "/collections/c/points", content=raw,
                          headers={"content-type": "application/json"})
            assert r.status_code == 400 and "Format error" in r.json()["status"]["error"]
        r = httpx.put(u + "/collections/c/points", content=b'{"points": [{"id": 3, "vector": '
                      b'[1, 0, 0], "payload": {"x": NaN}}]}',
                      headers={"content-type": "application/json"})
        assert r.status_code == 400 and "NaN" in r.json()["status"]["error"], r.text
        big = {"points": [{"id": 1, "vector": [0.5] * 3, "payload": {"x": "y" * 300_000}}]}
        r = httpx.put(u + "/collections/c/points", json=big)
        assert r.status_code == 413 and "limit" in r.json()["status"]["error"]

        def chunks():  # no Content-Length: the limit holds while the body streams in
            yield b'{"points": [{"id": 1, "vector": [0.5, 0.5, 0.5], "payload": {"x": "'
            for _ in range(40):
                yield b"y" * 10_000
            yield b'"}}]}'

        r = httpx.put(u + "/collections/c/points", content=chunks(),
                      headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert httpx.post(u + "/collections/c/points/count", json={}).json()["result"] == {
            "count": 0}  # nothing of any refused write is there
        small = b'{"points": [{"id": 5, "vector": [0, 1, 0]}, {"id": 5, "vector": [1, 0, 0]}]}'
        r = httpx.put(u + "/collections/c/points?wait=true", content=iter([small]),
                      headers={"content-type": "application/json"})  # chunked, in the limit
        assert r.status_code == 200  # an id twice: the last one wins, as in Qdrant
        got = httpx.post(u + "/collections/c/points", json={"ids": [5], "with_vector": True})
        assert got.json()["result"][0]["vector"] == [1.0, 0.0, 0.0]
        names = sorted(p.name for p in (tmp_path / "b").iterdir())
        assert names == ["c"] and not (tmp_path / "x").exists()


def test_the_server_leaves_directories_that_are_not_collections_alone(tmp_path):
    root = tmp_path / "srv"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "a.jpg").write_text("x")
    (root / "old_store").mkdir()
    (root / "old_store" / "manifest.json").write_text("{}")
    (root / ".creating-x-1234").mkdir()  # an interrupted create: removed
    with Server(root) as srv:
        assert httpx.get(srv.url + "/collections").json()["result"]["collections"] == []
    assert (root / "photos" / "a.jpg").read_text() == "x"
    assert (root / "old_store" / "manifest.json").exists()
    assert not (root / ".creating-x-1234").exists()


def test_metrics_openapi_probes_and_sigterm(tmp_path):
    srv = Server(tmp_path / "m").start()
    try:
        httpx.put(srv.url + "/collections/m", json={"vectors": {"size": 2, "distance": "Cosine"}})
        httpx.put(srv.url + "/collections/m/points?wait=true", json={
            "points": [{"id": i, "vector": [1, i]} for i in range(7)]})
        httpx.get(srv.url + "/collections/nope")
        text = httpx.get(srv.url + "/metrics").text
        assert 'm2m_points{collection="m"} 7.0' in text
        assert 'm2m_requests_total{method="PUT",route="/collections/{name}/points",' \
               'status="200"} 1.0' in text
        assert 'route="/collections/{name}",status="404"' in text
        assert 'm2m_request_seconds_bucket{le="0.5",method="GET",route="/collections/{name}",' \
               'status="404"} 1.0' in text
        assert 'm2m_log_bytes{collection="m"}' in text
        assert 'm2m_backend_info{device=' in text
        served = httpx.get(srv.url + "/openapi.json").json()
        committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
        assert served == committed, "run: python scripts/dump_openapi.py"
    finally:
        said = srv.stop()  # SIGTERM: a clean shutdown that closes every store
    assert "closed 1 collection(s)" in said, said
    again = m2m_gpu.SplatStore.open(tmp_path / "m" / "m" / "store")  # closed: not locked
    assert len(again) == 7
    again.close()


def test_kill_9_during_acknowledged_upserts_loses_nothing(tmp_path):
    """20 kills, each in the middle of a stream of wait=true upserts from 3 clients; after
    every restart each acknowledged point is there with its payload."""
    path, acked = tmp_path / "kill", {}
    srv = Server(path).start()
    httpx.put(srv.url + "/collections/c", json={"vectors": {"size": 4, "distance": "Euclid"}})
    rnd = random.Random(0)
    for trial in range(20):
        stop = threading.Event()

        def stream(worker, url=srv.url, trial=trial, stop=stop):
            n = 0
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    pid = trial * 1_000_000 + worker * 100_000 + n
                    try:
                        r = c.put(url + "/collections/c/points?wait=true", json={"points": [
                            {"id": pid, "vector": [pid % 7, 1, 2, 3],
                             "payload": {"t": trial}}]})
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acked[pid] = trial
                    n += 1

        threads = [threading.Thread(target=stream, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        threading.Event().wait(rnd.uniform(0.1, 0.4))
        srv.kill()
        stop.set()
        for t in threads:
            t.join()
        srv = Server(path, port=srv.port).start()
        ids = list(acked)
        got = httpx.post(srv.url + "/collections/c/points", json={"ids": ids}).json()["result"]
        assert {r["id"] for r in got} == set(ids), f"trial {trial}: acknowledged writes lost"
        assert all(r["payload"] == {"t": acked[r["id"]]} for r in got)
    assert len(acked) > 100
    srv.stop()


def test_text_collections_store_search_and_reopen(tmp_path):
    """A TextMemory collection: texts in and out over HTTP, hybrid search with a Qdrant
    filter, feedback, confidence; Qdrant's reads work on it, its bypassing writes are
    refused; it reopens with its texts and BM25 state after a restart."""
    texts = ["the cat sat on the warm mat", "stock markets fell sharply today",
             "the central bank raised interest rates", "gpu kernels for vector search"]
    srv = Server(tmp_path / "t").start()
    try:
        u = srv.url + "/collections/notes"
        assert httpx.put(u + "/text", json={"encoder": "hashed"}).json()["result"] is True
        ids = httpx.post(u + "/text/store", json={
            "texts": texts, "metadata": [{"kind": "pet" if i == 0 else "money"}
                                         for i in range(4)]}).json()["result"]["ids"]
        hits = httpx.post(u + "/text/search", json={"query": "interest rates bank", "k": 2}
                          ).json()["result"]["hits"]
        assert hits[0]["id"] == ids[2] and hits[0]["text"] == texts[2]
        assert hits[0]["ranks"]["bm25"] == 1 and hits[0]["metadata"] == {"kind": "money"}
        only_pets = {"must": [{"key": "kind", "match": {"value": "pet"}}]}
        got = httpx.post(u + "/text/search", json={"query": "bank", "k": 4, "mode": "bm25",
                                                   "filter": only_pets}).json()["result"]
        assert got["hits"] == []
        pets = httpx.post(u + "/text/search", json={"query": "cat", "k": 4,
                                                    "filter": only_pets}).json()["result"]
        assert [h["id"] for h in pets["hits"]] == [ids[0]]
        conf = [httpx.post(u + "/text/confidence", json={"query": q}).json()["result"]
                ["confidence"] for q in (texts[3], "zebra quartz xylophone")]
        assert conf[0] > 0.9 > conf[1]
        assert httpx.post(u + "/text/feedback", json={"query": "markets", "relevant": [ids[1]]}
                          ).json()["result"]["updated"] >= 1
        extra = httpx.post(u + "/text/store", json={"texts": ["fleeting note"]}).json()
        httpx.post(u + "/splats/decay", json={"now": 20 * 30 * 86400.0})  # 20 half-lives
        httpx.post(u + "/text/store", json={"texts": ["a fresh note on birds"],
                                            "ids": [extra["result"]["ids"][0]]})
        gone = httpx.post(u + "/splats/consolidate").json()["result"]["pruned"]
        assert set(gone) == set(ids)  # the consolidation prunes the old texts
        r = httpx.post(u + "/text/search", json={"query": "cat mat", "mode": "bm25"})
        assert r.status_code == 200 and r.json()["result"]["hits"] == []  # BM25 followed
        ids = ids + httpx.post(u + "/text/store", json={"texts": texts}).json()["result"]["ids"]
        ids = ids[4:]
        assert httpx.post(u + "/points/count", json={}).json()["result"]["count"] == 5
        r = httpx.put(u + "/points", json={"points": [{"id": 9, "vector": [0.0] * 256}]})
        assert r.status_code == 400 and "text/store" in r.json()["status"]["error"]
        rec = httpx.post(u + "/points", json={"ids": [ids[3]]}).json()["result"][0]
        assert rec["payload"]["__text__"] == texts[3]
        httpx.post(u + "/points/delete", json={"points": [ids[1]]})
        r = httpx.post(srv.url + "/collections/nope/text/search", json={"query": "x"})
        assert r.status_code == 404
        httpx.put(srv.url + "/collections/vec", json={"vectors": {"size": 2,
                                                                  "distance": "Dot"}})
        r = httpx.post(srv.url + "/collections/vec/text/search", json={"query": "x"})
        assert r.status_code == 400 and "vectors, not texts" in r.json()["status"]["error"]
        r = httpx.put(srv.url + "/collections/bad/text", json={"encoder": "/some/dir"})
        assert r.status_code == 400 and "allows" in r.json()["status"]["error"]
        assert not (tmp_path / "t" / "bad").exists()
    finally:
        srv.stop()
    with Server(tmp_path / "t") as again:
        hits = httpx.post(again.url + "/collections/notes/text/search", json={
            "query": "stock markets", "k": 4, "mode": "bm25"}).json()["result"]["hits"]
        assert ids[1] not in [h["id"] for h in hits]  # the delete held
        assert [h["id"] for h in httpx.post(again.url + "/collections/notes/text/search", json={
            "query": "gpu kernels", "k": 1}).json()["result"]["hits"]] == [ids[3]]


ODD_VALUES = [None, "NULL", "a", ["a", "b"], [], 5.0, 5, [None], "b", True, 1, [5.0], [1, "a"],
              {"x": 1}]  # None: key missing; "NULL": null


def test_filter_conditions_match_qdrants_own_on_awkward_payloads(server):
    """Missing keys, nulls, empty lists, lists holding null, 5 against 5.0, True against
    1, mixed lists, objects: every condition answers as qdrant-client's local mode does,
    under must and under must_not."""
    points = [models.PointStruct(id=i, vector=[float(i), 1.0], payload=(
        {"k": None} if v == "NULL" else {} if v is None else {"k": v}))
        for i, v in enumerate(ODD_VALUES)]
    ours, ref = QdrantClient(url=server.url), QdrantClient(":memory:")
    for c in (ours, ref):
        c.create_collection("odd", vectors_config=models.VectorParams(size=2,
                                                                      distance="Euclid"))
        c.upsert("odd", points)
    F = models.FieldCondition
    conditions = [
        F(key="k", match=models.MatchValue(value=5)), F(key="k", match=models.MatchValue(value=1)),
        F(key="k", match=models.MatchValue(value=True)),
        F(key="k", match=models.MatchValue(value="a")),
        F(key="k", match=models.MatchAny(any=["b", "a"])),
        F(key="k", match=models.MatchAny(any=[5])),
        F(key="k", match=models.MatchExcept(**{"except": ["a"]})),
        F(key="k", match=models.MatchExcept(**{"except": [5]})),
        F(key="k", range=models.Range(gte=1)), F(key="k", range=models.Range(lt=5.5, gt=0.5)),
        models.IsEmptyCondition(is_empty=models.PayloadField(key="k")),
        models.IsNullCondition(is_null=models.PayloadField(key="k")),
        models.HasIdCondition(has_id=[1, 3, 99]),
    ]
    for cond in conditions:
        for f in (models.Filter(must=[cond]), models.Filter(must_not=[cond]),
                  models.Filter(should=[cond, F(key="k", match=models.MatchValue(value="b"))])):
            a = sorted(p.id for p in ours.scroll("odd", scroll_filter=f, limit=100)[0])
            b = sorted(p.id for p in ref.scroll("odd", scroll_filter=f, limit=100)[0])
            assert a == b, (f, a, b)
            assert ours.count("odd", count_filter=f).count == len(b)
