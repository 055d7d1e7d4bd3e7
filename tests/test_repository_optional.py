"""config.pbtxt's ``optional: true`` inputs: a request may leave them out, the model gets none, and
requests giving different inputs are never batched together.  A Triton Python model with a required
``x`` and optional ``scale`` and ``bias`` (it fails any execute whose requests differ in the inputs
they give, so mixing them would show), and an ONNX graph whose optional ``s`` is an initializer a
request may override, on a real server on loopback, called with ``tritonclient.http``,
``tritonclient.grpc`` and the wsserve client (JSON and binary frames).  Before optional inputs were
served, each of these models was refused at load ("optional inputs (every input is required)")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import ServerProcess  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repository_triton_python import _write  # noqa: E402
from wsserve.repository.errors import ConfigError  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402

AFFINE_PBTXT = """
backend: "python"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 20000 }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] },
        { name: "scale" data_type: TYPE_FP32 dims: [ 1 ] optional: true },
        { name: "bias" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "given" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
AFFINE_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sets = {tuple(t.name() for t in r.inputs()) for r in requests}
        if len(sets) > 1:
            raise pb_utils.TritonError(f"one execute mixes requests giving {sorted(sets)}")
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            scale = pb_utils.get_input_tensor_by_name(r, "scale")
            bias = pb_utils.get_input_tensor_by_name(r, "bias")
            y = x * (scale.as_numpy() if scale is not None else 1) + (bias.as_numpy() if bias is not None else 0)
            given = np.full((len(x), 1), len(r.inputs()), np.int32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y.astype(np.float32)),
                                                   pb_utils.Tensor("given", given)]))
        return out
"""

SCALED_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "s" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def _scaled_graph() -> object:
    """y = x * s, where s is an initializer ([[3]]) a request may override with its own [n, 1]."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "scaled",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              initializer=[numpy_helper.from_array(np.array([[3.0]], np.float32), "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ob.OPSET)], ir_version=ob.IR_VERSION)


#: Calls ``affine`` through BLS with ``x`` only (and ``x``, ``bias`` when asked by ``with_bias`` > 0).
CALLER_PBTXT = """
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "with_bias" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""
CALLER_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            with_bias = pb_utils.get_input_tensor_by_name(r, "with_bias").as_numpy()
            inputs = [pb_utils.Tensor("x", x)]
            if with_bias[0, 0] > 0:
                inputs.append(pb_utils.Tensor("bias", with_bias))
            a = pb_utils.InferenceRequest(model_name="affine", requested_output_names=["y"], inputs=inputs).exec()
            if a.has_error():
                out.append(pb_utils.InferenceResponse(error=a.error()))
                continue
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_output_tensor_by_name(a, "y").as_numpy())]))
        return out
"""

#: A step leaving ``affine``'s optional ``scale`` unmapped (Triton's ensembles may), mapping ``bias``.
ENSEMBLE_PBTXT = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "a" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "b" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "out" data_type: TYPE_FP32 dims: [ 2 ] } ]
ensemble_scheduling { step [ { model_name: "affine" model_version: -1 input_map { key: "x" value: "a" }
                               input_map { key: "bias" value: "b" } output_map { key: "y" value: "out" } } ] }
"""

WARMUP_X_ONLY = """
model_warmup [ { name: "x_only" batch_size: 2
                 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 2 ] random_data: true } } } ]
"""
WARMUP_NO_X = """
model_warmup [ { name: "no_x" batch_size: 1
                 inputs { key: "bias" value: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true } } } ]
