"""The WebSocket's rules over HTTP: API keys, rate limits, the connection cap, drain, and the Origin policy (CORS).

Real servers on 127.0.0.1, raw sockets and third-party clients (the openai SDK,
tritonclient), so status codes and headers are checked as they are sent.
"""

from __future__ import annotations

import json
import signal

import pytest
import websockets

from tests.repo_models import BIGRAM_CONFIG, BIGRAM_PY, write_py
from tests.support import Conn, RawHttp, request_bytes, wait_until, wait_until_async

KEY = "sk-http-" + "k" * 24
SEED = b'{"x": 0.5}'


def _error(answer) -> dict:
    return json.loads(answer.body)["error"]


# --------------------------------------------------------------------------- API keys


def test_keys_protect_every_route_but_the_probes(start_server) -> None:
    server = start_server("--api-key", KEY, "--models", "linear,charlm")
    with RawHttp(server.port) as c:
        a = c.request("POST", "/predict", SEED)
        assert a.status == 401 and a.header("www-authenticate") == "Bearer" and _error(a)["code"] == "unauthorized"
        a = c.request("POST", "/predict", SEED, {"Authorization": "Bearer wrong"})
        assert a.status == 401 and _error(a)["message"] == "invalid API key"
        assert c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}"}).status == 200
        a = c.request("GET", "/v2")
        assert a.status == 401 and isinstance(_error(a), str)  # the OIP envelope
        assert c.request("GET", "/v2", headers={"Authorization": f"Bearer {KEY}"}).status == 200
        for path in ("/v2/models/linear/config", "/v2/models/linear/versions/1/stats", "/v2/models/stats"):
            a = c.request("GET", path)  # Triton's configuration and statistics extensions
            assert a.status == 401 and isinstance(_error(a), str), path
            assert c.request("GET", path, headers={"Authorization": f"Bearer {KEY}"}).status == 200, path
        work = (("POST", "/v1/models/linear:predict", b'{"instances": [[0.5]]}'),  # KServe V1
                ("GET", "/v1/models/linear", None),
                ("GET", "/version", None),
                ("POST", "/v2/models/charlm/generate", b'{"text_input": "a", "max_tokens": 2}'),  # Triton's generate
                ("POST", "/v1/chat/completions",
                 b'{"model": "charlm", "messages": [{"role": "user", "content": "a"}], "max_tokens": 2}'))
        for method, path, body in work:
            a = c.request(method, path, body)
            assert a.status == 401 and _error(a) is not None, path
            assert c.request(method, path, body, {"Authorization": f"Bearer {KEY}"}).status == 200, path
        for probe in ("/healthz", "/readyz", "/health", "/v2/health/live", "/v2/health/ready"):
            assert c.request("GET", probe).status == 200, probe
        a = c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}", "authorization": f"Bearer {KEY}"})
        assert a.status == 400 and "duplicate Authorization" in _error(a)["message"]


async def test_the_bearer_scheme_is_case_insensitive_as_rfc_7235_says(start_server) -> None:
    # Only "Bearer " was recognised: "bearer <key>" (RFC 7235 §2.1: the scheme is a case-insensitive
    # token; RFC 6750 §2.1 uses it) was 401 on HTTP and on the WebSocket handshake, and counted as a
    # failed attempt of the address.
    server = start_server("--api-key", KEY, "--models", "linear")
    with RawHttp(server.port) as c:
        for value in (f"bearer {KEY}", f"BEARER {KEY}", f"Bearer   {KEY}"):
            a = c.request("POST", "/predict", SEED, {"Authorization": value})
            assert a.status == 200, (value, a.status, a.body)
        for value in (f"Basic {KEY}", f"Bearer{KEY}", f"Bearerx {KEY}"):
            a = c.request("POST", "/predict", SEED, {"Authorization": value})
            assert a.status == 401 and _error(a)["code"] == "unauthorized", value
    conn = await Conn.open(server.url, additional_headers={"Authorization": f"bearer {KEY}"})
    try:
        assert "auth_required" in conn.hello
        reply = await conn.request({"type": "predict", "id": 1, "model": "linear", "inputs": [[0.5]]})
        assert reply["type"] == "result", reply
    finally:
        await conn.close()


