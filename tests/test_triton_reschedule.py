"""Request rescheduling (Triton's ``set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)``) and
``sequence_batching { iterative_sequence: true }``: a decoupled Triton Python model that sends one
token per ``execute`` and reschedules its request until it is done (as python_backend's
examples/request_rescheduling), served on loopback over the WebSocket protocol and tritonclient's
gRPC stream; its requests batched together (the model records each ``execute``'s request ids);
Triton's rules (no ``iterative_sequence``: an error; a non-decoupled model's ``None``), the
``--max-reschedules`` bound, and a cancel, a deadline or a disconnect while the request is in
the middle."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
thttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402
from wsserve_client import Client  # noqa: E402

from tests.support import ServerProcess, wait_until, wait_until_async  # noqa: E402
from tests.support.conn import Conn  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_triton_decoupled import _gauge, _histogram, _Stream  # noqa: E402
from wsserve import reschedule  # noqa: E402
from wsserve.config import ServerConfig  # noqa: E402
from wsserve.repository import ConfigError  # noqa: E402
from wsserve.repository import triton_pb_utils as pb  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402

#: The server's bound in these tests (``--max-reschedules``): a request of IN 6 needs 5 reschedules.
MAX = 5

IO = ('input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
      'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
      'instance_group [ { count: 1 kind: KIND_CPU } ]\n'
      'parameters { key: "marks" value: { string_value: "MARKS" } }\n')
ITERATIVE = "sequence_batching { iterative_sequence: true }\n"
DECOUPLED = "model_transaction_policy { decoupled: true }\n"
ITER_PBTXT = 'backend: "python"\nmax_batch_size: 8\n' + DECOUPLED + ITERATIVE + IO
#: IN n: n responses OUT n-1, ..., 0, one per execute, the last flagged FINAL; the request is
#: rescheduled after each other one.  Each execute appends its requests' ids to ``batches``
#: (with whether the model already knew that request object), then waits while ``hold`` exists.
#: A request seen cancelled is noted (``cancelled-<id>``) and released.  Once it decided (sent and
#: flagged), the execute notes ``decided-<id>`` and waits while ``late-<id>`` exists, for each of its
#: requests that has one.
ITER_PY = '''
import json
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])
        self.left = {}  # id(request) -> tokens still to send
        self.live = {}  # id(request) -> the request (the same object comes back when rescheduled)

    def execute(self, requests):
        with (self.marks / "batches").open("a") as f:
            f.write(json.dumps([[r.request_id(), id(r) in self.left] for r in requests]) + "\\n")
        while (self.marks / "hold").exists():
            threading.Event().wait(0.01)
        for request in requests:
            key = id(request)
            if key not in self.left:
                self.live[key] = request
                self.left[key] = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(-1)[0])
            if request.is_cancelled():
                (self.marks / ("cancelled-" + request.request_id())).write_text("yes")
                del self.left[key], self.live[key]
                continue
            self.left[key] -= 1
            out = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[self.left[key]]], np.int32))])
            sender = request.get_response_sender()
            if self.left[key] <= 0:
                sender.send(out, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                del self.left[key], self.live[key]
            else:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                sender.send(out)
        late = [self.marks / ("late-" + r.request_id()) for r in requests]
        for path in late:  # past its decisions, before it returns: noted, then it waits
            if path.exists():
                (self.marks / ("decided-" + path.name[5:])).write_text("")
        while any(path.exists() for path in late):
            threading.Event().wait(0.01)
        return None
'''
#: Not decoupled: IN 0 answered OUT 0; IN > 0 rescheduled with None at its place (Triton's rule).
PLAIN_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if n.any():
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(None)
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros_like(n))]))
        return responses
'''


#: Not decoupled, ``iterative_sequence`` (Triton's non-decoupled request rescheduling): a request of
#: IN k is answered OUT k after k executes, rescheduled with None at its place before.  Each execute
#: appends ``[[request id, known], ...]`` to ``loops`` (known: the model already held that request
#: object), then waits while ``hold`` exists (or ``hold-<id>-<n>``, n: that request's execute, from 1).
#: A request seen cancelled is noted and answered OUT -1.  Once it decided, the execute notes
#: ``decided-<id>`` and waits while ``late-<id>`` exists, for each of its requests that has one.
LOOP_PBTXT = ('backend: "python"\nmax_batch_size: 8\n' + ITERATIVE + IO
              + "response_cache { enable: true }\n")
LOOP_PY = '''
import json
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])
        self.count = {}  # id(request) -> executes so far
        self.live = {}  # id(request) -> the request (kept alive: the same object comes back)

    def execute(self, requests):
        with (self.marks / "loops").open("a") as f:
            f.write(json.dumps([[r.request_id(), id(r) in self.count] for r in requests]) + "\\n")
        held = ["hold"] + ["hold-%s-%d" % (r.request_id(), self.count.get(id(r), 0) + 1) for r in requests]
        while any((self.marks / name).exists() for name in held):
            threading.Event().wait(0.01)
        responses = []
        for request in requests:
            key = id(request)
            self.live[key] = request
            n = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if request.is_cancelled():
                (self.marks / ("cancelled-" + request.request_id())).write_text("yes")
                self.count.pop(key, None), self.live.pop(key)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full_like(n, -1))]))
                continue
            self.count[key] = self.count.get(key, 0) + 1
            if self.count[key] < int(n.reshape(-1)[0]):
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(None)
            else:
                out = np.full_like(n, self.count.pop(key))
                del self.live[key]
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        late = [self.marks / ("late-" + r.request_id()) for r in requests]
        for path in late:  # past its decisions, before it returns: noted, then it waits
            if path.exists():
                (self.marks / ("decided-" + path.name[5:])).write_text("")
        while any(path.exists() for path in late):
            threading.Event().wait(0.01)
        return responses
'''

#: Not decoupled, ``iterative_sequence``: IN > 0 is rescheduled, yet answered with a response (not
#: ``None``) at its place; each execute's request ids are appended to ``notnone``.
NOTNONE_PY = '''
import json
from pathlib import Path
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def execute(self, requests):
        with (self.marks / "notnone").open("a") as f:
            f.write(json.dumps([r.request_id() for r in requests]) + "\\n")
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if n.any():
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", n)]))
        return responses
'''


def _write(root: Path, name: str, pbtxt: str, model_py: str, marks: Path) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt.replace("MARKS", str(marks)))
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    base = tmp_path_factory.mktemp("triton_reschedule")
    root, marks = base / "model_repository", base / "marks"
    marks.mkdir()
    _write(root, "iter", ITER_PBTXT, ITER_PY, marks)
    _write(root, "noiter", ITER_PBTXT.replace(ITERATIVE, ""), ITER_PY, marks)  # decoupled, no iterative_sequence
    _write(root, "plain", ITER_PBTXT.replace(ITERATIVE, "").replace(DECOUPLED, ""), PLAIN_PY, marks)
    _write(root, "loop", LOOP_PBTXT, LOOP_PY, marks)
    _write(root, "notnone", LOOP_PBTXT.replace("response_cache { enable: true }\n", ""), NOTNONE_PY, marks)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-reschedules", str(MAX), "--response-cache-bytes", str(1 << 20))
    try:
        yield proc, grpc_address(proc), marks
    finally:
        proc.stop()


def _batches(marks: Path, file: str = "batches") -> list[list[tuple[str, bool]]]:
    """Each execute's ``[(request id, known), ...]``, in order (of model ``iter``; ``"loops"``: ``loop``)."""
    path = marks / file
    return [[(rid, known) for rid, known in json.loads(line)] for line in path.read_text().splitlines()] \
        if path.exists() else []


