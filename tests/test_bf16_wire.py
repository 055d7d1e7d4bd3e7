"""bfloat16 tensors (Triton's ``TYPE_BF16``, the OIP's ``BF16``), served from a config.pbtxt
repository on a real server on loopback: an ONNX graph with bfloat16 inputs and outputs (Cast and
Identity, which onnxruntime's CPU provider runs on bfloat16) and a Triton Python model that gets
its input as an ``ml_dtypes.bfloat16`` array.  Called with ``tritonclient.http`` (binary data:
2 bytes little-endian a value, tritonclient's own BF16 layout from float32 arrays), ``tritonclient.grpc``
(``raw_input_contents``), JSON numbers over HTTP (range-checked), and the WebSocket's binary
tensor frames.  Before, both models were refused at load ("TYPE_BF16 is not served")."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
ml_dtypes = pytest.importorskip("ml_dtypes")
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import Conn, ServerProcess  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repository_triton_python import _write  # noqa: E402

ONNX_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_BF16 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_BF16 dims: [ 3 ] }, { name: "z" data_type: TYPE_BF16 dims: [ 3 ] },
         { name: "w" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
PY_PBTXT = """
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_BF16 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_BF16 dims: [ 3 ] } ]
"""
#: Fails the request unless its input came as ml_dtypes.bfloat16; answers -x in bfloat16.
PY = """
import ml_dtypes
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            if x.dtype != ml_dtypes.bfloat16:
                raise pb_utils.TritonError(f"x came as {x.dtype}")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", -x)]))
        return out
