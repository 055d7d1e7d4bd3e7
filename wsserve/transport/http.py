"""HTTP/1.1 on the listening socket: every TCP connection starts here.

:class:`HttpProtocol` parses requests with ``httptools`` (the parser uvicorn
uses), answers plain requests through the application's routes with
keep-alive, and hands a WebSocket upgrade to
:class:`~wsserve.transport.websocket.WebSocketProtocol` on the same socket.

Limits, each with its status code and a closed connection:

- a request line and headers of more than :data:`MAX_HEADER_BYTES` bytes or
  :data:`MAX_HEADERS` fields: **431**;
- a body over ``max_message_bytes`` (announced or received): **413**;
- a request not complete within ``handshake_timeout_s`` of its first byte:
  **408** (an idle keep-alive connection is closed after the same time, silently);
- anything ``httptools`` cannot parse: **400**.

``Expect: 100-continue`` is answered before the body is read.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import time
import httptools
from websockets.datastructures import Headers

from .app import App, HttpRequest, HttpResponse

__all__ = ["HttpProtocol", "MAX_HEADER_BYTES", "MAX_HEADERS", "encode_response"]

log = logging.getLogger("wsserve.http")

#: Largest request line + headers, in bytes.
MAX_HEADER_BYTES = 32 * 1024
#: Most header fields in one request.
MAX_HEADERS = 100

_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


class _Date:
    """The ``Date`` header value, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True)
        return self._value


_DATE = _Date()


def encode_response(response: HttpResponse, server_header: str, *, close: bool) -> bytes:
    """The bytes of ``response`` (status line, headers, body)."""
    status = response.status
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Date: {_DATE.now()}",
        f"Server: {server_header}",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


class HttpProtocol(asyncio.Protocol):
    """One TCP connection in HTTP mode.  See the module docstring."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self._parser = httptools.HttpRequestParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._upgraded = False
        self._reset()

    def _reset(self) -> None:
        self._in_request = False
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._refused: HttpResponse | None = None  # answer the request with this once it is complete

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        self.app.track(self, True)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._upgraded:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            if self._refused is not None:  # a limit was hit inside a callback
                self._respond(self._refused, close=True)
            else:
                self._respond(HttpResponse(400, f"bad HTTP request: {exc}\n".encode()), close=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        if not self._upgraded:
            self.app.track(self, False)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()
        self._in_request = True
        self._arm_timer()  # the whole request must arrive within handshake_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))
        self._count(len(name) + len(value) + 4)
        if len(self._raw_headers) > MAX_HEADERS:
            self._refuse(HttpResponse(431, f"more than {MAX_HEADERS} header fields\n".encode()))

    def on_headers_complete(self) -> None:
        limit = self.app.config.max_message_bytes
        length = None
        for name, value in self._raw_headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        if length is not None and length > limit:
            self._refuse(HttpResponse(413, f"body of {length} bytes; the limit is {limit} (max_message_bytes)\n".encode()))
        for name, value in self._raw_headers:
            if name.lower() == b"expect" and value.lower() == b"100-continue" and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        limit = self.app.config.max_message_bytes
        if self._body_bytes > limit:
            self._refuse(HttpResponse(413, f"body over {limit} bytes (max_message_bytes)\n".encode()))
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.should_upgrade() and self._is_websocket():
            return  # feed_data raises HttpParserUpgrade next: the socket becomes a WebSocket
        self._in_request = False
        request = self._request()
        keep_alive = self._parser.should_keep_alive()
        response = self._refused if self._refused is not None else self.app.route_http(request)
        self._respond(response, close=response.close or not keep_alive or self._parser.should_upgrade())

    # -- internals

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(HttpResponse(431, f"request line and headers over {MAX_HEADER_BYTES} bytes\n".encode()))

    def _refuse(self, response: HttpResponse) -> None:
        """A limit was hit: stop parsing (raising inside a callback makes httptools fail) and answer."""
        self._refused = response
        raise httptools.HttpParserCallbackError(response.body.decode().strip())

    def _is_websocket(self) -> bool:
        return any(n.lower() == b"upgrade" and b"websocket" in v.lower() for n, v in self._raw_headers)

    def _request(self) -> HttpRequest:
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        headers = Headers((n.decode("latin-1"), v.decode("latin-1")) for n, v in self._raw_headers)
        return HttpRequest(
            method=self._parser.get_method().decode("latin-1"),
            path=path,
            query=query,
            headers=headers,
            body=b"".join(self._body),
            http_version=self._parser.get_http_version(),
            address=self.address,
        )

    def _respond(self, response: HttpResponse, *, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(encode_response(response, self.app.server_header, close=close))
        if close:
            self._closing = True
            self._cancel_timer()
            transport.close()
        else:
            self._arm_timer()  # keep-alive: the next request has the same time to arrive

    def _upgrade(self, rest: bytes) -> None:
        """Hand this socket to a WebSocket protocol (the handshake happens there):
        ``websockets``' (:mod:`.websocket`) or picows (:mod:`.picows_conn`), per ``config.transport``."""
        from .websocket import WebSocketProtocol

        self._upgraded = True
        self._cancel_timer()
        transport = self.transport
        assert transport is not None
        request = self._request()
        lines = [f"{request.method} {self._url.decode('latin-1')} HTTP/{request.http_version}"]
        lines.extend(f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in self._raw_headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.app.track(self, False)
        if self.app.config.transport == "picows":
            from .picows_conn import adopt

            adopt(self.app, transport, self.address, head, request, rest)
            return
        ws = WebSocketProtocol(self.app, transport, self.address)
        transport.set_protocol(ws)
        ws.start(head, request, rest)

    def _arm_timer(self) -> None:
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.app.config.handshake_timeout_s, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._closing or self._upgraded or self.transport is None:
            return
        if self._in_request:
            self._respond(HttpResponse(408, b"request not complete in time\n"), close=True)
        else:  # an idle keep-alive connection
            self._closing = True
            self.transport.close()

    def close(self) -> None:
        """Server shutdown: close the socket (an idle keep-alive connection, or mid-request)."""
        if not self._closing and self.transport is not None:
            self._closing = True
            self._cancel_timer()
            self.transport.close()
