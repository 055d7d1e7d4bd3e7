"""Ensembles with a decoupled step, served as Triton serves them (TensorRT-LLM's ``ensemble``
pattern): ``ens`` runs ``pre`` (a Triton Python model: IN -> COUNT, MODE), ``gen`` (a decoupled
Triton Python model: COUNT responses TOK, IDX) and ``post`` (a Triton Python model: TOK -> OUT);
each response of ``gen`` flows through ``post`` and the ensemble (its config says nothing of a
transaction policy, as TensorRT-LLM's) streams one response per response, then ends.  A real server
on loopback driven by ``tritonclient.grpc``'s streaming API, the WebSocket (wsserve_client's
``predict_responses``) and HTTP ``generate_stream``; an error mid-stream (``gen``'s, ``post``'s),
cancellation (``gen`` sees it) and the bound on what a request holds inside the ensemble."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc")
tgrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402
from wsserve_client import Client, InvalidInput, RequestCancelled  # noqa: E402

from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_triton_decoupled import _events, _inflight, _post, _Stream  # noqa: E402

I32 = "data_type: TYPE_INT32"
#: IN -> COUNT (IN % 1000) and MODE (IN // 1000), for ``gen``.
PRE_PBTXT = (f'backend: "python"\nmax_batch_size: 0\ninput [ {{ name: "IN" {I32} dims: [ 1 ] }} ]\n'
             f'output [ {{ name: "COUNT" {I32} dims: [ 1 ] }}, {{ name: "MODE" {I32} dims: [ 1 ] }} ]\n')
PRE_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            v = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("COUNT", np.array([v % 1000], np.int32)),
                                                         pb_utils.Tensor("MODE", np.array([v // 1000], np.int32))]))
        return responses
'''
#: MODE 0: COUNT responses (TOK [100 + i], IDX [i]), then FINAL.  1: two, then an error response.
#: 2: one, then nothing until cancelled (then ``cancelled-<id>`` in ``marks``).  3: up to 400 of 256
#: KiB each, stopping once cancelled (then ``flood-<sent>`` in ``marks``).
GEN_PBTXT = ('backend: "python"\nmax_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n'
             f'input [ {{ name: "COUNT" {I32} dims: [ 1 ] }}, {{ name: "MODE" {I32} dims: [ 1 ] }} ]\n'
             f'output [ {{ name: "TOK" {I32} dims: [ -1 ] }}, {{ name: "IDX" {I32} dims: [ 1 ] }} ]\n'
             'instance_group [ { count: 4 } ]\n'
             'parameters { key: "marks" value: { string_value: "MARKS" } }\n')
GEN_PY = '''
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
        sender = request.get_response_sender()
        count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
        mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
        rid = request.request_id()

        def send(tok, i):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("TOK", np.asarray(tok, np.int32)),
                                                    pb_utils.Tensor("IDX", np.array([i], np.int32))]))

        def run():
            if mode == 0:
                for i in range(count):
                    send([100 + i], i)
            elif mode == 1:
                send([100], 0)
                send([101], 1)
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("gen broke", pb_utils.TritonError.INVALID_ARG)))
            elif mode == 2:
                send([100], 0)
                while not (sender.is_cancelled() and request.is_cancelled()):
                    threading.Event().wait(0.01)
                (self.marks / ("cancelled-" + rid)).write_text("yes")
            elif mode == 3:
                for i in range(400):
                    if sender.is_cancelled():
                        (self.marks / f"flood-{i}").write_text("yes")
                        break
                    send(np.full(65536, 100 + i), i)
                    threading.Event().wait(0.005)  # (paced: the ensemble, not the loop, is what falls behind)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run, daemon=True).start()
'''
#: TOK -> OUT [2 * TOK[0]]; TOK[0] 105: an error response; a long TOK (gen's flood): held until
#: ``gen`` saw its request cancelled (a downstream step that does not keep up).
POST_PBTXT = (f'backend: "python"\nmax_batch_size: 0\ninput [ {{ name: "TOK" {I32} dims: [ -1 ] }} ]\n'
              f'output [ {{ name: "OUT" {I32} dims: [ 1 ] }} ]\n'
              'parameters { key: "marks" value: { string_value: "MARKS" } }\n')
POST_PY = '''
import json
import threading
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marks = Path(json.loads(args["model_config"])["parameters"]["marks"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            tok = pb_utils.get_input_tensor_by_name(request, "TOK").as_numpy()
            for _ in range(3000 if tok.size > 1 else 0):  # (at most 30 s)
                if next(self.marks.glob("flood-*"), None) is not None:
                    break
                threading.Event().wait(0.01)
            if int(tok[0]) == 105:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("post refused 105", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([2 * int(tok[0])], np.int32))]))
        return responses
'''

#: TOK -> OUT: 65536 values (256 KiB) whatever TOK is: a step whose outputs are far larger than its inputs.
EXPAND_PBTXT = (f'backend: "python"\nmax_batch_size: 0\ninput [ {{ name: "TOK" {I32} dims: [ -1 ] }} ]\n'
                f'output [ {{ name: "OUT" {I32} dims: [ -1 ] }} ]\n')
EXPAND_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full(65536, 7, np.int32))]) for _ in requests]
'''


def _step(model: str, ins: dict[str, str], outs: dict[str, str]) -> str:
    imap = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in ins.items())
    omap = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outs.items())
    return f'{{ model_name: "{model}" model_version: -1 {imap} {omap} }}'


#: As TensorRT-LLM's ``ensemble``: no model_transaction_policy (Triton derives it from the steps).
ENS_PBTXT = (f'platform: "ensemble"\nmax_batch_size: 0\ninput [ {{ name: "IN" {I32} dims: [ 1 ] }} ]\n'
             f'output [ {{ name: "OUT" {I32} dims: [ 1 ] }}, {{ name: "IDX" {I32} dims: [ 1 ] }} ]\n'
             'ensemble_scheduling { step [ '
             + ", ".join([_step("pre", {"IN": "IN"}, {"COUNT": "count", "MODE": "mode"}),
                          _step("gen", {"COUNT": "count", "MODE": "mode"}, {"TOK": "tok", "IDX": "IDX"}),
                          _step("post", {"TOK": "tok"}, {"OUT": "OUT"})])
             + ' ] }\n')
#: ``post2`` (post's copy with a second input) reads gen's TOK and the ensemble's IN: refused, as Triton's.
MIXED_PBTXT = (f'platform: "ensemble"\nmax_batch_size: 0\ninput [ {{ name: "IN" {I32} dims: [ 1 ] }} ]\n'
               f'output [ {{ name: "OUT" {I32} dims: [ 1 ] }} ]\n'
               'ensemble_scheduling { step [ '
               + ", ".join([_step("pre", {"IN": "IN"}, {"COUNT": "count", "MODE": "mode"}),
                            _step("gen", {"COUNT": "count", "MODE": "mode"}, {"TOK": "tok", "IDX": "idx"}),
                            _step("post2", {"TOK": "tok", "X": "IN"}, {"OUT": "OUT"})])
               + ' ] }\n')

#: pre -> gen -> expand: each of gen's one-token responses becomes 256 KiB.
EXPANDING_PBTXT = (f'platform: "ensemble"\nmax_batch_size: 0\ninput [ {{ name: "IN" {I32} dims: [ 1 ] }} ]\n'
                   f'output [ {{ name: "OUT" {I32} dims: [ -1 ] }} ]\n'
                   'ensemble_scheduling { step [ '
                   + ", ".join([_step("pre", {"IN": "IN"}, {"COUNT": "count", "MODE": "mode"}),
                                _step("gen", {"COUNT": "count", "MODE": "mode"}, {"TOK": "tok", "IDX": "idx"}),
                                _step("expand", {"TOK": "tok"}, {"OUT": "OUT"})])
                   + ' ] }\n')


def _write(root: Path, name: str, pbtxt: str, model_py: str | None = None) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    if model_py is not None:
        (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    base = tmp_path_factory.mktemp("ensemble_decoupled")
    root, marks = base / "model_repository", base / "marks"
    marks.mkdir()
    _write(root, "pre", PRE_PBTXT, PRE_PY)
    _write(root, "gen", GEN_PBTXT.replace("MARKS", str(marks)), GEN_PY)
    _write(root, "post", POST_PBTXT.replace("MARKS", str(marks)), POST_PY)
    _write(root, "post2", (f'backend: "python"\nmax_batch_size: 0\n'
                           f'input [ {{ name: "TOK" {I32} dims: [ -1 ] }}, {{ name: "X" {I32} dims: [ 1 ] }} ]\n'
                           f'output [ {{ name: "OUT" {I32} dims: [ 1 ] }} ]\n'
                           f'parameters {{ key: "marks" value: {{ string_value: "{marks}" }} }}\n'), POST_PY)
    _write(root, "ens", ENS_PBTXT)
    _write(root, "mixed", MIXED_PBTXT)
    _write(root, "expand", EXPAND_PBTXT, EXPAND_PY)
    _write(root, "expanding", EXPANDING_PBTXT)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-write-buffer-bytes", "1000000")
    try:
        wait_until(lambda: all(_state(proc.port, m) in ("READY", "UNAVAILABLE") for m in ("ens", "mixed", "expanding")),
                   60.0,
                   what="the ensembles to load")
        yield proc, grpc_address(proc), marks
    finally:
        proc.stop()


def _state(port: int, name: str) -> str | None:
    """The repository index's state of model ``name`` (None: not listed)."""
    return _index(port).get(name, {}).get("state")


