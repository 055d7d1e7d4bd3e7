"""HTTP values shared by the transport and the HTTP API: a request, a response, an exchange.

Sans-I/O and import-light, so both :mod:`wsserve.transport` (which parses and
writes them) and :mod:`wsserve.rest` (which answers them) can use them.

- :class:`HttpRequest` - one parsed request; header names are lower-cased once
  by the transport and looked up with :meth:`HttpRequest.header`
  (``headers`` builds a full :class:`~websockets.datastructures.Headers` on
  first use, for the WebSocket handshake).
- :class:`HttpResponse` - a complete response; the transport adds
  ``Content-Length``, ``Date``, ``Server`` and ``Connection``.
- :class:`HttpExchange` - one request's answer slot, for answers that come
  later (a batch, a stream).  Answers go out in request order, whatever
  order they are produced in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.datastructures import Headers

__all__ = ["HttpExchange", "HttpRequest", "HttpResponse"]


class HttpRequest:
    """One parsed HTTP/1.1 request; the body was read whole, bounded by the transport.

    ``raw_headers`` holds ``(lower-cased name, value)`` byte pairs in arrival order.
    """

    __slots__ = ("method", "path", "query", "raw_headers", "body", "http_version", "address", "_headers")

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        raw_headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        http_version: str = "1.1",
        address: str = "?",
    ) -> None:
        self.method = method
        self.path = path  # without the query string
        self.query = query
        self.raw_headers = raw_headers
        self.body = body
        self.http_version = http_version
        self.address = address
        self._headers: Headers | None = None

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (given lower-case, e.g. ``b"origin"``), or None."""
        for n, v in self.raw_headers:
            if n == name:
                return v.decode("latin-1")
        return None

    def header_values(self, name: bytes) -> list[str]:
        """Every value of header ``name`` (lower-case), in the order received: a list-valued header
        sent as several lines is one list (RFC 9110 §5.3), as ``X-Forwarded-For`` from a proxy that
        adds its own line after the client's."""
        return [v.decode("latin-1") for n, v in self.raw_headers if n == name]

    def header_count(self, name: bytes) -> int:
        """How many times header ``name`` (lower-case) appears."""
        return sum(1 for n, _ in self.raw_headers if n == name)

    @property
    def headers(self) -> Headers:
        """All headers as a case-insensitive multi-map (built on first use)."""
        if self._headers is None:
            self._headers = Headers((n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers)
        return self._headers

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.path!r}, {len(self.body)} body bytes)"


@dataclass(slots=True)
class HttpResponse:
    """A complete HTTP response; the transport adds Content-Length, Date, Server and Connection."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False  # close the connection after it (else keep-alive)


class HttpExchange(Protocol):
    """One request's answer slot on its connection (implemented by the transport).

    Call order: exactly one of :meth:`respond` or :meth:`start_stream`; after
    ``start_stream``, any number of :meth:`send` then one :meth:`end_stream`.
    Calls after the answer is complete, or after the client went away, are
    ignored.  ``on_abort`` (set by the application) is called once if the
    connection is lost before the answer is complete; ``lost`` is then true.
    """

    on_abort: Callable[[], None] | None
    session: Any  # the application's per-connection state (opaque to the transport)

    @property
    def lost(self) -> bool:
        """True once the client is gone (nothing more can be sent)."""

    def respond(self, response: HttpResponse) -> None:
        """Answer with a complete response."""

    def start_stream(self, status: int, content_type: str, headers: list[tuple[str, str]]) -> None:
        """Send the status and headers of a streamed answer (chunked transfer encoding)."""

    def send(self, data: bytes) -> None:
        """Send one piece of a streamed answer (one chunk)."""

    def end_stream(self, *, close: bool = False) -> None:
        """End a streamed answer (``close``: then close the connection)."""
