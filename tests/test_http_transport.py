"""HTTP/1.1 on the WebSocket port, over raw sockets: keep-alive, pipelining, bodies, limits, streams.

Every refusal is checked on the wire: its status, and whether the connection
is closed.  Runs against real servers on 127.0.0.1 (the shared ``server``
fixture runs once on asyncio and once on uvloop).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support import RawHttp, request_bytes, scrape_metrics, wait_until


def _metric(server, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when absent: a labelled counter appears at its first increment)."""
    return scrape_metrics(server.http).get(name, **labels)


def _wait_for(predicate) -> None:
    wait_until(predicate, 30.0)


def test_keep_alive_serves_many_requests_on_one_connection(server) -> None:
    with RawHttp(server.port) as c:
        for i in range(20):
            a = c.request("POST", "/predict", json.dumps({"x": float(i)}).encode())
            assert a.status == 200 and a.header("connection") is None
            assert isinstance(json.loads(a.body)["y_pred"], float)
        assert c.request("GET", "/healthz").body == b"ok\n"


def test_pipelined_answers_come_back_in_request_order(server) -> None:
    """A slow answer (a 300-token completion) first, then instant ones: they wait their turn."""
    completion = json.dumps({"model": "charlm", "prompt": "The ", "max_tokens": 300, "temperature": 0}).encode()
    with RawHttp(server.port) as c:
        c.send(request_bytes("POST", "/v1/completions", completion)
               + request_bytes("GET", "/healthz")
               + request_bytes("POST", "/predict", b'{"x": 1.0}')
               + request_bytes("GET", "/v2/health/live"))
        first, second, third, fourth = (c.answer() for _ in range(4))
    assert len(json.loads(first.body)["choices"][0]["text"]) == 300
    assert second.body == b"ok\n"
    assert "y_pred" in json.loads(third.body)
    assert fourth.status == 200 and fourth.body == b""


def test_requests_pipelined_past_max_inflight_wait_their_turn(start_server) -> None:
    """Flow control, not refusals: with ``--max-inflight 4``, 40 predicts pipelined (in one
    write) behind a slow completion are all served, in order - none gets 503 ``overloaded``."""
    server = start_server("--max-inflight", "4", "--models", "linear,charlm")
    completion = json.dumps({"model": "charlm", "prompt": "The ", "max_tokens": 200, "temperature": 0}).encode()
    with RawHttp(server.port) as c:
        c.send(request_bytes("POST", "/v1/completions", completion)
               + b"".join(request_bytes("POST", "/predict", json.dumps({"x": float(i)}).encode()) for i in range(40)))
        answers = [c.answer() for _ in range(41)]
        assert c.request("GET", "/healthz").status == 200  # and the connection goes on
    assert [a.status for a in answers] == [200] * 41, [a.body for a in answers if a.status != 200][:1]
    assert len(json.loads(answers[0].body)["choices"][0]["text"]) == 200
    preds = [json.loads(a.body)["y_pred"] for a in answers[1:]]
    assert preds == sorted(preds) and len(set(preds)) == 40  # y = w·x + b, w > 0: in request order


def test_content_length_and_chunked_bodies(server) -> None:
    body = b'{"x": [0.5, 1.0]}'
    with RawHttp(server.port) as c:
        plain = c.request("POST", "/predict", body)
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:5], body[5:9], body[9:])) + b"0\r\n\r\n"
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        framed = c.answer()
    assert plain.status == framed.status == 200
    assert json.loads(plain.body) == json.loads(framed.body)
    assert len(json.loads(plain.body)["y_pred"]) == 2


