"""The Open Inference Protocol over gRPC (``--grpc-port``), driven by Triton's own clients.

``tritonclient.grpc`` (sync) and ``tritonclient.grpc.aio`` against a real server on
loopback, plus the generated stub for what the clients do not send themselves (typed
``contents``, a cancelled RPC).  Answers are compared with the HTTP OIP route's for the
same input: two transports, one answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.repo_models import (
    AFFINE_CONFIG,
    BIGRAM_CONFIG,
    BIGRAM_PY,
    FAILS_AFTER_E_PY,
    GATED_PY,
    write_affine,
    write_py,
)
from tests.support import ServerProcess, wait_until

grpc = pytest.importorskip("grpc")  # the grpc extra installs it
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.grpc.aio as tgrpc_aio  # noqa: E402
import tritonclient.http as thttp  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

#: The log line naming the gRPC port (``--grpc-port 0`` picks a free one).
GRPC_LINE = re.compile(r"gRPC \(Open Inference Protocol\) on [0-9.]+:(\d+)")


def grpc_address(proc: ServerProcess) -> str:
    """``127.0.0.1:PORT`` of ``proc``'s gRPC endpoint, read from its log."""
    found = wait_until(lambda: GRPC_LINE.search(proc.stderr_text()), 30.0, what="the gRPC port in the server's log")
    return f"127.0.0.1:{found.group(1)}"


def start(cache: Path, *flags: str) -> tuple[ServerProcess, str]:
    proc = ServerProcess("--grpc-port", "0", *flags, cache_dir=cache)
    return proc, grpc_address(proc)


@pytest.fixture(scope="module")
def served(model_cache: Path):
    proc, address = start(model_cache)
    yield proc, address
    proc.stop()


@pytest.fixture
def client(served):
    c = tgrpc.InferenceServerClient(served[1])
    yield c
    c.close()


@pytest.fixture
def stub(served):
    channel = grpc.insecure_channel(served[1])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _infer(client, model: str, x: np.ndarray, datatype: str, **kwargs):
    inp = tgrpc.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], **kwargs)


def _refused(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def _requests(proc: ServerProcess, **labels: str) -> float:
    return proc.metrics().get("wsserve_requests_total", **labels)


# --------------------------------------------------------------------------- health, metadata, config


def test_health_metadata_and_config(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "wsserve" and list(meta.extensions) == ["binary_tensor_data", "model_configuration",
                                                                "statistics", "model_repository",
                                                                "system_shared_memory", "logging", "trace"]
    mlp = client.get_model_metadata("mlp")
    assert mlp.name == "mlp" and list(mlp.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.inputs] == [("input", "FP32", [-1, 32])]
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.outputs] == [("output", "FP64", [-1, 10])]
    assert client.is_model_ready("linear") and client.is_model_ready("mlp", model_version="1")
    config = client.get_model_config("mlp").config
    assert config.name == "mlp" and config.max_batch_size == 65536
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("input", 11, [32])]  # TYPE_FP32
    assert config.parameters["max_batch_rows"].string_value == "256"
    assert config.dynamic_batching.priority_levels == 2
    charlm = client.get_model_config("charlm").config
    assert charlm.max_batch_size == 0 and charlm.model_transaction_policy.decoupled


def test_a_generative_models_metadata_and_config_are_the_vllm_backends(client) -> None:
    """``charlm``'s ModelMetadata and ModelConfig list the tensors Triton's vLLM backend declares
    (its ``auto_complete_config``, but ``image`` and ``embedding_request``): whole shapes, every
    input optional but ``text_input``, BYTES as ``TYPE_STRING`` in the config."""
    from tests.test_http_oip import VLLM_INPUTS, VLLM_OUTPUTS

    meta = client.get_model_metadata("charlm")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [(n, d, s) for n, d, s, _ in VLLM_INPUTS]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == VLLM_OUTPUTS
    config = client.get_model_config("charlm").config
    types = {"BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL", "FP32": "TYPE_FP32", "UINT32": "TYPE_UINT32"}
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims), t.optional) for t in config.input] == [
        (n, types[d], s, o) for n, d, s, o in VLLM_INPUTS]
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == [
        (n, types[d], s) for n, d, s in VLLM_OUTPUTS]
    assert config.max_batch_size == 0 and config.model_transaction_policy.decoupled


def test_unknown_model_is_not_found(client) -> None:
    for call in (client.get_model_metadata, client.get_model_config):
        err = _refused(call, "nope")
        assert err.status() == "StatusCode.NOT_FOUND" and "nope" in err.message()
    err = _refused(_infer, client, "nope", np.zeros((1, 1)), "FP64")
    assert err.status() == "StatusCode.NOT_FOUND" and "no model named 'nope'" in err.message()
    assert _refused(client.get_model_metadata, "mlp", model_version="9").status() == "StatusCode.NOT_FOUND"


def test_every_rpc_of_the_service_is_answered() -> None:
    """Triton's GRPCInferenceService as tritonclient ships it: no RPC is left UNIMPLEMENTED (one a
    later tritonclient adds would be, naming the RPCs answered)."""
    from wsserve.oipgrpc.service import IMPLEMENTED, UNIMPLEMENTED

    assert UNIMPLEMENTED == ()
    assert {"LogSettings", "TraceSetting", "SystemSharedMemoryRegister"} <= set(IMPLEMENTED)


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize("model, width, datatype", [("linear", 1, "FP64"), ("mlp", 32, "FP32")])
def test_infer_answers_as_the_http_route(served, client, model: str, width: int, datatype: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, width)).astype(np.float64 if datatype == "FP64" else np.float32)
    result = _infer(client, model, x, datatype, request_id="req-1")
    response = result.get_response()
    assert response.id == "req-1" and response.model_name == model and response.model_version == "1"
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [
        ("output", "FP64", [5, 1 if model == "linear" else 10])]
    http = thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}")
    try:
        inp = thttp.InferInput("input", list(x.shape), datatype)
        inp.set_data_from_numpy(x)
        expected = http.infer(model, [inp]).as_numpy("output")
    finally:
        http.close()
    assert np.array_equal(result.as_numpy("output"), expected)


def test_typed_contents_answer_as_raw_ones(client, stub) -> None:
    x = np.random.default_rng(3).normal(size=(4, 32)).astype(np.float32)
    raw = _infer(client, "mlp", x, "FP32").as_numpy("output")
    request = service_pb2.ModelInferRequest(model_name="mlp", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[4, 32])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    out = np.frombuffer(response.raw_output_contents[0], dtype="<f8").reshape(list(response.outputs[0].shape))
    assert np.array_equal(out, raw)
    # a float model takes FP64 too (rounded to its FP32 first, as over HTTP)
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP64", shape=[4, 32]).contents.fp64_contents.extend(
        x.astype(np.float64).ravel().tolist())
    out = np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], dtype="<f8").reshape(4, 10)
    assert np.array_equal(out, raw)