def _ids(batch: list[tuple[str, bool]]) -> list[str]:
    return [rid for rid, _ in batch]


def _tokens(frames: list[dict[str, Any]]) -> list[int]:
    return [int(np.asarray(f["outputs"]).reshape(-1)[0]) for f in frames if f["type"] == "response"]


async def test_websocket_streams_one_token_per_execute_from_the_same_request(served) -> None:
    """IN 4: four executes of the same request (the model knew it from the second on), four
    responses 3, 2, 1, 0, then ``done``."""
    async with Client(served[0].url) as client:
        stream = client.predict_responses("iter", {"IN": [[4]]})
        got = [r async for r in stream]
        assert [int(np.asarray(r.outputs).reshape(-1)[0]) for r in got] == [3, 2, 1, 0]
        assert stream.summary.responses == 4 and stream.summary.reason == "complete"
        rid = str(stream.request_id)
    mine = [b for b in _batches(served[2]) if rid in _ids(b)]
    assert [dict(b)[rid] for b in mine] == [False, True, True, True]


def test_grpc_stream_gets_each_token_and_the_final_flag(served) -> None:
    """tritonclient's gRPC stream: IN 3 -> OUT 2, 1, 0, the last flagged final."""
    s = _Stream(served[1])
    try:
        s.send("iter", "g1", IN=np.array([[3]], np.int32))
        got = s.until_final()
    finally:
        s.close()
    assert all(error is None for _, error in got)
    assert [int(r.as_numpy("OUT").reshape(-1)[0]) for r, _ in got] == [2, 1, 0]
    assert [r.get_response().parameters["triton_final_response"].bool_param for r, _ in got] == [False, False, True]
    assert all(r.get_response().id == "g1" for r, _ in got)


async def test_rescheduled_and_new_requests_share_an_execute(served) -> None:
    """While A's first execute holds the one instance, B, C and D queue; A, rescheduled, goes first and
    the next execute takes all four (max_batch_size 8); each gets its own tokens.  Each execute counts
    once in ``wsserve_batch_size`` with the rows of all its requests: 1, 4 and 4."""
    marks = served[2]
    before = _histogram(served[0].port, "wsserve_batch_size", "iter")
    (marks / "hold").write_text("")
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "A", "model": "iter", "inputs": {"IN": [[3]]}})
        wait_until(lambda: any(_ids(b) == ["A"] for b in _batches(marks)), 30.0, what="A's first execute")
        for rid in ("B", "C", "D"):
            await conn.send({"type": "predict", "id": rid, "model": "iter", "inputs": {"IN": [[2]]}})
        wait_until(lambda: _gauge(served[0].port, 'wsserve_queue_depth{model="iter"}') == 3, 30.0,
                   what="B, C and D queued")
        (marks / "hold").unlink()
        frames = await conn.collect({"A", "B", "C", "D"})
    finally:
        (marks / "hold").unlink(missing_ok=True)
        await conn.close()
    assert _tokens(frames["A"]) == [2, 1, 0] and frames["A"][-1]["type"] == "done"
    for rid in ("B", "C", "D"):
        assert _tokens(frames[rid]) == [1, 0] and frames[rid][-1]["type"] == "done"
    together = [b for b in _batches(marks) if set(_ids(b)) & {"A", "B", "C", "D"}]
    assert _ids(together[1]) == ["A", "B", "C", "D"]  # A (rescheduled) first, then the new ones in order
    assert dict(together[1]) == {"A": True, "B": False, "C": False, "D": False}
    assert [len(b) for b in together] == [1, 4, 4]

    def added() -> dict[str, float]:
        now = _histogram(served[0].port, "wsserve_batch_size", "iter")
        return {k: v - before.get(k, 0.0) for k, v in now.items()}
    sizes = wait_until(lambda: (d := added()).get("count") == 3 and d, 30.0, what="the three executes counted")
    assert sizes["sum"] == 9.0 and (sizes["le=1.0"], sizes["le=2.0"], sizes["le=4.0"]) == (1.0, 1.0, 3.0), sizes


async def test_a_request_is_rescheduled_at_most_max_reschedules_times(served) -> None:
    """--max-reschedules 5: IN 6 (5 reschedules) completes; IN 100 gets 6 responses then one error
    naming the bound."""
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "ok", "model": "iter", "inputs": {"IN": [[MAX + 1]]}})
        seen, end = await conn.until_terminal("ok")
        assert _tokens(seen) == list(range(MAX, -1, -1)) and end["type"] == "done"
        await conn.send({"type": "predict", "id": "over", "model": "iter", "inputs": {"IN": [[100]]}})
        seen, end = await conn.until_terminal("over")
        assert _tokens(seen) == list(range(99, 99 - MAX - 1, -1))
        assert end["type"] == "error" and end["code"] == "internal"
        assert f"rescheduled a request {MAX} times: at most {MAX} (max_reschedules)" in end["message"]
    finally:
        await conn.close()


async def test_a_cancel_in_the_middle_ends_the_request_once_and_the_model_sees_it(served) -> None:
    """X's execute is held; the client cancels X: one ``cancelled`` error, the model sees
    ``is_cancelled()`` and X is not given to another execute (Y, sent after, runs without it)."""
    marks = served[2]
    (marks / "hold").write_text("")
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "X", "model": "iter", "inputs": {"IN": [[4]]}})
        wait_until(lambda: any("X" in _ids(b) for b in _batches(marks)), 30.0, what="X's execute")
        frame = await conn.request({"type": "cancel", "id": "X"})
        assert frame["id"] == "X" and frame["type"] == "error" and frame["code"] == "cancelled"
        (marks / "hold").unlink()
        wait_until(lambda: (marks / "cancelled-X").exists(), 30.0, what="the model to see X cancelled")
        await conn.send({"type": "predict", "id": "Y", "model": "iter", "inputs": {"IN": [[2]]}})
        seen, end = await conn.until_terminal("Y")
        assert _tokens(seen) == [1, 0] and end["type"] == "done"
    finally:
        (marks / "hold").unlink(missing_ok=True)
        await conn.close()
    assert [f for f in conn.frames if f.get("id") == "X"] == [frame]  # its one terminal frame, nothing after
    assert sum("X" in _ids(b) for b in _batches(marks)) == 1


