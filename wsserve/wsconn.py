"""A ``websockets`` server connection with a fast path for the per-message work.

``websockets`` stays in charge of the handshake, control frames (ping, pong,
close), fragmented messages, extensions (permessage-deflate), limits and
protocol errors.  What this class adds, for the common case of whole,
uncompressed data frames:

* **Receive**: complete client frames are parsed here and handed to the
  :class:`~wsserve.session.Session` as a callback, from ``data_received`` — no
  generator-based parser, no ``recv()``, no task wake-up per message.  Every
  other frame is passed to ``websockets`` *whole*, so its parser always sits at
  a frame boundary and its state stays exact.  A frame that announces more
  than ``max_size`` bytes hands the rest of the stream to ``websockets``, which
  closes with 1009.
* **Send**: text frames are framed here (a server frame is just a 2–10 byte
  header and the payload) and written once per event-loop iteration with one
  ``write`` per connection, coalescing every reply produced in that iteration.

With an extension negotiated, both directions go through ``websockets``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State

try:  # the C implementation websockets itself uses
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - pure-Python fallback
    from websockets.utils import apply_mask

if TYPE_CHECKING:
    from .session import Session

__all__ = ["WsConnection", "frame_header", "flush_pending"]

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_OPEN = State.OPEN
_CLOSING_OR_CLOSED = (State.CLOSING, State.CLOSED)

#: Most frames one fragmented message may have (empty continuation frames count too).
MAX_FRAGMENTS = 4096


# Connections with queued replies, written by flush_pending(): at the end of the
# event-loop iteration (one call_soon for all of them), or earlier by a producer
# that has just finished a burst (a batch, a read).  Event-loop thread only.
_pending: list[WsConnection] = []
_pending_handle: list[bool] = [False]


def flush_pending() -> None:
    """Write every connection's queued replies now (one write per connection)."""
    _pending_handle[0] = False
    if not _pending:
        return
    conns = _pending[:]
    _pending.clear()
    for conn in conns:
        conn._flush()