def test_third_party_clients_send_their_key(start_server) -> None:
    openai = pytest.importorskip("openai")
    tritonclient_http = pytest.importorskip("tritonclient.http")
    tritonclient_utils = pytest.importorskip("tritonclient.utils")
    server = start_server("--api-key", KEY, "--models", "mlp,charlm")
    good = openai.OpenAI(base_url=server.http + "/v1", api_key=KEY, max_retries=0)
    assert len(good.completions.create(model="charlm", prompt="a", max_tokens=3).choices[0].text) == 3
    bad = openai.OpenAI(base_url=server.http + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="charlm", prompt="a", max_tokens=3)
    triton = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert triton.is_server_live()  # health needs no key
    assert triton.get_model_metadata("mlp", headers={"Authorization": f"Bearer {KEY}"})["name"] == "mlp"
    assert triton.get_model_config("mlp", headers={"Authorization": f"Bearer {KEY}"})["name"] == "mlp"
    stats = triton.get_inference_statistics("mlp", headers={"Authorization": f"Bearer {KEY}"})
    assert [s["name"] for s in stats["model_stats"]] == ["mlp"]
    for call in (triton.get_model_metadata, triton.get_model_config, triton.get_inference_statistics):
        with pytest.raises(tritonclient_utils.InferenceServerException) as info:
            call("mlp")
        assert info.value.status() == "401" and "API key" in str(info.value), call


def test_failed_keys_are_limited_per_address_across_http_and_websocket(start_server) -> None:
    server = start_server("--api-key", KEY, "--models", "linear")
    with RawHttp(server.port) as c:
        for _ in range(10):
            assert c.request("POST", "/predict", SEED, {"Authorization": "Bearer wrong"}).status == 401
        a = c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}"})  # even the right key, for now
        assert a.status == 429 and int(a.header("retry-after")) >= 1 and _error(a)["code"] == "rate_limited"


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP"])
def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_failed_key_budget(start_server, header: str) -> None:
    """Behind nginx every client's TCP peer is 127.0.0.1: one guesser used to lock every client out.
    With ``--trusted-proxy 127.0.0.1`` the client is the address the proxy forwards."""
    server = start_server("--api-key", KEY, "--models", "linear", "--trusted-proxy", "127.0.0.1")
    guesser, client = {header: "203.0.113.7"}, {header: "198.51.100.2"}
    with RawHttp(server.port) as c:
        for _ in range(10):
            assert c.request("POST", "/predict", SEED, {"Authorization": "Bearer wrong", **guesser}).status == 401
        assert c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}", **guesser}).status == 429
        assert c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}", **client}).status == 200
        # a hop the client wrote itself (on the left) is not believed: the proxy's last hop is
        if header == "X-Forwarded-For":
            spoofed = {header: "198.51.100.2, 203.0.113.7"}
            assert c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}", **spoofed}).status == 429
        # nor a line of its own before the one the proxy added (HAProxy adds a line; only the first
        # was read, so a client's own line picked a fresh budget per guess)
        own_line = {header.lower(): "198.51.100.2", header: "203.0.113.7"}  # two lines (names differ in case)
        assert c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}", **own_line}).status == 429


def test_behind_a_trusted_proxy_a_trailer_names_no_client(start_server) -> None:
    """A chunked body may end with trailer fields, which a proxy passes on after the body (HAProxy
    does) without reading them, after the ``X-Forwarded-For`` it added to the head.  They were
    merged into the headers, so a client's trailer ``X-Forwarded-For`` was the rightmost hop: a
    fresh failed-key budget per guess.  Trailers are not headers (RFC 9110 §6.5.1: never merged)."""
    server = start_server("--api-key", KEY, "--models", "linear", "--trusted-proxy", "127.0.0.1")

    def chunked(key: str, forwarded: str, trailer: str) -> bytes:
        return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                f"Transfer-Encoding: chunked\r\nX-Forwarded-For: {forwarded}\r\n\r\n").encode() \
            + b"%x\r\n%b\r\n0\r\n" % (len(SEED), SEED) + trailer.encode() + b"\r\n"

    with RawHttp(server.port) as c:
        for _ in range(10):
            assert c.request("POST", "/predict", SEED, {"Authorization": "Bearer wrong",
                                                        "X-Forwarded-For": "203.0.113.7"}).status == 401
        c.send(chunked(KEY, "203.0.113.7", "X-Forwarded-For: 198.51.100.2\r\n"))
        assert c.answer().status == 429  # still the guesser the proxy named
        c.send(chunked(KEY, "198.51.100.2", "X-Forwarded-For: 203.0.113.7\r\n"))
        assert c.answer().status == 200  # another client, whatever its trailer says
        c.send(chunked(KEY, "198.51.100.2", "Authorization: Bearer wrong\r\n"))
        assert c.answer().status == 200  # a trailer is no second Authorization header either