async def test_a_deadline_or_a_disconnect_ends_a_request_the_model_holds(served) -> None:
    """A request whose execute is held: its ``timeout_ms`` passing ends it with one
    ``deadline_exceeded``; a client leaving ends another; the model sees both cancelled once
    released, and neither is given to another execute."""
    marks = served[2]
    (marks / "hold").write_text("")
    try:
        conn = await Conn.open(served[0].url)
        try:
            await conn.send({"type": "predict", "id": "Z", "model": "iter", "inputs": {"IN": [[4]]}, "timeout_ms": 100})
            seen, end = await conn.until_terminal("Z")
            assert seen == [] and end["type"] == "error" and end["code"] == "deadline_exceeded"
        finally:
            await conn.close()
        (marks / "hold").unlink()
        wait_until(lambda: (marks / "cancelled-Z").exists(), 30.0, what="the model to see Z cancelled")
        (marks / "hold").write_text("")
        conn = await Conn.open(served[0].url)
        await conn.send({"type": "predict", "id": "W", "model": "iter", "inputs": {"IN": [[4]]}})
        wait_until(lambda: any("W" in _ids(b) for b in _batches(marks)), 30.0, what="W's execute")
        await conn.close()
        wait_until(lambda: _inflight_of(served[0].port) == 0, 30.0, what="W ended by the disconnect")
    finally:
        (marks / "hold").unlink(missing_ok=True)
    wait_until(lambda: (marks / "cancelled-W").exists(), 30.0, what="the model to see W cancelled")
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "V", "model": "iter", "inputs": {"IN": [[2]]}})
        seen, end = await conn.until_terminal("V")
        assert _tokens(seen) == [1, 0] and end["type"] == "done"
    finally:
        await conn.close()
    assert sum(bool({"Z", "W"} & set(_ids(b))) for b in _batches(marks)) == 2  # one execute each


def _inflight_of(port: int) -> float:
    return _gauge(port, "wsserve_inflight_requests")


async def test_rescheduling_without_iterative_sequence_is_an_error(served) -> None:
    """A decoupled model without ``iterative_sequence`` that reschedules: its token, then Triton's
    error (``INVALID_ARG``: ``invalid_input``) naming the missing field."""
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "n1", "model": "noiter", "inputs": {"IN": [[3]]}})
        seen, end = await conn.until_terminal("n1")
    finally:
        await conn.close()
    assert _tokens(seen) == [2]
    assert end["type"] == "error" and end["code"] == "invalid_input"
    assert end["message"].startswith("Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the "
                                     "model is not configured to handle such a flag")  # Triton's
    assert "sequence_batching { iterative_sequence: true }" in end["message"]


def test_a_non_decoupled_model_rescheduling_with_none_fails_only_that_request(served) -> None:
    """A non-decoupled model puts None at a rescheduled request's place: without iterative_sequence
    that request fails naming it (Triton's error); IN 0 is answered."""
    client = thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}")

    def infer(n: int) -> Any:
        inp = thttp.InferInput("IN", [1, 1], "INT32")
        inp.set_data_from_numpy(np.array([[n]], np.int32))
        return client.infer("plain", [inp])

    assert infer(0).as_numpy("OUT").tolist() == [[0]]
    with pytest.raises(InferenceServerException) as info:
        infer(1)
    assert info.value.status() == "400"  # Triton's INVALID_ARG
    assert "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE" in info.value.message()
    assert "iterative_sequence" in info.value.message()


def test_get_model_config_reports_iterative_sequence(served) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}")
    config = client.get_model_config("iter")
    assert config["sequence_batching"]["iterative_sequence"] is True
    assert config["model_transaction_policy"] == {"decoupled": True}
    config = client.get_model_config("loop")  # not decoupled
    assert config["sequence_batching"]["iterative_sequence"] is True and "dynamic_batching" not in config
    assert config.get("model_transaction_policy", {}).get("decoupled", False) is False


_PY = ('backend: "python"\nmax_batch_size: 4\ninput [{ name: "IN" data_type: TYPE_INT32 dims: [1] }]\n'
       'output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]\n')


def test_iterative_sequence_of_a_decoupled_python_model_is_read() -> None:
    cfg = parse_pbtxt(_PY + DECOUPLED + ITERATIVE, "repo/m/config.pbtxt", model_name="m")
    assert cfg.iterative_sequence and cfg.decoupled and cfg.sequence is None


def test_iterative_sequence_of_a_non_decoupled_python_model_is_read() -> None:
    cfg = parse_pbtxt(_PY + ITERATIVE, "repo/m/config.pbtxt", model_name="m")
    assert cfg.iterative_sequence and not cfg.decoupled and cfg.sequence is None


@pytest.mark.parametrize(("text", "key", "words"), [
    (_PY.replace("max_batch_size: 4", "max_batch_size: 0") + ITERATIVE, "sequence_batching.iterative_sequence",
     ["non-decoupled Python model needs max_batch_size >= 1"]),
    (_PY + DECOUPLED + 'sequence_batching { iterative_sequence: true control_input [{ name: "S" control '
     '[{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }] }] }', "sequence_batching.control_input",
     ["iterative_sequence"]),
    (_PY + DECOUPLED + "sequence_batching { iterative_sequence: true oldest { } }", "sequence_batching.oldest",
     ["iterative_sequence"]),
    ('platform: "onnxruntime_onnx"\n' + ITERATIVE, "sequence_batching.iterative_sequence",
     ["Triton Python model only", "'onnxruntime_onnx'"]),
])
def test_iterative_sequence_refusals_name_the_field(text: str, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(text, "repo/m/config.pbtxt", model_name="m")
    assert info.value.key == key
    for word in words:
        assert word in str(info.value)


def test_release_flags_are_tritons_and_checked() -> None:
    assert (pb.TRITONSERVER_REQUEST_RELEASE_ALL, pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE) == (1, 2)
    request = pb.InferenceRequest()
    assert request.release_flags() == pb.TRITONSERVER_REQUEST_RELEASE_ALL
    request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
    assert request.release_flags() == pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
    with pytest.raises(pb.TritonModelException, match="got 3"):
        request.set_release_flags(3)
    for wrong in (2.0, True, "2", None):  # (Triton's binding takes an integer: 2.0 was taken, then read as RELEASE_ALL)
        with pytest.raises(pb.TritonModelException, match="set_release_flags"):
            request.set_release_flags(wrong)
    assert request.release_flags() == pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
    request.set_release_flags(np.uint32(1))  # a numpy integer is an integer
    assert request.release_flags() == 1 and type(request.release_flags()) is int
    assert ServerConfig().max_reschedules == reschedule.MAX_RESCHEDULES == 65536


@pytest.mark.parametrize(("kwargs", "want"), [
    ({"flags": 1}, "release"),
    ({"flags": 2, "ended": True}, "release"),
    ({"flags": 2, "iterative": False}, "refuse"),
    ({"flags": 2, "final_sent": True}, "release"),
    ({"flags": 2, "final_sent": True, "iterative": False}, "release"),
    ({"flags": 2, "reschedules": 3}, "fail"),
    ({"flags": 2, "reschedules": 2}, "requeue"),
])
def test_after_execute_decides_by_triton_rules_and_the_bound(kwargs: dict[str, Any], want: str) -> None:
    args = {"iterative": True, "ended": False, "final_sent": False, "reschedules": 0, "max_reschedules": 3, **kwargs}
    decision, message = reschedule.after_execute("m", args.pop("flags"), **args)
    assert decision == want and (message is None) == (want not in ("fail", "refuse"))


async def test_a_request_of_more_rows_than_max_batch_size_is_refused(served) -> None:
    """max_batch_size 8: a request of 9 rows is refused with Triton's ``invalid_input`` (an execute never
    gets more rows than config.pbtxt allows, rescheduled or not); one of 8 is served."""
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "big", "model": "iter", "inputs": {"IN": [[2]] * 9}})
        seen, end = await conn.until_terminal("big")
        assert seen == [] and end["type"] == "error" and end["code"] == "invalid_input"
        assert "inference request batch-size must be <= 8 for 'iter'" in end["message"]
        await conn.send({"type": "predict", "id": "full", "model": "iter", "inputs": {"IN": [[2]] * 8}})
        seen, end = await conn.until_terminal("full")
        assert _tokens(seen) == [1, 0] and end["type"] == "done"
    finally:
        await conn.close()
    assert not any("big" in _ids(b) for b in _batches(served[2]))


