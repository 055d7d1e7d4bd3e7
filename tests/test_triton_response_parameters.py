"""Triton's inference response parameters in a Triton Python model:
``pb_utils.InferenceResponse(outputs, parameters={...})`` reaches the client as the response's
``parameters`` over OIP HTTP (``tritonclient.http``), gRPC ``ModelInfer`` and ``ModelStreamInfer``
(``tritonclient.grpc``, a decoupled model's every response), and the WebSocket ``result`` and
``response`` frames (the wsserve Python client); bad types are refused with Triton's message, the
count and size bounded.  A real server on loopback, a temp repository of small Triton Python models."""

from __future__ import annotations

import json
import queue
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402
from wsserve_client import Client, InternalServerError  # noqa: E402

from tests.support import ServerProcess  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from wsserve.repository.triton_pb_utils import (  # noqa: E402
    MAX_RESPONSE_PARAMETERS,
    MAX_RESPONSE_PARAMETERS_BYTES,
)
from wsserve.worker import MAX_MERGED_PARAMETERS  # noqa: E402

PBTXT = ('backend: "python"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
         'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')

#: Echoes x; its response's parameters say its rows and id.  x[0, 0] picks a bad answer:
#: 1: a float value, 2: a key that is no str, 3: too many, 4: too many bytes, 5: a value and 6: a key
#: with a lone surrogate (no transport can send it).
TAGGED_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            params = {"rows": int(x.shape[0]), "tagged": True, "id": r.request_id(), "big": 2 ** 40}
            bad = int(x[0, 0])
            if bad == 1:
                params["ratio"] = 0.5
            elif bad == 2:
                params[7] = "seven"
            elif bad == 3:
                params = {f"p{i}": i for i in range(MAX_COUNT + 1)}
            elif bad == 4:
                params = {"text": "a" * MAX_BYTES}
            elif bad == 5:
                params["text"] = "\\ud800"
            elif bad == 6:
                params["\\udc00"] = 1
            response = pb_utils.InferenceResponse([pb_utils.Tensor("y", x)], parameters=params)
            assert '"tagged": true' in response.parameters()
            out.append(response)
        return out
'''

#: Decoupled: x[0, 1] responses, each with parameters {"index": i, "last": bool}, then FINAL alone;
#: x[0, 0] == 5: the second response's parameters hold a lone surrogate; 2: only the first has any.
STREAM_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            x = r.inputs()[0].as_numpy()
            sender = r.get_response_sender()
            n = int(x[0, 1])
            for i in range(n):
                params = {"index": i, "last": i == n - 1}
                if i == 1 and int(x[0, 0]) == 5:
                    params["text"] = "\\ud800"
                if i > 0 and int(x[0, 0]) == 2:
                    params = None
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)], parameters=params))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


#: Its parameters name each request's first x[0, 0] (max_batch_size 2: a bigger request is split).
PARTS_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy())],
                                           parameters={f"first_{int(r.inputs()[0].as_numpy()[0, 0])}": True})
                for r in requests]
'''

#: BLS: calls the model named by its request's id (no id: "tagged") with its x, non-decoupled or
#: (id "stream") with ``decoupled=True``, and answers the called responses' parameters as its own
#: (``called`` a JSON list of them), with the called model's last y.
CALLER_PY = '''
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            target = r.request_id() or "tagged"
            call = pb_utils.InferenceRequest(model_name=target, requested_output_names=["y"],
                                             inputs=[pb_utils.Tensor("x", x)], request_id="via-bls")
            if target == "stream":
                responses = [c for c in call.exec(decoupled=True)]
            else:
                responses = [call.exec()]
            for c in responses:
                if c.has_error():
                    raise pb_utils.TritonModelException(c.error().message())
            called = [json.loads(c.parameters()) for c in responses]
            y = pb_utils.get_output_tensor_by_name(responses[0], "y").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)],
                                                  parameters={"called": json.dumps(called, sort_keys=True)}))
        return out
'''


def _write(root: Path, name: str, pbtxt: str, model_py: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("response_parameters") / "model_repository"
    tagged = TAGGED_PY.replace("MAX_COUNT", str(MAX_RESPONSE_PARAMETERS)).replace("MAX_BYTES",
                                                                                  str(MAX_RESPONSE_PARAMETERS_BYTES))
    _write(root, "tagged", PBTXT, tagged)
    _write(root, "stream", PBTXT + "model_transaction_policy { decoupled: true }\n", STREAM_PY)
    _write(root, "parts", PBTXT.replace("max_batch_size: 4", "max_batch_size: 2"), PARTS_PY)
    _write(root, "caller", PBTXT, CALLER_PY)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def _x(first: float, second: float = 0.0, rows: int = 1) -> np.ndarray:
    x = np.full((rows, 2), 9.0, np.float32)
    x[0] = (first, second)
    return x


def _http_infer(proc: ServerProcess, x: np.ndarray, rid: str = "") -> Any:
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("tagged", [inp], request_id=rid)


def _grpc_input(x: np.ndarray) -> Any:
    inp = tgrpc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _grpc_params(message: Any) -> dict[str, Any]:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in message.parameters.items()}


