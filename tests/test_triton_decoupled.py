"""Decoupled Triton Python models (``model_transaction_policy { decoupled: true }``), served as
Triton serves them: Triton's own ``repeat_model.py`` and ``square_model.py`` unchanged
(tests/data/triton_decoupled), a model whose response is an error mid-stream, one that never
sends FINAL until its request is cancelled, and one that floods a slow client.  A real server on
loopback called with ``tritonclient.grpc``'s streaming API, the WebSocket (wsserve_client) and
HTTP (Triton's generate extension)."""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import shutil
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402
from wsserve_client import BadRequestError, Client, InvalidInput, RequestCancelled  # noqa: E402

from tests.support import ServerProcess, scrape_metrics, wait_until  # noqa: E402
from tests.support.conn import Conn  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402

DATA = Path(__file__).parent / "data" / "triton_decoupled"

DECOUPLED = "model_transaction_policy { decoupled: true }\n"
ONE_IN = 'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
#: IN [1] -> IN responses OUT [1] (0, 1, ...), then one with error= INVALID_ARG, then FINAL.
ERRS_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED + ONE_IN
              + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n')
ERRS_PY = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        n = int(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0])

        def run():
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(pb_utils.InferenceResponse(
                error=pb_utils.TritonError("the third thing went wrong", pb_utils.TritonError.INVALID_ARG)))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run, daemon=True).start()
'''
#: One response, then nothing until the request is cancelled: it then writes ``cancelled`` in the
#: directory its ``marks`` parameter names, and sends FINAL (dropped).  IN 1: execute returns a list.
FOREVER_PBTXT = ERRS_PBTXT + 'parameters { key: "marks" value: { string_value: "MARKS" } }\n'
FOREVER_PY = '''
import json
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def execute(self, requests):
        request = requests[0]
        if int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0]) == 1:
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))])]
        sender = request.get_response_sender()
        rid = request.request_id()

        def run():
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([7], np.int32))]))
            while not (sender.is_cancelled() and request.is_cancelled()):
                threading.Event().wait(0.01)
            (self.marks / ("cancelled-" + rid)).write_text("yes")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run, daemon=True).start()
'''
#: 400 responses of 64 Ki floats (256 KiB each) as fast as it can, stopping once cancelled (then
#: writing ``flood-<sent>`` in ``marks``).
FLOOD_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED + ONE_IN
               + 'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
               + 'parameters { key: "marks" value: { string_value: "MARKS" } }\n')
FLOOD_PY = '''
import json
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def execute(self, requests):
        sender = requests[0].get_response_sender()

        def run():
            for i in range(400):
                if sender.is_cancelled():
                    (self.marks / f"flood-{i}").write_text("yes")
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full(65536, i, np.float32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run, daemon=True).start()
'''
#: ``execute`` returns a list: an error naming the model.
RETURNS_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))])]
'''

#: ``execute`` sends one response (OUT 1), then waits in ``execute``
#: until the request is cancelled and returns (never FINAL): one instance, at most 2 requests wait
#: at each of its two priority levels (``priority`` 1 first).
HELD_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED + ONE_IN
              + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
              + 'instance_group [{ count: 1 }]\n'
              + 'dynamic_batching { priority_levels: 2 default_priority_level: 2 '
              + 'default_queue_policy { max_queue_size: 2 } }\n')
HELD_PY = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))]))
        for _ in range(6000):  # (at most 60 s)
            if sender.is_cancelled():
                return
            threading.Event().wait(0.01)
'''
#: One response whose ``OUT`` is the length of ``request_id()``, then FINAL; ``OPT`` (optional) is
#: added to it when given.
ECHO_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED
              + 'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] },\n'
              + '        { name: "OPT" data_type: TYPE_INT32 dims: [ 1 ] optional: true } ]\n'
              + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n')
ECHO_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        request = requests[0]
        opt = pb_utils.get_input_tensor_by_name(request, "OPT")
        out = len(request.request_id()) + (0 if opt is None else int(opt.as_numpy()[0]))
        request.get_response_sender().send(
            pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([out], np.int32))]),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

#: A BLS ``exec()`` from the thread the model starts to send its one response: the exception's text
#: is the response's error.
BLS_THREAD_PY = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()

        def run():
            try:
                response = pb_utils.InferenceRequest(model_name="square_int32", requested_output_names=["OUT"],
                                                     inputs=[pb_utils.Tensor("IN", np.array([1], np.int32))]).exec()
                error = "exec() answered: " + (response.error().message() if response.has_error() else "ok")
            except pb_utils.TritonModelException as exc:
                error = str(exc)
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))

        threading.Thread(target=run).start()
'''

#: 100 responses of one 512 KiB string each as fast as it can, stopping once cancelled (then writing
#: ``strings-<sent>`` in ``marks``).
STRINGS_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED + ONE_IN
                 + 'output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
                 + 'parameters { key: "marks" value: { string_value: "MARKS" } }\n')
STRINGS_PY = FLOOD_PY.replace("range(400)", "range(100)").replace("flood-", "strings-").replace(
    "np.full(65536, i, np.float32)", "np.array([bytes(524288)], np.object_)")


#: Outputs A (INT32 [1]) and B (FP32 [2]); each response carries a subset of them.  IN 0: {A} (and
#: C, which config.pbtxt does not list), {B}, {A, B}, then {} flagged FINAL.  IN 1: {B} of shape
#: [3] (wrong).  IN 2: {A} as FP32 (a wrong dtype kind).
PARTIAL_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED + ONE_IN
                 + 'output [ { name: "A" data_type: TYPE_INT32 dims: [ 1 ] },\n'
                 + '         { name: "B" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')
PARTIAL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


def a(v):
    return pb_utils.Tensor("A", np.array([v], np.int32))


