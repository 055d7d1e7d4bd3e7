"""The Open Inference Protocol v2 (KServe/Triton REST) with a client we did not write: ``tritonclient[http]``.

Health, metadata and inference on ``linear`` and ``mlp`` (JSON and binary
tensor data, FP32 and FP64 inputs), the spec's error shape
``{"error": "..."}`` for every refusal, and Triton's model configuration and
statistics extensions (``get_model_config``, ``get_inference_statistics``).  Outputs are compared with what the
WebSocket protocol answers for the same rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support import Conn, RawHttp

tritonclient_http = pytest.importorskip("tritonclient.http")  # the test extra installs it
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture
def client(server):
    c = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


async def _ws_outputs(server, model: str, rows: np.ndarray) -> np.ndarray:
    conn = await Conn.open(server.url)
    answer = await conn.request({"type": "predict", "id": 1, "model": model, "inputs": rows.tolist()})
    await conn.close()
    return np.array(answer["outputs"])


def test_server_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "wsserve" and meta["version"] == "0.1.0"
    # only what is implemented, under Triton's names
    assert meta["extensions"] == ["binary_tensor_data", "model_configuration", "statistics", "model_repository",
                                  "system_shared_memory", "logging", "trace"]


def test_model_metadata_and_readiness(client) -> None:
    mlp = client.get_model_metadata("mlp")
    assert mlp["name"] == "mlp" and mlp["versions"] == ["1"] and mlp["platform"]
    # The built-in mlp is served from the repository the trainer writes: float32 in, float64 out.
    assert mlp["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]
    assert mlp["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [-1, 10]}]
    assert client.get_model_metadata("linear", model_version="1")["inputs"][0]["shape"] == [-1, 1]
    assert client.is_model_ready("mlp") and client.is_model_ready("linear", model_version="1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("mlp", model_version="9")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404" and "no model named 'nope'" in info.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("dtype", ["FP32", "FP64"])
async def test_infer_mlp_matches_the_websocket_answer(server, client, binary: bool, dtype: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 32)).astype(np.float32 if dtype == "FP32" else np.float64)
    inp = tritonclient_http.InferInput("input", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=binary)
    out = tritonclient_http.InferRequestedOutput("output", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], request_id="req-7")
    y = result.as_numpy("output")
    assert y.dtype == np.float64 and y.shape == (5, 10)  # the model's own datatype
    response = result.get_response()
    assert response["model_name"] == "mlp" and response["model_version"] == "1" and response["id"] == "req-7"
    assert np.array_equal(y, await _ws_outputs(server, "mlp", x.astype(np.float64)))


async def test_infer_linear_with_the_clients_defaults_and_a_version(server, client) -> None:
    """Default InferInput data and no requested outputs: tritonclient asks for binary outputs."""
    x = np.array([[0.5], [1.0], [-2.0]], dtype=np.float32)
    inp = tritonclient_http.InferInput("input", [3, 1], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("linear", [inp], model_version="1")
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 3 * 8
    assert np.array_equal(result.as_numpy("output"), await _ws_outputs(server, "linear", x.astype(np.float64)))


@pytest.mark.parametrize(
    "make, status, text",
    [
        (lambda: ("nope", "input", [1, 32], "FP32"), "404", "no model named 'nope'"),
        (lambda: ("mlp", "x", [1, 32], "FP32"), "400", "unknown input 'x'"),
        (lambda: ("mlp", "input", [1, 31], "FP32"), "400", "shape [1, 31]; the model takes [-1, 32]"),
        (lambda: ("mlp", "input", [1, 32], "INT64"), "400", "input 'input' is FP32; got INT64"),
        (lambda: ("charlm", "input", [1, 32], "FP32"), "400", "generates text"),
    ],
    ids=["unknown-model", "unknown-input", "wrong-shape", "wrong-datatype", "generative-model"],
)
def test_infer_errors_reach_the_client(client, make, status: str, text: str) -> None:
    model, name, shape, dtype = make()
    inp = tritonclient_http.InferInput(name, shape, dtype)
    np_type = {"FP32": np.float32, "INT64": np.int64}[dtype]
    inp.set_data_from_numpy(np.zeros(shape, dtype=np_type), binary_data=False)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [inp])
    assert info.value.status() == status and text in info.value.message(), info.value.message()


def _post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None):
    with RawHttp(port) as c:
        return c.request("POST", path, body, headers)


def test_error_bodies_are_the_spec_shape(server) -> None:
    bad = [
        (b'{"inputs": [', 400, "message is not valid JSON"),
        (b'{"inputs": []}', 400, "'inputs' must be a non-empty array"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32"}]}', 400, "needs 'data'"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [1]}]}', 400, "needs 32 values"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ' + json.dumps(["a"] * 32).encode()
         + b"}]}", 400, "not a number"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ' + json.dumps([True] * 32).encode()
         + b"}]}", 400, "not a number"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ' + json.dumps([1e300] * 32).encode()
         + b"}]}", 400, "out of the FP32 range"),
        (b'{"inputs": [{"name": "input", "shape": [0, 32], "datatype": "FP64", "data": []}]}', 400, "has 0 rows"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "BYTES", "data": []}]}', 400, "input 'input' is FP32; got BYTES"),
        (b'{"id": 5, "inputs": []}', 400, "'id' must be a string"),
        # a refused value is shown cut (its first 64 characters), not echoed whole
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP64", "data": ' + json.dumps(["z" * 100_000] + [0] * 31).encode()
         + b"}]}", 400, "input 'input' holds '" + "z" * 60 + "..., which is not a number"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP64", "data": ' + json.dumps([0] * 32).encode()
         + b'}], "outputs": [{"name": "nope"}]}', 400, "unknown output 'nope'"),
        (b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP64", "data": ' + json.dumps([0] * 32).encode()
         + b'}], "outputs": [{"name": "output"}, {"name": "output"}]}', 400, "output 'output' is requested twice"),
    ]
    for body, status, text in bad:
        a = _post(server.port, "/v2/models/mlp/infer", body)
        error = json.loads(a.body)
        assert a.status == status and list(error) == ["error"] and text in error["error"], (body[:80], a.body)


def test_nested_data_and_version_route(server) -> None:
    rows = [[0.25 * i for i in range(32)], [0.5] * 32]
    flat = {"name": "input", "shape": [2, 32], "datatype": "FP64", "data": [v for r in rows for v in r]}
    nested = dict(flat, data=rows)
    answers = [json.loads(_post(server.port, path, json.dumps({"inputs": [t]}).encode()).body)
               for path, t in (("/v2/models/mlp/infer", flat), ("/v2/models/mlp/versions/1/infer", nested))]
    assert answers[0]["outputs"] == answers[1]["outputs"]
    out = answers[0]["outputs"][0]
    assert out["shape"] == [2, 10] and out["datatype"] == "FP64" and len(out["data"]) == 20
    # "outputs": [] asks for every output, as Triton answers it (and as gRPC, which cannot tell it
    # from no "outputs", reads it): it used to answer none
    empty = json.loads(_post(server.port, "/v2/models/mlp/infer", json.dumps({"inputs": [flat], "outputs": []}).encode()).body)
    assert empty["outputs"] == answers[0]["outputs"]
    ragged = dict(flat, data=[rows[0], rows[1][:5]])
    assert "does not have shape" in json.loads(_post(server.port, "/v2/models/mlp/infer",
                                                     json.dumps({"inputs": [ragged]}).encode()).body)["error"]


def test_binary_input_is_checked_against_its_header(server) -> None:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 4}}]}).encode()
    good = header + struct.pack("<f", 0.5)
    a = _post(server.port, "/v2/models/linear/infer", good, {"Inference-Header-Content-Length": str(len(header))})
    assert a.status == 200 and abs(json.loads(a.body)["outputs"][0]["data"][0] - 2.02) < 0.05
    for body, length, text in [
        (good + b"xx", len(header), "binary tensor data"),  # bytes left over
        (header + b"\x00", len(header), "ends before"),
        (good, len(good) + 1, "Inference-Header-Content-Length is"),
        (header + struct.pack("<f", float("nan")), len(header), "not finite"),
    ]:
        a = _post(server.port, "/v2/models/linear/infer", body, {"Inference-Header-Content-Length": str(length)})
        assert a.status == 400 and text in json.loads(a.body)["error"], a.body
    a = _post(server.port, "/v2/models/linear/infer", header)  # binary_data_size without the header
    assert a.status == 400 and "Inference-Header-Content-Length" in json.loads(a.body)["error"]


def test_a_header_length_that_is_not_ascii_digits_is_a_400(server) -> None:
    """``Inference-Header-Content-Length: ²`` (a Latin-1 byte that ``str.isdigit`` takes and ``int``
    does not) is refused as any other bad byte count, not answered 500 ``internal error``."""
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [0.5]}]}).encode()
    with RawHttp(server.port) as c:
        for value in (b"\xb2", b"1\xb9", b"\xb3\xb3"):
            c.send(b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nInference-Header-Content-Length: "
                   + value + b"\r\nContent-Length: %d\r\n\r\n" % len(header) + header)
            a = c.answer()
            assert a.status == 400, (value, a.status, a.body)
            assert "Inference-Header-Content-Length must be a byte count" in json.loads(a.body)["error"]
        a = c.request("POST", "/v2/models/linear/infer", header)  # the connection still serves
        assert a.status == 200


def test_health_routes_follow_the_spec(server) -> None:
    with RawHttp(server.port) as c:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"):
            a = c.request("GET", path)
            assert a.status == 200 and a.body == b"", path
        a = c.request("GET", "/v2/")  # the trailing slash some clients send
        assert a.status == 200 and json.loads(a.body)["name"] == "wsserve"


# ---------------------------------------------------------------- Triton's model configuration extension


def test_model_config_of_the_predictive_models(client) -> None:
    mlp = client.get_model_config("mlp")
    assert mlp["name"] == "mlp" and mlp["platform"] and mlp["backend"]
    assert mlp["max_batch_size"] == 65536  # --max-rows: the rows one request may carry
    assert mlp["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [32]}]
    assert mlp["output"] == [{"name": "output", "data_type": "TYPE_FP64", "format": "FORMAT_NONE", "dims": [10]}]
    assert mlp["version_policy"] == {"all": {}}
    assert mlp["dynamic_batching"]["max_queue_delay_microseconds"] == 0  # greedy: no batching window
    assert mlp["model_transaction_policy"] == {"decoupled": False}
    assert mlp["parameters"] == {"max_batch_rows": {"string_value": "256"}}
    linear = client.get_model_config("linear", model_version="1")
    assert linear["name"] == "linear" and linear["max_batch_size"] == 65536
    assert [(t["name"], t["data_type"], t["dims"]) for t in linear["input"]] == [("input", "TYPE_FP64", [1])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in linear["output"]] == [("output", "TYPE_FP64", [1])]


#: Triton's vLLM backend's tensors (its ``auto_complete_config``; not ``image`` or ``embedding_request``,
#: which wsserve does not serve): (name, OIP datatype, dims, optional).
VLLM_INPUTS = [("text_input", "BYTES", [1], False), ("stream", "BOOL", [1], True),
               ("sampling_parameters", "BYTES", [1], True), ("exclude_input_in_output", "BOOL", [1], True),
               ("return_finish_reason", "BOOL", [1], True), ("return_cumulative_logprob", "BOOL", [1], True),
               ("return_logprobs", "BOOL", [1], True), ("return_num_input_tokens", "BOOL", [1], True),
               ("return_num_output_tokens", "BOOL", [1], True)]
VLLM_OUTPUTS = [("text_output", "BYTES", [-1]), ("finish_reason", "BYTES", [-1]), ("cumulative_logprob", "FP32", [-1]),
                ("logprobs", "BYTES", [-1]), ("num_input_tokens", "UINT32", [1]), ("num_output_tokens", "UINT32", [-1])]
#: ``model_config.proto``'s name of an OIP datatype.
CONFIG_TYPES = {"BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL", "FP32": "TYPE_FP32", "UINT32": "TYPE_UINT32"}


def test_model_config_of_a_generative_model_is_the_vllm_backends(client) -> None:
    """As Triton's vLLM backend configures a model: decoupled, no batch dimension, its inputs (every
    one optional but ``text_input``) and outputs, BYTES as ``TYPE_STRING``."""
    config = client.get_model_config("charlm")
    assert config["name"] == "charlm" and config["model_transaction_policy"] == {"decoupled": True}
    assert config["max_batch_size"] == 0
    assert config["input"] == [{"name": name, "data_type": CONFIG_TYPES[datatype], "format": "FORMAT_NONE",
                                "dims": dims, "optional": optional} for name, datatype, dims, optional in VLLM_INPUTS]
    assert config["output"] == [{"name": name, "data_type": CONFIG_TYPES[datatype], "format": "FORMAT_NONE",
                                 "dims": dims} for name, datatype, dims in VLLM_OUTPUTS]
    assert "dynamic_batching" not in config


def test_model_metadata_of_a_generative_model_is_the_vllm_backends(client) -> None:
    """The generate extension's tensors, with their whole shapes (no batch dimension), as Triton
    answers the metadata of a vLLM backend's model; a predictive model's keep theirs."""
    meta = client.get_model_metadata("charlm")
    assert meta["name"] == "charlm" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": name, "datatype": datatype, "shape": dims}
                              for name, datatype, dims, _ in VLLM_INPUTS]
    assert meta["outputs"] == [{"name": name, "datatype": datatype, "shape": dims} for name, datatype, dims in VLLM_OUTPUTS]
    assert client.get_model_metadata("mlp")["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]


@pytest.mark.parametrize("call", ["get_model_config", "get_inference_statistics"])
@pytest.mark.parametrize("model, version, text", [("nope", "", "no model named 'nope'"),
                                                  ("mlp", "9", "has no version '9'")])
def test_unknown_model_or_version_is_404(client, call: str, model: str, version: str, text: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        getattr(client, call)(model, model_version=version)
    assert info.value.status() == "404" and text in info.value.message(), info.value.message()


def test_config_and_stats_error_bodies_are_the_spec_shape(server) -> None:
    with RawHttp(server.port) as c:
        for path in ("/v2/models/nope/config", "/v2/models/mlp/versions/9/stats", "/v2/models/nope/stats"):
            a = c.request("GET", path)
            assert a.status == 404 and list(json.loads(a.body)) == ["error"], (path, a.body)


# ---------------------------------------------------------------- Triton's statistics extension


def _stat(client, model: str, version: str = "") -> dict:
    stats = client.get_inference_statistics(model, model_version=version)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [(model, "1")]
    return stats[0]


def test_inference_statistics_count_what_was_sent(client) -> None:
    before = _stat(client, "mlp", "1")
    rows = [1, 3, 5, 2]
    for n in rows:  # one at a time: each request is its own batch
        inp = tritonclient_http.InferInput("input", [n, 32], "FP32")
        inp.set_data_from_numpy(np.ones((n, 32), dtype=np.float32))
        client.infer("mlp", [inp])
    bad = tritonclient_http.InferInput("input", [1, 32], "FP32")
    bad.set_data_from_numpy(np.full((1, 32), np.nan, dtype=np.float32), binary_data=False)
    with pytest.raises(InferenceServerException):  # refused before any work: not a failed inference
        client.infer("mlp", [bad])
    after = _stat(client, "mlp")  # the default version: the same one
    assert after == _stat(client, "mlp", "1") | {"last_inference": after["last_inference"]}

    def delta(*path: str) -> int:
        a, b = after, before
        for key in path:
            a, b = a[key], b[key]
        return a - b

    assert delta("inference_count") == sum(rows)
    assert delta("execution_count") == len(rows)
    assert delta("inference_stats", "success", "count") == len(rows)
    assert delta("inference_stats", "queue", "count") == len(rows)
    assert delta("inference_stats", "compute_infer", "count") == len(rows)
    assert delta("inference_stats", "fail", "count") == 0
    for field in ("success", "queue", "compute_infer"):
        assert delta("inference_stats", field, "ns") > 0, field
    # no separate input/output copy step in wsserve: its counts match compute_infer's (as clients expect), 0 ns
    infer_count = after["inference_stats"]["compute_infer"]["count"]
    assert after["inference_stats"]["compute_input"] == after["inference_stats"]["compute_output"] == \
        {"count": infer_count, "ns": 0}
    # the success time holds the queue and compute time
    assert delta("inference_stats", "success", "ns") >= delta("inference_stats", "compute_infer", "ns")
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    old = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    for n in rows:
        assert sizes[n] - old.get(n, 0) == 1, (n, sizes, old)
    assert after["last_inference"] >= before["last_inference"]
    assert after["last_inference"] > 1_600_000_000_000  # ms since the epoch


def test_statistics_of_every_model(client) -> None:
    everything = client.get_inference_statistics()["model_stats"]
    names = [(s["name"], s["version"]) for s in everything]
    assert ("mlp", "1") in names and ("linear", "1") in names and ("charlm", "1") in names
    assert names == sorted(names)


def test_generation_statistics(server, client) -> None:
    before = _stat(client, "charlm")
    with RawHttp(server.port) as c:
        a = c.request("POST", "/v1/completions", json.dumps({"model": "charlm", "prompt": "to be", "max_tokens": 3,
                                                             "temperature": 0}).encode())
        assert a.status == 200, a.body
    after = _stat(client, "charlm")
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1
    assert after["execution_count"] > before["execution_count"]  # generation steps


# ---------------------------------------------------------------- Triton's perf_analyzer

_PERF_ANALYZER_DEFAULT = Path(__file__).resolve().parent.parent / ".cache" / "perf_analyzer" / "perf_analyzer"


def _perf_analyzer() -> str:
    """The binary: $WSSERVE_PERF_ANALYZER, scripts/install-perf-analyzer's default place, or PATH."""
    found = os.environ.get("WSSERVE_PERF_ANALYZER") or (
        str(_PERF_ANALYZER_DEFAULT) if _PERF_ANALYZER_DEFAULT.exists() else shutil.which("perf_analyzer"))
    if not found:
        pytest.skip("perf_analyzer is not installed: bash scripts/install-perf-analyzer")
    return found


