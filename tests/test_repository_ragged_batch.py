"""Triton's ragged batching in config.pbtxt (``allow_ragged_batch``, ``batch_input``, ``batch_output``;
:mod:`wsserve.repository.ragged`): the batch inputs computed sans-I/O, the config checks, and a real
server on loopback batching two requests of different lengths into one execution of an ONNX model
(fed their values in one dimension with the batch inputs that split it) and of a Triton Python model
(each request its own tensor), over a WebSocket, OIP HTTP (``tritonclient.http``) and OIP gRPC
(``tritonclient.grpc``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient.grpc")  # config.pbtxt is read with Triton's protobuf messages
import tritonclient.http as thttp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import Conn, ServerProcess, wait_until  # noqa: E402
from wsserve.repository.errors import ConfigError  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402
from wsserve.repository.ragged import (  # noqa: E402
    BatchInput,
    BatchOutput,
    batch_input_value,
    concat_flat,
    scatter,
)

# --------------------------------------------------------------------------- sans-I/O: the values


def test_batch_input_values_are_tritons() -> None:
    """Triton's examples (model_config.proto, ragged_batching.md): requests [1, 3], [1, 4], [1, 5]."""
    shapes = [(1, 3), (1, 4), (1, 5)]
    assert batch_input_value("BATCH_ELEMENT_COUNT", shapes, "float32").tolist() == [3, 4, 5]
    acc = batch_input_value("BATCH_ACCUMULATED_ELEMENT_COUNT", shapes, "int32")
    assert acc.dtype == np.int32 and acc.tolist() == [3, 7, 12]
    assert batch_input_value("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", shapes, "int32").tolist() == [0, 3, 7, 12]
    most = batch_input_value("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", shapes, "float32")
    assert most.shape == (5,) and most.dtype == np.float32
    # a batch-2 request of [3, 1] and a batch-1 request of [2, 2]: one line per row
    items = [(2, 3, 1), (1, 2, 2)]
    assert batch_input_value("BATCH_ITEM_SHAPE", items, "int32").tolist() == [[3, 1], [3, 1], [2, 2]]
    assert batch_input_value("BATCH_ITEM_SHAPE_FLATTEN", items, "float32").tolist() == [3, 1, 3, 1, 2, 2]
    with pytest.raises(ValueError, match="different ranks"):
        batch_input_value("BATCH_ITEM_SHAPE", [(1, 2), (1, 2, 3)], "int32")
    with pytest.raises(ValueError, match="unknown batch input kind"):
        batch_input_value("BATCH_SOMETHING", shapes, "int32")


def test_ragged_parts_concatenate_flat_and_a_batch_output_scatters_by_shape() -> None:
    parts = [np.arange(3.0).reshape(1, 3), np.arange(10.0, 14.0).reshape(1, 4)]
    assert concat_flat(parts).tolist() == [0, 1, 2, 10, 11, 12, 13]
    back = scatter(concat_flat(parts) * 2, [(1, 3), (1, 4)], (-1,), "y")
    assert [p.shape for p in back] == [(1, 3), (1, 4)] and back[1].tolist() == [[20, 22, 24, 26]]
    with pytest.raises(ValueError, match="has 7 values; its requests' shapes take 6"):
        scatter(concat_flat(parts), [(1, 3), (1, 3)], (-1,), "y")


# --------------------------------------------------------------------------- sans-I/O: the config

ONNX_PBTXT = """max_batch_size: 2
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] },
         { name: "REQUESTS" data_type: TYPE_FP32 dims: [ 1 ] },
         { name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] } ]
batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "INDEX" data_type: TYPE_INT32
                source_input: "INPUT" },
              { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_FP32 source_input: "INPUT" } ]
batch_output [ { target_name: "DOUBLED" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" } ]
dynamic_batching { max_queue_delay_microseconds: 60000000 }
"""


def test_config_reads_ragged_inputs_batch_inputs_and_outputs() -> None:
    cfg = parse_pbtxt(ONNX_PBTXT)
    assert [t.ragged for t in cfg.inputs] == [True]
    assert cfg.batch_inputs == (BatchInput("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", "INDEX", "int32", "INPUT"),
                                BatchInput("BATCH_ELEMENT_COUNT", "COUNT", "float32", "INPUT"))
    assert cfg.batch_outputs == (BatchOutput(("DOUBLED",), "INPUT"),)