def _index(port: int) -> dict[str, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return {row["name"]: row for row in json.loads(answer.read())}


@pytest.fixture
def stream(served) -> Iterator[_Stream]:
    s = _Stream(served[1])
    try:
        yield s
    finally:
        s.close()


def _in(value: int) -> dict[str, np.ndarray]:
    return {"IN": np.array([value], np.int32)}


def _outputs(got: list) -> list[tuple[list[int], list[int]]]:  # type: ignore[type-arg]
    """(OUT, IDX) of each result carrying outputs."""
    return [(r.as_numpy("OUT").tolist(), r.as_numpy("IDX").tolist()) for r, e in got
            if e is None and r.get_response().outputs]


def test_grpc_streams_one_response_per_response_of_the_decoupled_step(served, stream) -> None:
    """Each response of ``gen`` goes through ``post``: the stream gets OUT (post's) and IDX (gen's) of
    each, in order, then the final one; zero responses: the empty final only.  The ensemble's
    configuration says decoupled (Triton sets it from its steps) and ModelInfer is refused as for a
    decoupled model."""
    stream.send("ens", "r1", **_in(3))
    got = stream.until_final()
    assert all(error is None for _, error in got)
    assert _outputs(got) == [([200], [0]), ([202], [1]), ([204], [2])]
    assert {r.get_response().id for r, _ in got} == {"r1"}
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in got]
    assert finals[-1] and not any(finals[:-1])
    stream.send("ens", "none", **_in(0))
    (final, error), = stream.until_final()
    assert error is None and not final.get_response().outputs and final.get_response().id == "none"
    client = tgrpc.InferenceServerClient(served[1])
    try:
        assert client.get_model_config("ens").config.model_transaction_policy.decoupled
        x = tgrpc.InferInput("IN", [1], "INT32")
        x.set_data_from_numpy(np.array([2], np.int32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("ens", [x])
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
        assert refused.value.message() == "ModelInfer RPC doesn't support models with decoupled transaction policy"
    finally:
        client.close()


def test_an_error_mid_stream_ends_the_request_naming_the_step(stream) -> None:
    """``post``'s error on the sixth response: the five before it, then the error naming the ensemble
    and the step; ``gen``'s error response after two: the error naming ``gen`` (the
    responses of ``post`` still in flight then are not sent, as in Triton); the stream goes on."""
    stream.send("ens", "g", **_in(1000))
    got = stream.until_final()
    assert _outputs(got) in ([], [([200], [0])], [([200], [0]), ([202], [1])])
    error = got[-1][1]
    assert "ensemble 'ens' step 1 (model 'gen'): model 'gen' failed: TritonError: gen broke" in error.message()
    stream.send("ens", "p", **_in(8))
    got = stream.until_final()
    assert _outputs(got) == [([200 + 2 * i], [i]) for i in range(5)]
    assert "ensemble 'ens' step 2 (model 'post')" in got[-1][1].message()
    assert "post refused 105" in got[-1][1].message()
    stream.send("ens", "after", **_in(1))
    assert _outputs(stream.until_final()) == [([200], [0])]


def test_cancelling_the_stream_cancels_the_decoupled_step(served) -> None:
    """``gen`` sends one response then waits for ``is_cancelled()``: the client cancelling its stream
    cancels the ensemble's request, and so ``gen``'s (its sender and its request see it)."""
    s = _Stream(served[1])
    s.send("ens", "c1", **_in(2000))
    result, error = s.results.get(timeout=60)
    assert error is None and result.as_numpy("OUT").tolist() == [200]
    assert not (served[2] / "cancelled-c1").exists()
    s.close(cancel_requests=True)
    wait_until(lambda: (served[2] / "cancelled-c1").exists(), 30.0, what="gen to see its request cancelled")


def test_a_step_that_does_not_keep_up_bounds_what_the_request_holds(served) -> None:
    """``gen`` floods 256 KiB responses and ``post`` takes none of them (held): past the server's 1 MB
    bound (``--max-write-buffer-bytes``) the request ends ``overloaded`` naming the step and the bound,
    and ``gen`` sees it cancelled, having sent far fewer than 400; the server serves on."""
    s = _Stream(served[1])
    try:
        s.send("ens", "big", **_in(3000))
        mark = wait_until(lambda: next(served[2].glob("flood-*"), None), 60.0, what="the flood to be cancelled")
        assert int(mark.name.split("-")[1]) < 400
        got = s.until_final()
        message = got[-1][1].message()
        assert "ensemble 'ens' step 1 (model 'gen')" in message and "held inside the ensemble" in message
        assert "max_write_buffer_bytes=1000000" in message
    finally:
        s.close()
    s2 = _Stream(served[1])
    s2.send("ens", "ok", **_in(2))
    assert _outputs(s2.until_final()) == [([200], [0]), ([202], [1])]
    s2.close()


def test_a_later_step_s_outputs_unread_by_the_client_are_bounded_too(served) -> None:
    """``gen`` sends 400 one-token responses at once (each taken: the request holds little yet),
    ``expand`` makes each 256 KiB and the gRPC client reads nothing: what the request then holds
    (``expand``'s outputs, its responses unwritten) passes the 1 MB bound, so the request ends
    ``overloaded`` naming ``expand`` (its steps left are cancelled), rather than the server queueing
    100 MiB of responses for a client that does not read."""
    port = served[0].port
    s = _Stream(served[1])
    try:
        s.gate.clear()  # (the client's reader blocks in its callback: it reads nothing more)
        s.send("expanding", "x", **_in(400))
        wait_until(lambda: _requests_ended(port, "expanding") == 1, 60.0, what="the request to end")
        s.gate.set()
        got = s.until_final()
        assert len(got) < 400
        message = got[-1][1].message()
        assert "ensemble 'expanding' step 2 (model 'expand')" in message and "held inside the ensemble" in message
        assert "max_write_buffer_bytes=1000000" in message
    finally:
        s.gate.set()
        s.close()


def _inference_stats(port: int, name: str) -> dict:  # type: ignore[type-arg]
    """Model ``name``'s Triton statistics (``inference_stats``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{name}/stats", timeout=30) as answer:
        return json.loads(answer.read())["model_stats"][0]["inference_stats"]  # type: ignore[no-any-return]


def _requests_ended(port: int, name: str) -> int:
    """Requests to model ``name`` that ended (succeeded or failed), from Triton's statistics."""
    stats = _inference_stats(port, name)
    return stats["success"]["count"] + stats["fail"]["count"]


def test_the_decoupled_steps_wait_for_its_execute_is_its_models_queue_time(served, stream) -> None:
    """``gen``'s step request counts in ``gen``'s statistics with the time it waited for its
    execute (a decoupled step has no rows to carry it: its worker tells the step when it starts)."""
    before = _inference_stats(served[0].port, "gen")["queue"]
    stream.send("ens", "q", **_in(1))
    got = stream.until_final()
    assert _outputs(got) == [([200], [0])] and all(error is None for _, error in got)
    after = _inference_stats(served[0].port, "gen")["queue"]
    assert after["count"] - before["count"] == 1 and int(after["ns"]) > int(before["ns"]), (before, after)


async def test_websocket_predict_responses_streams_the_ensemble(served) -> None:
    """The WebSocket ``predict`` (the Python client's ``predict_responses``): one ``response`` frame per
    response reaching the outputs, then ``done``; an error mid-stream after its responses; a cancel
    ends the request and ``gen`` sees it."""
    async with Client(served[0].url) as client:
        stream = client.predict_responses("ens", [[2]])
        got = [r async for r in stream]
        assert [(r.seq, r.outputs) for r in got] == [(0, {"OUT": [[200]], "IDX": [[0]]}),
                                                      (1, {"OUT": [[202]], "IDX": [[1]]})]
        assert stream.summary.responses == 2 and stream.summary.reason == "complete"
        seen = []
        with pytest.raises(InvalidInput, match=r"ensemble 'ens' step 2 \(model 'post'\): .*post refused 105"):
            async for r in client.predict_responses("ens", [[8]]):
                seen.append(r.outputs["OUT"])
        assert seen == [[[200 + 2 * i]] for i in range(5)]
        held = client.predict_responses("ens", [[2000]])
        first = await held.__anext__()
        assert first.outputs == {"OUT": [[200]], "IDX": [[0]]}
        rid = held.request_id
        held.cancel()
        with pytest.raises(RequestCancelled):
            await held.__anext__()
        wait_until(lambda: (served[2] / f"cancelled-{rid}").exists(), 30.0, what="gen to see the cancel")
        wait_until(lambda: _inflight(served[0].port) == 0, 30.0, what="no request in flight")


def test_http_generate_stream_sends_one_event_per_response(served) -> None:
    """Triton's ``generate_stream``: an event per response of the ensemble, then the end; an error
    mid-stream is an error event; ``/infer`` answers as for a decoupled model (501)."""
    port = served[0].port
    status, kind, body = _post(port, "/v2/models/ens/generate_stream", {"id": "h", "IN": 3})
    assert status == 200 and kind.startswith("text/event-stream")
    assert _events(body) == [{"id": "h", "model_name": "ens", "model_version": "1", "OUT": 200 + 2 * i, "IDX": i}
                             for i in range(3)]
    status, _, body = _post(port, "/v2/models/ens/generate_stream", {"IN": 8})
    events = _events(body)
    assert status == 200 and [e.get("OUT") for e in events[:5]] == [200 + 2 * i for i in range(5)]
    assert "ensemble 'ens' step 2 (model 'post')" in events[5]["error"] and len(events) == 6
    status, _, body = _post(port, "/v2/models/ens/infer",
                            {"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [2]}]})
    assert status == 501
    assert json.loads(body) == {"error": "HTTP end point doesn't support models with decoupled transaction policy"}


def test_a_step_pairing_tensors_of_different_decoupled_lineages_is_refused_as_tritons(served) -> None:
    row = _index(served[0].port)["mixed"]
    assert row["state"] == "UNAVAILABLE"
    assert "receives inputs originated from different decoupled models" in row["reason"]
