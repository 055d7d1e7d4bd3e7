"""String tensors (Triton's ``TYPE_STRING``, the OIP's ``BYTES``): a Triton Python model upper-casing
its text and answering the lengths, and an ensemble passing strings between its steps
(upper → tokenizer → sum), on a real server on loopback called with ``tritonclient.http`` (JSON
and binary data), ``tritonclient.grpc`` (raw contents), the generated gRPC stub (typed
``bytes_contents``, hostile raw entries) and raw HTTP bodies (hostile length prefixes)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.support import ServerProcess  # noqa: E402
from tests.support.conn import Conn  # noqa: E402
from tests.support.rawhttp import RawHttp  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repository_triton_python import _write  # noqa: E402

#: Checks that its text comes as an object array of bytes (Triton's rule); answers the text
#: upper-cased (bytes), its length (INT32) and "long"/"short" (str, as a text classifier's label).
UPPER_PBTXT = '''backend: "python"
max_batch_size: 8
input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "upper" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "length" data_type: TYPE_INT32 dims: [ 1 ] },
         { name: "label" data_type: TYPE_STRING dims: [ 1 ] } ]
'''
UPPER_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            t = pb_utils.get_input_tensor_by_name(r, "text").as_numpy()
            if t.dtype != np.object_ or not all(type(v) is bytes for v in t.flat):
                raise pb_utils.TritonError(f"text is not bytes: {t.dtype} {t!r}")
            upper = np.array([[v.upper() for v in row] for row in t], dtype=np.object_)
            length = np.array([[len(v) for v in row] for row in t], dtype=np.int32)
            label = np.array([["long" if len(v) > 3 else "short" for v in row] for row in t], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("upper", upper), pb_utils.Tensor("length", length),
                                                   pb_utils.Tensor("label", label)]))
        return out
'''

#: The first 4 bytes of each text as INT64 ids (0-padded), as a tokenizer in front of a model.
TOKENIZER_PBTXT = '''backend: "python"
max_batch_size: 8
input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "ids" data_type: TYPE_INT64 dims: [ 4 ] } ]
'''
TOKENIZER_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            t = pb_utils.get_input_tensor_by_name(r, "text").as_numpy()
            ids = np.zeros((len(t), 4), np.int64)
            for i, v in enumerate(t[:, 0]):
                head = list(v[:4])
                ids[i, :len(head)] = head
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("ids", ids)]))
        return out
'''
SUM_PBTXT = '''backend: "python"
max_batch_size: 8
input [ { name: "ids" data_type: TYPE_INT64 dims: [ 4 ] } ]
output [ { name: "total" data_type: TYPE_INT64 dims: [ 1 ] } ]
'''
SUM_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("total", r.inputs()[0].as_numpy().sum(axis=1, keepdims=True))])
                for r in requests]
'''
#: text -> upper (a BYTES tensor between steps) -> tokenizer -> sum; answers the upper text and the total.
PIPELINE_PBTXT = '''platform: "ensemble"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "TOTAL" data_type: TYPE_INT64 dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "upper" model_version: -1 input_map { key: "text" value: "TEXT" }
    output_map { key: "upper" value: "UPPER" } },
  { model_name: "tokenizer" model_version: -1 input_map { key: "text" value: "UPPER" }
    output_map { key: "ids" value: "IDS" } },
  { model_name: "sum" model_version: -1 input_map { key: "ids" value: "IDS" }
    output_map { key: "total" value: "TOTAL" } }
] }
'''
#: Decodes its bytes with "surrogateescape" (a common round trip): a byte that is not UTF-8 becomes
#: a lone surrogate in the str it answers, which UTF-8 cannot encode.
ESCAPE_PBTXT = '''backend: "python"
max_batch_size: 8
input [ { name: "raw" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
'''
ESCAPE_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            t = pb_utils.get_input_tensor_by_name(r, "raw").as_numpy()
            text = np.array([[v.decode("utf-8", "surrogateescape") for v in row] for row in t], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("text", text)]))
        return out
'''
MAX_MESSAGE_BYTES = 65536


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("strings") / "model_repository"
    _write(root, "upper", UPPER_PBTXT, UPPER_PY)
    _write(root, "cached", UPPER_PBTXT + "response_cache { enable: true }\n", UPPER_PY)
    _write(root, "tokenizer", TOKENIZER_PBTXT, TOKENIZER_PY)
    _write(root, "sum", SUM_PBTXT, SUM_PY)
    _write(root, "escape", ESCAPE_PBTXT, ESCAPE_PY)
    (root / "pipeline" / "1").mkdir(parents=True)
    (root / "pipeline" / "config.pbtxt").write_text(PIPELINE_PBTXT)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--response-cache-bytes", str(1 << 20))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


@pytest.fixture
def http(served) -> thttp.InferenceServerClient:
    return thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}")


@pytest.fixture
def gclient(served) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(served[1])
    yield c
    c.close()


@pytest.fixture
def stub(served) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(served[1])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


TEXTS = [b"abc", "h\u00e9llo w\u00f6rld".encode(), b""]
WORDS = np.array([[t] for t in TEXTS], dtype=np.object_)


def _http_input(module, name: str, data: np.ndarray, binary: bool = True):  # noqa: ANN202 - an InferInput
    inp = module.InferInput(name, list(data.shape), "BYTES")
    inp.set_data_from_numpy(data, **({"binary_data": binary} if module is thttp else {}))
    return inp


def _raw_element(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def test_metadata_and_config_say_bytes_and_type_string(http, gclient) -> None:
    meta = http.get_model_metadata("upper")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("upper", "BYTES"), ("length", "INT32"),
                                                                     ("label", "BYTES")]
    config = http.get_model_config("upper")
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    assert [o["data_type"] for o in config["output"]] == ["TYPE_STRING", "TYPE_INT32", "TYPE_STRING"]
    gmeta = gclient.get_model_metadata("pipeline")
    assert [(t.name, t.datatype) for t in gmeta.inputs] == [("TEXT", "BYTES")]
    assert [(t.name, t.datatype) for t in gmeta.outputs] == [("UPPER", "BYTES"), ("TOTAL", "INT64")]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_strings_in_and_out(http, binary: bool) -> None:
    outputs = [thttp.InferRequestedOutput(n, binary_data=binary) for n in ("upper", "length", "label")]
    result = http.infer("upper", [_http_input(thttp, "text", WORDS, binary)], outputs=outputs)
    upper = result.as_numpy("upper")
    assert upper.shape == (3, 1) and upper.dtype == np.object_
    # binary: the exact bytes (deserialize_bytes_tensor); JSON: strings
    want = [t.upper() for t in TEXTS] if binary else [t.upper().decode() for t in TEXTS]
    assert upper[:, 0].tolist() == want
    assert result.as_numpy("length")[:, 0].tolist() == [len(t) for t in TEXTS]
    labels = result.as_numpy("label")[:, 0].tolist()
    assert labels == ([b"short", b"long", b"short"] if binary else ["short", "long", "short"])


def test_http_bytes_that_are_not_utf8_pass_in_binary_and_are_replaced_in_json(http) -> None:
    data = np.array([[b"\xff\xfeab"]], dtype=np.object_)
    outputs = [thttp.InferRequestedOutput("upper", binary_data=True), thttp.InferRequestedOutput("label", binary_data=False)]
    result = http.infer("upper", [_http_input(thttp, "text", data)], outputs=outputs)
    assert result.as_numpy("upper")[0, 0] == b"\xff\xfeAB"
    json_out = http.infer("upper", [_http_input(thttp, "text", data)],
                          outputs=[thttp.InferRequestedOutput("upper", binary_data=False)])
    assert json_out.as_numpy("upper")[0, 0] == "\ufffd\ufffdAB"


def test_grpc_strings_raw_and_typed(gclient, stub) -> None:
    result = gclient.infer("upper", [_http_input(tgrpc, "text", WORDS)])
    assert result.as_numpy("upper")[:, 0].tolist() == [t.upper() for t in TEXTS]
    assert result.as_numpy("length")[:, 0].tolist() == [len(t) for t in TEXTS]
    assert result.as_numpy("label")[:, 0].tolist() == [b"short", b"long", b"short"]
    # typed bytes_contents, answered raw with length prefixes
    request = service_pb2.ModelInferRequest(model_name="upper")
    request.inputs.add(name="text", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend([b"xy", b"\x00z"])
    request.outputs.add(name="upper")
    response = stub.ModelInfer(request)
    assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [2, 1])
    assert response.raw_output_contents[0] == _raw_element(b"XY") + _raw_element(b"\x00Z")


def test_an_ensemble_passes_strings_between_its_steps(http, gclient) -> None:
    want_upper = [t.upper() for t in TEXTS]
    want_total = [sum(u[:4]) for u in want_upper]
    result = http.infer("pipeline", [_http_input(thttp, "TEXT", WORDS)])
    assert result.as_numpy("UPPER")[:, 0].tolist() == want_upper
    assert result.as_numpy("TOTAL")[:, 0].tolist() == want_total
    gresult = gclient.infer("pipeline", [_http_input(tgrpc, "TEXT", WORDS)])
    assert gresult.as_numpy("UPPER")[:, 0].tolist() == want_upper
    assert gresult.as_numpy("TOTAL")[:, 0].tolist() == want_total
    as_json = http.infer("pipeline", [_http_input(thttp, "TEXT", WORDS, binary=False)],
                         outputs=[thttp.InferRequestedOutput("TOTAL", binary_data=False)])
    assert as_json.as_numpy("TOTAL")[:, 0].tolist() == want_total


def _binary_body(data: bytes, shape: list[int], size: int | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape,
                                   "parameters": {"binary_data_size": len(data) if size is None else size}}]}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


@pytest.mark.parametrize(("data", "shape", "said"), [
    (_raw_element(b"ab")[:4] + b"a", [1, 1], "input 'text': element 0's length prefix is 2 bytes; only 1 remain"),
    ((1 << 31).to_bytes(4, "little") + b"abc", [1, 1], "element 0's length prefix is 2147483648 bytes; only 3 remain"),
    (_raw_element(b"aaaaa") + b"\x01\x00\x00", [3, 1], "input 'text': its BYTES data ends inside element 1's 4-byte length"),
    (_raw_element(b"a") + _raw_element(b"b"), [1, 1], "input 'text': 5 bytes of its BYTES data follow its 1 elements"),
    (_raw_element(b"a") * 2, [8, 1], "input 'text': 'binary_data_size' must be an integer of at least 32 (8 BYTES"),
])
def test_http_binary_strings_with_a_bad_length_are_refused_naming_the_input(served, data: bytes, shape: list[int],
                                                                             said: str) -> None:
    body, headers = _binary_body(data, shape)
    conn = RawHttp(served[0].port)
    try:
        answer = conn.request("POST", "/v2/models/upper/infer", body, headers)
    finally:
        conn.sock.close()
    assert answer.status == 400 and said in json.loads(answer.body)["error"], answer.body


def test_json_strings_must_be_strings(served) -> None:
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["a", 3]}]}).encode()
    conn = RawHttp(served[0].port)
    try:
        answer = conn.request("POST", "/v2/models/upper/infer", body, {"Content-Type": "application/json"})
    finally:
        conn.sock.close()
    assert answer.status == 400
    assert "input 'text' is BYTES: every element must be a string, got 3" in json.loads(answer.body)["error"]


@pytest.mark.parametrize(("raw", "shape", "said"), [
    (b"\xff\xff\xff\x7fab", [1, 1], "input 'text': element 0's length prefix is 2147483647 bytes; only 2 remain"),
    (b"\x00\x00", [1, 1], "input 'text': 2 bytes of BYTES data cannot hold 1 elements"),
    (_raw_element(b"a") * 3, [65536, 1], "input 'text': 15 bytes of BYTES data cannot hold 65536 elements"),
])
def test_grpc_raw_strings_with_a_bad_length_are_refused_naming_the_input(stub, raw: bytes, shape: list[int],
                                                                        said: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="upper")
    request.inputs.add(name="text", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and said in info.value.details()


def test_too_many_bytes_are_refused_by_every_transport(http, gclient) -> None:
    big = np.array([[b"x" * MAX_MESSAGE_BYTES]], dtype=np.object_)
    with pytest.raises(InferenceServerException) as info:
        http.infer("upper", [_http_input(thttp, "text", big)])
    assert info.value.status() == "413"
    with pytest.raises(InferenceServerException) as ginfo:
        gclient.infer("upper", [_http_input(tgrpc, "text", big)])
    assert ginfo.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    # and the server goes on answering
    assert http.infer("upper", [_http_input(thttp, "text", WORDS)]).as_numpy("length")[:, 0].tolist() == [3, 13, 0]


async def test_websocket_predict_takes_and_answers_strings_as_json(served) -> None:
    conn = await Conn.open(served[0].url)
    try:
        frame = await conn.request({"type": "predict", "id": "s", "model": "upper",
                                    "inputs": {"text": [["abc"], ["h\u00e9llo w\u00f6rld"], [""]]}})
        ens = await conn.request({"type": "predict", "id": "e", "model": "pipeline", "inputs": [["ab"]]})
        wrong = await conn.request({"type": "predict", "id": "w", "model": "upper", "inputs": [["a"], [3]]})
        binary = await conn.request({"type": "predict", "id": "b", "model": "upper", "inputs": [["a"]],
                                     "binary_outputs": True})
    finally:
        await conn.close()
    assert frame["type"] == "result", frame
    assert frame["outputs"] == {"upper": [["ABC"], ["H\u00e9LLO W\u00f6RLD"], [""]], "length": [[3], [13], [0]],
                                "label": [["short"], ["long"], ["short"]]}
    assert ens["type"] == "result" and ens["outputs"] == {"UPPER": [["AB"]], "TOTAL": [[ord("A") + ord("B")]]}, ens
    assert (wrong["type"], wrong["code"]) == ("error", "invalid_input")
    assert wrong["message"] == "'inputs' row 1 holds 3; input 'text' takes strings"
    assert (binary["type"], binary["code"]) == ("error", "bad_request")
    assert "answers strings (BYTES outputs)" in binary["message"]


def test_a_cached_string_model_keys_each_element_and_answers_every_request(http) -> None:
    """The response cache keys string inputs element by element (length-prefixed: ["a", "bc"] is not
    ["ab", "c"]); string outputs are not stored, so each request is computed and right."""
    for texts in ([b"a", b"bc"], [b"ab", b"c"], [b"a", b"bc"]):
        data = np.array([[t] for t in texts], dtype=np.object_)
        result = http.infer("cached", [_http_input(thttp, "text", data)])
        assert result.as_numpy("upper")[:, 0].tolist() == [t.upper() for t in texts]
        assert result.as_numpy("length")[:, 0].tolist() == [len(t) for t in texts]


def test_pb_utils_serializes_and_deserializes_string_tensors_as_triton() -> None:
    from wsserve.repository import triton_pb_utils as pb

    words = np.array([[b"ab", "c\u00e9"], [b"", 7]], dtype=np.object_)
    flat = pb.serialize_byte_tensor(words)
    assert flat.shape == () and flat.item() == b"".join(_raw_element(w) for w in (b"ab", "c\u00e9".encode(), b"", b"7"))
    assert pb.deserialize_bytes_tensor(flat).tolist() == [b"ab", "c\u00e9".encode(), b"", b"7"]
    assert pb.deserialize_bytes_tensor(flat.item()).tolist() == [b"ab", "c\u00e9".encode(), b"", b"7"]
    with pytest.raises(pb.TritonModelException, match="runs past its end"):
        pb.deserialize_bytes_tensor(_raw_element(b"abc")[:-1])
    with pytest.raises(pb.TritonModelException, match="invalid datatype"):
        pb.serialize_byte_tensor(np.ones(2))


@pytest.mark.parametrize(("path", "body", "key"), [
    ("/predict", {"model": "upper", "inputs": [["ab"], ["\u00e9"]]}, "outputs"),
    ("/v1/models/upper:predict", {"instances": [{"text": ["ab"]}, {"text": ["\u00e9"]}]}, "predictions"),
])
def test_the_other_http_routes_take_and_answer_strings_as_json(served, path: str, body: dict, key: str) -> None:
    conn = RawHttp(served[0].port)
    try:
        answer = conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    finally:
        conn.sock.close()
    assert answer.status == 200, answer.body
    got = json.loads(answer.body)[key]
    if key == "outputs":
        assert got["upper"] == [["AB"], ["\u00e9"]] and got["length"] == [[2], [2]]
    else:
        assert [(p["upper"], p["length"]) for p in got] == [(["AB"], [2]), (["\u00e9"], [2])]


async def test_a_binary_tensor_frame_for_a_string_input_is_refused_naming_it(served) -> None:
    from wsserve.tensorframe import encode

    conn = await Conn.open(served[0].url)
    try:
        await conn.send(encode({"type": "predict", "id": "f", "model": "upper"}, np.ones((1, 1), np.int32), key="inputs"))
        frame = await conn.recv()
    finally:
        await conn.close()
    assert (frame["type"], frame["id"], frame["code"]) == ("error", "f", "invalid_input"), frame
    assert "input 'text' takes strings (BYTES): send them in a JSON predict" in frame["message"]


#: Counts each row's strings; a request whose first string is not empty (not the warm-up's) waits
#: for the file GATE first, announcing it at GATE.started.
GATED_PBTXT = '''backend: "python"
max_batch_size: 256
input [ { name: "text" data_type: TYPE_STRING dims: [ 1024 ] } ]
output [ { name: "n" data_type: TYPE_INT32 dims: [ 1 ] } ]
'''
GATED_PY = '''
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

GATE = {gate!r}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            t = pb_utils.get_input_tensor_by_name(r, "text").as_numpy()
            if t[0, 0] != b"":
                open(GATE + ".started", "w").close()
                end = time.monotonic() + 60
                while not os.path.exists(GATE) and time.monotonic() < end:
                    time.sleep(0.01)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("n", np.full((len(t), 1), t.shape[1], np.int32))]))
        return out
'''


async def test_max_inflight_bytes_counts_the_memory_string_inputs_hold(tmp_path) -> None:
    """Each element of a string tensor is a Python bytes object (~33 bytes of header besides its
    text) and an 8-byte pointer: 131072 two-character strings hold ~5.6 MB although their text and
    length prefixes are 786432 bytes.  Next to a request in flight, such a request is refused by a
    2 MiB max_inflight_bytes (it was let in, counted by its length prefixes)."""
    from pathlib import Path

    from tests.support import wait_until

    gate = tmp_path / "gate"
    root = tmp_path / "model_repository"
    _write(root, "gated", GATED_PBTXT, GATED_PY.format(gate=str(gate)))
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--max-inflight-bytes", str(2 << 20))
    try:
        conn = await Conn.open(proc.url)
        try:
            await conn.send({"type": "predict", "id": "a", "model": "gated", "inputs": [["x"] * 1024]})
            wait_until(lambda: Path(f"{gate}.started").exists(), 30)
            await conn.send({"type": "predict", "id": "b", "model": "gated", "inputs": [["ab"] * 1024] * 128})
            gate.touch()
            frames = await conn.collect({"a", "b"})
        finally:
            gate.touch()
            await conn.close()
    finally:
        proc.stop()
    (refused,), (answered,) = frames["b"], frames["a"]
    assert (refused["type"], refused.get("code")) == ("error", "overloaded"), refused
    assert "(max_inflight_bytes)" in refused["message"]
    assert (answered["type"], answered["outputs"]) == ("result", [[1024]]), answered


def test_a_str_output_utf8_cannot_encode_fails_its_request_naming_the_output(http) -> None:
    """b"ok\\xff" decoded with surrogateescape answers "ok\\udcff": the request fails naming the output,
    the element and the character (it named neither), and the server answers the next one."""
    data = np.array([[b"ok\xff"]], dtype=np.object_)
    with pytest.raises(InferenceServerException) as info:
        http.infer("escape", [_http_input(thttp, "raw", data)])
    assert info.value.status() == "500"
    assert "output 'text' holds a str at element 0 that UTF-8 cannot encode" in info.value.message()
    assert "'\\udcff' at character 2" in info.value.message()
    ok = http.infer("escape", [_http_input(thttp, "raw", np.array([[b"ok"]], dtype=np.object_))])
    assert ok.as_numpy("text")[0, 0] == b"ok"
