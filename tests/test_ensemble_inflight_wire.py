"""``ensemble_scheduling { max_inflight_requests }`` over a real server on loopback: ``gen`` (a decoupled Triton
Python model) answers COUNT responses at once into ``slow`` (a Triton Python model of four instances, each
request held until the test opens its gate file), the case Triton's limit exists for (a fast decoupled
upstream ahead of a slow downstream step).  ``slow`` logs each request as it starts and ends (the
model-side record the concurrency is read from); the ensemble's step requests waiting for a place are its
``wsserve_queue_depth``.  Driven by ``tritonclient.grpc``'s streaming API and the WebSocket client."""

from __future__ import annotations

import asyncio
import json
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc")
tgrpc = pytest.importorskip("tritonclient.grpc")
from wsserve_client import Client, RequestCancelled  # noqa: E402

from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_triton_decoupled import _Stream  # noqa: E402

I32 = "data_type: TYPE_INT32"
#: IN -> IN % 1000 responses TOK [(IN // 1000) * 1000 + i] at once, then FINAL.
GEN_PBTXT = ('backend: "python"\nmax_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n'
             f'input [ {{ name: "IN" {I32} dims: [ 1 ] }} ]\noutput [ {{ name: "TOK" {I32} dims: [ 1 ] }} ]\n'
             'instance_group [ { count: 2 } ]\n')
GEN_PY = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        request = requests[0]
        sender = request.get_response_sender()
        v = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])

        def run():
            for i in range(v % 1000):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("TOK", np.array([v - v % 1000 + i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run, daemon=True).start()
'''
#: TOK -> OUT [2 * TOK]: "+TOK" appended to ``log`` as it starts, then held until ``open-<TOK // 1000>``
#: exists in the marks folder (TOK >= 1000; below: not held, as the server's warmup sample), then "-TOK" appended.
SLOW_PBTXT = (f'backend: "python"\nmax_batch_size: 0\ninput [ {{ name: "TOK" {I32} dims: [ 1 ] }} ]\n'
              f'output [ {{ name: "OUT" {I32} dims: [ 1 ] }} ]\ninstance_group [ {{ count: 4 }} ]\n'
              'parameters { key: "marks" value: { string_value: "MARKS" } }\n')
SLOW_PY = '''
import json
import os
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def _log(self, line):
        fd = os.open(self.marks / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)

    def execute(self, requests):
        responses = []
        for request in requests:
            tok = int(pb_utils.get_input_tensor_by_name(request, "TOK").as_numpy()[0])
            self._log(f"+{tok}")
            gate = threading.Event()
            while tok >= 1000 and not (self.marks / f"open-{tok // 1000}").exists():  # (group 0: the warmup's)
                gate.wait(0.01)
            self._log(f"-{tok}")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([2 * tok], np.int32))]))
        return responses
