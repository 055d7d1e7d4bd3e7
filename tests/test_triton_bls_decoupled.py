"""BLS to a decoupled model: ``exec(decoupled=True)`` and ``async_exec(decoupled=True)`` iterate the
called model's responses as it sends them (Triton's "Using BLS with decoupled models").  A real
server on loopback with a temp repository, driven by ``tritonclient.http``: ``gen`` (decoupled)
streams responses; Triton Python callers collect them and answer their concatenation."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.support import ServerProcess, wait_until

IO_PBTXT = ('backend: "python"\nmax_batch_size: 0\ninput [ { name: "n" data_type: TYPE_INT32 dims: [ 2 ] } ]\n'
            'output [ { name: "y" data_type: TYPE_INT32 dims: [ -1 ] } ]\n')

#: n = [count, mode].  mode 0: responses y=[i] for i < count, then FINAL alone; 1: then an error
#: response; 2: responses until cancelled (then writes MARKS/cancelled); 3: count responses of
#: 25000 values as fast as it can (MARKS/sent when done, MARKS/cancelled when it saw a cancel);
#: 4: nothing until cancelled (then MARKS/cancelled).
GEN_PY = '''
import os
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils

MARKS = MARKS_DIR


def _mark(name):
    open(os.path.join(MARKS, name), "w").close()


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            count, mode = (int(v) for v in r.inputs()[0].as_numpy())
            sender = r.get_response_sender()
            threading.Thread(target=self._stream, args=(sender, count, mode)).start()
        return None

    def _stream(self, sender, count, mode):
        if mode == 2:
            i = 0
            while not sender.is_cancelled():
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([i], np.int32))]))
                i += 1
                time.sleep(0.005)
            _mark("cancelled")
            return
        if mode == 4:  # sends nothing until cancelled
            while not sender.is_cancelled():
                time.sleep(0.005)
            _mark("cancelled")
            return
        if mode == 3:
            for i in range(count):
                if sender.is_cancelled():
                    _mark("cancelled")
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.full(25000, i, np.int32))]))
            _mark("sent")
            return
        for i in range(count):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([i], np.int32))]))
        if mode == 1:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("gen broke", pb_utils.TritonError.INVALID_ARG)))
            return
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

#: Collects gen's responses with exec(decoupled=True): their y values, -1 for an empty response;
#: an error response is answered as its error.
CAT_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            got = []
            error = None
            for resp in pb_utils.InferenceRequest(model_name="gen", requested_output_names=["y"],
                                                  inputs=[r.inputs()[0]], ARGS).exec(decoupled=True):
                if resp.has_error():
                    error = resp.error()
                    break
                got.extend(resp.output_tensors()[0].as_numpy().tolist() if resp.output_tensors() else [-1])
            out.append(pb_utils.InferenceResponse(error=error) if error is not None else
                       pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array(got, np.int32))]))
        return out
'''

#: Two async_exec(decoupled=True) calls in flight at once (Triton's README pattern), the first read
#: with ``for``, the second with ``async for``; answers both concatenated.
ACAT_PY = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


def _values(resp):
    return resp.output_tensors()[0].as_numpy().tolist() if resp.output_tensors() else [-1]


class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for r in requests:
            first, second = await asyncio.gather(*[
                pb_utils.InferenceRequest(model_name="gen", requested_output_names=["y"],
                                          inputs=[r.inputs()[0]]).async_exec(decoupled=True) for _ in range(2)])
            got = []
            for resp in first:
                got.extend(_values(resp))
            async for resp in second:
                got.extend(_values(resp))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array(got, np.int32))]))
        return out
'''

#: Reads two responses of an endless stream and breaks out: dropping the iterator cancels the call.
BREAK_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            got = []
            for resp in pb_utils.InferenceRequest(model_name="gen", requested_output_names=["y"],
                                                  inputs=[r.inputs()[0]]).exec(decoupled=True):
                if resp.has_error() or not resp.output_tensors():  # (the warm-up's zeros: none)
                    break
                got.extend(resp.output_tensors()[0].as_numpy().tolist())
                if len(got) == 2:
                    break
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array(got, np.int32))]))
        return out
'''

#: Reads one response, then waits until gen has sent all it would (MARKS/sent) before reading on:
#: answers the error that ends the iterator (the unread bound), or what it read.
LAGGARD_PY = '''
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils

MARKS = MARKS_DIR


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            it = pb_utils.InferenceRequest(model_name="gen", requested_output_names=["y"],
                                           inputs=[r.inputs()[0]]).exec(decoupled=True)
            first = next(it)
            if first.has_error() or not first.output_tensors():  # (the warm-up's zeros: none)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.zeros(0, np.int32))]))
                continue
            got = [int(first.output_tensors()[0].as_numpy()[0])]
            while not os.path.exists(os.path.join(MARKS, "sent")):
                time.sleep(0.01)
            error = None
            for resp in it:
                if resp.has_error():
                    error = resp.error()
                    break
                got.append(int(resp.output_tensors()[0].as_numpy()[0]))
            out.append(pb_utils.InferenceResponse(error=error) if error is not None else
                       pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array(got, np.int32))]))
        return out
'''

#: Gives up on an async_exec(decoupled=True) awaitable (asyncio.wait_for, 0.2 s) before its first
#: response: answers 0 when it timed out, 1 if it got the iterator.
WAITFOR_PY = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for r in requests:
            try:
                await asyncio.wait_for(pb_utils.InferenceRequest(
                    model_name="gen", requested_output_names=["y"], inputs=[r.inputs()[0]]).async_exec(decoupled=True), 0.2)
                got = 1
            except asyncio.TimeoutError:
                got = 0
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([got], np.int32))]))
        return out
'''

#: Not decoupled: answers y = n.
ONE_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy())]) for r in requests]
'''

#: exec() without decoupled=True to a decoupled model: Triton's error response.
PLAIN_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.InferenceRequest(
            model_name="gen", requested_output_names=["y"], inputs=[r.inputs()[0]]).exec().error()) for r in requests]
'''

#: 1 MB of unread responses at most per decoupled request (gen's mode 3 sends 100 KB responses).
WRITE_BUFFER = 1_000_000


def _write(root: Path, name: str, pbtxt: str, model_py: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path / "model_repository"
    marks = tmp_path / "marks"
    marks.mkdir()
    _write(root, "gen", IO_PBTXT + "model_transaction_policy { decoupled: true }\n",
           GEN_PY.replace("MARKS_DIR", repr(str(marks))))
    _write(root, "cat", IO_PBTXT, CAT_PY.replace(", ARGS", ""))
    _write(root, "hurried", IO_PBTXT, CAT_PY.replace("ARGS", "timeout=200000"))
    _write(root, "acat", IO_PBTXT, ACAT_PY)
    _write(root, "brk", IO_PBTXT, BREAK_PY)
    _write(root, "laggard", IO_PBTXT, LAGGARD_PY.replace("MARKS_DIR", repr(str(marks))))
    _write(root, "plain", IO_PBTXT, PLAIN_PY)
    _write(root, "waitfor", IO_PBTXT, WAITFOR_PY)
    _write(root, "one", IO_PBTXT, ONE_PY)
    _write(root, "cat1", IO_PBTXT, CAT_PY.replace(", ARGS", "").replace('model_name="gen"', 'model_name="one"'))
    proc = ServerProcess("--model-repository", str(root), "--max-write-buffer-bytes", str(WRITE_BUFFER))
    try:
        yield proc, marks
    finally:
        proc.stop()


def _infer(proc: ServerProcess, model: str, count: int, mode: int) -> np.ndarray:
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    try:
        inp = thttp.InferInput("n", [2], "INT32")
        inp.set_data_from_numpy(np.array([count, mode], np.int32))
        return client.infer(model, [inp]).as_numpy("y")
    finally:
        client.close()


def _refused(proc: ServerProcess, model: str, count: int, mode: int) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        _infer(proc, model, count, mode)
    return info.value


def test_exec_decoupled_yields_each_response_then_the_empty_final_one(served) -> None:
    """gen sends 0..4 then FINAL alone: the iterator yields the five, then an empty last response (Triton's)."""
    proc, _ = served
    assert _infer(proc, "cat", 5, 0).tolist() == [0, 1, 2, 3, 4, -1]
    assert _infer(proc, "cat", 0, 0).tolist() == [-1]


def test_async_exec_decoupled_iterates_with_for_and_async_for(served) -> None:
    proc, _ = served
    assert _infer(proc, "acat", 3, 0).tolist() == [0, 1, 2, -1, 0, 1, 2, -1]


def _queue_stats(proc: ServerProcess, model: str) -> tuple[int, int]:
    """Model ``model``'s Triton statistics: its ``queue`` count and ns."""
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    try:
        queue = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]["queue"]
    finally:
        client.close()
    return int(queue["count"]), int(queue["ns"])


