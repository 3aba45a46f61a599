"""``/metrics`` in Prometheus' text format: requests and latency per route and status
(recorded by a middleware), and at each scrape the points, tier bytes and log bytes of
every collection and the backend in use."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily


class Metrics:
    def __init__(self, registry_of_collections) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("m2m_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("m2m_request_seconds", "HTTP request latency",
                                 ["method", "route", "status"], registry=self.registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                          .5, 1, 2.5, 5, 10))
        self.registry.register(_StoreCollector(registry_of_collections))

    def middleware(self, app):
        """Pure ASGI (BaseHTTPMiddleware costs a task and a stream per request): the
        status from the response start, the route template from the scope."""
        metrics = self

        async def record(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            t, status = time.perf_counter(), [500]

            async def sending(msg):
                if msg["type"] == "http.response.start":
                    status[0] = msg["status"]
                await send(msg)

            try:
                await app(scope, receive, sending)
            finally:
                path = getattr(scope.get("route"), "path", "unmatched")
                metrics.requests.labels(scope["method"], path, str(status[0])).inc()
                metrics.latency.labels(scope["method"], path, str(status[0])).observe(
                    time.perf_counter() - t)

        return record


class _StoreCollector:
    def __init__(self, collections) -> None:
        self.collections = collections

    def collect(self):
        points = GaugeMetricFamily("m2m_points", "points per collection", labels=["collection"])
        tier = GaugeMetricFamily("m2m_tier_bytes", "bytes per memory tier",
                                 labels=["collection", "tier"])
        log = GaugeMetricFamily("m2m_log_bytes", "bytes of the write-ahead log",
                                labels=["collection"])
        backend = InfoMetricFamily("m2m_backend", "the compute backend")
        seen = None
        for name in self.collections.names():
            try:
                col = self.collections.get(name)
                st = col.store.stats()
            except Exception:  # deleted between the listing and the read
                continue
            points.add_metric([name], st["count"])
            for t, v in st.get("tiers", {}).items():
                if isinstance(v, dict) and "bytes" in v:
                    tier.add_metric([name, t], v["bytes"])
            log.add_metric([name], _log_bytes(col.store.path))
            seen = seen or {"name": st["backend"], "device": st["device"]}
        if seen:
            backend.add_metric([], seen)
        yield from (points, tier, log, backend)


def _log_bytes(path) -> int:
    total = 0
    for f in (path.glob("wal-*.log") if path is not None else ()):
        try:
            total += f.stat().st_size
        except OSError:  # a checkpoint removed it meanwhile
            pass
    return total