def test_grpc_stream_refuses_more_rows_than_max_batch_size(served) -> None:
    """The same over tritonclient's gRPC stream: Triton's INVALID_ARG for 9 rows."""
    s = _Stream(served[1])
    try:
        s.send("iter", "g9", IN=np.full((9, 1), 2, np.int32))
        (result, error), = s.until_final()
    finally:
        s.close()
    assert result is None and "inference request batch-size must be <= 8" in str(error)


class _Sink:
    """A decoupled request's sink: what reached it, in order."""

    def __init__(self) -> None:
        self.inputs = {"IN": np.array([[1]], np.int32)}
        self.n, self.nbytes, self.finished = 1, 4, False
        self.got: list[Any] = []

    def on_response(self, outputs: Any, final: bool, nbytes: int) -> None:
        self.got.append(("response", final))

    def on_error(self, exc: Exception) -> None:
        self.got.append(("error", str(exc)))


async def test_a_final_sent_before_its_reschedule_is_decided_ends_the_request_with_that_final() -> None:
    """A model thread sent FINAL (not yet delivered by the loop) when the execute's RESCHEDULE is
    decided: the request ends with that FINAL, not an error in its place, and never runs again
    (as when the FINAL was delivered first: whichever thread wins, the same answer)."""
    from wsserve.decoupled import DecoupledWorker

    class Model:
        iterative_sequence = True
        batching = True
        executes = 0

        def execute_decoupled(self, inputs: Any, request_id: str, stream: Any) -> int:
            Model.executes += 1
            return reschedule.RELEASE_ALL

    worker = DecoupledWorker(Model(), name="m", max_batch_rows=4)
    worker.start()
    sink = _Sink()
    stream = worker.submit(sink)
    await wait_until_async(lambda: Model.executes == 1, 30.0, what="the first execute")
    assert sink.got == [] and not stream.ended  # no FINAL yet: the request stays open
    stream.respond({"OUT": np.array([[0]], np.int32)}, True)  # a model thread's FINAL, not delivered yet ...
    worker._released(stream, reschedule.RELEASE_RESCHEDULE)  # ... when its execute's release is decided
    await worker.wait_idle()
    assert sink.got == [("response", True)]
    assert stream.ended and Model.executes == 1 and worker.statistics().queued == 0
    await worker.close()


WARMUP = ('model_warmup [ { name: "w" batch_size: 1 count: 1\n'
          '  inputs { key: "IN" value: { data_type: TYPE_INT32 dims: [ 1 ] input_data_file: "in.bin" } } } ]\n')


def test_model_warmup_reschedules_by_the_same_rules(tmp_path: Path) -> None:
    """A warm-up sample (IN 3) is rescheduled as a request is: the iterative model runs it three
    times and serves; one without ``iterative_sequence`` fails its load at once with Triton's error
    naming the sample (it waited for a FINAL the model never sends, until the load timeout)."""
    root, marks = tmp_path / "repository", tmp_path / "marks"
    marks.mkdir()
    for name, pbtxt in (("warmiter", ITER_PBTXT), ("warmnoiter", ITER_PBTXT.replace(ITERATIVE, ""))):
        _write(root, name, pbtxt + WARMUP, ITER_PY, marks)
        (root / name / "warmup").mkdir()
        (root / name / "warmup" / "in.bin").write_bytes(np.array([3], "<i4").tobytes())
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--model-load-timeout", "30")
    try:
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        assert client.is_model_ready("warmiter")
        rows = {r["name"]: r for r in client.get_model_repository_index()}
        assert rows["warmnoiter"]["state"] == "UNAVAILABLE"
        assert ("model_warmup sample 'w' failed: Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE"
                in rows["warmnoiter"]["reason"]), rows["warmnoiter"]
    finally:
        proc.stop()
    warm = [b for b in _batches(marks) if _ids(b) == [""]]
    assert [known for b in warm for _, known in b].count(True) == 2  # warmiter: the same request, 3 executes


#: Not decoupled, ``iterative_sequence``: every request rescheduled at every execute.
ALWAYS_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
        return [None] * len(requests)
'''


def test_a_non_decoupled_model_warmup_reschedules_by_the_same_rules(tmp_path: Path) -> None:
    """A non-decoupled iterative model's warm-up sample (IN 3) runs three executes of the same
    request and the model serves; one that always reschedules fails its load past the bound
    (65536 reschedules, the default), with the error a request gets there."""
    root, marks = tmp_path / "repository", tmp_path / "marks"
    marks.mkdir()
    plain = LOOP_PBTXT.replace("response_cache { enable: true }\n", "") + WARMUP
    for name, model_py in (("warmloop", LOOP_PY), ("warmalways", ALWAYS_PY)):
        _write(root, name, plain, model_py, marks)
        (root / name / "warmup").mkdir()
        (root / name / "warmup" / "in.bin").write_bytes(np.array([3], "<i4").tobytes())
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--model-load-timeout", "120")
    try:
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        assert client.is_model_ready("warmloop")
        rows = {r["name"]: r for r in client.get_model_repository_index()}
        assert rows["warmalways"]["state"] == "UNAVAILABLE"
        bound = reschedule.MAX_RESCHEDULES
        assert (f"model_warmup sample 'w' failed: ValueError: model 'warmalways' rescheduled a request {bound} "
                f"times: at most {bound} (max_reschedules)") in rows["warmalways"]["reason"], rows["warmalways"]
    finally:
        proc.stop()
    assert _loops(marks) == [[("", False)], [("", True)], [("", True)]]  # warmloop: one request, 3 executes


#: Not decoupled, ``iterative_sequence``: every request rescheduled at every execute; each execute
#: waits while ``hold`` exists, then appends its requests' ``is_cancelled()`` to ``stuck``.
STUCK_PY = '''
import json
import threading
from pathlib import Path
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def execute(self, requests):
        while (self.marks / "hold").exists():
            threading.Event().wait(0.01)
        with open(self.marks / "stuck", "a") as f:
            f.write(json.dumps([r.is_cancelled() for r in requests]) + "\\n")
        for request in requests:
            request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
        return [None] * len(requests)