async def test_a_websocket_behind_a_trusted_proxy_is_its_forwarded_client(start_server) -> None:
    """The WebSocket handshake is a request too: its forwarded client owns the connection's failures."""
    server = start_server("--api-key", KEY, "--models", "linear", "--trusted-proxy", "127.0.0.1")
    url = f"ws://127.0.0.1:{server.port}"
    for _ in range(10):
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url, additional_headers={"Authorization": "Bearer wrong",
                                                              "X-Forwarded-For": "203.0.113.7"})
        assert info.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, additional_headers={"Authorization": f"Bearer {KEY}", "X-Forwarded-For": "203.0.113.7"})
    assert info.value.response.status_code == 429
    conn = await Conn.open(url, additional_headers={"Authorization": f"Bearer {KEY}", "X-Forwarded-For": "198.51.100.2"})
    r = await conn.request({"type": "predict", "id": 1, "model": "linear", "inputs": [[0.5]]})
    assert r["type"] == "result", r
    await conn.close()


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(start_server) -> None:
    """Without --trusted-proxy a client cannot pick its address (a fresh X-Forwarded-For per guess)."""
    server = start_server("--api-key", KEY, "--models", "linear")
    with RawHttp(server.port) as c:
        for i in range(10):
            wrong = {"Authorization": "Bearer wrong", "X-Forwarded-For": f"203.0.113.{i}"}
            assert c.request("POST", "/predict", SEED, wrong).status == 401
        right = {"Authorization": f"Bearer {KEY}", "X-Forwarded-For": "198.51.100.2"}
        assert c.request("POST", "/predict", SEED, right).status == 429


# --------------------------------------------------------------------------- rate limits


