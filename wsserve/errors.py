"""Exceptions of wsserve; each wire error code is one class.

Tree (all carry ``code``, ``message``, and optionally ``retry_after_ms`` and
``request_id``)::

    WsserveError                      root; never raised itself
    ├── BadJson            bad_json            (invalid_utf8: the text was not UTF-8)
    ├── BadRequest         bad_request
    ├── UnknownModel       unknown_model
    ├── DuplicateId        duplicate_id
    ├── InvalidInput       invalid_input
    ├── Overloaded         overloaded          (retry_after_ms)
    ├── RateLimited        rate_limited        (retry_after_ms)
    ├── DeadlineExceeded   deadline_exceeded
    ├── Cancelled          cancelled
    ├── Unauthorized       unauthorized
    ├── Forbidden          forbidden           (an admin operation without the admin key)
    ├── ShuttingDown       shutting_down
    └── Internal           internal

The server maps any ``WsserveError`` to an ``error`` frame in one place
(:func:`wsserve.protocol.encode_error`); any other exception escaping request
handling becomes ``Internal``.
"""

from __future__ import annotations

from typing import ClassVar

from .jsontypes import frame_text

__all__ = [
    "WsserveError",
    "BadJson",
    "BadRequest",
    "UnknownModel",
    "DuplicateId",
    "InvalidInput",
    "Overloaded",
    "RateLimited",
    "DeadlineExceeded",
    "Cancelled",
    "Unauthorized",
    "Forbidden",
    "ShuttingDown",
    "Internal",
    "ERROR_CODES",
    "error_for_code",
]


class WsserveError(Exception):
    """Root of every wsserve error. ``code`` is the wire error code."""

    code: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        retry_after_ms: int | None = None,
        request_id: object = None,
    ) -> None:
        message = frame_text(message)  # it goes out in a JSON frame: it may quote a model's exception
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms
        #: The id of the request this error ends, when it could be read.
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadJson(WsserveError):
    """Not parseable JSON.  ``invalid_utf8`` is true when the bytes were not even UTF-8:
    over HTTP that is still ``bad_json``, but in a WebSocket text frame RFC 6455 §8.1
    requires failing the connection (close code 1007)."""

    code = "bad_json"

    def __init__(self, message: str, *, invalid_utf8: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.invalid_utf8 = invalid_utf8


class BadRequest(WsserveError):
    code = "bad_request"


class UnknownModel(WsserveError):
    code = "unknown_model"


class DuplicateId(WsserveError):
    code = "duplicate_id"


class InvalidInput(WsserveError):
    code = "invalid_input"


class Overloaded(WsserveError):
    code = "overloaded"


class RateLimited(WsserveError):
    code = "rate_limited"


class DeadlineExceeded(WsserveError):
    code = "deadline_exceeded"


class Cancelled(WsserveError):
    code = "cancelled"


class Unauthorized(WsserveError):
    code = "unauthorized"


class Forbidden(WsserveError):
    """An operation this connection may not perform (admin operations need the admin key,
    or loopback when no keys are configured)."""

    code = "forbidden"


class ShuttingDown(WsserveError):
    code = "shutting_down"


class Internal(WsserveError):
    code = "internal"


_CLASSES: tuple[type[WsserveError], ...] = (
    BadJson, BadRequest, UnknownModel, DuplicateId, InvalidInput, Overloaded,
    RateLimited, DeadlineExceeded, Cancelled, Unauthorized, ShuttingDown, Internal, Forbidden,
)

#: Every wire error code, in the order PROTOCOL.md lists them.
ERROR_CODES: tuple[str, ...] = tuple(c.code for c in _CLASSES)

_BY_CODE = {c.code: c for c in _CLASSES}


def error_for_code(code: str) -> type[WsserveError]:
    """Return the exception class for a wire ``code`` (``Internal`` if unknown)."""
    return _BY_CODE.get(code, Internal)
