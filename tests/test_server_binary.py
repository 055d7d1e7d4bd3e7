"""Binary tensor frames over a real socket (both event loops; the library path with compression)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.repo_models import NAMED_CONFIG, NAMED_PY
from tests.support import Conn
from wsserve.tensorframe import encode, read_tensors, split, view_tensors


def B(rid: object, model: str, x: np.ndarray, **fields: object) -> bytes:
    return encode({"type": "predict", "id": rid, "model": model, **fields}, x, key="inputs")


def unpack(message: bytes) -> tuple[dict, np.ndarray]:
    assert isinstance(message, bytes), message
    header, payload = split(message)
    (arr,) = view_tensors(payload, read_tensors(header, len(payload), max_rows=1 << 20, key="outputs"))
    return header, arr


async def _mlp_width(conn: Conn) -> int:
    models = (await conn.request({"type": "models", "id": "m"}))["models"]
    return next(m for m in models if m["name"] == "mlp")["input_shape"][0]


async def test_binary_predicts_answer_what_json_answers(server_url: str) -> None:
    conn = await Conn.open(server_url)
    width = await _mlp_width(conn)
    rng = np.random.default_rng(0)
    x = rng.random((5, width)).astype(np.float32)
    want = await conn.request({"type": "predict", "id": "j", "model": "mlp", "inputs": x.tolist()})
    await conn.ws.send(B("b", "mlp", x))
    got = await conn.recv()
    assert got["type"] == "result" and got["id"] == "b" and got["version"] == want["version"]
    np.testing.assert_allclose(got["outputs"], want["outputs"], rtol=1e-6)
    await conn.ws.send(B("bb", "mlp", x, binary_outputs=True))
    header, out = unpack(await conn.ws.recv())
    assert (header["type"], header["id"], header["model"], header["shape"]) == ("result", "bb", "mlp", [5, 10])
    assert header["timing"]["batch_size"] >= 1
    np.testing.assert_allclose(out, want["outputs"], rtol=1e-6)
    await conn.close()


async def test_float64_int_and_float32_inputs_cast_like_json(server_url: str) -> None:
    conn = await Conn.open(server_url)
    want = await conn.request({"type": "predict", "id": "j", "model": "linear", "inputs": [[1], [2]]})
    for i, x in enumerate([np.array([[1.0], [2.0]]), np.array([[1], [2]], np.int64), np.array([[1], [2]], np.float32)]):
        await conn.ws.send(B(i, "linear", x, binary_outputs=True))
        header, out = unpack(await conn.ws.recv())
        assert header["id"] == i and out.tolist() == want["outputs"]
    await conn.close()


async def test_streamed_binary_chunks_then_a_json_done(server_url: str) -> None:
    conn = await Conn.open(server_url)
    x = np.arange(7, dtype=np.float64).reshape(7, 1)
    await conn.ws.send(B("s", "linear", x, stream=True, chunk_rows=3, binary_outputs=True))
    rows, seqs = [], []
    while True:
        message = await conn.ws.recv()
        if isinstance(message, str):
            break
        header, out = unpack(message)
        assert header["type"] == "chunk" and header["offset"] == len(rows)
        seqs.append(header["seq"])
        rows.extend(out[:, 0].tolist())
    done = orjson.loads(message)
    assert done == {**done, "type": "done", "id": "s", "reason": "complete", "rows": 7}
    assert seqs == [0, 1, 2] and len(rows) == 7
    want = await conn.request({"type": "predict", "id": "j", "model": "linear", "inputs": x.tolist()})
    assert rows == [r[0] for r in want["outputs"]]
    await conn.close()


async def test_bad_binary_frames_get_errors_and_the_connection_goes_on(server_url: str) -> None:
    conn = await Conn.open(server_url)
    await conn.ws.send(B("nan", "linear", np.array([[np.inf]])))
    assert (await conn.recv())["code"] == "invalid_input"
    await conn.ws.send(B("w", "linear", np.zeros((1, 3))))
    err = await conn.recv()
    assert err["code"] == "invalid_input" and err["id"] == "w" and "[n, 1]" in err["message"]
    await conn.ws.send(B("c", "charlm", np.zeros((1, 1))))
    assert (await conn.recv())["code"] == "bad_request"
    await conn.ws.send(B("u", "nope", np.zeros((1, 1))))
    assert (await conn.recv())["code"] == "unknown_model"
    await conn.ws.send(b"\xff\xff\xff\xff")
    err = await conn.recv()
    assert err["code"] == "bad_request" and err["id"] is None and "max_binary_header_bytes" in err["message"]
    assert (await conn.request({"type": "ping", "id": 1}))["type"] == "pong"
    await conn.close()


@pytest.mark.only_transport("websockets", reason="picows has no permessage-deflate: --compression is refused with it")
async def test_binary_frames_through_the_library_path_with_compression(start_server) -> None:
    server = start_server("--compression", "--models", "linear")
    async with connect(server.url, compression="deflate") as ws:
        await ws.recv()  # hello
        await ws.send(B(1, "linear", np.array([[1.0]]), binary_outputs=True))
        header, out = unpack(await ws.recv())
        assert header["id"] == 1 and out.shape == (1, 1)


async def test_a_binary_message_over_max_message_bytes_closes_with_1009(start_server) -> None:
    server = start_server("--max-message-bytes", "4096", "--models", "linear")
    async with connect(server.url, max_size=None) as ws:
        await ws.recv()
        await ws.send(B(1, "linear", np.zeros((10, 1)), binary_outputs=True))
        header, _ = unpack(await ws.recv())
        assert header["id"] == 1
        await ws.send(B(2, "linear", np.zeros((600, 1))))  # 4800 bytes of payload
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009



def _frame(header: dict, payload: bytes) -> bytes:
    """A binary tensor frame written by hand (``encode`` takes only what it can describe)."""
    head = orjson.dumps(header)
    return len(head).to_bytes(4, "little") + head + payload


async def test_a_refused_name_dtype_or_type_is_shown_cut_to_64_characters(start_server, tmp_path: Path) -> None:
    """PROTOCOL.md: a message that shows the refused value shows at most its first 64 characters.
    An unknown dtype, a tensor named twice, an unknown input (binary frames, and named JSON inputs
    of a single-input and of a several-input model) and an unknown type were echoed whole (up to
    the 2,048 characters of any message)."""
    (tmp_path / "two" / "1").mkdir(parents=True)
    (tmp_path / "two" / "config.toml").write_text(NAMED_CONFIG)
    (tmp_path / "two" / "1" / "model.py").write_text(NAMED_PY)
    server = start_server("--models", "linear", "--model-repository", str(tmp_path))
    conn = await Conn.open(server.url)
    one, pair, long = np.ones((1, 1)), np.ones((1, 2)), "x" * 250
    messages = [
        ("bad_request", _frame({"type": "predict", "id": 1, "model": "linear", "dtype": long * 4, "shape": [1, 1]},
                               one.tobytes())),
        ("bad_request", _frame({"type": "predict", "id": 2, "model": "two",
                                "inputs": [{"name": long, "dtype": "float64", "shape": [1, 1]}] * 2}, one.tobytes() * 2)),
        ("invalid_input", B(3, "two", {"a": pair, "b": one, long: one})),
        ("invalid_input", orjson.dumps({"type": "predict", "id": 4, "model": "linear", "inputs": {long * 4: [[1.0]]}})
         .decode()),
        ("invalid_input", orjson.dumps({"type": "predict", "id": 5, "model": "two",
                                        "inputs": {"a": [[1.0, 2.0]], "b": [[1.0]], long * 4: [[1.0]]}}).decode()),
        ("bad_request", orjson.dumps({"type": long * 4, "id": 6}).decode()),
    ]
    for rid, (code, message) in enumerate(messages, 1):
        await conn.ws.send(message)
        err = await conn.recv()
        assert (err["code"], err["id"]) == (code, rid), err
        assert "x" * 61 not in err["message"] and "x" * 60 + "..." in err["message"], err
    assert (await conn.request({"type": "ping", "id": "after"}))["type"] == "pong"
    await conn.close()
