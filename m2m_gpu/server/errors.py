"""The server's error answers: Qdrant's body ``{"status": {"error": ...}, "time": ...}``
with the status code each kind of failure gets."""

from __future__ import annotations

from ..errors import InvalidInputError, UnknownIdError


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an exception a route may raise; None: a server fault (500)."""
    from .collection import NotFound
    from .qdrant import BadRequest
    from .registry import AlreadyExists

    if isinstance(exc, Denied):
        return exc.status
    if isinstance(exc, (NotFound, UnknownIdError)):
        return 404
    if isinstance(exc, AlreadyExists):
        return 409
    if isinstance(exc, (BadRequest, InvalidInputError)):
        return 400
    return None


def body(message: str, elapsed: float = 0.0) -> dict:
    return {"status": {"error": message}, "time": elapsed}