def test_http_infer_carries_the_models_response_parameters(served: Any) -> None:
    result = _http_infer(served[0], _x(0, rows=3), rid="r-7")
    assert result.get_response()["parameters"] == {"rows": 3, "tagged": True, "id": "r-7", "big": 2 ** 40}
    np.testing.assert_array_equal(result.as_numpy("y"), _x(0, rows=3))


def test_grpc_model_infer_carries_them_typed(served: Any) -> None:
    client = tgrpc.InferenceServerClient(served[1])
    result = client.infer("tagged", [_grpc_input(_x(0, rows=2))], request_id="g-1")
    params = result.get_response().parameters
    assert params["rows"].int64_param == 2 and params["big"].int64_param == 2 ** 40
    assert params["tagged"].bool_param is True and params["id"].string_param == "g-1"


def test_grpc_stream_of_a_decoupled_model_carries_each_responses_parameters(served: Any) -> None:
    client = tgrpc.InferenceServerClient(served[1])
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("stream", [_grpc_input(_x(0, 3))], request_id="s", enable_empty_final_response=True)
        got = []
        while True:
            result, error = results.get(timeout=30)
            assert error is None, error
            params = _grpc_params(result.get_response())
            if result.as_numpy("y") is None:  # the empty FINAL
                assert params == {"triton_final_response": True}
                break
            got.append(params)
    finally:
        client.stop_stream()
    assert got == [{"index": i, "last": i == 2, "triton_final_response": False} for i in range(3)]


async def test_websocket_result_and_response_frames_carry_them(served: Any) -> None:
    async with Client(served[0].url) as client:
        result = await client.predict("tagged", _x(0, rows=2).tolist())
        assert result.parameters == {"rows": 2, "tagged": True, "id": str(result.request_id), "big": 2 ** 40}
        binary = await client.predict("tagged", _x(0, rows=1), binary=True)
        assert binary.parameters is not None and binary.parameters["rows"] == 1
        stream = client.predict_responses("stream", _x(0, 2).tolist())  # (JSON rows: given as arrays)
        got = [r async for r in stream]
        assert [r.parameters for r in got] == [{"index": 0, "last": False}, {"index": 1, "last": True}]