'''


def test_an_abandoned_load_stops_a_non_decoupled_warmup_at_its_next_reschedule(tmp_path: Path) -> None:
    """A non-decoupled iterative model's warm-up sample held in its first execute past the load
    timeout: the load is abandoned, and once that execute returns the sample is not executed
    again (as the decoupled warm-up's, and as ``model_warmup`` stops before its next execution);
    the model saw the request cancelled.  Before: 65536 more executes of a discarded model."""
    root, marks = tmp_path / "repository", tmp_path / "marks"
    marks.mkdir()
    _write(root, "stuck", LOOP_PBTXT.replace("response_cache { enable: true }\n", "") + WARMUP, STUCK_PY, marks)
    (root / "stuck" / "warmup").mkdir()
    (root / "stuck" / "warmup" / "in.bin").write_bytes(np.array([3], "<i4").tobytes())
    (marks / "hold").write_text("")
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--model-load-timeout", "1")
    try:
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        wait_until(lambda: {r["name"]: r for r in client.get_model_repository_index()}["stuck"]["state"]
                   == "UNAVAILABLE", 60.0, what="the load past its timeout")
        assert _gauge(proc.port, "wsserve_model_loads_abandoned") == 1
        (marks / "hold").unlink()
        wait_until(lambda: _gauge(proc.port, "wsserve_model_loads_abandoned") == 0, 120.0,
                   what="the abandoned load's thread to end")
    finally:
        (marks / "hold").unlink(missing_ok=True)
        proc.stop()
    executes = [json.loads(line) for line in (marks / "stuck").read_text().splitlines()]
    assert executes == [[True]]  # its one execute (the one the timeout met), which saw it cancelled


# -- a non-decoupled model with iterative_sequence (Triton's: None at a rescheduled request's place)


def _loops(marks: Path) -> list[list[tuple[str, bool]]]:
    return _batches(marks, "loops")


def _out(frame: dict[str, Any]) -> int:
    return int(np.asarray(frame["outputs"]).reshape(-1)[0])


async def test_a_non_decoupled_request_is_answered_once_after_its_executes(served) -> None:
    """IN 3: three executes of the same request object (known from the second on), one ``result``
    OUT 3 and nothing else; the same IN again runs its executes again (the model's response_cache
    is ignored: Triton's sequence batcher caches nothing)."""
    conn = await Conn.open(served[0].url)
    try:
        for rid in ("L1", "L2"):
            await conn.send({"type": "predict", "id": rid, "model": "loop", "inputs": {"IN": [[3]]}})
            seen, end = await conn.until_terminal(rid)
            assert seen == [] and end["type"] == "result" and _out(end) == 3
    finally:
        await conn.close()
    for rid in ("L1", "L2"):
        assert [dict(b)[rid] for b in _loops(served[2]) if rid in _ids(b)] == [False, True, True]
    assert [f["type"] for f in conn.frames if f.get("id") in ("L1", "L2")] == ["result", "result"]


def test_tritonclient_http_and_grpc_infer_a_rescheduled_request(served) -> None:
    """tritonclient's HTTP and gRPC ``infer``: one response, after the model's executes."""
    import tritonclient.grpc as tgrpc

    inp = thttp.InferInput("IN", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[4]], np.int32))
    http = thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}")
    grpc = tgrpc.InferenceServerClient(served[1])
    try:
        assert http.infer("loop", [inp], request_id="h1").as_numpy("OUT").tolist() == [[4]]
        ginp = tgrpc.InferInput("IN", [1, 1], "INT32")
        ginp.set_data_from_numpy(np.array([[2]], np.int32))
        assert grpc.infer("loop", [ginp], request_id="g1").as_numpy("OUT").tolist() == [[2]]
    finally:
        http.close()
        grpc.close()
    assert sum("h1" in _ids(b) for b in _loops(served[2])) == 4
    assert sum("g1" in _ids(b) for b in _loops(served[2])) == 2


async def test_rescheduled_and_new_requests_share_a_non_decoupled_execute(served) -> None:
    """While A's first execute holds the one instance, B, C and D queue; A, rescheduled, goes back
    first and the next execute takes all four (max_batch_size 8): A known, the others new; each
    gets its own answer after its own number of executes."""
    marks = served[2]
    (marks / "hold").write_text("")
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "A", "model": "loop", "inputs": {"IN": [[3]]}})
        wait_until(lambda: any(_ids(b) == ["A"] for b in _loops(marks)), 30.0, what="A's first execute")
        for rid in ("B", "C", "D"):
            await conn.send({"type": "predict", "id": rid, "model": "loop", "inputs": {"IN": [[2]]}})
        wait_until(lambda: _gauge(served[0].port, 'wsserve_queue_depth{model="loop"}') == 3, 30.0,
                   what="B, C and D queued")
        (marks / "hold").unlink()
        frames = await conn.collect({"A", "B", "C", "D"})
    finally:
        (marks / "hold").unlink(missing_ok=True)
        await conn.close()
    assert [f["type"] for f in frames["A"]] == ["result"] and _out(frames["A"][0]) == 3
    for rid in ("B", "C", "D"):
        assert [f["type"] for f in frames[rid]] == ["result"] and _out(frames[rid][0]) == 2
    together = [b for b in _loops(marks) if set(_ids(b)) & {"A", "B", "C", "D"}]
    assert together[0] == [("A", False)]
    assert together[1] == [("A", True), ("B", False), ("C", False), ("D", False)]
    assert together[2] == [("A", True), ("B", True), ("C", True), ("D", True)] and len(together) == 3


async def test_a_non_decoupled_request_is_rescheduled_at_most_max_reschedules_times(served) -> None:
    """--max-reschedules 5: IN 6 (5 reschedules) is answered; IN 100 ends after 6 executes with one
    ``internal`` error naming the bound."""
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "ok6", "model": "loop", "inputs": {"IN": [[MAX + 1]]}})
        seen, end = await conn.until_terminal("ok6")
        assert seen == [] and end["type"] == "result" and _out(end) == MAX + 1
        await conn.send({"type": "predict", "id": "over", "model": "loop", "inputs": {"IN": [[100]]}})
        seen, end = await conn.until_terminal("over")
        assert seen == [] and end["type"] == "error" and end["code"] == "internal"
        assert f"rescheduled a request {MAX} times: at most {MAX} (max_reschedules)" in end["message"]
    finally:
        await conn.close()
    assert sum("over" in _ids(b) for b in _loops(served[2])) == MAX + 1
    assert [f["type"] for f in conn.frames if f.get("id") == "over"] == ["error"]


async def test_a_cancel_of_a_rescheduled_non_decoupled_request_ends_it_once(served) -> None:
    """X (IN 4) is in its second execute, held; the client cancels it: one ``cancelled`` error, the
    model sees ``is_cancelled()`` in that execute, and X is not given to another one (Y, after it,
    runs without it)."""
    marks = served[2]
    conn = await Conn.open(served[0].url)
    hold = marks / "hold-X-2"
    try:
        hold.write_text("")  # its second execute waits
        await conn.send({"type": "predict", "id": "X", "model": "loop", "inputs": {"IN": [[4]]}})
        wait_until(lambda: [dict(b)["X"] for b in _loops(marks) if "X" in _ids(b)] == [False, True], 30.0,
                   what="X's second execute")
        frame = await conn.request({"type": "cancel", "id": "X"})
        assert frame["id"] == "X" and frame["type"] == "error" and frame["code"] == "cancelled"
        hold.unlink()
        wait_until(lambda: (marks / "cancelled-X").exists(), 30.0, what="the model to see X cancelled")
        await conn.send({"type": "predict", "id": "Y", "model": "loop", "inputs": {"IN": [[2]]}})
        seen, end = await conn.until_terminal("Y")
        assert seen == [] and end["type"] == "result" and _out(end) == 2
    finally:
        hold.unlink(missing_ok=True)
        await conn.close()
    assert [f for f in conn.frames if f.get("id") == "X"] == [frame]  # its one terminal frame, nothing after
    assert sum("X" in _ids(b) for b in _loops(marks)) == 2


async def test_a_non_decoupled_iterative_request_larger_than_a_batch_is_refused(served) -> None:
    """A request is rescheduled whole, so it must fit one batch (max_batch_size 8): 9 rows are
    refused with ``invalid_input`` naming why, and the model never sees them."""
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "big", "model": "loop", "inputs": {"IN": [[1]] * 9}})
        seen, end = await conn.until_terminal("big")
    finally:
        await conn.close()
    assert end["type"] == "error" and end["code"] == "invalid_input"
    assert "batch-size must be <= 8" in end["message"] and "iterative_sequence" in end["message"]
    assert not any("big" in _ids(b) for b in _loops(served[2]))


async def test_a_deadline_ends_a_rescheduled_non_decoupled_request_once(served) -> None:
    """Z (IN 4, ``timeout_ms``) is held in its second execute (rescheduled once) until its deadline
    passes (on a slow machine it may pass in the first): one ``deadline_exceeded``, the model sees it
    cancelled in the execute it is in, and it is given to no later one."""
    marks = served[2]
    hold = marks / "hold-Z-2"
    conn = await Conn.open(served[0].url)
    try:
        hold.write_text("")
        await conn.send({"type": "predict", "id": "Z", "model": "loop", "inputs": {"IN": [[4]]}, "timeout_ms": 1000})
        seen, end = await conn.until_terminal("Z")
        assert seen == [] and end["type"] == "error" and end["code"] == "deadline_exceeded"
        hold.unlink()
        wait_until(lambda: (marks / "cancelled-Z").exists(), 30.0, what="the model to see Z cancelled")
        await conn.send({"type": "predict", "id": "V", "model": "loop", "inputs": {"IN": [[2]]}})
        seen, end = await conn.until_terminal("V")
        assert end["type"] == "result" and _out(end) == 2
    finally:
        hold.unlink(missing_ok=True)
        await conn.close()
    assert [f["type"] for f in conn.frames if f.get("id") == "Z"] == ["error"]
    assert [dict(b)["Z"] for b in _loops(marks) if "Z" in _ids(b)] in ([False, True], [False])


#: ``loop``'s rules (IN k: answered OUT k after k executes; ``hold-<id>-<n>`` holds that request's
#: n-th execute, noted ``in-<id>-<n>`` when it begins; a request seen cancelled is answered OUT -1), with the cyclic GC off and only weak
#: references to the requests it was given: request ``probe`` is answered with how many of them are
#: still alive (reference counting alone frees a request the server is done with).
WEAK_PY = '''
import gc
import json
import threading
import weakref
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        gc.disable()
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])
        self.count = {}  # id(request) -> executes so far (the model keeps no request itself)
        self.seen = []  # a weak reference to each request object it was given

    def execute(self, requests):
        names = ["%s-%d" % (r.request_id(), self.count.get(id(r), 0) + 1) for r in requests]
        for name in names:
            (self.marks / ("in-" + name)).write_text("")
        while any((self.marks / ("hold-" + name)).exists() for name in names):
            threading.Event().wait(0.01)
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if request.request_id() == "probe":
                alive = sum(ref() is not None for ref in self.seen)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full_like(n, alive))]))
                continue
            key = id(request)
            if key not in self.count:
                self.seen.append(weakref.ref(request))
            if request.is_cancelled():
                (self.marks / ("cancelled-" + request.request_id())).write_text("yes")
                self.count.pop(key, None)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full_like(n, -1))]))
                continue
            self.count[key] = self.count.get(key, 0) + 1
            if self.count[key] < int(n.reshape(-1)[0]):
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(None)
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full_like(n, self.count.pop(key)))]))
        return responses