@pytest.mark.parametrize(("text", "field", "said"), [
    (ONNX_PBTXT.replace("max_batch_size: 2", "max_batch_size: 0"), "input[0].allow_ragged_batch",
     "needs max_batch_size > 0"),
    (ONNX_PBTXT.replace("dynamic_batching { max_queue_delay_microseconds: 60000000 }", "sequence_batching { }"),
     "input[0].allow_ragged_batch", "not served for a stateful model"),
    (ONNX_PBTXT.replace('data_type: TYPE_INT32', 'data_type: TYPE_INT64'), "batch_input[0].data_type",
     "must be TYPE_INT32 or TYPE_FP32"),
    (ONNX_PBTXT.replace('source_input: "INPUT" },', 'source_input: "NOPE" },', 1), "batch_input[0].source_input",
     "unknown source input name 'NOPE'"),
    (ONNX_PBTXT.replace('target_name: "INDEX"', 'target_name: "INPUT"'), "batch_input[0].target_name",
     "already an input"),
    (ONNX_PBTXT.replace('target_name: "DOUBLED"', 'target_name: "NOPE"'), "batch_output[0].target_name",
     "unknown target output name 'NOPE'"),
    ('backend: "python"\n' + ONNX_PBTXT, "batch_input", "not served for a Python model"),
    (ONNX_PBTXT.replace("allow_ragged_batch: true", "allow_ragged_batch: true reshape { shape: [ -1 ] }"),
     "input[0].allow_ragged_batch", "not served with reshape"),
], ids=["no-batching", "sequence", "int64", "source", "target", "output", "python", "reshape"])
def test_config_refuses_what_is_not_served_naming_the_field(text: str, field: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(text)
    assert info.value.key == field and said in str(info.value)


# --------------------------------------------------------------------------- the ONNX backend, in process

ITEM_PBTXT = """max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1, 2 ] allow_ragged_batch: true } ]
output [ { name: "ITEMS" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "MOST" data_type: TYPE_FP32 dims: [ 1 ] } ]
batch_input [ { kind: BATCH_ITEM_SHAPE target_name: "ITEM" data_type: TYPE_INT32 source_input: "INPUT" },
              { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE target_name: "MAXS" data_type: TYPE_FP32
                source_input: "INPUT" } ]
"""


def item_model() -> onnx.ModelProto:
    """INPUT [T], ITEM [rows, 2] int32, MAXS [most] -> ITEMS [rows, 2] (ITEM as floats) and MOST
    [rows, 1] (the largest request's element count, in every row)."""
    nodes = [helper.make_node("Cast", ["ITEM"], ["ITEMS"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["ITEMS", "zero"], ["z"]),
             helper.make_node("Add", ["z", "onef"], ["ones2"]),
             helper.make_node("ReduceMax", ["ones2"], ["ones"], axes=[1], keepdims=1),  # [rows, 1]
             helper.make_node("Shape", ["MAXS"], ["most_i"]),
             helper.make_node("Cast", ["most_i"], ["most"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["ones", "most"], ["MOST"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "onef")]
    graph = helper.make_graph(
        nodes, "items",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["T"]),
         helper.make_tensor_value_info("ITEM", TensorProto.INT32, ["N", 2]),
         helper.make_tensor_value_info("MAXS", TensorProto.FLOAT, ["M"])],
        [helper.make_tensor_value_info("ITEMS", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("MOST", TensorProto.FLOAT, ["N", 1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ob.OPSET)], ir_version=ob.IR_VERSION)
    onnx.checker.check_model(model)
    return model


def test_the_onnx_backend_feeds_item_shapes_and_the_largest_count_per_request_row(tmp_path: Path) -> None:
    """Requests of 2 rows of [3, 2] and 1 row of [1, 2] in one batch: a line per row, split back by rows."""
    from wsserve.repository.onnx_backend import OnnxModel
    from wsserve.worker import Ragged, RequestOutputs

    model = OnnxModel("items", 1, ob.save(item_model(), tmp_path / "items" / "1"), parse_pbtxt(ITEM_PBTXT))
    try:
        assert [s.name for s in model.inputs] == ["INPUT"] and model.ragged_inputs == {"INPUT"}
        a, b = np.ones((2, 3, 2), np.float32), np.ones((1, 1, 2), np.float32)
        y = model.predict_requests(Ragged((a, b)), [2, 1])
        assert not isinstance(y, RequestOutputs)  # no batch output: the rows of the batch, in order
        assert y["ITEMS"].tolist() == [[3, 2], [3, 2], [1, 2]]
        assert y["MOST"].tolist() == [[12], [12], [12]]
    finally:
        model.close()


def test_the_onnx_backend_refuses_a_ragged_input_the_graph_takes_in_two_dimensions(tmp_path: Path) -> None:
    from wsserve.repository.errors import ModelLoadError
    from wsserve.repository.onnx_backend import OnnxModel

    text = ITEM_PBTXT.replace("dims: [ -1, 2 ] allow_ragged_batch: true", "dims: [ 2 ] allow_ragged_batch: true")
    graph = item_model()
    graph.graph.input[0].CopyFrom(helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["T", 2]))
    with pytest.raises(ModelLoadError, match="ragged input 'INPUT' .* has 2 dimensions in the graph"):
        OnnxModel("items", 1, ob.save(graph, tmp_path / "items" / "1"), parse_pbtxt(text))


RESHAPE_PBTXT = """max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true },
        { name: "SCALE" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]
batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_FP32 source_input: "INPUT" } ]
"""


def test_the_onnx_backend_reshapes_the_other_inputs_and_outputs_of_a_ragged_batch(tmp_path: Path) -> None:
    """config.pbtxt's ``reshape`` on a model's inputs that are not ragged, and on its outputs, holds in a
    ragged batch as in any other: SCALE [rows, 1] is fed to the graph as [rows], OUT [rows] answered
    as [rows, 1] (SCALE * each request's element count)."""
    from wsserve.repository.onnx_backend import OnnxModel
    from wsserve.worker import Ragged

    graph = helper.make_graph(
        [helper.make_node("Mul", ["SCALE", "COUNT"], ["OUT"])], "reshaped",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["T"]),
         helper.make_tensor_value_info("SCALE", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("COUNT", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["N"])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ob.OPSET)], ir_version=ob.IR_VERSION)
    model = OnnxModel("reshaped", 1, ob.save(proto, tmp_path / "reshaped" / "1"), parse_pbtxt(RESHAPE_PBTXT))
    try:
        a, b = np.ones((1, 3), np.float32), np.ones((1, 5), np.float32)
        y = model.predict_requests({"INPUT": Ragged((a, b)), "SCALE": np.array([[2.0], [10.0]], np.float32)}, [1, 1])
        assert np.asarray(y).tolist() == [[6.0], [50.0]]
    finally:
        model.close()


# --------------------------------------------------------------------------- a real server

def ragged_model() -> onnx.ModelProto:
    """INPUT [T] (the batch's requests' values, one after another), INDEX [R + 1] int32 (where each
    request's values start, and the end), COUNT [R] (each one's element count) -> SUM [R, 1] (each
    request's sum), REQUESTS [R, 1] (R in every row: the requests of this execution) and DOUBLED [T]
    (INPUT * 2, scattered back by each request's shape)."""
    nodes = [
        helper.make_node("CumSum", ["INPUT", "axis0"], ["c"]),
        helper.make_node("Concat", ["zero1", "c"], ["c0"], axis=0),  # [T + 1]: the sums before each value
        helper.make_node("Cast", ["INDEX"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["c0", "idx"], ["g"], axis=0),  # [R + 1]
        helper.make_node("Slice", ["g", "one_i", "big"], ["hi"]),
        helper.make_node("Slice", ["g", "zero_i", "minus1"], ["lo"]),
        helper.make_node("Sub", ["hi", "lo"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "axis1"], ["SUM"]),
        helper.make_node("Mul", ["COUNT", "zero"], ["z"]),
        helper.make_node("Add", ["z", "onef"], ["ones"]),  # [R] of 1
        helper.make_node("ReduceSum", ["ones"], ["r"], keepdims=1),  # [1]: R
        helper.make_node("Mul", ["ones", "r"], ["rr"]),
        helper.make_node("Unsqueeze", ["rr", "axis1"], ["REQUESTS"]),
        helper.make_node("Mul", ["INPUT", "two"], ["DOUBLED"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "axis0"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero1"),
             numpy_helper.from_array(np.array([1], np.int64), "one_i"),
             numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
             numpy_helper.from_array(np.array([2 ** 62], np.int64), "big"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "onef"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(
        nodes, "ragged",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["T"]),
         helper.make_tensor_value_info("INDEX", TensorProto.INT32, ["R1"]),
         helper.make_tensor_value_info("COUNT", TensorProto.FLOAT, ["R"])],
        [helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["R", 1]),
         helper.make_tensor_value_info("REQUESTS", TensorProto.FLOAT, ["R", 1]),
         helper.make_tensor_value_info("DOUBLED", TensorProto.FLOAT, ["T"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ob.OPSET)], ir_version=ob.IR_VERSION)
    onnx.checker.check_model(model)
    return model


PYTHON_PBTXT = """backend: "python"
max_batch_size: 2
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] },
         { name: "REQUESTS" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 60000000 }
"""
#: Each request answered its own INPUT * 2, and how many requests its execute got.
PYTHON_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            n = np.full((len(x), 1), len(requests), np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("DOUBLED", x * 2),
                                                   pb_utils.Tensor("REQUESTS", n)]))
        return out
'''
#: Two requests of one row each, of different lengths: with max_batch_size 2 and a 60 s window, the
#: batch runs only once both share it.
A = np.array([[1.0, 2.0, 3.0]], np.float32)
B = np.array([[10.0, 20.0, 30.0, 40.0, 50.0]], np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("raggedbatch") / "model_repository"
    ob.save(ragged_model(), root / "ragged_onnx" / "1")
    (root / "ragged_onnx" / "config.pbtxt").write_text(ONNX_PBTXT)
    (root / "ragged_py" / "1").mkdir(parents=True)
    (root / "ragged_py" / "1" / "model.py").write_text(PYTHON_MODEL)
    (root / "ragged_py" / "config.pbtxt").write_text(PYTHON_PBTXT)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc
    finally:
        proc.stop()


def _check_onnx(x: np.ndarray, outputs: dict[str, Any]) -> None:
    assert np.asarray(outputs["SUM"]).tolist() == [[float(x.sum())]]
    assert np.asarray(outputs["REQUESTS"]).tolist() == [[2.0]]  # both requests in one execution
    assert np.asarray(outputs["DOUBLED"]).tolist() == (x * 2).tolist()  # its own shape


def _check_python(x: np.ndarray, outputs: dict[str, Any]) -> None:
    assert np.asarray(outputs["DOUBLED"]).tolist() == (x * 2).tolist()
    assert np.asarray(outputs["REQUESTS"]).tolist() == [[2.0]]


CHECKS = {"ragged_onnx": _check_onnx, "ragged_py": _check_python}


@pytest.mark.parametrize("model", ["ragged_onnx", "ragged_py"])
def test_two_lengths_share_one_execution_over_oip_http(served: ServerProcess, model: str) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{served.port}", concurrency=2)
    try:
        pending = []
        for x in (A, B):
            inp = thttp.InferInput("INPUT", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            pending.append((x, client.async_infer(model, [inp])))
        for x, call in pending:
            result = call.get_result()
            CHECKS[model](x, {name: result.as_numpy(name) for name in ("SUM", "REQUESTS", "DOUBLED")
                              if result.as_numpy(name) is not None})
        stats = client.get_inference_statistics(model)["model_stats"][0]
        assert stats["inference_count"] == 2 and stats["execution_count"] == 1
    finally:
        client.close()


@pytest.mark.parametrize("model", ["ragged_onnx", "ragged_py"])
async def test_two_lengths_share_one_execution_over_the_websocket(served: ServerProcess, model: str) -> None:
    conn = await Conn.open(served.url)
    try:
        for i, x in enumerate((A, B)):
            await conn.send({"type": "predict", "id": i, "model": model, "inputs": {"INPUT": x.tolist()}})
        frames = await conn.collect({0, 1})
        for i, x in enumerate((A, B)):
            (last,) = frames[i]
            assert last["type"] == "result", last
            CHECKS[model](x, last["outputs"])
    finally:
        await conn.close()


@pytest.mark.parametrize("model", ["ragged_onnx", "ragged_py"])
def test_a_request_larger_than_a_batch_is_refused_as_tritons_not_split(served: ServerProcess, model: str) -> None:
    """Three rows with max_batch_size 2: split over two batches, the model would take its rows as two
    requests (each counted, shaped and answered apart); Triton refuses such a request."""
    client = thttp.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        x = np.ones((3, 3), np.float32)
        inp = thttp.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="batch-size must be <= 2"):
            client.infer(model, [inp])
    finally:
        client.close()


@pytest.mark.parametrize("model", ["ragged_onnx", "ragged_py"])
async def test_a_request_larger_than_a_batch_is_refused_over_the_websocket(served: ServerProcess, model: str) -> None:
    conn = await Conn.open(served.url)
    try:
        await conn.send({"type": "predict", "id": "big", "model": model, "inputs": {"INPUT": np.ones((3, 2)).tolist()}})
        (last,) = (await conn.collect({"big"}))["big"]
        assert last["type"] == "error" and last["code"] == "invalid_input", last
        assert "batch-size must be <= 2" in last["message"], last
    finally:
        await conn.close()


def test_config_and_metadata_say_ragged_as_triton_does(served: ServerProcess) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        meta = client.get_model_metadata("ragged_onnx")
        assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("INPUT", [-1, -1])]  # no batch input
        for model in ("ragged_onnx", "ragged_py"):
            config = client.get_model_config(model)
            assert [t.get("allow_ragged_batch") for t in config["input"]] == [True], config
        config = client.get_model_config("ragged_onnx")
        assert [(b["kind"], b["target_name"], b["source_input"]) for b in config["batch_input"]] == [
            ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", ["INDEX"], ["INPUT"]),
            ("BATCH_ELEMENT_COUNT", ["COUNT"], ["INPUT"])]
        assert [(b["kind"], b["target_name"]) for b in config["batch_output"]] == [
            ("BATCH_SCATTER_WITH_INPUT_SHAPE", ["DOUBLED"])]
    finally:
        client.close()


@pytest.mark.parametrize("model", ["ragged_onnx", "ragged_py"])
def test_two_lengths_share_one_execution_over_oip_grpc(served: ServerProcess, model: str) -> None:
    import tritonclient.grpc as tgrpc

    from tests.test_grpc import grpc_address

    client = tgrpc.InferenceServerClient(grpc_address(served))
    try:
        before = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        results: dict[int, Any] = {}
        for i, x in enumerate((A, B)):
            inp = tgrpc.InferInput("INPUT", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.async_infer(model, [inp], callback=lambda result, error, i=i: results.__setitem__(i, (result, error)))
        wait_until(lambda: len(results) == 2, 60.0, what="both gRPC answers")
        for i, x in enumerate((A, B)):
            result, error = results[i]
            assert error is None, error
            CHECKS[model](x, {name: result.as_numpy(name) for name in ("SUM", "REQUESTS", "DOUBLED")
                              if result.as_numpy(name) is not None})
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        assert int(stats.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 2
        assert int(stats.get("execution_count", 0)) - int(before.get("execution_count", 0)) == 1
        big = tgrpc.InferInput("INPUT", [3, 3], "FP32")  # more rows than max_batch_size: refused, never split
        big.set_data_from_numpy(np.ones((3, 3), np.float32))
        with pytest.raises(InferenceServerException, match="batch-size must be <= 2"):
            client.infer(model, [big])
        config = client.get_model_config(model).config  # the ModelConfig message (JSON omits enum zeros)
        assert [t.allow_ragged_batch for t in config.input] == [True], config
        if model == "ragged_onnx":
            from tritonclient.grpc import model_config_pb2 as mc

            assert [(mc.BatchInput.Kind.Name(b.kind), list(b.target_name), mc.DataType.Name(b.data_type),
                     list(b.source_input))
                    for b in config.batch_input] == [
                ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", ["INDEX"], "TYPE_INT32", ["INPUT"]),
                ("BATCH_ELEMENT_COUNT", ["COUNT"], "TYPE_FP32", ["INPUT"])]
            assert [(list(b.target_name), list(b.source_input)) for b in config.batch_output] == [(["DOUBLED"], ["INPUT"])]
    finally:
        client.close()