@pytest.mark.parametrize(("bad", "message"), [
    (1, "Expect parameters values to have type bool/int/str, found type <class 'float'> (parameter 'ratio')"),
    (2, "Expect parameters keys to have type str, found type <class 'int'>"),
    (3, f"InferenceResponse has {MAX_RESPONSE_PARAMETERS + 1} parameters; at most {MAX_RESPONSE_PARAMETERS} "
        "(MAX_RESPONSE_PARAMETERS)"),
    (4, f"at most {MAX_RESPONSE_PARAMETERS_BYTES} (MAX_RESPONSE_PARAMETERS_BYTES)"),
    (5, "parameter 'text': its value is not valid UTF-8 (a lone surrogate)"),
    (6, "parameter '\\udc00': its key is not valid UTF-8 (a lone surrogate)"),
])
async def test_bad_parameters_fail_the_request_naming_them(served: Any, bad: int, message: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _http_infer(served[0], _x(bad))
    assert message in str(caught.value)
    async with Client(served[0].url) as client:
        with pytest.raises(InternalServerError, match=message.replace("(", r"\(").replace(")", r"\)")[-40:]):
            await client.predict("tagged", _x(bad).tolist())
        assert (await client.predict("tagged", _x(0).tolist())).parameters is not None  # the model serves on



def test_grpc_bad_parameters_of_a_decoupled_response_end_its_stream_request_with_an_error(served: Any) -> None:
    """The model's second response has parameters no transport can send: its request ends with one
    error naming them (after the first response), and the stream serves on."""
    client = tgrpc.InferenceServerClient(served[1])
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("stream", [_grpc_input(_x(5, 3))], request_id="bad")
        result, error = results.get(timeout=30)
        assert error is None and _grpc_params(result.get_response())["index"] == 0
        result, error = results.get(timeout=30)
        assert result is None and "its value is not valid UTF-8 (a lone surrogate)" in str(error)
        client.async_stream_infer("stream", [_grpc_input(_x(0, 1))], request_id="good")
        result, error = results.get(timeout=30)
        assert error is None and _grpc_params(result.get_response())["last"] is True
    finally:
        client.stop_stream()
    assert results.empty()


async def test_websocket_bad_parameters_of_a_decoupled_response_fail_it_naming_them(served: Any) -> None:
    async with Client(served[0].url) as client:
        got = []
        with pytest.raises(InternalServerError, match=r"its value is not valid UTF-8 \(a lone surrogate\)"):
            async for response in client.predict_responses("stream", _x(5, 3).tolist()):
                got.append(response.parameters)
        assert got == [{"index": 0, "last": False}]


async def test_a_request_split_over_batches_gets_every_parts_parameters_on_each_transport(served: Any) -> None:
    """Five rows of a model whose batches hold two: three executions, whose parameters the answer
    merges in row order over OIP HTTP and gRPC as in the WebSocket result."""
    proc, address = served
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    merged = {"first_0": True, "first_4": True, "first_8": True}
    http = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert http.infer("parts", [inp]).get_response()["parameters"] == merged
    result = tgrpc.InferenceServerClient(address).infer("parts", [_grpc_input(x)])
    assert _grpc_params(result.get_response()) == merged
    async with Client(proc.url) as client:
        assert (await client.predict("parts", x.tolist())).parameters == merged


@pytest.mark.parametrize(("target", "called"), [
    ("", [{"rows": 2, "tagged": True, "id": "via-bls", "big": 2 ** 40}]),
    ("stream", [{"index": 0, "last": False}, {"index": 1, "last": True}, {}]),  # then the empty final
])
def test_a_bls_call_returns_the_called_models_response_parameters(served: Any, target: str, called: Any) -> None:
    """``exec()``'s response carries the called model's parameters (``response.parameters()``, as in
    python_backend); each ``exec(decoupled=True)`` response its own."""
    x = np.zeros((2, 2), np.float32)
    if target == "stream":
        x[0] = (0, 2)
    result = _http_infer_model(served[0], "caller", x, rid=target)
    assert json.loads(result.get_response()["parameters"]["called"]) == called


def _http_infer_model(proc: ServerProcess, model: str, x: np.ndarray, rid: str = "") -> Any:
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], request_id=rid)


def test_grpc_stream_response_without_parameters_carries_none_of_the_previous_ones(served: Any) -> None:
    client = tgrpc.InferenceServerClient(served[1])
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("stream", [_grpc_input(_x(2, 3))], request_id="s2")
        got = []
        for _ in range(3):
            result, error = results.get(timeout=30)
            assert error is None, error
            got.append(_grpc_params(result.get_response()))
    finally:
        client.stop_stream()
    assert got == [{"index": 0, "last": False, "triton_final_response": False},
                   {"triton_final_response": False}, {"triton_final_response": False}]


async def test_parameters_merged_over_a_split_request_are_bounded_on_each_transport(served: Any) -> None:
    """The model names each execution's first value in a key of its own, so a request split over
    N executions gathers N distinct parameters: at MAX_MERGED_PARAMETERS it is answered, one more
    ends it ``internal`` naming the bound (the request's memory does not grow with its rows)."""
    proc, address = served
    at_bound = np.arange(4 * MAX_MERGED_PARAMETERS, dtype=np.float32).reshape(-1, 2)  # 2 rows per execution
    over = np.arange(4 * MAX_MERGED_PARAMETERS + 4, dtype=np.float32).reshape(-1, 2)
    http = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    try:
        inp = thttp.InferInput("x", list(at_bound.shape), "FP32")
        inp.set_data_from_numpy(at_bound)
        assert len(http.infer("parts", [inp]).get_response()["parameters"]) == MAX_MERGED_PARAMETERS
        inp = thttp.InferInput("x", list(over.shape), "FP32")
        inp.set_data_from_numpy(over)
        with pytest.raises(InferenceServerException, match="MAX_MERGED_PARAMETERS"):
            http.infer("parts", [inp])
    finally:
        http.close()
    with pytest.raises(InferenceServerException, match="MAX_MERGED_PARAMETERS"):
        tgrpc.InferenceServerClient(address).infer("parts", [_grpc_input(over)])
    async with Client(proc.url) as client:
        assert len((await client.predict("parts", at_bound.tolist())).parameters) == MAX_MERGED_PARAMETERS
        with pytest.raises(InternalServerError, match="MAX_MERGED_PARAMETERS"):
            await client.predict("parts", over.tolist())
        assert (await client.predict("parts", [[1.0, 2.0]])).parameters == {"first_1": True}  # the connection serves on
