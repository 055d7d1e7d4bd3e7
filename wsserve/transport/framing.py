"""WebSocket frame headers (RFC 6455 §5.2), sans-I/O."""

from __future__ import annotations

__all__ = ["frame_header", "SHORT_TEXT_HEADERS", "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    """Header of an unmasked, final server frame carrying ``length`` bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


#: ``SHORT_TEXT_HEADERS[n] == frame_header(n)`` for ``n < 126`` (token frames are that short).
SHORT_TEXT_HEADERS: tuple[bytes, ...] = tuple(bytes((0x80 | OP_TEXT, n)) for n in range(126))
