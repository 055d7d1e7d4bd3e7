"""Hardening on a real server over loopback: API keys, origins, TLS, connection cap, keepalive,
slow consumers, compression, rate limits and the idle timeout.

Every test starts its own ``wsserve serve`` subprocess with the flags under test
(``start_server`` from ``tests/conftest.py``).  Where the behaviour lives below
what a WebSocket library lets a client do (never answering pings, never reading)
the test speaks the protocol itself over a plain TCP socket
(:class:`tests.support.RawClient`).

Not repeated here (see ``test_server_errors.py``, ``test_server_lifecycle.py`` and
``test_server_http.py``): ``--api-key`` with the ``auth`` message and ``Bearer`` 401,
1009 for oversize messages, drain with a long generation, metrics moving.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support import (
    OP_CLOSE,
    OP_PING,
    Conn,
    RawClient,
    ServerProcess,
    close_code,
    http_get,
    wait_until_async,
)

P = {"type": "predict", "model": "linear", "inputs": [[1.0]]}
GEN = {"type": "generate", "model": "charlm", "prompt": "The ", "max_tokens": 100000}
#: A generation that runs until cancelled (hours of tokens at any speed: max_tokens costs no memory).
LONG = 10**9


# --------------------------------------------------------------------------- helpers

def http_status(url: str, context: ssl.SSLContext | None = None) -> int:
    return http_get(url, context=context)[0]


# --------------------------------------------------------------------------- API keys

async def test_api_keys_from_file_and_env_never_logged(start_server, tmp_path: Path) -> None:
    file_key, env_key, flag_key = "fileKey-7Qx2", "envKey-9Lm4", "flagKey-3Pz8"
    key_file = tmp_path / "keys"
    key_file.write_text(f"# a comment line, not a key\n{file_key}\n\n")
    server = start_server("--api-key-file", str(key_file), "--api-key", flag_key, "--models", "linear,charlm",
                          env={"WSSERVE_API_KEYS": f" {env_key} ,"})
    for key in (file_key, env_key, flag_key):
        conn = await Conn.open(server.url, additional_headers={"Authorization": f"Bearer {key}"})
        assert (await conn.request({**P, "id": key}))["type"] == "result"
        await conn.close()
    # The comment line is not a key.
    with pytest.raises(websockets.InvalidStatus) as info:
        await Conn.open(server.url, additional_headers={"Authorization": "Bearer # a comment line, not a key"})
    assert info.value.response.status_code == 401
    # Without a key: ping works, work and the model list are refused, each answered with its id.
    conn = await Conn.open(server.url)
    assert conn.hello["auth_required"] is True
    assert await conn.request({"type": "ping", "id": "p"}) == {"type": "pong", "id": "p"}
    for msg in ({**P, "id": 1}, {**GEN, "id": 2, "max_tokens": 3}, {"type": "models", "id": 3}):
        reply = await conn.request(msg)
        assert reply["type"] == "error" and reply["code"] == "unauthorized" and reply["id"] == msg["id"], reply
    assert (await conn.request({"type": "auth", "id": "a", "token": env_key}))["ok"] is True
    await conn.send({**GEN, "id": 4, "max_tokens": 3})
    _, done = await conn.until_terminal(4)
    assert done["type"] == "done" and done["tokens"] == 3
    await conn.close()
    log = server.stderr_text()
    assert "serving" in log  # the log is captured at all
    for key in (file_key, env_key, flag_key):
        assert key not in log


async def test_keys_stay_out_of_a_debug_log(start_server) -> None:
    """Even at ``--log-level debug`` (which logs handshakes and frames) keys must not be written."""
    key, wrong = "dbgKey-5Hq1", "dbgWrong-8Kd6"
    server = start_server("--api-key", key, "--log-level", "debug", "--models", "linear")
    conn = await Conn.open(server.url, additional_headers={"Authorization": f"Bearer {key}"})
    assert (await conn.request({**P, "id": 1}))["type"] == "result"
    await conn.close()
    conn = await Conn.open(server.url)
    assert (await conn.request({"type": "auth", "id": 1, "token": wrong}))["code"] == "unauthorized"
    assert (await conn.request({"type": "auth", "id": 2, "token": key}))["ok"] is True
    await conn.close()
    # Everything both connections made the server log is in once it logged both closes
    # (each library's line for a closed connection).
    closed = "connection closed" if server.transport == "websockets" else "Disconnected"
    await wait_until_async(lambda: server.stderr_text().count(closed) >= 2, 10)
    log = server.stderr_text()
    assert "DEBUG" in log  # debug logging is really on
    assert key not in log
    assert wrong not in log  # a near-miss of a real key is as sensitive as the key


# --------------------------------------------------------------------------- origins

async def test_origin_allowlist_exact_match(start_server) -> None:
    good, other = "https://app.example.com", "http://localhost:3000"
    server = start_server("--allow-origin", good, "--allow-origin", other, "--models", "linear")
    for origin in (good, other):
        conn = await Conn.open(server.url, origin=origin)
        assert (await conn.request({**P, "id": 1}))["type"] == "result"
        await conn.close()
    # No Origin header (a non-browser client) is allowed by default.
    conn = await Conn.open(server.url)
    await conn.close()
    near_misses = (
        "https://evil.example.com", "http://app.example.com", "https://app.example.com.evil.net",
        "https://app.example.com:8443", "https://xapp.example.com", "null", "http://localhost:3001",
    )
    for origin in near_misses:
        with pytest.raises(websockets.InvalidStatus) as info:
            await Conn.open(server.url, origin=origin)
        assert info.value.response.status_code == 403, origin
    # Plain HTTP routes are not WebSocket handshakes: unaffected.
    assert await asyncio.to_thread(http_status, server.http + "/healthz") == 200


async def test_require_origin_refuses_a_missing_origin(start_server) -> None:
    good = "https://app.example.com"
    server = start_server("--allow-origin", good, "--require-origin", "--models", "linear")
    with pytest.raises(websockets.InvalidStatus) as info:
        await Conn.open(server.url)
    assert info.value.response.status_code == 403
    raw = RawClient(server.port)  # no Origin header at all
    assert raw.status == 403
    raw.close()
    conn = await Conn.open(server.url, origin=good)
    assert (await conn.request({**P, "id": 1}))["type"] == "result"
    await conn.close()


# --------------------------------------------------------------------------- TLS

def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key; with ``cryptography`` or the ``openssl`` CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True, timeout=30,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


async def test_tls_round_trip_with_a_test_made_certificate(start_server, tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    server = start_server("--certfile", str(cert), "--keyfile", str(key), "--models", "linear,charlm")
    assert server.url.startswith("wss://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(cert))
    conn = await Conn.open(server.url, ssl=trusting)
    reply = await conn.request({**P, "id": "tls", "inputs": [[0.0], [1.0]]})
    assert reply["type"] == "result" and len(reply["outputs"]) == 2
    await conn.send({**GEN, "id": "g", "max_tokens": 50})
    tokens, done = await conn.until_terminal("g")
    assert done["reason"] == "length" and len(tokens) == 50
    assert conn.ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    await conn.close()
    # A client that does not trust the certificate refuses the server.
    with pytest.raises(ssl.SSLCertVerificationError):
        await Conn.open(server.url, ssl=ssl.create_default_context())
    # Plain ws:// to the TLS port does not get a WebSocket.
    with pytest.raises((websockets.InvalidHandshake, websockets.InvalidMessage, ConnectionError, EOFError, OSError)):
        await Conn.open(server.url.replace("wss://", "ws://"), open_timeout=5)
    # HTTPS routes on the same port.
    assert await asyncio.to_thread(http_status, server.http.replace("http://", "https://") + "/healthz", trusting) == 200


# --------------------------------------------------------------------------- connection cap

async def test_max_connections_503_then_a_slot_frees(start_server) -> None:
    server = start_server("--max-connections", "3", "--models", "linear")
    conns = [await Conn.open(server.url) for _ in range(3)]
    with pytest.raises(websockets.InvalidStatus) as info:
        await Conn.open(server.url)
    assert info.value.response.status_code == 503
    # Plain HTTP still answers while WebSockets are full.
    assert await asyncio.to_thread(http_status, server.http + "/healthz") == 200
    # The open ones are served normally.
    for i, conn in enumerate(conns):
        assert (await conn.request({**P, "id": i}))["type"] == "result"
    # Closing one frees its slot (as soon as the server has seen the close).
    await conns.pop().close()

    async def one_more() -> Conn | None:
        try:
            return await Conn.open(server.url)
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 503
            return None

    conns.append(await wait_until_async(one_more, 10, what="the closed connection's slot is freed"))
    # An abrupt disconnect (no closing handshake) frees its slot too.
    conns.pop().ws.transport.abort()
    conns.append(await wait_until_async(one_more, 10, what="the aborted connection's slot is freed"))
    for conn in conns:
        await conn.close()


async def test_max_connections_holds_under_a_concurrent_burst(start_server) -> None:
    server = start_server("--max-connections", "5", "--models", "linear")

    async def attempt() -> Any:
        try:
            return await websockets.connect(server.url, compression=None)
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    results = await asyncio.gather(*(attempt() for _ in range(40)))
    opened = [r for r in results if not isinstance(r, int)]
    refused = [r for r in results if isinstance(r, int)]
    try:
        assert len(opened) == 5
        assert refused == [503] * 35
        assert (await asyncio.to_thread(server.metrics)).value("wsserve_connections") == 5
    finally:
        for ws in opened:
            await ws.close()


# --------------------------------------------------------------------------- keepalive

async def test_client_that_never_answers_pings_is_dropped(start_server) -> None:
    server = start_server("--ping-interval", "0.5", "--ping-timeout", "0.5", "--models", "linear")
    # A well-behaved client (websockets answers pings by itself) outlives several ping periods.
    polite = await Conn.open(server.url)
    t0 = time.monotonic()  # before the silent client connects: the server's ping cycle for it starts later
    raw = RawClient(server.port)
    assert raw.status == 101
    assert raw.recv_json()["type"] == "hello"

    def until_closed() -> tuple[list[int], int | None]:
        # Each read waits at most the client's 10 s timeout (10 x interval + timeout): a server that
        # never dropped the silent client fails here with TimeoutError.
        ops: list[int] = []
        try:
            while True:
                frame = raw.recv_frame()
                ops.append(frame.opcode)
                if frame.opcode == OP_CLOSE:
                    return ops, close_code(frame.payload)
        except (EOFError, ConnectionResetError):
            return ops, None

    ops, code = await asyncio.to_thread(until_closed)
    raw.close()
    assert OP_PING in ops, ops  # the server did ping
    assert code == 1011  # keepalive ping timeout
    assert (await polite.request({"type": "ping", "id": "still"}, timeout=5)) == {"type": "pong", "id": "still"}
    # the polite one lived through at least one full ping cycle (interval + timeout) of the silent one,
    # which began after t0 (the bound follows from the order of events, not from the machine's speed)
    assert time.monotonic() - t0 >= 1.0
    await polite.close()


# --------------------------------------------------------------------------- slow consumers

WRITE_BUFFER = 1 << 20  # --max-write-buffer-bytes for the slow-consumer tests


async def _latency_samples(conn: Conn, seconds: float, *, tag: str, stop: asyncio.Event | None = None) -> list[float]:
    """Sequential single-row predicts for ``seconds`` (or until ``stop``); round trips in seconds."""
    out: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and not (stop is not None and stop.is_set()):
        t = time.perf_counter()
        reply = await conn.request({**P, "id": f"{tag}{i}"})
        out.append(time.perf_counter() - t)
        assert reply["type"] == "result", reply
        i += 1
    return out


def _stuck_requests(kind: str) -> list[dict[str, Any]]:
    if kind == "generate":  # 64 × 100,000 tokens ≈ 300 MB of token frames if nothing stopped them
        return [{**GEN, "id": i} for i in range(64)]
    # streamed predict: 4 × 16,384 rows × ~200 bytes of mlp output, in chunks of 32 rows
    return [{"type": "predict", "id": i, "model": "mlp", "inputs": [[0] * 32] * 16384, "stream": True,
             "chunk_rows": 32} for i in range(4)]


SLOW_CONSUMER_FLAGS = (
    "--max-write-buffer-bytes", str(WRITE_BUFFER), "--slow-consumer-timeout", "1",
    "--max-message-bytes", str(4 << 20), "--models", "linear,mlp,charlm",
)


def _slow_consumer_closes(server: ServerProcess) -> float:
    return server.metrics().get("wsserve_slow_consumer_closes_total")


@pytest.mark.parametrize("kind", ["generate", "stream"])
async def test_reader_that_stops_is_closed_1008_its_work_cancelled_and_others_served(
    start_server, request: pytest.FixtureRequest, kind: str
) -> None:
    server = start_server(*SLOW_CONSUMER_FLAGS)
    normal = await Conn.open(server.url)
    stuck = RawClient(server.port, rcvbuf=4096)
    request.addfinalizer(stuck.close)
    assert stuck.recv_json()["type"] == "hello"
    stuck.send(*_stuck_requests(kind))  # ... and never read again until the server gave up
    closed = asyncio.Event()
    during_task = asyncio.create_task(_latency_samples(normal, 60.0, tag="during", stop=closed))
    # Without the policy the stuck connection would stay open (and its work run) indefinitely.
    await wait_until_async(lambda: _slow_consumer_closes(server) >= 1, 30, in_thread=True,
                           what="the stuck reader is closed as a slow consumer")
    closed.set()
    during = await during_task
    # The stuck socket gets everything that was buffered, then a 1008 close frame.
    code, texts = await asyncio.to_thread(stuck.read_until_close)
    stuck.close()
    assert code == 1008, (code, texts)
    # Its work was cancelled, not finished in the background.
    await wait_until_async(lambda: server.metrics().value("wsserve_inflight_requests") == 0, 10, in_thread=True)
    assert await asyncio.to_thread(_slow_consumer_closes, server) == 1
    # The other client was served throughout.
    assert len(during) >= 5, len(during)
    assert (await normal.request({"type": "ping", "id": "end"})) == {"type": "pong", "id": "end"}
    await normal.close()


@pytest.mark.slow
async def test_a_stopped_reader_leaves_the_server_bounded_memory(start_server, request: pytest.FixtureRequest) -> None:
    """A generous bound on the memory a stuck reader costs (the behaviour itself is the test above;
    the other clients' latency meanwhile is measured by benchmarks/bench_limits.py): the server's
    RSS grows by less than 4x the write buffer + 12 MiB (about 5 MiB measured), not the ~300 MB of
    token frames requested."""
    server = start_server(*SLOW_CONSUMER_FLAGS)
    pid = server.proc.pid
    rss_before = server.memory_kib("VmRSS")
    try:  # VmHWM := VmRSS, so the peak below is this phase's (Linux >= 4.0)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    rss_peak = rss_before

    stuck = RawClient(server.port, rcvbuf=4096)
    request.addfinalizer(stuck.close)
    assert stuck.recv_json()["type"] == "hello"
    stuck.send(*_stuck_requests("generate"))

    def slow_closed() -> bool:
        nonlocal rss_peak
        rss_peak = max(rss_peak, server.memory_kib("VmRSS"))
        return _slow_consumer_closes(server) >= 1

    await wait_until_async(slow_closed, 30, in_thread=True, interval_s=0.05,
                           what="the slow-consumer policy closes the stuck reader")
    if hwm_reset:
        rss_peak = max(rss_peak, server.memory_kib("VmHWM"))
    stuck.close()
    growth_kib = rss_peak - rss_before
    assert growth_kib < 4 * WRITE_BUFFER // 1024 + 12 * 1024, growth_kib


async def test_backlog_left_over_the_limit_after_the_last_reply_is_closed(start_server) -> None:
    # One non-streamed mlp predict whose single result frame (~200 bytes a row) lands in the server's
    # buffer at once.  The kernel takes at most tcp_wmem[max] of it; the rest stays in user space, sized
    # to be over the limit and under 4 × the limit whatever the kernel took.
    try:
        kernel_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        kernel_max = 4 << 20
    limit = max(4 << 20, int(kernel_max * 0.6))
    n_rows = (kernel_max + 2 * limit) // 200
    server = start_server(
        "--max-write-buffer-bytes", str(limit), "--slow-consumer-timeout", "1", "--ping-interval", "0",
        "--max-rows", str(n_rows), "--max-message-bytes", str(n_rows * 70), "--models", "mlp",
    )
    stuck = RawClient(server.port, rcvbuf=4096)
    try:
        assert stuck.recv_json()["type"] == "hello"
        stuck.send({"type": "predict", "id": "big", "model": "mlp", "inputs": [[0] * 32] * n_rows})
        await wait_until_async(lambda: server.metrics().value("wsserve_inflight_requests") == 0, 10, in_thread=True)
        # The reply sits over the limit for longer than the 1 s timeout; without the rule the
        # connection would stay open (no keepalive pings here) and this wait would fail.
        await wait_until_async(lambda: _slow_consumer_closes(server) >= 1, 15, in_thread=True)
        code, _ = await asyncio.to_thread(stuck.read_until_close)
        assert code == 1008
    finally:
        stuck.close()


# --------------------------------------------------------------------------- compression

_OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}


async def test_compression_off_by_default(start_server) -> None:
    plain = start_server("--models", "linear")
    raw = RawClient(plain.port, headers=_OFFER)
    assert raw.status == 101
    assert "sec-websocket-extensions" not in raw.response_head.lower()
    raw.close()
    ws = await websockets.connect(plain.url, compression="deflate")
    assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    await ws.close()


@pytest.mark.only_transport("websockets", reason="picows has no permessage-deflate: --compression is refused with it "
                            "(tests/test_config_cli.py)")
async def test_compression_on_by_flag(start_server) -> None:
    offer = _OFFER
    deflating = start_server("--compression", "--models", "linear")
    raw = RawClient(deflating.port, headers=offer)
    assert raw.status == 101
    assert "permessage-deflate" in raw.response_head.lower()
    raw.close()
    conn = await Conn.open(deflating.url, compression="deflate")
    assert "permessage-deflate" in conn.ws.response.headers["Sec-WebSocket-Extensions"]
    assert (await conn.request({**P, "id": 1}))["type"] == "result"
    await conn.close()


# --------------------------------------------------------------------------- rate limits

def _replies(raw: RawClient, ids: list[Any]) -> dict[Any, dict[str, Any]]:
    """The terminal frame of each id (token frames skipped)."""
    out: dict[Any, dict[str, Any]] = {}
    while len(out) < len(ids):
        frame = raw.recv_json()
        if frame.get("id") in ids and frame["type"] in ("result", "done", "error"):
            assert frame["id"] not in out, f"second terminal frame for {frame['id']}"
            out[frame["id"]] = frame
    return out


def test_rate_limit_per_connection_then_recovery(start_server) -> None:
    server = start_server("--rate-limit", "2", "--rate-burst", "3", "--models", "linear,charlm")
    raw = RawClient(server.port)
    raw.recv_json()
    ids = list(range(6))
    raw.send(*({**P, "id": i} for i in ids))  # one TCP write: the bucket cannot refill in between
    replies = _replies(raw, ids)
    assert [replies[i]["type"] for i in ids] == ["result"] * 3 + ["error"] * 3
    for i in ids[3:]:
        err = replies[i]
        assert err["code"] == "rate_limited", err
        assert 0 < err["retry_after_ms"] <= 600, err  # one token per 500 ms
        assert err["message"]
    # ping, models and cancel are not rate limited; generate is.
    raw.send(*({"type": "ping", "id": f"p{i}"} for i in range(10)), {"type": "models", "id": "m"},
             {**GEN, "id": "g", "max_tokens": 3})
    frames = [raw.recv_json() for _ in range(12)]
    assert [f["type"] for f in frames[:11]] == ["pong"] * 10 + ["models"]
    assert frames[11]["id"] == "g" and frames[11]["code"] == "rate_limited"
    # Waiting as told is enough to be served again (the sleep is the behaviour under test).
    time.sleep(frames[11]["retry_after_ms"] / 1000 + 0.05)
    raw.send({**P, "id": "again"})
    assert raw.recv_json()["type"] == "result"
    # Another connection has its own bucket.
    other = RawClient(server.port)
    other.recv_json()
    other.send(*({**P, "id": i} for i in ids[:3]))
    assert all(r["type"] == "result" for r in _replies(other, ids[:3]).values())
    other.close()
    raw.close()
    values = server.metrics()
    assert values.value("wsserve_requests_total", code="rate_limited", model="linear", type="predict") == 3
    assert values.value("wsserve_requests_total", code="rate_limited", model="charlm", type="generate") == 1


@pytest.mark.parametrize(("rate", "burst"), [("4", 4), ("0.5", 1)])
def test_rate_limit_default_burst_is_one_second_at_least_one(start_server, rate: str, burst: int) -> None:
    server = start_server("--rate-limit", rate, "--models", "linear")
    raw = RawClient(server.port)
    raw.recv_json()
    ids = list(range(6))
    raw.send(*({**P, "id": i} for i in ids))
    replies = _replies(raw, ids)
    assert [replies[i]["type"] for i in ids] == ["result"] * burst + ["error"] * (6 - burst)
    assert all(replies[i]["code"] == "rate_limited" for i in ids[burst:])
    raw.close()


def test_key_rate_limit_is_shared_by_connections_with_the_same_key(start_server) -> None:
    server = start_server("--api-key", "kA-1111", "--api-key", "kB-2222", "--key-rate-limit", "1",
                          "--models", "linear")
    a1 = RawClient(server.port, headers={"Authorization": "Bearer kA-1111"})
    a1.recv_json()
    ids = list(range(6))
    a1.send(*({**P, "id": i} for i in ids))
    first = _replies(a1, ids)
    served = sum(r["type"] == "result" for r in first.values())
    assert 1 <= served < len(ids)
    assert all(r["code"] == "rate_limited" for r in first.values() if r["type"] == "error")
    # A second connection with the same key (authenticated by message, as a browser would) finds the bucket empty ...
    a2 = RawClient(server.port)
    a2.recv_json()
    a2.send({"type": "auth", "id": "auth", "token": "kA-1111"}, {**P, "id": "x"})
    assert a2.recv_json()["ok"] is True
    limited = a2.recv_json()
    assert limited["id"] == "x" and limited["code"] == "rate_limited" and limited["retry_after_ms"] > 0
    # ... while another key has its own.
    b = RawClient(server.port, headers={"Authorization": "Bearer kB-2222"})
    b.recv_json()
    b.send({**P, "id": "y"})
    assert b.recv_json()["type"] == "result"
    time.sleep(limited["retry_after_ms"] / 1000 + 0.05)  # waiting as told (the behaviour under test)
    a2.send({**P, "id": "z"})
    assert a2.recv_json()["type"] == "result"
    for raw in (a1, a2, b):
        raw.close()
    assert "kA-1111" not in server.stderr_text() and "kB-2222" not in server.stderr_text()


# --------------------------------------------------------------------------- idle timeout

async def test_idle_timeout_closes_quiet_connections_only(start_server) -> None:
    # One sequence at a time: the three generations below stay in flight (running or queued) for seconds.
    # (max_tokens far past what a stream reaches before its cancel: picows on an idle machine streams
    # ~50k tokens/s, so the default limit of 100,000 could end the first with "length" first)
    server = start_server("--idle-timeout", "1", "--max-generate-batch", "1", "--models", "charlm",
                          "--max-tokens", str(LONG))
    quiet = await Conn.open(server.url)
    chatty = await Conn.open(server.url)
    busy = await Conn.open(server.url)
    t0 = time.monotonic()
    ids = ["g0", "g1", "g2"]
    for rid in ids:  # in flight for longer than the idle timeout
        await busy.send({**GEN, "id": rid, "max_tokens": LONG})
    busy_frames = asyncio.create_task(busy.collect(set(ids), timeout=60))

    async def closed_after(conn: Conn) -> tuple[int, float]:
        # Waits at most 10 s per frame: a connection never closed for idleness fails here.
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await conn.recv(timeout=10)
        return info.value.rcvd.code, time.monotonic()

    quiet_task = asyncio.create_task(closed_after(quiet))
    # chatty sends something every 0.3 s for 1.8 s while busy's generations stream (the pauses
    # are the behaviour under test: each shorter than the timeout, their sum longer).
    for i in range(6):
        assert (await chatty.request({"type": "ping", "id": i})) == {"type": "pong", "id": i}
        await asyncio.sleep(0.3)
    code, at = await quiet_task
    assert code == 1000
    assert at - t0 >= 0.9, at - t0  # not before the idle timeout
    assert not busy_frames.done(), "the generations finished too soon to test the in-flight case"
    assert busy.ws.state is websockets.State.OPEN
    assert chatty.ws.state is websockets.State.OPEN
    await chatty.close()
    t_cancel = time.monotonic()
    for rid in ids:
        await busy.send({"type": "cancel", "id": rid})
    frames = await busy_frames
    assert all(frames[rid][-1]["reason"] == "cancelled" for rid in ids)
    # Now idle: closed about one timeout after its last message (the cancels).
    code, at = await closed_after(busy)
    assert code == 1000
    assert at - t_cancel >= 0.9, at - t_cancel  # not before one idle timeout after its last message


async def test_a_request_ending_during_a_slow_admin_operation_does_not_close_the_connection_as_idle(
        start_server, tmp_path: Path) -> None:
    """A running admin operation stops the idle clock: a request of the same connection that ends
    meanwhile (its deadline passes, past one idle timeout after the last message) must not close
    the connection as idle, which lost the operation's answer.  ``slow``'s reload is held in its
    ``Model()`` and its predict in ``predict`` (:data:`~tests.repo_models.GATED_PY`)."""
    from tests.repo_models import AFFINE_CONFIG, GATED_PY, write_affine

    repo, gate, init_gate = tmp_path / "repository", tmp_path / "gate", tmp_path / "init-gate"
    (repo / "slow").mkdir(parents=True)
    (repo / "slow" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "slow" / "1", bias=1.0, source=GATED_PY, **{"gate.txt": str(gate)})
    server = start_server("--idle-timeout", "1", "--models", "none", "--model-repository", str(repo))
    (repo / "slow" / "1" / "init_gate.txt").write_text(str(init_gate))  # the next Model() is held
    conn = await Conn.open(server.url)
    try:
        await conn.send({"type": "reload", "id": "r", "model": "slow"})
        await wait_until_async(lambda: Path(f"{init_gate}.started").exists(), 30, what="the reload's Model() is held")
        # held in predict (a row starting -1); its deadline passes two idle timeouts after this last message
        await conn.send({"type": "predict", "id": "p", "model": "slow", "inputs": [[-1.0, 0.0, 0.0]],
                         "timeout_ms": 2000})
        assert (await conn.recv(30))["code"] == "deadline_exceeded"
        init_gate.touch()
        gate.touch()
        reply = await conn.recv(30)  # the reload's answer (before: the connection closed as idle, 1000)
        assert (reply["type"], reply["id"], reply.get("ok")) == ("reload", "r", True), reply
    finally:
        init_gate.touch()
        gate.touch()