def test_a_body_of_tiny_chunks_costs_about_its_size(start_server) -> None:
    """A 1 MiB body sent as 2-byte chunks (``max_message_bytes`` allows it) was held as one bytes
    object and one list slot per chunk, ~28 times its size (~29 MB for one request, per
    connection); now small chunks go into one buffer.  The server's peak RSS while it reads such a
    body grows by less than 8 MiB."""
    server = start_server("--models", "linear")
    pid = server.proc.pid
    try:  # VmHWM := VmRSS, so the peak below is this request's (Linux >= 4.0)
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("cannot reset the server's peak RSS here")
    before = server.memory_kib("VmHWM")
    body = b" " * (1_048_576 - 12) + b'{"x": [0.5]}'  # valid JSON, exactly max_message_bytes
    with RawHttp(server.port) as c:
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"2\r\n%b\r\n" % body[i:i + 2] for i in range(0, len(body), 2)) + b"0\r\n\r\n")
        a = c.answer()
    assert a.status == 200 and "y_pred" in json.loads(a.body), a.body
    growth_kib = server.memory_kib("VmHWM") - before
    assert growth_kib < 8 * 1024, growth_kib


def test_expect_100_continue_is_answered_before_the_body(server) -> None:
    body = b'{"x": 2.0}'
    with RawHttp(server.port) as c:
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = c.interim()
        assert interim.status == 100
        c.send(body)
        final = c.answer()
    assert final.status == 200 and "y_pred" in json.loads(final.body)


@pytest.mark.parametrize("path,status", [
    ("/v1/models/nope", 404),  # a handler's error
    ("/v2/models/charlm/generate", 405),  # a route without GET
    ("/no/such/route", 404),  # no route
])
def test_an_error_answer_to_head_has_no_body(server, path: str, status: int) -> None:
    """A HEAD answer never has content (RFC 9112): error answers sent theirs, which a keep-alive
    client read as the start of its next answer."""
    with RawHttp(server.port) as c:
        head = c.request("HEAD", path)  # reads the head only, as a client does
        assert head.status == status
        after = c.request("GET", "/healthz")  # the same connection: its answer must come next
        assert (after.status, after.body) == (200, b"ok\n")


def test_head_http10_and_unknown_upgrade(server) -> None:
    with RawHttp(server.port) as c:
        head = c.request("HEAD", "/healthz")
        assert head.status == 200 and head.body == b""
        assert c.request("GET", "/healthz").body == b"ok\n"  # the HEAD left nothing unread
    with RawHttp(server.port) as c:
        c.send(request_bytes("GET", "/healthz", version="1.0"))
        a = c.answer()
        assert a.status == 200 and a.header("connection") == "close" and c.closed()


def test_a_request_offering_another_protocol_is_served_with_its_body(server) -> None:
    """``curl --http2 -d ... http://`` offers HTTP/2 (``Upgrade: h2c``) on a POST.  The offer is
    ignored (RFC 9110 §7.8) and the request served as HTTP/1.1 - but its body was dropped (the
    parser stops at the head of any upgrade), so a valid request was answered 400 ``bad_json``
    ("zero-length, empty document")."""
    h2c = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"}
    body = b'{"x": 0.5}'
    with RawHttp(server.port) as c:
        a = c.request("POST", "/predict", body, h2c)
        assert a.status == 200 and "y_pred" in json.loads(a.body), a.body
        assert c.request("GET", "/healthz").body == b"ok\n"  # the same connection serves on
    with RawHttp(server.port) as c:  # a chunked body, and Expect: 100-continue answered once
        c.send(request_bytes("POST", "/predict", None, {**h2c, "Transfer-Encoding": "chunked",
                                                        "Expect": "100-continue"}))
        assert c.interim().status == 100
        c.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) + request_bytes("GET", "/healthz"))
        first = c.interim()
        assert first.status == 200, first.raw_head
        assert "y_pred" in json.loads(c._exactly(int(first.header("content-length"))))
        assert c.answer().body == b"ok\n"
        # many pipelined in one write, each read again by a parser of its own: all answered
        c.send(request_bytes("GET", "/healthz", None, h2c) * 300)
        assert [c.answer().body for _ in range(300)] == [b"ok\n"] * 300