'''


def _ensemble(limit: int | None) -> str:
    scheduling = f"max_inflight_requests: {limit} " if limit is not None else ""
    return (f'platform: "ensemble"\nmax_batch_size: 0\ninput [ {{ name: "IN" {I32} dims: [ 1 ] }} ]\n'
            f'output [ {{ name: "OUT" {I32} dims: [ 1 ] }} ]\n'
            f'ensemble_scheduling {{ {scheduling}step [ '
            '{ model_name: "gen" model_version: -1 input_map { key: "IN" value: "IN" } '
            'output_map { key: "TOK" value: "tok" } }, '
            '{ model_name: "slow" model_version: -1 input_map { key: "TOK" value: "tok" } '
            'output_map { key: "OUT" value: "OUT" } } ] }\n')


#: One step, ``slow`` alone, one request at a time there: a request finding it busy waits at its first step.
ONE1_PBTXT = (f'platform: "ensemble"\nmax_batch_size: 0\ninput [ {{ name: "IN" {I32} dims: [ 1 ] }} ]\n'
              f'output [ {{ name: "OUT" {I32} dims: [ 1 ] }} ]\n'
              'ensemble_scheduling { max_inflight_requests: 1 step [ '
              '{ model_name: "slow" model_version: -1 input_map { key: "TOK" value: "IN" } '
              'output_map { key: "OUT" value: "OUT" } } ] }\n')


def _write(root: Path, name: str, pbtxt: str, model_py: str | None = None) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    if model_py is not None:
        (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    base = tmp_path_factory.mktemp("ensemble_inflight")
    root, marks = base / "model_repository", base / "marks"
    marks.mkdir()
    _write(root, "gen", GEN_PBTXT, GEN_PY)
    _write(root, "slow", SLOW_PBTXT.replace("MARKS", str(marks)), SLOW_PY)
    _write(root, "ens2", _ensemble(2))
    _write(root, "ens1", _ensemble(1))
    _write(root, "unlimited", _ensemble(None))
    _write(root, "one1", ONE1_PBTXT)
    _write(root, "rel1", ONE1_PBTXT)  # (reloaded by its test)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        wait_until(lambda: all(_ready(proc.port, m) for m in ("ens2", "ens1", "unlimited", "one1", "rel1")), 60.0,
                   what="the ensembles to load")
        yield proc, grpc_address(proc), marks
    finally:
        for group in range(10):  # (release whatever a failed test left held)
            (marks / f"open-{group}").touch()
        proc.stop()


def _ready(port: int, name: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{name}/ready", timeout=30) as answer:
            return answer.status == 200
    except OSError:
        return False


def _waiting(port: int, model: str) -> float:
    """``wsserve_queue_depth{model=...}``: the ensemble's step requests waiting for a place."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(f'wsserve_queue_depth{{model="{model}"}} '):
                return float(line.split()[1])
    return 0.0


def _record(marks: Path, group: int) -> list[str]:
    """``slow``'s log lines of the tokens of ``group`` (TOK // 1000), in order."""
    path = marks / "log"
    lines = path.read_text().split() if path.exists() else []
    return [x for x in lines if int(x[1:]) // 1000 == group]


def _most_at_once(lines: list[str]) -> int:
    most = now = 0
    for line in lines:
        now += 1 if line[0] == "+" else -1
        most = max(most, now)
    return most


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """:func:`wait_until` without blocking the event loop (the WebSocket client's frames are read on it)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 60.0
    while not predicate():
        assert loop.time() < until, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _config(port: int, name: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{name}/config", timeout=30) as answer:
        return json.loads(answer.read())


def test_a_fast_decoupled_step_has_at_most_n_requests_in_flight_at_the_slow_one_and_all_arrive(served) -> None:
    proc, address, marks = served
    stream = _Stream(address)
    try:
        stream.send("ens2", "many", IN=np.array([1012], np.int32))  # group 1: twelve responses
        # gen sent all twelve at once: two reach slow, ten wait for a place (and stay waiting: slow is held)
        wait_until(lambda: _waiting(proc.port, "ens2") == 10 and len(_record(marks, 1)) == 2, 60.0,
                   what="two of gen's responses at slow and ten waiting")
        assert _record(marks, 1) == ["+1000", "+1001"]
        (marks / "open-1").touch()
        got = stream.until_final()
    finally:
        (marks / "open-1").touch()  # (a failure above leaves nothing held for the next tests)
        stream.close()
    assert all(error is None for _, error in got)
    assert [r.as_numpy("OUT").tolist() for r, _ in got if r.get_response().outputs] == [[2 * (1000 + i)] for i in range(12)]
    record = _record(marks, 1)
    assert sorted(x for x in record if x[0] == "+") == [f"+{1000 + i}" for i in range(12)]
    assert _most_at_once(record) == 2  # never more than max_inflight_requests at slow
    assert _waiting(proc.port, "ens2") == 0


def test_without_a_limit_the_same_pipeline_has_more_than_n_in_flight(served) -> None:
    """The control: the same ensemble without ``max_inflight_requests`` has slow's four instances busy
    with gen's responses at once (what the limit above prevents)."""
    proc, address, marks = served
    stream = _Stream(address)
    try:
        stream.send("unlimited", "free", IN=np.array([2012], np.int32))
        wait_until(lambda: len(_record(marks, 2)) == 4, 60.0, what="slow's four instances busy")
        assert _waiting(proc.port, "unlimited") == 0
        (marks / "open-2").touch()
        got = stream.until_final()
    finally:
        (marks / "open-2").touch()
        stream.close()
    assert [r.as_numpy("OUT").tolist() for r, _ in got if r.get_response().outputs] == [[2 * (2000 + i)] for i in range(12)]
    assert _most_at_once(_record(marks, 2)) == 4


async def test_a_request_cancelled_while_waiting_for_a_place_ends_once_and_frees_nothing(served) -> None:
    """``ens1`` (one at a time per step): A holds slow's place; B's step waits for it; B is cancelled (one
    terminal frame: ``cancelled``); C then still waits (B gave back no place), and runs once A ends."""
    proc, address, marks = served
    a = _Stream(address)
    try:
        a.send("ens1", "a", IN=np.array([3001], np.int32))
        wait_until(lambda: _record(marks, 3) == ["+3000"], 60.0, what="A at slow")
        async with Client(proc.url) as client:
            async with client.predict_responses("ens1", [[4001]]) as b:  # (sent on entering)
                await _until(lambda: _waiting(proc.port, "ens1") == 1, "B waiting for slow's place")
                b.cancel()
                with pytest.raises(RequestCancelled):
                    await b.__anext__()
                with pytest.raises(StopAsyncIteration):  # its one terminal frame: nothing follows
                    await b.__anext__()
            await _until(lambda: _waiting(proc.port, "ens1") == 0, "B no longer waiting")
            (marks / "open-5").touch()  # C is not held at slow: only the place keeps it waiting
            async with client.predict_responses("ens1", [[5001]]) as c:
                await _until(lambda: _waiting(proc.port, "ens1") == 1, "C waiting for A's place")
                assert _record(marks, 5) == [] and _record(marks, 3) == ["+3000"]
                (marks / "open-3").touch()
                assert [r.outputs async for r in c] == [[[10000]]]  # (one output: its array)
        got = a.until_final()
    finally:
        for group in (3, 5):
            (marks / f"open-{group}").touch()
        a.close()
    assert [r.as_numpy("OUT").tolist() for r, _ in got if r.get_response().outputs] == [[6000]]
    assert _record(marks, 4) == []  # B's step never reached slow
    assert _most_at_once([x for x in (marks / "log").read_text().split() if int(x[1:]) // 1000 in (3, 4, 5)]) == 1


def test_get_model_config_reports_max_inflight_requests(served) -> None:
    proc, address, _ = served
    assert _config(proc.port, "ens2")["ensemble_scheduling"]["max_inflight_requests"] == 2
    assert _config(proc.port, "unlimited")["ensemble_scheduling"]["max_inflight_requests"] == 0
    client = tgrpc.InferenceServerClient(address)
    try:
        config = client.get_model_config("ens2").config
        assert [s.model_name for s in config.ensemble_scheduling.step] == ["gen", "slow"]
        scheduling = config.ensemble_scheduling
        if "max_inflight_requests" in scheduling.DESCRIPTOR.fields_by_name:
            assert scheduling.max_inflight_requests == 2
        else:  # an older tritonclient: the field is on the wire, unknown to it (field 2, varint 2)
            assert scheduling.SerializeToString().endswith(b"\x10\x02")
    finally:
        client.close()


def test_a_request_whose_step_waits_for_a_place_ends_at_its_deadline(served) -> None:
    """``one1`` (slow alone, one at a time): A holds slow's place (held); B, with a deadline (Triton's
    ``timeout`` parameter, 1 ms), waits for that place at its first step; B ends ``deadline_exceeded`` while
    A still holds it, as a request waiting in any of wsserve's queues does, not once A ends."""
    proc, address, marks = served
    a, b = _Stream(address), _Stream(address)
    try:
        a.send("one1", "a", IN=np.array([6001], np.int32))
        wait_until(lambda: _record(marks, 6) == ["+6001"], 60.0, what="A at slow")
        t = tgrpc.InferInput("IN", [1], "INT32")
        t.set_data_from_numpy(np.array([7001], np.int32))
        b.client.async_stream_infer("one1", [t], request_id="b", timeout=1000)
        result, error = b.results.get(timeout=60)
        assert result is None and error is not None
        assert "max_inflight_requests" in str(error) and "deadline" in str(error), error
        assert _record(marks, 6) == ["+6001"] and _record(marks, 7) == []  # A still held; B never reached slow
        assert _waiting(proc.port, "one1") == 0
        (marks / "open-6").touch()
        result, error = a.results.get(timeout=60)
        assert error is None and result.as_numpy("OUT").tolist() == [12002]
    finally:
        for group in (6, 7):
            (marks / f"open-{group}").touch()
        a.close()
        b.close()


def test_a_reloaded_ensemble_counts_places_anew_while_the_old_plan_finishes_its_requests(served) -> None:
    """As in Triton (an ensemble is always reloaded whole, core ``model_lifecycle.cc``, into a new
    ``EnsembleScheduler`` with its own per-step limiters; the requests in flight finish on the old one):
    ``rel1`` (slow alone, one at a time) has A at slow and B waiting for A's place; a reload with a changed
    config re-plans it.  C, after the reload, goes to slow at once beside A (the new plan's own count): two
    at slow for a step limited to one, until the old plan's requests end; B still waits for A's place."""
    proc, address, marks = served
    a, b, c = _Stream(address), _Stream(address), _Stream(address)
    root = marks.parent / "model_repository"
    try:
        a.send("rel1", "a", IN=np.array([8001], np.int32))
        wait_until(lambda: _record(marks, 8) == ["+8001"], 60.0, what="A at slow")
        b.send("rel1", "b", IN=np.array([8002], np.int32))
        wait_until(lambda: _waiting(proc.port, "rel1") == 1, 60.0, what="B waiting for slow's place")
        (root / "rel1" / "config.pbtxt").write_text(
            ONE1_PBTXT + 'parameters { key: "revision" value: { string_value: "2" } }\n')
        request = urllib.request.Request(f"http://127.0.0.1:{proc.port}/v2/repository/models/rel1/load", data=b"{}",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200
        c.send("rel1", "c", IN=np.array([9001], np.int32))
        wait_until(lambda: _record(marks, 9) == ["+9001"], 60.0, what="C at slow beside A")
        assert _record(marks, 8) == ["+8001"]  # A still there, B still waiting for A's place (the old plan's)
        (marks / "open-9").touch()
        result, error = c.results.get(timeout=60)
        assert error is None and result.as_numpy("OUT").tolist() == [18002]
        (marks / "open-8").touch()
        for stream, out in ((a, 16002), (b, 16004)):
            result, error = stream.results.get(timeout=60)
            assert error is None and result.as_numpy("OUT").tolist() == [out]
    finally:
        for group in (8, 9):
            (marks / f"open-{group}").touch()
        for stream in (a, b, c):
            stream.close()
    assert _record(marks, 8) == ["+8001", "-8001", "+8002", "-8002"]  # the old plan kept its limit of one
    log = [x for x in (marks / "log").read_text().split() if int(x[1:]) // 1000 in (8, 9)]
    assert _most_at_once(log) == 2  # A (old plan) and C (new plan) at once
