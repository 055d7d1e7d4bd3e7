"""A Triton Python model's requests as Triton treats them: a ``pb_utils.TritonError``'s code chooses
the error a client gets (WebSocket code, HTTP status, gRPC status; the message kept), an error
response fails only its request while the others get their rows from the same ``execute`` (never
executed again), and ``request.request_id()`` is the client's id.  A real server on loopback,
called with Triton's clients (``tritonclient.http``, ``tritonclient.grpc``) and raw WebSocket frames."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.support import ServerProcess  # noqa: E402
from tests.support.conn import Conn  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repository_triton_python import ONE_IO_PBTXT, _load, _write  # noqa: E402

#: x[0, 0] == -1: an error response with code x[0, 1]; -2: execute raises that TritonError; else an echo.
CODES_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            code = int(x[0, 1])
            if x[0, 0] == -2:
                raise pb_utils.TritonError(f"raised with code {code}", code)
            if x[0, 0] == -1:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"refused with code {code}", code)))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
'''

#: Writes one JSON line per execute to calls.jsonl beside its config: the request ids it got; a
#: request whose first value is negative is answered with INVALID_ARG, the others with an echo.
#: Two 4-row requests fill its batch of 8 (the 30 s window never holds them).
COUNTED_PY = '''
import json
import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.log = os.path.join(args["model_repository"], "calls.jsonl")

    def execute(self, requests):
        with open(self.log, "a") as f:
            f.write(json.dumps([r.request_id() for r in requests]) + "\\n")
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            if x[0, 0] < 0:
                err = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                out.append(pb_utils.InferenceResponse(error=err))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
'''
COUNTED_PBTXT = ONE_IO_PBTXT.replace("max_batch_size: 4", "max_batch_size: 8") + \
    "dynamic_batching { max_queue_delay_microseconds: 30000000 }\n"

#: Triton's code -> (WebSocket error code, HTTP status, gRPC status), as Triton's frontends answer.
EXPECTED = {
    0: ("internal", 400, "UNKNOWN"),
    1: ("internal", 500, "INTERNAL"),
    2: ("bad_request", 404, "NOT_FOUND"),
    3: ("invalid_input", 400, "INVALID_ARGUMENT"),
    4: ("overloaded", 503, "UNAVAILABLE"),
    5: ("bad_request", 501, "UNIMPLEMENTED"),
    6: ("bad_request", 400, "ALREADY_EXISTS"),
    7: ("cancelled", 400, "CANCELLED"),
}


#: An ensemble of one step on ``model`` (x -> y), its own max_batch_size 4.
def _one_step_ensemble(model: str) -> str:
    return ('platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            f'ensemble_scheduling {{ step [ {{ model_name: "{model}" model_version: -1 '
            'input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } } ] }\n')


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    root = tmp_path_factory.mktemp("triton_requests") / "model_repository"
    _write(root, "codes", ONE_IO_PBTXT, CODES_PY)
    _write(root, "counted", COUNTED_PBTXT, COUNTED_PY)
    _write(root, "idlog", ONE_IO_PBTXT, COUNTED_PY)  # as counted, without its batching window
    for name, step_model in {"ids_ens": "idlog", "codes_ens": "codes"}.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(_one_step_ensemble(step_model))
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc), root
    finally:
        proc.stop()


def _x(first: float, code: int, rows: int = 1) -> np.ndarray:
    x = np.ones((rows, 2), np.float32)
    x[0] = (first, code)
    return x


def _calls(root: Path) -> list[list[str]]:
    """The request ids of each execute of ``counted`` so far (the warm-up's first)."""
    return [json.loads(line) for line in (root / "counted" / "calls.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("code", sorted(EXPECTED))
@pytest.mark.parametrize("how", [-1, -2], ids=["response", "raised"])
async def test_a_triton_error_code_reaches_the_websocket_as_its_wire_error(served, code: int, how: int) -> None:
    proc, _, _ = served
    conn = await Conn.open(proc.url)
    try:
        frame = await conn.request({"type": "predict", "id": "e", "model": "codes", "inputs": _x(how, code).tolist()})
    finally:
        await conn.close()
    verb = "refused" if how == -1 else "raised"
    assert frame["type"] == "error" and frame["id"] == "e", frame
    assert frame["code"] == EXPECTED[code][0]
    assert frame["message"] == f"model 'codes' failed: TritonError: {verb} with code {code}"
    assert "retry_after_ms" not in frame


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_a_triton_error_code_reaches_the_oip_clients_with_tritons_status(served, code: int) -> None:
    proc, address, _ = served
    message = f"model 'codes' failed: TritonError: refused with code {code}"
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    inp = thttp.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(_x(-1, code))
    with pytest.raises(InferenceServerException) as info:
        http.infer("codes", [inp])
    assert (info.value.status(), info.value.message()) == (str(EXPECTED[code][1]), message)
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        ginp = tgrpc.InferInput("x", [1, 2], "FP32")
        ginp.set_data_from_numpy(_x(-1, code))
        with pytest.raises(tgrpc.InferenceServerException) as ginfo:
            grpc_client.infer("codes", [ginp])
    finally:
        grpc_client.close()
    assert (ginfo.value.status(), ginfo.value.message()) == (f"StatusCode.{EXPECTED[code][2]}", message)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_a_triton_error_code_in_an_ensemble_step_keeps_tritons_status(served, code: int) -> None:
    """Triton's ensemble answers a step's error with that error's status."""
    proc, address, _ = served
    message = f"ensemble 'codes_ens' step 0 (model 'codes'): model 'codes' failed: TritonError: refused with code {code}"
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    inp = thttp.InferInput("IN", [1, 2], "FP32")
    inp.set_data_from_numpy(_x(-1, code))
    with pytest.raises(InferenceServerException) as info:
        http.infer("codes_ens", [inp])
    assert (info.value.status(), info.value.message()) == (str(EXPECTED[code][1]), message)
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        ginp = tgrpc.InferInput("IN", [1, 2], "FP32")
        ginp.set_data_from_numpy(_x(-1, code))
        with pytest.raises(tgrpc.InferenceServerException) as ginfo:
            grpc_client.infer("codes_ens", [ginp])
    finally:
        grpc_client.close()
    assert (ginfo.value.status(), ginfo.value.message()) == (f"StatusCode.{EXPECTED[code][2]}", message)


async def test_an_error_response_fails_only_its_request_in_one_execute_with_the_client_ids(served) -> None:
    """Two 4-row requests fill one batch: one execute sees both (their WebSocket ids); the bad one
    fails with INVALID_ARG's invalid_input, the good one gets its rows from that same execute."""
    proc, _, root = served
    before = len(_calls(root))
    good, bad = _x(5, 0, rows=4), _x(-5, 0, rows=4)
    conn = await Conn.open(proc.url)
    try:
        await conn.send({"type": "predict", "id": "ws-good", "model": "counted", "inputs": good.tolist()})
        await conn.send({"type": "predict", "id": 42, "model": "counted", "inputs": bad.tolist()})
        frames = await conn.collect({"ws-good", 42})
    finally:
        await conn.close()
    assert _calls(root)[before:] == [["ws-good", "42"]]  # once, both requests: nothing executed again
    (ok,), (err,) = frames["ws-good"], frames[42]
    assert ok["type"] == "result" and np.array_equal(np.array(ok["outputs"], np.float32), good), ok
    assert (err["type"], err["code"]) == ("error", "invalid_input"), err
    assert err["message"] == "model 'counted' failed: TritonError: negative input"


def test_request_id_is_the_oip_id_or_empty(served) -> None:
    proc, address, root = served
    before = len(_calls(root))
    x = _x(5, 0, rows=8)  # a full batch: the window does not hold it
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    inp = thttp.InferInput("x", [8, 2], "FP32")
    inp.set_data_from_numpy(x)
    assert http.infer("counted", [inp], request_id="http-7").get_response()["id"] == "http-7"
    np.testing.assert_array_equal(http.infer("counted", [inp]).as_numpy("y"), x)
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        ginp = tgrpc.InferInput("x", [8, 2], "FP32")
        ginp.set_data_from_numpy(x)
        grpc_client.infer("counted", [ginp], request_id="grpc-8")
    finally:
        grpc_client.close()
    assert _calls(root)[before:] == [["http-7"], [""], ["grpc-8"]]


def test_an_ensemble_step_gets_the_ensemble_requests_id(served) -> None:
    """Triton gives each step's request the ensemble request's id (EnsembleContext::InitStep)."""
    proc, address, root = served
    x = _x(5, 0, rows=2)
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    inp = thttp.InferInput("IN", [2, 2], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(http.infer("ids_ens", [inp], request_id="ens-7").as_numpy("OUT"), x)
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        ginp = tgrpc.InferInput("IN", [2, 2], "FP32")
        ginp.set_data_from_numpy(x)
        grpc_client.infer("ids_ens", [ginp], request_id="ens-8")
    finally:
        grpc_client.close()
    calls = [json.loads(line) for line in (root / "idlog" / "calls.jsonl").read_text().splitlines()]
    assert calls[-2:] == [["ens-7"], ["ens-8"]]


# --------------------------------------------------------------------------- in process

IDS_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seen = []

    def execute(self, requests):
        self.seen.append([r.request_id() for r in requests])
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            if x[0] < 0:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("no", pb_utils.TritonError.NOT_FOUND)))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
'''


def test_without_a_batch_dimension_each_row_has_its_requests_id_and_an_error_fails_its_request(tmp_path: Path) -> None:
    from wsserve.repository.triton_backend import TritonError
    from wsserve.worker import RequestErrors

    pbtxt = ONE_IO_PBTXT.replace("max_batch_size: 4\n", "")
    model: Any = _load(tmp_path, "rows", pbtxt, IDS_PY)
    instance = model._instances[0]
    x = np.ones((3, 2), np.float32)
    x[2, 0] = -1  # the second request's second row
    got = model.predict_requests(x, [1, 2], ["a", "b"])
    assert instance.seen[-1] == ["a", "b", "b"]
    assert isinstance(got, RequestErrors) and list(got.errors) == [1]
    error = got.errors[1]
    assert isinstance(error, TritonError) and str(error) == "no" and error.code == 2
    np.testing.assert_array_equal(got.outputs[:1], x[:1])
    with pytest.raises(TritonError, match="^no$"):
        model.predict(x)
    model.close()