def test_connection_rate_limit_is_429_with_retry_after(start_server) -> None:
    server = start_server("--rate-limit-per-s", "0.5", "--rate-limit-burst", "2", "--models", "linear")
    with RawHttp(server.port) as c:
        assert [c.request("POST", "/predict", SEED).status for _ in range(2)] == [200, 200]
        a = c.request("POST", "/predict", SEED)
        error = _error(a)
        assert a.status == 429 and error["code"] == "rate_limited" and error["retry_after_ms"] > 0
        assert a.header("retry-after") == str(-(-error["retry_after_ms"] // 1000))
        assert c.request("GET", "/healthz").status == 200  # only work is rate-limited
    with RawHttp(server.port) as c:  # another connection has its own bucket
        assert c.request("POST", "/predict", SEED).status == 200


def test_key_rate_limit_is_shared_by_http_and_websocket(start_server) -> None:
    server = start_server("--api-key", KEY, "--key-rate-limit-per-s", "0.1", "--rate-limit-burst", "2",
                          "--models", "linear")
    auth = {"Authorization": f"Bearer {KEY}"}
    with RawHttp(server.port) as c:
        assert c.request("POST", "/predict", SEED, auth).status == 200
    with RawHttp(server.port) as c:
        assert c.request("POST", "/predict", SEED, auth).status == 200
        assert c.request("POST", "/predict", SEED, auth).status == 429


async def test_the_websocket_sees_the_http_spent_key_budget(start_server) -> None:
    server = start_server("--api-key", KEY, "--key-rate-limit-per-s", "0.1", "--rate-limit-burst", "1",
                          "--models", "linear")
    with RawHttp(server.port) as c:
        assert c.request("POST", "/predict", SEED, {"Authorization": f"Bearer {KEY}"}).status == 200
    conn = await Conn.open(server.url, additional_headers={"Authorization": f"Bearer {KEY}"})
    reply = await conn.request({"type": "predict", "id": 1, "model": "linear", "inputs": [[1.0]]})
    assert reply["code"] == "rate_limited"
    await conn.close()


# --------------------------------------------------------------------------- connection cap


async def test_connection_cap_counts_websockets_and_working_http_connections(start_server) -> None:
    server = start_server("--max-connections", "1", "--models", "linear")
    conn = await Conn.open(server.url)  # the one slot
    with RawHttp(server.port) as c:
        a = c.request("POST", "/predict", SEED)
        assert a.status == 503 and a.header("connection") == "close" and a.header("retry-after") == "1"
        assert _error(a)["code"] == "overloaded" and "max_connections" in _error(a)["message"]
        assert c.closed()
    with RawHttp(server.port) as c:  # probes and metadata are still answered
        assert c.request("GET", "/healthz").status == 200 and c.request("GET", "/v2").status == 200
    await conn.close()
    with RawHttp(server.port) as c:  # the slot is free: an HTTP connection takes it at its first work request
        assert c.request("POST", "/predict", SEED).status == 200
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(server.url)
        assert info.value.response.status_code == 503
        assert c.request("POST", "/predict", SEED).status == 200  # it keeps its slot
    # Closing the HTTP connection frees it (predicate wait: the server sees the close).
    async def connects() -> Conn | None:
        try:
            return await Conn.open(server.url)
        except websockets.InvalidStatus:
            return None

    conn = await wait_until_async(connects, 10.0, what="the slot of the closed HTTP connection is free")
    await conn.close()


# --------------------------------------------------------------------------- drain


def test_drain_finishes_http_work_refuses_new_work_and_exits_0(start_server) -> None:
    server = start_server("--drain-timeout", "60", "--models", "linear,charlm")
    body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 3000, "stream": True, "temperature": 0}).encode()
    streaming = RawHttp(server.port)
    streaming.send(request_bytes("POST", "/v1/completions", body))
    assert streaming.interim().status == 200
    assert streaming._line()  # the first event's chunk size: the generation runs
    idle = RawHttp(server.port)
    assert idle.request("GET", "/healthz").status == 200
    server.signal(signal.SIGTERM)
    assert idle.closed()  # an idle keep-alive connection is closed at once
    with RawHttp(server.port) as c:
        assert c.request("GET", "/readyz").status == 503
    with RawHttp(server.port) as c:
        assert c.request("GET", "/health").status == 503
    with RawHttp(server.port) as c:
        assert c.request("GET", "/v2/health/ready").status == 400
    with RawHttp(server.port) as c:
        a = c.request("POST", "/predict", SEED)
        assert a.status == 503 and a.header("connection") == "close" and _error(a)["code"] == "shutting_down"
    # The stream that was running finishes: its remaining events, [DONE], then the connection closes.
    while not streaming.closed():
        pass
    rest = streaming.buf
    assert rest.count(b'"finish_reason":null') == 3000 and b'"finish_reason":"length"' in rest
    assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert server.wait(30) == 0


def test_drain_deadline_ends_queued_http_work_with_503(start_server) -> None:
    server = start_server("--drain-timeout", "1", "--max-batch-size", "2", "--max-delay-ms", "60000",
                          "--models", "linear")
    waiting = RawHttp(server.port)
    waiting.send(request_bytes("POST", "/predict", SEED))  # waits for a second row that never comes
    wait_until(lambda: server.metrics().value("wsserve_inflight_requests") == 1, 30.0)
    server.signal(signal.SIGTERM)
    a = waiting.answer()
    assert a.status == 503 and _error(a)["code"] == "shutting_down" and a.header("connection") == "close"
    assert server.wait(30) == 0