def test_bad_input_is_invalid_argument_with_wsserves_message(client, stub) -> None:
    cases = [
        (np.zeros((2, 3)), "FP64", "input 'input' has shape [2, 3]; the model takes [-1, 1]"),
        (np.zeros((2, 1), dtype=np.int32), "INT32", "input 'input' is FP64; got INT32"),
        (np.array([[1.0], [np.nan]]), "FP64", "input 'input' holds a value that is not finite"),
        (np.array([[1.0], [np.inf]]), "FP64", "input 'input' holds a value that is not finite"),
    ]
    for x, datatype, message in cases:
        err = _refused(_infer, client, "linear", x, datatype)
        assert err.status() == "StatusCode.INVALID_ARGUMENT" and err.message() == message, err
    # FP64 into the FP32 model: out of FP32's range
    err = _refused(_infer, client, "mlp", np.full((1, 32), 1e300), "FP64")
    assert err.message() == "input 'input' holds a value out of the FP32 range"
    # the raw bytes must be the shape's
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="input", datatype="FP64", shape=[2, 1])
    request.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "input 'input': raw_input_contents[0] holds 8 bytes; shape [2, 1] of FP64 needs 16"
    # typed contents of the wrong count, or in the wrong field
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="input", datatype="FP64", shape=[2, 1]).contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "input 'input': shape [2, 1] needs 2 values in 'contents.fp64_contents'; it holds 0"
    # BYTES is not a datatype these models take; an unknown input or output is named
    err = _refused(_infer, client, "linear", np.array([[b"a"]], dtype=np.object_), "BYTES")
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "input 'input' is FP64; got BYTES" in err.message()
    inp = tgrpc.InferInput("input", [1, 1], "FP64")
    inp.set_data_from_numpy(np.zeros((1, 1)))
    err = _refused(client.infer, "linear", [inp], outputs=[tgrpc.InferRequestedOutput("nope")])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.message() == "unknown output 'nope'; the model produces: output"
    err = _refused(client.infer, "linear", [inp], outputs=[tgrpc.InferRequestedOutput("output")] * 2)
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and err.message() == "output 'output' is requested twice"
    # one request's failure touches no other: the next one is answered
    assert _infer(client, "linear", np.ones((1, 1)), "FP64").as_numpy("output").shape == (1, 1)


def test_outputs_selection_priority_and_timeout(client) -> None:
    x = np.ones((2, 1))
    inp = tgrpc.InferInput("input", [2, 1], "FP64")
    inp.set_data_from_numpy(x)
    plain = client.infer("linear", [inp]).as_numpy("output")
    result = client.infer("linear", [inp], outputs=[tgrpc.InferRequestedOutput("output")], priority=1,
                          timeout=10_000_000)
    assert np.array_equal(result.as_numpy("output"), plain)
    err = _refused(client.infer, "linear", [inp], timeout=-5)
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "parameter 'timeout'" in err.message()


def test_metrics_count_grpc_inferences_as_http_ones(served, client) -> None:
    proc = served[0]
    ok = _requests(proc, code="ok", model="linear", type="predict")
    bad = _requests(proc, code="invalid_input", model="linear", type="predict")
    _infer(client, "linear", np.ones((3, 1)), "FP64")
    _refused(_infer, client, "linear", np.ones((3, 2)), "FP64")
    assert _requests(proc, code="ok", model="linear", type="predict") == ok + 1
    assert _requests(proc, code="invalid_input", model="linear", type="predict") == bad + 1
    stats = client.get_inference_statistics("linear").model_stats[0]
    assert stats.name == "linear" and stats.inference_count >= 3 and stats.inference_stats.success.count >= 1


# --------------------------------------------------------------------------- batching (asyncio client)


def test_concurrent_rpcs_are_batched(model_cache: Path, client) -> None:
    """16 one-row RPCs at once, a batch of at most 16 rows and a long window: one execution (each
    RPC answered its own row's outputs, as the module's server answers them in one request)."""
    proc, address = start(model_cache, "--models", "mlp", "--max-batch-size", "16", "--max-delay-ms", "60000")
    x = np.random.default_rng(5).normal(size=(16, 32)).astype(np.float32)

    async def run() -> list[np.ndarray]:
        client = tgrpc_aio.InferenceServerClient(address)
        try:
            async def one(i: int) -> np.ndarray:
                inp = tgrpc_aio.InferInput("input", [1, 32], "FP32")
                inp.set_data_from_numpy(x[i : i + 1])
                return (await client.infer("mlp", [inp], request_id=str(i))).as_numpy("output")

            return await asyncio.gather(*(one(i) for i in range(16)))
        finally:
            await client.close()

    try:
        outputs = asyncio.run(run())
        batched = tgrpc.InferenceServerClient(address)
        stats = batched.get_inference_statistics("mlp").model_stats[0]
        batched.close()
        alone = _infer(client, "mlp", x, "FP32").as_numpy("output")
        assert stats.inference_count == 16 and stats.execution_count == 1
        assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(16, 1)]
        assert proc.metrics().get("wsserve_batch_size_count", model="mlp") >= 1
        assert np.allclose(np.concatenate(outputs), alone)  # each RPC got its own row's answer
    finally:
        proc.stop()


# --------------------------------------------------------------------------- auth, cancel, deadline, drain


def test_api_keys(model_cache: Path) -> None:
    proc, address = start(model_cache, "--models", "linear", "--api-key", "k1")
    client = tgrpc.InferenceServerClient(address)
    try:
        assert client.is_server_live() and client.is_server_ready()  # probes need no key, as over HTTP
        for headers in (None, {"authorization": "Bearer nope"}, {"authorization": "k1"}):
            err = _refused(client.get_model_metadata, "linear", headers=headers)
            assert err.status() == "StatusCode.UNAUTHENTICATED", headers
            err = _refused(_infer, client, "linear", np.ones((1, 1)), "FP64", headers=headers)
            assert err.status() == "StatusCode.UNAUTHENTICATED", headers
        good = {"authorization": "Bearer k1"}
        assert client.get_model_metadata("linear", headers=good).name == "linear"
        assert _infer(client, "linear", np.ones((1, 1)), "FP64", headers=good).as_numpy("output").shape == (1, 1)
    finally:
        client.close()
        proc.stop()


def _held(model_cache: Path, tmp_path: Path, *flags: str) -> tuple[ServerProcess, str, Path]:
    """A server whose model ``g`` holds a row starting with -1 until the file ``gate`` exists."""
    repo, gate = tmp_path / "repo", tmp_path / "gate"
    (repo / "g").mkdir(parents=True)
    (repo / "g" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "g" / "1", bias=0.0, source=GATED_PY, **{"gate.txt": str(gate)})
    proc, address = start(model_cache, "--models", "none", "--model-repository", str(repo), *flags)
    return proc, address, gate


def _held_request() -> object:
    request = service_pb2.ModelInferRequest(model_name="g")
    request.inputs.add(name="input", datatype="FP64", shape=[1, 3]).contents.fp64_contents.extend([-1.0, 0.0, 0.0])
    return request


def test_a_cancelled_rpc_drops_its_queued_rows(model_cache: Path) -> None:
    proc, address = start(model_cache, "--models", "linear", "--max-batch-size", "2", "--max-delay-ms", "60000")
    channel = grpc.insecure_channel(address)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="linear")
        request.inputs.add(name="input", datatype="FP64", shape=[1, 1]).contents.fp64_contents.append(1.0)
        future = stub.ModelInfer.future(request)  # waits in the window for a second row
        wait_until(lambda: proc.metrics().value("wsserve_inflight_requests") == 1, 30.0, what="the row queued")
        future.cancel()
        wait_until(lambda: proc.metrics().value("wsserve_inflight_requests") == 0, 30.0, what="the row dropped")
        assert _requests(proc, code="cancelled", model="linear", type="predict") == 1
        # the deadline of an RPC ends it too
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: proc.metrics().value("wsserve_inflight_requests") == 0, 30.0, what="the row dropped")
    finally:
        channel.close()
        proc.stop()


