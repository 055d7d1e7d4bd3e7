"""The load tool's WebSocket codec against the ``websockets`` reference implementation (sans-I/O both sides)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from wsserve.loadtest.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    Masker,
    ProtocolError,
    check_response,
    handshake_request,
)


def _server() -> ServerProtocol:
    return ServerProtocol(state=State.OPEN, max_size=None)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_masked_client_frames_are_read_by_the_reference_server(size: int) -> None:
    payload = b"x" * size
    srv = _server()
    srv.receive_data(Masker(seed=size).text(payload))
    events = srv.events_received()
    assert len(events) == 1 and isinstance(events[0], Frame)
    assert events[0].opcode is Opcode.TEXT and events[0].fin and events[0].data == payload


def test_close_frame_carries_the_code() -> None:
    srv = _server()
    srv.receive_data(Masker().close(1001, "bye"))
    (frame,) = srv.events_received()
    assert frame.opcode is Opcode.CLOSE and srv.close_rcvd is not None
    assert (srv.close_rcvd.code, srv.close_rcvd.reason) == (1001, "bye")


def test_masking_keys_differ_between_frames() -> None:
    m = Masker()
    a, b = m.text(b"same payload"), m.text(b"same payload")
    assert a[2:6] != b[2:6] and a != b


def _reference_stream(messages: list[tuple[str, bytes, int]]) -> bytes:
    """Frames as websockets' server writes them: (kind, payload, fragments)."""
    srv = _server()
    for kind, payload, parts in messages:
        if kind == "ping":
            srv.send_ping(payload[:125])
            continue
        step = max(1, len(payload) // parts + 1)
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        send = srv.send_text if kind == "text" else srv.send_binary
        if len(chunks) == 1:
            send(chunks[0])
        else:
            send(chunks[0], fin=False)
            for i, chunk in enumerate(chunks[1:], 1):
                srv.send_continuation(chunk, fin=i == len(chunks) - 1)
    return b"".join(srv.data_to_send())


MESSAGES = st.lists(
    st.tuples(st.sampled_from(["text", "binary", "ping"]), st.binary(max_size=70_000), st.integers(1, 4)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(messages=MESSAGES, cuts=st.lists(st.integers(0, 300_000), max_size=8))
def test_reader_reassembles_reference_frames_whatever_the_chunking(
    messages: list[tuple[str, bytes, int]], cuts: list[int]
) -> None:
    stream = _reference_stream(messages)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reader = FrameReader()
    got: list[tuple[int, bytes]] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        got += [(op, bytes(p)) for op, p in reader.feed(stream[a:b])]
    expected = [
        ({"text": OP_TEXT, "binary": OP_BINARY, "ping": OP_PING}[k], p[:125] if k == "ping" else p)
        for k, p, _ in messages
    ]
    assert got == expected


def test_reader_surfaces_close_frames() -> None:
    srv = _server()
    srv.send_close(1001, "going away")
    ((op, payload),) = FrameReader().feed(b"".join(srv.data_to_send()))
    assert op == OP_CLOSE and payload[:2] == b"\x03\xe9" and payload[2:] == b"going away"


@pytest.mark.parametrize(
    "frame, fragment",
    [
        (bytes([0x81, 0x80 | 1, 1, 2, 3, 4, 0]), "masked"),
        (bytes([0x83, 0]), "reserved opcode"),
        (bytes([0xC1, 0]), "reserved bits"),
        (bytes([0x80, 0]), "continuation"),
        (bytes([0x09, 0]), "control frames"),
        (bytes([0x01, 1]) + b"a" + bytes([0x81, 1]) + b"b", "previous fragmented"),
    ],
)
def test_reader_rejects_protocol_violations(frame: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        FrameReader().feed(frame)


def _reference_response(request_bytes: bytes, subprotocols: list[str] | None) -> bytes:
    reader = StreamReader()
    reader.feed_data(request_bytes)
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as stop:
        request = stop.value
    srv = ServerProtocol(subprotocols=subprotocols)
    response = srv.accept(request)
    assert response.status_code == 101, response.body
    srv.send_response(response)
    return b"".join(srv.data_to_send())


def test_handshake_round_trip_with_the_reference_server() -> None:
    req, key = handshake_request(host="127.0.0.1", port=8765, path="/", subprotocols=["wsserve.v1"])
    resp = _reference_response(req, ["wsserve.v1"])
    assert check_response(resp[:10], key) is None  # incomplete head
    head_len, headers = check_response(resp + b"\x81\x00", key)  # a frame may follow in the same read
    assert head_len == len(resp)
    assert headers["sec-websocket-protocol"] == "wsserve.v1"


def test_handshake_refusals() -> None:
    req, key = handshake_request(host="h", port=1, path="/")
    resp = _reference_response(req, None)
    with pytest.raises(HandshakeError, match="Sec-WebSocket-Accept"):
        check_response(resp, "another key")
    with pytest.raises(HandshakeError, match="503"):
        check_response(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", key)
