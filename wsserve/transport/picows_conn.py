"""A WebSocket connection served by ``picows`` (``--transport picows``, the ``wsserve[fast]`` extra).

**Design: our HTTP front adopts, picows frames.**  Every TCP connection starts
in :class:`~wsserve.transport.http.HttpProtocol` whatever the transport, so
plain HTTP (routes, keep-alive, POST bodies, the 431/413/408/400 limits) is
served by the same code for both.  When a request is a WebSocket upgrade,
:func:`adopt` vets it with the application (path, draining, origin, Bearer
key, connection cap) and checks its upgrade headers with ``websockets``' own
handshake code (which also picks the subprotocol), so both transports accept
and refuse exactly the same handshakes with the same responses.  It then hands
the socket to a picows ``WSProtocol``: set as the transport's protocol, told
``connection_made``, and fed a canonical upgrade request followed by whatever
the client sent after its request, through the ``BufferedProtocol``
interface.  picows answers 101 and parses frames from then on.  This is what
picows's own ``ws_connect`` does on a socket it did not open (through a
proxy).  The other way round - picows's listener answering non-upgrade
requests - was rejected: its ``ws_create_server`` answers them only with a
response followed by ``Connection: close``, reads only GET requests without a
body, and has none of our limits.

``WSProtocol`` is constructed here with the arguments ``ws_create_server``
passes it; it is not in picows's ``__all__``, so the supported picows range is
pinned in ``pyproject.toml`` and every wire test runs on this transport.

**What picows does**: the 101 response, frame parsing (masking, opcodes,
control-frame rules, 64-bit lengths, close codes of received close frames:
1002/1007), frames over ``max_message_bytes`` (1009, from the frame header
alone), framing of what we send.

**What this adapter does** (websockets' library did it on the other
transport): reassembly of fragmented messages (at most
:data:`~wsserve.transport.websocket.MAX_FRAGMENTS` frames and
``max_message_bytes`` in all, else 1009; out-of-order continuation frames:
1002), RSV bits without an extension (1002), close codes picows lets through
(0, 1005, 1006 and other reserved codes: 1002), pongs (so the write-buffer
policy sees them), the closing handshake (echo, then end the TCP stream;
``close_timeout_s`` for the client to answer ours), keepalive pings (1011 on
a missing pong), the write-buffer policy (reading pauses while more than
``max_write_buffer_bytes`` are unsent) and the core's timers on one timer
handle.  permessage-deflate is never negotiated (picows has none);
:class:`~wsserve.config.ServerConfig` refuses ``--compression`` with picows.

**Memory**: picows's read buffer grows to hold the most it has read at once
(the largest frame a connection has sent, or a burst of pipelined frames) and
is never shrunk, so a connection that once sent a message near
``max_message_bytes`` holds about twice that until it closes (``websockets``
frees it once the message is handled).  The worst case a client can force is
the same order on both transports - every connection in the middle of a
maximal message - but with picows ordinary large messages leave it pinned;
size ``max_message_bytes`` x connections accordingly (measured in
``benchmarks/results/transport.md``).

Sending: the core's frames (text, and binary ones through
:meth:`PicowsConnection.send_binary`, as on the other transport) are queued
and written once per read, batch or loop iteration (:class:`~.flush.Flusher`),
in the order they were queued: one frame through picows's ``send`` (header and
copy in C), several as one write of our own framing.  Pongs and close frames
are written after what is queued (:meth:`PicowsConnection.close` flushes
first, and so does the echo of a client's close frame), so replies keep their
order.  One exception: picows parses one frame ahead of the one it delivers
(``WSProtocol._process_new_data``), and a frame its own parser rejects (a
reserved opcode, a fragmented or oversized control frame, an unmasked frame, a
non-minimal length, a second close frame) makes it write its 1002 close frame
at once, straight to the socket, before the frame ahead is delivered: the reply
to that message (and any still queued) is dropped.  The websockets library's
own server drops it too; wsserve's websockets transport writes it first
(Autobahn 4.1.3-4.2.5 and 7.1.2 in ``benchmarks/results/conformance.md``).

Receiving: every complete message, text or binary, goes to the core's
``Connection.receive(data, binary, now)`` - the entry point the websockets
transport uses; what a binary message means is the core's business.
"""

from __future__ import annotations