def _draining_with_a_held_rpc(model_cache: Path, tmp_path: Path, drain_timeout: str) -> tuple[Any, ...]:
    """A server computing a held ModelInfer row when SIGTERM starts its drain:
    ``(proc, gate, channel, stub, the running RPC's future)``."""
    proc, address, gate = _held(model_cache, tmp_path, "--drain-timeout", drain_timeout)
    channel = grpc.insecure_channel(address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    running = stub.ModelInfer.future(_held_request())
    wait_until(Path(str(gate) + ".started").exists, 30.0, what="the held row computing")
    proc.signal(signal.SIGTERM)
    return proc, gate, channel, stub, running


def test_drain_refuses_new_rpcs_and_finishes_the_running_one(model_cache: Path, tmp_path: Path) -> None:
    proc, gate, channel, stub, running = _draining_with_a_held_rpc(model_cache, tmp_path, "60")
    try:
        wait_until(lambda: not stub.ServerReady(service_pb2.ServerReadyRequest()).ready, 30.0,
                   what="ServerReady false")
        assert not stub.ModelReady(service_pb2.ModelReadyRequest(name="g")).ready
        request = service_pb2.ModelInferRequest(model_name="g")
        request.inputs.add(name="input", datatype="FP64", shape=[1, 3]).contents.fp64_contents.extend([1.0, 2.0, 3.0])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "server is draining; no new work is accepted"
        gate.touch()
        response = running.result(timeout=30)
        assert np.frombuffer(response.raw_output_contents[0], dtype="<f8").tolist() == [-1.0]
        assert proc.wait(30) == 0
    finally:
        gate.touch()
        channel.close()
        proc.stop()


def test_drain_deadline_ends_the_running_rpc_unavailable(model_cache: Path, tmp_path: Path) -> None:
    proc, gate, channel, stub, running = _draining_with_a_held_rpc(model_cache, tmp_path, "1")
    try:
        with pytest.raises(grpc.RpcError) as info:
            running.result(timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and info.value.details() == "drain deadline reached"
    finally:
        gate.touch()
        channel.close()
        proc.stop()


# --------------------------------------------------------------------------- configuration


def test_grpc_port_is_validated() -> None:
    from wsserve.config import ServerConfig

    with pytest.raises(ValueError, match="--grpc-port must be 0..65535"):
        ServerConfig(grpc_port=70000).validate()
    with pytest.raises(ValueError, match="--grpc-port 8765 is also --port"):
        ServerConfig(grpc_port=8765, port=8765).validate()
    # --workers shares the gRPC port between the workers as the main port (tests/test_workers.py);
    # the two ports must still differ
    assert ServerConfig(grpc_port=9000, workers=2).validate().grpc_port == 9000
    assert ServerConfig(grpc_port=0, port=0, workers=2).validate().workers == 2
    with pytest.raises(ValueError, match="--grpc-port 8765 is also --port"):
        ServerConfig(grpc_port=8765, port=8765, workers=2).validate()


def test_explain_answers_the_http_routes_attributions(served, client) -> None:
    x = np.random.default_rng(11).normal(size=(2, 32)).astype(np.float32)
    inp = tgrpc.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], parameters={"explain": True})
    assert [t.name for t in result.get_response().outputs] == ["output", "output_attributions"]
    params = result.get_response().parameters
    assert params["explain"].bool_param and params["explain_method"].string_param == "integrated-gradients"
    http = thttp.InferenceServerClient(f"127.0.0.1:{served[0].port}")
    try:
        hinp = thttp.InferInput("input", [2, 32], "FP32")
        hinp.set_data_from_numpy(x)
        expected = http.infer("mlp", [hinp], parameters={"explain": True}).as_numpy("output_attributions")
    finally:
        http.close()
    assert np.array_equal(result.as_numpy("output_attributions"), expected)
    err = _refused(_infer, client, "linear", np.ones((300, 1)), "FP64", parameters={"explain": True})
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "max_explain_rows" in err.message()


def test_a_message_over_max_message_bytes_is_refused(client) -> None:
    rows = (1 << 20) // 8 + 1  # one FP64 value a row: just over the 1 MiB default
    err = _refused(_infer, client, "linear", np.ones((rows, 1)), "FP64")
    assert err.status() == "StatusCode.RESOURCE_EXHAUSTED", err
    assert _infer(client, "linear", np.ones((1, 1)), "FP64").as_numpy("output").shape == (1, 1)


# --------------------------------------------------------------------------- Triton's perf_analyzer

_PERF_ANALYZER_DEFAULT = Path(__file__).resolve().parent.parent / ".cache" / "perf_analyzer" / "perf_analyzer"