def test_drain_deadline_ends_running_streams_with_an_error_event(start_server, tmp_path) -> None:
    """Streams still running at the drain deadline get their error after the 200: OpenAI's form
    (``data: {"error": {...}}`` then ``[DONE]``) and Triton's (``data: {"error": "..."}``)."""
    root = tmp_path / "repository"
    (root / "slowgen").mkdir(parents=True)
    (root / "slowgen" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(root / "slowgen" / "1", BIGRAM_PY, **{"seed.txt": "3", "delay.txt": "0.002"})  # 2 ms a step
    server = start_server("--drain-timeout", "1", "--models", "none", "--model-repository", str(root))
    openai_stream, triton_stream = RawHttp(server.port), RawHttp(server.port)
    openai_stream.send(request_bytes("POST", "/v1/completions", json.dumps(
        {"model": "slowgen", "prompt": "a", "max_tokens": 100000, "stream": True}).encode()))
    triton_stream.send(request_bytes("POST", "/v2/models/slowgen/generate_stream", json.dumps(
        {"text_input": "a", "max_tokens": 100000}).encode()))
    for stream in (openai_stream, triton_stream):
        assert stream.interim().status == 200
        assert stream._line()  # the first event's chunk size: the generation runs
    server.signal(signal.SIGTERM)
    for stream in (openai_stream, triton_stream):
        while not stream.closed():
            pass
    assert openai_stream.buf.endswith(
        b'data: {"error":{"message":"drain deadline reached","type":"server_error","param":null,'
        b'"code":"shutting_down"}}\n\ndata: [DONE]\n\n\r\n0\r\n\r\n'), openai_stream.buf[-300:]
    assert triton_stream.buf.endswith(b'data: {"error":"drain deadline reached"}\n\n\r\n0\r\n\r\n'), \
        triton_stream.buf[-300:]
    assert server.wait(30) == 0


# --------------------------------------------------------------------------- Origin policy and CORS


def test_same_origin_by_default(start_server) -> None:
    server = start_server("--models", "linear")
    own = f"http://127.0.0.1:{server.port}"
    with RawHttp(server.port) as c:
        a = c.request("POST", "/predict", SEED, {"Origin": "http://evil.example"})
        assert a.status == 403 and _error(a)["code"] == "forbidden"
        # RawHttp sends "Host: 127.0.0.1" (no port), so the port-qualified origin is another origin.
        assert c.request("POST", "/predict", SEED, {"Origin": own}).status == 403
    with RawHttp(server.port) as c:
        c.send(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nOrigin: {own}\r\n"
               f"Content-Length: {len(SEED)}\r\n\r\n".encode() + SEED)
        a = c.answer()
        assert a.status == 200 and a.header("access-control-allow-origin") is None  # same origin: no CORS needed
        a = c.request("POST", "/predict", SEED)  # no Origin: not a browser
        assert a.status == 200


def test_allowlisted_origin_gets_cors_and_preflights(start_server) -> None:
    server = start_server("--allow-origin", "http://app.example", "--models", "linear,charlm")
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type, authorization"}
    with RawHttp(server.port) as c:
        a = c.request("OPTIONS", "/v2/models/linear/infer", headers=pre)
        assert a.status == 204 and a.header("access-control-allow-origin") == "http://app.example"
        assert "POST" in a.header("access-control-allow-methods")
        assert "Authorization" in a.header("access-control-allow-headers") and a.header("vary") == "Origin"
        a = c.request("POST", "/predict", SEED, {"Origin": "http://app.example"})
        assert a.status == 200 and a.header("access-control-allow-origin") == "http://app.example"
        assert "Retry-After" in a.header("access-control-expose-headers")
        a = c.request("OPTIONS", "/predict", headers=dict(pre, **{"Access-Control-Request-Method": "PUT"}))
        assert a.status == 405 and a.header("allow") == "OPTIONS, POST"
        a = c.request("OPTIONS", "/predict", headers=dict(pre, Origin="http://other.example"))
        assert a.status == 403
        a = c.request("POST", "/predict", b"{", {"Origin": "http://app.example"})  # errors carry CORS too
        assert a.status == 400 and a.header("access-control-allow-origin") == "http://app.example"
        body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 2, "stream": True}).encode()
        a = c.request("POST", "/v1/completions", body, {"Origin": "http://app.example"})
        assert a.status == 200 and a.header("access-control-allow-origin") == "http://app.example"
        assert a.body.endswith(b"data: [DONE]\n\n")


def test_any_origin(start_server) -> None:
    server = start_server("--allow-origin", "*", "--models", "linear")
    with RawHttp(server.port) as c:
        a = c.request("POST", "/predict", SEED, {"Origin": "http://whatever.example"})
        assert a.status == 200 and a.header("access-control-allow-origin") == "*"
