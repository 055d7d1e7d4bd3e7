"""Business Logic Scripting: a Triton Python model's ``execute`` calling other models the server
serves with ``pb_utils.InferenceRequest(...).exec()`` (and ``await async_exec()``), through the
server's own pool.  A real server on loopback (run with ``--inline-max-flops`` so high that every
batch of these models would run on the event loop, where a BLS wait would deadlock the server),
called with ``tritonclient.http``; the models: an ONNX graph, the built-in ``linear``, Triton
Python callers."""

from __future__ import annotations

import json
import signal
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.support.metrics import scrape_metrics  # noqa: E402
from wsserve.bls import MAX_BLS_DEPTH  # noqa: E402

AFFINE_PBTXT = ('platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
                'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
                'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')

#: x [3] FP32 -> y [2] (ONNX affine's y, through BLS), z [k] FP64 (the built-in linear's output).
PIPE_PBTXT = ('backend: "python"\nmax_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
              'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "z" data_type: TYPE_FP64 dims: [ -1 ] } ]\n')

PIPE_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            a = pb_utils.InferenceRequest(model_name="affine", requested_output_names=["y"],
                                          inputs=[pb_utils.Tensor("x", x)]).exec()
            b = pb_utils.InferenceRequest(model_name="linear", requested_output_names=[], model_version=-1,
                                          inputs=[pb_utils.Tensor("input", x[:, :LINEAR_IN].astype(np.float64))]).exec()
            bad = a if a.has_error() else b if b.has_error() else None
            if bad is not None:
                out.append(pb_utils.InferenceResponse(error=bad.error()))
                continue
            y = pb_utils.get_output_tensor_by_name(a, "y").as_numpy()
            z = b.output_tensors()[0].as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y), pb_utils.Tensor("z", z)]))
        return out
'''

#: The same, ``async def execute`` with ``async_exec`` (both calls in flight at once).
APIPE_PY = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            a, b = await asyncio.gather(
                pb_utils.InferenceRequest(model_name="affine", requested_output_names=["y"],
                                          inputs=[pb_utils.Tensor("x", x)]).async_exec(),
                pb_utils.InferenceRequest(model_name="linear", requested_output_names=[],
                                          inputs=[pb_utils.Tensor("input", x[:, :LINEAR_IN].astype(np.float64))]).async_exec())
            bad = a if a.has_error() else b if b.has_error() else None
            if bad is not None:
                out.append(pb_utils.InferenceResponse(error=bad.error()))
                continue
            y = pb_utils.get_output_tensor_by_name(a, "y").as_numpy()
            z = b.output_tensors()[0].as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y), pb_utils.Tensor("z", z)]))
        return out
'''

ONE_PBTXT = ('backend: "python"\nmax_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
             'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')

#: Calls ``TARGET`` with ``ARGS`` (its input built from x by ``FEED``) and answers its y, or its error.
CALL_PY = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            resp = pb_utils.InferenceRequest(model_name=TARGET, requested_output_names=["y"],
                                             inputs=[pb_utils.Tensor("x", FEED)], ARGS).exec()
            if resp.has_error():
                out.append(pb_utils.InferenceResponse(error=resp.error()))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(resp, "y")]))
        return out
'''

#: Answers y = x[:, :2] * 2 after a sleep (a model slower than a caller's timeout).
SLOW_PY = '''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        if any(r.inputs()[0].as_numpy().any() for r in requests):
            time.sleep(1.0)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy()[:, :2] * 2)])
                for r in requests]
'''


#: y = x[:, :2] * 2; a request with a non-zero value first touches ``gate.started`` beside its config
#: and waits for the file ``gate`` (the test opens it), then removes ``gate.started``.
GATED_PY = '''
import os
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.gate = os.path.join(args["model_repository"], "gate")

    def execute(self, requests):
        if any(r.inputs()[0].as_numpy().any() for r in requests):
            open(self.gate + ".started", "w").close()
            while not os.path.exists(self.gate):
                time.sleep(0.01)
            os.remove(self.gate + ".started")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy()[:, :2] * 2)])
                for r in requests]