def test_perf_analyzer_runs_over_grpc(served, client) -> None:
    """Triton's load generator over gRPC (``-i grpc``): the model's config and statistics through the
    RPCs, a bounded count of batch-4 ModelInfer requests on two concurrent streams of work."""
    binary = os.environ.get("WSSERVE_PERF_ANALYZER") or (
        str(_PERF_ANALYZER_DEFAULT) if _PERF_ANALYZER_DEFAULT.exists() else shutil.which("perf_analyzer"))
    if not binary:
        pytest.skip("perf_analyzer is not installed: bash scripts/install-perf-analyzer")
    before = client.get_inference_statistics("mlp").model_stats[0].inference_stats.success.count
    run = subprocess.run(
        [binary, "-m", "mlp", "-u", served[1], "-i", "grpc", "-b", "4", "--concurrency-range", "2",
         "--measurement-mode", "count_windows", "--measurement-request-count", "100", "--max-trials", "3",
         "--stability-percentage", "100000"],  # no timing criterion: 3 windows of >= 100 requests are enough
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = dict(re.findall(r"^\s+(Inference count|Successful request count): (\d+)$", run.stdout, re.M))
    requests = int(figures["Successful request count"])
    assert requests >= 100 and int(figures["Inference count"]) == 4 * requests
    after = client.get_inference_statistics("mlp").model_stats[0].inference_stats.success.count
    assert after - before >= requests


def test_perf_analyzer_streams_a_predictive_model_over_grpc(served, client) -> None:
    """``perf_analyzer --streaming -i grpc`` on ``mlp`` (a non-decoupled model): its requests go
    on ModelStreamInfer streams, each answered once; a bounded count of them completes."""
    binary = os.environ.get("WSSERVE_PERF_ANALYZER") or (
        str(_PERF_ANALYZER_DEFAULT) if _PERF_ANALYZER_DEFAULT.exists() else shutil.which("perf_analyzer"))
    if not binary:
        pytest.skip("perf_analyzer is not installed: bash scripts/install-perf-analyzer")
    before = client.get_inference_statistics("mlp").model_stats[0].inference_stats.success.count
    run = subprocess.run(
        [binary, "-m", "mlp", "-u", served[1], "-i", "grpc", "--streaming", "-b", "2", "--concurrency-range", "2",
         "--measurement-mode", "count_windows", "--measurement-request-count", "50", "--max-trials", "3",
         "--stability-percentage", "100000"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = dict(re.findall(r"^\s+(Inference count|Successful request count): (\d+)$", run.stdout, re.M))
    requests = int(figures["Successful request count"])
    assert requests >= 50 and int(figures["Inference count"]) == 2 * requests
    after = client.get_inference_statistics("mlp").model_stats[0].inference_stats.success.count
    assert after - before >= requests


def test_rate_limits_are_per_http2_connection(model_cache: Path) -> None:
    """``--rate-limit-per-s`` counts per HTTP/2 connection: a second RPC on the same channel is
    refused RESOURCE_EXHAUSTED, while another connection has its own budget (a channel of its own
    subchannel pool: grpc otherwise shares one connection between a process's channels)."""
    proc, address = start(model_cache, "--models", "linear", "--rate-limit-per-s", "0.001", "--rate-limit-burst", "1")
    clients = [tgrpc.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(2)]
    try:
        x = np.ones((1, 1))
        assert _infer(clients[0], "linear", x, "FP64").as_numpy("output").shape == (1, 1)
        err = _refused(_infer, clients[0], "linear", x, "FP64")
        assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert err.message() == "rate limit of 0.001 requests/s for this connection exceeded"
        assert _infer(clients[1], "linear", x, "FP64").as_numpy("output").shape == (1, 1)
        assert _requests(proc, code="rate_limited", model="linear", type="predict") == 1
    finally:
        for c in clients:
            c.close()
        proc.stop()


def test_status_codes_of_wsserve_errors() -> None:
    from wsserve.errors import Overloaded, ShuttingDown, UnknownModel
    from wsserve.oipgrpc.convert import status_of

    class NotReady(UnknownModel):  # as HttpApi raises for a model that exists but is not ready
        http_status = 503

    assert status_of(UnknownModel("x")) == grpc.StatusCode.NOT_FOUND
    assert status_of(NotReady("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_of(ShuttingDown("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_of(Overloaded("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED


# --------------------------------------------------------------------------- ModelStreamInfer (generation)


def _generate(client, results: queue.Queue, rid: str, stream: bool, prompt: str = "The ", model: str = "charlm",
              exclude: bool | None = None, **params) -> None:
    """A generation on the client's stream: ``text_input``, ``stream`` and (``exclude`` not None)
    ``exclude_input_in_output`` inputs, as the vLLM backend reads them; ``params`` request parameters."""
    text = tgrpc.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs = [text]
    for name, value in (("stream", stream), ("exclude_input_in_output", exclude)):
        if value is not None:
            flag = tgrpc.InferInput(name, [1], "BOOL")
            flag.set_data_from_numpy(np.array([value]))
            inputs.append(flag)
    client.async_stream_infer(model, inputs, request_id=rid, parameters=params)


def _answers(results: queue.Queue) -> list[tuple[str, str, bool] | str]:
    """Responses until a final one or an error: ``(id, text, final)`` each, an error's message."""
    out: list[tuple[str, str, bool] | str] = []
    while True:
        result, error = results.get(timeout=60)
        if error is not None:
            out.append(error.message())
            return out
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        out.append((response.id, result.as_numpy("text_output")[0].decode(), final))
        if final:
            return out


def test_stream_infer_generates_as_the_vllm_backend_streams(served, client) -> None:
    """One response per token (``text_output``), the last flagged ``triton_final_response``; the
    text is the HTTP generate route's for the same request; ``stream`` false: one response."""
    with urllib.request.urlopen(f"{served[0].http}/v2/models/charlm/generate", data=json.dumps(
            {"text_input": "The ", "max_tokens": 12, "temperature": 0}).encode()) as answer:
        expected = json.loads(answer.read())["text_output"]  # the prompt, then the generated text
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        _generate(client, results, "s", True, max_tokens=12, temperature=0)
        tokens = _answers(results)
        assert len(tokens) == 12 and [t[2] for t in tokens] == [False] * 11 + [True]
        assert {t[0] for t in tokens} == {"s"} and "The " + "".join(t[1] for t in tokens) == expected
        _generate(client, results, "whole", False, max_tokens=12, temperature=0)
        assert _answers(results) == [("whole", expected, True)]
        # a request's error is a response on the stream, which goes on
        _generate(client, results, "bad", True, max_tokens=12, temperature="hot")
        assert _answers(results) == ["'temperature' must be a number in [0, 100], got 'hot'"]
        # a predictive model's request is answered as ModelInfer answers it: no text_input there
        _generate(client, results, "mlp", True, model="mlp")
        assert _answers(results) == ["unknown input 'text_input'; the model takes: input"]
        _generate(client, results, "again", False, max_tokens=12, temperature=0)
        assert _answers(results) == [("again", expected, True)]
    finally:
        client.stop_stream()
    err = _refused(_infer, client, "charlm", np.ones((1, 1)), "FP64")
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "generates text" in err.message()


def test_stream_infer_prepends_the_prompt_unless_excluded_as_the_vllm_backend(served, client) -> None:
    """``stream`` false: the one response's ``text_output`` is the prompt then the generated text,
    unless the ``exclude_input_in_output`` input (or parameter) is true; streamed, the responses
    hold the generated text only, and ``exclude_input_in_output`` false is refused (an error
    response naming it; the stream goes on).  A value that is not a boolean is refused by name."""
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    refused = ("'exclude_input_in_output' false (the prompt before the generated text) is not allowed when "
               "streaming: leave it out or set it true (as Triton's vLLM backend)")
    try:
        _generate(client, results, "s", True, max_tokens=8, temperature=0)
        generated = "".join(t[1] for t in _answers(results))
        assert len(generated) == 8
        _generate(client, results, "w", False, max_tokens=8, temperature=0)
        assert _answers(results) == [("w", "The " + generated, True)]  # absent, not streamed: prepended
        _generate(client, results, "f", False, exclude=False, max_tokens=8, temperature=0)
        assert _answers(results) == [("f", "The " + generated, True)]
        _generate(client, results, "t", False, exclude=True, max_tokens=8, temperature=0)
        assert _answers(results) == [("t", generated, True)]
        _generate(client, results, "p", False, max_tokens=8, temperature=0, exclude_input_in_output=True)
        assert _answers(results) == [("p", generated, True)]
        _generate(client, results, "st", True, exclude=True, max_tokens=8, temperature=0)
        assert "".join(t[1] for t in _answers(results)) == generated
        _generate(client, results, "sf", True, exclude=False, max_tokens=8)
        assert _answers(results) == [refused]
        _generate(client, results, "sp", True, max_tokens=8, exclude_input_in_output=False)
        assert _answers(results) == [refused]
        _generate(client, results, "n", False, max_tokens=8, exclude_input_in_output=1)
        assert _answers(results) == ["'exclude_input_in_output' must be a boolean (true or false), got 1"]
        _generate(client, results, "again", False, max_tokens=8, temperature=0)
        assert _answers(results) == [("again", "The " + generated, True)]
    finally:
        client.stop_stream()


def test_stream_infer_runs_requests_concurrently_and_counts_tokens(served, client) -> None:
    proc = served[0]
    ok = _requests(proc, code="ok", model="charlm", type="generate")
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for rid in ("x", "y", "z"):
            _generate(client, results, rid, True, max_tokens=20, temperature=0)
        finals = set()
        while len(finals) < 3:
            result, error = results.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                finals.add(response.id)
    finally:
        client.stop_stream()
    assert finals == {"x", "y", "z"}
    assert _requests(proc, code="ok", model="charlm", type="generate") == ok + 3


def _stream_predict(client, model: str, x: np.ndarray, datatype: str, rid: str, **kwargs: Any) -> None:
    """A predictive model's request on ``client``'s stream: ``x`` as its ``input``."""
    inp = tgrpc.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    client.async_stream_infer(model, [inp], request_id=rid, **kwargs)


def test_stream_infer_answers_predictive_models_as_model_infer(served, client) -> None:
    """Triton answers any model on ModelStreamInfer: a non-decoupled model's request gets one
    response, ModelInfer's answer.  linear and mlp requests interleaved with a charlm generation on
    one stream: each answered once, ``id`` echoed, the values ModelInfer gives (outputs filtering,
    priority and timeout read as ModelInfer reads them); a bad tensor is an ``error_message``
    and the stream goes on; counted as ModelInfer's requests."""
    proc = served[0]
    ok = _requests(proc, code="ok", model="linear", type="predict")
    bad = _requests(proc, code="invalid_input", model="linear", type="predict")
    rng = np.random.default_rng(11)
    requests = {"l1": ("linear", rng.normal(size=(3, 1)), "FP64", {}),
                "m1": ("mlp", rng.normal(size=(2, 32)).astype(np.float32), "FP32", {}),
                "l2": ("linear", rng.normal(size=(1, 1)), "FP64", {"priority": 1, "timeout": 10_000_000}),
                "m2": ("mlp", rng.normal(size=(5, 32)).astype(np.float32), "FP32",
                       {"outputs": [tgrpc.InferRequestedOutput("output")]})}
    expected = {rid: _infer(client, model, x, datatype).as_numpy("output")
                for rid, (model, x, datatype, _) in requests.items()}
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for rid in ("l1", "m1"):
            model, x, datatype, kwargs = requests[rid]
            _stream_predict(client, model, x, datatype, rid, **kwargs)
        _generate(client, results, "g", True, max_tokens=8, temperature=0)
        for rid in ("l2", "m2"):
            model, x, datatype, kwargs = requests[rid]
            _stream_predict(client, model, x, datatype, rid, **kwargs)
        _stream_predict(client, "linear", np.zeros((2, 3)), "FP64", "bad")
        _stream_predict(client, "linear", np.ones((1, 1)), "FP64", "after")
        answered: list[str] = []
        errors: list[str] = []
        tokens = 0
        while len(answered) < 5 or not errors or tokens < 8:
            result, error = results.get(timeout=60)
            if error is not None:
                errors.append(error.message())
                continue
            response = result.get_response()
            if response.id == "g":
                tokens += 1
                continue
            assert response.parameters["triton_final_response"].bool_param  # as Triton marks each
            answered.append(response.id)
            model, _, _, _ = requests.get(response.id, ("linear", None, None, None))
            assert response.model_name == model and response.model_version == "1"
            assert [(t.name, t.datatype) for t in response.outputs] == [("output", "FP64")]
            if response.id in expected:
                assert np.array_equal(result.as_numpy("output"), expected[response.id]), response.id
            else:
                assert result.as_numpy("output").shape == (1, 1)
    finally:
        client.stop_stream()
    assert sorted(answered) == ["after", "l1", "l2", "m1", "m2"]  # each once
    assert answered == ["l1", "m1", "l2", "m2", "after"]  # in the requests' order
    assert errors == ["input 'input' has shape [2, 3]; the model takes [-1, 1]"]
    assert results.empty()
    assert _requests(proc, code="ok", model="linear", type="predict") == ok + 5  # 3 streamed, 2 ModelInfer
    assert _requests(proc, code="invalid_input", model="linear", type="predict") == bad + 1


def _raw_request(model: str, rid: str, rows: int, width: int) -> Any:
    """A ModelInferRequest of zeros ``[rows, width]`` as ``input`` (FP32 for mlp, else FP64), raw."""
    message = service_pb2.ModelInferRequest(model_name=model, id=rid)
    message.inputs.add(name="input", datatype="FP32" if model == "mlp" else "FP64", shape=[rows, width])
    message.raw_input_contents.append(b"\0" * (rows * width * (4 if model == "mlp" else 8)))
    return message


def test_stream_infer_error_names_its_request(stub) -> None:
    """A predictive model's request refused on the stream is an ``error_message`` response
    carrying the request's ``id`` and model (as Triton's); an unknown model's too; the stream goes
    on, its next request answered with ModelInfer's raw outputs."""
    sent = [_raw_request("linear", "wrong", 2, 3), _raw_request("nope", "unknown", 1, 1),
            _raw_request("mlp", "last", 3, 32)]
    answers = list(stub.ModelStreamInfer(iter(sent), timeout=60))
    assert [a.infer_response.id for a in answers] == ["wrong", "unknown", "last"]
    assert answers[0].error_message == "input 'input' has shape [2, 3]; the model takes [-1, 1]"
    assert answers[0].infer_response.model_name == "linear" and not answers[0].infer_response.outputs
    assert answers[1].error_message.startswith("no model named 'nope'")
    last = answers[2]
    assert not last.error_message and last.infer_response.parameters["triton_final_response"].bool_param
    assert list(last.infer_response.outputs[0].shape) == [3, 10]
    assert last.infer_response.raw_output_contents == stub.ModelInfer(_raw_request("mlp", "x", 3, 32)).raw_output_contents


def test_stream_infer_answers_predictive_requests_in_their_order(model_cache: Path, tmp_path: Path) -> None:
    """Predictive responses are written in the requests' order, as Triton writes a non-decoupled
    model's: a request refused at once (its refusal counted) waits for the one before it, still
    computing (held at its gate), and is answered after it."""
    proc, address, gate = _held(model_cache, tmp_path)
    sent: queue.Queue = queue.Queue()
    channel = grpc.insecure_channel(address)
    try:
        answers = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(sent.get, None), timeout=60)
        held = _held_request()
        held.id = "held"
        sent.put(held)
        wait_until(Path(str(gate) + ".started").exists, 30.0, what="the held row computing")
        sent.put(_raw_request("g", "wrong", 1, 2))
        wait_until(lambda: _requests(proc, code="invalid_input", model="g", type="predict") == 1, 30.0,
                   what="the second request refused")
        gate.touch()
        sent.put(None)
        got = [(a.infer_response.id, a.error_message) for a in answers]
        assert got == [("held", ""), ("wrong", "input 'input' has shape [1, 2]; the model takes [-1, 3]")]
    finally:
        gate.touch()
        sent.put(None)
        channel.close()
        proc.stop()


def test_stream_infer_requests_are_batched_with_each_other(model_cache: Path) -> None:
    """A stream's predictive requests run at once, through the model's queue: four one-row
    requests on one stream, a batch of at most 4 rows and a long window: one execution, each
    request answered its own row's outputs."""
    proc, address = start(model_cache, "--models", "mlp", "--max-batch-size", "4", "--max-delay-ms", "60000")
    client = tgrpc.InferenceServerClient(address)
    x = np.random.default_rng(9).normal(size=(4, 32)).astype(np.float32)
    results: queue.Queue = queue.Queue()
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for i in range(4):
            _stream_predict(client, "mlp", x[i : i + 1], "FP32", str(i))
        rows: dict[str, np.ndarray] = {}
        for _ in range(4):
            result, error = results.get(timeout=60)
            assert error is None, error
            rows[result.get_response().id] = result.as_numpy("output")
        client.stop_stream()
        stats = client.get_inference_statistics("mlp").model_stats[0]
        assert stats.inference_count == 4 and stats.execution_count == 1
        alone = _infer(client, "mlp", x, "FP32").as_numpy("output")
        assert np.allclose(np.concatenate([rows[str(i)] for i in range(4)]), alone)
    finally:
        client.close()
        proc.stop()


def _long_stream_request(rid: str) -> Any:
    """A streamed ModelStreamInfer request on charlm ("The ", 100,000 tokens), raw contents."""
    request = service_pb2.ModelInferRequest(model_name="charlm", id=rid)
    for name, datatype, raw in (("text_input", "BYTES", (4).to_bytes(4, "little") + b"The "),
                                ("stream", "BOOL", b"\x01")):
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.append(1)
        request.raw_input_contents.append(raw)
    request.parameters["max_tokens"].int64_param = 100_000
    return request


def unread_stream_answers(model_cache: Path, request: Any) -> list[Any]:
    """``request`` (a long streamed generation on charlm) on a ModelStreamInfer stream whose client
    reads nothing until the server (``--max-write-buffer-bytes 4096``) has refused it as a slow
    consumer; then every response the stream holds, in order.  Asserts nothing is left in flight."""
    import threading

    proc, address = start(model_cache, "--models", "charlm", "--max-write-buffer-bytes", "4096")
    done = threading.Event()

    def requests():
        yield request
        done.wait(120)  # the stream stays open, unread, until the test has seen the refusal

    channel = grpc.insecure_channel(address)
    try:
        responses = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests())
        wait_until(lambda: _requests(proc, code="overloaded", model="charlm", type="generate") == 1, 120,
                   what="the unread generation refused")
        done.set()
        answers = list(responses)
        wait_until(lambda: proc.metrics().get("wsserve_inflight_requests") == 0, 30, what="nothing in flight")
        return answers
    finally:
        done.set()
        channel.close()
        proc.stop()


def test_a_stream_its_client_does_not_read_is_bounded(model_cache: Path) -> None:
    """A client that stops reading its stream (grpc's flow control then blocks the server's
    writes) holds at most ``--max-write-buffer-bytes`` of tokens: past it the generation fails
    with ``overloaded`` (named in an ``error_message`` after the tokens it had) and is cancelled."""
    answers = unread_stream_answers(model_cache, _long_stream_request("slow"))
    assert answers[-1].error_message.startswith("slow consumer: this stream's client left")
    assert "max_write_buffer_bytes=4096" in answers[-1].error_message
    tokens = answers[:-1]
    assert tokens and all(not a.error_message for a in tokens) and len(tokens) < 100_000


def test_tls_as_the_main_port(model_cache: Path, tmp_path: Path) -> None:
    """With ``--certfile``/``--keyfile`` the gRPC port speaks TLS with the same certificate."""
    from tests.test_hardening import make_self_signed

    cert, key = make_self_signed(tmp_path)
    proc, address = start(model_cache, "--models", "linear", "--certfile", str(cert), "--keyfile", str(key))
    try:
        client = tgrpc.InferenceServerClient(address, ssl=True, root_certificates=str(cert))
        assert _infer(client, "linear", np.ones((2, 1)), "FP64").as_numpy("output").shape == (2, 1)
        client.close()
        plain = tgrpc.InferenceServerClient(address)
        assert _refused(plain.is_server_live).status() == "StatusCode.UNAVAILABLE"
        plain.close()
    finally:
        proc.stop()


def test_drain_finishes_running_generations_and_refuses_new_ones(model_cache: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "slowgen").mkdir(parents=True)
    (repo / "slowgen" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(repo / "slowgen" / "1", BIGRAM_PY, **{"seed.txt": "3", "delay.txt": "0.002"})  # 2 ms a step
    proc, address = start(model_cache, "--models", "none", "--model-repository", str(repo), "--drain-timeout", "60")
    client = tgrpc.InferenceServerClient(address)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        _generate(client, results, "long", True, model="slowgen", max_tokens=2000)
        first, error = results.get(timeout=60)  # the generation runs
        assert error is None and first.get_response().id == "long"
        proc.signal(signal.SIGTERM)
        wait_until(lambda: not client.is_server_ready(), 30.0, what="ServerReady false")
        with pytest.raises(InferenceServerException) as refused:  # an admin operation is new work too
            client.unload_model("slowgen")
        assert (refused.value.status(), refused.value.message()) == (
            "StatusCode.UNAVAILABLE", "server is draining; no new work is accepted")
        _generate(client, results, "late", True, model="slowgen", max_tokens=5)
        long_tokens, long_final, late_errors = 1, False, []
        while not (long_final and late_errors):  # the running generation ends; the late one is refused
            result, error = results.get(timeout=60)
            if error is not None:
                late_errors.append(error.message())
                continue
            assert result.get_response().id == "long"
            long_tokens += 1
            long_final = result.get_response().parameters["triton_final_response"].bool_param
        assert late_errors == ["server is draining; no new work is accepted"]
        assert long_tokens == 2000  # every token, the last one flagged final
    finally:
        client.stop_stream()
        client.close()
    assert proc.wait(30) == 0


class _StandInContext:
    """grpc's servicer context as far as ModelStreamInfer reads it (its one boundary): one peer (one
    connection), no metadata, no deadline; ``write`` is the given coroutine function."""

    def __init__(self, write: Any) -> None:
        self._write = write

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple:
        return ()

    def time_remaining(self) -> None:
        return None

    async def write(self, response: Any) -> None:
        await self._write(response)


async def _never_read(response: Any) -> None:
    await asyncio.Event().wait()  # the client never reads


async def _rpc_gone(response: Any) -> None:
    raise RuntimeError("the RPC is gone")


async def test_a_stream_sending_without_reading_is_read_no_further_than_max_inflight() -> None:
    """ModelStreamInfer handles at most ``max_inflight`` of a stream's requests at once (a refused
    one until its error is written): with the client reading nothing (the context's writes never
    complete: grpc's flow control), the server stops reading the stream there instead of holding a
    task per request.  The context is a stand-in for grpc's (its one boundary)."""
    import wsserve
    from wsserve.oipgrpc.service import GrpcFrontend

    double = wsserve.FunctionModel(lambda batch: 2 * batch, input_shape=(1,), output_shape=(1,))
    server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), max_inflight=4), models={"double": double})
    frontend = GrpcFrontend(server.api, clock=lambda: 0.0, on_idle=lambda: None)
    consumed = 0

    async def requests():
        nonlocal consumed
        for i in range(1000):
            consumed += 1
            yield service_pb2.ModelInferRequest(model_name="nope", id=str(i))

    task = asyncio.ensure_future(frontend.ModelStreamInfer(requests(), _StandInContext(_never_read)))
    for _ in range(200):  # let it run as far as it would
        await asyncio.sleep(0)
    assert not task.done() and consumed <= 4 + 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_connections_streams_unread_hold_at_most_max_write_buffer_bytes() -> None:
    """The predictive requests a client sends on the streams of one HTTP/2 connection without
    reading their answers hold at most about ``max_write_buffer_bytes`` (each request's message
    until its answer is written, and that answer): past it no stream of the connection is read
    further. Before, each stream read ``max_inflight`` requests, so a connection's 256 streams held
    65,536 requests and their answers (32 streams of 32 KB requests held 480 MB of a server on
    loopback).  The context is a stand-in for grpc's (its one boundary), as above."""
    import wsserve
    from wsserve.oipgrpc.service import GrpcFrontend

    double = wsserve.FunctionModel(lambda batch: 2 * batch, input_shape=(1,), output_shape=(1,))
    server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), max_inflight=64,
                                                 max_write_buffer_bytes=64 << 10), models={"double": double})
    await server.start()
    frontend = GrpcFrontend(server.api, clock=lambda: 0.0, on_idle=lambda: None)
    consumed = [0, 0]
    rows = 1024  # 8 KiB of float64 values a request

    def request(i: int) -> Any:
        r = service_pb2.ModelInferRequest(model_name="double", id=str(i))
        r.inputs.add(name="input", datatype="FP64", shape=[rows, 1])
        r.raw_input_contents.append(np.ones(rows).tobytes())
        return r

    async def requests(stream: int):
        for i in range(100):
            consumed[stream] += 1
            yield request(i)

    tasks = [asyncio.ensure_future(frontend.ModelStreamInfer(requests(i), _StandInContext(_never_read))) for i in range(2)]  # one connection
    for _ in range(500):  # let them run as far as they would
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)
    held = sum(consumed) * rows * 8
    assert held <= (64 << 10) + 2 * rows * 8, consumed  # the bound, and the one request each stream read past it
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task
    await server.drain(timeout_s=5)
    await server.close()



