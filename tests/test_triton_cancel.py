"""Request cancellation for a non-decoupled Triton Python model: ``request.is_cancelled()`` in
``execute`` becomes true once that request ended on wsserve's side (the WebSocket ``cancel``, its
connection closed, a gRPC cancel, an HTTP client gone, its deadline), each request of a batch its
own; what ``execute`` still answers for it is dropped (its client had its one terminal frame), the
batch's other requests answered as usual.  A real server on loopback; the model records what it
saw in a directory (no timing asserts: waits on those records)."""

from __future__ import annotations

import json
import queue
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")

from tests.support import ServerProcess, request_bytes, wait_until  # noqa: E402
from tests.support.conn import Conn  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402

#: IN [1] INT32 -> OUT [1] INT32, batches of up to 8 requests, one instance (one execute at a time).
PBTXT = '''backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 } ]
dynamic_batching { }
parameters { key: "marks" value: { string_value: "MARKS" } }
'''
#: (wsserve's warm-up, one request without an id, is answered at once.)  Each ``execute`` writes ``started-<id>`` (the batch's ids, JSON) for each request.  A request with
#: IN 0 polls its own ``is_cancelled()`` (a bounded number of times), writes ``cancelled-<id>`` once
#: it is, and is answered OUT 99 all the same (to be dropped); IN -1 the same, answered by a
#: response without outputs.  ``runs-<id>`` gets a line per ``execute`` of the request.  A request with IN > 0 waits (bounded)
#: until every IN 0 request of its batch is cancelled, writes ``kept-<id>`` holding its own
#: ``is_cancelled()``, and is answered OUT 2 * IN.
MODEL_PY = '''
import json
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils

POLLS = 3000  # x 10 ms: bounded, the test fails rather than hangs


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def _wait(self, done):
        for _ in range(POLLS):
            if done():
                return True
            threading.Event().wait(0.01)
        return False

    def execute(self, requests):
        ids = [r.request_id() for r in requests]
        tensors = [pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() for r in requests]
        if ids == [""]:  # wsserve's warm-up (rows of zeros, no id): answered at once
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", tensors[0])])]
        values = [int(t[0, 0]) for t in tensors]
        for rid in ids:
            (self.marks / ("started-" + rid)).write_text(json.dumps(ids))
            with open(self.marks / ("runs-" + rid), "a") as runs:
                runs.write("run\\n")
        held = [r for r, v in zip(requests, values) if v <= 0]
        responses = []
        for r, rid, v in zip(requests, ids, values):
            if v <= 0:
                if self._wait(r.is_cancelled):
                    (self.marks / ("cancelled-" + rid)).write_text("yes")
                if v < 0:  # a cancelled request answered with no outputs at all
                    responses.append(pb_utils.InferenceResponse())
                    continue
                out = 99
            else:
                self._wait(lambda: all(h.is_cancelled() for h in held))
                (self.marks / ("kept-" + rid)).write_text(json.dumps(r.is_cancelled()))
                out = 2 * v
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[out]], np.int32))]))
        return responses
'''

#: An ensemble of one step, the waiter (its request id passed on to the step, as Triton's).
ENSEMBLE_PBTXT = '''platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling { step [ { model_name: "waiter" model_version: -1
  input_map { key: "IN" value: "IN" } output_map { key: "OUT" value: "OUT" } } ] }
'''
#: Each request calls the waiter by BLS (request id ``bls-<id>``, a 2 s timeout) and answers its OUT,
#: or writes ``blserror-<id>`` (the BLS response's error) and answers the error.
CALLER_PY = '''
import json
from pathlib import Path
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def execute(self, requests):
        responses = []
        for r in requests:
            rid = r.request_id()
            if not rid:  # wsserve's warm-up
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]))
                continue
            call = pb_utils.InferenceRequest(model_name="waiter", requested_output_names=["OUT"],
                                             inputs=[pb_utils.get_input_tensor_by_name(r, "IN")],
                                             request_id="bls-" + rid, timeout=2000000)
            got = call.exec()
            if got.has_error():
                (self.marks / ("blserror-" + rid)).write_text(got.error().message())
                responses.append(pb_utils.InferenceResponse(error=got.error()))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(got, "OUT")]))
        return responses
'''