'''


async def test_the_server_keeps_no_ended_rescheduled_request_alive(tmp_path: Path) -> None:
    """With the cyclic GC off: a request answered after its executes (A), one answered at its first
    (B), and one cancelled in its second execute (X) are freed once they end (the worker's state of
    each, and the ``pb_utils.InferenceRequest`` it keeps across executes, hold no reference cycle):
    the probe counts none of them alive."""
    root, marks = tmp_path / "model_repository", tmp_path / "marks"
    marks.mkdir()
    _write(root, "weak", LOOP_PBTXT.replace("response_cache { enable: true }\n", ""), WEAK_PY, marks)
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    hold = marks / "hold-X-2"
    try:
        conn = await Conn.open(proc.url)
        try:
            for rid, n in (("A", 3), ("B", 1)):
                await conn.send({"type": "predict", "id": rid, "model": "weak", "inputs": {"IN": [[n]]}})
                seen, end = await conn.until_terminal(rid)
                assert end["type"] == "result" and _out(end) == n
            hold.write_text("")
            await conn.send({"type": "predict", "id": "X", "model": "weak", "inputs": {"IN": [[9]]}})
            wait_until(lambda: (marks / "in-X-2").exists(), 30.0, what="X's second execute")
            frame = await conn.request({"type": "cancel", "id": "X"})
            assert frame["type"] == "error" and frame["code"] == "cancelled"
            hold.unlink()
            wait_until(lambda: (marks / "cancelled-X").exists(), 30.0, what="the model to see X cancelled")
            await conn.send({"type": "predict", "id": "probe", "model": "weak", "inputs": {"IN": [[0]]}})
            seen, end = await conn.until_terminal("probe")
            assert end["type"] == "result" and _out(end) == 0
        finally:
            hold.unlink(missing_ok=True)
            await conn.close()
    finally:
        proc.stop()


async def test_a_response_for_a_rescheduled_request_fails_the_execute_as_in_triton(served) -> None:
    """Triton's Python backend wants ``None`` at a rescheduled request's place: a response there
    fails the execute with its message ("Expected a None object in the execute function return
    list for reschduled request", its spelling), and the request is not executed again."""
    conn = await Conn.open(served[0].url)
    try:
        await conn.send({"type": "predict", "id": "nn", "model": "notnone", "inputs": {"IN": [[1]]}})
        seen, end = await conn.until_terminal("nn")
    finally:
        await conn.close()
    assert seen == [] and end["type"] == "error" and end["code"] == "internal"
    assert "Expected a None object in the execute function return list for reschduled request" in end["message"]
    lines = (served[2] / "notnone").read_text().splitlines()
    assert sum("nn" in json.loads(line) for line in lines) == 1


async def test_a_cancel_after_a_non_decoupled_execute_decided_to_reschedule_ends_the_request_once(served) -> None:
    """LX (IN 3) is rescheduled by its first execute, held past the model's decision (``late-LX``);
    LY (IN 2) queues behind it on the same connection; the client cancels LX there: its one terminal
    frame is the cancel's, the worker does not requeue it (no later execute gets it), and LY is
    answered as ever, in executes of its own."""
    marks = served[2]
    late = marks / "late-LX"
    conn = await Conn.open(served[0].url)
    try:
        late.write_text("")
        await conn.send({"type": "predict", "id": "LX", "model": "loop", "inputs": {"IN": [[3]]}})
        wait_until(lambda: (marks / "decided-LX").exists(), 30.0, what="LX's first execute to decide")
        await conn.send({"type": "predict", "id": "LY", "model": "loop", "inputs": {"IN": [[2]]}})
        wait_until(lambda: _gauge(served[0].port, 'wsserve_queue_depth{model="loop"}') == 1, 30.0, what="LY queued")
        frame = await conn.request({"type": "cancel", "id": "LX"})
        assert frame["id"] == "LX" and frame["type"] == "error" and frame["code"] == "cancelled"
        late.unlink()
        seen, end = await conn.until_terminal("LY")
        assert seen == [] and end["type"] == "result" and _out(end) == 2
    finally:
        late.unlink(missing_ok=True)
        await conn.close()
    assert [f for f in conn.frames if f.get("id") == "LX"] == [frame]  # its one terminal frame, nothing after
    mine = [_ids(b) for b in _loops(marks) if {"LX", "LY"} & set(_ids(b))]
    assert mine == [["LX"], ["LY"], ["LY"]]  # LX's one execute; LY's two, without LX
    assert not (marks / "cancelled-LX").exists()  # (no execute saw it again)


async def test_a_cancel_after_a_decoupled_execute_decided_to_reschedule_ends_the_request_once(served) -> None:
    """The decoupled model: DX (IN 3) sent its first token and flagged its reschedule, its execute
    held past that (``late-DX``); DY (IN 2) queues behind it on the same connection; the client
    cancels DX there: after its token, its one terminal frame is the cancel's, no later execute gets
    it, and DY streams its tokens and ``done`` in executes of its own."""
    marks = served[2]
    late = marks / "late-DX"
    conn = await Conn.open(served[0].url)
    try:
        late.write_text("")
        await conn.send({"type": "predict", "id": "DX", "model": "iter", "inputs": {"IN": [[3]]}})
        wait_until(lambda: (marks / "decided-DX").exists(), 30.0, what="DX's first execute to decide")
        await conn.send({"type": "predict", "id": "DY", "model": "iter", "inputs": {"IN": [[2]]}})
        wait_until(lambda: _gauge(served[0].port, 'wsserve_queue_depth{model="iter"}') == 1, 30.0, what="DY queued")
        await conn.send({"type": "cancel", "id": "DX"})
        seen, frame = await conn.until_terminal("DX")
        assert _tokens(seen) == [2] and frame["type"] == "error" and frame["code"] == "cancelled"
        late.unlink()
        seen, end = await conn.until_terminal("DY")
        assert _tokens(seen) == [1, 0] and end["type"] == "done"
    finally:
        late.unlink(missing_ok=True)
        await conn.close()
    got = [f for f in conn.frames if f.get("id") == "DX"]
    assert _tokens(got) == [2] and got[-1] == frame and [f["type"] for f in got] == ["response", "error"]
    mine = [_ids(b) for b in _batches(marks) if {"DX", "DY"} & set(_ids(b))]
    assert mine == [["DX"], ["DY"], ["DY"]]  # DX's one execute; DY's two, without DX
    assert not (marks / "cancelled-DX").exists()


async def test_a_request_cancelled_while_requeued_is_dropped_from_the_queue_and_never_executed_again() -> None:
    """The worker, its model taking its batch as requests and rescheduling (as a Triton Python
    model with ``iterative_sequence`` does): X and Y share an execute, X rescheduled, Y answered.
    Y's sink, handed its rows after X went back to the queue, schedules X's cancel on the loop: it
    runs once the worker handled that execute and before the next one starts (whose tick is
    scheduled after it), so it finds X provably waiting, requeued, with no execute running.  The
    cancel (as the connection's job does it: the sink ends, then ``worker.cancel``) drops X from the
    queue and lets its ``Held`` go; X gets nothing more from the worker, no execute gets it again,
    and Y and a later Z are answered."""
    from tests.test_pool_worker import Doubler, Sink
    from wsserve.worker import PredictWorker

    class Stepper(Doubler):
        """``2x`` for a request whose first value is 0, or at its second execute; rescheduled at its
        first execute otherwise (its rows placeholders).  ``executes``: each execute's request ids."""

        iterative_sequence = True
        takes_ended = True

        def __init__(self) -> None:
            super().__init__()
            self.executes: list[list[str]] = []

        def predict_requests(self, x: np.ndarray, rows: list[int], ids: list[str], held: list[Any]) -> np.ndarray:
            self.executes.append(list(ids))
            start = 0
            for r, h in zip(rows, held, strict=True):
                part = x[start:start + r]
                if part[0, 0] and h.request is None:
                    h.request = "seen"  # the model's own object for the request, kept across executes
                    h.again = True
                start += r
            return 2.0 * x

    model = Stepper()
    worker = PredictWorker(model, inline_max_flops=0)  # in the executor, as a Triton Python model's execute
    worker.start()
    try:
        x, y = Sink("X", [[1.0]]), Sink("Y", [[0.0]])
        x.request_id, y.request_id = "X", "Y"  # (what the worker gives the model as their ids)
        found: list[tuple[int, int, bool]] = []  # (queued, running, X still held) when X's cancel ran
        on_rows = y.on_rows

        def cancel_x() -> None:
            stats = worker.statistics()
            found.append((stats.queued, stats.running, x_item.held is not None))
            x.mark_cancelled()
            worker.cancel(x_item)

        def cancel_x_then_deliver(*args: Any) -> None:  # Y's rows: X was requeued just before
            asyncio.get_running_loop().call_soon(cancel_x)
            on_rows(*args)

        y.on_rows = cancel_x_then_deliver  # type: ignore[method-assign]
        x_item = worker.submit(x)
        worker.submit(y)
        await asyncio.wait_for(y.done, 30.0)
        await worker.wait_idle()
        assert found == [(1, 0, True)]  # X was waiting, requeued (still held), no execute running
        assert x.events == [("cancelled",)]  # nothing from the worker after the cancel: its one end is the cancel's
        assert x_item.held is None and worker.statistics().queued == 0
        np.testing.assert_array_equal(y.outputs(), [[0.0]])
        z = Sink("Z", [[0.0]])
        z.request_id = "Z"
        worker.submit(z)
        await asyncio.wait_for(z.done, 30.0)
        np.testing.assert_array_equal(z.outputs(), [[0.0]])
        assert model.executes == [["X", "Y"], ["Z"]]  # X in one execute only
    finally:
        await worker.close()


async def test_decoupled_worker_statistics_count_the_rows_of_an_execute() -> None:
    """An iterative decoupled model's executes: G (1 row, held), then A (1 row) and B (2 rows)
    together, then B (rescheduled) alone: the worker's ``last_batch_size`` is the last execute's
    rows (2), and ``computed`` all executes' rows (1 + 3 + 2), as
    :class:`~wsserve.stats.WorkerStatistics` says and the predict worker counts (Triton's batch
    size is its requests' rows), not requests (1) and executes (3)."""
    import threading

    from wsserve.decoupled import DecoupledWorker

    class Model:
        iterative_sequence = True
        batching = True

        def __init__(self) -> None:
            self.executes: list[list[int]] = []  # each execute's requests' rows
            self.started, self.gate = threading.Event(), threading.Event()

        def execute_decoupled_batch(self, requests: list[tuple[Any, str, Any]]) -> list[int]:
            self.executes.append([len(inputs["IN"]) for inputs, _, _ in requests])
            if len(self.executes) == 1:
                self.started.set()
                assert self.gate.wait(30.0)
            flags = []
            for inputs, _, stream in requests:
                if len(inputs["IN"]) == 2 and stream.reschedules == 0:  # B, at its first execute
                    flags.append(reschedule.RELEASE_RESCHEDULE)
                else:
                    stream.respond({"OUT": inputs["IN"]}, True)
                    flags.append(reschedule.RELEASE_ALL)
            return flags

        def execute_decoupled(self, inputs: Any, request_id: str, stream: Any) -> int:
            return self.execute_decoupled_batch([(inputs, request_id, stream)])[0]

    model = Model()
    worker = DecoupledWorker(model, name="m", max_batch_rows=4)
    worker.start()
    try:
        g, a, b = _Sink(), _Sink(), _Sink()
        b.inputs, b.n, b.nbytes = {"IN": np.array([[1], [2]], np.int32)}, 2, 8
        worker.submit(g)
        await wait_until_async(model.started.is_set, 30.0, what="G's execute")
        worker.submit(a)
        worker.submit(b)
        model.gate.set()
        await worker.wait_idle()
        assert g.got == a.got == b.got == [("response", True)]
        assert model.executes == [[1], [1, 2], [2]]
        s = worker.statistics()
        assert (s.batches, s.last_batch_size, s.computed) == (3, 2, 6)
    finally:
        model.gate.set()
        await worker.close()


#: Decoupled, ``iterative_sequence``: each request answered at once (OUT = IN, FINAL); the first
#: execute waits while ``hold`` exists.
ECHO_PY = '''
import json
import threading
from pathlib import Path
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])
        self.first = True

    def execute(self, requests):
        if self.first:
            self.first = False
            (self.marks / "first").write_text("")
            while (self.marks / "hold").exists():
                threading.Event().wait(0.01)
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            request.get_response_sender().send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", n)]),
                                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