async def test_a_request_waiting_for_a_slot_on_any_stream_lets_every_stream_of_the_connection_read() -> None:
    """The connection's bound (above) stops no stream while a request of any of its streams waits
    for its sequence to be given a slot: the END freeing that slot may come on another stream, which
    the bound would keep unread (each stream alone already exempted its own)."""
    from wsserve.oipgrpc.service import _Backlog, _Held, _StreamFlow

    backlog = _Backlog()
    first, second = _StreamFlow(1000, backlog), _StreamFlow(1000, backlog)
    held = _Held(backlog, 5000)
    assert backlog.over_limit(4096)
    backlog.drained.clear()
    first.add(1)  # a request of the first stream waits for a slot
    assert not backlog.over_limit(4096) and backlog.drained.is_set()  # the second's read goes on
    assert second.waiting == 0 and backlog.waiting == 1
    first.add(-1)  # given its slot
    assert backlog.over_limit(4096)
    held.release()
    assert not backlog.over_limit(4096) and backlog.bytes == 0


async def test_a_stream_whose_write_fails_ends_with_that_error_reading_no_further() -> None:
    """A stream request whose answer cannot be written (grpc refuses the write: the client's RPC is
    gone) ends the stream with that error, as soon as the read loop sees it, also while it waits
    for room (its bound): its exception is retrieved, not left to asyncio's "Task exception was
    never retrieved" error log once per request of a cancelled stream, and no further request is
    read for a stream that is gone.  The context is a stand-in for grpc's (its one boundary)."""
    import wsserve
    from wsserve.oipgrpc.service import GrpcFrontend

    double = wsserve.FunctionModel(lambda batch: 2 * batch, input_shape=(1,), output_shape=(1,))
    server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), max_inflight=2), models={"double": double})
    frontend = GrpcFrontend(server.api, clock=lambda: 0.0, on_idle=lambda: None)
    consumed = 0

    async def requests():
        nonlocal consumed
        for i in range(100):
            consumed += 1
            yield service_pb2.ModelInferRequest(model_name="nope", id=str(i))

    with pytest.raises(RuntimeError, match="the RPC is gone"):
        await frontend.ModelStreamInfer(requests(), _StandInContext(_rpc_gone))
    assert consumed <= 2 + 2