'''


def _caller(target: str, feed: str = "x", args: str = "request_id='bls'") -> str:
    return CALL_PY.replace("TARGET", repr(target)).replace("FEED", feed).replace("ARGS", args)


def _write(root: Path, name: str, pbtxt: str, model_py: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


#: The built-in linear's input width (x's first column feeds it).
LINEAR_IN = 1


#: x (a variable row of TYPE) answered as y.
WIDE_PBTXT = ('backend: "python"\nmax_batch_size: 8\ninput [ { name: "x" data_type: TYPE dims: [ -1 ] } ]\n'
              'output [ { name: "y" data_type: TYPE dims: [ -1 ] } ]\n')
ECHO_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy())]) for r in requests]
'''
#: Sends words a string whose encode() notes the thread running it; answers [1, 1] when that was
#: its own execute's thread, [0, 0] when another.
SPIED_PY = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class Spy(str):
    threads = []

    def encode(self, *args, **kwargs):
        Spy.threads.append(threading.get_ident())
        return str.encode(self, *args, **kwargs)


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            words = np.empty((1, 1), dtype=object)
            words[0, 0] = Spy("hi")
            Spy.threads.clear()
            resp = pb_utils.InferenceRequest(model_name="words", requested_output_names=["y"],
                                             inputs=[pb_utils.Tensor("x", words)]).exec()
            if resp.has_error():
                out.append(pb_utils.InferenceResponse(error=resp.error()))
                continue
            mine = float(Spy.threads == [threading.get_ident()])
            y = np.full((len(r.inputs()[0].as_numpy()), 2), mine, np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return out
'''

#: A decoupled model: one response (y = x[:, :2]) and FINAL per request.
STREAM_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy()[:, :2])]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

#: affine's y for x, called from threads of its own, as Triton allows: a helper that builds and runs
#: the request in a pool thread, and a request built in execute run by ``submit(request.exec)``;
#: answers their mean (the same y when both are right).
POOLED_PY = '''
from concurrent.futures import ThreadPoolExecutor
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def _affine(self, x):
        resp = pb_utils.InferenceRequest(model_name="affine", requested_output_names=["y"],
                                         inputs=[pb_utils.Tensor("x", x)]).exec()
        if resp.has_error():
            raise pb_utils.TritonError(resp.error().message())
        return pb_utils.get_output_tensor_by_name(resp, "y").as_numpy()

    def execute(self, requests):
        out = []
        with ThreadPoolExecutor(2) as pool:
            for r in requests:
                x = r.inputs()[0].as_numpy()
                built = pb_utils.InferenceRequest(model_name="affine", requested_output_names=["y"],
                                                  inputs=[pb_utils.Tensor("x", x)])
                a, b = pool.submit(self._affine, x), pool.submit(built.exec)
                if b.result().has_error():
                    raise pb_utils.TritonError(b.result().error().message())
                y = (a.result() + pb_utils.get_output_tensor_by_name(b.result(), "y").as_numpy()) / 2
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return out
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("triton_bls") / "model_repository"
    affine, _ = ob.linear_layer(3, 2, seed=7)
    ob.save(affine, root / "affine" / "1")
    (root / "affine" / "config.pbtxt").write_text(AFFINE_PBTXT)
    _write(root, "pipe", PIPE_PBTXT, PIPE_PY.replace("LINEAR_IN", str(LINEAR_IN)))
    _write(root, "apipe", PIPE_PBTXT, APIPE_PY.replace("LINEAR_IN", str(LINEAR_IN)))
    _write(root, "ghost", ONE_PBTXT, _caller("nope"))
    _write(root, "pinned", ONE_PBTXT, _caller("affine", args="model_version=9"))
    _write(root, "misfed", ONE_PBTXT, _caller("affine", feed="np.zeros((len(x), 5), np.float32)"))
    _write(root, "toomany", ONE_PBTXT, _caller("affine", feed="np.ones((9, 3), np.float32)"))
    _write(root, "hog", ONE_PBTXT, _caller("linear", feed="np.ones((20000, 1))").replace('Tensor("x"', 'Tensor("input"'))
    _write(root, "selfcall", ONE_PBTXT, _caller("selfcall", feed="x + 1"))
    _write(root, "looped", ONE_PBTXT, _caller("wrap", args="request_id='loop'").replace('requested_output_names=["y"]',
                                                                                         'requested_output_names=[]'))
    _write(root, "counted", COUNTED_PBTXT, COUNTED_PY)
    _write(root, "viacount", ONE_PBTXT, VIACOUNT_PY)
    (root / "wrap" / "1").mkdir(parents=True)  # an ensemble of one step: looped (which calls wrap)
    (root / "wrap" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "looped" model_version: -1 '
        'input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } } ] }\n')
    _write(root, "slow", ONE_PBTXT, SLOW_PY)
    _write(root, "wide", WIDE_PBTXT.replace("TYPE", "TYPE_FP32"), ECHO_PY)
    _write(root, "words", WIDE_PBTXT.replace("TYPE", "TYPE_STRING"), ECHO_PY)
    # 8 rows of 5000 values: 160000 bytes as FP32, past --max-inflight-bytes; one not finite
    _write(root, "vast", ONE_PBTXT, _caller("wide", feed="np.append(np.ones(39999), np.nan).reshape(8, 5000)"))
    _write(root, "spied", ONE_PBTXT, SPIED_PY)
    _write(root, "pooled", ONE_PBTXT, POOLED_PY)
    (root / "ens" / "1").mkdir(parents=True)  # an ensemble of one step: affine
    (root / "ens" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "affine" model_version: -1 '
        'input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } } ] }\n')
    _write(root, "stream", ONE_PBTXT + "model_transaction_policy { decoupled: true }\n", STREAM_PY)
    _write(root, "tostream", ONE_PBTXT, _caller("stream"))
    _write(root, "asknope", ONE_PBTXT, _caller("ens").replace('["y"]', '["nope"]').replace('Tensor("x"', 'Tensor("IN"'))
    _write(root, "impatient", ONE_PBTXT, _caller("slow", args="timeout=1000"))
    # a stateful model (sequence_batching): a BLS request carries no sequence; one row, as its batcher takes
    _write(root, "acc", ONE_PBTXT + "sequence_batching { }\n", SLOW_PY)
    _write(root, "tostateful", ONE_PBTXT, _caller("acc", feed="x[:1]"))
    # a chain c0 -> c1 -> ... -> c{MAX} -> affine: MAX_BLS_DEPTH + 1 nested calls from c0
    for i in range(MAX_BLS_DEPTH + 1):
        nxt = f"c{i + 1}" if i < MAX_BLS_DEPTH else "affine"
        _write(root, f"c{i}", ONE_PBTXT, _caller(nxt))
    proc = ServerProcess("--models", "linear", "--model-repository", str(root), "--inline-max-flops", "1000000000000",
                         "--max-inflight-bytes", "100000")
    try:
        yield proc, root
    finally:
        proc.stop()


def _infer(proc: ServerProcess, model: str, x: np.ndarray, outputs: tuple[str, ...] = ("y",)) -> thttp.InferResult:
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    try:  # closed in the thread that made it: tritonclient.http's hub is per thread
        inp = thttp.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp], outputs=[thttp.InferRequestedOutput(o) for o in outputs])
    finally:
        client.close()