async def test_tritons_statistics_of_a_decoupled_execute_count_its_rows(tmp_path: Path) -> None:
    """Triton's statistics (``batch_stats``: an execute's batch size is its requests' rows) of a
    decoupled iterative model: G (1 row) alone, then A (1 row) and B (2 rows) in one execute:
    batch sizes 1 and 3, once each."""
    root, marks = tmp_path / "repository", tmp_path / "marks"
    marks.mkdir()
    _write(root, "echo", ITER_PBTXT, ECHO_PY, marks)
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    (marks / "hold").write_text("")
    try:
        conn = await Conn.open(proc.url)
        try:
            await conn.send({"type": "predict", "id": "G", "model": "echo", "inputs": {"IN": [[1]]}})
            wait_until(lambda: (marks / "first").exists(), 30.0, what="G's execute")
            await conn.send({"type": "predict", "id": "A", "model": "echo", "inputs": {"IN": [[2]]}})
            await conn.send({"type": "predict", "id": "B", "model": "echo", "inputs": {"IN": [[3], [4]]}})
            wait_until(lambda: _gauge(proc.port, 'wsserve_queue_depth{model="echo"}') == 2, 30.0,
                       what="A and B queued")
            (marks / "hold").unlink()
            frames = await conn.collect({"G", "A", "B"})
        finally:
            await conn.close()
        assert [f["type"] for rid in ("G", "A", "B") for f in frames[rid]] == ["response", "done"] * 3
        stats = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}").get_inference_statistics("echo")
        batches = stats["model_stats"][0]["batch_stats"]
        assert {b["batch_size"]: b["compute_infer"]["count"] for b in batches} == {1: 1, 3: 1}
    finally:
        (marks / "hold").unlink(missing_ok=True)
        proc.stop()


def test_a_rescheduled_requests_queue_time_is_counted_once(served) -> None:
    """A request over a gRPC stream run by three executes (rescheduled twice): its queue time (its
    wait before its first execute) is one observation of ``wsserve_queue_duration_seconds``, not one
    per execute (before, a decoupled request over gRPC had none)."""
    port = served[0].port
    before = _histogram(port, "wsserve_queue_duration_seconds", "iter").get("count", 0.0)
    s = _Stream(served[1])
    try:
        s.send("iter", "q1", IN=np.array([[3]], np.int32))
        got = s.until_final()
    finally:
        s.close()
    assert [int(r.as_numpy("OUT").reshape(-1)[0]) for r, _ in got] == [2, 1, 0]
    assert [dict(b)["q1"] for b in _batches(served[2]) if "q1" in _ids(b)] == [False, True, True]
    assert _histogram(port, "wsserve_queue_duration_seconds", "iter").get("count", 0.0) - before == 1