def test_a_generation_that_fails_sends_every_token_before_its_error(model_cache: Path, tmp_path: Path) -> None:
    """A generation that fails after some tokens (here its model's step after 'e') answers each
    token it generated, then the error: none is held back by the failure."""
    repo = tmp_path / "repo"
    (repo / "abc").mkdir(parents=True)
    (repo / "abc" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(repo / "abc" / "1", FAILS_AFTER_E_PY)
    proc, address = start(model_cache, "--models", "none", "--model-repository", str(repo))
    client = tgrpc.InferenceServerClient(address)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        _generate(client, results, "e", True, prompt="a", model="abc", max_tokens=10)
        answers = _answers(results)
    finally:
        client.stop_stream()
        client.close()
        proc.stop()
    assert answers == [("e", "b", False), ("e", "c", False), ("e", "d", False), ("e", "e", False),
                       "generation step failed: RuntimeError: no letter after e"]


def _stream_request(rid: str, *inputs: tuple[str, str, bytes], **params: int) -> object:
    """A ModelStreamInferRequest to ``charlm``: each input ``(name, datatype, raw bytes)``, shape ``[1]``."""
    request = service_pb2.ModelInferRequest(model_name="charlm", id=rid)
    for name, datatype, raw in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=[1])
        request.raw_input_contents.append(raw)
    for key, value in params.items():
        request.parameters[key].int64_param = value
    return request


