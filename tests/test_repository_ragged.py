"""Models with a variable dimension besides the batch (a text model's ``input_ids [batch, seq]``),
served as Triton serves them: each request sizes ``seq``, and the dynamic batcher batches a request
only with requests of the same shape in every dimension but the batch; an output with a dynamic
dimension (``[batch, seq, hidden]``) answers each request at its own size.  A real server on
loopback driven by Triton's clients (HTTP and gRPC) and a WebSocket; the model's ``batch`` output
tells the rows of the execution that computed it."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import Conn, ServerProcess  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from wsserve.errors import InvalidInput  # noqa: E402
from wsserve.rest.oip import Tensor, input_header  # noqa: E402

#: hidden[b, s, :] = input_ids[b, s] * W
W = np.array([1.0, -2.0], np.float32)
#: Rows one execution of the windowed model holds: a batch forms only when a shape fills it.
BATCH = 4
RAGGED = ("max_batch_size: 4\n"
          'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
          'output [ { name: "hidden" data_type: TYPE_FP32 dims: [ -1, 2 ] }, '
          '{ name: "batch" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
          "dynamic_batching { max_queue_delay_microseconds: 60000000 }\n")


def text_model() -> onnx.ModelProto:
    """input_ids [B, S] int64 -> hidden [B, S, 2] (ids times W) and batch [B, 1] (B in every row)."""
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axis2"], ["e"]),
        helper.make_node("Mul", ["e", "w"], ["hidden"]),
        helper.make_node("Mul", ["f", "zero"], ["z"]),
        helper.make_node("Add", ["z", "one"], ["ones"]),  # [B, S] of 1
        helper.make_node("ReduceMax", ["ones"], ["u"], axes=[1], keepdims=1),  # [B, 1] of 1
        helper.make_node("Transpose", ["u"], ["ut"]),
        helper.make_node("MatMul", ["ut", "u"], ["b11"]),  # [1, 1]: B
        helper.make_node("MatMul", ["u", "b11"], ["batch"]),  # [B, 1]: B
    ]
    inits = [numpy_helper.from_array(W, "w"), numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    graph = helper.make_graph(nodes, "text", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"])],
                              [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "S", 2]),
                               helper.make_tensor_value_info("batch", TensorProto.FLOAT, ["B", 1])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ob.OPSET)], ir_version=ob.IR_VERSION)
    onnx.checker.check_model(model)
    return model


def outer_model() -> onnx.ModelProto:
    """x [B, S] int64 -> y [B, S, S] float32, y[b, i, j] = x[b, i] * x[b, j]: an output with two
    dynamic dimensions besides the batch (as an attention map has)."""
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["f", "axis2"], ["col"]),
             helper.make_node("Unsqueeze", ["f", "axis1"], ["row"]),
             helper.make_node("Mul", ["col", "row"], ["y"])]
    inits = [numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(nodes, "outer", [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", "S"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", "S"])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ob.OPSET)], ir_version=ob.IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _ids(rows: int, seq: int, start: int) -> np.ndarray:
    return np.arange(start, start + rows * seq, dtype=np.int64).reshape(rows, seq)


#: Requests in flight at once: (rows, seq); each seq fills exactly one batch of BATCH rows.
MIXED = [(1, 3), (2, 5), (1, 3), (2, 5), (2, 3)]


# --------------------------------------------------------------------------- the OIP check, sans-I/O


def test_a_variable_dim_besides_the_batch_takes_the_requests_size_bounded() -> None:
    spec = Tensor("input_ids", "INT64", (-1,), True)
    assert input_header(spec, [2, 7], "INT64", 8)[0] == 14
    for shape, said in (([1, 4194305], "input 'input_ids' has shape [1, 4194305]: 4194305 values per row; at most 4194304"),
                        ([2, 0], "input 'input_ids' has shape [2, 0]; every dimension must be at least 1"),
                        ([2, 3, 1], "input 'input_ids' has shape [2, 3, 1]; the model takes [-1, -1]")):
        with pytest.raises(InvalidInput) as info:
            input_header(spec, shape, "INT64", 8)
        assert str(info.value) == said


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("ragged") / "model_repository"
    ob.save(text_model(), root / "ragged" / "1")
    (root / "ragged" / "config.pbtxt").write_text(RAGGED)
    ob.save(text_model(), root / "plain" / "1")  # no config file: wsserve's defaults, greedy batching
    ob.save(outer_model(), root / "outer" / "1")  # its output [B, S, S]: two variable dims
    ob.save(text_model(), root / "fixed_out" / "1")  # config.toml fixes hidden's S (the graph's follows the input)
    (root / "fixed_out" / "config.toml").write_text('[[outputs]]\nname = "hidden"\nshape = [4, 2]\n')
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-batch-size", str(BATCH))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def _post(port: int, path: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` as JSON; the status and the decoded answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _check(ids: np.ndarray, hidden: np.ndarray, batch: np.ndarray) -> None:
    """A request's answer: its own size, its own values, from an execution of BATCH rows."""
    assert hidden.shape == (*ids.shape, 2)
    np.testing.assert_array_equal(hidden, ids[..., None].astype(np.float32) * W)
    assert batch.tolist() == [[BATCH]] * len(ids)


