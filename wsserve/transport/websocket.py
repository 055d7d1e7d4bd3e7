"""A WebSocket connection: the ``websockets`` library's sans-I/O protocol, a fast path, one core.

``websockets``' :class:`~websockets.server.ServerProtocol` does the opening
handshake, control frames (ping, pong, close), fragmented messages, extensions
(permessage-deflate), limits and protocol errors.  This module does the I/O
around it, and adds, for the common case of whole, unmasked-by-extensions data
frames:

* **Receive**: complete client data frames (FIN set, no RSV bits, masked, text
  or binary, not inside a fragmented message) are parsed here and handed to the
  :class:`~wsserve.connection.Connection` core straight from ``data_received``
  (``conn.receive(payload, binary, now)``: binary messages are tensor frames).
  Every other frame is fed to the library *whole*, so its parser is always at a
  frame boundary (we feed it nothing else).  A frame that announces more than
  ``max_message_bytes`` hands the rest of the stream to the library, which
  closes with 1009.  Partial frames wait in a ``bytearray`` and are parsed only
  once they can be complete.
* **Send**: text frames (and binary ones, :meth:`~WebSocketProtocol.send_binary`)
  are framed here (a 2-10 byte header and the payload) and written once per
  read, batch or loop iteration (:class:`~.flush.Flusher`), before anything the
  library writes (pongs, close frames), so replies keep their order.

With an extension negotiated, both directions go through the library.  The
fast path is a fixed property of the connection (no extension), counted in
``frames_fast`` / ``frames_library`` so tests can check which path ran.

Keepalive pings, the close handshake timeout, the write-buffer policy (reading
pauses while more than ``max_write_buffer_bytes`` are unsent) and the core's
timers share one timer handle per connection.
"""

from __future__ import annotations

import asyncio
import http
import logging
import os
from time import monotonic
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..protocol import SUBPROTOCOL
from .app import Counters
from .framing import OP_BINARY, SHORT_TEXT_HEADERS, frame_header
from .timer import OneTimer

try:  # the C implementation websockets itself uses
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - pure-Python fallback
    from websockets.utils import apply_mask

if TYPE_CHECKING:
    from ..connection import Connection
    from .app import App, HttpRequest

__all__ = ["WebSocketProtocol", "MAX_FRAGMENTS"]

log = logging.getLogger("wsserve.websocket")

_TEXT, _BINARY, _CONT, _PONG, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG, Opcode.CLOSE
_OPEN, _CLOSING, _CLOSED = State.OPEN, State.CLOSING, State.CLOSED

#: Most frames one fragmented message may have (empty continuation frames count too).
MAX_FRAGMENTS = 4096


def _select_subprotocol(protocol: ServerProtocol, offered: Any) -> Any:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


