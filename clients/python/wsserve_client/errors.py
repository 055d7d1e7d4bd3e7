"""Exceptions raised by the wsserve client; one class per wire error code.

Tree (every class carries ``code``, ``request_id`` and ``message``)::

    WsserveError                  root; also raised as-is for a code this client does not know
    ├── BadJsonError          bad_json
    ├── BadRequestError       bad_request
    ├── UnknownModelError     unknown_model
    ├── DuplicateIdError      duplicate_id
    ├── InvalidInput          invalid_input
    ├── OverloadedError       overloaded          (.retry_after, seconds or None)
    ├── RateLimitedError      rate_limited        (.retry_after, seconds or None)
    ├── DeadlineExceeded      deadline_exceeded   (server deadline, or the client-side guard;
    │                          also a TimeoutError)
    ├── RequestCancelled      cancelled           (not asyncio.CancelledError: a server reply)
    ├── Unauthorized          unauthorized        (also a 401/403 handshake answer)
    ├── Forbidden             forbidden           (an admin call without the admin key)
    ├── ShuttingDown          shutting_down
    ├── InternalServerError   internal
    ├── RequestTooLarge       (client-side, code None: the frame exceeds the server's
    │                          max_message_bytes and was not sent)
    ├── ProtocolError         (client-side, code None: the server sent a frame that breaks the
    │                          protocol, or a hello with a protocol version this client lacks)
    ├── StreamOverflow        (client-side, code None: a stream's unread frames passed
    │                          max_stream_buffer_bytes; the request was cancelled)
    └── ConnectionLost        (client-side, code None: the socket closed or could not be opened)
        └── ClientClosed      (the Client was closed while the call was unfinished)

Cancelling the task that awaits a call raises :class:`asyncio.CancelledError` as usual; the
client then tells the server with a ``cancel`` frame. :class:`RequestCancelled` is only raised
when the *server's* terminal frame says ``cancelled`` to a caller still listening (for example
after :meth:`PredictStream.cancel`).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "WsserveError",
    "BadJsonError",
    "BadRequestError",
    "UnknownModelError",
    "DuplicateIdError",
    "InvalidInput",
    "OverloadedError",
    "RateLimitedError",
    "DeadlineExceeded",
    "RequestCancelled",
    "Unauthorized",
    "Forbidden",
    "ShuttingDown",
    "InternalServerError",
    "RequestTooLarge",
    "ProtocolError",
    "StreamOverflow",
    "ConnectionLost",
    "ClientClosed",
    "ERROR_CLASSES",
    "error_from_frame",
]

RequestId = int | str | None


class WsserveError(Exception):
    """Root of every error this client raises.

    Attributes:
        code: the wire error code (``"overloaded"``, ...) or ``None`` for client-side errors.
        request_id: the id of the request it answers, or ``None``.
        message: the server's (or client's) human-readable explanation.
        retry_after: seconds the server asked to wait before retrying, or ``None``.
    """

    #: The wire code this class stands for (``None`` for client-side errors).
    wire_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        request_id: RequestId = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.code: str | None = code if code is not None else self.wire_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        prefix = f"[{self.code}] " if self.code else ""
        suffix = f" (request {self.request_id!r})" if self.request_id is not None else ""
        return f"{prefix}{self.message}{suffix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, request_id={self.request_id!r})"


class BadJsonError(WsserveError):
    """The server could not parse a message as JSON."""

    wire_code = "bad_json"


class BadRequestError(WsserveError):
    """Malformed request: unknown type, missing/ill-typed field, wrong model kind."""

    wire_code = "bad_request"


class UnknownModelError(WsserveError):
    """No model (or version) by that name."""

    wire_code = "unknown_model"


class DuplicateIdError(WsserveError):
    """The id is already used by an unfinished request on this connection."""

    wire_code = "duplicate_id"


class InvalidInput(WsserveError):
    """The inputs are not a finite ``[n, d]`` array the model accepts."""

    wire_code = "invalid_input"


class OverloadedError(WsserveError):
    """Too many unfinished requests, or the model's queue is full; see ``retry_after``."""

    wire_code = "overloaded"