def _raw_bytes(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(4, "little") + data


def test_sampling_parameters_set_sampling_fields_only(stub) -> None:
    """The ``sampling_parameters`` JSON object holds sampling fields: not the request's ``id`` or
    ``parameters`` (which it would replace), and it is one input, not several merged."""
    prompt = ("text_input", "BYTES", _raw_bytes("The "))
    cases = [
        (('{"id": "other", "max_tokens": 2}',), "'sampling_parameters' may not hold 'id'"),
        (('{"parameters": {"max_tokens": 2}}',), "'sampling_parameters' may not hold 'parameters'"),
        (('{"max_tokens": 2}', '{"temperature": 0}'), "input 'sampling_parameters' is given twice"),
    ]
    for objects, message in cases:
        sampling = [("sampling_parameters", "BYTES", _raw_bytes(text)) for text in objects]
        answers = list(stub.ModelStreamInfer(iter([_stream_request("mine", prompt, *sampling)])))
        assert [(a.infer_response.id, a.error_message) for a in answers] == [("mine", message)]
    answers = list(stub.ModelStreamInfer(iter([_stream_request(
        "mine", prompt, ("sampling_parameters", "BYTES", _raw_bytes('{"max_tokens": 2, "temperature": 0}')))])))
    assert [a.infer_response.id for a in answers] == ["mine"] and not answers[0].error_message


def _infer_refusal(stub, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    return info.value.details()


def test_counts_are_checked_before_anything_is_read_from_the_message(stub) -> None:
    """A request's counts (inputs, raw entries, requested outputs, dimensions, elements) are refused
    by name before the values they count are copied or the rest of the request is looked at: many
    raw entries with one input are refused for their count, not for a later field (the id here,
    which was checked first while the outputs and parameters were copied)."""
    request = service_pb2.ModelInferRequest(model_name="linear", id="x" * 200)
    request.inputs.add(name="input", datatype="FP64", shape=[1, 1])
    request.raw_input_contents.extend([b""] * 10_000)
    assert _infer_refusal(stub, request) == (
        "raw_input_contents holds 10000 tensors and 'inputs' 1: send every input's values raw (one entry per "
        "input, in order) or every input's in its 'contents'")
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.parameters["priority"].int64_param = -1
    request.inputs.add(name="input", datatype="FP64", shape=[1, 1])
    request.raw_input_contents.append(b"\0" * 8)
    for _ in range(65):
        request.outputs.add(name="output")
    assert _infer_refusal(stub, request) == "'outputs' must be an array of at most 64 requested outputs"
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="input", datatype="FP64", shape=[1] * 100_000)
    assert _infer_refusal(stub, request) == "input 'input': 'shape' must be an array of 1 to 8 non-negative integers"
    # ModelStreamInfer: at most 64 inputs, each of one element, counted without copying the values
    prompt = ("text_input", "BYTES", _raw_bytes("The "))
    cases = [
        (_stream_request("n", *[(f"x{i}", "BOOL", b"\1") for i in range(65)]), "'inputs' holds 65 tensors; at most 64"),
        (_stream_request("b", ("text_input", "BYTES", _raw_bytes("The ") + _raw_bytes("more"))),
         "input 'text_input' must hold one element; its raw BYTES data goes on past the first"),
        (_stream_request("e", ("text_input", "BYTES", b"")), "input 'text_input' must hold one element, got 0"),
        (_stream_request("r", prompt, ("stream", "BOOL", b"\1" * 100_000)),
         "input 'stream' must hold one element, got 100000"),
    ]
    typed = service_pb2.ModelInferRequest(model_name="charlm", id="t")
    typed.inputs.add(name="text_input", datatype="BYTES", shape=[3]).contents.bytes_contents.extend([b"a", b"b", b"c"])
    cases.append((typed, "input 'text_input' must hold one element, got 3"))
    for request, message in cases:
        answers = list(stub.ModelStreamInfer(iter([request])))
        assert [(a.infer_response.id, a.error_message) for a in answers] == [(request.id, message)]
    # and a well-formed request on the same server is answered
    answers = list(stub.ModelStreamInfer(iter([_stream_request("ok", prompt, max_tokens=2)])))
    assert [a.infer_response.id for a in answers] == ["ok"] and not answers[0].error_message


def test_model_infer_of_a_generative_model_points_to_model_stream_infer(client) -> None:
    err = _refused(_infer, client, "charlm", np.ones((1, 1)), "FP64")
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.message() == ("model 'charlm' generates text: use ModelStreamInfer (text_input, stream: as Triton's "
                             "vLLM backend), or over HTTP POST /v1/completions or Triton's generate extension")


def test_stream_flag_as_input_or_parameter(stub) -> None:
    """``stream`` may be the BOOL input (as the vLLM backend reads it) or a request parameter, as
    every generation field; a value that is not a boolean is refused naming gRPC's types."""
    prompt = ("text_input", "BYTES", _raw_bytes("The "))
    request = _stream_request("p", prompt, max_tokens=3)
    request.parameters["stream"].bool_param = True
    answers = list(stub.ModelStreamInfer(iter([request])))
    assert [a.infer_response.parameters["triton_final_response"].bool_param for a in answers] == [False, False, True]
    for request in (_stream_request("b", prompt, ("stream", "BYTES", _raw_bytes("true"))),
                    _stream_request("s", prompt, stream=1)):
        answers = list(stub.ModelStreamInfer(iter([request])))
        assert [a.error_message for a in answers] == [
            "'stream' must be a boolean (a BOOL input or a bool_param parameter), got " +
            ("'true'" if request.id == "b" else "1")]


def test_model_ready_of_an_unknown_model_or_version_is_false_as_tritons(client) -> None:
    """``is_model_ready`` answers False (not an error) for a model or version the server does not
    have, as Triton's ModelReady does: a client's readiness poll sees "not ready"."""
    assert client.is_model_ready("nope") is False
    assert client.is_model_ready("linear", model_version="9") is False
    assert client.is_model_ready("linear") is True


def test_rpcs_at_once_on_one_connection_are_bounded_by_max_inflight(model_cache: Path) -> None:
    """HTTP/2's ``max_concurrent_streams`` is ``--max-inflight``: with 2, a third stream on the same
    channel waits until one of the first two ends (its generation starts only then)."""
    import threading

    proc, address = start(model_cache, "--models", "charlm", "--max-inflight", "2")
    release = threading.Event()

    def stream_of(rid: str):
        yield _long_stream_request(rid)
        release.wait(120)

    channel = grpc.insecure_channel(address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        calls = [stub.ModelStreamInfer(stream_of(rid)) for rid in ("a", "b")]
        running = lambda: proc.metrics().get("wsserve_generation_running", model="charlm")  # noqa: E731
        wait_until(lambda: running() == 2, 60, what="two generations running")
        calls.append(stub.ModelStreamInfer(stream_of("c")))
        first: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: first.setdefault("c", next(calls[2])), daemon=True)
        reader.start()
        reader.join(1.0)  # (no answer is the expected outcome: it is given a moment to show otherwise)
        assert "c" not in first, "a third RPC ran beside two on one connection"
        calls[0].cancel()  # one stream ends: the third one's RPC starts
        reader.join(60)
        assert first["c"].infer_response.id == "c"
    finally:
        release.set()
        for call in calls:
            call.cancel()
        channel.close()
        proc.stop()


def test_max_connections_bounds_grpc_connections(model_cache: Path) -> None:
    # gRPC connections were not bounded at all (grpc accepts them itself): --max-connections now
    # bounds them too, in a count of their own.
    proc, address = start(model_cache, "--models", "linear", "--max-connections", "2")
    channels: list[Any] = []
    try:
        def live(channel: Any) -> bool:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            return stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live

        for _ in range(2):  # each its own HTTP/2 connection
            channels.append(grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]))
            assert live(channels[-1])
        extra = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        with pytest.raises(grpc.RpcError) as info:
            live(extra)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        extra.close()
        # The WebSocket and HTTP side keeps its own count: gRPC's connections take none of its slots.
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/predict", data=b'{"model":"linear","inputs":[[1]]}',
                                    timeout=10) as r:
            assert r.status == 200
        channels.pop(0).close()  # a slot frees once a connection closes

        def a_new_connection_is_taken() -> bool:
            ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            try:
                return live(ch)
            except grpc.RpcError:
                return False
            finally:
                ch.close()

        wait_until(a_new_connection_is_taken, 30.0, what="a gRPC connection accepted after one closed")
    finally:
        for ch in channels:
            ch.close()
        proc.stop()


