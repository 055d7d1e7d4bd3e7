"""HTTP/1.1 on the listening socket: every TCP connection starts here.

:class:`HttpProtocol` parses requests with ``httptools`` (the parser uvicorn
uses), hands plain requests to the application (:meth:`App.route_http`) with
keep-alive, and hands a WebSocket upgrade to
:class:`~wsserve.transport.websocket.WebSocketProtocol` on the same socket.

Answers.  Each request gets an :class:`Exchange` (its answer slot) in the
connection's queue.  The application answers at once (a returned
:class:`~wsserve.httpmsg.HttpResponse`) or later through the exchange: a
complete response, or a stream (``Transfer-Encoding: chunked``, e.g.
Server-Sent Events).  Answers go out in request order: pipelined requests
are all read and worked on at once, and an answer that is ready before the
ones ahead of it waits in its exchange.  Writes are coalesced (one per read,
batch or loop iteration, through the server's :class:`~.flush.Flusher`).  A
client that goes away aborts every unanswered exchange (``on_abort``: the
application cancels the work).

Limits, each with its status code and a closed connection:

- a request line and headers of more than :data:`MAX_HEADER_BYTES` bytes or
  :data:`MAX_HEADERS` fields: **431**;
- a body over ``max_message_bytes`` (announced or received, ``Content-Length``
  or chunked): **413**, without reading the body;
- a request not complete within ``handshake_timeout_s`` of its first byte:
  **408** (an idle keep-alive connection is closed after the same time, silently;
  a connection waiting for its answers is never timed out);
- anything ``httptools`` cannot parse: **400**; a version other than HTTP/1.1 or
  1.0 (``httptools`` takes 0.9 and 2.0 request lines): **505**;
- ``max_inflight`` unanswered requests: reading pauses until one is answered;
  requests already read past that (pipelined in the same read) wait in a
  backlog and are handed to the application, in order, as earlier ones are
  answered (never refused for it);
- more than ``max_write_buffer_bytes`` unsent (a client that does not read its
  answers; answers held back behind an earlier unfinished one count too):
  reading pauses; past ``slow_consumer_timeout_s``, or four times the
  limit, the connection is dropped (its work is cancelled).  One answer bigger
  than that, written at once, is given the timeout to drain (dropped if more is
  added to it meanwhile).

With ``--access-log`` each answered request is logged once on ``wsserve.access`` (info): the
client, the request line, the status, the bytes of the answer and the milliseconds from the
request's first byte to the answer's last (a stream: when it ends, or ``client left`` when the
client went first).  WebSocket upgrades are not requests answered here (see the connection metrics).

``Expect: 100-continue`` is answered before the body is read (unless the body
is refused: then the 413 comes at once); behind unanswered requests, right
after the last of their answers (the request timeout starts then).
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import time
from collections import deque
from typing import Any

import httptools

from ..admission import client_address, slow_consumer_drop_at
from ..httpmsg import HttpRequest, HttpResponse
from ..logs import escape_log_text
from .app import App

__all__ = ["Exchange", "HttpProtocol", "MAX_HEADER_BYTES", "MAX_HEADERS", "encode_response"]

log = logging.getLogger("wsserve.http")
#: The longest request target an access record shows (the rest elided).
MAX_LOGGED_TARGET = 2048

#: Largest request line + headers, in bytes.
MAX_HEADER_BYTES = 32 * 1024
#: Most header fields in one request.
MAX_HEADERS = 100
#: Body pieces shorter than this (a chunked body's small chunks) are copied into one buffer as they come.
_SMALL_PIECE = 4096

_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {s: f"HTTP/1.1 {s} {r}\r\n".encode() for s, r in _REASONS.items()}

_PENDING, _STREAMING, _DONE = 0, 1, 2


class _Date:
    """The ``Date`` header line, formatted at most once a second."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._line = b"Date: " + email.utils.formatdate(second, usegmt=True).encode() + b"\r\n"
        return self._line


_DATE = _Date()


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Unknown\r\n".encode()