class RateLimitedError(WsserveError):
    """A rate limit was hit; see ``retry_after``."""

    wire_code = "rate_limited"


class DeadlineExceeded(WsserveError, TimeoutError):
    """The request's ``timeout`` passed before it finished: the server's ``deadline_exceeded``,
    or the client's own guard (which then sent ``cancel``). Also a :class:`TimeoutError`, so
    ``except TimeoutError`` catches a call that ran out of time whoever noticed it."""

    wire_code = "deadline_exceeded"


class RequestCancelled(WsserveError):
    """The server ended the request as cancelled."""

    wire_code = "cancelled"


class Unauthorized(WsserveError):
    """Missing or wrong credentials."""

    wire_code = "unauthorized"


class Forbidden(WsserveError):
    """The connection may not do this: ``load``/``unload``/``reload`` need the server's admin key
    (``--admin-key``), or a loopback connection when the server has no keys."""

    wire_code = "forbidden"


class ShuttingDown(WsserveError):
    """The server is draining and takes no new work."""

    wire_code = "shutting_down"


class InternalServerError(WsserveError):
    """A server bug or a model failure; the connection stays usable."""

    wire_code = "internal"


class RequestTooLarge(WsserveError):
    """The encoded request is larger than the server's ``max_message_bytes``, or its binary
    tensor frame's header is longer than ``max_binary_header_bytes``; it was not sent.

    Sending it would make the server close the whole connection (code 1009), failing every
    other call on it, so the client refuses it up front. Split the inputs into several calls.
    A header the server cannot read would be refused with an error that names no request id
    (so it could answer no call): use fewer or shorter input names.
    """


class ProtocolError(WsserveError):
    """The server broke the protocol: a frame for this call that is not JSON, not an object, of
    a type that does not answer this call (a ``token`` for a predict, a ``result`` for a
    generate), or with a field of the wrong type; or, at connect, a ``hello`` whose ``protocol``
    version this client does not speak. Only the call the frame answers fails (the client sends
    ``cancel`` for it if the server may still be running it); other calls and the connection
    go on. A hello refused at connect is not retried."""


class StreamOverflow(WsserveError):
    """A stream's consumer fell behind: the frames received for it and not yet read passed
    the client's ``max_stream_buffer_bytes``. They are dropped, the client sent ``cancel`` for
    the request, and the stream raises this; other calls are not affected."""


class ConnectionLost(WsserveError):
    """The connection closed (or could not be opened) before the call finished."""


class ClientClosed(ConnectionLost):
    """The :class:`~wsserve_client.Client` was closed; no more calls can be made on it."""


#: Exception class per wire error code.
ERROR_CLASSES: dict[str, type[WsserveError]] = {
    cls.wire_code: cls
    for cls in (
        BadJsonError, BadRequestError, UnknownModelError, DuplicateIdError, InvalidInput,
        OverloadedError, RateLimitedError, DeadlineExceeded, RequestCancelled, Unauthorized,
        Forbidden, ShuttingDown, InternalServerError,
    )
    if cls.wire_code is not None
}


def error_from_frame(frame: dict[str, Any]) -> WsserveError:
    """Build the exception for an ``error`` frame (a decoded JSON object).

    Unknown codes give a plain :class:`WsserveError` carrying that code; ``retry_after_ms``
    (when present and numeric) becomes ``retry_after`` in seconds. Never raises.
    """
    code = frame.get("code")
    code_str = code if isinstance(code, str) else "internal"
    cls = ERROR_CLASSES.get(code_str, WsserveError)
    message = frame.get("message")
    retry_ms = frame.get("retry_after_ms")
    retry_after = (
        retry_ms / 1000.0
        if isinstance(retry_ms, (int, float)) and not isinstance(retry_ms, bool) and retry_ms >= 0
        else None
    )
    request_id = frame.get("id")
    if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
        request_id = None
    return cls(
        message if isinstance(message, str) else f"server error {code_str!r}",
        request_id=request_id,
        code=code_str,
        retry_after=retry_after,
    )
