"""Errors over HTTP: a status per wire error code, and the body each route family answers with.

The error *codes* and *messages* are the WebSocket protocol's (one exception
per code, :mod:`wsserve.errors`); only the envelope depends on the route:

- ``wsserve`` (``/predict``, ``/v1/models``, our own routes):
  ``{"error": {"code": "bad_json", "message": "..."}}`` (plus
  ``retry_after_ms`` when the error carries one);
- ``oip`` (``/v2/...``, the Open Inference Protocol): ``{"error": "message"}``;
- ``openai`` (``/v1/completions``): OpenAI's envelope, which is a superset of
  ours: ``{"error": {"message", "type", "param", "code"}}``.

``Retry-After`` (whole seconds, rounded up) goes with ``retry_after_ms``;
``WWW-Authenticate: Bearer`` with 401; ``shutting_down`` (and an error whose
``close_connection`` is true) closes the connection.

A body is read as JSON whatever its ``Content-Type`` (as Triton and KServe do:
``curl -d`` sends ``application/x-www-form-urlencoded``); only when it fails to
parse does the ``bad_json`` message name a ``Content-Type`` that is not JSON
(:func:`content_type_note`).
"""

from __future__ import annotations

from typing import Literal

import orjson

from ..errors import BadRequest, WsserveError
from ..httpmsg import HttpResponse
from ..jsontypes import shown

__all__ = ["STATUS", "ParamError", "Style", "content_type_note", "error_response", "is_json_type", "plain_error"]

Style = Literal["wsserve", "oip", "openai"]

class ParamError(BadRequest):
    """A refused request field; ``param`` names it (OpenAI's error envelope carries it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


#: HTTP status of each wire error code.
STATUS: dict[str, int] = {
    "bad_json": 400,
    "bad_request": 400,
    "unknown_model": 404,
    "duplicate_id": 409,
    "invalid_input": 400,
    "overloaded": 503,
    "rate_limited": 429,
    "deadline_exceeded": 504,
    "cancelled": 499,  # the client went away: never actually sent
    "unauthorized": 401,
    "forbidden": 403,
    "shutting_down": 503,
    "internal": 500,
}

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                 429: "rate_limit_error"}

JSON = "application/json"


def error_response(exc: WsserveError, style: Style, *, param: str | None = None) -> HttpResponse:
    """The response for ``exc`` in a route family's ``style`` (``param``: the offending
    request field, for OpenAI's envelope).  The status is its code's, unless the error
    carries its own ``http_status`` (a protocol that answers one code with another status)."""
    status = getattr(exc, "http_status", None) or STATUS.get(exc.code, 500)
    if style == "oip":
        body = orjson.dumps({"error": exc.message})
    elif style == "openai":
        err = {"message": exc.message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": param,
               "code": exc.code}
        if exc.retry_after_ms is not None:
            err["retry_after_ms"] = exc.retry_after_ms
        body = orjson.dumps({"error": err})
    else:
        inner: dict[str, object] = {"code": exc.code, "message": exc.message}
        if exc.retry_after_ms is not None:
            inner["retry_after_ms"] = exc.retry_after_ms
        body = orjson.dumps({"error": inner})
    headers: list[tuple[str, str]] = []
    if exc.retry_after_ms is not None:
        headers.append(("Retry-After", str(max(1, -(-exc.retry_after_ms // 1000)))))
    if status == 401:
        headers.append(("WWW-Authenticate", "Bearer"))
    return HttpResponse(status, body, JSON, headers,
                        close=exc.code == "shutting_down" or getattr(exc, "close_connection", False))


def plain_error(status: int, message: str, style: Style | None, code: str = "bad_request",
                headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """A routing error (404, 405, 403...) that has no wire error class, in ``style``
    (``None``: plain text, for the server's own non-API routes)."""
    if style is None:
        return HttpResponse(status, (message + "\n").encode(), headers=headers or [])
    if style == "oip":
        body = orjson.dumps({"error": message})
    elif style == "openai":
        body = orjson.dumps({"error": {"message": message, "type": _OPENAI_TYPES.get(status, "invalid_request_error"),
                                       "param": None, "code": code}})
    else:
        body = orjson.dumps({"error": {"code": code, "message": message}})
    return HttpResponse(status, body, JSON, headers or [])


def is_json_type(content_type: str) -> bool:
    """True for a JSON media type: ``application/json`` or any ``type/subtype+json`` (RFC 6839),
    parameters (``; charset=utf-8``) and case ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    kind, slash, subtype = media.partition("/")
    return media == "application/json" or (bool(kind) and bool(slash) and subtype.endswith("+json"))


def content_type_note(content_type: str | None, *, binary: bool = False) -> str:
    """What a ``bad_json`` message adds for a request whose ``Content-Type`` is present and not
    JSON (:func:`is_json_type`): the type sent, cut as a refused value is
    (:func:`wsserve.jsontypes.shown`), e.g. ``" (the request's Content-Type is
    'application/x-www-form-urlencoded'; send JSON)"``; ``""`` with no (or an empty) Content-Type
    or a JSON one.  ``binary``: the route also takes the OIP binary tensor extension, which the
    note then names."""
    if content_type is None or not content_type.strip() or is_json_type(content_type):
        return ""
    wanted = "send JSON, or binary tensors after an Inference-Header-Content-Length header" if binary else "send JSON"
    return f" (the request's Content-Type is {shown(content_type.strip())}; {wanted})"
