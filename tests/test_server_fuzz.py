"""Schemathesis against the served OpenAPI schema of a real server on a loopback port: a
bounded run (a fixed number of examples per operation, derandomised) with zero 5xx
answers and zero responses that break the schema (status codes, content types, bodies)."""

from __future__ import annotations

import itertools

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from .serving import Server  # noqa: E402

CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("fuzz")) as srv:
        httpx.put(srv.url + "/collections/k", json={"vectors": {"size": 4,
                                                                "distance": "Cosine"}})
        httpx.put(srv.url + "/collections/k/points?wait=true", json={
            "points": [{"id": i, "vector": [1, i, 0, 1], "payload": {"n": i}}
                       for i in range(20)]})
        yield srv


def fuzz(op, turn):
    """Hypothesis over one operation's generated requests."""
    keep = op.method.upper() == "DELETE" and op.path == "/collections/{name}"

    @given(case=op.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        if "name" in (case.path_parameters or {}) and not keep and next(turn) % 2:
            case.path_parameters = {**case.path_parameters, "name": "k"}  # the real one
        case.call_and_validate(checks=CHECKS)

    return run


def test_no_5xx_and_no_schema_violations(served):
    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 20
    turn = itertools.count()
    for op in operations:
        fuzz(op, turn)()
    statuses = _statuses(served.url)
    assert sum(statuses.values()) >= 10 * len(operations), statuses  # it really ran
    assert statuses.get("200", 0) > 100 and statuses.get("400", 0) > 100, statuses
    assert not any(code.startswith("5") for code in statuses), statuses


def _statuses(url: str) -> dict[str, float]:
    """Requests served per status code, from the server's own /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("m2m_requests_total{"):
            code = line.split('status="')[1].split('"')[0]
            out[code] = out.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
