"""config.pbtxt's per-tensor ``reshape { shape }``: requests send and answers give ``dims``, the model
takes and gives ``reshape``.  An ONNX graph summing 4 features into one value per row, configured
with Triton's usual pattern (``dims: [2, 2]`` reshaped to the graph's ``[4]``; the graph's ``[batch]``
output as ``dims: [1]`` reshaped from ``[]``), and Triton Python models seeing their reshaped
tensors, on a real server on loopback called with ``tritonclient.http``, ``tritonclient.grpc`` and
the wsserve client; the config rules (:func:`wsserve.repository.pbtxt.check_reshape`) sans-I/O.
Before reshape was served, each of these models was refused at load ("reshape is not supported")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import ServerProcess  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repository_triton_python import _write  # noqa: E402
from wsserve.repository.errors import ConfigError  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402

SUM_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]
"""

#: Fails the request unless its input came reshaped; answers it doubled, in the reshaped form.
GRID_PBTXT = """
backend: "python"
max_batch_size: 8
input [ { name: "flat" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
output [ { name: "twice" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
"""
GRID_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "flat").as_numpy()
            if x.shape[1:] != (2, 2):
                raise pb_utils.TritonError(f"flat came as {x.shape}")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("twice", x * 2)]))
        return out
"""

#: Without a batch dimension, and a variable dimension on both sides: [2, -1] on the wire, [1, 2, -1] in the model.
WHOLE_PBTXT = """
backend: "python"
max_batch_size: 0
input [ { name: "rows" data_type: TYPE_INT32 dims: [ 2, -1 ] reshape: { shape: [ 1, 2, -1 ] } } ]
output [ { name: "back" data_type: TYPE_INT32 dims: [ 2, -1 ] reshape: { shape: [ 1, 2, -1 ] } } ]
"""
WHOLE_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "rows").as_numpy()
            if x.shape[:2] != (1, 2):
                raise pb_utils.TritonError(f"rows came as {x.shape}")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("back", x + 1)]))
        return out
"""

