"""Triton Python models with variable (``-1``) dimensions, served as Triton serves them: a tokenizer
taking ``TYPE_STRING`` text ``[1]`` and answering ``input_ids`` ``TYPE_INT64 [-1]`` (each request at
its own length, requests of different lengths in one ``execute``), models taking ``[-1]`` (batched
only with requests of their shape; without a batch dimension, each request alone at its size), and
the canonical ensemble tokenizer -> sum.  A real server on loopback called with ``tritonclient.http``,
``tritonclient.grpc`` and a WebSocket; the bound on a variable output and the loader, in process."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402

from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.support.conn import Conn  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repository_triton_python import _load, _write  # noqa: E402
from wsserve.shapes import MAX_VALUES  # noqa: E402

#: Rows one tokenizer execute holds: its 60 s window never elapses, a batch forms when 4 rows are queued.
BATCH = 4
#: Each text's bytes as its ids (a request's rows 0-padded to its longest text); ``requests``: how many
#: requests the execute that answered it got (in every row).
TOKENIZER_PBTXT = f'''backend: "python"
max_batch_size: {BATCH}
input [ {{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
         {{ name: "requests" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 60000000 }}
'''
TOKENIZER_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            texts = pb_utils.get_input_tensor_by_name(r, "text").as_numpy()[:, 0]
            ids = np.zeros((len(texts), max(len(t) for t in texts)), np.int64)
            for i, t in enumerate(texts):
                ids[i, :len(t)] = list(t)
            n = np.full((len(texts), 1), len(requests), np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("requests", n)]))
        return out
'''
#: ids [-1] -> their sum [1] (FP32) and the rows of the execute that computed it, with the shapes it got.
SUM_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        assert len({x.shape[1:] for x in ids}) == 1, [x.shape for x in ids]  # one row shape per batch
        rows = sum(len(x) for x in ids)
        return [pb_utils.InferenceResponse([
                    pb_utils.Tensor("total", x.sum(axis=1, keepdims=True).astype(np.float32)),
                    pb_utils.Tensor("rows", np.full((len(x), 1), rows, np.float32))]) for x in ids]
'''
SUM_IO = '''input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "total" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "rows" data_type: TYPE_FP32 dims: [ 1 ] } ]
'''
#: Greedy (no window): the ensemble's second step.
SUM_PBTXT = 'backend: "python"\nmax_batch_size: 8\n' + SUM_IO
#: A batch forms when 3 rows of one shape are queued (the window never elapses).
SUM3_PBTXT = ('backend: "python"\nmax_batch_size: 3\n' + SUM_IO
              + "dynamic_batching { max_queue_delay_microseconds: 60000000 }\n")
#: No batch dimension: x [-1] -> x reversed [-1] and its length doubled [-1] (twice the size).
REVERSE_PBTXT = '''backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_INT64 dims: [ -1 ] }, { name: "twice" data_type: TYPE_INT64 dims: [ -1 ] } ]
'''
REVERSE_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x[::-1].copy()),
                                                   pb_utils.Tensor("twice", np.concatenate([x, x]))]))
        return out
'''
#: text -> tokenizer -> input_ids [-1] -> sum -> TOTAL; REQUESTS says how many shared the tokenizer's execute.
PIPELINE_PBTXT = f'''platform: "ensemble"
max_batch_size: {BATCH}
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "TOTAL" data_type: TYPE_FP32 dims: [ 1 ] }},
         {{ name: "REQUESTS" data_type: TYPE_FP32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "tokenizer" model_version: -1 input_map {{ key: "text" value: "TEXT" }}
    output_map [ {{ key: "input_ids" value: "IDS" }}, {{ key: "requests" value: "REQUESTS" }} ] }},
  {{ model_name: "sum" model_version: -1 input_map {{ key: "input_ids" value: "IDS" }}
    output_map {{ key: "total" value: "TOTAL" }} }}
] }}
'''
#: Texts of four lengths, in flight together (one tokenizer execute).
TEXTS = [b"a", b"hello", b"tokenizer", b"abc"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("pyvar") / "model_repository"
    _write(root, "tokenizer", TOKENIZER_PBTXT, TOKENIZER_PY)
    _write(root, "sum", SUM_PBTXT, SUM_PY)
    _write(root, "sum3", SUM3_PBTXT, SUM_PY)
    _write(root, "reverse", REVERSE_PBTXT, REVERSE_PY)
    _write(root, "tokwhole", TOKENIZER_PBTXT, TOKENIZER_PY)  # (its own queue: test_a_request_is_never_split...)
    (root / "pipeline" / "1").mkdir(parents=True)
    (root / "pipeline" / "config.pbtxt").write_text(PIPELINE_PBTXT)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def _text(module: Any, name: str, texts: list[bytes]) -> Any:
    data = np.array([[t] for t in texts], dtype=np.object_)
    tensor = module.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def _ids(module: Any, x: np.ndarray, name: str = "input_ids") -> Any:
    tensor = module.InferInput(name, list(x.shape), "INT64")
    tensor.set_data_from_numpy(x)
    return tensor


def _http_together(port: int, model: str, requests: list[list[Any]]) -> list[Any]:
    """Every request sent at once (one connection each); their results in order."""
    client = thttp.InferenceServerClient(f"127.0.0.1:{port}", concurrency=len(requests))
    try:
        pending = [client.async_infer(model, inputs) for inputs in requests]
        return [p.get_result() for p in pending]
    finally:
        client.close()


def _grpc_together(address: str, model: str, requests: list[list[Any]]) -> list[Any]:
    """Every request sent at once over one channel; their results in order (an error raises)."""
    client = tgrpc.InferenceServerClient(address)
    try:
        done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
        for i, inputs in enumerate(requests):
            client.async_infer(model, inputs, callback=lambda result, error, i=i: done.put((i, result, error)))
        results: dict[int, Any] = {}
        for _ in requests:
            i, result, error = done.get(timeout=30)
            if error is not None:
                raise error
            results[i] = result
        return [results[i] for i in range(len(requests))]
    finally:
        client.close()


def _tokens(texts: list[bytes]) -> np.ndarray:
    ids = np.zeros((len(texts), max(len(t) for t in texts)), np.int64)
    for i, t in enumerate(texts):
        ids[i, :len(t)] = list(t)
    return ids


# --------------------------------------------------------------------------- outputs of their own size


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_requests_of_one_execute_get_outputs_of_their_own_length(served, transport: str) -> None:
    """Three requests (one of two rows) fill one execute of 4 rows; each answer has its own length."""
    groups = [[b"ab", b"abcdef"], [b"x"], [b"hello world"]]
    if transport == "http":
        results = _http_together(served[0].port, "tokenizer", [[_text(thttp, "text", g)] for g in groups])
    else:
        results = _grpc_together(served[1], "tokenizer", [[_text(tgrpc, "text", g)] for g in groups])
    for g, result in zip(groups, results, strict=True):
        ids = result.as_numpy("input_ids")
        assert ids.dtype == np.int64 and ids.shape == (len(g), max(len(t) for t in g))
        np.testing.assert_array_equal(ids, _tokens(g))
        assert result.as_numpy("requests")[:, 0].tolist() == [3.0] * len(g)  # all in one execute


async def test_a_websocket_request_gets_its_own_length_among_oip_requests(served) -> None:
    conn = await Conn.open(served[0].url)
    client = thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}", concurrency=1)
    try:
        pending = client.async_infer("tokenizer", [_text(thttp, "text", [b"seven!!", b"z", b"xy"])])
        frame = await conn.request({"type": "predict", "id": "t", "model": "tokenizer", "inputs": [["abcd"]]})
        result = pending.get_result()
    finally:
        client.close()
        await conn.close()
    assert frame["type"] == "result", frame
    assert frame["outputs"] == {"input_ids": [[97, 98, 99, 100]], "requests": [[2.0]]}
    np.testing.assert_array_equal(result.as_numpy("input_ids"), _tokens([b"seven!!", b"z", b"xy"]))


def test_a_request_is_never_split_between_executes(served) -> None:
    """Triton's batcher keeps a request whole (one InferenceRequest: the tokenizer pads its rows to
    its longest text).  3 rows queued, then 4: the batch of 4 takes the first request alone, the
    second runs in the next (round-robin shares of 2 and 2 split it into executes padding its halves
    to 5 and 9 ids: its answer failed as rows of two sizes)."""
    proc = served[0]
    first, second = [b"ab", b"c", b"defg"], [b"a", b"hello", b"tokenizer", b"abc"]
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}", concurrency=2)
    try:
        pending = client.async_infer("tokwhole", [_text(thttp, "text", first)])
        wait_until(lambda: proc.metrics().get("wsserve_queue_rows", model="tokwhole") == 3, 30,
                   what="the first request queued")
        later = client.async_infer("tokwhole", [_text(thttp, "text", second)])
        results = [pending.get_result(), later.get_result()]
    finally:
        client.close()
    for texts, result in zip((first, second), results, strict=True):
        np.testing.assert_array_equal(result.as_numpy("input_ids"), _tokens(texts))
        assert result.as_numpy("requests")[:, 0].tolist() == [1.0] * len(texts)  # alone in its execute


# --------------------------------------------------------------------------- variable inputs


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_variable_inputs_are_batched_with_their_own_shape_only(served, transport: str) -> None:
    """(rows, length) requests in flight: a batch of 3 rows forms per length, never mixing them."""
    shapes = [(2, 3), (1, 5), (1, 3), (2, 5)]
    xs = [np.arange(r * n, dtype=np.int64).reshape(r, n) + 10 * i for i, (r, n) in enumerate(shapes)]
    if transport == "http":
        results = _http_together(served[0].port, "sum3", [[_ids(thttp, x)] for x in xs])
    else:
        results = _grpc_together(served[1], "sum3", [[_ids(tgrpc, x)] for x in xs])
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.as_numpy("total"), x.sum(axis=1, keepdims=True).astype(np.float32))
        assert result.as_numpy("rows")[:, 0].tolist() == [3.0] * len(x)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_without_a_batch_dimension_each_request_has_its_own_sizes(served, transport: str) -> None:
    xs = [np.arange(n, dtype=np.int64) * (n + 1) for n in (1, 4, 7)]
    if transport == "http":
        results = _http_together(served[0].port, "reverse", [[_ids(thttp, x, "x")] for x in xs])
    else:
        results = _grpc_together(served[1], "reverse", [[_ids(tgrpc, x, "x")] for x in xs])
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.as_numpy("y"), x[::-1])
        np.testing.assert_array_equal(result.as_numpy("twice"), np.concatenate([x, x]))


# --------------------------------------------------------------------------- the ensemble


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_ensemble_tokenizer_then_sum_answers_texts_of_different_lengths(served, transport: str) -> None:
    if transport == "http":
        results = _http_together(served[0].port, "pipeline", [[_text(thttp, "TEXT", [t])] for t in TEXTS])
    else:
        results = _grpc_together(served[1], "pipeline", [[_text(tgrpc, "TEXT", [t])] for t in TEXTS])
    for t, result in zip(TEXTS, results, strict=True):
        assert result.as_numpy("TOTAL").tolist() == [[float(sum(t))]]
        assert result.as_numpy("REQUESTS").tolist() == [[float(BATCH)]]  # the four shared one execute


# --------------------------------------------------------------------------- in process


def test_a_variable_output_larger_than_the_bound_is_refused_naming_it(tmp_path: Path) -> None:
    pbtxt = ('backend: "python"\nmax_batch_size: 4\ninput [ { name: "n" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
             'output [ { name: "mask" data_type: TYPE_BOOL dims: [ -1 ] } ]\n')
    model_py = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("mask", np.ones((len(x), int(x.max())), bool))])
                for x in (r.inputs()[0].as_numpy() for r in requests)]
'''
    model = _load(tmp_path, "big", pbtxt, model_py)
    try:
        ok = model.predict_requests(np.array([[2], [MAX_VALUES]], np.int32), [1, 1])
        assert [p.shape for p in ok.parts] == [(1, 2), (1, MAX_VALUES)]
        with pytest.raises(ValueError) as info:
            model.predict_requests(np.array([[2], [MAX_VALUES + 1]], np.int32), [1, 1])
    finally:
        model.close()
    assert str(info.value) == (f"model 'big': execute's response 1: output 'mask' has shape [1, {MAX_VALUES + 1}]: "
                               f"{MAX_VALUES + 1} values per row; at most {MAX_VALUES} where a dimension is variable (-1)")


def test_an_error_response_among_variable_outputs_fails_only_its_request(tmp_path: Path) -> None:
    model_py = TOKENIZER_PY.replace("        for r in requests:\n",
                                    "        for r in requests:\n"
                                    "            if r.inputs()[0].as_numpy()[0, 0] == b'!':\n"
                                    "                out.append(pb_utils.InferenceResponse(error='no bangs'))\n"
                                    "                continue\n")
    model = _load(tmp_path, "tok", TOKENIZER_PBTXT, model_py)
    try:
        y = model.predict_requests(np.array([[b"abc"], [b"!"], [b"de"], [b"f"]], dtype=np.object_), [1, 1, 2])
    finally:
        model.close()
    assert set(y.errors) == {1} and str(y.errors[1]) == "no bangs"
    parts = y.outputs.parts
    np.testing.assert_array_equal(parts[0]["input_ids"], _tokens([b"abc"]))
    np.testing.assert_array_equal(parts[2]["input_ids"], _tokens([b"de", b"f"]))


def test_without_a_batch_dimension_an_error_row_fails_its_request_with_its_own_error(tmp_path: Path) -> None:
    """One request of several rows to a model without a batch dimension (one execute request per
    row) whose variable output one row answers with an error: the request fails with that error,
    its other rows' outputs (of another size than the failed row's placeholder) dropped.  It failed
    with "rows of shape [0] and [1] in one request" instead, which also failed the warm-up (rows of
    zeros) of a BLS model calling a model still loading, where the error is only to be logged."""
    pbtxt = ('backend: "python"\nmax_batch_size: 0\ninput [ { name: "n" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
             'output [ { name: "y" data_type: TYPE_INT32 dims: [ -1 ] } ]\n')
    model_py = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            n = int(r.inputs()[0].as_numpy()[0])
            out.append(pb_utils.InferenceResponse(error="no sevens") if n == 7 else
                       pb_utils.InferenceResponse([pb_utils.Tensor("y", np.arange(n, dtype=np.int32))]))
        return out
'''
    model = _load(tmp_path, "rows", pbtxt, model_py)
    try:
        y = model.predict_requests(np.array([[7], [1], [2], [2]], np.int32), [2, 2])
        model.warmup(np.array([[7], [1]], np.int32))  # an error response to a warm-up batch: logged, served
    finally:
        model.close()
    assert set(y.errors) == {0} and str(y.errors[0]) == "no sevens"
    np.testing.assert_array_equal(y.outputs.parts[1], np.array([[0, 1], [0, 1]], np.int32))  # the other request whole


def test_a_python_config_pbtxt_takes_variable_dims(tmp_path: Path) -> None:
    model = _load(tmp_path, "rev", REVERSE_PBTXT, REVERSE_PY)
    try:
        assert [(s.name, s.shape) for s in (*model.inputs, *model.outputs)] == [
            ("x", (-1,)), ("y", (-1,)), ("twice", (-1,))]
        y = model.predict(np.array([[1, 2, 3]], np.int64))
    finally:
        model.close()
    np.testing.assert_array_equal(y["twice"], [[1, 2, 3, 1, 2, 3]])
