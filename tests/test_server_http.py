"""Plain HTTP routes on the WebSocket port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import websockets

from tests.wsclient import Conn


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_healthz_and_readyz(server) -> None:
    assert _get(server.http + "/healthz")[0] == 200
    status, _, body = _get(server.http + "/readyz")
    assert status == 200 and body == b"ready\n"


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
    def scrape() -> dict[str, float]:
        status, headers, body = _get(server.http + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    before = scrape()
    for name in ("wsserve_connections", "wsserve_inflight_requests", "wsserve_info{version=\"0.1.0\"}"):
        assert name in before
    conn = await Conn.open(server.url)
    for i in range(5):
        assert (await conn.request({"type": "predict", "id": i, "model": "linear", "inputs": [[1.0]]}))["type"] == "result"
    await conn.send({"type": "generate", "id": "g", "model": "charlm", "prompt": "a", "max_tokens": 7})
    await conn.until_terminal("g")
    await conn.request({"type": "predict", "id": "bad", "model": "linear", "inputs": [["x"]]})
    after = scrape()
    ok = 'wsserve_requests_total{code="ok",model="linear",type="predict"}'
    assert after[ok] - before.get(ok, 0) == 5
    bad = 'wsserve_requests_total{code="invalid_input",model="linear",type="predict"}'
    assert after[bad] - before.get(bad, 0) == 1
    tok = 'wsserve_generated_tokens_total{model="charlm"}'
    assert after[tok] - before.get(tok, 0) == 7
    count = 'wsserve_request_duration_seconds_count{model="linear",type="predict"}'
    assert after[count] - before.get(count, 0) == 5
    assert after['wsserve_batch_size_count{model="linear"}'] >= 1
    assert after["wsserve_connections"] >= 1
    await conn.close()


@pytest.mark.asyncio
async def test_websocket_upgrade_on_other_path_is_404(server) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(server.url + "/other")
    assert info.value.response.status_code == 404
