"""A minimal, fast WebSocket client codec (RFC 6455), sans-I/O.

Just what a load generator needs, several times cheaper per message than a
general-purpose implementation: the opening handshake request and its
response check, an incremental reader of server frames (unmasked) that
reassembles fragmented messages and surfaces control frames, and an encoder
of masked client frames.  No extensions (the handshake offers none), no
UTF-8 validation of text (the JSON decoder does that).

Conformance is tested against the ``websockets`` reference implementation.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import struct
from typing import Final

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension is normally present
    from websockets.utils import apply_mask

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "HandshakeError",
    "ProtocolError",
    "Masker",
    "check_response",
    "handshake_request",
]

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_RESPONSE_HEAD: Final = 16384

_H2 = struct.Struct("!H")
_Q8 = struct.Struct("!Q")


class ProtocolError(Exception):
    """The peer broke RFC 6455 (the connection should be failed with close code 1002)."""


class HandshakeError(Exception):
    """The server did not accept the WebSocket upgrade; the message gives its status line."""


def handshake_request(
    *, host: str, port: int, path: str, subprotocols: list[str] | None = None, headers: dict[str, str] | None = None
) -> tuple[bytes, str]:
    """The HTTP upgrade request (with any extra ``headers``) and its ``Sec-WebSocket-Key``."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: wsserve-loadtest",
    ]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    for name, value in (headers or {}).items():
        if "\r" in name + value or "\n" in name + value:
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def check_response(buffer: bytes | bytearray, key: str) -> tuple[int, dict[str, str]] | None:
    """Parse the server's handshake response from ``buffer``.

    Returns ``None`` while the head is incomplete, else ``(head_length,
    headers)`` (lower-case names).  Raises :class:`HandshakeError` when the
    server refuses (status other than 101, or a wrong ``Sec-WebSocket-Accept``).
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_RESPONSE_HEAD:
            raise HandshakeError("response head too long")
        return None
    head = bytes(buffer[:end]).decode("latin-1")
    status, *rest = head.split("\r\n")
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeError(f"server refused the WebSocket upgrade: {status!r}")
    headers = {}
    for line in rest:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise HandshakeError("bad Sec-WebSocket-Accept in the server's response")
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError(
            f"server selected an extension that was not offered: {headers['sec-websocket-extensions']}"
        )
    return end + 4, headers


class FrameReader:
    """Incremental parser of server→client frames.

    :meth:`feed` takes bytes as they arrive and returns the complete messages
    and control frames as ``(opcode, payload)``: data messages (fragmented or
    not) come out once, whole, with ``OP_TEXT``/``OP_BINARY``; ``OP_PING``,
    ``OP_PONG`` and ``OP_CLOSE`` come out as received.  Raises
    :class:`ProtocolError` on a masked frame, a reserved bit or opcode, a bad
    control frame or a continuation out of place.
    """

    __slots__ = ("_buf", "_frag_op", "_frags")

    def __init__(self) -> None:
        self._buf = b""
        self._frags: list[bytes] = []
        self._frag_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & 0x80:
                raise ProtocolError("server frames must not be masked")
            if b0 & 0x70:
                raise ProtocolError("reserved bits set (no extension was negotiated)")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = _H2.unpack_from(buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = _Q8.unpack_from(buf, pos + 2)[0]
                head = 10
            end = pos + head + length
            if end > n:
                break
            payload = buf[pos + head : end]
            pos = end
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == OP_TEXT or op == OP_BINARY:
                if self._frags:
                    raise ProtocolError("new message before the previous fragmented one ended")
                if fin:
                    out.append((op, payload))
                else:
                    self._frags = [payload]
                    self._frag_op = op
            elif op == OP_CONT:
                if not self._frags:
                    raise ProtocolError("continuation frame without a message to continue")
                self._frags.append(payload)
                if fin:
                    out.append((self._frag_op, b"".join(self._frags)))
                    self._frags = []
            elif op in (OP_CLOSE, OP_PING, OP_PONG):
                if not fin or length > 125:
                    raise ProtocolError("control frames must be final and at most 125 bytes")
                out.append((op, payload))
            else:
                raise ProtocolError(f"reserved opcode {op:#x}")
        self._buf = buf[pos:] if pos < n else b""
        return out


class Masker:
    """Encodes client frames, each with a fresh random masking key."""

    __slots__ = ("_rand",)

    def __init__(self, seed: int | None = None) -> None:
        self._rand = random.Random(seed if seed is not None else os.urandom(16))

    def frame(self, opcode: int, payload: bytes) -> bytes:
        """One final frame carrying ``payload``."""
        n = len(payload)
        key = self._rand.getrandbits(32).to_bytes(4, "big")
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + _H2.pack(n)
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + _Q8.pack(n)
        return head + key + apply_mask(payload, key)

    def text(self, payload: bytes) -> bytes:
        return self.frame(OP_TEXT, payload)

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        return self.frame(OP_CLOSE, _H2.pack(code) + reason.encode())
