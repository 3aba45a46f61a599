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
        if self.read_write and hmac.compare_digest(given, self.read_write):
            return
        if any(hmac.compare_digest(given, k) for k in self.read_only):
            if write:
                raise Denied(403, "this API key is read-only")
            return
        raise Denied(403, "Invalid API key or JWT")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before any of
    it reaches a route (by its Content-Length, or while it streams in)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _reject(send, self.limit)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _reject(send, self.limit)


class _TooLarge(Exception):
    pass


async def _reject(send, limit: int) -> None:
    body = json.dumps({"status": {"error": f"request body over the limit of {limit} bytes"},
                       "time": 0.0}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