#: Keeps the requests of its last ``execute``; each request writes ``previous-<id>``: the kept
#: requests' ids and ``is_cancelled()`` (read after they were answered), and is answered OUT 2 * IN
#: (a negative IN: an error response, "negative").
KEEPER_PY = '''
import json
from pathlib import Path
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])
        self.previous = []

    def execute(self, requests):
        seen = [[p.request_id(), p.is_cancelled()] for p in self.previous]
        self.previous = list(requests)
        responses = []
        for r in requests:
            if r.request_id():
                (self.marks / ("previous-" + r.request_id())).write_text(json.dumps(seen))
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            if (x < 0).any():  # answered with an error response
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("negative")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", 2 * x)]))
        return responses
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    base = tmp_path_factory.mktemp("triton_cancel")
    root, marks = base / "model_repository", base / "marks"
    marks.mkdir()
    (root / "waiter" / "1").mkdir(parents=True)
    (root / "waiter" / "config.pbtxt").write_text(PBTXT.replace("MARKS", str(marks)))
    (root / "waiter" / "1" / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (root / "waiter_seq" / "1").mkdir(parents=True)  # the same model, stateful
    (root / "waiter_seq" / "config.pbtxt").write_text(PBTXT.replace("MARKS", str(marks)).replace(
        "dynamic_batching { }", "sequence_batching { max_sequence_idle_microseconds: 60000000 }"))
    (root / "waiter_seq" / "1" / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (root / "ens" / "1").mkdir(parents=True)  # an ensemble of one step: waiter
    (root / "ens" / "config.pbtxt").write_text(ENSEMBLE_PBTXT)
    (root / "caller" / "1").mkdir(parents=True)  # calls waiter (BLS) with a timeout
    (root / "caller" / "config.pbtxt").write_text(PBTXT.replace("MARKS", str(marks)))
    (root / "caller" / "1" / "model.py").write_text(textwrap.dedent(CALLER_PY))
    (root / "keeper" / "1").mkdir(parents=True)  # keeps its last batch's requests
    (root / "keeper" / "config.pbtxt").write_text(PBTXT.replace("MARKS", str(marks)))
    (root / "keeper" / "1" / "model.py").write_text(textwrap.dedent(KEEPER_PY))
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc), marks
    finally:
        proc.stop()


def _mark(marks: Path, name: str, what: str) -> str:
    return wait_until(lambda: (marks / name).exists() and (marks / name).read_text(), 60.0, what=what)


async def _answered_after(conn: Conn, rid: str, value: int) -> None:
    """A request sent after the others on ``conn`` is answered (the one instance ran it after them,
    so whatever they answered was delivered or dropped by then)."""
    await conn.send({"type": "predict", "id": rid, "model": "waiter", "inputs": [[value]]})
    _, frame = await conn.until_terminal(rid, 60.0)
    assert frame["type"] == "result" and frame["outputs"] == [[2 * value]], frame


async def test_websocket_cancel_is_seen_by_execute_and_its_answer_is_dropped(served) -> None:
    """``cancel`` of a running request: the client gets ``cancelled`` (its one terminal frame), the
    model's ``is_cancelled()`` turns true, and the answer it still returns reaches nobody."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "ws1", "model": "waiter", "inputs": [[0]]})
        _mark(marks, "started-ws1", "execute to start")
        frame = await conn.request({"type": "cancel", "id": "ws1"})
        assert frame["type"] == "error" and frame["id"] == "ws1" and frame["code"] == "cancelled", frame
        _mark(marks, "cancelled-ws1", "the model to see its request cancelled")
        await _answered_after(conn, "ws1-after", 3)
        assert [f for f in conn.frames if f.get("id") == "ws1"] == [frame]  # OUT 99 never sent
    finally:
        await conn.close()


async def test_closing_the_connection_cancels_its_running_request(served) -> None:
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "gone1", "model": "waiter", "inputs": [[0]]})
        _mark(marks, "started-gone1", "execute to start")
    finally:
        await conn.close()
    _mark(marks, "cancelled-gone1", "the model to see its request cancelled by the connection closing")


async def test_a_deadline_passing_while_execute_runs_cancels_the_request(served) -> None:
    """``timeout_ms`` passing while ``execute`` runs: ``deadline_exceeded``, and ``is_cancelled()``."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "late1", "model": "waiter", "inputs": [[0]], "timeout_ms": 3000})
        _, frame = await conn.until_terminal("late1", 60.0)
        assert frame["type"] == "error" and frame["code"] == "deadline_exceeded", frame
        assert (marks / "started-late1").exists()  # it ran (the deadline passed while it did)
        _mark(marks, "cancelled-late1", "the model to see its request past its deadline")
        await _answered_after(conn, "late1-after", 4)
        assert [f for f in conn.frames if f.get("id") == "late1"] == [frame]
    finally:
        await conn.close()


async def test_cancelling_one_request_of_a_batch_leaves_the_other_answered(served) -> None:
    """A request holds the one instance while two more queue behind it; they share the next
    ``execute``.  Cancelling one of them marks only it: the other is answered normally (and saw
    itself not cancelled), the cancelled one gets only its ``cancelled`` frame."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "hold", "model": "waiter", "inputs": [[0]]})
        _mark(marks, "started-hold", "the holding request to start")
        await conn.send({"type": "predict", "id": "keep", "model": "waiter", "inputs": [[5]]})
        await conn.send({"type": "predict", "id": "drop", "model": "waiter", "inputs": [[0]]})
        await conn.send({"type": "cancel", "id": "hold"})  # (read after both are queued)
        batch = json.loads(_mark(marks, "started-drop", "the batch of two to start"))
        assert sorted(batch) == ["drop", "keep"], batch  # (what this test is about)
        await conn.send({"type": "cancel", "id": "drop"})
        frames = await conn.collect({"hold", "keep", "drop"})
        assert [f["code"] for f in frames["hold"]] == ["cancelled"]
        assert [f["code"] for f in frames["drop"]] == ["cancelled"]
        assert [(f["type"], f["outputs"]) for f in frames["keep"]] == [("result", [[10]])]
        assert json.loads((marks / "kept-keep").read_text()) is False
        assert (marks / "cancelled-drop").exists()
        await _answered_after(conn, "batch-after", 6)
        assert [f["code"] for f in conn.frames if f.get("id") == "drop"] == ["cancelled"]
    finally:
        await conn.close()


async def test_a_stateful_models_request_cancelled_while_it_runs_is_seen_and_the_sequence_goes_on(served) -> None:
    """A stateful model's request runs on after its client cancelled it (its sequence's next request
    expects it to have run), but ``is_cancelled()`` tells the model; the sequence goes on."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "seq1", "model": "waiter_seq", "inputs": [[0]],
                         "sequence_id": 11, "sequence_start": True})
        _mark(marks, "started-seq1", "execute to start")
        cancelled = await conn.request({"type": "cancel", "id": "seq1"})
        assert cancelled["type"] == "error" and cancelled["code"] == "cancelled", cancelled
        _mark(marks, "cancelled-seq1", "the stateful model to see its request cancelled")
        await conn.send({"type": "predict", "id": "seq2", "model": "waiter_seq", "inputs": [[3]],
                         "sequence_id": 11, "sequence_end": True})
        _, frame = await conn.until_terminal("seq2", 60.0)
        assert frame["type"] == "result" and frame["outputs"] == [[6]], frame
        assert json.loads((marks / "kept-seq2").read_text()) is False
        assert [f for f in conn.frames if f.get("id") == "seq1"] == [cancelled]  # its OUT 99 dropped
    finally:
        await conn.close()


def _infer_input(value: int) -> Any:
    t = tgrpc.InferInput("IN", [1, 1], "INT32")
    t.set_data_from_numpy(np.array([[value]], np.int32))
    return t


def test_a_grpc_cancel_is_seen_by_execute(served) -> None:
    """tritonclient.grpc ``async_infer`` then ``cancel()``: the RPC ends CANCELLED and the model's
    ``is_cancelled()`` turns true."""
    _, address, marks = served
    client = tgrpc.InferenceServerClient(address)
    try:
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        call = client.async_infer("waiter", [_infer_input(0)], callback=lambda result, error: results.put((result, error)),
                                  request_id="grpc1")
        _mark(marks, "started-grpc1", "execute to start")
        call.cancel()
        result, error = results.get(timeout=60)
        assert result is None and "CANCELLED" in str(error.status()), error
        _mark(marks, "cancelled-grpc1", "the model to see its request cancelled over gRPC")
        answer = client.infer("waiter", [_infer_input(7)], request_id="grpc1-after")
        assert answer.as_numpy("OUT").tolist() == [[14]]
    finally:
        client.close()


def test_a_cancelled_grpc_stream_cancels_its_running_request(served) -> None:
    """A ModelStreamInfer stream's request to the model, the stream cancelled
    (``stop_stream(cancel_requests=True)``): the model's ``is_cancelled()`` turns true."""
    _, address, marks = served
    client = tgrpc.InferenceServerClient(address)
    try:
        client.start_stream(callback=lambda result, error: None)
        client.async_stream_infer("waiter", [_infer_input(0)], request_id="stream1")
        _mark(marks, "started-stream1", "execute to start")
        client.stop_stream(cancel_requests=True)
        _mark(marks, "cancelled-stream1", "the model to see its request cancelled with its stream")
    finally:
        client.close()


def test_an_http_client_gone_cancels_its_running_request(served) -> None:
    """An OIP ``/infer`` whose client closes its connection while ``execute`` runs."""
    proc, _, marks = served
    body = json.dumps({"id": "http1", "inputs": [{"name": "IN", "shape": [1, 1], "datatype": "INT32",
                                                  "data": [0]}]}).encode()
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=30)
    try:
        sock.sendall(request_bytes("POST", "/v2/models/waiter/infer", body, {"Content-Type": "application/json"}))
        _mark(marks, "started-http1", "execute to start")
    finally:
        sock.close()
    _mark(marks, "cancelled-http1", "the model to see its request cancelled by its HTTP client leaving")


async def test_an_ensembles_cancelled_request_is_cancelled_in_its_triton_python_step(served) -> None:
    """A WebSocket ``cancel`` of an ensemble request whose step (the waiter) runs: the step model's
    ``is_cancelled()`` turns true (as Triton's ensemble cancels its steps' requests)."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "ens1", "model": "ens", "inputs": [[0]]})
        _mark(marks, "started-ens1", "the step to start")
        frame = await conn.request({"type": "cancel", "id": "ens1"})
        assert frame["type"] == "error" and frame["code"] == "cancelled", frame
        _mark(marks, "cancelled-ens1", "the step model to see its request cancelled")
        await _answered_after(conn, "ens1-after", 2)
    finally:
        await conn.close()


async def test_a_bls_request_past_its_timeout_is_cancelled_in_the_called_model(served) -> None:
    """A BLS ``exec()`` with ``timeout`` the called model outlasts: the caller gets the error and the
    called model's ``is_cancelled()`` turns true."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "b1", "model": "caller", "inputs": [[0]]})
        _, frame = await conn.until_terminal("b1", 60.0)
        assert frame["type"] == "error" and "timed out" in frame["message"], frame
        assert "timed out" in _mark(marks, "blserror-b1", "the BLS call to fail")
        _mark(marks, "cancelled-bls-b1", "the called model to see its BLS request cancelled")
        await _answered_after(conn, "b1-after", 2)
    finally:
        await conn.close()


async def test_a_request_split_over_batches_is_cancelled_in_its_running_part(served) -> None:
    """A request of more rows than ``max_batch_size`` (9 > 8): its first part's ``execute`` sees the
    whole request's ``cancel``, and its later part never runs."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "split1", "model": "waiter", "inputs": [[0]] * 9})
        _mark(marks, "started-split1", "the first part to start")
        frame = await conn.request({"type": "cancel", "id": "split1"})
        assert frame["type"] == "error" and frame["code"] == "cancelled", frame
        _mark(marks, "cancelled-split1", "the first part to see its request cancelled")
        await _answered_after(conn, "split1-after", 2)
        assert [f for f in conn.frames if f.get("id") == "split1"] == [frame]
    finally:
        await conn.close()


def test_a_grpc_deadline_passing_while_execute_runs_cancels_the_request(served) -> None:
    """A ModelInfer with a client deadline the model outlasts: DEADLINE_EXCEEDED, and the model's
    ``is_cancelled()`` turns true."""
    _, address, marks = served
    client = tgrpc.InferenceServerClient(address)
    try:
        with pytest.raises(Exception) as raised:
            client.infer("waiter", [_infer_input(0)], request_id="gdl1", client_timeout=3.0)
        assert "DEADLINE" in str(raised.value).upper(), raised.value
        _mark(marks, "cancelled-gdl1", "the model to see its request past its gRPC deadline")
        answer = client.infer("waiter", [_infer_input(7)], request_id="gdl1-after")
        assert answer.as_numpy("OUT").tolist() == [[14]]
    finally:
        client.close()


async def test_a_request_answered_is_not_cancelled_when_read_after_its_execute(served) -> None:
    """A model keeping a request object past ``execute`` reads ``is_cancelled()`` false for a request
    that was answered (it ended, but nobody cancelled it)."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        for rid, value in (("k1", 1), ("k2", 2)):
            await conn.send({"type": "predict", "id": rid, "model": "keeper", "inputs": [[value]]})
            _, frame = await conn.until_terminal(rid, 60.0)
            assert frame["type"] == "result" and frame["outputs"] == [[2 * value]], frame
        assert json.loads(_mark(marks, "previous-k2", "the second request's execute")) == [["k1", False]]
    finally:
        await conn.close()



async def test_a_cancelled_request_answered_without_outputs_leaves_its_batch_alone(served) -> None:
    """A cancelled request whose ``execute`` answers it with a response holding no outputs (its
    answer is dropped anyway): the batch's other request is answered from that same ``execute``,
    not computed again alone (a bad answer for a live request would fail the batch)."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "hold2", "model": "waiter", "inputs": [[0]]})
        _mark(marks, "started-hold2", "the holding request to start")
        await conn.send({"type": "predict", "id": "keep2", "model": "waiter", "inputs": [[4]]})
        await conn.send({"type": "predict", "id": "empty2", "model": "waiter", "inputs": [[-1]]})
        await conn.send({"type": "cancel", "id": "hold2"})
        batch = json.loads(_mark(marks, "started-empty2", "the batch of two to start"))
        assert sorted(batch) == ["empty2", "keep2"], batch
        await conn.send({"type": "cancel", "id": "empty2"})
        frames = await conn.collect({"hold2", "keep2", "empty2"})
        assert [f["code"] for f in frames["empty2"]] == ["cancelled"]
        assert [(f["type"], f["outputs"]) for f in frames["keep2"]] == [("result", [[8]])]
        assert (marks / "runs-keep2").read_text().splitlines() == ["run"]  # one execute, not a second alone
    finally:
        await conn.close()


async def test_a_request_answered_with_an_error_response_is_not_cancelled_either(served) -> None:
    """A request ``execute`` answered with an error response (``InferenceResponse(error=...)``) was
    answered, not cancelled: a model keeping it reads ``is_cancelled()`` false, as for any answer."""
    _, _, marks = served
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "e1", "model": "keeper", "inputs": [[-1]]})
        _, frame = await conn.until_terminal("e1", 60.0)
        assert frame["type"] == "error" and "negative" in frame["message"], frame
        await conn.send({"type": "predict", "id": "e2", "model": "keeper", "inputs": [[2]]})
        _, frame = await conn.until_terminal("e2", 60.0)
        assert frame["type"] == "result" and frame["outputs"] == [[4]], frame
        assert json.loads(_mark(marks, "previous-e2", "the second request's execute")) == [["e1", False]]
    finally:
        await conn.close()
