"""config.pbtxt forms of models without a batch dimension (``max_batch_size: 0``), served as Triton serves
them: ``dims: [1]`` on an ONNX graph scalar (the onnxruntime backend's scalar rule), a leading ``-1``
taken by the parser and checked against the graph, and the wire shapes of the OIP (a request's shape is
the config's dims exactly, no row dimension; each request runs alone).  Sans-I/O rule, the loader on
real graphs, and a real server driven by Triton's clients (HTTP and gRPC) and a WebSocket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.repo_wire import predict  # noqa: E402
from tests.support import Conn, ServerProcess, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from wsserve.repository import ModelLoadError, load_version  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402


def _pbtxt(x: str, y: str, max_batch_size: int = 0) -> str:
    return (f"max_batch_size: {max_batch_size}\n"
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: {x} }} ]\n'
            f'output [ {{ name: "y" data_type: TYPE_FP32 dims: {y} }} ]\n')


SCALAR = _pbtxt("[ 1 ]", "[ 1 ]")
FIXED = _pbtxt("[ 1, 3 ]", "[ 1, 3 ]")
VARIABLE = _pbtxt("[ -1, 3 ]", "[ -1, 3 ]")
#: An ensemble without a batch dimension over 'centered' (dims [-1, 3]).
PIPE = ('platform: "ensemble"\nmax_batch_size: 0\n'
        'input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "centered" model_version: -1 input_map { key: "x" value: "IN" } '
        'output_map { key: "y" value: "OUT" } } ] }\n')
TOP_K = ("max_batch_size: 0\n"
         'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "k" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
         'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "idx" data_type: TYPE_INT64 dims: [ -1 ] } ]\n')


def _load(tmp_path: Path, model: Any, text: str) -> Any:
    ob.save(model, tmp_path / "1")
    return load_version("m", 1, tmp_path / "1", parse_pbtxt(text, tmp_path / "config.pbtxt"))


# --------------------------------------------------------------------------- the loader, real graphs


@pytest.mark.parametrize("dims", ["[ 1 ]", "[ 1, 1 ]"])
def test_dims_of_1s_on_a_graph_scalar_reach_it_as_a_scalar(tmp_path: Path, dims: str) -> None:
    """Triton's onnxruntime backend: a scalar graph tensor takes config dims of 1s (max_batch_size 0); its one
    value goes to the graph as a scalar and the scalar output comes back in the config's dims. wsserve refused
    it ("config.pbtxt says input 'x' has shape [1]; the graph's row shape is []")."""
    model, ref = ob.scalar_affine()
    loaded = _load(tmp_path, model, _pbtxt(dims, dims))
    try:
        shape = (1,) * dims.count("1")
        assert not loaded.batching
        assert [s.shape for s in loaded.inputs] == [shape] and [s.shape for s in loaded.outputs] == [shape]
        x = np.array([2.0, -1.5], np.float32).reshape(2, *shape)
        y = loaded.predict(x)
        assert y.shape == (2, *shape)
        np.testing.assert_allclose(y, ref(x), rtol=1e-6)
    finally:
        loaded.close()


@pytest.mark.parametrize(("text", "said"), [
    (_pbtxt("[ 2 ]", "[ 1 ]"),
     "model 'm', input 'x': config.pbtxt dims [2] disagree with the graph's shape [] (a scalar): a scalar's dims must all "
     "be 1 (e.g. [1]), as Triton's onnxruntime backend requires"),
    (_pbtxt("[ 1 ]", "[ 1, 2 ]"),
     "model 'm', output 'y': config.pbtxt dims [1, 2] disagree with the graph's shape [] (a scalar): a scalar's dims must "
     "all be 1 (e.g. [1]), as Triton's onnxruntime backend requires"),
    (_pbtxt("[ 1 ]", "[ 1 ]", max_batch_size=4),
     "model 'm', input 'x': config.pbtxt dims [1] disagree with the graph's shape [] (a scalar): a scalar has no batch "
     "dimension; set max_batch_size: 0 (dims [1] then stand for the scalar, as in Triton)"),
])
def test_a_scalar_refusal_names_model_tensor_and_both_shapes(tmp_path: Path, text: str, said: str) -> None:
    model, _ = ob.scalar_affine()
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, model, text)
    assert str(info.value) == f"{tmp_path / '1' / 'model.onnx'}: {said}"


def test_a_leading_minus_1_without_batching_is_compared_with_the_graph(tmp_path: Path) -> None:
    """max_batch_size 0 with dims [-1, 3]: Triton takes the config (its dims are the whole shape) and compares
    them with the graph. The parser refused it ("wsserve serves fixed shapes, and batches rows itself"); now
    the graph decides: a fixed graph dimension under the -1 is Triton's own refusal, naming the model, the
    tensor and both shapes; a dynamic one is served variable, the graph run whole on what a request gives."""
    config = parse_pbtxt(_pbtxt("[ -1, 3 ]", "[ -1, 3 ]"), tmp_path / "config.pbtxt")
    assert config.inputs is not None and config.inputs[0].triton_dims == (-1, 3) and config.max_batch_size == 0
    fixed, _ = ob.fixed_batch(3)
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, fixed, _pbtxt("[ -1, 3 ]", "[ 1, 3 ]"))
    assert str(info.value).endswith(
        "model 'm', input 'x': config.pbtxt dims [-1, 3] disagree with the graph's shape [1, 3]: dimension 0 is -1 "
        "(variable) in config.pbtxt but fixed at 1 in the graph: write 1")
    model, ref = ob.centered(3)
    loaded = _load(tmp_path, model, _pbtxt("[ -1, 3 ]", "[ -1, 3 ]"))
    try:
        assert [s.shape for s in loaded.inputs] == [(-1, 3)] and [s.shape for s in loaded.outputs] == [(-1, 3)]
        x = np.arange(12, dtype=np.float32).reshape(1, 4, 3) ** 2  # one input of 4 x 3, not 4 rows
        np.testing.assert_allclose(loaded.predict(x), ref(x[0])[None], rtol=1e-5)
    finally:
        loaded.close()


def test_a_row_sized_by_the_request_holds_at_most_4194304_values_on_every_path() -> None:
    """A -1 dim takes each request's size: the OIP bounds such a tensor to 4194304 values (the repository's
    bound on a row), and so do the WebSocket's JSON rows and binary frames, whatever --max-message-bytes
    allows (two -1 dims of up to 4194304 each, or a frame as large as the message, were taken whole)."""
    from wsserve.errors import InvalidInput
    from wsserve.repository.inputs import convert_inputs
    from wsserve.repository.tensors import TensorSpec
    from wsserve.tensorframe import conform, encode, read_tensors, split, view_tensors

    spec = TensorSpec("x", (-1, -1), "float32")
    rows = [[[0.0] * 2049] * 2048]  # 4196352 values: one list repeated, little memory
    with pytest.raises(InvalidInput) as info:
        convert_inputs(rows, [spec], max_rows=10, max_elements=1 << 30)
    assert str(info.value) == ("'inputs' row 0 has shape [2048, 2049]: 4196352 values; at most 4194304 (input 'x' has "
                               "shape [-1, -1], -1: any size)")
    assert convert_inputs([[[0.0] * 2048] * 2048], [spec], max_rows=10, max_elements=1 << 30).shape == (1, 2048, 2048)
    header, payload = split(encode({"type": "predict"}, np.zeros((1, 2048, 2049), np.float32), key="inputs"))
    descs = read_tensors(header, len(payload), max_rows=10, key="inputs")
    with pytest.raises(InvalidInput) as info:
        conform(view_tensors(payload, descs), descs, [spec])
    assert str(info.value).endswith("has shape [1, 2048, 2049]: 4196352 values per row; at most 4194304")


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("whole") / "model_repository"
    for name, builder, text in (("scalar", ob.scalar_affine, SCALAR), ("fixed", ob.fixed_batch, FIXED),
                                ("centered", ob.centered, VARIABLE), ("topk", ob.top_k, TOP_K)):
        model, _ = builder()
        ob.save(model, root / name / "1")
        (root / name / "config.pbtxt").write_text(text)
    (root / "pipe" / "1").mkdir(parents=True)  # an ensemble version directory holds no file
    (root / "pipe" / "config.pbtxt").write_text(PIPE)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def _http(proc: ServerProcess) -> Any:
    return thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")


def test_metadata_and_config_give_the_whole_shapes(served) -> None:
    """Triton's metadata and config of a max_batch_size 0 model: dims as they are, no -1 batch dimension."""
    proc, address = served
    client = _http(proc)
    for name, shape in (("scalar", [1]), ("fixed", [1, 3]), ("centered", [-1, 3])):
        assert client.is_model_ready(name), proc.stderr_text()
        meta = client.get_model_metadata(name)
        assert [t["shape"] for t in (*meta["inputs"], *meta["outputs"])] == [shape, shape]
        config = client.get_model_config(name)
        assert config["max_batch_size"] == 0
        assert [t["dims"] for t in (*config["input"], *config["output"])] == [shape, shape]
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        assert [list(t.shape) for t in grpc_client.get_model_metadata("fixed").inputs] == [[1, 3]]
        assert grpc_client.get_model_config("fixed").config.max_batch_size == 0
    finally:
        grpc_client.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_scalar_model_answers_in_the_configs_dims(served, transport: str) -> None:
    """dims [1] on a graph scalar: the request's shape is [1] (Triton's), the answer's [1]."""
    proc, address = served
    module = thttp if transport == "http" else tgrpc
    client = _http(proc) if transport == "http" else tgrpc.InferenceServerClient(address)
    try:
        inp = module.InferInput("x", [1], "FP32")
        inp.set_data_from_numpy(np.array([2.0], np.float32))
        y = client.infer("scalar", [inp]).as_numpy("y")
        assert y.shape == (1,) and y.tolist() == [7.0]
    finally:
        client.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_request_of_a_model_without_batch_dimension_has_its_dims_exactly(served, transport: str) -> None:
    """max_batch_size 0: the OIP request's shape must equal dims ([1, 3]), as Triton and KServe v2 require;
    wsserve wanted a leading row dimension ([n, 1, 3]) and answered [n, 1, 3]."""
    proc, address = served
    module = thttp if transport == "http" else tgrpc
    client = _http(proc) if transport == "http" else tgrpc.InferenceServerClient(address)
    try:
        x = np.array([[1.0, 2.0, 3.0]], np.float32)
        inp = module.InferInput("x", [1, 3], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("fixed", [inp]).as_numpy("y")
        assert y.shape == (1, 3)
        np.testing.assert_allclose(y, 2 * x)
        inp = module.InferInput("x", [2, 1, 3], "FP32")
        inp.set_data_from_numpy(np.ones((2, 1, 3), np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("fixed", [inp])
        assert info.value.status() == ("400" if transport == "http" else "StatusCode.INVALID_ARGUMENT")
        assert ("input 'x' has shape [2, 1, 3]; the model takes [1, 3] (it has no batch dimension: max_batch_size 0)"
                in str(info.value.message()))
    finally:
        client.close()


async def test_a_websocket_request_keeps_rows_each_run_alone(served) -> None:
    """The WebSocket predict keeps its rows (each one a whole input of the model); no two rows run in one
    execution: the statistics count 3 executions of batch size 1 for a 3-row request (wsserve ran them as one
    batch of 3)."""
    proc, _ = served
    client = _http(proc)

    def batches() -> dict[int, int]:
        stats = client.get_inference_statistics("fixed")["model_stats"][0]
        return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}

    def ran() -> dict[int, int]:
        return {size: count - before.get(size, 0) for size, count in batches().items() if count != before.get(size, 0)}

    before = batches()
    conn = await Conn.open(proc.url)
    try:
        done = await predict(conn, 1, "fixed", [[[1, 2, 3]], [[4, 5, 6]], [[0, 0, 1]]])
        assert done["type"] == "result" and done["outputs"] == [[[2.0, 4.0, 6.0]], [[8.0, 10.0, 12.0]], [[0.0, 0.0, 2.0]]]
        wait_until(lambda: sum(size * count for size, count in ran().items()) >= 3, 30.0, what="the 3 rows counted")
        assert ran() == {1: 3}
        done = await predict(conn, 2, "scalar", [[2.0], [5.0]])
        assert done["type"] == "result" and done["outputs"] == [[7.0], [16.0]]
    finally:
        await conn.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_variable_dim_takes_the_requests_size_and_runs_the_graph_whole(served, transport: str) -> None:
    """dims [-1, 3] with max_batch_size 0 on a graph [N, 3] whose rows are not independent (y = x - mean over N):
    each request's [k, 3] reaches the graph whole and comes back [k, 3]; another width is refused, naming the
    input and both shapes."""
    proc, address = served
    module = thttp if transport == "http" else tgrpc
    client = _http(proc) if transport == "http" else tgrpc.InferenceServerClient(address)
    _, ref = ob.centered(3)
    try:
        for k in (4, 2, 1):
            x = (np.arange(k * 3, dtype=np.float32).reshape(k, 3) ** 2) / 5
            inp = module.InferInput("x", [k, 3], "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer("centered", [inp]).as_numpy("y")
            assert y.shape == (k, 3)
            np.testing.assert_allclose(y, ref(x), rtol=1e-5, atol=1e-5)
        for shape, said in (([2, 4], "input 'x' has shape [2, 4]; the model takes [-1, 3] (it has no batch dimension: "
                                     "max_batch_size 0)"),
                            ([0, 3], "input 'x' has shape [0, 3]; every dimension must be at least 1")):
            inp = module.InferInput("x", shape, "FP32")
            inp.set_data_from_numpy(np.ones(shape, np.float32))
            with pytest.raises(InferenceServerException) as info:
                client.infer("centered", [inp])
            assert said in str(info.value.message())
    finally:
        client.close()


async def test_a_variable_dim_over_the_websocket_takes_row_0s_size(served) -> None:
    """WebSocket rows of a dims [-1, 3] model: each row one whole input ([k, 3]), every row of a request of row
    0's size; a row of another size is refused naming it."""
    proc, _ = served
    _, ref = ob.centered(3)
    x = [[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]]
    conn = await Conn.open(proc.url)
    try:
        done = await predict(conn, 1, "centered", [x, x])
        assert done["type"] == "result"
        np.testing.assert_allclose(done["outputs"], [ref(np.array(x))] * 2, rtol=1e-6)
        done = await predict(conn, 2, "centered", [x, x[:1]])
        assert done["type"] == "error" and done["code"] == "invalid_input"
        assert done["message"] == "'inputs' row 1 has 1 values; the model takes 2 (row 0's size: input 'x' has shape [-1, 3])"
        done = await predict(conn, 3, "centered", [[]])
        assert done["type"] == "error" and done["message"] == (
            "'inputs' row 0 must be an array of 1 to 4194304 values (input 'x' has shape [-1, 3], -1: any size), got an empty array")
    finally:
        await conn.close()


async def test_a_variable_dim_in_a_binary_frame_takes_its_size(served) -> None:
    """A binary tensor frame [n, k, 3] to a dims [-1, 3] model: k is the request's; each of the n rows runs whole."""
    from wsserve.tensorframe import encode, read_tensors, split, view_tensors

    proc, _ = served
    _, ref = ob.centered(3)
    x = (np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3) ** 2) / 7
    conn = await Conn.open(proc.url)
    try:
        await conn.ws.send(encode({"type": "predict", "id": "b", "model": "centered", "binary_outputs": True}, x,
                                  key="inputs"))
        message = await conn.ws.recv()
        assert isinstance(message, bytes), message
        header, payload = split(message)
        descs = read_tensors(header, len(payload), max_rows=100, key="outputs")
        (y,) = view_tensors(payload, descs)
        assert y.shape == (2, 5, 3)
        np.testing.assert_allclose(y, np.stack([ref(x[0]), ref(x[1])]), rtol=1e-5, atol=1e-4)
        await conn.ws.send(encode({"type": "predict", "id": "w", "model": "centered"}, np.ones((1, 5, 4), np.float32),
                                  key="inputs"))
        err = await conn.recv()
        assert err["code"] == "invalid_input" and "the model takes [n, -1, 3]" in err["message"], err
    finally:
        await conn.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_ensemble_without_a_batch_dimension_takes_its_dims_exactly(served, transport: str) -> None:
    """An ensemble with max_batch_size 0 over a model without one is served as Triton serves it: metadata and
    config give its dims ([-1, 3], max_batch_size 0) and a request of shape [k, 3] runs the step whole. wsserve
    took it as batching: metadata [-1, -1, 3], config max_batch_size 65536, and every request refused
    ("input 'IN' has shape [2, 3]; the model takes [-1, -1, 3]")."""
    proc, address = served
    module = thttp if transport == "http" else tgrpc
    client = _http(proc) if transport == "http" else tgrpc.InferenceServerClient(address)
    _, ref = ob.centered(3)
    try:
        wait_until(lambda: client.is_model_ready("pipe"), 30.0, what="the ensemble ready")
        if transport == "http":
            meta, config = client.get_model_metadata("pipe"), client.get_model_config("pipe")
            assert [t["shape"] for t in (*meta["inputs"], *meta["outputs"])] == [[-1, 3], [-1, 3]]
            assert config["max_batch_size"] == 0
        else:
            assert [list(t.shape) for t in client.get_model_metadata("pipe").inputs] == [[-1, 3]]
            assert client.get_model_config("pipe").config.max_batch_size == 0
        x = (np.arange(6, dtype=np.float32).reshape(2, 3) ** 2) / 3
        inp = module.InferInput("IN", [2, 3], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("pipe", [inp]).as_numpy("OUT")
        assert y.shape == (2, 3)
        np.testing.assert_allclose(y, ref(x), rtol=1e-5, atol=1e-5)
    finally:
        client.close()


async def test_rows_answered_at_different_sizes_fail_their_request_naming_the_output(served) -> None:
    """A model whose output size is a value of the request (TopK's k): a WebSocket predict of rows with
    different k gets rows of different sizes, which its one result array cannot hold: the request fails with
    invalid_input naming the output and both shapes (wsserve failed it with 'internal', a numpy message and a
    traceback in the log); rows of one size are answered, and so is each row alone."""
    proc, _ = served
    x = [3.0, 1.0, 2.0]
    conn = await Conn.open(proc.url)
    try:
        done = await predict(conn, 1, "topk", {"x": [x, x], "k": [[1], [1]]})
        assert done["type"] == "result" and done["outputs"] == {"y": [[3.0], [3.0]], "idx": [[0], [0]]}, done
        done = await predict(conn, 2, "topk", {"x": [x, x], "k": [[1], [2]]})
        assert done["type"] == "error" and done["code"] == "invalid_input", done
        assert done["message"] == ("output 'y' has rows of shape [1] and [2] in one request: the model answers each row "
                                   "at its own size, which one array cannot hold; send such rows in separate requests")
        done = await predict(conn, 3, "topk", {"x": [x], "k": [[2]]})
        assert done["type"] == "result" and done["outputs"] == {"y": [[3.0, 2.0]], "idx": [[0, 2]]}, done
    finally:
        await conn.close()
    assert "Traceback" not in proc.stderr_text()


# --------------------------------------------------------------------------- the worker


class _Sink:
    """One request's rows as :class:`wsserve.worker.PredictSink` receives them."""

    def __init__(self, x: np.ndarray) -> None:
        import asyncio

        self.inputs, self.n, self.nbytes, self.finished = x, len(x), x.nbytes, False
        self.outputs: list[np.ndarray] = []
        self.error: Exception | None = None
        self.done = asyncio.Event()

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float) -> None:
        self.outputs.append(outputs)
        if sum(len(o) for o in self.outputs) == self.n:
            self.finished = True
            self.done.set()

    def on_error(self, exc: Exception) -> None:
        self.finished, self.error = True, exc
        self.done.set()


async def test_a_variable_dim_model_never_runs_on_the_event_loop(tmp_path: Path) -> None:
    """A row of a dims [-1, 3] model is as large as the client makes it (up to 4194304 values), so its cost
    is not the model's flops_per_row (here 1: the graph has no parameters): its batches run in the executor,
    never inline on the event loop, where one large request would stall every connection. wsserve ran them
    inline (a row's estimated cost, 1, was under inline_max_flops)."""
    import asyncio

    from wsserve.worker import PredictWorker

    model, ref = ob.centered(3)
    loaded = _load(tmp_path, model, VARIABLE)
    worker = PredictWorker(loaded, max_batch_size=1)
    worker.start()
    try:
        x = (np.arange(3000, dtype=np.float32).reshape(1, 1000, 3) ** 0.5)
        sink = _Sink(x)
        worker.submit(sink)
        await asyncio.wait_for(sink.done.wait(), 30)
        assert sink.error is None
        np.testing.assert_allclose(sink.outputs[0][0], ref(x[0]), rtol=1e-5, atol=1e-4)
        assert worker.statistics().executor_batches == 1
    finally:
        await worker.close()
        loaded.close()