import asyncio
import logging
import os
from time import monotonic
from typing import TYPE_CHECKING, Any

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSListener,
    WSMsgType,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import (
    WSProtocol,  # the protocol ws_create_server builds (see the module docstring)
)
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from ..protocol import SUBPROTOCOL
from .framing import OP_BINARY, OP_TEXT, frame_header
from .timer import OneTimer
from .websocket import (  # the same fragment limit and handshake policy
    MAX_FRAGMENTS,
    _reason,
    _select_subprotocol,
)

if TYPE_CHECKING:
    from picows import WSFrame, WSTransport

    from ..connection import Connection
    from .app import App, HttpRequest

__all__ = ["PicowsConnection", "adopt"]

log = logging.getLogger("wsserve.picows")

_TEXT, _BINARY, _CONT = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PING, _PONG, _CLOSE = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE

#: Close codes a client may send (RFC 6455 §7.4.1, as websockets checks them); 3000-4999 too.
_CLIENT_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

#: picows's first read buffer per connection.  It doubles when a read fills it and never
#: shrinks: a connection keeps a buffer the size of the largest frame it has received (up to
#: about 2 x max_message_bytes) until it closes.  4 KiB: ~15 KiB per idle connection in all
#: (16 KiB, picows's default, made it ~27), and any single-row predict fits.
_READ_BUFFER_BYTES = 4096


class _PicowsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows's log lines at our levels: it logs every connection and disconnection at INFO
    and a client's protocol error at ERROR; both are DEBUG here (as ``websockets`` logs
    them), so clients cannot flood the log.  Other errors (a callback of ours raising) stay."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("WS parser error"):
            self.debug(msg, *args, **kwargs)
        else:
            super().error(msg, *args, **kwargs)


_PICOWS_LOG = _PicowsLog(logging.getLogger("wsserve.picows.library"), {})


def adopt(app: App, transport: asyncio.Transport, address: str, head: bytes, request: HttpRequest, rest: bytes) -> None:
    """Serve the upgrade request ``request`` on ``transport`` with picows, or refuse it.  Called by
    the HTTP front; ``head`` is the request's own bytes, ``rest`` what the client sent after them
    (picows is given a canonical request, see below)."""
    # The handshake is websockets' own handshake code, in the same steps as on the other transport
    # (WebSocketProtocol.start), so both accept and refuse the same requests: it parses ``head``
    # (a method other than GET is 405, a request with a body is not upgraded, over-long lines
    # 414/431), the application vets it, then the library checks the upgrade headers and picks
    # the subprotocol (picows is stricter in places - it refuses "Connection: keep-alive, Upgrade",
    # which Firefox sends - and looser in others); its verdict and subprotocol choice stand.
    handshake = ServerProtocol(subprotocols=[SUBPROTOCOL], select_subprotocol=_select_subprotocol)  # type: ignore[list-item]
    handshake.receive_data(head)
    events = handshake.events_received()
    if not events or not isinstance(events[0], Request):  # unparseable: what the library answers, then close
        for data in handshake.data_to_send():
            if data:
                transport.write(data)
        transport.close()
        return
    key, refusal = app.vet_websocket(request)
    if refusal is not None:
        headers = [("Content-Type", refusal.content_type), ("Content-Length", str(len(refusal.body))),
                   ("Connection", "close"), *refusal.headers]
        _respond(app, transport, Response(refusal.status, _reason(refusal.status), Headers(headers), refusal.body))
        return
    response = handshake.accept(events[0])
    if response.status_code != 101:
        _respond(app, transport, response)
        return
    subprotocol = response.headers.get("Sec-WebSocket-Protocol")
    conn = PicowsConnection(app, address, key, subprotocol)
    proto = WSProtocol(
        None,  # host:port (client side only)
        None,  # path (client side only)
        False,  # server side
        conn.upgrade_response,
        _PICOWS_LOG,
        True,  # disconnect_on_exception: a bug in a callback closes with 1011
        None,  # handshake timeout: the HTTP front already has the whole request
        False, 20.0, 20.0, WSAutoPingStrategy.PING_WHEN_IDLE,  # keepalive is ours (one timer per connection)
        False,  # auto-pong off: pongs are written here, under the write-buffer policy
        app.config.max_message_bytes,  # max frame size: 1009 from the header alone
        None,  # extra headers (client side only)
        _READ_BUFFER_BYTES,
    )
    transport.set_protocol(proto)
    proto.connection_made(transport)
    canonical = (
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {request.headers['Sec-WebSocket-Key']}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode("latin-1")
    view = memoryview(canonical + rest)
    while view and not transport.is_closing():  # BufferedProtocol: copy into picows's buffer
        buf = proto.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]
    conn.flush()  # hello, if no frame followed the handshake