def test_unknown_route_404_and_wrong_method_405_with_allow(server) -> None:
    with RawHttp(server.port) as c:
        a = c.request("GET", "/nope")
        assert a.status == 404 and a.body.startswith(b"no route")
        a = c.request("GET", "/v2/nope")
        assert a.status == 404 and set(json.loads(a.body)) == {"error"} and isinstance(json.loads(a.body)["error"], str)
        a = c.request("POST", "/v1/nope", b"{}")
        assert a.status == 404 and json.loads(a.body)["error"]["code"] == "not_found"
        a = c.request("PUT", "/predict", b"{}")
        assert a.status == 405 and a.header("allow") == "OPTIONS, POST"
        assert json.loads(a.body)["error"]["code"] == "method_not_allowed"
        a = c.request("GET", "/v2/models/mlp/infer")
        assert a.status == 405 and a.header("allow") == "OPTIONS, POST"
        a = c.request("POST", "/v2/health/live", b"")
        assert a.status == 405 and a.header("allow") == "GET, HEAD, OPTIONS" and "error" in json.loads(a.body)
        a = c.request("DELETE", "/healthz")
        assert a.status == 405 and a.header("allow") == "GET, HEAD, OPTIONS"
        assert c.request("GET", "/healthz").status == 200  # none of these closed the connection


def test_nothing_after_connection_close_is_served(server) -> None:
    """A request pipelined behind ``Connection: close`` is neither answered nor computed."""
    def predicts() -> float:
        return _metric(server, "wsserve_requests_total", code="ok", model="linear", type="predict")

    before = predicts()
    with RawHttp(server.port) as c:
        c.send(request_bytes("POST", "/predict", b'{"x": 1.0}', {"Connection": "close"})
               + request_bytes("POST", "/predict", b'{"x": 2.0}'))
        a = c.answer()
        assert a.status == 200 and a.header("connection") == "close" and c.closed() and c.buf == b""
    assert predicts() == before + 1


def test_garbage_is_400_and_closes(server) -> None:
    with RawHttp(server.port) as c:
        c.send(b"NOT HTTP AT ALL\r\n\r\n")
        a = c.answer()
        assert a.status == 400 and a.header("connection") == "close" and c.closed()


@pytest.mark.parametrize("version", ["2.0", "0.9"])
def test_an_http_version_other_than_1_1_or_1_0_is_505_and_closes(server, version: str) -> None:
    """httptools takes ``HTTP/2.0`` and ``HTTP/0.9`` request lines; they were served as HTTP/1.1
    (PROTOCOL.md said 400).  HTTP/1.0 is still served."""
    with RawHttp(server.port) as c:
        c.send(f"GET /healthz HTTP/{version}\r\nHost: x\r\n\r\n".encode())
        a = c.answer()
        assert a.status == 505 and f"HTTP/{version} is not supported" in a.body.decode(), a.body
        assert a.header("connection") == "close" and c.closed()
    with RawHttp(server.port) as c:
        c.send(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        assert c.answer().status == 200


@pytest.fixture(scope="module")
def tight(request, model_cache):
    """A server with small limits: 1000-byte bodies, a 1 s request timeout."""
    from tests.support import ServerProcess

    proc = ServerProcess("--max-message-bytes", "1000", "--handshake-timeout", "1", "--models", "linear,charlm",
                         "--max-tokens", "1000000000", cache_dir=model_cache)
    yield proc
    proc.stop()


def test_body_over_max_message_bytes_is_413_without_reading_it(tight) -> None:
    with RawHttp(tight.port) as c:
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")  # announced, never sent
        a = c.answer()
        assert a.status == 413 and a.header("connection") == "close" and b"1000" in a.body and c.closed()
    with RawHttp(tight.port) as c:  # announced with Expect: refused at once, no 100 Continue
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        assert c.interim().status == 413
    with RawHttp(tight.port) as c:  # chunked: counted as it arrives
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send((b"200\r\n" + b"1" * 0x200 + b"\r\n") * 2)
        a = c.answer()
        assert a.status == 413 and c.closed()
    with RawHttp(tight.port) as c:  # at the limit: served
        body = b'{"x": [' + b",".join([b"1.0"] * 240) + b"]}"
        assert len(body) <= 1000
        assert c.request("POST", "/predict", body).status == 200


def test_oversized_headers_are_431(tight) -> None:
    with RawHttp(tight.port) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        a = c.answer()
        assert a.status == 431 and a.header("connection") == "close" and c.closed()
    with RawHttp(tight.port) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n")
        a = c.answer()
        assert a.status == 431 and b"header fields" in a.body and c.closed()


def test_a_request_that_trickles_in_is_408(tight) -> None:
    with RawHttp(tight.port) as c:
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"x\":")  # and then nothing
        a = c.answer()
        assert a.status == 408 and a.header("connection") == "close" and c.closed()
    with RawHttp(tight.port) as c:  # a slow header counts as well
        c.send(b"GET /healthz HTTP/1.1\r\nHo")
        assert c.answer().status == 408 and c.closed()