def encode_response(response: HttpResponse, server_header: str, *, close: bool) -> bytes:
    """The bytes of ``response`` (status line, headers, body)."""
    return _encode(response, _server_line(server_header), close)


def _server_line(server_header: str) -> bytes:
    return f"Server: {server_header}\r\n".encode("latin-1")


def _encode(response: HttpResponse, server_line: bytes, close: bool, head_only: bool = False) -> bytes:
    """``head_only``: the answer to a ``HEAD``, which never has content (RFC 9112): the headers,
    ``Content-Length`` included, without the body."""
    body = response.body
    head = b"Content-Type: " + response.content_type.encode("latin-1") + b"\r\nContent-Length: " + \
        str(len(body)).encode() + b"\r\n"
    extra = response.headers
    if extra:
        head += "".join(f"{n}: {v}\r\n" for n, v in extra).encode("latin-1")
    if close:
        head += b"Connection: close\r\n"
    return b"".join((_status_line(response.status), head, _DATE.line(), server_line, b"\r\n",
                     b"" if head_only else body))


class Exchange:
    """One request's answer slot (implements :class:`~wsserve.httpmsg.HttpExchange`)."""

    __slots__ = ("_proto", "_buf", "_state", "_keep_alive", "_chunked", "_close_after", "_head_only", "on_abort",
                 "access")

    def __init__(self, proto: HttpProtocol, keep_alive: bool, chunked: bool, head_only: bool = False) -> None:
        self._proto = proto
        self._head_only = head_only  # a HEAD request: its answer is sent without content
        self._buf: list[bytes] | None = None  # output produced while an earlier answer is still going out
        self._state = _PENDING
        self._keep_alive = keep_alive
        self._chunked = chunked  # the client speaks HTTP/1.1: streams use chunked transfer encoding
        self._close_after = False
        self.on_abort: Any = None
        #: With --access-log: [first byte's loop time, client, request line, status, answer bytes].
        self.access: list[Any] | None = None

    @property
    def lost(self) -> bool:
        return self._proto._lost

    @property
    def session(self) -> Any:
        return self._proto.session

    @session.setter
    def session(self, value: Any) -> None:
        self._proto.session = value

    def respond(self, response: HttpResponse) -> None:
        proto = self._proto
        if self._state != _PENDING or proto._lost:
            return
        close = response.close or not self._keep_alive or proto._closing_when_idle(self)
        self._state = _DONE
        self._close_after = close
        data = _encode(response, proto._server_line, close, self._head_only)
        if self.access is not None:
            self.access[3], self.access[4] = response.status, len(data)
            proto._log_access(self)
        proto._emit(self, data, True)

    def start_stream(self, status: int, content_type: str, headers: list[tuple[str, str]]) -> None:
        proto = self._proto
        if self._state != _PENDING or proto._lost:
            return
        self._state = _STREAMING
        head = _status_line(status) + f"Content-Type: {content_type}\r\n".encode("latin-1")
        if headers:
            head += "".join(f"{n}: {v}\r\n" for n, v in headers).encode("latin-1")
        if self._chunked:
            head += b"Transfer-Encoding: chunked\r\n"
            if not self._keep_alive:
                head += b"Connection: close\r\n"
                self._close_after = True
        else:  # HTTP/1.0: the end of the stream is the end of the connection
            head += b"Connection: close\r\n"
            self._close_after = True
        if self.access is not None:
            self.access[3] = status
        proto._emit(self, head + _DATE.line() + proto._server_line + b"\r\n", False)

    def send(self, data: bytes) -> None:
        if self._state != _STREAMING or not data:
            return
        if self.access is not None:
            self.access[4] += len(data)
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._proto._emit(self, data, False)

    def end_stream(self, *, close: bool = False) -> None:
        if self._state != _STREAMING:
            return
        self._state = _DONE
        if close:
            self._close_after = True
        if self.access is not None:
            self._proto._log_access(self)
        self._proto._emit(self, b"0\r\n\r\n" if self._chunked else b"", True)