def _respond(app: App, transport: asyncio.Transport, response: Response) -> None:
    """A refused handshake: the response, then close (after it is written)."""
    response.headers["Server"] = app.server_header
    transport.write(response.serialize())
    transport.close()


class PicowsConnection(OneTimer, WSListener):
    """One WebSocket on picows: a ``WSListener`` for picows, a
    :class:`~wsserve.connection.ConnectionIO` for the core.  Made by :func:`adopt`."""

    def __init__(self, app: App, address: str, key: object, subprotocol: str | None) -> None:
        """``key``: the application's grant for this connection (``App.vet_websocket``), passed on as it is."""
        super().__init__()
        cfg = app.config
        self.app = app
        self.address = address
        self.key = key
        self._subprotocol = subprotocol
        self.ws: WSTransport | None = None
        self.transport: asyncio.Transport | None = None  # the TCP (or TLS) transport under picows
        self.conn: Connection | None = None
        self.counters = app.counters
        self._flusher = app.flusher
        self._out: list[bytes] = []  # payloads of frames waiting for flush()
        self._ops: list[int] | None = None  # their opcodes, once a binary frame is queued (None: all text)
        self._marked = False  # in the flusher's list
        self._frag: list[bytes] | None = None  # parts of a fragmented message
        self._frag_bytes = 0
        self._frag_binary = False
        self._max_size = cfg.max_message_bytes
        self._limit = cfg.max_write_buffer_bytes
        self._reading_paused = False
        self._control_wrote = False  # a pong was written since the last write-buffer check
        self._close_sent = False  # by us (picows may send one on a protocol error too)
        self._lost = False
        # One timer for everything time-driven on this connection.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._ping_at: float | None = None
        self._ping_payload: bytes | None = None
        self._pong_deadline: float | None = None
        self._close_deadline: float | None = None
        self._epoch = -1

    # ------------------------------------------------------------------ handshake (picows calls)

    def upgrade_response(self, request: Any) -> WSUpgradeResponseWithListener:
        """The 101 response to the canonical request :func:`adopt` gave picows."""
        headers = [("Server", self.app.server_header)]
        if self._subprotocol is not None:
            headers.append(("Sec-WebSocket-Protocol", self._subprotocol))
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(headers), self)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport
        self.transport = transport.underlying_transport
        app = self.app
        app.track(self, True)
        self.conn = app.open_connection(self, self.address, self.key)
        now = monotonic()
        interval = app.config.ping_interval_s
        self._ping_at = None if interval is None else now + interval
        self.conn.open()
        self._rearm(now)

    # ------------------------------------------------------------------ receiving (picows calls)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if (
            (kind is _TEXT or kind is _BINARY)
            and frame.fin
            and self._frag is None
            and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
        ):
            self.counters.frames_fast += 1
            if not self._close_sent:  # after our close frame, data frames are dropped
                self.conn.receive(frame.get_payload_as_bytes(), kind is _BINARY, monotonic())  # type: ignore[union-attr]
        else:
            self._other_frame(frame, kind)
        if frame.last_in_buffer:
            self._after_read()

    def _other_frame(self, frame: WSFrame, kind: WSMsgType) -> None:
        """Control frames, fragments and protocol errors."""
        self.counters.frames_library += 1
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail(1002, "reserved bits must be 0")
        elif kind is _PING:
            if not self._close_sent:
                self.ws.send_pong(frame.get_payload_as_bytes())  # type: ignore[union-attr]
                self._control_wrote = True
        elif kind is _PONG:
            if self._ping_payload is not None and frame.get_payload_as_bytes() == self._ping_payload:
                self._ping_payload = self._pong_deadline = None
        elif kind is _CLOSE:
            self._close_received(frame)
        elif kind is _CONT:
            parts = self._frag
            if parts is None:
                self._fail(1002, "unexpected continuation frame")
                return
            parts.append(frame.get_payload_as_bytes())
            self._frag_bytes += frame.payload_size
            if len(parts) > MAX_FRAGMENTS:
                self._fail(1009, f"message has more than {MAX_FRAGMENTS} fragments")
            elif self._frag_bytes > self._max_size:
                self._fail(1009, f"message over {self._max_size} bytes")
            elif frame.fin:
                self._frag = None
                self._deliver(b"".join(parts), self._frag_binary)
        elif self._frag is not None:  # a data frame inside a fragmented message
            self._fail(1002, "expected a continuation frame")
        else:  # the first fragment of a message
            self._frag = [frame.get_payload_as_bytes()]
            self._frag_bytes = frame.payload_size
            self._frag_binary = kind is _BINARY

    def _deliver(self, data: bytes, binary: bool) -> None:
        if not self._close_sent and self.conn is not None:
            self.conn.receive(data, binary, monotonic())

    def _close_received(self, frame: WSFrame) -> None:
        """The client's close frame: write the replies already queued (as the websockets
        transport does: they were answers to messages received before the close), echo
        the close frame (unless we started), then end the TCP stream."""
        code = int(frame.get_close_code())
        if frame.payload_size >= 2 and code not in _CLIENT_CLOSE_CODES and not 3000 <= code <= 4999:
            self._fail(1002, f"invalid close code {code}")
            return
        if self._out and not self._close_sent:
            self.flush()
        if self.conn is not None:
            self.conn.lost()  # nothing more can be sent: stop the work
        ws = self.ws
        if not self._close_sent and ws is not None and not ws.is_close_frame_sent:
            self._close_sent = True
            if frame.payload_size >= 2:
                ws.send_close(WSCloseCode(code), frame.get_close_message())
            else:
                ws.send(_CLOSE, b"")  # no status code: an empty close frame back
        self._end_stream()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error by the client: what is queued, our close frame, end of the TCP stream."""
        self._frag = None
        if not self._close_sent:
            self.close(code, reason)
        if self.conn is not None:
            self.conn.lost()
        self._end_stream()

    def _end_stream(self) -> None:
        """Half-close (the server closes TCP first, RFC 6455 §7.1.1); abort if the client never closes its side."""
        transport = self.transport
        if transport is None or self._lost or transport.is_closing():
            return
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except Exception:  # noqa: BLE001 - uvloop may raise if already closing
                transport.close()
        else:  # TLS
            transport.close()
        if self._close_deadline is None:
            self._close_deadline = monotonic() + self.app.config.close_timeout_s
        self._rearm(monotonic())

    def _after_read(self) -> None:
        """After the last frame of a read: replies out now (one write for all of them), then the timer."""
        if self._marked:
            self._flusher.flush()
        elif self._control_wrote:
            self._control_wrote = False
            self._check_buffer()  # pongs count toward the write-buffer policy too
        conn = self.conn
        if conn is not None and conn.timer_epoch != self._epoch:
            self._rearm(monotonic())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._lost:
            return
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        self._ops = None
        conn = self.conn
        if conn is not None:
            conn.lost()
            self.app.connection_closed(conn, self.close_code())
        self.app.track(self, False)

    # ------------------------------------------------------------------ sending (ConnectionIO)

    def send(self, frame: bytes) -> None:
        """Queue one text frame; it is written by the next flush."""
        if self._close_sent or self._lost:
            return
        self._out.append(frame)
        if self._ops is not None:
            self._ops.append(OP_TEXT)
        if not self._marked:
            self._marked = True
            self._flusher.mark(self)

    def send_binary(self, payload: bytes) -> None:
        """Queue one binary frame; it is written by the next flush, in order with the text
        frames (same rules as :meth:`send`: dropped once a close frame was sent or the
        connection is lost)."""
        if self._close_sent or self._lost:
            return
        if self._ops is None:
            self._ops = [OP_TEXT] * len(self._out)
        self._out.append(payload)
        self._ops.append(OP_BINARY)
        if not self._marked:
            self._marked = True
            self._flusher.mark(self)

    def flush(self) -> None:
        """Write what is queued now, in one write (called by the flusher)."""
        self._marked = False
        out, ops = self._out, self._ops
        ws = self.ws
        if not out or self._lost or ws is None:
            return
        self._out = []
        self._ops = None
        if ws.is_close_frame_sent:  # picows closed on a protocol error: nothing more goes out
            return
        if len(out) == 1:
            ws.send(_BINARY if ops is not None and ops[0] == OP_BINARY else _TEXT, out[0])
        else:
            parts = []
            if ops is None:
                for frame in out:
                    parts.append(frame_header(len(frame)))
                    parts.append(frame)
            else:
                for frame, op in zip(out, ops, strict=True):
                    parts.append(frame_header(len(frame), op))
                    parts.append(frame)
            try:
                ws.underlying_transport.write(b"".join(parts))
            except Exception:
                log.debug("write failed", exc_info=True)
                return
        self._control_wrote = False
        conn = self.conn
        transport = self.transport
        # The write-buffer policy, called only when it has something to do (under the limit and
        # not congested it does nothing): a method call less per flush, i.e. per reply burst.
        if transport is not None and (transport.get_write_buffer_size() > self._limit
                                      or (conn is not None and conn.congested)):
            self._check_buffer()
        if conn is not None and conn.timer_epoch != self._epoch:
            self._rearm(monotonic())

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then the close frame; the client has ``close_timeout_s`` to answer."""
        ws = self.ws
        if self._close_sent or self._lost or ws is None:
            return
        if self._out:
            self.flush()
        self._close_sent = True
        ws.send_close(WSCloseCode(code), reason.encode())
        self._close_deadline = monotonic() + self.app.config.close_timeout_s
        self._check_buffer()
        self._rearm(monotonic())

    # ------------------------------------------------------------------ flow control

    def _check_buffer(self) -> None:
        """The write-buffer policy, after every write (replies, pongs, close frames alike)."""
        transport = self.transport
        if self._lost or transport is None:
            return
        size = transport.get_write_buffer_size()
        if size > self._limit and not self._reading_paused:
            # A client that does not read must not make the server produce (and hold) more.
            self._reading_paused = True
            transport.pause_reading()
        conn = self.conn
        if conn is not None and (size > self._limit or conn.congested):
            now = monotonic()
            conn.wrote(size, now)
            self._rearm(now)  # the slow-consumer deadline may have started

    def pause_writing(self) -> None:  # the transport's buffer passed its high-water mark
        pass

    def resume_writing(self) -> None:  # ... and drained below its low-water mark
        transport = self.transport
        if self._lost or transport is None:
            return
        if self._reading_paused:
            self._reading_paused = False
            if not transport.is_closing():
                transport.resume_reading()
        if self.conn is not None:
            now = monotonic()
            self.conn.wrote(transport.get_write_buffer_size(), now)
            self._rearm(now)

    # ------------------------------------------------------------------ timers


    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        ws, transport = self.ws, self.transport
        if self._lost or ws is None or transport is None:
            return
        now = monotonic()
        if self._close_deadline is not None and now >= self._close_deadline:
            transport.abort()  # the client did not finish the closing handshake in time
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            self._ping_payload = self._pong_deadline = None
            self._fail(1011, "keepalive ping timeout")
        elif self._ping_at is not None and self._ping_payload is None and now >= self._ping_at and not self._close_sent:
            cfg = self.app.config
            self._ping_payload = os.urandom(4)
            ws.send_ping(self._ping_payload)
            self._check_buffer()
            self._ping_at = now + (cfg.ping_interval_s or 0)
            if cfg.ping_timeout_s is not None:
                self._pong_deadline = now + cfg.ping_timeout_s
            else:
                self._ping_payload = None
        conn = self.conn
        if conn is not None:
            when = conn.next_timer()
            if when is not None and now >= when:
                conn.on_timer(now)
        if self._marked:
            self.flush()
        self._rearm(now)

    # ------------------------------------------------------------------ introspection

    def close_code(self) -> int:
        """The code of the side that started the close (ours even when the client never
        answered), 1005 for a close frame without a code, 1006 for a connection that just dropped."""
        ws = self.ws
        handshake = ws.close_handshake if ws is not None else None
        if handshake is None:
            return 1006
        sent, rcvd = handshake.sent, handshake.recv
        if sent is not None and (rcvd is None or not handshake.recv_then_sent):
            return int(sent.code)
        if rcvd is not None:
            return int(rcvd.code) or 1005
        return 1006