def test_an_idle_keep_alive_connection_is_closed_silently(tight) -> None:
    with RawHttp(tight.port) as c:
        assert c.request("GET", "/healthz").status == 200
        assert c.closed() and c.buf == b""  # no 408 for a connection between requests


def test_a_long_stream_outlives_the_request_timeout(tight) -> None:
    """The 1 s request timeout bounds receiving a request, not waiting for or reading its answer."""
    # 10^9 tokens: 100,000 could all be streamed within the 2.5 s on a fast idle machine (CI saw [DONE])
    body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 10**9, "stream": True}).encode()
    with RawHttp(tight.port) as c:
        c.send(request_bytes("POST", "/v1/completions", body))
        head = c.interim()
        assert head.status == 200 and head.header("transfer-encoding") == "chunked"
        end = time.monotonic() + 2.5  # well past the 1 s timeout
        events = 0
        while time.monotonic() < end:
            size = int(c._line(), 16)
            chunk = c._exactly(size + 2)
            assert chunk.startswith(b"data: {")
            events += 1
        assert events > 10


def test_closing_the_socket_cancels_the_generation(server) -> None:
    before = _metric(server, "wsserve_requests_total", code="cancelled", model="charlm", type="generate")
    body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 100000}).encode()
    c = RawHttp(server.port)
    c.send(request_bytes("POST", "/v1/completions", body))
    _wait_for(lambda: _metric(server, "wsserve_inflight_requests") >= 1)
    c.close()
    _wait_for(lambda: _metric(server, "wsserve_requests_total", code="cancelled", model="charlm", type="generate") == before + 1)
    _wait_for(lambda: _metric(server, "wsserve_inflight_requests") == 0)


def test_a_client_that_stops_reading_a_stream_is_dropped_and_its_generation_cancelled(start_server) -> None:
    server = start_server("--max-write-buffer-bytes", "65536", "--slow-consumer-timeout", "1", "--models", "charlm")
    body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 100000, "stream": True}).encode()
    c = RawHttp(server.port)
    c.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    c.send(request_bytes("POST", "/v1/completions", body))  # and never read
    _wait_for(lambda: _metric(server, "wsserve_requests_total", code="cancelled", model="charlm", type="generate") == 1)
    assert _metric(server, "wsserve_inflight_requests") == 0
    _wait_for(lambda: "stopped reading" in server.stderr_text() or "unsent" in server.stderr_text())
    c.close()


