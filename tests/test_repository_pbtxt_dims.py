"""config.pbtxt's dims checked against the ONNX graph at load, by Triton's onnxruntime backend's rule
(``CompareDimsSupported``: inputs compared with dynamic graph dimensions as wildcards, outputs exactly);
the check itself (sans-I/O), the loader on real graphs, and a real server whose repository holds models
that agree and models that do not, driven by Triton's clients and a WebSocket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.repo_wire import models_http, predict  # noqa: E402
from tests.support import Conn, ServerProcess  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from wsserve.repository import ModelLoadError, load_version  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402
from wsserve.repository.tritondims import compare_dims, graph_dims  # noqa: E402

# --------------------------------------------------------------------------- the rule, sans-I/O


@pytest.mark.parametrize(("side", "graph", "dims", "batching"), [
    ("input", (-1, 3), (3,), True),
    ("input", (-1, -1), (5,), True),             # a dynamic graph dimension takes any config dimension
    ("input", (-1, -1), (-1,), True),            # ... -1 too (wsserve then refuses: it serves fixed row shapes)
    ("input", (2, 3), (2, 3), False),
    ("input", (-1, 3), (1, 3), False),           # max_batch_size 0: the graph's dynamic first dimension takes 1
    ("output", (-1, 2), (2,), True),
    ("output", (-1, -1), (-1,), True),           # an output's dynamic dimension: -1 in the config
    ("input", (), (1,), False),                  # a scalar (or a shape the graph does not give): not compared
])
def test_dims_that_agree(side: str, graph: tuple[int, ...], dims: tuple[int, ...], batching: bool) -> None:
    assert compare_dims("m", side, "t", graph, dims, batching=batching) is None


@pytest.mark.parametrize(("side", "graph", "dims", "batching", "why"), [
    ("input", (-1, 3), (4,), True, "dimension 1 is 4 in config.pbtxt but 3 in the graph"),
    ("input", (-1, 3), (-1,), True, "dimension 1 is -1 (variable) in config.pbtxt but fixed at 3 in the graph: write 3"),
    ("input", (-1, 3), (3, 1), True, "3 dimensions in config.pbtxt, 2 in the graph"),
    ("input", (-1, 3, 4), (3,), True, "2 dimensions in config.pbtxt, 3 in the graph"),
    ("input", (1, 3), (3,), True, "the graph's first dimension is fixed at 1, the batch needs it dynamic"),
    ("input", (2, 3), (3, 3), False, "dimension 0 is 3 in config.pbtxt but 2 in the graph"),
    ("output", (-1, -1), (2,), True, "dimension 1 is 2 in config.pbtxt but dynamic in the graph: an output's dims must "
                                     "equal the graph's exactly"),
    ("output", (-1, 2), (-1,), True, "dimension 1 is -1 (variable) in config.pbtxt but fixed at 2 in the graph"),
    ("output", (-1, 2), (1, 2), False, "dimension 0 is 1 in config.pbtxt but dynamic in the graph"),
])
def test_dims_that_disagree_name_model_tensor_and_both_shapes(side: str, graph: tuple[int, ...], dims: tuple[int, ...],
                                                              batching: bool, why: str) -> None:
    said = compare_dims("m", side, "t", graph, dims, batching=batching)
    assert said is not None
    full = f" (with the batch dimension, max_batch_size > 0: [-1, {', '.join(map(str, dims))}])" if batching else ""
    shown = "[" + ", ".join(map(str, dims)) + "]"
    graph_shown = "[" + ", ".join(map(str, graph)) + "]"
    assert said.startswith(f"model 'm', {side} 't': config.pbtxt dims {shown}{full} disagree with the graph's shape {graph_shown}: ")
    assert why in said


def test_graph_dims_are_tritons() -> None:
    assert graph_dims([None, "F", 3, 0]) == (-1, -1, 3, -1)


# --------------------------------------------------------------------------- the loader, real graphs


def _pbtxt(inputs: str = "", outputs: str = "", max_batch_size: int = 4) -> str:
    text = f"max_batch_size: {max_batch_size}\n"
    if inputs:
        text += f"input [ {inputs} ]\n"
    if outputs:
        text += f"output [ {outputs} ]\n"
    return text


def _load(tmp_path: Path, model: Any, text: str) -> Any:
    ob.save(model, tmp_path / "1")
    return load_version("m", 1, tmp_path / "1", parse_pbtxt(text, tmp_path / "config.pbtxt"))


def test_a_fixed_dim_gives_a_dynamic_graph_dimension_its_size(tmp_path: Path) -> None:
    """x [N, F] (F symbolic): Triton takes dims [4]; wsserve serves rows of 4."""
    model, ref = ob.symbolic_features()
    loaded = _load(tmp_path, model, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }',
                                           '{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }'))
    try:
        assert [s.shape for s in loaded.inputs] == [(4,)] and [s.shape for s in loaded.outputs] == [(1,)]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        np.testing.assert_allclose(loaded.predict(x), ref(x), rtol=1e-6)
    finally:
        loaded.close()


def test_max_batch_size_0_compares_the_whole_shape(tmp_path: Path) -> None:
    """A graph of fixed shape [1, 3], max_batch_size 0, both lists given (no auto-complete): dims [1, 3] are its shape."""
    model, ref = ob.fixed_batch(3)
    loaded = _load(tmp_path, model, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 1, 3 ] }',
                                           '{ name: "y" data_type: TYPE_FP32 dims: [ 1, 3 ] }', 0))
    try:
        assert not loaded.batching and [s.shape for s in loaded.inputs] == [(1, 3)]
        x = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
        np.testing.assert_allclose(loaded.predict(x), ref(x), rtol=1e-6)
    finally:
        loaded.close()


@pytest.mark.parametrize(("builder", "text", "said"), [
    (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }'),
     "model 'm', input 'x': config.pbtxt dims [-1] (with the batch dimension, max_batch_size > 0: [-1, -1]) disagree with "
     "the graph's shape [-1, 3]: dimension 1 is -1 (variable) in config.pbtxt but fixed at 3 in the graph: write 3"),
    (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] }'),
     "model 'm', input 'x': config.pbtxt dims [-1, 3] (with the batch dimension, max_batch_size > 0: [-1, -1, 3]) disagree "
     "with the graph's shape [-1, 3]: 3 dimensions in config.pbtxt, 2 in the graph"),
    (ob.int64_embedding, _pbtxt('{ name: "ids" data_type: TYPE_INT64 dims: [ 2 ] }', '{ name: "emb" data_type: TYPE_FP32 dims: [ -1, 4 ] }'),
     "model 'm', output 'emb': config.pbtxt dims [-1, 4] (with the batch dimension, max_batch_size > 0: [-1, -1, 4]) disagree "
     "with the graph's shape [-1, 2, 3]: dimension 1 is -1 (variable) in config.pbtxt but fixed at 2 in the graph: write 2"),
    (ob.symbolic_features, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }', '{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }'),
     "model 'm', output 'y': config.pbtxt dims [2] (with the batch dimension, max_batch_size > 0: [-1, 2]) disagree with "
     "the graph's shape [-1, 1]: dimension 1 is 2 in config.pbtxt but 1 in the graph"),
    (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 1, 3 ] }', max_batch_size=0),  # auto-completed to batch
     "model 'm', input 'x': config.pbtxt dims [1, 3] (with the batch dimension, max_batch_size auto-completed as Triton does: "
     "every graph input and output has a dynamic first dimension: [-1, 1, 3]) disagree with the graph's shape [-1, 3]: "
     "3 dimensions in config.pbtxt, 2 in the graph"),
    (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 1, 3 ] }', '{ name: "y" data_type: TYPE_FP32 dims: [ 1, 2 ] }',
                             max_batch_size=0),
     "model 'm', output 'y': config.pbtxt dims [1, 2] disagree with the graph's shape [-1, 2]: dimension 0 is 1 in config.pbtxt "
     "but dynamic in the graph: an output's dims must equal the graph's exactly (-1 where the graph's dimension is dynamic)"),
])
def test_a_disagreeing_config_refuses_the_version_naming_both_shapes(tmp_path: Path, builder: Any, text: str, said: str) -> None:
    model, _ = builder()
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, model, text)
    assert str(info.value) == f"{tmp_path / '1' / 'model.onnx'}: {said}"


def test_a_variable_dim_among_fixed_ones_is_served_variable(tmp_path: Path) -> None:
    """x [N, A, B], both symbolic, dims [4, -1]: served as Triton serves it, B sized by each request
    (it was refused: wsserve batched only fixed row shapes).  dims [4, 5] serve rows of 4 x 5."""
    model, ref = ob.symbolic_matrix()
    variable = _load(tmp_path, model, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 4, -1 ] }'))
    try:
        assert [s.shape for s in variable.inputs] == [(4, -1)]
        for b in (2, 6):
            x = np.arange(4 * b * 3, dtype=np.float32).reshape(3, 4, b)
            np.testing.assert_allclose(variable.predict(x), ref(x), rtol=1e-6)
    finally:
        variable.close()
    loaded = _load(tmp_path, model, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 4, 5 ] }'))
    try:
        assert [s.shape for s in loaded.inputs] == [(4, 5)]
        x = np.arange(40, dtype=np.float32).reshape(2, 4, 5)
        np.testing.assert_allclose(loaded.predict(x), ref(x), rtol=1e-6)
    finally:
        loaded.close()


# --------------------------------------------------------------------------- a real server

#: model -> (graph builder, config.pbtxt, the reason it is refused or None).
REPO: dict[str, tuple[Any, str, str | None]] = {
    "sums": (ob.symbolic_features, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }',
                                          '{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }', 8), None),
    "linear": (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }',
                                       '{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }'), None),
    "rank": (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 3, 1 ] }'),
             "model 'rank', input 'x': config.pbtxt dims [3, 1] (with the batch dimension, max_batch_size > 0: [-1, 3, 1]) "
             "disagree with the graph's shape [-1, 3]: 3 dimensions in config.pbtxt, 2 in the graph"),
    "size": (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 5 ] }'),
             "model 'size', input 'x': config.pbtxt dims [5] (with the batch dimension, max_batch_size > 0: [-1, 5]) "
             "disagree with the graph's shape [-1, 3]: dimension 1 is 5 in config.pbtxt but 3 in the graph"),
    "variable": (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }'),
                 "model 'variable', input 'x': config.pbtxt dims [-1] (with the batch dimension, max_batch_size > 0: "
                 "[-1, -1]) disagree with the graph's shape [-1, 3]: dimension 1 is -1 (variable) in config.pbtxt but "
                 "fixed at 3 in the graph: write 3"),
    "output": (ob.linear_layer, _pbtxt('{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }',
                                       '{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }'),
               "model 'output', output 'y': config.pbtxt dims [-1] (with the batch dimension, max_batch_size > 0: "
               "[-1, -1]) disagree with the graph's shape [-1, 2]: dimension 1 is -1 (variable) in config.pbtxt but "
               "fixed at 2 in the graph: write 2"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    root = tmp_path_factory.mktemp("dims") / "model_repository"
    for name, (builder, text, _) in REPO.items():
        model, _ = builder()
        ob.save(model, root / name / "1")
        (root / name / "config.pbtxt").write_text(text)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc), root
    finally:
        proc.stop()


def test_each_disagreement_refuses_that_model_only_naming_it(served) -> None:
    proc, _, root = served
    listed = models_http(proc)
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    for name, (_, _, reason) in REPO.items():
        versions = listed[name]["versions"]
        if reason is None:
            assert client.is_model_ready(name) and [v["state"] for v in versions] == ["ready"], (name, versions)
        else:
            assert not client.is_model_ready(name)
            assert [(v["state"], v["reason"]) for v in versions] == [("failed", f"{root / name / '1' / 'model.onnx'}: {reason}")]
            proc.wait_logged(reason)


def _infer_http(proc: ServerProcess, x: np.ndarray) -> np.ndarray:
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("sums", [inp]).as_numpy("y")


def test_a_fixed_dim_is_the_shape_on_the_wire_over_http(served) -> None:
    """The graph takes rows of any width; config.pbtxt's dims [4] make 4 the only one served (Triton's rule
    for a request: its shape matches the config's dims, -1 for the batch)."""
    proc, _, _ = served
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(_infer_http(proc, x), x.sum(axis=1, keepdims=True), rtol=1e-6)
    assert thttp.InferenceServerClient(f"127.0.0.1:{proc.port}").get_model_metadata("sums")["inputs"][0]["shape"] == [-1, 4]
    for shape in ((2, 5), (2, 4, 1), (8,)):
        with pytest.raises(InferenceServerException) as info:
            _infer_http(proc, np.zeros(shape, np.float32))
        assert info.value.status() == "400"
        assert info.value.message() == f"input 'x' has shape {list(shape)}; the model takes [-1, 4]"