def frame_header(length: int, opcode: int = 0x1) -> bytes:
    """Header of an unmasked, final server frame carrying ``length`` bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


class WsConnection(ServerConnection):
    """Server connection that delivers whole messages to ``session.on_message``."""

    session: Session | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._early: list[tuple[bytes, bool]] = []  # messages before attach()
        self._frag_opcode: Opcode | None = None
        self._frag_parts: list[bytes] = []
        self._flush_scheduled = False
        self._fast = False  # both fast paths on (no extension, parser at a boundary)
        self._in_fragment = False  # a fragmented message is being passed to websockets
        self._rx = bytearray()  # bytes of an incomplete frame (fast receive path)
        self._rx_need = 0  # bytes _rx must hold before it is worth parsing again
        self._out: list[bytes] = []  # framed bytes waiting for _flush (fast send path)
        self._reading_paused = False  # over the write-buffer limit: not reading (slow consumer)

    # -- receiving

    def attach(self, session: Session) -> None:
        """Route messages to ``session``; replay any that arrived first."""
        self.session = session
        if not self.protocol.extensions and self._parser_at_boundary():
            self._flush()  # frames queued through websockets (hello) go first
            self._fast = True
        early, self._early = self._early, []
        for data, binary in early:
            session.on_message(data, binary)

    def _parser_at_boundary(self) -> bool:
        """True when websockets' parser holds no partial frame (so we may parse next)."""
        protocol = self.protocol
        if protocol.state is not _OPEN or protocol.reader.buffer:
            return False
        gen: Any = protocol.parser
        while getattr(gen, "gi_yieldfrom", None) is not None:
            gen = gen.gi_yieldfrom
        code = getattr(gen, "gi_code", None)
        return code is not None and code.co_name == "at_eof"

    def data_received(self, data: bytes) -> None:
        if not self._fast:
            super().data_received(data)
            self._check_write_buffer()
            return
        rx = self._rx
        if rx:  # an incomplete frame: append (amortised O(1)), parse once it can be complete
            rx += data
            if len(rx) < self._rx_need:
                return
            data = bytes(rx)
            rx.clear()
        pos, end_of_data = 0, len(data)
        max_size = self.protocol.max_message_size
        session = self.session
        assert session is not None
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
            elif length == 127:
                if end_of_data - pos < 10:
                    self._rx_need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if max_size is not None and length > max_size:
                # websockets fails the connection with 1009; it owns the stream from here.
                self._fast = False
                super().data_received(data[pos:])
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
                if self.protocol.state is _OPEN:  # after our close frame, data frames are dropped
                    payload = apply_mask(data[pos + head : end], data[pos + head - 4 : pos + head])
                    session.on_message(payload, opcode == 2)
            else:  # control frame, fragment, reserved bits, unmasked: websockets decides
                if opcode == 1 or opcode == 2:
                    self._in_fragment = not (b0 & 0x80)
                elif opcode == 0 and b0 & 0x80:
                    self._in_fragment = False
                super().data_received(data[pos:end])
                if self.protocol.state is not _OPEN:  # closing: websockets owns the rest
                    self._fast = False
                    if end < end_of_data:
                        super().data_received(data[end:])
                    return
            pos = end
        else:
            self._rx_need = 2
        if pos < end_of_data:
            self._rx += memoryview(data)[pos:]
        if self._flush_scheduled:  # replies to this read (pongs, errors): send now
            flush_pending()
        self._check_write_buffer()

    def process_event(self, event: Any) -> None:
        """Frames websockets parsed: data frames (fragmented, or all of them when the
        fast path is off) are assembled here; the rest goes to websockets."""
        if self.request is None or not isinstance(event, Frame) or event.opcode not in (_TEXT, _BINARY, _CONT):
            super().process_event(event)
            if self.session is not None and self.protocol.state is not _OPEN:
                # The client started the closing handshake: nothing more can be
                # sent, so stop its work now rather than when TCP closes.
                self.session.abandon_all()
            return
        if self.protocol.state in _CLOSING_OR_CLOSED:  # after a close frame, data frames are dropped
            return
        opcode = event.opcode
        if opcode is _CONT:
            self._frag_parts.append(event.data)
            if len(self._frag_parts) > MAX_FRAGMENTS:
                self._frag_parts, self._frag_opcode = [], None
                self.protocol.fail(CloseCode.MESSAGE_TOO_BIG, f"message has more than {MAX_FRAGMENTS} fragments")
                self.send_data()
                return
            if not event.fin:
                return
            data = b"".join(self._frag_parts)
            binary = self._frag_opcode is _BINARY
            self._frag_parts, self._frag_opcode = [], None
        elif not event.fin:
            self._frag_opcode = opcode
            self._frag_parts = [event.data]
            return
        else:
            data = event.data
            binary = opcode is _BINARY
        session = self.session
        if session is None:
            self._early.append((bytes(data), binary))
        else:
            session.on_message(data, binary)

    # -- flow control

    def _check_write_buffer(self) -> None:
        """The write-buffer policy, after every read: whatever wrote (our replies, the
        library's pongs and close frames), while more than ``max_write_buffer_bytes``
        wait unsent this socket is not read, so a client that does not read cannot make
        the server produce (and hold) more; the session's slow-consumer policy then
        closes it.  Reading resumes when the buffer drains (``resume_writing``)."""
        session = self.session
        if session is None or self.transport is None:
            return
        size = self.transport.get_write_buffer_size()
        if size > session.write_limit:
            if not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
            session.check_backpressure(size)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._reading_paused:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
            if self.session is not None:
                self.session.check_backpressure(self.transport.get_write_buffer_size())

    # -- sending

    def queue_text(self, data: bytes) -> bool:
        """Queue one text frame; it is written at the end of this loop iteration.

        Returns False (and drops it) when the connection is no longer open."""
        if self.protocol.state is not _OPEN:
            return False
        if self._fast:
            self._out.append(frame_header(len(data)))
            self._out.append(data)
        else:
            self.protocol.send_text(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            _pending.append(self)
            if not _pending_handle[0]:
                _pending_handle[0] = True
                self.loop.call_soon(flush_pending)
        return True

    def flush(self) -> None:
        """Write what is queued now (before a close frame, for instance)."""
        self._flush()  # it stays in _pending; flush_pending skips it then

    def _flush(self) -> None:
        if not self._flush_scheduled:
            return
        self._flush_scheduled = False
        if self.protocol.state is not _OPEN:
            self._out.clear()
            return
        if self._out:
            out, self._out = self._out, []
        else:
            out = self.protocol.data_to_send()
            if not out:
                return
        try:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        except Exception as exc:  # the socket died under us; websockets will close
            self.set_connection_exc(exc)
            return
        session = self.session
        if session is not None:
            size = self.transport.get_write_buffer_size()
            if size > session.write_limit:
                self._check_write_buffer()
            else:
                session.check_backpressure(size)