def _refused(proc: ServerProcess, model: str, x: np.ndarray) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        _infer(proc, model, x)
    return info.value


def _expected(proc: ServerProcess, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What affine and linear answer for ``x`` when called by a client."""
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    y = _infer(proc, "affine", x).as_numpy("y")
    inp = thttp.InferInput("input", [len(x), LINEAR_IN], "FP64")
    inp.set_data_from_numpy(x[:, :LINEAR_IN].astype(np.float64))
    z = client.infer("linear", [inp]).as_numpy(client.get_model_metadata("linear")["outputs"][0]["name"])
    return y, z


@pytest.mark.parametrize("model", ["pipe", "apipe"])
def test_execute_calls_an_onnx_model_and_the_builtin_linear(served, model: str) -> None:
    """The happy path, ``exec`` and ``async_exec``; every batch of these models would run on the event
    loop by its cost (--inline-max-flops): a BLS model runs off it, so its wait deadlocks nothing."""
    proc, _ = served
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    got = _infer(proc, model, x, ("y", "z"))
    y, z = _expected(proc, x)
    np.testing.assert_allclose(got.as_numpy("y"), y, rtol=1e-6)
    np.testing.assert_allclose(got.as_numpy("z"), z, rtol=1e-12)


@pytest.mark.parametrize(("model", "status", "words"), [
    ("ghost", 404, "no model named 'nope'"),
    ("pinned", 404, "model 'affine' has no version '9'"),
    ("misfed", 400, "input 'x' has shape [2, 5]; the model takes [-1, 3]"),
    # a wire request's bounds: affine's max_batch_size 8, --max-inflight-bytes (linear takes 20000 rows)
    ("toomany", 400, "input 'x' has 9 rows; between 1 and 8 are accepted"),
    ("hog", 503, "model 'hog''s BLS requests in flight would hold more than 100000 bytes of inputs"),
    # a decoupled model streams its responses: exec() (one response) is not how it is called, as in Triton
    ("tostream", 501, "Model stream is using the decoupled. The current BLS request call doesn't support models"),
    # an output the model does not have: refused before it runs, as Triton refuses it (an ensemble too)
    ("asknope", 400, "model 'ens' has no output 'nope'; it has 'OUT'"),
    # refused by that bound before its values are read (one is not finite) or converted
    ("vast", 503, "model 'vast''s BLS requests in flight would hold more than 100000 bytes of inputs"),
    # said plainly: not Triton's "must specify a non-zero or non-empty correlation ID", which reads
    # as though the caller had left out something it could give (still INVALID_ARG, as before)
    ("tostateful", 400, "model 'acc' is stateful (sequence_batching) and a BLS request cannot take part in a "
                        "sequence: it carries no sequence id"),
])
def test_a_failed_call_is_an_error_response_with_tritons_code(served, model: str, status: int, words: str) -> None:
    proc, _ = served
    error = _refused(proc, model, np.ones((2, 3), np.float32))
    assert error.status() == str(status) and words in str(error), (error.status(), str(error))


def test_a_model_calling_itself_is_refused_not_deadlocked(served) -> None:
    proc, _ = served
    error = _refused(proc, "selfcall", np.ones((1, 3), np.float32))
    assert error.status() == "501" and "model 'selfcall' calls itself" in str(error)
    np.testing.assert_allclose(_infer(proc, "pipe", np.ones((1, 3), np.float32), ("y",)).as_numpy("y"),
                               _expected(proc, np.ones((1, 3), np.float32))[0], rtol=1e-6)


def test_a_model_calling_an_ensemble_that_runs_it_is_refused(served) -> None:
    proc, _ = served
    error = _refused(proc, "looped", np.ones((1, 3), np.float32))
    assert error.status() == "501" and "model 'looped' calls itself (through ensemble 'wrap')" in str(error), str(error)


def test_nesting_is_bounded(served) -> None:
    """c1 -> ... -> c8 -> affine nests MAX_BLS_DEPTH calls: answered; from c0 one more: refused."""
    proc, _ = served
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(_infer(proc, "c1", x).as_numpy("y"), _expected(proc, x)[0], rtol=1e-6)
    error = _refused(proc, "c0", x)
    assert error.status() == "501" and f"would nest {MAX_BLS_DEPTH + 1} BLS requests; at most {MAX_BLS_DEPTH}" in str(error)


def test_the_timeout_ends_a_call_with_unavailable(served) -> None:
    proc, _ = served
    error = _refused(proc, "impatient", np.ones((1, 3), np.float32))
    assert error.status() == "503" and "BLS request to model 'slow' timed out after 1000 us" in str(error)


#: y = [requests in this execute, 0] per row; batches of 2 rows, held up to 30 s to fill.
COUNTED_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([[len(requests), 0]] * len(r.inputs()[0].as_numpy()),
                                                                           np.float32))]) for r in requests]
'''
#: Answers counted's y for x (its warm-up's zeros, which would wait for counted's window: x's first two).
VIACOUNT_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            if not x.any():
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x[:, :2])]))
                continue
            resp = pb_utils.InferenceRequest(model_name="counted", requested_output_names=["y"],
                                             inputs=[pb_utils.Tensor("x", x)]).exec()
            out.append(pb_utils.InferenceResponse(error=resp.error()) if resp.has_error() else resp)
        return out
'''
COUNTED_PBTXT = ONE_PBTXT.replace("max_batch_size: 8", "max_batch_size: 2") + \
    "dynamic_batching { max_queue_delay_microseconds: 30000000 }\n"


def test_a_bls_request_is_batched_with_a_clients_request(served) -> None:
    """counted's batch of 2 fills with one client request and one BLS request (viacount's): one
    execute gets both, as Triton's dynamic batcher would give it."""
    proc, _ = served
    x = np.ones((1, 3), np.float32)
    threads = [_in_thread(lambda m=m: _infer(proc, m, x).as_numpy("y")) for m in ("counted", "viacount")]
    for thread, _ in threads:
        thread.join()
    for _, answer in threads:
        assert not isinstance(answer[0], BaseException), answer
        np.testing.assert_array_equal(answer[0], [[2, 0]])


