"""API keys and request-size limits.

Keys travel in Qdrant's ``api-key`` header (or ``Authorization: Bearer <key>``). One
read-write key and any number of read-only keys; with none configured every request is
allowed (and the CLI binds to loopback only unless told otherwise). A missing key is 401,
a wrong one 403, a read-only key on a write 403; the route is never run.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.security import APIKeyHeader

from .errors import Denied

API_KEY = APIKeyHeader(name="api-key", auto_error=False,
                       description="the read-write key, or a read-only key for reads")


@dataclass
class Keys:
    read_write: str | None = None
    read_only: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.read_write or self.read_only)

    def check(self, request: Request, write: bool) -> None:
        if not self.enabled:
            return
        given = request.headers.get("api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise Denied(401, "Must provide an API key or an Authorization bearer token")
        raw = given.encode("utf-8", "surrogatepass")  # headers may hold any latin-1 text
        if self.read_write and hmac.compare_digest(raw, self.read_write.encode()):
            return
        if any(hmac.compare_digest(raw, k.encode()) for k in self.read_only):
            if write:
                raise Denied(403, "this API key is read-only")
            return
        raise Denied(403, "Invalid API key or JWT")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before any of
    it reaches a route, by its Content-Length, or, for a body without one (chunked), by
    reading it here first (the route then gets it from memory)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await _reject(send, self.limit)
            return await self.app(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await _reject(send, self.limit)
            more = msg.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reject(send, limit: int) -> None:
    body = json.dumps({"status": {"error": f"request body over the limit of {limit} bytes"},
                       "time": 0.0}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
