"""The server: Qdrant's REST shape over durable SplatStores, plus splat routes, API keys,
limits and Prometheus metrics.

    app = create_app("/var/lib/m2m", api_key="secret")   # an ASGI app (FastAPI)
    # m2m-gpu serve --path /var/lib/m2m --api-key secret  runs it under uvicorn

FastAPI + uvicorn: the OpenAPI schema comes from the request models (``models.py``), and
uvicorn handles SIGTERM / SIGINT by finishing the requests in flight and running the
shutdown that closes every store.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import errors, routes_points, routes_query, routes_splats, routes_text
from .metrics import Metrics
from .registry import Registry
from .security import BodyLimit, Keys

log = logging.getLogger("m2m_gpu.server")
QDRANT_VERSION = "1.20.0"  # the API version spoken: qdrant-client checks major.minor
MAX_BODY_BYTES = 64 << 20
MAX_POINTS = 100_000


def create_app(path: str | Path, backend: Any = None, api_key: str | None = None,
               read_only_keys: list[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               max_points: int = MAX_POINTS,
               text_encoders: tuple[str, ...] = ("hashed", "minilm")) -> FastAPI:
    registry = Registry(path, backend, text_encoders)

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            n = len(registry.names())
            registry.close()
            log.warning("m2m-gpu server: closed %d collection(s)", n)

    app = FastAPI(title="m2m-gpu", version=__version__, lifespan=lifespan,
                  description="Qdrant's REST shape over durable splat stores, and splat "
                              "routes of its own.")
    app.state.registry, app.state.max_points = registry, max_points
    app.state.keys = Keys(api_key, list(read_only_keys or []))
    metrics = Metrics(registry)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(_Measured, metrics=metrics)  # outermost: it sees the 413s too
    app.include_router(routes_points.router)
    app.include_router(routes_query.router)
    app.include_router(routes_splats.router)
    app.include_router(routes_text.router)
    _errors(app)

    @app.get("/")
    def root():
        return {"title": "m2m-gpu (Qdrant REST subset)", "version": QDRANT_VERSION,
                "m2m_gpu": __version__}

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz():
        return "healthz check passed"

    @app.get("/readyz", response_class=PlainTextResponse)
    def readyz():
        registry.names()  # the registry answers: the stores are open
        return "all shards are ready"

    @app.get("/metrics", response_class=PlainTextResponse,
             dependencies=routes_points.READ)
    def prometheus():
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    return app


class _Measured:
    def __init__(self, app, metrics: Metrics) -> None:
        self.call = metrics.middleware(app)

    async def __call__(self, scope, receive, send):
        await self.call(scope, receive, send)


def _errors(app: FastAPI) -> None:
    from ..errors import InvalidInputError
    from .collection import NotFound
    from .qdrant import BadRequest
    from .registry import AlreadyExists

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(errors.body(f"Format error in JSON body: {where}: "
                                        f"{first.get('msg', 'invalid')}"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(errors.body(str(exc.detail)), status_code=exc.status_code)

    async def known(request: Request, exc: Exception):
        status = errors.status_of(exc) or 500
        message = str(exc.args[0]) if exc.args else str(exc)
        prefix = {404: "Not found: ", 400: "Wrong input: ", 409: "Wrong input: "}
        return JSONResponse(errors.body(prefix.get(status, "") + message), status_code=status)

    for kind in (errors.Denied, NotFound, AlreadyExists, BadRequest, InvalidInputError):
        app.add_exception_handler(kind, known)

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception):
        return JSONResponse(errors.body(f"Service internal error: {type(exc).__name__}"),
                            status_code=500)
