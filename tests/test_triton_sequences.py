"""Stateful Triton Python models (config.pbtxt ``sequence_batching``), served as Triton serves
them: an accumulator model.py (START resets a sequence's total, each request adds its IN, END
forgets it) called with tritonclient's ``sequence_id`` / ``sequence_start`` / ``sequence_end``
over HTTP and gRPC (several interleaved sequences on one ModelStreamInfer stream), the control
inputs and ``request.correlation_id()`` / ``request.flags()`` it sees, Triton's refusals, the slot
limit and idle expiry on a real server on loopback."""

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
thttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402

CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: CORRTYPE } ] }
  ]
"""
TENSORS = """
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "FLAGS" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "CORR" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "CTRL" data_type: TYPE_STRING dims: [ 1 ] }
]
"""


def _pbtxt(max_batch_size: int, idle_us: int, corrtype: str = "TYPE_UINT64") -> str:
    return (f'backend: "python"\nmax_batch_size: {max_batch_size}\n'
            f"sequence_batching {{\n  max_sequence_idle_microseconds: {idle_us}\n"
            + CONTROLS.replace("CORRTYPE", corrtype) + "}\n" + TENSORS)


#: The accumulator: per correlation id, START resets the total, IN is added, END forgets it.  It
#: answers the total, ``request.flags()``, ``request.correlation_id()`` and its control inputs
#: (START, END, READY, CORRID as JSON); two requests of one sequence in one execute fail both.
ACC_PY = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


def _value(request, name):
    a = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return a.decode() if isinstance(a, bytes) else a.item()


class TritonPythonModel:
    def initialize(self, args):
        self.totals = {}

    def execute(self, requests):
        ids = [r.correlation_id() for r in requests]
        if len(set(ids)) != len(ids):
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError("two requests of one sequence in a batch"))
                    for _ in requests]
        out = []
        for r in requests:
            cid, flags = r.correlation_id(), r.flags()
            ctrl = {k: _value(r, k) for k in ("START", "END", "READY", "CORRID")}
            if ctrl["START"] == 1.0:
                self.totals[cid] = 0
            self.totals[cid] += int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().reshape(-1)[0])
            total = self.totals[cid]
            if ctrl["END"] == 1:
                del self.totals[cid]
            lead = (1,) if self.batched else ()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", np.array([total], np.int32).reshape(lead + (1,))),
                pb_utils.Tensor("FLAGS", np.array([flags], np.int32).reshape(lead + (1,))),
                pb_utils.Tensor("CORR", np.array([str(cid).encode()], object).reshape(lead + (1,))),
                pb_utils.Tensor("CTRL", np.array([json.dumps(ctrl).encode()], object).reshape(lead + (1,)))]))
        return out
'''


def _write(root: Path, name: str, pbtxt: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    batched = "max_batch_size: 0" not in pbtxt
    code = textwrap.dedent(ACC_PY).replace("self.totals = {}", f"self.totals = {{}}\n        self.batched = {batched}")
    (root / name / "1" / "model.py").write_text(code)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("triton_sequences") / "model_repository"
    _write(root, "acc", _pbtxt(8, 60_000_000))
    _write(root, "acc_str", _pbtxt(0, 60_000_000, "TYPE_STRING"))  # string ids, no batch dimension
    _write(root, "acc_two", _pbtxt(2, 60_000_000))  # two slots
    _write(root, "acc_wait", _pbtxt(2, 60_000_000))  # two slots, for the deadline test alone
    _write(root, "acc_idle", _pbtxt(4, 100_000))  # sequences idle 0.1 s let go
    _write(root, "acc_cancel", _pbtxt(1, 60_000_000))  # one slot, for the cancelled-START test alone
    _write(root, "acc_late", _pbtxt(1, 60_000_000))  # one slot, for the overdue-START test alone
    _write(root, "plain", 'backend: "python"\nmax_batch_size: 8\n' + TENSORS)  # no sequence_batching
    (root / "plain" / "1" / "model.py").write_text(textwrap.dedent('''
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                out = []
                for r in requests:
                    n = len(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())
                    out.append(pb_utils.InferenceResponse([
                        pb_utils.Tensor("SUM", np.full((n, 1), r.correlation_id(), np.int32)),
                        pb_utils.Tensor("FLAGS", np.full((n, 1), r.flags(), np.int32)),
                        pb_utils.Tensor("CORR", np.full((n, 1), b"", object)),
                        pb_utils.Tensor("CTRL", np.full((n, 1), b"", object))]))
                return out
    '''))
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def _http_infer(client: Any, model: str, value: int, batched: bool = True, **sequence: Any) -> Any:
    t = thttp.InferInput("IN", [1, 1] if batched else [1], "INT32")
    t.set_data_from_numpy(np.array([[value]] if batched else [value], np.int32))
    return client.infer(model, [t], **sequence)


def _row(result: Any) -> tuple[int, int, str, dict[str, Any]]:
    """(SUM, FLAGS, CORR, CTRL) of a one-row answer."""
    get = result.as_numpy
    ctrl = get("CTRL").reshape(-1)[0]
    corr = get("CORR").reshape(-1)[0]
    return (int(get("SUM").reshape(-1)[0]), int(get("FLAGS").reshape(-1)[0]),
            corr.decode() if isinstance(corr, bytes) else corr,
            json.loads(ctrl.decode() if isinstance(ctrl, bytes) else ctrl))


def test_interleaved_sequences_over_http_accumulate_with_their_ids_flags_and_controls(served) -> None:
    client = thttp.InferenceServerClient(served[0].http.removeprefix("http://"))
    try:
        values = {101: [1, 2, 3], 102: [10, 20], 103: [5]}
        totals: dict[int, int] = {}
        for step in range(3):
            for sid, seq in values.items():
                if step >= len(seq):
                    continue
                start, end = step == 0, step == len(seq) - 1
                got = _row(_http_infer(client, "acc", seq[step], sequence_id=sid, sequence_start=start,
                                       sequence_end=end))
                totals[sid] = totals.get(sid, 0) + seq[step]
                flags = (1 if start else 0) | (2 if end else 0)
                assert got == (totals[sid], flags, str(sid),
                               {"START": float(start), "END": int(end), "READY": True, "CORRID": sid})
        # a string id on the model whose CORRID is TYPE_STRING (no batch dimension)
        assert _row(_http_infer(client, "acc_str", 4, False, sequence_id="user-7", sequence_start=True))[:3] == \
            (4, 1, "user-7")
        assert _row(_http_infer(client, "acc_str", 6, False, sequence_id="user-7", sequence_end=True))[:3] == \
            (10, 2, "user-7")
        config = client.get_model_config("acc")
        assert "dynamic_batching" not in config
        assert config["sequence_batching"]["max_sequence_idle_microseconds"] == "60000000"
        assert [c["name"] for c in config["sequence_batching"]["control_input"]] == ["START", "END", "READY", "CORRID"]
    finally:
        client.close()


def test_interleaved_sequences_on_one_grpc_stream_run_in_order(served) -> None:
    """Three sequences' requests sent at once on one ModelStreamInfer stream: each sequence's run
    one at a time in order (the model fails a batch holding two of one sequence)."""
    client = tgrpc.InferenceServerClient(served[1])
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        plan = [(201, 1), (202, 100), (201, 2), (203, 7), (202, 200), (201, 3), (203, 8), (202, 300)]
        counts = {201: 3, 202: 3, 203: 2}
        seen: dict[int, int] = {}
        for i, (sid, value) in enumerate(plan):
            seen[sid] = seen.get(sid, 0) + 1
            t = tgrpc.InferInput("IN", [1, 1], "INT32")
            t.set_data_from_numpy(np.array([[value]], np.int32))
            client.async_stream_infer("acc", [t], request_id=str(i), sequence_id=sid,
                                      sequence_start=seen[sid] == 1, sequence_end=seen[sid] == counts[sid])
        answers = {}
        for _ in plan:
            result, error = results.get(timeout=60)
            assert error is None, error
            answers[result.get_response().id] = _row(result)
        sums = [answers[str(i)][0] for i in range(len(plan))]
        assert sums == [1, 100, 3, 7, 300, 6, 15, 600]
        assert [answers[str(i)][1] for i in range(len(plan))] == [1, 1, 0, 1, 0, 2, 2, 2]
        assert [answers[str(i)][2] for i in range(len(plan))] == [str(sid) for sid, _ in plan]
    finally:
        client.stop_stream()
        client.close()


def test_triton_refusals_of_sequence_requests(served) -> None:
    client = tgrpc.InferenceServerClient(served[1])
    http = thttp.InferenceServerClient(served[0].http.removeprefix("http://"))
    t = tgrpc.InferInput("IN", [1, 1], "INT32")
    t.set_data_from_numpy(np.array([[1]], np.int32))
    try:
        with pytest.raises(InferenceServerException, match="inference request to model 'acc' must specify a "
                                                           "non-zero or non-empty correlation ID"):
            client.infer("acc", [t])
        with pytest.raises(InferenceServerException, match="inference request for sequence 301 to model 'acc' must "
                                                           "specify the START flag on the first request of the sequence"):
            client.infer("acc", [t], sequence_id=301)
        client.infer("acc", [t], sequence_id=302, sequence_start=True, sequence_end=True)
        top = client.infer("acc", [t], sequence_id=(1 << 63) - 1, sequence_start=True, sequence_end=True)
        assert _row(top)[1:3] == (3, str((1 << 63) - 1))  # tritonclient.grpc sends it as int64_param
        top = _http_infer(http, "acc", 1, sequence_id=(1 << 64) - 1, sequence_start=True, sequence_end=True)
        assert _row(top)[1:3] == (3, str((1 << 64) - 1))  # the largest uint64 id, through CORRID TYPE_UINT64
        one = tgrpc.InferInput("IN", [1], "INT32")
        one.set_data_from_numpy(np.array([5], np.int32))
        assert _row(client.infer("acc_str", [one], sequence_id="grpc-id", sequence_start=True,
                                 sequence_end=True))[:3] == (5, 3, "grpc-id")
        with pytest.raises(InferenceServerException, match="sequence 302 .* must specify the START flag"):
            client.infer("acc", [t], sequence_id=302)  # it ended
        with pytest.raises(InferenceServerException, match="sequence_id 'abc' is a string; the model's CORRID "
                                                           "control input 'CORRID' takes an integer"):
            client.infer("acc", [t], sequence_id="abc", sequence_start=True, sequence_end=True)
        with pytest.raises(InferenceServerException, match="'sequence_id' is a string of 300 characters"):
            _http_infer(http, "acc", 1, sequence_id="x" * 300, sequence_start=True)
        # a model without sequence_batching: batched as any request, its correlation id and flags
        # passed to the model (as Triton's frontends set them on every request)
        plain = _http_infer(http, "plain", 1, sequence_id=5, sequence_start=True)
        assert (plain.as_numpy("SUM").tolist(), plain.as_numpy("FLAGS").tolist()) == ([[5]], [[1]])
    finally:
        client.close()
        http.close()


def test_slots_bound_the_sequences_at_once_and_idle_ones_are_let_go(served) -> None:
    proc, address = served
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"), concurrency=2)
    try:
        # acc_two: 2 slots (max_batch_size 2, one instance); a third sequence waits for one
        assert _row(_http_infer(client, "acc_two", 1, sequence_id=1, sequence_start=True))[0] == 1
        assert _row(_http_infer(client, "acc_two", 2, sequence_id=2, sequence_start=True))[0] == 2
        t = thttp.InferInput("IN", [1, 1], "INT32")
        t.set_data_from_numpy(np.array([[3]], np.int32))
        third = client.async_infer("acc_two", [t], sequence_id=3, sequence_start=True, sequence_end=True)
        assert _row(_http_infer(client, "acc_two", 20, sequence_id=2))[0] == 22  # 1 and 2 still run
        with pytest.raises(InferenceServerException, match="failed to obtain inference response"):
            third.get_result(block=False)  # still waiting: no slot is free
        assert _row(_http_infer(client, "acc_two", 10, sequence_id=1, sequence_end=True))[0] == 11
        assert _row(third.get_result())[:2] == (3, 3)  # 1 ended: 3 had its slot
        # acc_idle: a sequence idle for max_sequence_idle_microseconds (0.1 s) is let go
        _http_infer(client, "acc_idle", 1, sequence_id=9, sequence_start=True)
        wait_until(lambda: "acc_idle: 1 sequences idle" in proc.stderr_text(), 30.0, what="the idle sequence let go")
        with pytest.raises(InferenceServerException, match="sequence 9 to model 'acc_idle' must specify the START"):
            _http_infer(client, "acc_idle", 2, sequence_id=9)
    finally:
        client.close()


async def test_websocket_predicts_carry_a_sequence_too(served) -> None:
    """The WebSocket ``predict`` takes ``sequence_id`` / ``sequence_start`` / ``sequence_end`` (the
    OIP parameters' names); two sequences sent at once on one socket each run in order."""
    from tests.support.conn import Conn

    conn = await Conn.open(served[0].url)
    try:
        frame = await conn.request({"type": "predict", "id": "none", "model": "acc", "inputs": {"IN": [[1]]}})
        assert frame["type"] == "error" and "must specify a non-zero or non-empty correlation ID" in frame["message"]
        plan = [("a1", "s-a", 1, True, False), ("b1", 77, 10, True, False), ("a2", "s-a", 2, False, True),
                ("b2", 77, 20, False, True)]
        for rid, sid, value, start, end in plan:
            await conn.send({"type": "predict", "id": rid, "model": "acc_str", "inputs": {"IN": [[value]]},
                             "sequence_id": sid, "sequence_start": start, "sequence_end": end})
        frames = await conn.collect({p[0] for p in plan})
        got = {rid: fs[-1] for rid, fs in frames.items()}
        assert all(f["type"] == "result" for f in got.values()), got
        assert {rid: (f["outputs"]["SUM"], f["outputs"]["FLAGS"], f["outputs"]["CORR"]) for rid, f in got.items()} == {
            "a1": ([[1]], [[1]], [["s-a"]]), "a2": ([[3]], [[2]], [["s-a"]]),
            "b1": ([[10]], [[1]], [["77"]]), "b2": ([[30]], [[2]], [["77"]])}
        frame = await conn.request({"type": "predict", "id": "bad", "model": "acc", "inputs": {"IN": [[1]]},
                                    "sequence_id": 5, "sequence_start": "yes"})
        assert frame["type"] == "error" and "'sequence_start' must be a boolean" in frame["message"]
    finally:
        await conn.close()


def test_a_request_of_two_rows_is_refused_and_odd_ids_name_the_parameter(served) -> None:
    """Triton's batch-size-1 rule over gRPC; over HTTP ids that are floats, booleans, negative,
    past uint64 or too long are 400 naming ``sequence_id``, and the sequence is never started."""
    import json
    import urllib.error
    import urllib.request

    client = tgrpc.InferenceServerClient(served[1])
    t = tgrpc.InferInput("IN", [2, 1], "INT32")
    t.set_data_from_numpy(np.array([[1], [2]], np.int32))
    try:
        with pytest.raises(InferenceServerException, match="inference request to model 'acc' must specify "
                                                           "batch-size 1 due to requirements of sequence batcher"):
            client.infer("acc", [t], sequence_id=401, sequence_start=True)
        one = tgrpc.InferInput("IN", [1, 1], "INT32")
        one.set_data_from_numpy(np.array([[1]], np.int32))
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            client.infer("acc", [one], sequence_id=401)  # the refused START started nothing
    finally:
        client.close()
    for sid in (7.0, True, -1, 1 << 64, "x" * 257):
        body = json.dumps({"inputs": [{"name": "IN", "datatype": "INT32", "shape": [1, 1], "data": [1]}],
                           "parameters": {"sequence_id": sid, "sequence_start": True}}).encode()
        req = urllib.request.Request(f"{served[0].http}/v2/models/acc/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 400 and "sequence_id" in err.value.read().decode()


def test_a_sequence_waiting_for_a_slot_past_its_timeout_is_answered_then(served) -> None:
    """acc_wait's two slots held (idle let go only after 60 s): a third sequence's START with a
    Triton ``timeout`` (microseconds) ends with its deadline, not when a slot frees; the holders go on."""
    client = thttp.InferenceServerClient(served[0].http.removeprefix("http://"))
    try:
        assert _row(_http_infer(client, "acc_wait", 1, sequence_id=501, sequence_start=True))[0] == 1
        assert _row(_http_infer(client, "acc_wait", 2, sequence_id=502, sequence_start=True))[0] == 2
        t = thttp.InferInput("IN", [1, 1], "INT32")
        t.set_data_from_numpy(np.array([[5]], np.int32))
        late = client.async_infer("acc_wait", [t], sequence_id=503, sequence_start=True, sequence_end=True,
                                  timeout=50_000)
        with pytest.raises(InferenceServerException, match="(?i)deadline"):
            late.get_result(block=True, timeout=20)
        assert _row(_http_infer(client, "acc_wait", 10, sequence_id=501, sequence_end=True))[0] == 11
        assert _row(_http_infer(client, "acc_wait", 20, sequence_id=502, sequence_end=True))[0] == 22
    finally:
        client.close()


async def test_a_cancelled_start_aborts_its_sequence_instead_of_running_the_rest_without_it(served) -> None:
    """acc_cancel's one slot held by 701: 702's START and two more wait for it; the client cancels
    the START.  As Triton's sequence batcher cancels such a sequence, the requests behind it end at
    once with ``bad_request`` naming the sequence and why (the model would otherwise run them with
    no START); 702 never reached the model, 701 goes on, and 702 can START again."""
    from tests.support.conn import Conn

    def predict(rid: str, sid: int, value: int, start: bool = False, end: bool = False) -> dict[str, Any]:
        return {"type": "predict", "id": rid, "model": "acc_cancel", "inputs": {"IN": [[value]]},
                "sequence_id": sid, "sequence_start": start, "sequence_end": end}

    conn = await Conn.open(served[0].url)
    try:
        frame = await conn.request(predict("a1", 701, 1, start=True))
        assert frame["type"] == "result" and frame["outputs"]["SUM"] == [[1]], frame
        await conn.send(predict("b1", 702, 5, start=True))  # waits for the slot
        await conn.send(predict("b2", 702, 6))
        await conn.send(predict("b3", 702, 7, end=True))
        await conn.send({"type": "cancel", "id": "b1"})
        frames = await conn.collect({"b1", "b2", "b3"}, timeout=30)
        got = {rid: fs[-1] for rid, fs in frames.items()}
        assert got["b1"]["type"] == "error" and got["b1"]["code"] == "cancelled", got
        for rid in ("b2", "b3"):
            assert got[rid]["type"] == "error" and got[rid]["code"] == "bad_request", got
            assert got[rid]["message"] == (
                "inference request for sequence 702 to model 'acc_cancel' was not run: sequence 702 was aborted: "
                "its START was cancelled before the model ran it; start the sequence again (sequence_start)")
        frame = await conn.request(predict("a2", 701, 2, end=True))
        assert frame["type"] == "result" and frame["outputs"]["SUM"] == [[3]], frame
        frame = await conn.request(predict("c1", 702, 9, start=True, end=True))  # the slot is free: 702 anew
        assert frame["type"] == "result" and frame["outputs"]["SUM"] == [[9]] and frame["outputs"]["FLAGS"] == [[3]]
    finally:
        await conn.close()


def test_a_start_past_its_deadline_on_a_grpc_stream_aborts_the_rest_of_its_sequence(served) -> None:
    """acc_late's one slot held by 801: on one ModelStreamInfer stream 802's START (Triton
    ``timeout`` 0.1 s) and two more requests wait; the START ends with its deadline and the other
    two with ``INVALID_ARGUMENT`` naming the sequence (not run later without START)."""
    client = tgrpc.InferenceServerClient(served[1])
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    one = tgrpc.InferInput("IN", [1, 1], "INT32")
    one.set_data_from_numpy(np.array([[1]], np.int32))
    try:
        assert _row(client.infer("acc_late", [one], sequence_id=801, sequence_start=True))[0] == 1
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for rid, start, end, timeout in (("s", True, False, 100_000), ("n", False, False, None),
                                         ("e", False, True, None)):
            client.async_stream_infer("acc_late", [one], request_id=rid, sequence_id=802, sequence_start=start,
                                      sequence_end=end, timeout=timeout)
        answers = [results.get(timeout=30) for _ in range(3)]
        assert all(result is None for result, _ in answers), answers
        errors = [str(error) for _, error in answers]
        assert "deadline" in errors[0].lower(), errors
        assert all("sequence 802 was aborted: its START passed its deadline before the model ran it" in e
                   for e in errors[1:]), errors
        assert _row(client.infer("acc_late", [one], sequence_id=801, sequence_end=True))[0] == 2
        assert _row(client.infer("acc_late", [one], sequence_id=802, sequence_start=True, sequence_end=True))[:2] \
            == (1, 3)
    finally:
        client.stop_stream()
        client.close()


async def test_requests_waiting_for_their_sequence_count_against_max_queue_rows(tmp_path: Path) -> None:
    """A server with ``--max-queue-rows 2``: the one slot of acc held, two requests of another
    sequence waiting for it fill the model's queue, so a third (WebSocket) and a new sequence's
    START (HTTP) are refused ``overloaded`` with the retry hint, as a full batch queue refuses."""
    from tests.support.conn import Conn

    root = tmp_path / "model_repository"
    _write(root, "acc", _pbtxt(1, 60_000_000))
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--max-queue-rows", "2")

    def predict(rid: str, sid: int, value: int, start: bool = False, end: bool = False) -> dict[str, Any]:
        return {"type": "predict", "id": rid, "model": "acc", "inputs": {"IN": [[value]]},
                "sequence_id": sid, "sequence_start": start, "sequence_end": end}

    conn = await Conn.open(proc.url)
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    try:
        frame = await conn.request(predict("a1", 1, 1, start=True))
        assert frame["type"] == "result", frame
        await conn.send(predict("b1", 2, 10, start=True))  # waits for the slot
        await conn.send(predict("b2", 2, 20))  # 2 rows wait: the queue is full
        frame = await conn.request(predict("b3", 2, 30, end=True))
        assert frame["type"] == "error" and frame["code"] == "overloaded", frame
        assert "limit 2 (max_queue_rows)" in frame["message"] and frame["retry_after_ms"] >= 1, frame
        with pytest.raises(InferenceServerException, match="max_queue_rows"):
            _http_infer(client, "acc", 5, sequence_id=3, sequence_start=True)
        frame = await conn.request(predict("a2", 1, 2, end=True))  # 1 ends: 2 takes the slot, its rows run
        assert frame["type"] == "result" and frame["outputs"]["SUM"] == [[3]], frame
        frames = await conn.collect({"b1", "b2"}, timeout=30)
        assert [frames[rid][-1]["outputs"]["SUM"] for rid in ("b1", "b2")] == [[[10]], [[30]]], frames
        frame = await conn.request(predict("b3", 2, 30, end=True))  # room again
        assert frame["type"] == "result" and frame["outputs"]["SUM"] == [[60]], frame
    finally:
        client.close()
        await conn.close()
        proc.stop()


def test_oldest_strategy_runs_max_candidate_sequences_at_once(tmp_path: Path) -> None:
    """``oldest { max_candidate_sequences: 3 }`` with ``max_batch_size: 1``: three sequences hold
    a slot at once (Direct: one, the second waiting until the first ends), their requests batched
    one at a time, oldest first; a fourth waits for a slot."""
    root = tmp_path / "model_repository"
    _write(root, "acc", _pbtxt(1, 60_000_000).replace(
        "sequence_batching {\n", "sequence_batching {\n  oldest { max_candidate_sequences: 3 }\n"))
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"), concurrency=2)
    try:
        for sid in (1, 2, 3):  # none ends: with Direct's one slot the second would wait for the first
            assert _row(_http_infer(client, "acc", sid * 10, sequence_id=sid, sequence_start=True))[0] == sid * 10
        assert [_row(_http_infer(client, "acc", 1, sequence_id=sid))[0] for sid in (3, 2, 1)] == [31, 21, 11]
        t = thttp.InferInput("IN", [1, 1], "INT32")
        t.set_data_from_numpy(np.array([[4]], np.int32))
        fourth = client.async_infer("acc", [t], sequence_id=4, sequence_start=True, sequence_end=True)
        assert _row(_http_infer(client, "acc", 1, sequence_id=1, sequence_end=True))[0] == 12
        assert _row(fourth.get_result())[:2] == (4, 3)  # 1 ended: 4 had its slot
    finally:
        client.close()
        proc.stop()


async def test_a_backlogged_sequence_given_a_slot_behind_a_full_queue_still_runs(tmp_path: Path) -> None:
    """``--max-queue-rows 2``, acc with three slots: "c"'s START waits for a slot (the queue
    empty), then the holders "b" and "d" fill the batch queue while "a"'s request runs.  When "a"
    ends, "c" takes its slot and its START and END run (before: the batch queue refused the START
    it had taken, ``overloaded``, and "c"'s END was aborted with ``bad_request``)."""
    from tests.support.conn import Conn

    root = tmp_path / "model_repository"
    gate, running = tmp_path / "gate", tmp_path / "running"
    _write(root, "acc", _pbtxt(3, 60_000_000))
    model_py = root / "acc" / "1" / "model.py"
    model_py.write_text(model_py.read_text().replace("    def execute(self, requests):\n", f"""    def execute(self, requests):
        import os, time
        if any(int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().reshape(-1)[0]) == 3 for r in requests):
            open({str(running)!r}, "w").close()
            while not os.path.exists({str(gate)!r}):  # held until the test opens the gate
                time.sleep(0.005)
"""))
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--max-queue-rows", "2")

    def predict(rid: str, sid: int, value: int, start: bool = False, end: bool = False) -> dict[str, Any]:
        return {"type": "predict", "id": rid, "model": "acc", "inputs": {"IN": [[value]]},
                "sequence_id": sid, "sequence_start": start, "sequence_end": end}

    conn = await Conn.open(proc.url)
    try:
        for rid, sid, value in (("b1", 12, 1), ("d1", 14, 2)):  # two slot holders
            frame = await conn.request(predict(rid, sid, value, start=True))
            assert frame["type"] == "result", frame
        await conn.send(predict("a1", 11, 3, start=True, end=True))  # the third slot: held in the model
        wait_until(running.exists, 60.0, what="the model running a's request")
        await conn.send(predict("c1", 13, 4, start=True))  # no slot free: waits (the queue is empty)
        await conn.send(predict("c2", 13, 5, end=True))
        await conn.send(predict("b2", 12, 6, end=True))  # slot holders: to the batch queue, now full
        await conn.send(predict("d2", 14, 7, end=True))
        frame = await conn.request(predict("e1", 15, 8, start=True, end=True))
        assert frame["id"] == "e1" and frame["code"] == "overloaded", frame  # the queue is full indeed
        gate.touch()
        frames = await conn.collect({"a1", "b2", "d2", "c1", "c2"}, timeout=60)
        got = {rid: fs[-1] for rid, fs in frames.items()}
        assert {rid: (f["type"], f.get("outputs", {}).get("SUM")) for rid, f in got.items()} == {
            "a1": ("result", [[3]]), "b2": ("result", [[7]]), "d2": ("result", [[9]]),
            "c1": ("result", [[4]]), "c2": ("result", [[9]])}, got
    finally:
        gate.touch()
        await conn.close()
        proc.stop()


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A server taking at most 2 unfinished requests per connection (``--max-inflight 2``), with
    one-slot accumulators (``max_batch_size: 1``, one instance) idle for a minute before let go."""
    root = tmp_path_factory.mktemp("narrow_sequences") / "model_repository"
    _write(root, "one_grpc", _pbtxt(1, 60_000_000))
    _write(root, "one_ws", _pbtxt(1, 60_000_000))
    _write(root, "one_flood", _pbtxt(1, 60_000_000))
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-inflight", "2")
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


#: Two sequences on one connection to a one-slot model: A holds the slot; B's requests wait for it
#: (more of them than --max-inflight), then A's END comes, which frees the slot for B.
INTERLEAVED = [("a1", 1, 1, True, False), ("b1", 2, 10, True, False), ("b2", 2, 20, False, False),
               ("b3", 2, 30, False, False), ("a2", 1, 2, False, True), ("b4", 2, 40, False, True)]
INTERLEAVED_SUMS = {"a1": 1, "b1": 10, "b2": 30, "b3": 60, "a2": 3, "b4": 100}


def test_a_grpc_stream_with_more_sequences_than_slots_goes_on_past_the_backlogged_ones(narrow) -> None:
    """A ModelStreamInfer stream's requests of a sequence waiting for a slot do not hold the
    stream's reading (``--max-inflight``): the END of the sequence holding the slot, sent behind
    them, is read and run, which gives the backlogged sequence its slot; every request is
    answered, in the order the requests came (Triton's order for a non-decoupled model)."""
    client = tgrpc.InferenceServerClient(narrow[1])
    answers: list[tuple[str, int]] = []
    errors: list[Any] = []

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            errors.append(error)
        else:
            answers.append((result.get_response().id, _row(result)[0]))

    client.start_stream(callback=callback)
    try:
        for rid, sid, value, start, end in INTERLEAVED:
            t = tgrpc.InferInput("IN", [1, 1], "INT32")
            t.set_data_from_numpy(np.array([[value]], np.int32))
            client.async_stream_infer("one_grpc", [t], request_id=rid, sequence_id=sid, sequence_start=start,
                                      sequence_end=end)
        # (A idles out after 60 s: well past this bound, so a stalled stream fails here)
        wait_until(lambda: len(answers) + len(errors) >= len(INTERLEAVED), 30.0, what="every request answered")
        assert errors == []
        assert dict(answers) == INTERLEAVED_SUMS
        assert [rid for rid, _ in answers] == [p[0] for p in INTERLEAVED]  # in the order they came
    finally:
        client.stop_stream()
        client.close()


async def test_a_websocket_with_more_sequences_than_slots_goes_on_past_the_backlogged_ones(narrow) -> None:
    """The same on one WebSocket: requests waiting for a slot do not count against the
    connection's ``max_inflight`` (2), so the END freeing the slot is taken, not refused
    ``overloaded`` (A's START is answered first: A's two requests never run at once)."""
    from tests.support.conn import Conn

    def predict(rid: str, sid: int, value: int, start: bool, end: bool) -> dict[str, Any]:
        return {"type": "predict", "id": rid, "model": "one_ws", "inputs": {"IN": [[value]]},
                "sequence_id": sid, "sequence_start": start, "sequence_end": end}

    conn = await Conn.open(narrow[0].url)
    try:
        got = {"a1": await conn.request(predict(*INTERLEAVED[0]))}
        for plan in INTERLEAVED[1:]:
            await conn.send(predict(*plan))
        frames = await conn.collect({p[0] for p in INTERLEAVED[1:]}, timeout=30.0)
        got.update({rid: fs[-1] for rid, fs in frames.items()})
        assert {rid: f for rid, f in got.items() if f["type"] != "result"} == {}
        assert {rid: f["outputs"]["SUM"][0][0] for rid, f in got.items()} == INTERLEAVED_SUMS
    finally:
        await conn.close()


#: A's requests answered behind B's waiting START outnumber --max-inflight (2) before A's END comes.
BEHIND = [("c1", 11, 1, True, False), ("d1", 12, 10, True, False), ("c2", 11, 2, False, False),
          ("c3", 11, 3, False, False), ("c4", 11, 4, False, True), ("d2", 12, 20, False, True)]
BEHIND_SUMS = {"c1": 1, "d1": 10, "c2": 3, "c3": 6, "c4": 10, "d2": 30}


def test_a_grpc_stream_reads_on_while_answers_wait_behind_a_request_waiting_for_a_slot(narrow) -> None:
    """The answers of the sequence holding the slot, computed but written only after the earlier
    request waiting for a slot (the stream's order), do not stop the stream's reading either:
    with more of them than ``--max-inflight`` before the END that frees the slot, the END is
    still read (else the stream stalls until A idles out, a minute, and A's requests fail)."""
    client = tgrpc.InferenceServerClient(narrow[1])
    answers: list[tuple[str, int]] = []
    errors: list[Any] = []

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            errors.append(error)
        else:
            answers.append((result.get_response().id, _row(result)[0]))

    client.start_stream(callback=callback)
    try:
        for rid, sid, value, start, end in BEHIND:
            t = tgrpc.InferInput("IN", [1, 1], "INT32")
            t.set_data_from_numpy(np.array([[value]], np.int32))
            client.async_stream_infer("one_grpc", [t], request_id=rid, sequence_id=sid, sequence_start=start,
                                      sequence_end=end)
        wait_until(lambda: len(answers) + len(errors) >= len(BEHIND), 30.0, what="every request answered")
        assert errors == []
        assert [rid for rid, _ in answers] == [p[0] for p in BEHIND]
        assert dict(answers) == BEHIND_SUMS
    finally:
        client.stop_stream()
        client.close()


async def test_a_websocket_opening_sequences_past_the_slots_is_bounded_by_the_models_queue(narrow) -> None:
    """Requests waiting for a slot are not counted against ``max_inflight`` (2), but one connection
    cannot hold more of them than the model's queue takes (``max_queue_size``, by default 1024
    requests of sequences waiting): past it each new sequence is refused ``overloaded``; once the
    holder's END frees the slot (a full backlog does not refuse it) every accepted one runs, and
    the connection still takes new requests."""
    from tests.support.conn import Conn

    def predict(rid: str, sid: int, value: int, start: bool, end: bool) -> dict[str, Any]:
        return {"type": "predict", "id": rid, "model": "one_flood", "inputs": {"IN": [[value]]},
                "sequence_id": sid, "sequence_start": start, "sequence_end": end}

    conn = await Conn.open(narrow[0].url)
    try:
        first = await conn.request(predict("hold", 1, 1, True, False))
        assert first["type"] == "result"
        flood = [f"s{i}" for i in range(1040)]
        for i, rid in enumerate(flood):
            await conn.send(predict(rid, 1000 + i, 1, True, True))
        await conn.send(predict("end", 1, 1, False, True))
        frames = await conn.collect({*flood, "end"}, timeout=120.0)
        last = {rid: fs[-1] for rid, fs in frames.items()}
        assert last["end"]["type"] == "result", last["end"]
        refused = [rid for rid in flood if last[rid]["type"] != "result"]
        assert {last[rid]["code"] for rid in refused} == {"overloaded"}
        assert len(refused) == len(flood) - 1024
        for i in range(3):
            await conn.send(predict(f"x{i}", 5000 + i, 1, True, True))
        after = await conn.collect({"x0", "x1", "x2"}, timeout=30.0)
        assert sum(fs[-1]["type"] == "result" for fs in after.values()) >= 2
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``narrow``'s limits with answers waiting for their turn held to 4096 bytes
    (``--max-write-buffer-bytes``: each counts 4 KiB more than its message, so any one is past
    it), a one-slot accumulator idle for 1 s before let go."""
    root = tmp_path_factory.mktemp("capped_sequences") / "model_repository"
    _write(root, "one_grpc", _pbtxt(1, 1_000_000))
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-inflight", "2", "--max-write-buffer-bytes", "4096")
    try:
        yield grpc_address(proc)
    finally:
        proc.stop()


def test_answers_waiting_behind_a_request_waiting_for_a_slot_are_bounded_in_bytes(capped) -> None:
    """Past ``--max-write-buffer-bytes`` the answers waiting for their turn count against the
    stream's read bound again: A's END, sent behind more than ``--max-inflight`` of them, is read
    only once A has idled out (1 s), letting its slot go to B, so it is refused (START required)."""
    client = tgrpc.InferenceServerClient(capped)
    got: list[tuple[str, Any]] = []

    def callback(result: Any, error: Any) -> None:
        got.append(("error", str(error)) if error is not None else (result.get_response().id, _row(result)[0]))

    client.start_stream(callback=callback)
    try:
        for rid, sid, value, start, end in BEHIND:
            t = tgrpc.InferInput("IN", [1, 1], "INT32")
            t.set_data_from_numpy(np.array([[value]], np.int32))
            client.async_stream_infer("one_grpc", [t], request_id=rid, sequence_id=sid, sequence_start=start,
                                      sequence_end=end)
        wait_until(lambda: len(got) >= len(BEHIND), 30.0, what="every request answered")
        assert [rid for rid, _ in got] == ["c1", "d1", "c2", "c3", "error", "d2"]
        assert "must specify the START flag" in got[4][1]
        assert dict(got[:4] + got[5:]) == {"c1": 1, "d1": 10, "c2": 3, "c3": 6, "d2": 30}
    finally:
        client.stop_stream()
        client.close()