def test_idle_and_handshake_timeouts_close_grpc_connections(model_cache: Path) -> None:
    # --idle-timeout-s and --handshake-timeout-s held for WebSocket and HTTP connections only: a gRPC
    # connection could stay idle for ever and a socket that never completed its HTTP/2 handshake
    # was kept for grpc's default of 120 s.
    import socket

    proc, address = start(model_cache, "--models", "linear", "--idle-timeout-s", "0.3",
                          "--handshake-timeout-s", "0.3")
    try:
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        states: list[Any] = []
        channel.subscribe(states.append)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
        wait_until(lambda: grpc.ChannelConnectivity.READY in states, 30.0, what="the channel connected")
        # No RPC for --idle-timeout-s: the server closes the connection (GOAWAY), the channel goes idle.
        wait_until(lambda: states[-1] == grpc.ChannelConnectivity.IDLE, 30.0, what="the idle connection closed")
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live  # a new call reconnects
        channel.close()
        # A socket that never sends the HTTP/2 preface is closed after --handshake-timeout-s.
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            while raw.recv(65536):  # the server's settings, if any, then the close
                pass
    finally:
        proc.stop()


# --------------------------------------------------------------------------- grpc.health.v1


def test_grpc_health_serves_once_ready_without_a_key(model_cache: Path) -> None:
    """grpc's standard health service (what Kubernetes' ``grpc`` probes call): the server
    (``""``) and the inference service are SERVING, with API keys on and no key sent; another
    name is NOT_FOUND, as grpc's own servicer answers it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc, address = start(model_cache, "--models", "linear", "--api-key", "k1")
    channel = grpc.insecure_channel(address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="linear"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        proc.stop()


def test_grpc_health_watch_sees_the_drain(model_cache: Path, tmp_path: Path) -> None:
    """A ``Watch`` stream gets SERVING, then NOT_SERVING as soon as the drain starts (while an RPC
    still holds the drain open), and ``Check`` answers NOT_SERVING from then on."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc, address, gate = _held(model_cache, tmp_path, "--drain-timeout", "60")
    channel = grpc.insecure_channel(address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        running = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(_held_request())
        wait_until(Path(str(gate) + ".started").exists, 30.0, what="the held row computing")
        proc.signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING, service
        watch.cancel()
        gate.touch()
        assert np.frombuffer(running.result(timeout=30).raw_output_contents[0], dtype="<f8").tolist() == [-1.0]
        assert proc.wait(30) == 0
    finally:
        gate.touch()
        channel.close()
        proc.stop()


def test_grpc_health_watch_ends_when_the_server_stops(model_cache: Path) -> None:
    """An open ``Watch`` stream (grpc's client-side health checking keeps one per connection) is
    told NOT_SERVING at the drain, then ended by the server as it stops, with status OK: it does
    not hold the stop for grpc's grace period and end cancelled."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc, address = start(model_cache, "--models", "linear")
    channel = grpc.insecure_channel(address)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        proc.signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert list(watch) == [] and watch.code() == grpc.StatusCode.OK
        assert proc.wait(30) == 0
    finally:
        channel.close()
        proc.stop()