#: A graph scalar without a batch dimension, served as Triton's ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``.
SCALAR_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]
"""


def _scalar_graph() -> object:
    """y = x + x on scalars (rank 0)."""
    return ob._model([helper.make_node("Add", ["x", "x"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [])


def _sum_graph() -> object:
    return ob._model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                     [("axes", np.array([1], dtype=np.int64))])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root: Path = tmp_path_factory.mktemp("reshape") / "model_repository"
    ob.save(_sum_graph(), root / "summed" / "1")
    (root / "summed" / "config.pbtxt").write_text(SUM_PBTXT)
    _write(root, "grid", GRID_PBTXT, GRID_PY)
    _write(root, "whole", WHOLE_PBTXT, WHOLE_PY)
    ob.save(_sum_graph(), root / "dynamic" / "1")  # y's graph shape is [N], which reshape [1] does not equal
    (root / "dynamic" / "config.pbtxt").write_text(SUM_PBTXT.replace("dims: [ 1 ] reshape: { shape: [ ] }",
                                                                   "dims: [ 1, 1 ] reshape: { shape: [ 1 ] }"))
    ob.save(_scalar_graph(), root / "scalar" / "1")
    (root / "scalar" / "config.pbtxt").write_text(SCALAR_PBTXT)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


X = np.arange(12, dtype=np.float32).reshape(3, 2, 2)


def test_http_sends_dims_and_gets_dims_while_the_graph_sees_its_reshape(served) -> None:
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    meta = client.get_model_metadata("summed")
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("x", [-1, 2, 2])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("y", [-1, 1])]
    config = client.get_model_config("summed")
    assert config["input"][0]["dims"] == [2, 2] and config["input"][0]["reshape"] == {"shape": [4]}
    assert config["output"][0]["dims"] == [1] and config["output"][0]["reshape"] == {"shape": []}
    inp = thttp.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    y = client.infer("summed", [inp]).as_numpy("y")
    assert y.shape == (3, 1) and y.ravel().tolist() == X.reshape(3, 4).sum(axis=1).tolist()
    flat = thttp.InferInput("x", [3, 4], "FP32")  # the model's shape is not the wire's
    flat.set_data_from_numpy(X.reshape(3, 4))
    with pytest.raises(thttp.InferenceServerException, match=r"\[-1, 2, 2\]"):
        client.infer("summed", [flat])


def test_grpc_config_lists_reshape_and_python_models_see_their_reshape(served) -> None:
    _, address = served
    client = tgrpc.InferenceServerClient(address)
    try:
        config = client.get_model_config("grid").config
        assert list(config.input[0].dims) == [4] and list(config.input[0].reshape.shape) == [2, 2]
        assert list(config.output[0].reshape.shape) == [2, 2]
        flat = np.arange(8, dtype=np.float32).reshape(2, 4)
        inp = tgrpc.InferInput("flat", [2, 4], "FP32")
        inp.set_data_from_numpy(flat)
        out = client.infer("grid", [inp]).as_numpy("twice")
        assert out.shape == (2, 4) and out.tolist() == (flat * 2).tolist()
        rows = np.arange(6, dtype=np.int32).reshape(2, 3)
        inp = tgrpc.InferInput("rows", [2, 3], "INT32")
        inp.set_data_from_numpy(rows)
        back = client.infer("whole", [inp]).as_numpy("back")
        assert back.shape == (2, 3) and back.tolist() == (rows + 1).tolist()
    finally:
        client.close()


async def test_websocket_predicts_in_dims(served) -> None:
    from wsserve_client import Client

    proc, _ = served
    async with Client(proc.url) as client:
        r = await client.predict("summed", X.tolist())
        assert r.outputs == X.reshape(3, 4).sum(axis=1, keepdims=True).tolist()
        r = await client.predict("grid", np.ones((5, 4), np.float32), binary=True)
        assert r.outputs.shape == (5, 4) and r.outputs.tolist() == [[2.0] * 4] * 5


def _parse(tensor: str) -> object:
    return parse_pbtxt(f'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ninput [ {tensor} ]\n'
                       'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n', Path("m/config.pbtxt"))


@pytest.mark.parametrize(("tensor", "model_dims"), [
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } }', (4,)),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } }', ()),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 3, -1 ] reshape: { shape: [ 3, 1, -1 ] } }', (3, 1, -1)),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] }', None),
])
def test_reshape_is_read_as_the_models_dims(tensor: str, model_dims: tuple[int, ...] | None) -> None:
    (x,) = _parse(tensor).inputs  # type: ignore[attr-defined]
    assert x.model_dims == model_dims


@pytest.mark.parametrize(("tensor", "words"), [
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 5 ] } }', "the values must be the same"),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ -1 ] } }', "variable on both sides"),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ -1, -1 ] reshape: { shape: [ -1 ] } }', "at most one variable"),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 0, 4 ] } }', "dimension 0 is out of range"),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 2, -1 ] reshape: { shape: [ 3, -1 ] } }', "the values must be the same"),
    ('{ name: "x" data_type: TYPE_FP32 dims: [ 3, -1 ] reshape: { shape: [ -1 ] } }', "[3, 1] against [1, 1]"),
])
def test_a_reshape_that_cannot_hold_dims_is_refused_naming_it(tensor: str, words: str) -> None:
    with pytest.raises(ConfigError, match=r"input\[0\]\.reshape\.shape") as caught:
        _parse(tensor)
    assert words in str(caught.value)


def test_an_ensembles_own_tensors_take_no_reshape() -> None:
    text = ('platform: "ensemble"\nmax_batch_size: 8\n'
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
            'ensemble_scheduling { step [ { model_name: "summed" model_version: -1 '
            'input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }\n')
    with pytest.raises(ConfigError, match=r"input\[0\]\.reshape.*not supported in an ensemble"):
        parse_pbtxt(text, Path("e/config.pbtxt"))


def test_a_graph_scalar_reshaped_from_dims_1_without_a_batch_dimension(served) -> None:
    """The graph gets a scalar and its scalar answer comes back in dims [1] (before: the version
    failed its warm-up, "Unable to handle object of type <class 'numpy.float32'>": a numpy scalar,
    not an array, was fed)."""
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.get_model_config("scalar")["input"][0]["reshape"] == {"shape": []}
    inp = thttp.InferInput("x", [1], "FP32")
    inp.set_data_from_numpy(np.array([2.5], np.float32))
    y = client.infer("scalar", [inp]).as_numpy("y")
    assert y.shape == (1,) and y.tolist() == [5.0]


def test_a_graph_that_disagrees_with_reshape_is_refused_naming_reshape(served) -> None:
    """The graph is compared with ``reshape``, and the load error says so (before: it said
    "config.pbtxt dims [1]", while that config's dims are [1, 1])."""
    proc, _ = served
    index = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}").get_model_repository_index()
    (reason,) = [m["reason"] for m in index if m["name"] == "dynamic"]
    assert "output 'y': config.pbtxt reshape dims [1]" in reason and "1 in the graph" in reason, reason