def test_perf_analyzer_runs_against_wsserve(server, client) -> None:
    """Triton's own load generator reads the model's config, runs a bounded count of batch-4
    requests on two connections, and reads the statistics: it stops with an error on any
    inconsistency it checks (e.g. unequal compute counts) and prints the server's figures."""
    binary = _perf_analyzer()
    before = _stat(client, "mlp")
    run = subprocess.run(
        [binary, "-m", "mlp", "-u", f"127.0.0.1:{server.port}", "-i", "http", "-b", "4", "--concurrency-range", "2",
         "--measurement-mode", "count_windows", "--measurement-request-count", "100", "--max-trials", "3",
         "--stability-percentage", "100000"],  # no timing criterion: 3 windows of >= 100 requests are enough
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = dict(re.findall(r"^\s+(Inference count|Execution count|Successful request count): (\d+)$", run.stdout,
                              re.M))
    assert set(figures) == {"Inference count", "Execution count", "Successful request count"}, run.stdout
    requests = int(figures["Successful request count"])
    assert requests >= 100 and int(figures["Inference count"]) == 4 * requests
    assert 0 < int(figures["Execution count"]) <= requests  # the dynamic batcher may merge requests
    assert "compute infer" in run.stdout  # the server-side latency breakdown from the statistics
    after = _stat(client, "mlp")
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] >= requests