class HttpProtocol(asyncio.Protocol):
    """One TCP connection in HTTP mode.  See the module docstring."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.session: Any = None  # the application's per-connection state
        cfg = app.config
        self._timeout = cfg.handshake_timeout_s
        self._max_body = cfg.max_message_bytes
        self._max_queue = cfg.max_inflight
        self._write_limit = cfg.max_write_buffer_bytes
        self._slow_timeout = cfg.slow_consumer_timeout_s
        self._drop_at = 0  # while over the write limit: the unsent bytes past which the connection is dropped
        self._server_line = _server_line(app.server_header)
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Exchange] = deque()  # unanswered (or not yet written) requests, in order
        # Requests read past max_inflight (their exchanges are at the end of _queue): routed as earlier ones are
        # answered.  Bounded by one read, as reading pauses at max_inflight.
        self._backlog: deque[tuple[Exchange, HttpRequest]] = deque()
        self._backlog_handle: asyncio.Handle | None = None
        self._out: list[bytes] = []  # bytes for the next write
        self._held = 0  # bytes in exchanges' _buf: produced, waiting behind an earlier answer (unsent)
        self._marked = False  # in the flusher's list
        self._close_pending = False  # close once _out is written
        self._lost = False
        self._upgraded = False
        self._stopped = False  # no more requests are read (a closing answer is queued)
        self._draining = False
        self._paused_queue = False  # reading paused: too many unanswered requests
        self._paused_writes = False  # reading paused: too many unsent bytes
        self._transport_paused = False  # the transport is over its high-water mark (resume_writing will come)
        self._over_since: float | None = None
        self._loop = asyncio.get_running_loop()
        # One lazy timer: _deadline may move without re-arming; the handle re-checks when it fires.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline: float | None = None
        self._in_request = False
        self._continue_owed = False  # the request being received awaits a 100 Continue behind earlier answers
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._fields = 0  # header and trailer fields of the request being received
        self._trailers = False  # its head was read: fields now are a chunked body's trailers
        self._body: list[bytes | bytearray] = []  # the body's pieces as read (small ones merged)
        self._body_bytes = 0
        self._refused: HttpResponse | None = None  # answer the request with this once parsing stops
        self._access = app.access_log  # --access-log: a wsserve.logs.AccessLog, else None
        self._t0 = 0.0  # the request being received: its first byte's loop time (for --access-log)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        self.app.track(self, True)
        self._set_deadline(self._loop.time() + self._timeout)  # the first request must come in time

    def data_received(self, data: bytes) -> None:
        if self._lost or self._upgraded or self._stopped:
            return
        pieces: list[bytes | memoryview] = [data]
        while pieces and not (self._lost or self._stopped):
            piece = pieces.pop()
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                # httptools stops at the head of any Upgrade; only a WebSocket one is taken.
                rest = memoryview(piece)[exc.args[0]:]
                if self._is_websocket():
                    self._upgrade(bytes(rest))
                    return
                if not self._read_again():  # CONNECT: answered by on_message_complete, which closes after it
                    break
                # Another protocol (h2c...) is ignored (RFC 9110 §7.8): the request is read again by a
                # new parser from its head without the Upgrade field, then its body and what follows.
                head = self._head_without_upgrade()
                self._parser = httptools.HttpRequestParser(self)
                pieces += (rest, head)
            except httptools.HttpParserError as exc:
                refused = self._refused or HttpResponse(400, f"bad HTTP request: {exc}\n".encode())
                refused.close = True
                self._in_request = False
                self._stopped = True  # the parser is in its error state: nothing more is read
                self._new_exchange(False, False).respond(refused)
        if len(self._queue) >= self._max_queue and not self._paused_queue and not self._lost:
            self._paused_queue = True
            self._pause()
        if self._marked:
            self.app.flusher.flush()  # answers to this read go out in one write

    def eof_received(self) -> bool | None:
        return None  # the client is gone (as uvicorn treats a half-close): close, cancel its work

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._out.clear()
        self._held = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._backlog.clear()
        if self._backlog_handle is not None:
            self._backlog_handle.cancel()
            self._backlog_handle = None
        queue, self._queue = self._queue, deque()
        for ex in queue:
            if ex._state != _DONE and ex.access is not None:
                self._log_access(ex, "client left")  # its status: 0 unanswered, else the stream's
            if ex._state != _DONE and ex.on_abort is not None:
                ex._state = _DONE
                try:
                    ex.on_abort()
                except Exception:  # noqa: BLE001 - one failing abort must not keep the others from theirs
                    log.exception("aborting an unanswered HTTP request failed")
        if not self._upgraded:
            self.app.track(self, False)

    def pause_writing(self) -> None:  # the transport's buffer passed its high-water mark
        self._transport_paused = True

    def resume_writing(self) -> None:  # ... and drained below its low-water mark
        self._transport_paused = False
        self._over_since = None
        if self._paused_writes:
            self._paused_writes = False
            self._resume()
        self._refresh_deadline()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._in_request = True
        if self._access is not None:
            self._t0 = self._loop.time()
        self._url = b""
        self._raw_headers = []
        self._header_bytes = 0
        self._fields = 0
        self._trailers = False
        self._body = []
        self._body_bytes = 0
        self._refused = None
        self._continue_owed = False
        self._set_deadline(self._loop.time() + self._timeout)  # the whole request must arrive in time

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self._fields += 1
        if self._fields > MAX_HEADERS:
            self._refuse(HttpResponse(431, f"more than {MAX_HEADERS} header fields\n".encode()))
        if not self._trailers:  # a chunked body's trailer fields are counted, never merged (RFC 9110 §6.5.1)
            self._raw_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._trailers = True  # what on_header gets from now on is a trailer
        if self._read_again():
            return  # read again without its Upgrade header (data_received): the checks below then
        version = self._parser.get_http_version()
        if version not in ("1.1", "1.0"):  # httptools also takes 0.9 and 2.0 request lines
            self._refuse(HttpResponse(505, f"HTTP/{version} is not supported: this server speaks HTTP/1.1 "
                                           "(and 1.0)\n".encode()))
        length = None
        expect = False
        for name, value in self._raw_headers:
            if name == b"content-length":
                value = value.strip()
                if value.isdigit():
                    length = int(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if length is not None and length > self._max_body:
            self._refuse(HttpResponse(413, f"body of {length} bytes; the limit is {self._max_body} (max_message_bytes)\n".encode()))
        if expect and self.transport is not None:
            if not self._queue:  # after the answers of this read still in _out (this read's one write)
                self._out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
                if not self._marked:
                    self._marked = True
                    self.app.flusher.mark(self)
            else:  # it cannot overtake the answers ahead of it: sent after them (_advance), the timeout then
                self._continue_owed = True
                self._deadline = None

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            self._refuse(HttpResponse(413, f"body over {self._max_body} bytes (max_message_bytes)\n".encode()))
        pieces = self._body
        if len(body) >= _SMALL_PIECE:
            pieces.append(body)
        elif pieces and type(pieces[-1]) is bytearray:  # small chunks of a chunked body: into one buffer,
            pieces[-1] += body  # not an object each (a 2-byte chunk's bytes and list slot cost ~28x its size)
        else:
            pieces.append(bytearray(body))

    def on_message_complete(self) -> None:
        parser = self._parser
        if parser.should_upgrade() and (self._is_websocket() or self._read_again()):
            # feed_data raises HttpParserUpgrade next: the socket becomes a WebSocket, or (another
            # protocol) the request is read again without its Upgrade header, body included
            return
        self._in_request = False
        self._continue_owed = False  # the body came anyway (a client need not wait for the 100)
        if self._stopped:  # pipelined behind a request that ends the connection: not served
            return
        request = self._request()
        version = request.http_version
        keep_alive = parser.should_keep_alive() and not parser.should_upgrade()  # CONNECT: answer, close
        ex = self._new_exchange(keep_alive, version != "1.0", request.method == "HEAD")
        if ex.access is not None:
            ex.access[1] = request.address  # behind a trusted proxy: the client it forwards
        if not keep_alive:
            self._stopped = True  # nothing after this request is read
        if self._backlog or len(self._queue) > self._max_queue:  # pipelined past max_inflight: wait its turn
            self._backlog.append((ex, request))
            return
        self._route(ex, request)

    def _route(self, ex: Exchange, request: HttpRequest) -> None:
        try:
            response = self.app.route_http(request, ex)
        except Exception:  # noqa: BLE001 - route_http must not raise; if it does, answer and keep serving
            log.exception("error routing %s %r", request.method, request.path[:200])
            response = HttpResponse(500, b"internal error\n")
        if response is not None:
            ex.respond(response)

    def _route_backlog(self) -> None:
        """Hand waiting requests to the application while fewer than ``max_inflight`` are unanswered
        (called soon after an answer completed, never from inside the callback that answered)."""
        self._backlog_handle = None
        backlog = self._backlog
        while backlog and not self._lost and len(self._queue) - len(backlog) < self._max_queue:
            ex, request = backlog.popleft()
            self._route(ex, request)
        if self._marked:
            self.app.flusher.flush()

    # ------------------------------------------------------------------ answers (called by Exchange)

    def _new_exchange(self, keep_alive: bool, chunked: bool, head_only: bool = False) -> Exchange:
        ex = Exchange(self, keep_alive, chunked, head_only)
        if self._access is not None:
            ex.access = [self._t0 or self._loop.time(), self.address, self._request_line(), 0, 0]
        self._queue.append(ex)
        self._deadline = None  # waiting for the application: no timeout (until the queue empties)
        return ex

    def _request_line(self) -> str:
        """The request being received as an access record shows it: ``METHOD target HTTP/x.y``
        (the target cut at :data:`MAX_LOGGED_TARGET` characters; ``-`` for what the parser could
        not read)."""
        parser = self._parser
        try:
            method = parser.get_method().decode("latin-1")
        except httptools.HttpParserError:
            method = "-"
        target = self._url.decode("latin-1") or "-"
        if len(target) > MAX_LOGGED_TARGET:
            target = target[:MAX_LOGGED_TARGET] + "..."
        target = escape_log_text(target)  # the record quotes it: '"', '\\' and controls escaped as nginx's
        return f"{method} {target} HTTP/{parser.get_http_version() or '1.1'}"

    def _log_access(self, ex: Exchange, note: str = "") -> None:
        """One access record for ``ex`` (answered, or ``note``: why it ended unanswered)."""
        t0, client, line, status, size = ex.access  # type: ignore[misc]
        access = self._access
        assert access is not None
        if access.add(client, line, status, size, round((self._loop.time() - t0) * 1000.0, 3), note):
            self._loop.call_soon(access.flush)  # the records of this loop iteration, in one write

    def _closing_when_idle(self, ex: Exchange) -> bool:
        """While draining, the last answer of a connection says ``Connection: close``."""
        return self._draining and not self._in_request and self._queue[-1] is ex

    def _emit(self, ex: Exchange, data: bytes, done: bool) -> None:
        if self._lost:
            return
        queue = self._queue
        if queue and queue[0] is ex:
            if data:
                self._out.append(data)
            if done:
                self._advance()
        elif data:  # an earlier answer is still going out: keep this one in order
            self._held += len(data)
            if ex._buf is None:
                ex._buf = [data]
            else:
                ex._buf.append(data)
        if not self._marked:
            self._marked = True
            self.app.flusher.mark(self)

    def _advance(self) -> None:
        """The head answer is complete: move on to the next ones (those already complete go out too)."""
        queue = self._queue
        out = self._out
        while queue:
            ex = queue.popleft()
            if ex._close_after:
                self._close_pending = True
                self._stopped = True
                for later in queue:  # pipelined behind a closing answer: never answered
                    if later._state != _DONE and later.on_abort is not None:
                        later._state = _DONE
                        later.on_abort()
                queue.clear()
                self._backlog.clear()
                self._held = 0
                return
            if not queue:
                break
            nxt = queue[0]
            if nxt._buf:
                out.extend(nxt._buf)
                self._held -= sum(map(len, nxt._buf))
                nxt._buf = None
            if nxt._state != _DONE:
                break
        if self._backlog and self._backlog_handle is None:
            self._backlog_handle = self._loop.call_soon(self._route_backlog)
        if self._paused_queue and len(queue) < self._max_queue:
            self._paused_queue = False
            self._resume()
        if not queue and not self._in_request:
            if self._draining:
                self._close_pending = True
                self._stopped = True
            else:
                self._set_deadline(self._loop.time() + self._timeout)  # keep-alive idle time
        elif not queue and self._continue_owed:
            self._continue_owed = False
            out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._set_deadline(self._loop.time() + self._timeout)  # now the body can come

    def flush(self) -> None:
        """Write what is queued (called by the flusher)."""
        self._marked = False
        if self._lost:
            return
        transport = self.transport
        assert transport is not None
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out = []
            try:
                transport.write(data)
            except Exception:  # noqa: BLE001 - the socket died under us: connection_lost follows
                log.debug("write failed", exc_info=True)
                return
        if self._close_pending:
            self._close_pending = False
            transport.close()
            return
        size = transport.get_write_buffer_size() + self._held
        if size > self._write_limit:
            self._congested(size)
        elif self._over_since is not None and not self._transport_paused:
            # Over the limit by held answers that have now gone out without filling the transport
            # (which then never calls resume_writing): under the limit again.
            self.resume_writing()

    # ------------------------------------------------------------------ flow control

    def _congested(self, size: int) -> None:
        """More than ``max_write_buffer_bytes`` unsent: stop reading; drop the connection when
        it stays so for ``slow_consumer_timeout_s`` or grows past four times the limit - or past
        what the write that put it over left unsent: one answer bigger than that, written at once
        (a long completion with logprobs), is given the timeout to drain, not dropped mid-body."""
        if self._over_since is None:
            self._drop_at = slow_consumer_drop_at(self._write_limit, size)
        elif size > self._drop_at:
            log.warning("dropping HTTP client %s: %d bytes unsent", self.address, size)
            self._abort()
            return
        if not self._paused_writes:
            self._paused_writes = True
            self._pause()
        if self._over_since is None:
            self._over_since = self._loop.time()
            self._refresh_deadline()

    def _pause(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused_queue or self._paused_writes or self._lost or self.transport is None:
            return
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _abort(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abort()  # connection_lost follows: the unanswered requests are aborted

    # ------------------------------------------------------------------ timers

    def _set_deadline(self, when: float) -> None:
        self._deadline = when
        if self._timer is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._on_timer)

    def _refresh_deadline(self) -> None:
        """After the write-buffer state changed: the slow-consumer deadline, else the usual ones."""
        if self._over_since is not None:
            self._set_deadline(self._over_since + self._slow_timeout)
        elif not self._queue and not self._in_request:
            self._set_deadline(self._loop.time() + self._timeout)
        elif not self._in_request:
            self._deadline = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._lost or self._upgraded:
            return
        deadline = self._deadline
        if deadline is None:
            return
        now = self._loop.time()
        if now < deadline:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._deadline = None
        if self._over_since is not None:
            log.warning("dropping HTTP client %s: it stopped reading its answers", self.address)
            self._abort()
        elif self._in_request:
            self._in_request = False
            self._stopped = True
            self._new_exchange(False, False).respond(HttpResponse(408, b"request not complete in time\n", close=True))
            self.flush()
        elif not self._queue:  # an idle keep-alive connection
            self._stopped = True
            assert self.transport is not None
            self.transport.close()

    # ------------------------------------------------------------------ internals

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(HttpResponse(431, f"request line and headers over {MAX_HEADER_BYTES} bytes\n".encode()))

    def _refuse(self, response: HttpResponse) -> None:
        """A limit was hit: stop parsing (raising inside a callback makes httptools fail) and answer."""
        self._refused = response
        raise httptools.HttpParserCallbackError(response.body.decode().strip())

    def _is_websocket(self) -> bool:
        return any(n == b"upgrade" and b"websocket" in v.lower() for n, v in self._raw_headers)

    def _request(self) -> HttpRequest:
        """The request parsed so far; its ``address`` is the client's (behind a trusted proxy: the one
        it forwards, see :func:`~wsserve.admission.client_address`)."""
        path, _, query = self._url.decode("latin-1").partition("?")
        body = self._body
        request = HttpRequest(
            self._parser.get_method().decode("latin-1"),
            path,
            query,
            self._raw_headers,
            body[0] if len(body) == 1 and type(body[0]) is bytes else b"".join(body),
            self._parser.get_http_version(),
            self.address,
        )
        proxies = self.app.trusted_proxies
        if proxies:
            request.address = client_address(self.address, request, proxies)
        return request

    def _read_again(self) -> bool:
        """The request being parsed offers a protocol other than WebSocket (``Upgrade: h2c``), which
        is ignored: httptools stops after its head, so it is read again without that field
        (:meth:`data_received`).  Not a ``CONNECT`` (always an upgrade to httptools): that one is
        answered as it is (no route takes it), and the connection closed."""
        parser = self._parser
        return parser.should_upgrade() and not self._is_websocket() and parser.get_method() != b"CONNECT"

    def _head_without_upgrade(self) -> bytes:
        """The head of the request just parsed, without its ``Upgrade`` field (a protocol other than
        WebSocket, not taken: see :meth:`data_received`)."""
        parser = self._parser
        lines = [b"%b %b HTTP/%b" % (parser.get_method(), self._url, parser.get_http_version().encode())]
        lines.extend(b"%b: %b" % (n, v) for n, v in self._raw_headers if n != b"upgrade")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _upgrade(self, rest: bytes) -> None:
        """Hand this socket to a WebSocket protocol (the handshake happens there):
        ``websockets``' (:mod:`.websocket`) or picows (:mod:`.picows_conn`), per ``config.transport``."""
        from .websocket import WebSocketProtocol

        refusal = None
        if self._queue:  # answers still owed on this connection: a handshake cannot overtake them
            refusal = b"a WebSocket upgrade cannot be pipelined behind unanswered requests\n"
        elif any(n == b"transfer-encoding" or (n == b"content-length" and v.strip() != b"0")
                 for n, v in self._raw_headers):  # the library would close without a word
            refusal = b"a WebSocket upgrade has no body (no Content-Length but 0, no Transfer-Encoding)\n"
        if refusal is not None:
            self._in_request = False
            self._new_exchange(False, False).respond(HttpResponse(400, refusal, close=True))
            self.app.flusher.flush()
            return
        self._upgraded = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        assert transport is not None
        request = self._request()
        lines = [f"{request.method} {self._url.decode('latin-1')} HTTP/{request.http_version}"]
        lines.extend(f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in self._raw_headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.app.track(self, False)
        if self.app.config.transport == "picows":
            from .picows_conn import adopt

            adopt(self.app, transport, request.address, head, request, rest)
            return
        ws = WebSocketProtocol(self.app, transport, request.address)
        transport.set_protocol(ws)
        ws.start(head, request, rest)

    # ------------------------------------------------------------------ server lifecycle

    @property
    def busy(self) -> bool:
        """True while requests are unanswered or one is being received."""
        return bool(self._queue) or self._in_request

    def drain(self) -> None:
        """Server drain: close now if idle, else after the answers owed (the last says ``Connection: close``)."""
        self._draining = True
        if not self.busy and not self._lost and self.transport is not None:
            self._stopped = True
            self.transport.close()

    def close(self) -> None:
        """Server shutdown: close the socket (unanswered requests are aborted)."""
        if not self._lost and self.transport is not None:
            self._stopped = True
            self.transport.close()