def test_a_decoupled_calls_wait_for_its_execute_is_the_called_models_queue_time(served) -> None:
    """The called decoupled model counts the BLS request with the time it waited for its execute, as
    it counts a client's (it has no rows to carry it: its worker tells the call when it starts)."""
    proc, _ = served
    count, ns = _queue_stats(proc, "gen")
    assert _infer(proc, "cat", 2, 0).tolist() == [0, 1, -1]
    after_count, after_ns = _queue_stats(proc, "gen")
    assert after_count - count == 1 and after_ns > ns, (count, ns, after_count, after_ns)


def test_an_error_response_mid_stream_ends_the_iteration(served) -> None:
    proc, _ = served
    error = _refused(proc, "cat", 3, 1)
    assert error.status() == "400" and "gen broke" in str(error), (error.status(), str(error))


def test_breaking_out_cancels_the_called_request(served) -> None:
    proc, marks = served
    assert _infer(proc, "brk", 0, 2).tolist() == [0, 1]
    wait_until(lambda: (marks / "cancelled").exists(), timeout_s=30)


def test_the_timeout_bounds_the_whole_streamed_call(served) -> None:
    """An endless stream called with timeout=0.2 s: the call ends UNAVAILABLE, gen sees it cancelled."""
    proc, marks = served
    error = _refused(proc, "hurried", 0, 2)
    assert error.status() == "503" and "timed out" in str(error), (error.status(), str(error))
    wait_until(lambda: (marks / "cancelled").exists(), timeout_s=30)


