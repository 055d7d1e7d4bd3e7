"""The embedding API: ``wsserve.FunctionModel``, ``wsserve.onnx_model`` and ``Server(config, models=...)``.

In-process servers on 127.0.0.1 driven by a real ``websockets`` client; the blocking
``wsserve.serve`` is run by the examples' tests (tests/test_examples_embedding.py).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

import wsserve
from tests.support import Conn
from wsserve.repository import ModelLoadError


async def _started(models: dict, **settings) -> wsserve.Server:
    server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), **settings), models=models)
    await server.start()
    return server


async def _stop(server: wsserve.Server) -> None:
    await server.drain(timeout_s=5)
    await server.close()


# --------------------------------------------------------------------------- FunctionModel


def test_function_model_checks_its_arguments() -> None:
    def ident(x):
        return x

    with pytest.raises(TypeError, match="fn must be callable"):
        wsserve.FunctionModel(3, input_shape=(1,), output_shape=(1,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_shape must be a non-empty tuple"):
        wsserve.FunctionModel(ident, input_shape=(), output_shape=(1,))
    with pytest.raises(ValueError, match=r"bad shape \[0\]"):
        wsserve.FunctionModel(ident, input_shape=(0,), output_shape=(1,))
    with pytest.raises(ValueError, match="dtype must be one of float32, float64, int32, int64, bool, float16, int8, int16, uint8, uint16, "
                                         "uint32, uint64, bfloat16, got 'complex64'"):
        wsserve.FunctionModel(ident, input_shape=(1,), output_shape=(1,), dtype="complex64")
    with pytest.raises(ValueError, match=r"max_batch_size must be an integer in \[1, 65536\], got 0"):
        wsserve.FunctionModel(ident, input_shape=(1,), output_shape=(1,), max_batch_size=0)
    with pytest.raises(ValueError, match="name must be 1-64"):
        wsserve.FunctionModel(ident, input_shape=(1,), output_shape=(1,), name="../etc")
    with pytest.raises(ValueError, match="task must be one of"):
        wsserve.FunctionModel(ident, input_shape=(1,), output_shape=(1,), task="generation")
    with pytest.raises(ValueError, match=r"instances must be an integer in \[1, 64\], got 65"):
        wsserve.FunctionModel(ident, input_shape=(1,), output_shape=(1,), instances=65)


def test_function_model_names_types_and_checked_outputs() -> None:
    model = wsserve.FunctionModel(lambda x: x[:, :1], input_shape=3, output_shape=1, dtype=np.float32)
    assert model.name == "function"  # a lambda's name is not a model name
    assert model.inputs[0].shape == (3,) and model.inputs[0].dtype == "float32"
    assert model.outputs[0].dtype == "float32"  # a float input's dtype by default
    out = model.predict(np.ones((2, 3), dtype=np.float32))
    assert out.shape == (2, 1) and out.dtype == np.float32

    def halves(x):
        return x[:, :1] / 2

    ints = wsserve.FunctionModel(halves, input_shape=(2,), output_shape=(1,), dtype="int64")
    assert ints.name == "halves" and ints.outputs[0].dtype == "float64"
    np.testing.assert_array_equal(ints.predict(np.array([[3, 1]], dtype=np.int64)), [[1.5]])

    wrong = wsserve.FunctionModel(lambda x: x, input_shape=(3,), output_shape=(1,), name="wrong")
    with pytest.raises(ValueError, match=r"output 'output' has shape \[2, 3\]; expected \[2, 1\]"):
        wrong.predict(np.zeros((2, 3)))
    listy = wsserve.FunctionModel(lambda x: x.tolist(), input_shape=(1,), output_shape=(1,), name="listy")
    with pytest.raises(ValueError, match="is a list, not a numpy array"):
        listy.predict(np.zeros((2, 1)))


def test_a_model_failing_its_warm_up_is_refused_before_serving() -> None:
    wrong = wsserve.FunctionModel(lambda x: x, input_shape=(3,), output_shape=(1,), name="wrong")
    with pytest.raises(ModelLoadError, match=r"warm-up failed: ValueError: output 'output' has shape \[2, 3\]; expected \[2, 1\]"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={"wrong": wrong})

    def broken(x):
        raise ZeroDivisionError("no weights")

    bad = wsserve.FunctionModel(broken, input_shape=(1,), output_shape=(1,))
    with pytest.raises(ModelLoadError, match="warm-up failed: ZeroDivisionError: no weights"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={"broken": bad})


def test_a_model_whose_metrics_are_not_json_is_refused_before_serving() -> None:
    # used to be served, then every GET /v1/models and `models` request failed, for every model
    odd = wsserve.FunctionModel(lambda x: x, input_shape=(1,), output_shape=(1,), metrics={"seen": {1, 2}})
    with pytest.raises(ValueError, match=r"^model 'odd': its metrics or figures are not JSON \(Type is not JSON serializable: set\)$"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={"odd": odd})


def test_server_refuses_bad_names_and_non_models() -> None:
    ok = wsserve.FunctionModel(lambda x: x, input_shape=(1,), output_shape=(1,))
    with pytest.raises(ValueError, match="model name '.hidden'"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={".hidden": ok})
    with pytest.raises(TypeError, match="str has no predict"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={"text": "not a model"})
    with pytest.raises(ValueError, match="--models none needs --model-repository"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={})


# --------------------------------------------------------------------------- served in process


async def test_function_model_is_batched_with_its_own_settings_and_answers_by_version() -> None:
    sizes: list[int] = []
    lock = threading.Lock()

    def weighted(x: np.ndarray) -> np.ndarray:  # [n, 3] -> [n, 1]
        with lock:
            sizes.append(len(x))
        return x @ np.array([[1.0], [2.0], [3.0]])

    model = wsserve.FunctionModel(weighted, input_shape=(3,), output_shape=(1,), max_batch_size=4, version=7)
    server = await _started({"weighted": model})
    try:
        conn = await Conn.open(server.url)
        assert conn.hello["models"] == ["weighted"]
        for i in range(24):
            await conn.send({"type": "predict", "id": i, "model": "weighted", "inputs": [[i, 1, 0]]})
        results = {}
        for _ in range(24):
            frame = await conn.recv()
            results[frame["id"]] = frame
        for i in range(24):
            assert results[i]["type"] == "result" and results[i]["version"] == "7"
            assert results[i]["outputs"] == [[i + 2.0]]
        assert max(sizes[1:]) == 4  # the warm-up's batch of 2 first; then never more than the model's 4 rows
        listing = (await conn.request({"type": "models", "id": 1}))["models"]
        assert [(m["name"], m["version"], m["backend"], m["versions"]) for m in listing] == [
            # an in-process model has no version directory: no "bytes" among its figures
            ("weighted", "7", "function", [{"version": "7", "state": "ready", "parameters": 0, "metrics": {}}])
        ]
        pinned = await conn.request({"type": "predict", "id": "p", "model": "weighted", "version": 7,
                                     "inputs": [[1, 1, 1]]})
        assert pinned["outputs"] == [[6.0]]
        other = await conn.request({"type": "predict", "id": "q", "model": "weighted", "version": "1",
                                    "inputs": [[1, 1, 1]]})
        assert other["code"] == "unknown_model" and "no version '1'" in other["message"]
        await conn.ws.close()
    finally:
        await _stop(server)


async def test_a_failing_function_fails_only_its_batch_and_the_server_goes_on() -> None:
    def picky(x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative input")
        return np.sqrt(x)

    server = await _started({"sqrt": wsserve.FunctionModel(picky, input_shape=(1,), output_shape=(1,), max_batch_size=1)})
    try:
        conn = await Conn.open(server.url)
        bad = await conn.request({"type": "predict", "id": 1, "model": "sqrt", "inputs": [[-1]]})
        assert bad["code"] == "internal" and "ValueError: negative input" in bad["message"]
        good = await conn.request({"type": "predict", "id": 2, "model": "sqrt", "inputs": [[9]]})
        assert good["outputs"] == [[3.0]]
        await conn.ws.close()
    finally:
        await _stop(server)


async def test_an_in_process_name_wins_over_a_repository_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "repo"
    (repo / "twice" / "1").mkdir(parents=True)
    (repo / "twice" / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    (repo / "twice" / "1" / "model.py").write_text(
        "class Model:\n    def __init__(self, d):\n        pass\n    def predict(self, x):\n        return x * 100\n")
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    (repo / "other" / "1" / "model.py").write_text(
        "class Model:\n    def __init__(self, d):\n        pass\n    def predict(self, x):\n        return x + 1\n")
    mine = wsserve.FunctionModel(lambda x: -x, input_shape=(1,), output_shape=(1,))
    with caplog.at_level(logging.ERROR, logger="wsserve.registry"):
        server = await _started({"twice": mine}, model_repository=(repo,))
    try:
        assert "model 'twice' in" in caplog.text and "an in-process model of that name is served" in caplog.text
        conn = await Conn.open(server.url)
        assert (await conn.request({"type": "predict", "id": 1, "model": "twice", "inputs": [[2]]}))["outputs"] == [[-2.0]]
        assert (await conn.request({"type": "predict", "id": 2, "model": "other", "inputs": [[2]]}))["outputs"] == [[3.0]]
        refused = await conn.request({"type": "reload", "id": 3, "model": "twice"})
        assert refused["code"] == "bad_request" and "in-process object" in refused["message"]
        again = await conn.request({"type": "predict", "id": 4, "model": "twice", "inputs": [[5]]})
        assert again["outputs"] == [[-5.0]]
        await conn.ws.close()
    finally:
        await _stop(server)


# --------------------------------------------------------------------------- onnx_model


def test_onnx_model_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="name must be 1-64"):
        wsserve.onnx_model(b"", name="a b")
    with pytest.raises(ValueError, match=r"intra_op_num_threads must be an integer in \[1, 64\], got 0"):
        wsserve.onnx_model(b"", intra_op_num_threads=0)
    with pytest.raises(ValueError, match="outputs must be a non-empty list"):
        wsserve.onnx_model(b"", outputs="probabilities")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source must be a path or bytes, got int"):
        wsserve.onnx_model(3)  # type: ignore[arg-type]


async def test_onnx_bytes_and_files_are_served_in_process(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from tests.onnx_builders import linear_layer, mlp_two_inputs, save

    proto, reference = linear_layer(d_in=3, d_out=2, seed=4)
    from_bytes = wsserve.onnx_model(proto.SerializeToString(), name="lin", max_batch_size=8)
    assert from_bytes.info.parameters == 3 * 2 + 2
    two, two_reference = mlp_two_inputs(seed=1)
    path = save(two, tmp_path / "two" / "1")
    from_file = wsserve.onnx_model(path, name="two", outputs=["probs"], version=3)
    server = await _started({"lin": from_bytes, "two": from_file})
    try:
        conn = await Conn.open(server.url)
        rows = [[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]]
        got = await conn.request({"type": "predict", "id": 1, "model": "lin", "inputs": rows})
        assert got["version"] == "1"
        np.testing.assert_allclose(got["outputs"], reference(np.array(rows)), rtol=1e-6)
        a, b = [[0.1, 0.2, 0.3]], [[1.0, -1.0]]
        named = await conn.request({"type": "predict", "id": 2, "model": "two", "inputs": {"a": a, "b": b}})
        assert named["version"] == "3"
        expected = two_reference(np.array(a, dtype=np.float32), np.array(b, dtype=np.float32))
        np.testing.assert_allclose(named["outputs"], expected["probs"], rtol=1e-5)  # the one output selected
        await conn.ws.close()
    finally:
        await _stop(server)


def test_onnx_bytes_that_are_no_graph_are_refused_with_the_models_name() -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ModelLoadError, match="<junk: ONNX bytes>: ONNX Runtime cannot load it"):
        wsserve.onnx_model(b"not a graph", name="junk")


# --------------------------------------------------------------------------- serve() arguments


def test_serve_refuses_unknown_settings_and_models_before_starting() -> None:
    with pytest.raises(TypeError, match="unknown setting 'prot'"):
        wsserve.serve({}, prot=0)
    with pytest.raises(ValueError, match="unknown default model 'gpt'"):
        wsserve.serve({}, default_models=("gpt",))
    with pytest.raises(ValueError, match="--models none needs --model-repository"):
        wsserve.serve({}, port=0)
    with pytest.raises(ValueError, match="--port must be 0..65535"):
        wsserve.serve({"m": wsserve.FunctionModel(lambda x: x, input_shape=1, output_shape=1)}, port=70000)