def test_metadata_and_config_say_minus_1_as_triton_does(served) -> None:
    proc, address = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        for name in ("ragged", "plain"):
            meta = client.get_model_metadata(name)
            assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("input_ids", [-1, -1])]
            assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("hidden", [-1, -1, 2]), ("batch", [-1, 1])]
            assert [list(t.shape) for t in grpc_client.get_model_metadata(name).inputs] == [[-1, -1]]
        config = grpc_client.get_model_config("ragged").config
        assert config.max_batch_size > 0 and [list(t.dims) for t in config.input] == [[-1]]
        assert [list(t.dims) for t in config.output] == [[-1, 2], [1]]
    finally:
        client.close()
        grpc_client.close()


def test_requests_of_two_lengths_in_flight_are_batched_each_with_its_own_over_http(served) -> None:
    """Five requests at once, seq 3 and 5 interleaved (4 rows of each): each comes back at its own size
    with its own values, from an execution of 4 rows of its own length (the window of 60 s closes only
    when a length fills a batch; one batch mixing the lengths could not be computed at all)."""
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}", concurrency=len(MIXED))
    try:
        pending = []
        for i, (rows, seq) in enumerate(MIXED):
            ids = _ids(rows, seq, 100 * i)
            inp = thttp.InferInput("input_ids", list(ids.shape), "INT64")
            inp.set_data_from_numpy(ids)
            pending.append((ids, client.async_infer("ragged", [inp])))
        for ids, call in pending:
            result = call.get_result()
            _check(ids, result.as_numpy("hidden"), result.as_numpy("batch"))
    finally:
        client.close()


def test_requests_of_two_lengths_in_flight_are_batched_each_with_its_own_over_grpc(served) -> None:
    _, address = served
    client = tgrpc.InferenceServerClient(address)
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    try:
        sent = []
        for i, (rows, seq) in enumerate(MIXED):
            ids = _ids(rows, seq, 1000 + 100 * i)
            inp = tgrpc.InferInput("input_ids", list(ids.shape), "INT64")
            inp.set_data_from_numpy(ids)
            client.async_infer("ragged", [inp], lambda result, error, i=i: answers.put((i, result, error)))
            sent.append(ids)
        for _ in sent:
            i, result, error = answers.get(timeout=60)
            assert error is None, error
            _check(sent[i], result.as_numpy("hidden"), result.as_numpy("batch"))
    finally:
        client.close()


