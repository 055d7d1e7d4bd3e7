"""``POST /predict`` over plain HTTP (urllib): the original REST form, the predict form, and every error.

Errors carry the WebSocket protocol's codes and messages in
``{"error": {"code", "message"}}``; the same request over the WebSocket gives
the same message.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from tests.support import Conn


def post(url: str, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_seed_form_answers_like_the_original_server(server) -> None:
    status, headers, body = post(server.http + "/predict", '{"x": 0.5}')
    assert status == 200 and headers["Content-Type"] == "application/json"
    one = json.loads(body)["y_pred"]
    assert isinstance(one, float) and abs(one - 2.02) < 0.05  # y = 3x + 0.5 (+ noise), as the seed server answered
    assert json.loads(post(server.http + "/predict", '{"x": [0.5]}')[2]) == {"y_pred": one}
    pair = json.loads(post(server.http + "/predict", '{"x": [0.5, 1.0]}')[2])["y_pred"]
    assert isinstance(pair, list) and pair[0] == one and abs(pair[1] - 3.64) < 0.05
    assert json.loads(post(server.http + "/predict", '{"x": 1}')[2])["y_pred"] == pair[1]


async def test_seed_form_is_the_same_over_http_and_websocket(server) -> None:
    conn = await Conn.open(server.url)
    for x in ('{"x": 0.25}', '{"x": [0.25, -3.5]}'):
        await conn.send(x)
        ws = await conn.recv()
        assert json.loads(post(server.http + "/predict", x)[2]) == ws
    await conn.close()


def test_predict_form_on_any_model(server) -> None:
    rows = [[0.1 * i for i in range(32)], [-0.2] * 32]
    status, _, body = post(server.http + "/predict", json.dumps({"model": "mlp", "inputs": rows}))
    answer = json.loads(body)
    assert status == 200 and answer["model"] == "mlp" and answer["version"] == "1"
    assert len(answer["outputs"]) == 2 and len(answer["outputs"][0]) == 10
    assert set(answer["timing"]) == {"queue_ms", "compute_ms", "batch_size"}
    pinned = json.loads(post(server.http + "/predict", json.dumps({"model": "mlp", "version": "1", "inputs": rows[:1]}))[2])
    assert pinned["outputs"][0] == answer["outputs"][0]  # row i depends only on input row i


def test_a_single_input_model_takes_its_input_by_name_too(server) -> None:
    """docs/PROTOCOL.md, named tensors: "a single-input model accepts either form" - the built-in
    models (one float input named ``input``) included; another name is ``invalid_input`` naming it."""
    rows = [[0.1 * i for i in range(32)], [0.5] * 32]
    for model, inputs in (("mlp", rows), ("linear", [[0.5], [1.0]])):
        status, _, listed = post(server.http + "/predict", json.dumps({"model": model, "inputs": inputs}))
        assert status == 200
        status, _, named = post(server.http + "/predict", json.dumps({"model": model, "inputs": {"input": inputs}}))
        assert status == 200, named
        assert json.loads(named)["outputs"] == json.loads(listed)["outputs"]
    status, _, body = post(server.http + "/predict", json.dumps({"model": "linear", "inputs": {"x": [[0.5]]}}))
    assert status == 400 and json.loads(body)["error"] == {
        "code": "invalid_input", "message": "'inputs' names unknown input 'x'; the model takes 'input'"}


async def test_error_codes_and_messages_are_the_websocket_ones(server) -> None:
    cases = [
        ('{"x": ', "bad_json"),
        (b'{"x": "\xff"}', "bad_json"),
        ("[1, 2]", "bad_request"),
        ('{"x": "a"}', "invalid_input"),
        ('{"x": []}', "invalid_input"),
        ('{"model": "linaer", "inputs": [[1.0]]}', "unknown_model"),
        ('{"model": "linear", "inputs": [[1.0, 2.0]]}', "invalid_input"),
        ('{"model": "linear", "inputs": [["1"]]}', "invalid_input"),
        ('{"model": "charlm", "inputs": [[1.0]]}', "bad_request"),
        ('{"model": "linear", "inputs": [[1.0]], "version": "7"}', "unknown_model"),
        ('{"model": "linear", "inputs": [[1.0]], "priority": 3}', "bad_request"),
        ('{"model": "linear", "inputs": [[1.0]], "stream": true}', "bad_request"),
        ('{"hello": 1}', "bad_request"),
    ]
    status_of = {"bad_json": 400, "bad_request": 400, "invalid_input": 400, "unknown_model": 404}
    for body, code in cases:
        status, headers, raw = post(server.http + "/predict", body)
        error = json.loads(raw)["error"]
        assert (status, error["code"]) == (status_of[code], code), (body, raw)
        assert headers["Content-Type"] == "application/json" and error["message"]
    # The same requests over the WebSocket get the same messages.
    conn = await Conn.open(server.url)
    same = [
        ('{"x": ', '{"x": '),
        ('{"x": "a"}', '{"x": "a"}'),
        ('{"model": "linaer", "inputs": [[1.0]]}', '{"type": "predict", "id": 1, "model": "linaer", "inputs": [[1.0]]}'),
        ('{"model": "linear", "inputs": [[1.0, 2.0]]}', '{"type": "predict", "id": 2, "model": "linear", "inputs": [[1.0, 2.0]]}'),
        ('{"model": "charlm", "inputs": [[1.0]]}', '{"type": "predict", "id": 3, "model": "charlm", "inputs": [[1.0]]}'),
    ]
    for http_body, ws_message in same:
        await conn.send(ws_message)
        ws_error = await conn.recv()
        http_error = json.loads(post(server.http + "/predict", http_body)[2])["error"]
        assert (http_error["code"], http_error["message"].split(" (use ")[0]) == (ws_error["code"], ws_error["message"])
    await conn.close()


def test_a_non_object_body_and_a_number_that_overflows(server) -> None:
    status, _, raw = post(server.http + "/predict", '{"x": 1e400}')
    assert status == 400 and json.loads(raw)["error"]["code"] == "bad_json"
    status, _, raw = post(server.http + "/predict", "")
    assert status == 400 and json.loads(raw)["error"]["code"] == "bad_json"


def test_rows_over_max_rows_are_invalid_input(start_server) -> None:
    server = start_server("--max-rows", "4", "--models", "linear")
    status, _, raw = post(server.http + "/predict", '{"x": [1, 2, 3, 4, 5]}')
    assert status == 400 and "limit is 4" in json.loads(raw)["error"]["message"]
    assert post(server.http + "/predict", '{"x": [1, 2, 3, 4]}')[0] == 200


async def test_http_and_websocket_rows_share_one_batch(start_server) -> None:
    """With a batch of two rows and a long window, one HTTP row and one WebSocket row
    can only be answered together, in one batch."""
    server = start_server("--max-batch-size", "2", "--max-delay-ms", "60000", "--models", "mlp")
    conn = await Conn.open(server.url)
    await conn.send({"type": "predict", "id": 1, "model": "mlp", "inputs": [[0.5] * 32]})
    loop = asyncio.get_running_loop()
    http = loop.run_in_executor(None, post, server.http + "/predict", json.dumps({"model": "mlp", "inputs": [[0.5] * 32]}))
    ws = await conn.recv(timeout=60)
    status, _, body = await http
    answer = json.loads(body)
    assert status == 200 and ws["type"] == "result"
    assert ws["timing"]["batch_size"] == answer["timing"]["batch_size"] == 2
    assert ws["outputs"] == answer["outputs"]
    await conn.close()


@pytest.mark.parametrize("body", ['{"x": 0.5}', '{"model": "linear", "inputs": [[0.5]]}'])
def test_predicts_are_counted_in_the_request_metrics(server, body: str) -> None:
    def count() -> float:
        text = urllib.request.urlopen(server.http + "/metrics", timeout=10).read().decode()
        key = 'wsserve_requests_total{code="ok",model="linear",type="predict"} '
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(key)), 0.0)

    before = count()
    for _ in range(3):
        assert post(server.http + "/predict", body)[0] == 200
    assert count() == before + 3


async def test_explain_gives_the_websocket_attributions(server) -> None:
    """``"explain": true`` on POST /predict: the same attributions and explanation as the WebSocket result."""
    rows = [[0.05 * i - 0.7 for i in range(32)], [0.3] * 32]
    conn = await Conn.open(server.url)
    for model, inputs in (("linear", [[0.5], [-1.25]]), ("mlp", rows)):
        ws = await conn.request({"type": "predict", "id": 1, "model": model, "inputs": inputs, "explain": True})
        status, _, body = await asyncio.to_thread(
            post, server.http + "/predict", json.dumps({"model": model, "inputs": inputs, "explain": True}))
        answer = json.loads(body)
        assert status == 200, answer
        assert (answer["outputs"], answer["attributions"], answer["explanation"]) == (
            ws["outputs"], ws["attributions"], ws["explanation"]), model
        assert len(answer["attributions"]) == len(inputs) and answer["explanation"]["method"]
        plain = json.loads((await asyncio.to_thread(post, server.http + "/predict",
                                                    json.dumps({"model": model, "inputs": inputs})))[2])
        assert "attributions" not in plain and "explanation" not in plain
    # Refused as on the WebSocket (a generative model; over max_explain_rows), with its message.
    for body in ({"model": "charlm", "inputs": [[1.0]], "explain": True},
                 {"model": "mlp", "inputs": [[0.0] * 32] * 300, "explain": True}):
        ws = await conn.request({"type": "predict", "id": 2, **body})
        status, _, raw = await asyncio.to_thread(post, server.http + "/predict", json.dumps(body))
        error = json.loads(raw)["error"]
        assert (status, error["code"]) == (400, ws["code"])
        assert error["message"].startswith(ws["message"])  # HTTP may add where to go instead
    await conn.close()


def test_a_body_of_model_inputs_and_two_more_fields_reads_them(server) -> None:
    """A body of exactly four fields (``model``, ``inputs`` and two optional ones) is read whole: the
    WebSocket's fast path (exactly ``type``, ``id``, ``model``, ``inputs``) took it, and its
    ``priority``, ``timeout_ms``, ``version``, ``explain`` went unread (priority 3 was served)."""
    cases = [
        ('{"model": "linear", "inputs": [[1.0]], "priority": 3, "timeout_ms": 1000}', "bad_request", "priority"),
        ('{"model": "linear", "inputs": [[1.0]], "priority": -1, "version": "1"}', "bad_request", "priority"),
        ('{"model": "linear", "inputs": [[1.0]], "version": "7", "priority": 1}', "unknown_model", "7"),
        ('{"model": "linear", "inputs": [[1.0]], "stream": true, "priority": 0}', "bad_request", "stream"),
    ]
    for body, code, named in cases:
        status, _, raw = post(server.http + "/predict", body)
        assert status in (400, 404), (body, status, raw)
        error = json.loads(raw)["error"]
        assert error["code"] == code and named in error["message"], (body, error)
    status, _, raw = post(server.http + "/predict", '{"model": "linear", "inputs": [[1.0]], "priority": 1, "version": "1"}')
    assert status == 200 and json.loads(raw)["version"] == "1", raw