def test_a_fixed_dim_is_the_shape_on_the_wire_over_grpc(served) -> None:
    _, address, _ = served
    client = tgrpc.InferenceServerClient(address)
    try:
        for shape, ok in (((3, 4), True), ((3, 5), False), ((3, 2, 2), False)):
            x = np.ones(shape, np.float32)
            inp = tgrpc.InferInput("x", list(shape), "FP32")
            inp.set_data_from_numpy(x)
            if ok:
                np.testing.assert_allclose(client.infer("sums", [inp]).as_numpy("y"), np.full((3, 1), 4.0))
                continue
            with pytest.raises(InferenceServerException) as info:
                client.infer("sums", [inp])
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert f"input 'x' has shape {list(shape)}; the model takes [-1, 4]" in str(info.value.message())
    finally:
        client.close()


async def test_a_fixed_dim_is_the_shape_on_the_wire_over_websocket(served) -> None:
    proc, _, _ = served
    conn = await Conn.open(proc.url)
    try:
        done = await predict(conn, 1, "sums", [[1, 2, 3, 4], [0, 0, 0, 1]])
        assert done["type"] == "result" and done["outputs"] == [[10.0], [1.0]]
        done = await predict(conn, 2, "sums", [[1, 2, 3, 4, 5]])
        assert done["type"] == "error" and done["code"] == "invalid_input"
        assert done["message"] == "'inputs' row 0 has 5 values; the model takes 4"
    finally:
        await conn.close()
