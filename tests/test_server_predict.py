"""predict over a real socket: plain, streamed, seed form, models, ping, cancel, fairness."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest

from tests.support import Conn, wait_until_async


async def _linear_params(conn: Conn) -> tuple[float, float]:
    reply = await conn.request({"type": "models", "id": "m"})
    linear = next(m for m in reply["models"] if m["name"] == "linear")
    return linear["metrics"]["weight"], linear["metrics"]["bias"]


async def test_hello_announces_limits_and_models(server_url: str) -> None:
    conn = await Conn.open(server_url)
    hello = conn.hello
    assert hello["server"] == "wsserve" and hello["protocol"] == 1
    # The contract's four limits with their defaults, plus our own (docs/PROTOCOL.md).
    contract = {"max_message_bytes": 1048576, "max_inflight": 256, "max_rows": 65536, "max_tokens": 100000}
    assert {k: hello["limits"][k] for k in contract} == contract
    assert hello["limits"]["max_id_length"] == 128
    assert hello["models"] == ["linear", "mlp", "charlm"]
    await conn.close()


async def test_subprotocol_selected_when_offered(server_url: str) -> None:
    conn = await Conn.open(server_url, subprotocols=["wsserve.v1"])
    assert conn.ws.subprotocol == "wsserve.v1"
    await conn.close()
    plain = await Conn.open(server_url)
    assert plain.ws.subprotocol is None
    assert (await plain.request({"type": "ping", "id": 1}))["type"] == "pong"
    await plain.close()


async def test_linear_predict_matches_fitted_line(server_url: str) -> None:
    conn = await Conn.open(server_url)
    w, b = await _linear_params(conn)
    assert abs(w - 3) < 0.5 and abs(b - 0.5) < 0.3  # y = 3x + U(0,1): about 3x + 0.5
    xs = [0.0, 0.5, 1.0, -2.0, 1e6]
    reply = await conn.request({"type": "predict", "id": "a1", "model": "linear", "inputs": [[x] for x in xs]})
    assert reply["type"] == "result" and reply["id"] == "a1"
    assert reply["model"] == "linear" and reply["version"] == "1"
    for x, (y,) in zip(xs, reply["outputs"]):
        assert y == pytest.approx(w * x + b, rel=1e-12, abs=1e-12)
    timing = reply["timing"]
    assert timing["batch_size"] >= len(xs) and timing["queue_ms"] >= 0 and timing["compute_ms"] >= 0
    await conn.close()


async def test_mlp_predict_returns_class_probabilities(server_url: str) -> None:
    conn = await Conn.open(server_url)
    rows = [[(i * 7 + j) % 5 / 5.0 for j in range(32)] for i in range(9)]
    reply = await conn.request({"type": "predict", "id": 2, "model": "mlp", "inputs": rows, "version": "1"})
    assert reply["type"] == "result", reply
    assert len(reply["outputs"]) == 9
    for probs in reply["outputs"]:
        assert len(probs) == 10 and all(0 <= p <= 1 for p in probs)
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-5)
    # Row i of a batch equals predicting row i alone.
    alone = await conn.request({"type": "predict", "id": 3, "model": "mlp", "inputs": rows[4:5]})
    assert alone["outputs"][0] == pytest.approx(reply["outputs"][4], abs=1e-6)
    await conn.close()


@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 1000])
async def test_streamed_predict_chunks_in_order(server_url: str, chunk_rows: int | None) -> None:
    conn = await Conn.open(server_url)
    n = 1000
    msg = {"type": "predict", "id": "s", "model": "linear", "inputs": [[i / n] for i in range(n)], "stream": True}
    if chunk_rows is not None:
        msg["chunk_rows"] = chunk_rows
    plain = await conn.request({**msg, "id": "p", "stream": False})
    await conn.send(msg)
    chunks, done = await conn.until_terminal("s")
    assert done == {**done, "type": "done", "reason": "complete", "rows": n}
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    offset = 0
    rows = []
    for c in chunks:
        assert c["type"] == "chunk" and c["offset"] == offset
        if chunk_rows is not None:
            assert len(c["outputs"]) == min(chunk_rows, n - offset)
        offset += len(c["outputs"])
        rows += c["outputs"]
    assert rows == plain["outputs"]
    await conn.close()


async def test_seed_compatible_form(server_url: str) -> None:
    conn = await Conn.open(server_url)
    w, b = await _linear_params(conn)
    many = await conn.request({"x": [0.5, 1.0]})
    assert set(many) == {"y_pred"}
    assert many["y_pred"] == pytest.approx([w * 0.5 + b, w + b], rel=1e-12)
    one = await conn.request({"x": 0.5})
    assert one == {"y_pred": pytest.approx(w * 0.5 + b, rel=1e-12)}
    bad = await conn.request({"x": ["a"]})
    assert bad["type"] == "error" and bad["id"] is None and bad["code"] == "invalid_input"
    await conn.close()


async def test_models_and_ping(server_url: str) -> None:
    conn = await Conn.open(server_url)
    reply = await conn.request({"type": "models", "id": 7})
    assert reply["type"] == "models" and reply["id"] == 7
    by_name = {m["name"]: m for m in reply["models"]}
    assert set(by_name) == {"linear", "mlp", "charlm"}
    assert by_name["linear"]["input_shape"] == [1] and by_name["linear"]["output_shape"] == [1]
    assert by_name["linear"]["parameters"] == 2 and by_name["linear"]["task"] == "regression"
    mlp = by_name["mlp"]
    assert mlp["task"] == "classification" and mlp["input_shape"] == [32] and mlp["output_shape"] == [10]
    assert mlp["metrics"]["heldout_accuracy"] > 0.5
    assert by_name["charlm"]["task"] == "generation"
    assert by_name["charlm"]["metrics"]["heldout_bpc"] < by_name["charlm"]["metrics"]["bigram_bpc"]
    no_id = await conn.request({"type": "models"})
    assert no_id["type"] == "models" and no_id["id"] is None
    assert await conn.request({"type": "ping", "id": 8}) == {"type": "pong", "id": 8}
    assert await conn.request({"type": "ping"}) == {"type": "pong", "id": None}
    await conn.close()


async def test_cancel_predict_ends_with_cancelled_and_unknown_cancel_is_silent(server_url: str) -> None:
    conn = await Conn.open(server_url)
    rows = [[0]] * 65536  # 256 batches of 256 rows, one chunk each
    await conn.send(orjson.dumps({"type": "predict", "id": "big", "model": "linear", "inputs": rows, "stream": True, "chunk_rows": 256}).decode())
    first = await conn.recv()
    assert first["type"] == "chunk" and first["id"] == "big"
    await conn.send({"type": "cancel", "id": "big"})
    chunks, end = await conn.until_terminal("big")
    assert end["type"] == "error" and end["code"] == "cancelled"
    assert len(chunks) + 1 < 65536 // 256  # it really stopped early
    # Cancelling an unknown or finished id is ignored: the next frame is the pong.
    await conn.send({"type": "cancel", "id": "big"})
    await conn.send({"type": "cancel", "id": "never-sent"})
    assert await conn.request({"type": "ping", "id": "p"}) == {"type": "pong", "id": "p"}
    await conn.close()


async def test_big_request_does_not_starve_small_ones(start_server) -> None:
    server = start_server("--max-message-bytes", "16777216", "--models", "mlp")
    big = await Conn.open(server.url)
    small = await Conn.open(server.url)
    rows = [[0.2] * 32] * 65536
    await big.send(orjson.dumps({"type": "predict", "id": "big", "model": "mlp", "inputs": rows}).decode())
    # The big request is admitted (parsed, validated and queued or computing) before the small ones go.
    await wait_until_async(lambda: server.metrics().value("wsserve_inflight_requests") >= 1, 30, in_thread=True)
    latencies = []
    loop = asyncio.get_running_loop()
    for i in range(5):
        t0 = loop.time()
        reply = await small.request({"type": "predict", "id": i, "model": "mlp", "inputs": [[0.3] * 32]})
        assert reply["type"] == "result"
        latencies.append(loop.time() - t0)
    t_small_done = loop.time()
    _, result = await big.until_terminal("big", timeout=60)
    t_big_done = loop.time()
    assert result["type"] == "result" and len(result["outputs"]) == 65536
    # All five single-row requests finished while the big one was still running.
    assert t_small_done < t_big_done
    await big.close()
    await small.close()


async def test_same_id_may_be_reused_after_it_finished(server_url: str) -> None:
    conn = await Conn.open(server_url)
    for _ in range(3):
        reply = await conn.request({"type": "predict", "id": "same", "model": "linear", "inputs": [[1]]})
        assert reply["type"] == "result"
    await conn.close()