def test_an_answer_over_four_times_the_write_buffer_reaches_a_client_that_reads_it(start_server) -> None:
    """A non-streamed answer bigger than four times ``--max-write-buffer-bytes`` (a long completion
    with logprobs: ~0.5 KB a token) is written at once: the connection was dropped at that first
    write, mid-body, though the client reads as fast as it can.  It is given the slow-consumer
    timeout to drain, as any backlog is; a client that does not read it is still dropped."""
    server = start_server("--max-write-buffer-bytes", "65536", "--slow-consumer-timeout", "1", "--models", "charlm")
    try:  # the kernel takes up to tcp_wmem[max] of the answer at once; the rest must be over 4 x the limit
        kernel_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        kernel_max = 4 << 20
    tokens = min(100_000, (kernel_max + 8 * 65536) // 400)  # over 400 bytes a token with 20 logprobs
    body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": tokens, "logprobs": 20,
                       "temperature": 0}).encode()
    with RawHttp(server.port) as c:
        a = c.request("POST", "/v1/completions", body)
        assert a.status == 200 and len(a.body) > kernel_max + 4 * 65536, len(a.body)
        choice = json.loads(a.body)["choices"][0]
        assert len(choice["logprobs"]["tokens"]) == tokens and choice["finish_reason"] == "length"
        assert c.request("GET", "/healthz").body == b"ok\n"  # and the connection serves on
    stuck = RawHttp(server.port)
    stuck.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    stuck.send(request_bytes("POST", "/v1/completions", body))  # and never read
    server.wait_logged("it stopped reading its answers")
    stuck.close()


def test_a_stream_held_behind_an_unanswered_request_counts_as_unsent(start_server) -> None:
    """A stream pipelined behind a long answer cannot go out yet (answers keep request order), so
    its events wait in the server: they count towards ``--max-write-buffer-bytes`` like any unsent
    bytes, and past the bound the connection is dropped and both generations cancelled (before,
    the held events grew without bound: ~45 MB/s with 20 such streams)."""
    server = start_server("--max-write-buffer-bytes", "65536", "--slow-consumer-timeout", "1", "--models", "charlm")
    before = _metric(server, "wsserve_requests_total", code="cancelled", model="charlm", type="generate")
    slow = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 100000}).encode()
    stream = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 100000, "stream": True}).encode()
    with RawHttp(server.port) as c:
        c.send(request_bytes("POST", "/v1/completions", slow) + request_bytes("POST", "/v1/completions", stream))
        _wait_for(lambda: _metric(server, "wsserve_requests_total", code="cancelled", model="charlm",
                                  type="generate") == before + 2)
        assert c.closed() and c.buf == b""  # nothing was answered: the head was not done
    assert _metric(server, "wsserve_inflight_requests") == 0


def test_expect_100_continue_behind_an_unanswered_request_gets_its_100_in_turn(tight) -> None:
    """The 100 cannot overtake the answer ahead of it, so it comes right after that answer
    (before: never, and a client waiting for it got 408 once the request timeout passed)."""
    completion = json.dumps({"model": "charlm", "prompt": "The ", "max_tokens": 500, "temperature": 0}).encode()
    body = b'{"x": 2.0}'
    with RawHttp(tight.port) as c:
        c.send(request_bytes("POST", "/v1/completions", completion)
               + b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        first = c.answer()
        assert first.status == 200 and len(json.loads(first.body)["choices"][0]["text"]) == 500
        assert c.interim().status == 100  # then the client sends the body
        c.send(body)
        final = c.answer()
        assert final.status == 200 and "y_pred" in json.loads(final.body)


def test_expect_100_continue_behind_an_answer_of_the_same_read_comes_after_it(server) -> None:
    """A request answered at once (``/healthz``) with an ``Expect: 100-continue`` request pipelined
    behind it in the same read: the answer waits for the read's one write, and the 100 went out
    straight to the socket ahead of it - a client reading in order took it for the first request's."""
    body = b'{"x": 2.0}'
    with RawHttp(server.port) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        first = c.interim()
        assert first.status == 200, first.raw_head
        assert c._exactly(int(first.header("content-length"))) == b"ok\n"
        assert c.interim().status == 100  # then the client sends the body
        c.send(body)
        final = c.answer()
        assert final.status == 200 and "y_pred" in json.loads(final.body)