"""

#: bfloat16 values (each exact in bfloat16, and doubled too), as tritonclient takes them: float32.
X = np.array([[1.5, -2.0, 3.140625], [0.0, 256.0, -0.0078125]], dtype=np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("bf16") / "model_repository"
    model, _ = ob.bfloat16_double(3)
    ob.save(model, root / "graph" / "1")
    (root / "graph" / "config.pbtxt").write_text(ONNX_PBTXT)
    _write(root, "negate", PY_PBTXT, PY)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc
    finally:
        proc.stop()


def test_http_binary_data_through_an_onnx_graph_and_a_python_model(served) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        meta = client.get_model_metadata("graph")
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("y", "BF16"), ("z", "BF16"), ("w", "FP32")]
        assert meta["inputs"][0]["datatype"] == "BF16"
        config = client.get_model_config("graph")
        assert config["input"][0]["data_type"] == "TYPE_BF16"
        inp = thttp.InferInput("x", list(X.shape), "BF16")
        inp.set_data_from_numpy(X, binary_data=True)
        outs = [thttp.InferRequestedOutput(n, binary_data=True) for n in ("y", "z", "w")]
        result = client.infer("graph", [inp], outputs=outs)
        assert np.array_equal(result.as_numpy("y").reshape(X.shape), X * 2)
        assert np.array_equal(result.as_numpy("z").reshape(X.shape), X)
        assert np.array_equal(result.as_numpy("w"), X)
        result = client.infer("negate", [inp], outputs=[thttp.InferRequestedOutput("y", binary_data=True)])
        assert np.array_equal(result.as_numpy("y").reshape(X.shape), -X)
    finally:
        client.close()


def test_grpc_raw_contents(served) -> None:
    client = tgrpc.InferenceServerClient(grpc_address(served))
    try:
        assert client.get_model_config("negate").config.input[0].data_type == 14  # TYPE_BF16
        inp = tgrpc.InferInput("x", list(X.shape), "BF16")
        inp.set_data_from_numpy(X)
        result = client.infer("graph", [inp])
        assert np.array_equal(result.as_numpy("y").reshape(X.shape), X * 2)
        result = client.infer("negate", [inp])
        assert np.array_equal(result.as_numpy("y").reshape(X.shape), -X)
    finally:
        client.close()


def _post(served: ServerProcess, model: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"{served.http}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_json_numbers_are_range_checked(served) -> None:
    x = {"name": "x", "shape": [2, 3], "datatype": "BF16", "data": X.tolist()}
    status, body = _post(served, "graph", {"inputs": [x]})
    assert status == 200, body
    got = {o["name"]: (o["datatype"], o["data"]) for o in body["outputs"]}
    assert got["y"] == ("BF16", (X * 2).reshape(-1).tolist())
    assert got["w"] == ("FP32", X.reshape(-1).tolist())
    # FP32 values into the BF16 input: converted (FP32, FP64 and BF16 are interchangeable, as FP16)
    status, body = _post(served, "negate", {"inputs": [{**x, "datatype": "FP32"}]})
    assert status == 200 and body["outputs"][0]["data"] == (-X).reshape(-1).tolist(), body
    for bad in (3.4e38, -1e39):  # float32's range holds 3.4e38; bfloat16's ends at 3.3895e38
        status, body = _post(served, "graph", {"inputs": [{**x, "data": [1.0, 2.0, 3.0, 4.0, 5.0, bad]}]})
        assert status == 400 and body["error"] == "input 'x' holds a value out of the BF16 range", body
    status, body = _post(served, "graph", {"inputs": [{**x, "data": [1.0, 2.0, 3.0, 4.0, 5.0, "6"]}]})
    assert status == 400 and "not a number" in body["error"], body


def test_grpc_refuses_a_non_finite_bf16_value(served) -> None:
    client = tgrpc.InferenceServerClient(grpc_address(served))
    try:
        inp = tgrpc.InferInput("x", [1, 3], "BF16")
        inp.set_data_from_numpy(np.array([[1.0, np.inf, 2.0]], dtype=np.float32))
        with pytest.raises(tgrpc.InferenceServerException) as refused:
            client.infer("graph", [inp])
        assert "input 'x' holds a value that is not finite" in refused.value.message()
    finally:
        client.close()


async def test_websocket_binary_frames_carry_bfloat16(served) -> None:
    """``hello`` lists ``bfloat16`` in ``binary_dtypes``; a frame of bfloat16 values is answered, with
    ``binary_outputs``, in a frame of the model's bfloat16 output (2 bytes little-endian a value),
    else in JSON numbers."""
    from wsserve import tensorframe

    conn = await Conn.open(served.url)
    try:
        assert "bfloat16" in conn.hello["binary_dtypes"], conn.hello
        x = X.astype(ml_dtypes.bfloat16)
        frame = {"type": "predict", "id": "b", "model": "negate", "binary_outputs": True}
        await conn.ws.send(tensorframe.encode(frame, x))
        answer = await asyncio.wait_for(conn.ws.recv(), 30)
        assert isinstance(answer, bytes), answer
        head, payload = tensorframe.split(answer)
        assert (head["type"], head["id"], head["dtype"], head["shape"]) == ("result", "b", "bfloat16", [2, 3]), head
        assert bytes(payload) == (-x).tobytes()
        del frame["binary_outputs"]  # a JSON answer: the values as numbers
        await conn.ws.send(tensorframe.encode(frame, x))
        (answer,) = (await conn.collect({"b"}))["b"]
        assert answer["type"] == "result" and answer["outputs"] == (-X).tolist(), answer
    finally:
        await conn.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_shared_memory_holds_bf16_inputs_and_outputs(served, transport: str) -> None:
    """A BF16 input read from a system shared memory region and a BF16 output written into one (2
    bytes little-endian a value).  The output was refused with a 500 (``memoryview`` of an
    ``ml_dtypes.bfloat16`` array: "cannot include dtype 'E' in a buffer")."""
    from multiprocessing import shared_memory

    module = thttp if transport == "http" else tgrpc
    client = (thttp.InferenceServerClient(f"127.0.0.1:{served.port}") if transport == "http"
              else tgrpc.InferenceServerClient(grpc_address(served)))
    region = shared_memory.SharedMemory(create=True, size=256)
    try:
        bits = X.astype(ml_dtypes.bfloat16).view(np.uint16)
        region.buf[: bits.nbytes] = bits.tobytes()
        client.register_system_shared_memory("bf", "/" + region.name, 256)
        given = module.InferInput("x", list(X.shape), "BF16")
        given.set_shared_memory("bf", bits.nbytes)
        wanted = module.InferRequestedOutput("y")
        wanted.set_shared_memory("bf", bits.nbytes, offset=128)
        client.infer("graph", [given], outputs=[wanted])
        got = np.frombuffer(bytes(region.buf[128 : 128 + bits.nbytes]), dtype=np.uint16).view(ml_dtypes.bfloat16)
        assert np.array_equal(got.astype(np.float32).reshape(X.shape), X * 2)
    finally:
        client.unregister_system_shared_memory()
        client.close()
        region.close()
        region.unlink()