def b(v):
    return pb_utils.Tensor("B", np.array([v, -v], np.float32))


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        mode = int(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0])
        if mode == 1:
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("B", np.zeros(3, np.float32))]))
        elif mode == 2:
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("A", np.array([0.5], np.float32))]))
        else:
            sender.send(pb_utils.InferenceResponse([a(1), pb_utils.Tensor("C", np.array([9], np.int32))]))
            sender.send(pb_utils.InferenceResponse([b(2)]))
            sender.send(pb_utils.InferenceResponse([a(3), b(4)]))
            sender.send(pb_utils.InferenceResponse([]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


#: OUT FP32 [-1]: a response of no values (shape [0]), then one of two, then FINAL.
EMPTY_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED + ONE_IN
               + 'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')
EMPTY_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros(0, np.float32))]))
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.ones(2, np.float32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


#: One instance; IN 1: ``execute`` writes ``running-<request_id>`` in ``marks``, then holds the
#: instance until ``open-<request_id>`` exists there (at most 60 s); then (any IN) one response of
#: OUT = IN flagged FINAL.
GATE_PBTXT = ('backend: "python"\nmax_batch_size: 0\n' + DECOUPLED + ONE_IN
              + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
              + 'instance_group [{ count: 1 }]\n'
              + 'parameters { key: "marks" value: { string_value: "MARKS" } }\n')
GATE_PY = '''
import json
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def execute(self, requests):
        request = requests[0]
        value = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
        if value == 1:
            (self.marks / ("running-" + request.request_id())).write_text("yes")
            for _ in range(6000):
                if (self.marks / ("open-" + request.request_id())).exists():
                    break
                threading.Event().wait(0.01)
        request.get_response_sender().send(
            pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.int32))]),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def _write(root: Path, name: str, pbtxt: str, model_py: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


#: ERRS' model with three priority levels and DELAY queue policies (the configuration reports them).
DELAYING_PBTXT = ERRS_PBTXT + """dynamic_batching { priority_levels: 3 default_priority_level: 2
  default_queue_policy { default_timeout_microseconds: 2000000 timeout_action: DELAY max_queue_size: 8 }
  priority_queue_policy [ { key: 1 value: { default_timeout_microseconds: 1000000 max_queue_size: 4 } } ] }
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    base = tmp_path_factory.mktemp("triton_decoupled")
    root, marks = base / "model_repository", base / "marks"
    marks.mkdir()
    for example in ("repeat", "square"):
        name = f"{example}_int32"
        (root / name / "1").mkdir(parents=True)
        shutil.copy(DATA / f"{example}_config.pbtxt", root / name / "config.pbtxt")
        shutil.copy(DATA / f"{example}_model.py", root / name / "1" / "model.py")
    _write(root, "errs", ERRS_PBTXT, ERRS_PY)
    _write(root, "forever", FOREVER_PBTXT.replace("MARKS", str(marks)), FOREVER_PY)
    _write(root, "flood", FLOOD_PBTXT.replace("MARKS", str(marks)), FLOOD_PY)
    _write(root, "returns", ERRS_PBTXT, RETURNS_PY)
    _write(root, "held", HELD_PBTXT, HELD_PY)
    _write(root, "echo", ECHO_PBTXT, ECHO_PY)
    _write(root, "bls_thread", ERRS_PBTXT, BLS_THREAD_PY)
    _write(root, "strings", STRINGS_PBTXT.replace("MARKS", str(marks)), STRINGS_PY)
    _write(root, "partial", PARTIAL_PBTXT, PARTIAL_PY)
    _write(root, "empty", EMPTY_PBTXT, EMPTY_PY)
    _write(root, "delaying", DELAYING_PBTXT, ERRS_PY)
    _write(root, "gate", GATE_PBTXT.replace("MARKS", str(marks)), GATE_PY)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-write-buffer-bytes", "1000000")
    try:
        yield proc, grpc_address(proc), marks
    finally:
        proc.stop()


class _Stream:
    """One tritonclient.grpc stream: its results and errors in a queue."""

    def __init__(self, address: str) -> None:
        self.client = tgrpc.InferenceServerClient(address)
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.gate = threading.Event()
        self.gate.set()
        self.client.start_stream(callback=self._callback)

    def _callback(self, result: Any, error: Any) -> None:
        self.gate.wait()
        self.results.put((result, error))

    def send(self, model: str, rid: str, **tensors: np.ndarray) -> None:
        inputs = []
        for name, value in tensors.items():
            t = tgrpc.InferInput(name, list(value.shape), {"int32": "INT32", "uint32": "UINT32"}[value.dtype.name])
            t.set_data_from_numpy(value)
            inputs.append(t)
        self.client.async_stream_infer(model, inputs, request_id=rid, enable_empty_final_response=True)

    def until_final(self) -> list[tuple[Any, Any]]:
        """Results up to the one marked final (or an error)."""
        got = []
        while True:
            result, error = self.results.get(timeout=60)
            got.append((result, error))
            if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                return got

    def close(self, cancel_requests: bool = False) -> None:
        self.gate.set()
        self.client.stop_stream(cancel_requests=cancel_requests)
        self.client.close()


@pytest.fixture
def stream(served) -> Iterator[_Stream]:
    s = _Stream(served[1])
    try:
        yield s
    finally:
        s.close()


def _i32(*values: int) -> np.ndarray:
    return np.array(values, np.int32)


def test_repeat_model_streams_each_response_then_an_empty_final(stream) -> None:
    """Triton's repeat_model.py, unchanged: one response per element of IN from its own thread (after
    execute returned: WAIT 0), IDX counting them, then (``enable_empty_final_response``) an empty
    response flagged ``triton_final_response``."""
    stream.send("repeat_int32", "r1", IN=np.array([4, 2, 0, 1], np.int32), DELAY=_i32(1, 2, 3, 4), WAIT=_i32(0))
    got = stream.until_final()
    assert all(error is None for _, error in got)
    *responses, final = [r for r, _ in got]
    assert [r.as_numpy("OUT").tolist() for r in responses] == [[4], [2], [0], [1]]
    assert [r.as_numpy("IDX").tolist() for r in responses] == [[0], [1], [2], [3]]
    assert [r.get_response().parameters["triton_final_response"].bool_param for r in responses] == [False] * 4
    assert {r.get_response().id for r in responses} == {"r1"} and final.get_response().id == "r1"
    assert final.get_response().parameters["triton_final_response"].bool_param and not final.get_response().outputs


def test_zero_responses_then_final_and_requests_interleave(stream) -> None:
    """square_model.py: IN responses each; IN 0: no response, the empty final only."""
    stream.send("square_int32", "none", IN=np.array([0], np.int32))
    (final, error), = stream.until_final()
    assert error is None and not final.get_response().outputs and final.get_response().id == "none"
    stream.send("square_int32", "sq", IN=np.array([3], np.int32))
    got = stream.until_final()
    assert [r.as_numpy("OUT").tolist() for r, _ in got[:-1]] == [[3], [3], [3]]


def test_an_error_response_ends_its_request_with_its_code_and_the_stream_goes_on(stream) -> None:
    stream.send("errs", "e", IN=np.array([2], np.int32))
    got = stream.until_final()
    assert [r.as_numpy("OUT").tolist() for r, _ in got[:-1]] == [[0], [1]]
    error = got[-1][1]
    assert isinstance(error, InferenceServerException)
    assert "model 'errs' failed: TritonError: the third thing went wrong" in error.message()
    stream.send("square_int32", "after", IN=np.array([1], np.int32))
    assert [r.as_numpy("OUT").tolist() for r, _ in stream.until_final()[:-1]] == [[1]]


def test_execute_returning_responses_is_an_error_naming_the_model(stream) -> None:
    stream.send("returns", "x", IN=np.array([1], np.int32))
    (_, error), = stream.until_final()
    assert "Python model 'returns' is using the decoupled mode and the execute function must return None" \
        in error.message()


def test_model_infer_on_a_decoupled_model_is_refused_as_triton_refuses_it(served) -> None:
    client = tgrpc.InferenceServerClient(served[1])
    x = tgrpc.InferInput("IN", [1], "INT32")
    x.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("square_int32", [x])
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
    assert refused.value.message() == "ModelInfer RPC doesn't support models with decoupled transaction policy"
    config = client.get_model_config("square_int32").config
    assert config.model_transaction_policy.decoupled
    client.close()


def test_a_request_never_final_is_cancelled_when_its_stream_ends(served) -> None:
    """The model sends one response and waits for ``is_cancelled()``: the client cancelling its stream
    (``stop_stream(cancel_requests=True)``) cancels the request (the model sees it, on the sender and
    the request).  (Only half-closed, the stream would stay open for the request, as Triton's.)"""
    s = _Stream(served[1])
    s.send("forever", "f1", IN=np.array([0], np.int32))
    result, error = s.results.get(timeout=60)
    assert error is None and result.as_numpy("OUT").tolist() == [7]
    assert not (served[2] / "cancelled-f1").exists()
    s.close(cancel_requests=True)
    wait_until(lambda: (served[2] / "cancelled-f1").exists(), 30.0, what="the model to see its request cancelled")


def test_a_slow_consumer_fails_its_request_with_overloaded_and_the_model_sees_it(served) -> None:
    """400 responses of 256 KiB to a client that reads none (its callback blocked): past the server's
    1 MB bound the request ends (``overloaded``, naming the bound) and the model sees it cancelled,
    having sent far fewer than 400; the client then gets what was written, and the error."""
    s = _Stream(served[1])
    s.gate.clear()
    try:
        s.send("flood", "big", IN=np.array([0], np.int32))
        mark = wait_until(lambda: next(served[2].glob("flood-*"), None), 60.0, what="the flood to be cancelled")
        assert int(mark.name.split("-")[1]) < 400
        s.gate.set()
        got = s.until_final()
        assert all(e is None for _, e in got[:-1]) and len(got) - 1 < 400
        assert "slow consumer" in got[-1][1].message() and "max_write_buffer_bytes=1000000" in got[-1][1].message()
    finally:
        s.close()
    s2 = _Stream(served[1])  # the server serves on
    s2.send("square_int32", "ok", IN=np.array([2], np.int32))
    assert len(s2.until_final()) == 3
    s2.close()


# --------------------------------------------------------------------------- WebSocket


async def test_websocket_predict_streams_responses_then_done(served) -> None:
    """A WebSocket ``predict`` to a decoupled model: one ``response`` frame per response (``seq``
    0, 1, ...), then ``done`` with ``responses``; through the Python client's ``predict_responses``."""
    async with Client(served[0].url) as client:
        stream = client.predict_responses("repeat_int32", {"IN": [[5, 6, 7]], "DELAY": [[0, 0, 0]], "WAIT": [[0]]})
        got = [r async for r in stream]
        assert [(r.seq, r.outputs, r.final) for r in got] == [
            (0, {"OUT": [[5]], "IDX": [[0]]}, False), (1, {"OUT": [[6]], "IDX": [[1]]}, False),
            (2, {"OUT": [[7]], "IDX": [[2]]}, False)]
        assert stream.summary.responses == 3 and stream.summary.reason == "complete"
        assert stream.summary.version == "1"
        none = client.predict_responses("square_int32", [[0]])
        assert [r async for r in none] == [] and none.summary.responses == 0


async def test_websocket_error_mid_stream_and_cancel(served) -> None:
    """An error response ends the request with its code's error after the responses before it; a
    request never sent FINAL ends when the client cancels it (``error`` ``cancelled``), and the
    model sees it; the connection serves on."""
    async with Client(served[0].url) as client:
        errs = client.predict_responses("errs", [[2]])
        seen = []
        with pytest.raises(InvalidInput, match="model 'errs' failed: TritonError: the third thing went wrong"):
            async for r in errs:
                seen.append(r.outputs)
        assert seen == [[[0]], [[1]]]
        forever = client.predict_responses("forever", [[0]])
        first = await forever.__anext__()
        assert first.outputs == [[7]]
        assert _inflight(served[0].port) == 1  # (its model has not sent FINAL: still in flight)
        rid = forever.request_id
        forever.cancel()
        with pytest.raises(RequestCancelled):
            await forever.__anext__()
        wait_until(lambda: (served[2] / f"cancelled-{rid}").exists(), 30.0, what="the model to see the cancel")
        assert _inflight(served[0].port) == 0
        assert [r.outputs async for r in client.predict_responses("square_int32", [[1]])] == [[[1]]]


async def test_websocket_binary_outputs_answer_binary_response_frames(served) -> None:
    """``binary_outputs`` (the client's ``binary=True``): each ``response`` is a binary tensor frame,
    its outputs in the model's dtypes (one output: the tensor; several: those the response has, by
    name; none: ``{}``), ``done`` JSON; a model answering strings refuses it as for any predict."""
    async with Client(served[0].url) as client:
        stream = client.predict_responses("square_int32", np.array([[2]], np.int32), binary=True)
        got = [r async for r in stream]
        assert [(r.seq, r.outputs.dtype, r.outputs.tolist(), r.final) for r in got] == \
            [(0, np.int32, [[2]], False), (1, np.int32, [[2]], False)]
        assert stream.summary.responses == 2
        got = [r async for r in client.predict_responses("partial", np.array([[0]], np.int32), binary=True)]
        assert [{k: (v.dtype, v.tolist()) for k, v in r.outputs.items()} for r in got] == [
            {"A": (np.int32, [[1]])}, {"B": (np.float32, [[2.0, -2.0]])},
            {"A": (np.int32, [[3]]), "B": (np.float32, [[4.0, -4.0]])}, {}]
        assert [r.final for r in got] == [False, False, False, True]
        with pytest.raises(BadRequestError, match="model 'strings' answers strings"):
            [r async for r in client.predict_responses("strings", np.array([[0]], np.int32), binary=True)]


async def test_websocket_binary_response_frames_carry_a_tensor_of_no_values(served) -> None:
    """A response whose output holds no values (a variable dimension of 0) is a binary ``response``
    frame of shape [1, 0] and no payload, read back as such; before, the server failed the request
    making the frame (``internal``: memoryview cannot cast a view with zeros in its shape) and the
    client refused the shape."""
    async with Client(served[0].url) as client:
        got = [r async for r in client.predict_responses("empty", np.array([[1]], np.int32), binary=True)]
        assert [(r.outputs.dtype, r.outputs.shape, r.outputs.tolist()) for r in got] == \
            [(np.float32, (1, 0), [[]]), (np.float32, (1, 2), [[1.0, 1.0]])]
        assert [r.outputs async for r in client.predict_responses("empty", [[1]])] == [[[]], [[1.0, 1.0]]]


# --------------------------------------------------------------------------- HTTP


def _inflight(port: int) -> float:
    """``wsserve_inflight_requests`` of the server on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        line = next(x for x in answer.read().decode().splitlines() if x.startswith("wsserve_inflight_requests "))
    return float(line.split()[1])


def _post(port: int, path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type") or "", answer.read()
    finally:
        conn.close()


def _events(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n\n"), body
    return [json.loads(e.removeprefix(b"data: ")) for e in body.split(b"\n\n") if e]


def test_http_generate_stream_sends_one_event_per_response(served) -> None:
    """Triton's ``generate_stream`` on a decoupled model: an SSE event per response, outputs of one
    element as scalars, ``id`` echoed; zero responses: an empty stream; an error: an error event."""
    port = served[0].port
    status, kind, body = _post(port, "/v2/models/repeat_int32/generate_stream",
                               {"id": "g", "IN": [4, 2, 9], "DELAY": [0, 0, 0], "WAIT": 0})
    assert status == 200 and kind.startswith("text/event-stream")
    assert _events(body) == [{"id": "g", "model_name": "repeat_int32", "model_version": "1", "OUT": v, "IDX": i}
                             for i, v in enumerate([4, 2, 9])]
    status, _, body = _post(port, "/v2/models/square_int32/generate_stream", {"IN": 0})
    assert status == 200 and body == b""
    status, _, body = _post(port, "/v2/models/errs/generate_stream", {"IN": 1})
    assert status == 200
    assert _events(body) == [{"model_name": "errs", "model_version": "1", "OUT": 0},
                             {"error": "model 'errs' failed: TritonError: the third thing went wrong"}]


def test_http_generate_and_infer_answer_as_triton_does(served) -> None:
    """``generate``: the one response as JSON; any other number of responses: Triton's 200 with an
    error body.  ``/infer``: Triton's 501."""
    port = served[0].port
    status, _, body = _post(port, "/v2/models/square_int32/generate", {"IN": 1})
    assert status == 200 and json.loads(body) == {"model_name": "square_int32", "model_version": "1", "OUT": 1}
    status, _, body = _post(port, "/v2/models/square_int32/generate", {"IN": 3})
    assert status == 200 and json.loads(body) == {"error": "generate expects model to produce exactly 1 response, "
                                                  "use generate stream for model that generates various number "
                                                  "of responses"}
    status, _, body = _post(port, "/v2/models/square_int32/generate", {"OUT": 3})
    assert status == 400 and "no field 'IN'" in json.loads(body)["error"]
    status, _, body = _post(port, "/v2/models/square_int32/infer",
                            {"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]}]})
    assert status == 501
    assert json.loads(body) == {"error": "HTTP end point doesn't support models with decoupled transaction policy"}


# --------------------------------------------------------------------------- in process


def test_the_response_sender_checks_its_arguments_as_tritons() -> None:
    """``send``: Triton's messages for a bad flag, no response with flags 0, and any send after FINAL
    (each a TritonModelException); the FINAL may carry a response; ``is_cancelled`` is the request's."""
    from wsserve.repository import triton_pb_utils as pb

    sent: list[tuple[Any, bool]] = []
    cancelled = threading.Event()
    sender = pb.ResponseSender(lambda r, final: sent.append((r, final)), cancelled.is_set)
    request = pb.InferenceRequest(model_name="m")
    request._sender = sender
    response = pb.InferenceResponse([pb.Tensor("OUT", np.array([1], np.int32))])
    with pytest.raises(pb.TritonModelException, match="^Unable to send response. Unsupported flag provided.$"):
        sender.send(response, flags=2)
    with pytest.raises(pb.TritonModelException, match="^Inference Response object must be provided when the "
                                                      "response flags is set to zero.$"):
        sender.send()
    sender.send(response)
    assert not request.is_cancelled() and not sender.is_cancelled()
    cancelled.set()
    assert request.is_cancelled() and sender.is_cancelled()
    sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb.TritonModelException, match="^Unable to send response. Response sender has been closed.$"):
        sender.send(flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert sent == [(response, False), (response, True)]
    with pytest.raises(pb.TritonModelException, match="decoupled model's requests only"):
        pb.InferenceRequest(model_name="m").get_response_sender()


async def test_a_deadline_ends_a_request_never_final_and_others_go_on(served) -> None:
    """``timeout_ms`` passing ends a request whose model never sends FINAL with
    ``deadline_exceeded`` (its one terminal frame) and the model sees it cancelled; a request
    alongside on the same connection is not touched."""
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "slow", "model": "forever", "inputs": [[0]], "timeout_ms": 200})
        frame = await conn.request({"type": "predict", "id": "sq", "model": "square_int32", "inputs": [[2]]})
        frames = [frame]
        while sum(f.get("type") in ("done", "error") for f in frames) < 2:
            frames.append(await conn.recv())
        slow = [f for f in frames if f.get("id") == "slow"]
        assert slow[-1]["type"] == "error" and slow[-1]["code"] == "deadline_exceeded"
        assert all(f["type"] == "response" for f in slow[:-1])
        sq = [f for f in frames if f.get("id") == "sq"]
        assert [f["type"] for f in sq] == ["response", "response", "done"] and sq[-1]["responses"] == 2
    finally:
        await conn.close()
    wait_until(lambda: (served[2] / "cancelled-slow").exists(), 30.0, what="the model to see the deadline")


#: ``execute`` records the request's IN in ``started`` and waits until ``release`` is set, then sends
#: IN as its one response; IN 9: it never sends FINAL.  ``instance_group [{ count: 1 }]``.
GATED_PY = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

started = []
release = threading.Event()


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        x = int(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0])
        started.append(x)
        release.wait(60)
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([x], np.int32))]))
        if x != 9:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


class _Sink:
    """What a transport gives the worker (the fields it reads), recording what it is told."""

    def __init__(self, x: int) -> None:
        self.inputs = np.array([[x]], np.int32)
        self.n, self.nbytes, self.finished, self.request_id = 1, 4, False, str(x)
        self.responses: list[Any] = []
        self.error: Any = None

    def on_response(self, outputs: Any, final: bool, nbytes: int) -> None:
        self.responses.append((None if outputs is None else outputs["OUT"].tolist(), final))
        self.finished = final

    def on_error(self, exc: Any) -> None:
        self.error, self.finished = exc, True


async def _until(predicate: Any) -> None:
    for _ in range(6000):  # a predicate wait (at most 60 s), never a timing bound
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not met within 60 s")


async def test_instances_bound_the_executes_and_an_unload_ends_what_never_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One instance: the second request's ``execute`` starts only once the first returned (the
    statistics' ``oldest_age_s`` is the waiting second's age meanwhile); closing the worker (an
    unload) ends a request whose model never sent FINAL with ``shutting_down``."""
    from tests.test_repository_triton_python import _load
    from wsserve import decoupled
    from wsserve.decoupled import DecoupledWorker

    model = _load(tmp_path, "gated", ERRS_PBTXT + "instance_group [{ count: 1 }]\n", GATED_PY)
    gate = SimpleNamespace(**type(model._instances[0]).execute.__globals__)  # model.py's started, release
    worker = DecoupledWorker(model, name="gated", instances=1, drain_timeout_s=0.0)
    worker.start()
    try:
        first, second, third = _Sink(1), _Sink(2), _Sink(9)
        streams = [worker.submit(sink) for sink in (first, second, third)]
        await _until(lambda: gate.started == [1])
        assert worker.statistics().queued == 2 and not first.responses
        with monkeypatch.context() as clock:  # the worker's clock, 4 s after the second was queued
            clock.setattr(decoupled, "monotonic", lambda: streams[1].queued_at + 4.0)
            assert worker.statistics().oldest_age_s == 4.0
        gate.release.set()
        await _until(lambda: first.finished and second.finished and len(third.responses) == 1)
        assert gate.started == [1, 2, 9]
        assert first.responses == [([[1]], False), (None, True)] and second.responses == [([[2]], False), (None, True)]
        assert third.error is None and not third.finished
        await worker.wait_idle()
        await worker.close()
        assert third.error is not None and third.error.code == "shutting_down"
    finally:
        gate.release.set()
        await worker.close()
        model.close()


async def test_queue_policies_reject_or_delay_a_request_waiting_past_its_queue_timeout(tmp_path: Path) -> None:
    """Two levels, each with a 1 s queue timeout: level 1 DELAY, level 2 REJECT.  While the one
    instance is held, a level-1 request waits past its timeout and goes behind a later level-1
    request (still before level 2); a level-2 one waiting past its own ends ``deadline_exceeded``."""
    from tests.test_repository_triton_python import _load
    from wsserve.batching import PriorityLevels, QueuePolicy
    from wsserve.decoupled import DecoupledWorker

    model = _load(tmp_path, "gated", ERRS_PBTXT + "instance_group [{ count: 1 }]\n", GATED_PY)
    gate = SimpleNamespace(**type(model._instances[0]).execute.__globals__)  # model.py's started, release
    levels = PriorityLevels(2, 2, configured=True, policies=((1, QueuePolicy(None, 1000.0, False, "DELAY")),))
    worker = DecoupledWorker(model, name="gated", instances=1, drain_timeout_s=0.0, priorities=levels,
                             queue_policy=QueuePolicy(None, 1000.0, False, "REJECT"))
    worker.start()
    try:
        held, old, rejected = _Sink(1), _Sink(2), _Sink(4)
        worker.submit(held)
        await _until(lambda: gate.started == [1])
        worker.submit(old, priority=1)
        worker.submit(rejected, priority=2)
        await _until(lambda: rejected.finished and worker._levels[1])  # old: in level 1's delayed queue
        assert rejected.error is not None and rejected.error.code == "deadline_exceeded"
        assert "waited past its queue timeout" in str(rejected.error)
        fresh, low = _Sink(3), _Sink(5)
        worker.submit(low, priority=2)
        worker.submit(fresh, priority=1)  # let go at once: it starts long before its 1 s pass
        gate.release.set()
        await _until(lambda: all(s.finished for s in (held, old, fresh)))
        assert gate.started[:3] == [1, 3, 2]  # the fresh level-1 request before the delayed one
        assert old.error is None and fresh.error is None
    finally:
        gate.release.set()
        await worker.close()
        model.close()


# --------------------------------------------------------------------------- review: found bugs


async def test_a_priority_above_one_is_refused_naming_the_field_not_an_internal_error(served) -> None:
    """A WebSocket predict and a ``POST /predict`` with ``priority`` 2 to a decoupled model: a
    ``bad_request`` naming the field (its config.pbtxt sets no levels: one, as Triton's), not an
    internal error."""
    conn = await Conn.open(served[0].url)
    try:
        frame = await conn.request({"type": "predict", "id": "p", "model": "square_int32", "inputs": [[1]],
                                    "priority": 2})
        assert frame["type"] == "error" and frame["code"] == "bad_request", frame
        assert ("field 'priority' must be 0 or 1 for model 'square_int32', got 2 (its config.pbtxt sets no "
                "dynamic_batching.priority_levels: one level)") in frame["message"]
        frame = await conn.request({"type": "predict", "id": "q", "model": "square_int32", "inputs": [[1]],
                                    "priority": 1})
        assert frame["type"] == "response" and (await conn.recv())["type"] == "done"
    finally:
        await conn.close()
    status, _, body = _post(served[0].port, "/predict", {"model": "square_int32", "inputs": [[1]], "priority": 2})
    assert status == 400 and "field 'priority'" in json.loads(body)["error"]["message"]


async def test_requests_that_left_while_waiting_free_their_place_in_the_wait_queue(served) -> None:
    """One instance held by a request, at most 2 waiting: two requests cancelled while waiting no
    longer count, so a third waits (and runs once the instance is free) rather than being refused
    ``overloaded``; the model's statistics count no request as waiting then."""
    conn = await Conn.open(served[0].url)
    try:
        first = await conn.request({"type": "predict", "id": "h0", "model": "held", "inputs": [[0]]})
        assert first["type"] == "response"
        for rid in ("h1", "h2"):
            await conn.send({"type": "predict", "id": rid, "model": "held", "inputs": [[0]]})
            frame = await conn.request({"type": "cancel", "id": rid})
            assert frame["id"] == rid and frame["code"] == "cancelled"
        await conn.send({"type": "predict", "id": "h3", "model": "held", "inputs": [[0]]})
        await conn.send({"type": "cancel", "id": "h0"})
        frames = [await conn.recv(30), await conn.recv(30)]
        assert [(f["id"], f["type"]) for f in frames] == [("h0", "error"), ("h3", "response")], frames
        assert _gauge(served[0].port, 'wsserve_queue_depth{model="held"}') == 0
        frame = await conn.request({"type": "cancel", "id": "h3"})
        assert frame["id"] == "h3" and frame["code"] == "cancelled"
    finally:
        await conn.close()


def _gauge(port: int, name: str) -> float:
    """The value of metric line ``name`` (with its labels) of the server on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        line = next(x for x in answer.read().decode().splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


async def test_an_unload_ends_a_request_whose_execute_waits_for_its_cancel(tmp_path: Path) -> None:
    """``execute`` streams until its request is cancelled (it never returns before): unloading the
    model ends the request with ``shutting_down`` after ``--drain-timeout`` (the model then sees it
    cancelled and returns), and the version is unloaded: the unload does not wait for an execute
    that waits for the unload."""
    root = tmp_path / "repo"
    _write(root, "held", HELD_PBTXT, HELD_PY)
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--drain-timeout", "0.2")
    try:
        conn = await Conn.open(proc.url)
        try:
            frame = await conn.request({"type": "predict", "id": "u", "model": "held", "inputs": [[0]]})
            assert frame["type"] == "response"
            answer = await conn.request({"type": "unload", "id": "adm", "model": "held"})
            assert answer["type"] == "unload", answer
            frame = await conn.recv(30)  # (the model gives up by itself after 60 s)
            assert frame["id"] == "u" and frame["type"] == "error" and frame["code"] == "shutting_down", frame
        finally:
            await conn.close()

        def unloaded() -> bool:
            status, _, body = _post(proc.port, "/v2/repository/index", {})
            return status == 200 and json.loads(body)[0]["state"] == "UNAVAILABLE"
        wait_until(unloaded, 30.0, what="the version to be unloaded")
    finally:
        proc.stop()


def test_triton_statistics_of_decoupled_requests_count_no_negative_queue_time(served) -> None:
    """Decoupled requests over HTTP generate and gRPC: the version's statistics' queue time is never
    negative (it was -1 s per request)."""
    port = served[0].port
    for _ in range(2):
        assert _post(port, "/v2/models/echo/generate", {"IN": 1, "OPT": 0})[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/echo/stats", timeout=30) as answer:
        stats = json.loads(answer.read())["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] >= 2 and stats["queue"]["ns"] >= 0, stats


def test_http_generate_gives_the_model_its_id_and_may_leave_out_an_optional_input(served) -> None:
    """Triton's generate: the request's ``id`` is the model's ``request_id()``, and an ``optional``
    input may be left out (the model gets none), as on every other transport."""
    port = served[0].port
    status, _, body = _post(port, "/v2/models/echo/generate", {"id": "abcd", "IN": 0, "OPT": 10})
    assert status == 200 and json.loads(body) == {"id": "abcd", "model_name": "echo", "model_version": "1", "OUT": 14}
    status, _, body = _post(port, "/v2/models/echo/generate_stream", {"id": "abc", "IN": 0})
    assert status == 200 and _events(body) == [{"id": "abc", "model_name": "echo", "model_version": "1", "OUT": 3}]
    status, _, body = _post(port, "/v2/models/echo/generate", {"OPT": 1})
    assert status == 400 and "no field 'IN'" in json.loads(body)["error"]


def test_http_generate_bounds_the_id_it_echoes_in_every_event(served) -> None:
    """The ``id`` is echoed in every event of the stream: it was unbounded (a body's worth, ~1 MiB,
    sent again with each of the model's responses); it is at most 256 characters, as on a
    generative model's ``generate``, refused before anything is queued."""
    port = served[0].port
    for path in ("/v2/models/repeat_int32/generate_stream", "/v2/models/repeat_int32/generate"):
        status, _, body = _post(port, path, {"id": "i" * 257, "IN": [1, 2, 3], "DELAY": [0, 0, 0], "WAIT": 0})
        assert status == 400 and json.loads(body)["error"] == "'id' must be a string of at most 256 characters", body
    status, _, body = _post(port, "/v2/models/repeat_int32/generate_stream",
                            {"id": "i" * 256, "IN": [1, 2], "DELAY": [0, 0], "WAIT": 0})
    assert status == 200 and [e["id"] for e in _events(body)] == ["i" * 256] * 2


def test_bls_from_a_thread_the_model_started_runs_as_in_triton(served) -> None:
    """A decoupled model's response thread calling ``exec()`` (Triton's decoupled models may): the
    call runs as the model's, and is answered (here: a decoupled model as its target, refused by
    the gateway as an error response, not an exception in the thread)."""
    status, _, body = _post(served[0].port, "/v2/models/bls_thread/generate", {"IN": 1})
    message = json.loads(body)["error"]
    assert status == 500 and "exec() answered: " in message, (status, message)
    assert "Model square_int32 is using the decoupled" in message, message


async def test_high_priority_requests_wait_in_their_order(served) -> None:
    """``priority`` 1 requests waiting for the one instance start in the order they came (the later
    one went first), and before a ``priority`` 0 one that came earlier."""
    conn = await Conn.open(served[0].url)

    async def next_started(running: str) -> str:
        """Cancel ``running``: the request that starts on the instance it frees."""
        await conn.send({"type": "cancel", "id": running})
        frames = [await conn.recv(30), await conn.recv(30)]
        assert frames[0]["id"] == running and frames[0]["code"] == "cancelled", frames
        assert frames[1]["type"] == "response", frames
        return frames[1]["id"]

    try:
        frame = await conn.request({"type": "predict", "id": "w0", "model": "held", "inputs": [[0]]})
        assert frame["type"] == "response"
        for rid in ("hi1", "hi2"):
            await conn.send({"type": "predict", "id": rid, "model": "held", "inputs": [[0]], "priority": 1})
        assert await next_started("w0") == "hi1"
        await conn.send({"type": "predict", "id": "lo", "model": "held", "inputs": [[0]]})
        assert await next_started("hi1") == "hi2"
        await conn.send({"type": "predict", "id": "hi3", "model": "held", "inputs": [[0]], "priority": 1})
        assert await next_started("hi2") == "hi3"
        assert await next_started("hi3") == "lo"
        frame = await conn.request({"type": "cancel", "id": "lo"})
        assert frame["code"] == "cancelled"
    finally:
        await conn.close()


def test_a_slow_consumer_of_string_responses_is_bounded_by_their_bytes(served) -> None:
    """Responses of one 512 KiB string each to a gRPC client that reads none: their strings' bytes
    count against the 1 MB bound (only the 8-byte pointers of the object array did: all 100, 50 MB,
    were queued), so the request ends ``overloaded`` and the model sees it cancelled early."""
    s = _Stream(served[1])
    s.gate.clear()
    try:
        s.send("strings", "str", IN=np.array([0], np.int32))
        mark = wait_until(lambda: next(served[2].glob("strings-*"), None), 60.0, what="the model to be cancelled")
        assert int(mark.name.split("-")[1]) < 100
        s.gate.set()
        got = s.until_final()
        assert "slow consumer" in got[-1][1].message()
    finally:
        s.close()


# --------------------------------------------------------------------------- responses carrying a subset


def _names(result: Any) -> list[str]:
    return [o.name for o in result.get_response().outputs]


def test_grpc_responses_carry_the_outputs_each_response_has(stream) -> None:
    """A response may carry any subset of the model's outputs (none included): each stream message
    has exactly those (an output config.pbtxt does not list is left out, as the Python backend prunes
    it); the last one, with no outputs, is the FINAL response."""
    stream.send("partial", "p", IN=_i32(0))
    got = stream.until_final()
    assert all(error is None for _, error in got)
    results = [r for r, _ in got]
    assert [_names(r) for r in results] == [["A"], ["B"], ["A", "B"], []]
    assert results[0].as_numpy("A").tolist() == [1] and results[1].as_numpy("B").tolist() == [2.0, -2.0]
    assert results[2].as_numpy("A").tolist() == [3] and results[2].as_numpy("B").tolist() == [4.0, -4.0]
    assert [r.get_response().parameters["triton_final_response"].bool_param for r in results] == \
        [False, False, False, True]


def test_grpc_requested_outputs_are_those_of_them_each_response_has(stream) -> None:
    """A client that asks for B only (OIP ``outputs``) gets B where a response has it, and the
    other responses with no outputs (each response is still one message)."""
    x = tgrpc.InferInput("IN", [1], "INT32")
    x.set_data_from_numpy(_i32(0))
    stream.client.async_stream_infer("partial", [x], request_id="b", outputs=[tgrpc.InferRequestedOutput("B")])
    results = [r for r, _ in stream.until_final()]
    assert [_names(r) for r in results] == [[], ["B"], ["B"], []]
    assert results[2].as_numpy("B").tolist() == [4.0, -4.0]


@pytest.mark.parametrize(("mode", "problem"), [
    (1, "output 'B' has shape [1, 3]; expected [1, 2]"),
    (2, "output 'A' has dtype float32; expected int32"),
])
def test_a_wrong_output_in_a_subset_is_still_refused(stream, mode: int, problem: str) -> None:
    stream.send("partial", "w", IN=_i32(mode))
    (_, error), = stream.until_final()
    assert error is not None and f"model 'partial' sent a wrong response: {problem}" in error.message()


async def test_websocket_responses_carry_the_outputs_each_response_has(served) -> None:
    """WebSocket ``response`` frames: ``outputs`` by name, only those the response has (``{}``: none)."""
    async with Client(served[0].url) as client:
        stream = client.predict_responses("partial", [[0]])
        got = [(r.outputs, r.final) async for r in stream]
        assert got == [({"A": [[1]]}, False), ({"B": [[2.0, -2.0]]}, False),
                       ({"A": [[3]], "B": [[4.0, -4.0]]}, False), ({}, True)]
        assert stream.summary.responses == 4


def test_http_generate_stream_events_carry_the_outputs_each_response_has(served) -> None:
    status, _, body = _post(served[0].port, "/v2/models/partial/generate_stream", {"IN": 0})
    head = {"model_name": "partial", "model_version": "1"}
    assert status == 200
    assert _events(body) == [{**head, "A": 1}, {**head, "B": [2.0, -2.0]}, {**head, "A": 3, "B": [4.0, -4.0]}, head]


# --------------------------------------------------------------------------- model_warmup

#: Batched (max_batch_size 4); each request's IN logged as it starts, then, from a thread after
#: ``execute`` returned, one response per row and FINAL, logged just before the FINAL.  IN 7: an
#: error response instead (INVALID_ARG); IN 8: a response whose OUT is FP32 (wrong).
WARM_PBTXT = ('backend: "python"\nmax_batch_size: 4\n' + DECOUPLED + ONE_IN
              + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
              + 'model_warmup [ { name: "twice" batch_size: 2 count: 2\n'
              + '  inputs { key: "IN" value: { data_type: TYPE_INT32 dims: [ 1 ] input_data_file: "in.bin" } } } ]\n')
WARM_PY = '''
import json
import os
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.log = os.path.join(args["model_repository"], "calls.jsonl")

    def _note(self, what, value):
        with open(self.log, "a") as f:
            f.write(json.dumps({what: value}) + "\\n")

    def execute(self, requests):
        request = requests[0]
        x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        self._note("in", x.tolist())
        sender = request.get_response_sender()

        def run():
            if int(x[0, 0]) == 7:
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("seven is refused", pb_utils.TritonError.INVALID_ARG)))
                return
            out = x.astype(np.float32 if int(x[0, 0]) == 8 else np.int32)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
            self._note("final", x.tolist())
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run).start()
'''


def test_model_warmup_runs_for_a_decoupled_model_and_a_failing_sample_fails_its_load(tmp_path: Path) -> None:
    """config.pbtxt's ``model_warmup`` on a decoupled model, as Triton runs it: ``count`` times,
    ``batch_size`` requests of one row, each awaited until its FINAL (sent from the model's thread
    after ``execute`` returned) before the version is ready; a sample answered with an error
    response, or with a wrong response, fails that version's load naming the sample and the
    problem."""
    root = tmp_path / "repository"
    for name, value in (("warm", 5), ("refused", 7), ("wrong", 8)):
        _write(root, name, WARM_PBTXT, WARM_PY)
        (root / name / "warmup").mkdir()
        (root / name / "warmup" / "in.bin").write_bytes(np.array([value], "<i4").tobytes())
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        client = tgrpc.InferenceServerClient(grpc_address(proc))
        try:
            assert client.is_model_ready("warm")
            calls = [json.loads(line) for line in (root / "warm" / "calls.jsonl").read_text().splitlines()]
            assert calls == [{"in": [[5]]}, {"final": [[5]]}] * 4  # 2 runs x 2 requests, one after the other
            rows = {r["name"]: r for r in client.get_model_repository_index(as_json=True)["models"]}
            for name, problem in (("refused", "model 'refused' failed: TritonError: seven is refused"),
                                  ("wrong", "model 'wrong' sent a wrong response: output 'OUT' has dtype float32; "
                                            "expected int32")):
                assert not client.is_model_ready(name)
                assert rows[name]["state"] == "UNAVAILABLE"
                assert f"model_warmup sample 'twice' failed: {problem}" in rows[name]["reason"], rows[name]
        finally:
            client.close()
        s = _Stream(grpc_address(proc))  # the warmed-up version serves
        try:
            s.send("warm", "w", IN=np.array([[3]], np.int32))
            got = s.until_final()
            assert [r.as_numpy("OUT").tolist() for r, _ in got[:-1]] == [[[3]]]
        finally:
            s.close()
    finally:
        proc.stop()


async def test_a_levels_own_policy_without_max_queue_size_does_not_take_the_default_policys_bound(
        tmp_path: Path) -> None:
    """Triton's ``PolicyQueue``: a level whose own ``priority_queue_policy`` sets ``max_queue_size: 0``
    has no bound, whatever ``default_queue_policy``'s is (as a predict model's queue keeps it).  The
    default policy's bound (1) still holds at the other level."""
    from tests.test_repository_triton_python import _load
    from wsserve.batching import PriorityLevels, QueuePolicy
    from wsserve.decoupled import DecoupledWorker
    from wsserve.errors import Overloaded

    model = _load(tmp_path, "gated", ERRS_PBTXT + "instance_group [{ count: 1 }]\n", GATED_PY)
    gate = SimpleNamespace(**type(model._instances[0]).execute.__globals__)  # model.py's started, release
    levels = PriorityLevels(2, 2, configured=True, policies=((1, QueuePolicy(None)),))
    worker = DecoupledWorker(model, name="gated", instances=1, max_queue_requests=1, drain_timeout_s=0.0,
                             priorities=levels)
    worker.start()
    try:
        held, first, second, low, refused = _Sink(1), _Sink(2), _Sink(3), _Sink(4), _Sink(5)
        worker.submit(held)
        await _until(lambda: gate.started == [1])
        worker.submit(first, priority=1)
        worker.submit(second, priority=1)  # level 1: no bound of its own
        worker.submit(low, priority=2)
        with pytest.raises(Overloaded, match="priority level 2"):
            worker.submit(refused, priority=2)  # level 2: the default policy's bound, 1
        gate.release.set()
        await _until(lambda: all(s.finished for s in (held, first, second, low)))
        assert gate.started == [1, 2, 3, 4]
    finally:
        gate.release.set()
        await worker.close()
        model.close()


def test_the_configuration_reports_a_decoupled_models_priority_levels_and_queue_policies(served) -> None:
    """A decoupled model applies its config.pbtxt's priority levels and queue policies: Triton's
    configuration (HTTP and gRPC) reports them, not wsserve's two levels and no timeout."""
    from tests.support import http_get

    status, _, body = http_get(f"{served[0].http}/v2/models/delaying/config")
    assert status == 200, body
    db = json.loads(body)["dynamic_batching"]
    assert (db["priority_levels"], db["default_priority_level"]) == (3, 2)
    assert db["default_queue_policy"] == {"timeout_action": "DELAY", "default_timeout_microseconds": 2000000,
                                          "allow_timeout_override": False, "max_queue_size": 8}
    assert db["priority_queue_policy"] == {"1": {"timeout_action": "REJECT", "default_timeout_microseconds": 1000000,
                                                 "allow_timeout_override": False, "max_queue_size": 4}}
    client = tgrpc.InferenceServerClient(served[1])
    try:
        config = client.get_model_config("delaying").config
        assert config.model_transaction_policy.decoupled
        assert config.dynamic_batching.priority_levels == 3
        assert config.dynamic_batching.default_queue_policy.timeout_action == \
            type(config.dynamic_batching.default_queue_policy).DELAY
    finally:
        client.close()


#: IN [rows, 1] -> one response OUT = IN, then FINAL, both sent from ``execute``; up to 4 rows a request.
ROWS_PBTXT = ('backend: "python"\nmax_batch_size: 4\n' + DECOUPLED + ONE_IN
              + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n')
ROWS_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def _histogram(port: int, name: str, model: str) -> dict[str, float]:
    """Histogram ``name``'s samples for ``model`` on the server on ``port``: ``le=<bound>`` per
    bucket, ``count`` and ``sum`` (empty when the model has none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        lines = answer.read().decode().splitlines()
    out: dict[str, float] = {}
    for line in lines:
        sample, _, value = line.rpartition(" ")
        if not sample.startswith(name + "_") or f'model="{model}"' not in sample:
            continue
        kind = sample[len(name) + 1:].split("{")[0]
        if kind == "bucket":
            out["le=" + sample.split('le="')[1].split('"')[0]] = float(value)
        else:
            out[kind] = float(value)
    return out


def test_each_execute_counts_its_rows_in_the_batch_size_histogram(tmp_path: Path) -> None:
    """A decoupled model's executes are batches as a predictive model's are: each counts once, with
    its request's rows, in ``wsserve_batch_size`` and ``wsserve_batch_compute_seconds`` (labelled
    with the model), as docs/PROTOCOL.md's Metrics table says."""
    root = tmp_path / "repository"
    _write(root, "rows", ROWS_PBTXT, ROWS_PY)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        s = _Stream(grpc_address(proc))
        try:
            for i, n in enumerate((1, 3, 2)):
                s.send("rows", f"r{i}", IN=np.arange(n, dtype=np.int32).reshape(n, 1))
                got = s.until_final()
                assert got[0][1] is None and got[0][0].as_numpy("OUT").tolist() == [[v] for v in range(n)], got
        finally:
            s.close()
        sizes = wait_until(lambda: (h := _histogram(proc.port, "wsserve_batch_size", "rows")).get("count") == 3 and h,
                           30.0, what="three executes of model 'rows' in wsserve_batch_size")
        assert sizes["sum"] == 6.0, sizes
        assert (sizes["le=1.0"], sizes["le=2.0"], sizes["le=4.0"], sizes["le=+Inf"]) == (1.0, 2.0, 3.0, 3.0), sizes
        compute = _histogram(proc.port, "wsserve_batch_compute_seconds", "rows")
        assert compute["count"] == 3.0 and compute["sum"] >= 0.0, compute
    finally:
        proc.stop()


class _Observer:
    """A batch observer recording each ``on_batch``; ``fail``: it raises after recording."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[tuple[str, int]] = []
        self.fail = fail

    def on_batch(self, model: str, rows: int, compute_s: float) -> None:
        self.batches.append((model, rows))
        if self.fail:
            raise RuntimeError("the observer broke")


async def test_a_failing_batch_observer_does_not_stall_the_next_execute(tmp_path: Path) -> None:
    """The observer raising on an execute (metrics are not the requests' business): the execute's
    requests are still released and the one waiting for the instance still runs."""
    from tests.test_repository_triton_python import _load
    from wsserve.decoupled import DecoupledWorker

    model = _load(tmp_path, "gated", ERRS_PBTXT + "instance_group [{ count: 1 }]\n", GATED_PY)
    gate = SimpleNamespace(**type(model._instances[0]).execute.__globals__)  # model.py's started, release
    observer = _Observer(fail=True)
    worker = DecoupledWorker(model, name="gated", instances=1, drain_timeout_s=0.0, observer=observer)
    worker.start()
    try:
        first, second = _Sink(1), _Sink(2)
        worker.submit(first)
        worker.submit(second)  # waits: the one instance runs the first
        await _until(lambda: gate.started == [1])
        gate.release.set()
        await _until(lambda: second.finished)
        assert gate.started == [1, 2] and first.error is None and second.error is None
        assert second.responses == [([[2]], False), (None, True)]
        assert observer.batches == [("gated", 1), ("gated", 1)]
    finally:
        gate.release.set()
        await worker.close()
        model.close()


async def test_an_execute_cancelled_by_close_before_it_ran_is_not_counted(tmp_path: Path) -> None:
    """:meth:`close` cancels an execute handed to the instance's thread that had not begun: the model
    never ran it, so the observer (``wsserve_batch_size``) does not count it; the one that ran counts once."""
    from tests.test_repository_triton_python import _load
    from wsserve.decoupled import DecoupledWorker

    model = _load(tmp_path, "gated", ERRS_PBTXT + "instance_group [{ count: 1 }]\n", GATED_PY)
    gate = SimpleNamespace(**type(model._instances[0]).execute.__globals__)  # model.py's started, release
    gate.release.set()
    observer = _Observer()
    worker = DecoupledWorker(model, name="gated", instances=1, drain_timeout_s=0.0, observer=observer)
    worker.start()
    interval = sys.getswitchinterval()
    try:
        first, second = _Sink(1), _Sink(2)
        worker.submit(first)
        await _until(lambda: first.finished and worker._running == 0)
        threads = worker._executor
        await _until(lambda: threads._idle_semaphore._value == 1)  # its thread is back for work
        # The loop's thread keeps the GIL from the hand-off to close()'s cancel: the instance's thread
        # cannot take the second execute first.
        sys.setswitchinterval(1000.0)
        worker.submit(second)
        await worker.close()
        sys.setswitchinterval(interval)
        await _until(lambda: worker._running == 0)
        assert gate.started == [1], "the second execute ran: the test did not get the cancel in first"
        assert second.error is not None and second.error.code == "shutting_down"
        assert observer.batches == [("gated", 1)]
    finally:
        sys.setswitchinterval(interval)
        await worker.close()
        model.close()


# --------------------------------------------------------------------------- queue time


def _queue_figures(port: int, model: str) -> tuple[float, float, int, int]:
    """``wsserve_queue_duration_seconds{model}``'s count and sum, and the version's Triton statistics'
    ``queue`` count and ns."""
    m = scrape_metrics(f"http://127.0.0.1:{port}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=30) as answer:
        queue_stats = json.loads(answer.read())["model_stats"][0]["inference_stats"]["queue"]
    return (m.get("wsserve_queue_duration_seconds_count", model=model),
            m.get("wsserve_queue_duration_seconds_sum", model=model), int(queue_stats["count"]), int(queue_stats["ns"]))


def _hold_gate(port: int, marks: Path, rid: str, send_rest: Any) -> None:
    """With the gate model's one instance held by request ``rid`` (already sent): ``send_rest()``,
    wait until its 2 requests wait for the instance, then let ``rid`` go on."""
    wait_until(lambda: (marks / f"running-{rid}").exists(), 30.0, what=f"{rid}'s execute to start")
    send_rest()
    wait_until(lambda: scrape_metrics(f"http://127.0.0.1:{port}").get("wsserve_queue_depth", model="gate") == 2,
               30.0, what="2 requests waiting for the gate model's instance")
    (marks / f"open-{rid}").write_text("yes")


def _assert_queued(before: tuple[float, float, int, int], after: tuple[float, float, int, int], n: int) -> None:
    """``n`` more requests in the queue histogram and the statistics' queue, with time (2 of them
    waited for the held instance: their queue time cannot be 0)."""
    assert after[0] - before[0] == n, (before, after)
    assert after[1] > before[1], (before, after)
    assert after[2] - before[2] == n, (before, after)
    assert after[3] > before[3], (before, after)


def test_grpc_decoupled_requests_count_their_queue_time(served) -> None:
    """Three ModelStreamInfer requests to a decoupled model of one instance, two waiting behind the
    first: ``wsserve_queue_duration_seconds`` counts all three, and the statistics' ``queue`` has
    their time (before, a decoupled request over gRPC had no queue time: not in the histogram, 0 ns)."""
    proc, address, marks = served
    before = _queue_figures(proc.port, "gate")
    s = _Stream(address)
    try:
        s.send("gate", "gq-1", IN=_i32(1))
        _hold_gate(proc.port, marks, "gq-1", lambda: [s.send("gate", f"gq-{v}", IN=_i32(v)) for v in (2, 3)])
        got = [s.results.get(timeout=60) for _ in range(3)]
    finally:
        s.close()
    assert all(error is None for _, error in got), got
    assert sorted(r.as_numpy("OUT").tolist()[0] for r, _ in got) == [1, 2, 3]
    assert all(r.get_response().parameters["triton_final_response"].bool_param for r, _ in got)
    _assert_queued(before, _queue_figures(proc.port, "gate"), 3)


def test_http_generate_decoupled_requests_count_their_queue_time(served) -> None:
    """The same over HTTP (Triton's generate and generate_stream): three requests, two waiting behind
    the first, all three in the queue histogram and the statistics' queue with their time (before:
    not in the histogram, 0 ns)."""
    proc, _, marks = served
    port = proc.port
    before = _queue_figures(port, "gate")
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(_post, port, "/v2/models/gate/generate", {"id": "hq-1", "IN": 1})
        rest: list[Any] = []
        _hold_gate(port, marks, "hq-1", lambda: rest.extend([
            pool.submit(_post, port, "/v2/models/gate/generate_stream", {"id": "hq-2", "IN": 2}),
            pool.submit(_post, port, "/v2/models/gate/generate", {"id": "hq-3", "IN": 3})]))
        answers = [f.result(timeout=60) for f in (first, *rest)]
    assert [a[0] for a in answers] == [200, 200, 200], answers
    assert json.loads(answers[0][2])["OUT"] == 1 and json.loads(answers[2][2])["OUT"] == 3
    assert answers[1][1].startswith("text/event-stream") and _events(answers[1][2]) == [
        {"id": "hq-2", "model_name": "gate", "model_version": "1", "OUT": 2}], answers[1]
    _assert_queued(before, _queue_figures(port, "gate"), 3)


async def test_websocket_decoupled_requests_count_their_measured_queue_time(served) -> None:
    """Over the WebSocket the queue time is the one measured too (before: 0 s for every request,
    counted also for one that never ran)."""
    proc, _, marks = served
    before = await asyncio.to_thread(_queue_figures, proc.port, "gate")
    conn = await Conn.open(proc.url)
    loop = asyncio.get_running_loop()

    async def send_rest() -> None:
        for v in (2, 3):
            await conn.send({"type": "predict", "id": f"wq-{v}", "model": "gate", "inputs": [[v]]})
    try:
        await conn.send({"type": "predict", "id": "wq-1", "model": "gate", "inputs": [[1]]})
        await asyncio.to_thread(_hold_gate, proc.port, marks, "wq-1",
                                lambda: asyncio.run_coroutine_threadsafe(send_rest(), loop).result(30))
        frames = [await conn.recv(60) for _ in range(6)]
    finally:
        await conn.close()
    assert sorted((f["id"], f["type"]) for f in frames) == [
        (f"wq-{v}", t) for v in (1, 2, 3) for t in ("done", "response")], frames
    _assert_queued(before, await asyncio.to_thread(_queue_figures, proc.port, "gate"), 3)


async def test_a_websocket_request_that_ends_while_waiting_has_no_queue_time(served) -> None:
    """A WebSocket request cancelled while it waits for the held model's one instance is not observed
    in ``wsserve_queue_duration_seconds`` (its execute never started); the running one, cancelled
    after its execute started, is (before, both were: 0 s each)."""
    port = served[0].port
    before = (await asyncio.to_thread(scrape_metrics, f"http://127.0.0.1:{port}")).get(
        "wsserve_queue_duration_seconds_count", model="held")
    conn = await Conn.open(served[0].url)
    try:
        first = await conn.request({"type": "predict", "id": "qn0", "model": "held", "inputs": [[0]]})
        assert first["type"] == "response"
        await conn.send({"type": "predict", "id": "qn1", "model": "held", "inputs": [[0]]})
        frame = await conn.request({"type": "cancel", "id": "qn1"})
        assert frame["id"] == "qn1" and frame["code"] == "cancelled", frame
        frame = await conn.request({"type": "cancel", "id": "qn0"})
        assert frame["id"] == "qn0" and frame["code"] == "cancelled", frame
    finally:
        await conn.close()
    after = (await asyncio.to_thread(scrape_metrics, f"http://127.0.0.1:{port}")).get(
        "wsserve_queue_duration_seconds_count", model="held")
    assert after - before == 1, (before, after)


async def test_on_started_is_told_once_on_the_loop_thread_for_a_rescheduled_request() -> None:
    """A request run by three executes (rescheduled twice): its sink's ``on_started`` is called once,
    on the loop's thread, before its first execute ran and before any response, with its wait (>= 0);
    a sink without ``on_started`` (an ensemble step's, a BLS call's) runs the same (before: never called)."""
    from wsserve.decoupled import DecoupledWorker
    from wsserve.reschedule import RELEASE_ALL, RELEASE_RESCHEDULE

    class Rescheduling:
        """Reschedules each request twice, then answers FINAL alone."""
        iterative_sequence = True

        def __init__(self) -> None:
            self.executes: dict[str, int] = {}

        def execute_decoupled(self, inputs: Any, request_id: str, stream: Any) -> int:
            self.executes[request_id] = self.executes.get(request_id, 0) + 1
            if self.executes[request_id] < 3:
                return RELEASE_RESCHEDULE
            stream.respond(None, True)
            return RELEASE_ALL

        def execute_decoupled_batch(self, requests: list[tuple[Any, str, Any]]) -> list[int]:
            return [self.execute_decoupled(*request) for request in requests]

    class Told(_Sink):
        def __init__(self, x: int, model: Rescheduling) -> None:
            super().__init__(x)
            self.model = model
            self.started: list[tuple[float, int, int, int]] = []

        def on_started(self, queue_s: float) -> None:
            self.started.append((queue_s, threading.get_ident(), self.model.executes.get(self.request_id, 0),
                                 len(self.responses)))

    model = Rescheduling()
    worker = DecoupledWorker(model, name="resched", instances=1, drain_timeout_s=0.0, max_batch_rows=4)
    worker.start()
    try:
        told, plain = Told(1, model), _Sink(2)
        worker.submit(told)
        worker.submit(plain)
        await _until(lambda: told.finished and plain.finished)
        assert model.executes == {"1": 3, "2": 3}
        assert told.error is None and told.responses == [(None, True)]
        assert plain.error is None and plain.responses == [(None, True)]
        assert len(told.started) == 1, told.started
        queue_s, thread, executes, responses = told.started[0]
        assert queue_s >= 0 and thread == threading.get_ident() and executes == 0 and responses == 0
    finally:
        await worker.close()