async def test_requests_of_two_lengths_over_the_websocket(served) -> None:
    """JSON rows over one WebSocket, both lengths in flight: each request's rows share their length."""
    proc, _ = served
    conn = await Conn.open(proc.url)
    try:
        sent = {}
        for i, (rows, seq) in enumerate(MIXED):
            ids = _ids(rows, seq, 10 * i)
            sent[i] = ids
            await conn.send({"type": "predict", "id": i, "model": "ragged", "inputs": ids.tolist()})
        frames = await conn.collect(set(sent))
        for i, ids in sent.items():
            (last,) = frames[i]
            assert last["type"] == "result", last
            _check(ids, np.array(last["outputs"]["hidden"]), np.array(last["outputs"]["batch"]))
    finally:
        await conn.close()


async def test_a_streamed_request_comes_back_in_order_beside_another_length(served) -> None:
    """A model with no config file (the graph's [B, S] left dynamic: -1) and greedy batching of 4 rows:
    two streamed requests of 10 rows, lengths 2 and 6, in flight at once; each one's chunks come in
    order, at its length, and add up to its rows."""
    proc, _ = served
    conn = await Conn.open(proc.url)
    try:
        sent = {"short": _ids(10, 2, 0), "long": _ids(10, 6, 500)}
        for rid, ids in sent.items():
            await conn.send({"type": "predict", "id": rid, "model": "plain", "inputs": ids.tolist(), "stream": True})
        frames = await conn.collect(set(sent))
        for rid, ids in sent.items():
            *chunks, done = frames[rid]
            assert done["type"] == "done" and done["rows"] == 10, done
            assert [c["seq"] for c in chunks] == list(range(len(chunks))) and len(chunks) >= 3
            offsets = [c["offset"] for c in chunks]
            hidden = np.concatenate([np.array(c["outputs"]["hidden"]) for c in chunks])
            batch = np.concatenate([np.array(c["outputs"]["batch"]) for c in chunks])
            assert offsets == sorted(offsets) and offsets[0] == 0
            np.testing.assert_array_equal(hidden, ids[..., None].astype(np.float32) * W)
            assert batch.max() <= BATCH
    finally:
        await conn.close()


def test_an_output_with_two_variable_dims_is_answered_over_http_and_grpc(served) -> None:
    """The OIP answer of an output whose dims are [-1, -1] besides the batch: each request's own size
    (it raised "can only specify one unknown dimension" shaping the answer, and the request was
    never answered, over HTTP and gRPC alike)."""
    proc, address = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}", network_timeout=30)
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        for seq in (2, 3):
            x = _ids(2, seq, 1)
            want = (x[:, :, None] * x[:, None, :]).astype(np.float32)
            for module, c in ((thttp, client), (tgrpc, grpc_client)):
                inp = module.InferInput("x", list(x.shape), "INT64")
                inp.set_data_from_numpy(x)
                result = c.infer("outer", [inp], client_timeout=30) if module is tgrpc else c.infer("outer", [inp])
                np.testing.assert_array_equal(result.as_numpy("y"), want)
    finally:
        client.close()
        grpc_client.close()


def test_an_output_other_than_its_declared_shape_fails_the_request(served) -> None:
    """config.toml declares hidden [4, 2] where the graph's follows the input's length: a request of
    length 3 gets [3, 2] from the graph, which it must not be answered as its declared shape (the OIP
    route raised shaping it and never answered; /predict answered rows of [3, 2] for [4, 2])."""
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}", network_timeout=30)
    try:
        inp = thttp.InferInput("input_ids", [1, 3], "INT64")
        inp.set_data_from_numpy(_ids(1, 3, 1))
        with pytest.raises(InferenceServerException) as info:
            client.infer("fixed_out", [inp])
        assert "output 'hidden' has shape [1, 3, 2]; the model declares [-1, 4, 2]" in info.value.message()
        inp = thttp.InferInput("input_ids", [1, 4], "INT64")
        inp.set_data_from_numpy(_ids(1, 4, 1))  # its declared size: answered
        assert client.infer("fixed_out", [inp]).as_numpy("hidden").shape == (1, 4, 2)
    finally:
        client.close()
    status, body = _post(proc.port, "/predict", {"model": "fixed_out", "inputs": [[1, 2, 3]]})
    assert status == 500 and "output 'hidden' has shape [1, 3, 2]" in body["error"]["message"], body