def test_unread_responses_are_bounded_and_the_sender_never_blocks(served) -> None:
    """gen sends 30 responses of 100 KB while its caller reads none: past --max-write-buffer-bytes
    the call ends with an error response and gen sees its request cancelled (its sends never block:
    it finishes its loop while the caller waits)."""
    proc, marks = served
    error = _refused(proc, "laggard", 30, 3)
    assert error.status() == "503" and "slow consumer" in str(error) and "BLS caller model 'laggard'" in str(error) \
        and f"max_write_buffer_bytes={WRITE_BUFFER}" in str(error), (error.status(), str(error))
    assert (marks / "cancelled").exists()


def test_a_plain_exec_to_a_decoupled_model_is_refused_with_tritons_message(served) -> None:
    proc, _ = served
    error = _refused(proc, "plain", 1, 0)
    assert "Model gen is using the decoupled. The current BLS request call doesn't support models using the " \
           "decoupled transaction policy. Please use 'decoupled=True'" in str(error), str(error)


def test_an_async_exec_awaitable_given_up_before_the_first_response_cancels_the_call(served) -> None:
    """asyncio.wait_for gives up on async_exec(decoupled=True) while gen has sent nothing: the caller
    never gets the iterator, so the call is cancelled as a dropped iterator's is (gen sees it; it
    held its guards and inputs, and gen's instance, until gen's next response: forever)."""
    proc, marks = served
    assert _infer(proc, "waitfor", 0, 4).tolist() == [0]
    wait_until(lambda: (marks / "cancelled").exists(), timeout_s=30)


def test_an_async_exec_decoupled_after_the_stop_is_answered_not_left_waiting() -> None:
    """After the gateway closed (the server stopping), async_exec(decoupled=True) from a model's loop
    is answered at once, in the caller's thread: its awaitable gives the iterator of one UNAVAILABLE
    response (it was never set: the execute awaited forever).  In-process: the server's stop is a
    race a client cannot aim at."""
    import asyncio
    import threading

    from wsserve.bls import BlsGateway
    from wsserve.config import ServerConfig
    from wsserve.repository import triton_pb_utils as pb
    from wsserve.repository.bls import Caller

    def lookup(name: str, version: str | None):
        raise AssertionError("a closed gateway looks nothing up")

    async def make() -> BlsGateway:
        return BlsGateway(lookup, ServerConfig())

    server_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=server_loop.run_forever, daemon=True)
    thread.start()
    try:
        gateway = asyncio.run_coroutine_threadsafe(make(), server_loop).result(10)
        server_loop.call_soon_threadsafe(gateway.close)
        wait_until(lambda: gateway._shut, timeout_s=10)

        async def model() -> list[str]:
            request = pb.InferenceRequest(model_name="gen", requested_output_names=["y"],
                                          inputs=[pb.Tensor("n", np.array([1, 0], np.int32))])
            it = await asyncio.wait_for(gateway.call_decoupled_async(Caller("caller", 1, gateway), request), 10)
            return [r.error().message() for r in it]

        messages = asyncio.run(model())
        assert len(messages) == 1 and "shutting down" in messages[0], messages
    finally:
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(10)
        server_loop.close()


def test_exec_decoupled_to_a_model_that_is_not_decoupled_yields_its_one_response(served) -> None:
    proc, _ = served
    assert _infer(proc, "cat1", 7, 5).tolist() == [7, 5]