class WebSocketProtocol(OneTimer, asyncio.Protocol):
    """One upgraded TCP connection.  Created by :class:`~.http.HttpProtocol`, which calls :meth:`start`."""

    def __init__(self, app: App, transport: asyncio.Transport, address: str) -> None:
        cfg = app.config
        self.app = app
        self.transport = transport
        self.address = address
        self.ws = ServerProtocol(
            extensions=[ServerPerMessageDeflateFactory()] if cfg.compression else None,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            select_subprotocol=_select_subprotocol,
            max_size=cfg.max_message_bytes,
        )
        self.conn: Connection | None = None
        self.counters: Counters = app.counters  # type: ignore[attr-defined]
        self._fast = False  # whole data frames parsed here (no extension negotiated)
        self._in_fragment = False  # a fragmented message is being fed to the library
        self._frag_parts: list[bytes] = []
        self._frag_binary = False
        self._rx = bytearray()  # bytes of an incomplete frame (fast receive path)
        self._rx_need = 0  # bytes _rx must hold before it is worth parsing again
        self._out: list[bytes] = []  # framed bytes waiting for flush()
        self._marked = False  # in the flusher's list
        self._reading_paused = False
        self._limit = cfg.max_write_buffer_bytes
        self._max_size = cfg.max_message_bytes
        # One timer for everything time-driven on this connection.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._ping_at: float | None = None  # when to send the next keepalive ping
        self._ping_payload: bytes | None = None  # the keepalive ping awaiting its pong
        self._pong_deadline: float | None = None
        self._close_deadline: float | None = None
        self._lost = False
        self._library_wrote = False  # the library wrote since the last write-buffer check
        self._epoch = -1  # the core's timer_epoch when the timer was last armed

    # ------------------------------------------------------------------ handshake

    def start(self, head: bytes, request: HttpRequest, rest: bytes) -> None:
        """Run the opening handshake on ``head`` (the request's bytes), then process ``rest``."""
        ws = self.ws
        ws.receive_data(head)
        events = ws.events_received()
        if not events or not isinstance(events[0], Request):  # unparseable: the library answered
            self._write_library()
            self._close_transport_soon()
            return
        key, refusal = self.app.vet_websocket(request)
        if refusal is not None:
            headers = [("Content-Type", refusal.content_type), ("Content-Length", str(len(refusal.body))),
                       ("Connection", "close"), *refusal.headers, ("Server", self.app.server_header)]
            ws.send_response(Response(refusal.status, _reason(refusal.status), Headers(headers), refusal.body))
            self._write_library()
            self._close_transport_soon()
            return
        response = ws.accept(events[0])
        response.headers["Server"] = self.app.server_header
        ws.send_response(response)
        self._write_library()
        if response.status_code != 101:
            self._close_transport_soon()
            return
        self.app.track(self, True)
        self.conn = self.app.open_connection(self, self.address, key)
        self._fast = not ws.extensions
        now = monotonic()
        interval = self.app.config.ping_interval_s
        self._ping_at = None if interval is None else now + interval
        self.conn.open()
        if rest:
            self.data_received(rest)
        else:
            self.flush()
            self._rearm(now)

    # ------------------------------------------------------------------ receiving

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or self._lost:
            return
        if not self._fast:
            self._feed_library(data)
            self._after_read()
            return
        rx = self._rx
        if rx:  # an incomplete frame: append (amortised O(1)), parse once it can be complete
            rx += data
            if len(rx) < self._rx_need:
                return
            data = bytes(rx)
            rx.clear()
        pos, end_of_data = 0, len(data)
        max_size = self._max_size
        now = monotonic()
        counters = self.counters
        ws = self.ws
        while end_of_data - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end_of_data - pos < 4:
                    self._rx_need = 4
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
                if length < 126:  # RFC 6455 §5.2: a length in its shortest form (picows refuses it too)
                    self._fail(1002, "invalid 16-bit payload length")
                    return
            elif length == 127:
                if end_of_data - pos < 10:
                    self._rx_need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
                if length < 0x10000 or length >> 63:  # (its most significant bit must be 0, too)
                    self._fail(1002, "invalid 64-bit payload length")
                    return
            if length > max_size:
                # The library fails the connection with 1009; it owns the stream from here.
                self._fast = False
                self._feed_library(data[pos:])
                self._after_read()
                return
            masked = b1 & 0x80
            if masked:
                head += 4
            end = pos + head + length
            if end > end_of_data:
                self._rx_need = head + length
                break
            opcode = b0 & 0x0F
            if (b0 & 0xF0) == 0x80 and masked and (opcode == 1 or opcode == 2) and not self._in_fragment:
                counters.frames_fast += 1
                if ws.state is _OPEN:  # after our close frame, data frames are dropped
                    payload = apply_mask(data[pos + head : end], data[pos + head - 4 : pos + head])
                    conn.receive(payload, opcode == 2, now)
            else:  # control frame, fragment, reserved bits, unmasked: the library decides
                if opcode == 1 or opcode == 2:
                    self._in_fragment = not (b0 & 0x80)
                elif opcode == 0 and b0 & 0x80:
                    self._in_fragment = False
                elif opcode == 8 and self._in_fragment:
                    # RFC 6455 §5.4: a close frame may come between fragments.  The unfinished
                    # message is dropped, and the library is told so first: it would fail the
                    # connection with 1002 ("incomplete fragmented message") rather than echo
                    # the close as picows does (Autobahn 7.1.5).
                    self._in_fragment = False
                    self._frag_parts = []
                    ws.current_size = None
                self._feed_library(data[pos:end])
                if ws.state is not _OPEN:  # closing: the library owns the rest
                    self._fast = False
                    if end < end_of_data:
                        self._feed_library(data[end:])
                    self._after_read()
                    return
            pos = end
        else:
            self._rx_need = 2
        if pos < end_of_data:
            self._rx += memoryview(data)[pos:]
        self._after_read()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection over a frame the fast path refuses itself (the library would take
        it): the replies queued first, then the close frame; the library owns the stream after."""
        self._fast = False
        self.ws.fail(code, reason)
        self._write_library()
        conn = self.conn
        if conn is not None and not conn.closing:
            conn.lost()
        self._after_read()

    def _feed_library(self, data: bytes) -> None:
        """Give bytes to the library and handle the events it parsed."""
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._library_frame(event)
        self._write_library()
        conn = self.conn
        if ws.state is not _OPEN and conn is not None and not conn.closing:
            conn.lost()  # the library failed the connection (or the client closed): stop the work

    def _library_frame(self, frame: Frame) -> None:
        self.counters.frames_library += 1
        opcode = frame.opcode
        conn = self.conn
        if opcode is _PONG:
            if self._ping_payload is not None and frame.data == self._ping_payload:
                self._ping_payload = self._pong_deadline = None
            return
        if opcode is _CLOSE:
            if conn is not None:
                conn.lost()  # the client closes: nothing more can be sent, stop the work
            return
        if opcode not in (_TEXT, _BINARY, _CONT) or conn is None:
            return  # ping: the library has queued the pong
        if self.ws.state is not _OPEN:  # after a close frame, data frames are dropped
            return
        if opcode is _CONT:
            self._frag_parts.append(frame.data)
            if len(self._frag_parts) > MAX_FRAGMENTS:
                self._frag_parts = []
                self.ws.fail(1009, f"message has more than {MAX_FRAGMENTS} fragments")
                conn.lost()
                return
            if not frame.fin:
                return
            data, binary = b"".join(self._frag_parts), self._frag_binary
            self._frag_parts = []
        elif not frame.fin:
            self._frag_binary = opcode is _BINARY
            self._frag_parts = [frame.data]
            return
        else:
            data, binary = frame.data, opcode is _BINARY
        conn.receive(data, binary, monotonic())

    def _after_read(self) -> None:
        """After a read: replies out now (one write for all of them), then the timer."""
        if self._marked:
            self.app.flusher.flush()  # replies to this read (pongs, errors) go out in one write
        elif self._library_wrote:
            self._library_wrote = False
            self._check_buffer()  # the library wrote (pongs): the write-buffer policy applies to it too
        conn = self.conn
        if conn is not None and conn.timer_epoch != self._epoch:
            self._rearm(monotonic())

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._write_library()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.ws.receive_eof()  # idempotent; the library's state becomes CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        conn = self.conn
        if conn is not None:
            conn.lost()
            self.app.connection_closed(conn, self.close_code())
            self.app.track(self, False)

    # ------------------------------------------------------------------ sending (ConnectionIO)

    def send(self, frame: bytes) -> None:
        """Queue one text frame; it is written by the next flush."""
        if self.ws.state is not _OPEN or self._lost:
            return
        if self._fast:
            n = len(frame)
            self._out.append(SHORT_TEXT_HEADERS[n] if n < 126 else frame_header(n))
            self._out.append(frame)
        else:
            self.ws.send_text(frame)
        if not self._marked:
            self._marked = True
            self.app.flusher.mark(self)

    def send_binary(self, payload: bytes) -> None:
        """Queue one binary frame; it is written by the next flush (same rules as :meth:`send`).

        The serving core sends binary tensor frames (``"binary_outputs": true``); echo harnesses
        (``benchmarks/conformance``) use it too."""
        if self.ws.state is not _OPEN or self._lost:
            return
        if self._fast:
            self._out.append(frame_header(len(payload), OP_BINARY))
            self._out.append(payload)
        else:
            self.ws.send_binary(payload)
        if not self._marked:
            self._marked = True
            self.app.flusher.mark(self)

    def flush(self) -> None:
        """Write what is queued now, in one write (called by the flusher)."""
        self._marked = False
        if self._lost:
            return
        if self._out:
            out, self._out = self._out, []
            try:
                self.transport.write(b"".join(out))
            except Exception:  # noqa: BLE001 - the socket died under us: connection_lost follows
                log.debug("write failed", exc_info=True)
                return
        else:
            self._write_library()
        self._library_wrote = False
        self._check_buffer()
        conn = self.conn
        if conn is not None and conn.timer_epoch != self._epoch:  # e.g. the last reply restarted the idle clock
            self._rearm(monotonic())

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then the close frame; the client has ``close_timeout_s`` to answer."""
        if self.ws.state is not _OPEN or self._lost:
            return
        if self._out:
            self.flush()
        self.ws.send_close(code, reason)
        self._write_library()
        self._rearm(monotonic())

    def _write_library(self) -> None:
        """Write what the library has to send; an empty chunk means: end the TCP stream.

        Frames queued on the fast path go first, so the library's output (a pong,
        a close frame that fails the connection) never overtakes replies to
        messages received before it."""
        transport = self.transport
        chunks = self.ws.data_to_send()
        if chunks and self._out and not self._lost:
            out, self._out = self._out, []
            try:
                transport.write(b"".join(out))
            except Exception:  # noqa: BLE001 - the socket died under us: connection_lost follows
                log.debug("write failed", exc_info=True)
        for data in chunks:
            if self._lost:
                return
            if data:
                transport.write(data)
                self._library_wrote = True
            elif transport.can_write_eof():
                try:
                    transport.write_eof()
                except Exception:  # noqa: BLE001 - uvloop may raise if already closing
                    transport.close()
            else:
                transport.close()
        if self.ws.close_expected() and self._close_deadline is None:
            self._close_deadline = monotonic() + self.app.config.close_timeout_s

    def _close_transport_soon(self) -> None:
        """After a refused handshake: the response is written; close once it is sent."""
        self._close_deadline = monotonic() + self.app.config.close_timeout_s
        self._rearm(monotonic())

    # ------------------------------------------------------------------ flow control

    def _check_buffer(self) -> None:
        """The write-buffer policy, after every write (replies, pongs, close frames alike)."""
        if self._lost:
            return
        size = self.transport.get_write_buffer_size()
        if size > self._limit and not self._reading_paused:
            # A client that does not read must not make the server produce (and hold) more.
            self._reading_paused = True
            self.transport.pause_reading()
        if self.conn is not None and (size > self._limit or self.conn.congested):
            now = monotonic()
            self.conn.wrote(size, now)
            self._rearm(now)  # the slow-consumer deadline may have started

    def pause_writing(self) -> None:  # the transport's buffer passed its high-water mark
        pass

    def resume_writing(self) -> None:  # ... and drained below its low-water mark
        if self._reading_paused and not self._lost:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        if self.conn is not None and not self._lost:
            self.conn.wrote(self.transport.get_write_buffer_size(), monotonic())
            self._rearm(monotonic())

    # ------------------------------------------------------------------ timers


    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._lost:
            return
        now = monotonic()
        if self._close_deadline is not None and now >= self._close_deadline:
            self.transport.abort()  # the client did not finish the close handshake in time
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            self._ping_payload = self._pong_deadline = None
            self.ws.fail(1011, "keepalive ping timeout")
            self._write_library()
            if self.conn is not None:
                self.conn.lost()
        elif self._ping_at is not None and self._ping_payload is None and now >= self._ping_at and self.ws.state is _OPEN:
            cfg = self.app.config
            self._ping_payload = os.urandom(4)
            self.ws.send_ping(self._ping_payload)
            self._write_library()
            self._ping_at = now + (cfg.ping_interval_s or 0)
            if cfg.ping_timeout_s is not None:
                self._pong_deadline = now + cfg.ping_timeout_s
            else:
                self._ping_payload = None
        if self.conn is not None:
            when = self.conn.next_timer()
            if when is not None and now >= when:
                self.conn.on_timer(now)
        if self._marked:
            self.flush()
        self._rearm(now)

    # ------------------------------------------------------------------ introspection

    def close_code(self) -> int:
        """The code of the side that started the close (ours for 1001/1008/1011 even
        when the client never answered), else 1006 for a connection that just dropped."""
        ws = self.ws
        sent, rcvd = ws.close_sent, ws.close_rcvd
        if sent is not None and (rcvd is None or ws.close_rcvd_then_sent is False):
            return int(sent.code)
        if rcvd is not None:
            return int(rcvd.code)
        return 1006

    @property
    def fast_path(self) -> bool:
        return self._fast


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
