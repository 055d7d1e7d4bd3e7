"""What the Autobahn runs (benchmarks/conformance) showed about the transport, pinned over real sockets.

- The conformance echo application drives wsserve's real transport, on each transport
  (``websockets`` and ``picows``): text is echoed as text, binary as binary (``send_binary``
  of ``WebSocketProtocol`` and of ``PicowsConnection``), on the fast path and through the
  library (permessage-deflate, websockets only); a text message that is not UTF-8 fails the
  connection (1007).
- Replies queued on the fast path go out before anything the library writes after them:
  a message followed, in the same read, by a frame that fails the connection gets its reply
  before the close frame (it used to be dropped: the close frame and EOF overtook it).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.utils import apply_mask

from benchmarks.conformance.echo_server import EchoApp, echo_config, start
from tests.support.rawws import AsyncRawClient, client_frame

Echo = Callable[..., Awaitable[tuple[EchoApp, int]]]

# "κόσμε" followed by an unpaired surrogate (ED A0 80): not UTF-8 (Autobahn case 6.3.1).
INVALID_UTF8 = "κόσμε".encode() + b"\xed\xa0\x80edited"


@pytest.fixture
async def echo(transport_name: str) -> AsyncIterator[Echo]:
    """Factory: an echo server on wsserve's transport (each in turn) in this test's loop, on a
    free port.  Compression is skipped on picows (it has none; the config refuses it)."""
    started = []

    async def make(compression: bool = False) -> tuple[EchoApp, int]:
        if compression and transport_name == "picows":
            pytest.skip("picows has no permessage-deflate")
        app = EchoApp(echo_config(compression=compression, transport=transport_name))
        listener = await start(app)
        started.append((app, listener))
        return app, listener.sockets[0].getsockname()[1]

    yield make
    for app, listener in started:
        listener.close()
        app.abort_all()


async def _raw_client(port: int) -> AsyncRawClient:
    client = await AsyncRawClient.open(port)
    assert client.status == 101, client.response_head
    return client


async def _frame(client: AsyncRawClient) -> tuple[int, bytes]:
    """The next frame as ``(opcode, payload)``."""
    frame = await client.recv_frame()
    return frame.opcode, frame.payload


async def _close_code(client: AsyncRawClient) -> int:
    """The code of the next close frame, failing on any data frame before it."""
    while True:
        opcode, payload = await _frame(client)
        assert opcode in (8, 9, 10), (opcode, payload[:40])
        if opcode == 8:
            return struct.unpack("!H", payload[:2])[0]


@pytest.mark.parametrize("compression", [False, True], ids=["fast-path", "deflate"])
async def test_echo_keeps_each_message_type(echo: Echo, compression: bool) -> None:
    app, port = await echo(compression)
    async with websockets.connect(f"ws://127.0.0.1:{port}", compression="deflate" if compression else None,
                                  max_size=None) as ws:
        assert bool(ws.protocol.extensions) is compression
        for size in (0, 1, 125, 126, 65535, 65536, 1 << 20):
            payload = bytes(i % 251 for i in range(size))
            await ws.send(payload)
            reply = await ws.recv()
            assert isinstance(reply, bytes) and reply == payload, size
            text = "é" * (size // 2)
            await ws.send(text)
            reply = await ws.recv()
            assert isinstance(reply, str) and reply == text, size
    if compression:  # with an extension, every frame goes through the library
        assert app.counters.frames_fast == 0 and app.counters.frames_library >= 14
    else:
        assert app.counters.frames_fast == 14


async def test_binary_frames_are_framed_as_binary_on_the_fast_path(echo: Echo) -> None:
    app, port = await echo()
    client = await _raw_client(port)
    for size in (5, 300, 70000):  # 7-bit, 16-bit and 64-bit length headers
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        await client.send_bytes(client_frame(payload, opcode=2))
        assert await _frame(client) == (2, payload)
    assert app.counters.frames_fast == 3 and app.counters.frames_library == 0
    client.close()


@pytest.mark.parametrize(("size", "form"), [(5, 126), (5, 127), (300, 127), (1 << 63, 127)],
                         ids=["16-bit-for-5", "64-bit-for-5", "64-bit-for-300", "64-bit-top-bit-set"])
async def test_a_payload_length_not_in_its_shortest_form_fails_the_connection_with_1002(
        echo: Echo, size: int, form: int) -> None:
    """RFC 6455 §5.2: a length is written in the minimal number of bytes (a 64-bit one with its
    most significant bit 0).  picows failed such a frame (1002) while the websockets transport's
    fast path took it (or, top bit set, answered 1009): the same bytes were answered on one
    transport and refused on the other (PROTOCOL.md: nothing on the wire depends on it)."""
    _, port = await echo()
    client = await _raw_client(port)
    await client.send_bytes(client_frame(b"ok"))
    assert await _frame(client) == (1, b"ok")
    payload, key = bytes(min(size, 300)), b"\x01\x02\x03\x04"
    head = struct.pack("!BBH", 0x82, 0x80 | 126, size) if form == 126 else struct.pack("!BBQ", 0x82, 0x80 | 127, size)
    await client.send_bytes(head + key + apply_mask(payload, key))
    assert await _close_code(client) == 1002
    client.close()


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
async def test_invalid_utf8_text_fails_the_connection_with_1007(echo: Echo, fragmented: bool) -> None:
    _, port = await echo()
    client = await _raw_client(port)
    await client.send_bytes(client_frame(b"ok"))
    assert await _frame(client) == (1, b"ok")
    if fragmented:
        stream = client_frame(INVALID_UTF8[:4], opcode=1, fin=False) + client_frame(INVALID_UTF8[4:], opcode=0)
    else:
        stream = client_frame(INVALID_UTF8)
    await client.send_bytes(stream)
    assert await _close_code(client) == 1007
    client.close()


async def test_invalid_utf8_with_compression_fails_with_1007(echo: Echo) -> None:
    _, port = await echo(compression=True)
    async with websockets.connect(f"ws://127.0.0.1:{port}", compression="deflate") as ws:
        await ws.send(INVALID_UTF8, text=True)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1007


@pytest.mark.parametrize(
    "bad",
    [
        client_frame(b"x", rsv=0x20),  # RSV2 without an extension (Autobahn 3.2)
        pytest.param(
            client_frame(b"", opcode=5),  # reserved data opcode (4.1.3)
            marks=pytest.mark.only_transport(
                "websockets",
                reason="picows parses one frame ahead and fails the connection on a reserved opcode, writing its "
                "close frame before the message ahead of it is delivered: the echo is dropped, as the websockets "
                "library's own server drops it (documented in picows_conn.py)",
            ),
            id="reserved-opcode",
        ),
        client_frame(b"x", opcode=0),  # a continuation with nothing to continue (5.15)
    ],
    ids=["rsv2", None, "stray-continuation"],
)
async def test_echo_goes_out_before_the_close_frame_that_follows_it(echo: Echo, bad: bytes) -> None:
    _, port = await echo()
    client = await _raw_client(port)
    await client.send_bytes(client_frame(b"Hello, world!") + bad + client_frame(b"", opcode=9))  # one write
    assert await _frame(client) == (1, b"Hello, world!")
    assert await _close_code(client) == 1002
    client.close()


async def test_wsserve_reply_goes_out_before_the_close_frame_that_follows_it(server) -> None:
    """The same ordering in the real server: a ping message and a protocol error in one write."""
    client = await _raw_client(server.port)
    assert (await client.recv_json())["type"] == "hello"
    await client.send_bytes(client_frame(orjson.dumps({"type": "ping", "id": "before"})) + client_frame(b"x", rsv=0x20))
    assert await client.recv_json() == {"type": "pong", "id": "before"}
    assert await _close_code(client) == 1002
    client.close()


async def test_binary_and_text_replies_keep_their_order_in_one_flush(echo: Echo) -> None:
    """Several messages in one read: their echoes (binary and text mixed) go out in one
    flush, each with its own opcode, in the order received."""
    _, port = await echo()
    client = await _raw_client(port)
    messages = [(2, b"\x00one"), (1, b"two"), (2, b"\xffthree" * 40), (1, b"four"), (2, b"")]
    await client.send_bytes(b"".join(client_frame(p, opcode=op) for op, p in messages))  # one write
    assert [await _frame(client) for _ in messages] == messages
    client.close()


async def test_replies_queued_before_the_clients_close_go_out_before_the_close_echo(echo: Echo) -> None:
    _, port = await echo()
    client = await _raw_client(port)
    await client.send_bytes(client_frame(b"last", opcode=2) + client_frame(struct.pack("!H", 1000), opcode=8))
    assert await _frame(client) == (2, b"last")
    assert await _frame(client) == (8, struct.pack("!H", 1000))
    client.close()