@pytest.fixture()
def gated(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A server whose ``patient`` calls ``gated`` (no timeout), which waits for its gate file."""
    root = tmp_path / "model_repository"
    _write(root, "gated", ONE_PBTXT, GATED_PY)
    _write(root, "patient", ONE_PBTXT, _caller("gated"))
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    try:
        yield proc, root / "gated"
    finally:
        (root / "gated" / "gate").touch()
        proc.stop()


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the list."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_a_call_in_flight_finishes_when_its_model_is_unloaded_and_later_ones_are_not_found(gated) -> None:
    proc, gated_dir = gated
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    x = np.ones((2, 3), np.float32)
    call, answer = _in_thread(lambda: _infer(proc, "patient", x).as_numpy("y"))
    wait_until(lambda: (gated_dir / "gate.started").exists(), 30)  # the BLS request is in gated's execute
    # (a client per thread: tritonclient.http's connections belong to the thread that made them)
    def unload_gated() -> None:  # closed in its thread: tritonclient.http's hub is per thread
        own = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        try:
            own.unload_model("gated")
        finally:
            own.close()

    unload, _ = _in_thread(unload_gated)
    wait_until(lambda: not client.is_model_ready("gated"), 30)
    (gated_dir / "gate").touch()
    call.join()
    unload.join()
    assert not isinstance(answer[0], BaseException), answer
    np.testing.assert_array_equal(answer[0], x[:, :2] * 2)
    error = _refused(proc, "patient", x)
    assert error.status() == "404" and "'gated'" in str(error), str(error)


def test_a_request_in_flight_through_bls_finishes_during_a_drain(gated) -> None:
    proc, gated_dir = gated
    x = np.ones((1, 3), np.float32)
    call, answer = _in_thread(lambda: _infer(proc, "patient", x).as_numpy("y"))
    wait_until(lambda: (gated_dir / "gate.started").exists(), 30)
    proc.proc.send_signal(signal.SIGTERM)  # a graceful drain: the request (and its BLS request) may finish
    wait_until(lambda: "draining" in proc.stderr_text(), 30)
    (gated_dir / "gate").touch()
    call.join()
    assert not isinstance(answer[0], BaseException), answer
    np.testing.assert_array_equal(answer[0], x[:, :2] * 2)
    assert proc.wait() == 0


def test_a_cancelled_callers_execute_runs_to_its_end_and_its_instance_serves_again(gated) -> None:
    """The client goes away while its request's execute waits on a BLS request: both run to their
    end (as in Triton), the caller's one instance is free again, the next request is answered."""
    proc, gated_dir = gated
    x = np.ones((1, 3), np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]}]}).encode()
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(b"POST /v2/models/patient/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: (gated_dir / "gate.started").exists(), 30)
    (gated_dir / "gate").touch()  # (the client has gone)
    wait_until(lambda: not (gated_dir / "gate.started").exists(), 30)
    np.testing.assert_array_equal(_infer(proc, "patient", x).as_numpy("y"), x[:, :2] * 2)


#: Stops awaiting its call to gated after 0.2 s (``asyncio.wait_for`` cancels the awaitable), answers x[:, :2].
WAITFOR_PY = '''
import asyncio
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        x = requests[0].inputs()[0].as_numpy()
        try:
            await asyncio.wait_for(pb_utils.InferenceRequest(model_name="gated", requested_output_names=["y"],
                                                             inputs=[pb_utils.Tensor("x", x)]).async_exec(), 0.2)
        except asyncio.TimeoutError:
            pass
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy()[:, :2])]) for r in requests]
'''


def test_a_call_whose_awaitable_was_cancelled_does_not_keep_the_server_from_stopping(tmp_path: Path) -> None:
    """An ``async_exec`` awaitable cancelled by its caller (``asyncio.wait_for`` gave up) while the
    call runs on: the stop answers the calls still waiting (patient's, queued behind it) and the
    server exits, past gated's execute that never returns (bounded waits: it hung forever)."""
    root = tmp_path / "model_repository"
    _write(root, "gated", ONE_PBTXT, GATED_PY)
    _write(root, "patient", ONE_PBTXT, _caller("gated"))
    _write(root, "waitfor", ONE_PBTXT, WAITFOR_PY)
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--drain-timeout", "1")
    try:
        x = np.ones((1, 3), np.float32)
        np.testing.assert_array_equal(_infer(proc, "waitfor", x).as_numpy("y"), x[:, :2])
        assert (root / "gated" / "gate.started").exists()  # the abandoned call holds gated's one instance
        call, answer = _in_thread(lambda: _infer(proc, "patient", x))
        wait_until(lambda: scrape_metrics(proc.http).value("wsserve_inflight_requests") == 1, 30)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr_text()
        call.join(60)
        assert isinstance(answer[0], InferenceServerException) and answer[0].status() == "503", answer
        assert "InvalidStateError" not in proc.stderr_text()
    finally:
        proc.kill()


def _stats(proc: ServerProcess, model: str) -> dict[str, Any]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    return client.get_inference_statistics(model)["model_stats"][0]


def test_bls_requests_count_in_the_called_models_statistics(served) -> None:
    """As Triton counts them (and as wsserve counts an ensemble's step requests): a BLS request
    that ran is one request of the called model, a success or a failure (impatient's timed out)."""
    proc, _ = served
    x = np.ones((1, 3), np.float32)
    before, slow_before = _stats(proc, "affine"), _stats(proc, "slow")
    _infer(proc, "pipe", x)
    _refused(proc, "impatient", x)
    after, slow_after = _stats(proc, "affine"), _stats(proc, "slow")
    assert after["execution_count"] - before["execution_count"] == 1
    for key in ("success", "queue"):
        assert after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"] == 1, (key, after)
    assert slow_after["inference_stats"]["fail"]["count"] - slow_before["inference_stats"]["fail"]["count"] == 1


def test_a_string_inputs_elements_are_converted_in_the_callers_thread(served) -> None:
    """Its ``str`` elements are encoded by the calling model's thread, not on the event loop (where a
    large string tensor, not yet bounded, would stall every connection)."""
    proc, _ = served
    np.testing.assert_array_equal(_infer(proc, "spied", np.ones((1, 3), np.float32)).as_numpy("y"), [[1, 1]])


def test_execute_may_call_from_threads_of_its_own(served) -> None:
    proc, _ = served
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(_infer(proc, "pooled", x).as_numpy("y"), _expected(proc, x)[0], rtol=1e-6)
