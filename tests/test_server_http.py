"""Plain HTTP routes on the WebSocket port."""

from __future__ import annotations

import json

import pytest
import websockets

from tests.support import Conn, Metrics
from tests.support import http_get as _get


def test_healthz_and_readyz(server) -> None:
    assert _get(server.http + "/healthz")[0] == 200
    status, _, body = _get(server.http + "/readyz")
    assert status == 200 and body == b"ready\n"
    health = _get(server.http + "/health")  # vLLM's and TGI's name for readiness
    assert (health[0], health[2]) == (200, b"ready\n")


def test_version_route_is_vllms(server) -> None:
    from wsserve import __version__

    status, headers, body = _get(server.http + "/version")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"version": __version__}


def test_models_route_matches_models_message(server) -> None:
    status, headers, body = _get(server.http + "/v1/models")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    models = json.loads(body)
    assert [m["name"] for m in models] == ["linear", "mlp", "charlm"]
    assert all({"name", "version", "task", "input_shape", "output_shape", "parameters", "metrics"} <= set(m) for m in models)


def test_index_page_and_unknown_paths(server) -> None:
    status, headers, body = _get(server.http + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"wsserve" in body
    assert _get(server.http + "/nope")[0] == 404
    assert _get(server.http + "/static/../server.py")[0] == 404


@pytest.mark.asyncio
async def test_metrics_move_as_requests_are_served(server) -> None:
    def scrape() -> Metrics:
        status, headers, body = _get(server.http + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        return Metrics.parse(body.decode())

    before = scrape()
    assert before.has("wsserve_connections") and before.has("wsserve_inflight_requests")
    assert before.has("wsserve_info", version="0.1.0")
    conn = await Conn.open(server.url)
    for i in range(5):
        assert (await conn.request({"type": "predict", "id": i, "model": "linear", "inputs": [[1.0]]}))["type"] == "result"
    await conn.send({"type": "generate", "id": "g", "model": "charlm", "prompt": "a", "max_tokens": 7})
    await conn.until_terminal("g")
    await conn.request({"type": "predict", "id": "bad", "model": "linear", "inputs": [["x"]]})
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.get(name, **labels)

    assert moved("wsserve_requests_total", code="ok", model="linear", type="predict") == 5
    assert moved("wsserve_requests_total", code="invalid_input", model="linear", type="predict") == 1
    assert moved("wsserve_generated_tokens_total", model="charlm") == 7
    assert moved("wsserve_request_duration_seconds_count", model="linear", type="predict") == 5
    assert after.value("wsserve_batch_size_count", model="linear") >= 1
    assert after.value("wsserve_connections") >= 1
    await conn.close()


@pytest.mark.asyncio
async def test_websocket_upgrade_on_other_path_is_404(server) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(server.url + "/other")
    assert info.value.response.status_code == 404


def test_page_and_static_files_forbid_sniffing_and_carry_a_content_security_policy(server) -> None:
    # The demo page and its files were served with only Content-Type and Cache-Control: no
    # X-Content-Type-Options (a browser could sniff a file into another type) and no
    # Content-Security-Policy (nothing limited what an injected string could load or run).
    # The page itself must work under the policy: clients/js/test/browser.test.js checks that
    # Chromium reports no violation.
    for path in ("/", "/static/app.js", "/static/wsserve.js", "/static/style.css"):
        status, headers, _ = _get(server.http + path)
        assert status == 200, path
        assert headers.get("X-Content-Type-Options") == "nosniff", (path, headers)
        policy = {d.split()[0]: d.split()[1:] for d in headers.get("Content-Security-Policy", "").split(";") if d.strip()}
        assert policy.get("default-src") == ["'none'"], (path, headers)
        assert policy.get("script-src") == ["'self'"] and policy.get("style-src") == ["'self'"], (path, policy)
        assert policy.get("frame-ancestors") == ["'none'"] and policy.get("base-uri") == ["'none'"], (path, policy)


@pytest.mark.asyncio
async def test_an_ipv6_host_is_bracketed_in_the_ready_line_url() -> None:
    # `--host ::1` printed `ws://::1:PORT`, not a URL (RFC 3986 brackets an IPv6 literal).
    from tests.support import ServerProcess
    from wsserve.config import ServerConfig

    assert ServerConfig(host="::1").url(8765) == "ws://[::1]:8765"
    assert ServerConfig(host="127.0.0.1").url(1) == "ws://127.0.0.1:1"
    with ServerProcess("--host", "::1", "--models", "linear") as srv:
        assert srv.url == f"ws://[::1]:{srv.port}"
        async with websockets.connect(srv.url) as ws:  # the printed URL is one a client takes
            assert json.loads(await ws.recv())["type"] == "hello"