"""

#: ``s`` is an ordinary graph input (no initializer behind it): it cannot be left out.
NOT_OVERRIDABLE_PBTXT = SCALED_PBTXT

#: The overridable initializer ``s`` reshaped: the wire's [1, 1] per row, the graph's [1].
SCALED_RESHAPED_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] },
        { name: "s" data_type: TYPE_FP32 dims: [ 1, 1 ] reshape: { shape: [ 1 ] } optional: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def _not_overridable_graph() -> object:
    """y = x * s with ``s`` a plain graph input."""
    return ob._model([helper.make_node("Mul", ["x", "s"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
                      helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root: Path = tmp_path_factory.mktemp("optional") / "model_repository"
    _write(root, "affine", AFFINE_PBTXT, AFFINE_PY)
    ob.save(_scaled_graph(), root / "scaled" / "1")
    (root / "scaled" / "config.pbtxt").write_text(SCALED_PBTXT)
    _write(root, "caller", CALLER_PBTXT, CALLER_PY)
    (root / "ens" / "1").mkdir(parents=True)
    (root / "ens" / "config.pbtxt").write_text(ENSEMBLE_PBTXT)
    _write(root, "warm", AFFINE_PBTXT + WARMUP_X_ONLY, AFFINE_PY)
    _write(root, "warm_no_x", AFFINE_PBTXT + WARMUP_NO_X, AFFINE_PY)
    ob.save(_not_overridable_graph(), root / "not_overridable" / "1")
    (root / "not_overridable" / "config.pbtxt").write_text(NOT_OVERRIDABLE_PBTXT)
    ob.save(_scaled_graph(), root / "scaled_reshaped" / "1")
    (root / "scaled_reshaped" / "config.pbtxt").write_text(SCALED_RESHAPED_PBTXT)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


X = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
SCALE = np.array([[10.0], [100.0]], np.float32)
BIAS = np.array([[0.5], [-0.5]], np.float32)


def _http_inputs(**arrays: np.ndarray) -> list[thttp.InferInput]:
    out = []
    for name, a in arrays.items():
        t = thttp.InferInput(name, list(a.shape), "FP32")
        t.set_data_from_numpy(a)
        out.append(t)
    return out


def test_http_leaves_optional_inputs_out_and_the_config_says_which(served) -> None:
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    config = client.get_model_config("affine")
    assert [(t["name"], t.get("optional", False)) for t in config["input"]] == [
        ("x", False), ("scale", True), ("bias", True)]
    r = client.infer("affine", _http_inputs(x=X))
    assert r.as_numpy("y").tolist() == X.tolist() and r.as_numpy("given").ravel().tolist() == [1, 1]
    r = client.infer("affine", _http_inputs(x=X, bias=BIAS))
    assert r.as_numpy("y").tolist() == (X + BIAS).tolist() and r.as_numpy("given").ravel().tolist() == [2, 2]
    r = client.infer("affine", _http_inputs(x=X, scale=SCALE, bias=BIAS))
    assert r.as_numpy("y").tolist() == (X * SCALE + BIAS).tolist()
    with pytest.raises(thttp.InferenceServerException, match=r"missing input 'x'.*scale \(optional\)"):
        client.infer("affine", _http_inputs(scale=SCALE))
    # an ONNX initializer a request may override: left out, the graph's own value (3)
    assert client.infer("scaled", _http_inputs(x=X)).as_numpy("y").tolist() == (X * 3).tolist()
    assert client.infer("scaled", _http_inputs(x=X, s=SCALE)).as_numpy("y").tolist() == (X * SCALE).tolist()


def test_grpc_leaves_optional_inputs_out(served) -> None:
    _, address = served
    client = tgrpc.InferenceServerClient(address)
    try:
        assert [t.optional for t in client.get_model_config("affine").config.input] == [False, True, True]
        inputs = []
        for name, a in (("x", X), ("scale", SCALE)):
            t = tgrpc.InferInput(name, list(a.shape), "FP32")
            t.set_data_from_numpy(a)
            inputs.append(t)
        assert client.infer("affine", inputs).as_numpy("y").tolist() == (X * SCALE).tolist()
        assert client.infer("scaled", inputs[:1]).as_numpy("y").tolist() == (X * 3).tolist()
    finally:
        client.close()


async def test_websocket_requests_giving_different_inputs_are_batched_apart(served) -> None:
    """Concurrent requests with three different sets of inputs, inside one batching window: the
    model fails any execute mixing them, so every answer being right shows they were kept apart."""
    from wsserve_client import Client, InvalidInput

    proc, _ = served
    forms = [{"x": X}, {"x": X, "bias": BIAS}, {"x": X, "scale": SCALE, "bias": BIAS}]
    want = [X, X + BIAS, X * SCALE + BIAS]
    async with Client(proc.url) as client:
        results = await asyncio.gather(*(client.predict("affine", {k: v.tolist() for k, v in forms[i % 3].items()})
                                         for i in range(12)))
        for i, r in enumerate(results):
            assert r.outputs["y"] == want[i % 3].tolist(), i
        binary = await asyncio.gather(*(client.predict("affine", forms[i % 3], binary=True) for i in range(6)))
        for i, r in enumerate(binary):
            assert r.outputs["y"].tolist() == want[i % 3].tolist(), i
        with pytest.raises(InvalidInput, match=r"missing input 'x'"):
            await client.predict("affine", {"bias": BIAS.tolist()})
        with pytest.raises(InvalidInput, match=r"missing input 'x'"):
            await client.predict("affine", {"bias": BIAS}, binary=True)
        with pytest.raises(InvalidInput, match=r"unknown input 'colour'"):
            await client.predict("affine", {"x": X.tolist(), "colour": [[1.0], [2.0]]})


def test_an_ensembles_own_inputs_are_never_optional() -> None:
    text = ('platform: "ensemble"\nmax_batch_size: 8\n'
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] optional: true } ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            'ensemble_scheduling { step [ { model_name: "scaled" model_version: -1 '
            'input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }\n')
    with pytest.raises(ConfigError, match=r"input\[0\]\.optional.*not supported in an ensemble"):
        parse_pbtxt(text, Path("e/config.pbtxt"))


def _states(proc: ServerProcess) -> dict[str, tuple[str, str]]:
    index = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}").get_model_repository_index()
    return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in index}


def test_a_bls_request_may_leave_optional_inputs_out(served) -> None:
    """A Triton Python model calling ``affine`` with ``x`` alone, and with ``x`` and ``bias``
    (before: refused, "input 'scale' of model 'affine' is missing")."""
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    off = np.zeros((2, 1), np.float32)
    on = np.ones((2, 1), np.float32)
    assert client.infer("caller", _http_inputs(x=X, with_bias=off)).as_numpy("y").tolist() == X.tolist()
    assert client.infer("caller", _http_inputs(x=X, with_bias=on)).as_numpy("y").tolist() == (X + 1).tolist()


def test_an_ensemble_step_may_leave_an_optional_input_unmapped(served) -> None:
    """Triton's ensembles may leave a step model's optional input out of ``input_map`` (before: the
    ensemble failed to load, "input 'scale' of model 'affine' is not mapped")."""
    proc, _ = served
    assert _states(proc)["ens"] == ("READY", "")
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    r = client.infer("ens", _http_inputs(a=X, b=BIAS))
    assert r.as_numpy("out").tolist() == (X + BIAS).tolist()


def test_model_warmup_samples_may_leave_optional_inputs_out(served) -> None:
    """A sample giving only the required ``x`` warms up (before: "gives inputs ['x']; the model takes
    ['bias', 'scale', 'x']"); one leaving out the required ``x`` still fails the load naming it."""
    proc, _ = served
    states = _states(proc)
    assert states["warm"] == ("READY", "")
    state, reason = states["warm_no_x"]
    assert state == "UNAVAILABLE" and "model_warmup sample 'no_x'" in reason and "(missing 'x')" in reason


def test_an_onnx_optional_input_without_an_initializer_fails_the_load_naming_it(served) -> None:
    """``optional: true`` on a graph input with no initializer behind it: the graph cannot run
    without it, so the version does not load (before: it loaded, and every request leaving ``s``
    out failed with ONNX Runtime's "Required inputs (['s']) are missing")."""
    proc, _ = served
    state, reason = _states(proc)["not_overridable"]
    assert state == "UNAVAILABLE" and "optional input 's'" in reason and "initializer" in reason


def test_an_optional_overridable_initializer_takes_its_reshape(served) -> None:
    """Given on the wire in ``dims`` [1, 1], the graph gets its ``reshape`` [1]; left out, the
    initializer (before: the reshape was ignored and warm-up failed: "Invalid rank for input: s")."""
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.infer("scaled_reshaped", _http_inputs(x=X)).as_numpy("y").tolist() == (X * 3).tolist()
    s = SCALE.reshape(2, 1, 1)
    assert client.infer("scaled_reshaped", _http_inputs(x=X, s=s)).as_numpy("y").tolist() == (X * SCALE).tolist()


def _v1(proc: ServerProcess, model: str, body: object) -> tuple[int, object]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{proc.port}/v1/models/{model}:predict",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_kserve_v1_instances_may_leave_optional_inputs_out(served) -> None:
    """KServe V1's row format (each instance an object of the inputs) leaves ``scale`` and ``bias``
    out as the columnar one does (before: "'instances[0]' is missing input 'scale'"); every
    instance gives the same inputs, and the required ``x`` is still required."""
    proc, _ = served
    rows = X.tolist()
    status, body = _v1(proc, "affine", {"instances": [{"x": r} for r in rows]})
    assert status == 200, body
    assert [p["y"] for p in body["predictions"]] == rows  # type: ignore[index]
    status, body = _v1(proc, "affine", {"instances": [{"x": r, "bias": b} for r, b in zip(rows, BIAS.tolist())]})
    assert status == 200, body
    assert [p["y"] for p in body["predictions"]] == (X + BIAS).tolist()  # type: ignore[index]
    assert _v1(proc, "affine", {"inputs": {"x": rows}})[0] == 200
    status, body = _v1(proc, "affine", {"instances": [{"x": rows[0]}, {"x": rows[1], "bias": [1.0]}]})
    assert status == 400 and "'instances[1]'" in body["error"] and "'bias'" in body["error"], body  # type: ignore[index]
    status, body = _v1(proc, "affine", {"instances": [{"bias": [1.0]}]})
    assert status == 400 and "'instances[0]' is missing input 'x'" in body["error"], body  # type: ignore[index]


def test_a_versions_input_names_and_optional_inputs_are_known_at_load() -> None:
    """The KServe V1 route and a decoupled generate read a request's inputs by name: the names and
    the optional ones are the served version's, taken once when it is served (not per request)."""
    from types import SimpleNamespace

    from wsserve.pool import ModelEntry
    from wsserve.repository import TensorSpec

    specs = (TensorSpec("x", (2,), "float32"), TensorSpec("scale", (1,), "float32", optional=True),
             TensorSpec("bias", (1,), "float32", optional=True))
    entry = ModelEntry("affine", "1", "predict", SimpleNamespace(outputs=()), SimpleNamespace(), input_specs=specs)
    assert entry.input_names == ("x", "scale", "bias")
    assert entry.optional_inputs == frozenset({"scale", "bias"})
