"""``--otlp-traces-endpoint``: OpenTelemetry spans of real requests, received by a real OTLP/HTTP collector.

The collector is this test's boundary: a small ``http.server`` on 127.0.0.1 that takes
``POST /v1/traces`` and decodes each body with opentelemetry-proto's ``ExportTraceServiceRequest``
(the server's exporter is the SDK's own).  A real server process with the flag, real clients:
urllib and the openai SDK over HTTP, tritonclient.grpc, a websockets client.  The export
schedule is shortened with the SDK's ``OTEL_BSP_SCHEDULE_DELAY``; waits are predicate waits.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from websockets.sync.client import connect  # noqa: E402

grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

from tests.support import ServerProcess, wait_until  # noqa: E402
from wsserve.cli import main  # noqa: E402
from wsserve.tracecontext import parse_traceparent, parse_tracestate  # noqa: E402

#: A short export schedule (the SDK's default is 5 s), so spans arrive soon after their request.
OTEL_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "wsserve-under-test"}


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span of every ``POST /v1/traces``, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.posts = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    outer.posts += 1
                    for rs in request.resource_spans:
                        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                outer.spans.append(_span(span, resource))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def find(self, **wanted: Any) -> dict[str, Any] | None:
        """The first span whose fields (``name``, ``trace_id``...) or attributes equal ``wanted``."""
        for span in list(self.spans):
            if all(span.get(k, span["attributes"].get(k)) == v for k, v in wanted.items()):
                return span
        return None

    def wait(self, **wanted: Any) -> dict[str, Any]:
        return wait_until(lambda: self.find(**wanted), 30, what=f"a span with {wanted}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def _span(span: Any, resource: dict[str, Any]) -> dict[str, Any]:
    return {"name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
            "parent_span_id": span.parent_span_id.hex(), "kind": span.kind, "status": span.status.code,
            "start": span.start_time_unix_nano, "end": span.end_time_unix_nano, "trace_state": span.trace_state,
            "attributes": {a.key: _value(a.value) for a in span.attributes}, "resource": resource}


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _ws_request(url: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one request on a new WebSocket; its frames up to the terminal one."""
    frames = []
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps(request))
        while True:
            frame = json.loads(ws.recv(timeout=60))
            if frame.get("id") != request["id"]:
                continue  # hello
            frames.append(frame)
            if frame["type"] in ("result", "done", "error"):
                return frames


STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
KIND_SERVER = 2  # Span.SPAN_KIND_SERVER


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def traced(model_cache: Path, collector: Collector) -> Iterator[tuple[ServerProcess, str]]:
    from tests.test_grpc import grpc_address  # the gRPC port from the server's log

    proc = ServerProcess("--models", "linear,charlm", "--grpc-port", "0", "--otlp-traces-endpoint", collector.url,
                         cache_dir=model_cache, env=OTEL_ENV)
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def test_http_infer_span_has_the_route_the_parent_and_the_timing(traced, collector: Collector) -> None:
    proc, _ = traced
    tp, trace_id, parent = _traceparent()
    body = {"id": "infer-7", "inputs": [{"name": "input", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.0]}]}
    status, answer = _post(proc.http + "/v2/models/linear/infer", body, {"traceparent": tp, "tracestate": "k=v"})
    assert status == 200, answer
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "POST /v2/models/{name}/infer"
    assert span["parent_span_id"] == parent and span["kind"] == KIND_SERVER and span["status"] != STATUS_ERROR
    a = span["attributes"]
    assert a["wsserve.model"] == "linear" and a["wsserve.model_version"] == answer["model_version"]
    assert a["wsserve.request_id"] == "infer-7" and a["wsserve.rows"] == 2 and a["wsserve.transport"] == "http"
    assert a["wsserve.batch_size"] >= 2 and a["wsserve.queue_ms"] >= 0 and a["wsserve.compute_ms"] >= 0
    assert span["resource"]["service.name"] == "wsserve-under-test"
    assert span["end"] >= span["start"] > 0


def test_http_predict_span(traced, collector: Collector) -> None:
    proc, _ = traced
    tp, trace_id, _ = _traceparent()
    status, answer = _post(proc.http + "/predict", {"model": "linear", "inputs": [[1.0], [2.0], [3.0]]},
                           {"traceparent": tp})
    assert status == 200, answer
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "POST /predict"
    assert span["attributes"]["wsserve.rows"] == 3
    assert span["attributes"]["wsserve.compute_ms"] == answer["timing"]["compute_ms"]  # the answer's own figures


def test_kserve_v1_predict_span(traced, collector: Collector) -> None:
    proc, _ = traced
    tp, trace_id, parent = _traceparent()
    status, answer = _post(proc.http + "/v1/models/linear:predict", {"instances": [[1.0], [2.0]]},
                           {"traceparent": tp})
    assert status == 200 and len(answer["predictions"]) == 2, answer
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "POST /v1/models/{name}:predict" and span["parent_span_id"] == parent
    assert span["attributes"]["wsserve.model"] == "linear" and span["attributes"]["wsserve.rows"] == 2


def test_openai_chat_span_has_genai_attributes(traced, collector: Collector) -> None:
    openai = pytest.importorskip("openai")
    proc, _ = traced
    tp, trace_id, parent = _traceparent()
    client = openai.OpenAI(base_url=proc.http + "/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        answer = client.chat.completions.create(model="charlm", messages=[{"role": "user", "content": "hello"}],
                                                max_tokens=7, temperature=0.5, extra_headers={"traceparent": tp})
    finally:
        client.close()
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "POST /v1/chat/completions" and span["parent_span_id"] == parent
    a = span["attributes"]
    assert a["gen_ai.request.model"] == "charlm" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.max_tokens"] == 7 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    # the generation's timing: time to first token within the whole, after the queue
    assert 0 <= a["wsserve.queue_ms"] <= a["wsserve.ttft_ms"] <= a["wsserve.total_ms"]


def test_completions_span_without_traceparent_starts_a_trace(traced, collector: Collector) -> None:
    proc, _ = traced
    status, answer = _post(proc.http + "/v1/completions", {"model": "charlm", "prompt": "ab", "max_tokens": 3,
                                                           "user": "no-traceparent"},
                           {"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"})  # invalid: all-zero trace id
    assert status == 200, answer
    span = collector.wait(name="POST /v1/completions")
    assert span["parent_span_id"] == "" and span["trace_id"] != "0" * 32
    assert span["attributes"]["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]


def test_failed_request_span_has_error_status_and_code(traced, collector: Collector) -> None:
    proc, _ = traced
    tp, trace_id, _ = _traceparent()
    status, _answer = _post(proc.http + "/v2/models/nope/infer", {"inputs": []}, {"traceparent": tp})
    assert status == 404
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "POST /v2/models/{name}/infer" and span["status"] == STATUS_ERROR
    assert span["attributes"]["wsserve.error_code"] == "unknown_model"
    assert span["attributes"]["error.type"] == "unknown_model"


def test_grpc_model_infer_span_takes_the_metadata_traceparent(traced, collector: Collector) -> None:
    tgrpc = pytest.importorskip("tritonclient.grpc")
    import numpy as np

    _, address = traced
    tp, trace_id, parent = _traceparent()
    client = tgrpc.InferenceServerClient(address)
    try:
        inp = tgrpc.InferInput("input", [1, 1], "FP64")
        inp.set_data_from_numpy(np.array([[4.0]]))
        client.infer("linear", [inp], request_id="g-1", headers={"traceparent": tp})
    finally:
        client.close()
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "inference.GRPCInferenceService/ModelInfer" and span["parent_span_id"] == parent
    a = span["attributes"]
    assert a["rpc.system"] == "grpc" and a["rpc.method"] == "ModelInfer" and a["wsserve.request_id"] == "g-1"
    assert a["wsserve.rows"] == 1 and a["wsserve.transport"] == "grpc"


def _one_on_a_stream(address: str, model: str, inputs: Any, rid: str, **parameters: Any) -> tuple[str, str]:
    """One request on a tritonclient.grpc ModelStreamInfer stream opened with a fresh
    ``traceparent`` (its first response read); ``(trace_id, parent span id)``."""
    import queue

    tp, trace_id, parent = _traceparent()
    results: queue.Queue = queue.Queue()
    client = tgrpc_module().InferenceServerClient(address)
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)), headers={"traceparent": tp})
        client.async_stream_infer(model, inputs, request_id=rid, parameters=parameters or None)
        result, error = results.get(timeout=60)
        assert error is None, error
    finally:
        client.stop_stream()
        client.close()
    return trace_id, parent


def tgrpc_module() -> Any:
    return pytest.importorskip("tritonclient.grpc")


def test_grpc_stream_infer_span_per_generation(traced, collector: Collector) -> None:
    import numpy as np

    prompt = tgrpc_module().InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"The "], dtype=np.object_))
    trace_id, parent = _one_on_a_stream(traced[1], "charlm", [prompt], "gs-1", max_tokens=5)
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "inference.GRPCInferenceService/ModelStreamInfer" and span["parent_span_id"] == parent
    a = span["attributes"]
    assert a["rpc.method"] == "ModelStreamInfer" and a["wsserve.request_id"] == "gs-1"
    assert a["gen_ai.request.model"] == "charlm" and a["gen_ai.request.max_tokens"] == 5
    assert a["gen_ai.usage.output_tokens"] == 5 and a["gen_ai.usage.input_tokens"] > 0


def test_grpc_stream_infer_span_of_a_predictive_request(traced, collector: Collector) -> None:
    """A predictive model's request on a ModelStreamInfer stream (run as ModelInfer runs it) has
    its span too, named after the stream's RPC, a child of the stream's traceparent."""
    import numpy as np

    inp = tgrpc_module().InferInput("input", [1, 1], "FP64")
    inp.set_data_from_numpy(np.array([[4.0]]))
    trace_id, parent = _one_on_a_stream(traced[1], "linear", [inp], "sp-1")
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "inference.GRPCInferenceService/ModelStreamInfer" and span["parent_span_id"] == parent
    a = span["attributes"]
    assert a["rpc.method"] == "ModelStreamInfer" and a["wsserve.request_id"] == "sp-1" and a["wsserve.rows"] == 1


def test_websocket_predict_and_generate_spans_take_the_frame_traceparent(traced, collector: Collector) -> None:
    proc, _ = traced
    tp, trace_id, parent = _traceparent()
    frames = _ws_request(proc.url, {"type": "predict", "id": "ws-p", "model": "linear", "inputs": [[1.0]],
                                    "traceparent": tp})
    assert frames[-1]["type"] == "result"
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "wsserve.predict" and span["parent_span_id"] == parent
    assert span["attributes"]["wsserve.request_id"] == "ws-p" and span["attributes"]["wsserve.rows"] == 1
    assert span["attributes"]["wsserve.transport"] == "websocket"

    tp, trace_id, parent = _traceparent()
    frames = _ws_request(proc.url, {"type": "generate", "id": "ws-g", "model": "charlm", "prompt": "ab",
                                    "max_tokens": 4, "temperature": 0, "traceparent": tp})
    done = frames[-1]
    assert done["type"] == "done"
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "wsserve.generate" and span["parent_span_id"] == parent
    a = span["attributes"]
    assert a["gen_ai.usage.output_tokens"] == done["tokens"] and a["gen_ai.request.max_tokens"] == 4
    assert a["gen_ai.usage.input_tokens"] == done["prompt_tokens"]
    # the timing its done carried, time to first token included
    assert (a["wsserve.queue_ms"], a["wsserve.ttft_ms"], a["wsserve.total_ms"]) == (
        done["timing"]["queue_ms"], done["timing"]["ttft_ms"], done["timing"]["total_ms"])


def test_websocket_refused_request_span_and_malformed_traceparent(traced, collector: Collector) -> None:
    proc, _ = traced
    tp, trace_id, _ = _traceparent()
    frames = _ws_request(proc.url, {"type": "predict", "id": "ws-bad", "model": "nope", "inputs": [[1.0]],
                                    "traceparent": tp})
    assert frames[-1]["type"] == "error"
    span = collector.wait(trace_id=trace_id)
    assert span["name"] == "wsserve.predict" and span["status"] == STATUS_ERROR
    assert span["attributes"]["wsserve.error_code"] == frames[-1]["code"]
    # a malformed traceparent is ignored (W3C): the request is served, in a trace of its own
    frames = _ws_request(proc.url, {"type": "predict", "id": "ws-malformed", "model": "linear", "inputs": [[1.0]],
                                    "traceparent": "00-xyz"})
    assert frames[-1]["type"] == "result"
    span = collector.wait(**{"wsserve.request_id": "ws-malformed"})
    assert span["parent_span_id"] == ""


def test_websocket_tracestate_goes_with_the_frame_traceparent(traced, collector: Collector) -> None:
    """A frame's ``tracestate`` is the span's trace state (as the HTTP header and gRPC metadata are),
    on predict and generate; a malformed one is dropped whole with the traceparent kept, and one
    without a traceparent is ignored (W3C)."""
    proc, _ = traced
    for kind, extra, terminal in (("predict", {"model": "linear", "inputs": [[1.0]]}, "result"),
                                  ("generate", {"model": "charlm", "prompt": "ab", "max_tokens": 2}, "done")):
        tp, trace_id, parent = _traceparent()
        frames = _ws_request(proc.url, {"type": kind, "id": f"ts-{kind}", **extra, "traceparent": tp,
                                        "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"})
        assert frames[-1]["type"] == terminal
        span = collector.wait(trace_id=trace_id)
        assert span["parent_span_id"] == parent and span["trace_state"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    tp, trace_id, parent = _traceparent()
    frames = _ws_request(proc.url, {"type": "predict", "id": "ts-bad", "model": "linear", "inputs": [[1.0]],
                                    "traceparent": tp, "tracestate": "Bad Key=1"})
    assert frames[-1]["type"] == "result"
    span = collector.wait(trace_id=trace_id)
    assert span["parent_span_id"] == parent and span["trace_state"] == ""
    frames = _ws_request(proc.url, {"type": "predict", "id": "ts-alone", "model": "linear", "inputs": [[1.0]],
                                    "tracestate": "k=v"})
    assert frames[-1]["type"] == "result"
    span = collector.wait(**{"wsserve.request_id": "ts-alone"})
    assert span["parent_span_id"] == "" and span["trace_state"] == ""


def test_the_python_client_passes_the_trace_context(traced, collector: Collector) -> None:
    """wsserve_client's ``traceparent``/``tracestate`` on predict, predict_stream (binary too) and
    generate make the server's spans children of the caller's, with its trace state."""
    import array
    import asyncio

    from wsserve_client import Client

    proc, _ = traced
    contexts = [_traceparent() for _ in range(4)]

    async def calls() -> None:
        async with Client(proc.url) as c:
            (tp0, _, _), (tp1, _, _), (tp2, _, _), (tp3, _, _) = contexts
            await c.predict("linear", [[1.0]], traceparent=tp0, tracestate="a=1")
            await c.predict("linear", array.array("d", [1.0]), binary=True, traceparent=tp1, tracestate="a=1")
            async for _ in c.predict_stream("linear", [[1.0], [2.0]], traceparent=tp2, tracestate="a=1"):
                pass
            await c.complete("charlm", "ab", max_tokens=2, traceparent=tp3, tracestate="a=1")

    asyncio.run(calls())
    names = []
    for _, trace_id, parent in contexts:
        span = collector.wait(trace_id=trace_id)
        assert span["parent_span_id"] == parent and span["trace_state"] == "a=1"
        names.append(span["name"])
    assert names == ["wsserve.predict"] * 3 + ["wsserve.generate"]


def test_a_bad_key_refusal_is_a_span_over_http_and_grpc(model_cache: Path, collector: Collector) -> None:
    """With API keys, a request refused for its key is its route's or RPC's span with the error code,
    a child of the caller's traceparent: HTTP 401, gRPC UNAUTHENTICATED on ModelInfer and on
    ModelStreamInfer (whose stream is refused before any request is read)."""
    import queue

    import numpy as np

    tgrpc = tgrpc_module()
    from tests.test_grpc import grpc_address

    proc = ServerProcess("--models", "linear", "--grpc-port", "0", "--api-key", "right-key",
                         "--otlp-traces-endpoint", collector.url, cache_dir=model_cache, env=OTEL_ENV)
    try:
        tp, trace_id, parent = _traceparent()
        status, _ = _post(proc.http + "/v2/models/linear/infer", {"inputs": []},
                          {"traceparent": tp, "authorization": "Bearer wrong-key"})
        assert status == 401
        span = collector.wait(trace_id=trace_id)
        assert span["name"] == "POST /v2/models/{name}/infer" and span["parent_span_id"] == parent
        assert span["status"] == STATUS_ERROR and span["attributes"]["wsserve.error_code"] == "unauthorized"

        client = tgrpc.InferenceServerClient(grpc_address(proc))
        try:
            inp = tgrpc.InferInput("input", [1, 1], "FP64")
            inp.set_data_from_numpy(np.array([[4.0]]))
            tp, trace_id, parent = _traceparent()
            with pytest.raises(tgrpc.InferenceServerException) as info:
                client.infer("linear", [inp], headers={"traceparent": tp, "authorization": "Bearer wrong-key"})
            assert info.value.status() == "StatusCode.UNAUTHENTICATED"
            span = collector.wait(trace_id=trace_id)
            assert span["name"] == "inference.GRPCInferenceService/ModelInfer" and span["parent_span_id"] == parent
            a = span["attributes"]
            assert span["status"] == STATUS_ERROR and a["wsserve.error_code"] == "unauthorized"
            assert a["rpc.method"] == "ModelInfer" and a["wsserve.model"] == "linear"

            tp, trace_id, parent = _traceparent()
            results: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: results.put((result, error)),
                                headers={"traceparent": tp, "authorization": "Bearer wrong-key"})
            try:  # the stream may already be refused (the server needs no request to refuse it)
                client.async_stream_infer("linear", [inp])
            except tgrpc.InferenceServerException:
                pass
            result, error = results.get(timeout=60)
            assert result is None and "UNAUTHENTICATED" in str(error.status()), error
            span = collector.wait(trace_id=trace_id)
            a = span["attributes"]
            assert span["name"] == "inference.GRPCInferenceService/ModelStreamInfer" and span["parent_span_id"] == parent
            assert a["wsserve.error_code"] == "unauthorized" and "wsserve.model" not in a
            client.stop_stream()
        finally:
            client.close()
    finally:
        proc.stop()


def test_a_down_collector_does_not_stop_serving(model_cache: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1/traces"
    with ServerProcess("--models", "linear", "--otlp-traces-endpoint", dead, cache_dir=model_cache,
                       env=OTEL_ENV) as proc:
        for i in range(50):
            status, answer = _post(proc.http + "/predict", {"model": "linear", "inputs": [[float(i)]]})
            assert status == 200, answer
        frames = _ws_request(proc.url, {"type": "predict", "id": "x", "model": "linear", "inputs": [[1.0]]})
        assert frames[-1]["type"] == "result"
        assert proc.stop() == 0


def test_a_failing_attribute_read_still_ends_the_span_and_never_raises(collector: Collector) -> None:
    """In process: :class:`~wsserve.tracing.Tracing` against the same collector; a request whose
    ``span_attributes`` raises still gets its span (status and code), and nothing reaches the caller."""
    import time

    from wsserve.tracing import Tracing

    class Broken:
        def span_attributes(self) -> dict[str, Any]:
            raise RuntimeError("a bug in the figures")

    tracing = Tracing(collector.url, clock=time.monotonic)
    tp, trace_id, parent = _traceparent()
    try:
        span = tracing.begin("wsserve.predict", tp, "vendor=1", time.monotonic(), {"wsserve.model": "m"})
        assert span is not None
        span.end("internal", Broken())
        span.end("ok")  # a second end does nothing
    finally:
        tracing.close()
    found = collector.wait(trace_id=trace_id)
    assert found["parent_span_id"] == parent and found["status"] == STATUS_ERROR
    assert found["attributes"]["wsserve.error_code"] == "internal" and found["attributes"]["wsserve.model"] == "m"


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("url", ["localhost:4318", "ftp://collector/v1/traces", "http://", "http://host:99999/x",
                                 "not a url"])
def test_a_bad_endpoint_exits_2_naming_the_flag(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    error = _cli_error(["serve", "--otlp-traces-endpoint", url], capsys).strip().splitlines()[-1]
    assert "--otlp-traces-endpoint" in error and "URL" in error, error


def test_the_flag_without_the_extra_exits_2_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("opentelemetry.sdk") else real(name, *a))
    err = _cli_error(["serve", "--otlp-traces-endpoint", "http://localhost:4318/v1/traces"], capsys)
    assert "--otlp-traces-endpoint" in err and "pip install 'wsserve[otel]'" in err


def test_off_by_default_opentelemetry_is_not_imported(model_cache: Path, tmp_path: Path) -> None:
    """Without the flag the server never imports OpenTelemetry (asked of the running process)."""
    import subprocess
    import sys

    code = ("import sys, wsserve.server, wsserve.cli, wsserve.protocol, wsserve.rest, wsserve.connection;"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("value", "usable"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),  # a later version may add fields
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),  # version 00 may not
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),  # upper case
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + "x" * 300, False),  # over the bound
    (42, False), (None, False), ("", False),
])
def test_parse_traceparent(value: object, usable: bool) -> None:
    assert parse_traceparent(value) == (value if usable else None)


def test_a_malformed_tracestate_is_dropped_without_a_log_line_per_request(traced, collector: Collector) -> None:
    """A ``tracestate`` that W3C's grammar refuses (a bad member, over 32 members) is dropped
    before OpenTelemetry sees it: the request is served, its span keeps the traceparent, and the
    client's text never reaches the server's log (the SDK's parser logs a warning per bad header:
    a client could fill the log)."""
    proc, _ = traced
    marker = secrets.token_hex(6)
    bad = [f"vendor=1,not a member {marker}",  # a member without key=value
           ",".join(f"k{i}=1" for i in range(33))]  # over W3C's 32 members
    for tracestate in bad:
        tp, trace_id, parent = _traceparent()
        status, answer = _post(proc.http + "/predict", {"model": "linear", "inputs": [[1.0]]},
                               {"traceparent": tp, "tracestate": tracestate})
        assert status == 200, answer
        span = collector.wait(trace_id=trace_id)
        assert span["parent_span_id"] == parent
    log = proc.stderr_text()
    assert marker not in log and "key/value pairs" not in log


@pytest.mark.parametrize(("value", "usable"), [
    ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", True),
    ("tenant1@vendor=x, ,other=y \t", True),  # empty members and spaces around them are allowed
    (",".join(f"k{i}=1" for i in range(32)), True),
    (",".join(f"k{i}=1" for i in range(33)), False),  # over 32 members
    ("a=1,a=2", False),  # a duplicate key
    ("Upper=1", False), ("k=", False), ("k=a=b", False), ("k=1,junk", False), ("k=\u00e9", False),
    ("k=" + "x" * 600, False), (7, False), (None, False),
])
def test_parse_tracestate(value: object, usable: bool) -> None:
    assert parse_tracestate(value) == (value if usable else None)


def _post_raw_headers(url: str, body: Any, headers: list[tuple[str, str]]) -> int:
    """POST ``body`` as JSON with ``headers`` sent as given (a name may repeat); the status."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest("POST", parts.path)
        data = json.dumps(body).encode()
        for name, value in [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers]:
            conn.putheader(name, value)
        conn.endheaders(data)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_repeated_trace_headers_and_metadata_as_w3c_says(traced, collector: Collector) -> None:
    """W3C Trace Context: two ``traceparent`` headers are not a usable parent (a new trace), and
    several ``tracestate`` fields are one list (combined with commas), over HTTP and in gRPC
    metadata (grpc itself keeps only the last ``traceparent`` of an RPC's metadata)."""
    proc, address = traced
    body = {"model": "linear", "inputs": [[1.0]]}
    (tp1, trace1, _), (tp2, trace2, _) = _traceparent(), _traceparent()
    assert _post_raw_headers(proc.http + "/predict", body, [("traceparent", tp1), ("traceparent", tp2)]) == 200
    tp, trace_id, parent = _traceparent()
    assert _post_raw_headers(proc.http + "/predict", body, [("traceparent", tp), ("tracestate", "a=1"),
                                                            ("tracestate", "b=2")]) == 200
    span = collector.wait(trace_id=trace_id)
    assert span["parent_span_id"] == parent and span["trace_state"] == "a=1,b=2"

    request = service_pb2.ModelInferRequest(model_name="linear", id="grpc-state")
    request.inputs.add(name="input", datatype="FP64", shape=[1, 1]).contents.fp64_contents.append(1.0)
    tp3, trace3, parent3 = _traceparent()
    with grpc.insecure_channel(address) as channel:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("traceparent", tp3), ("tracestate", "a=1"), ("tracestate", "b=2")), timeout=60)
    span = collector.wait(trace_id=trace3)
    assert span["parent_span_id"] == parent3 and span["trace_state"] == "a=1,b=2"
    # the HTTP request with two traceparents was traced before these, in a new trace
    assert not [s for s in collector.spans if s["trace_id"] in (trace1, trace2)]


def test_tracing_leaves_no_exit_handler_to_block_the_exit(collector: Collector) -> None:
    """:meth:`Tracing.close` is the exporter's one, bounded, shutdown (5 s, as deploy.md says): the
    SDK's own exit handler (``TracerProvider.shutdown`` at interpreter exit, which joins an export
    to a collector that does not answer for up to 30 s more) is not registered."""
    import atexit
    import time

    from wsserve.tracing import Tracing

    before = atexit._ncallbacks()
    tracing = Tracing(collector.url, clock=time.monotonic)
    try:
        assert atexit._ncallbacks() == before
    finally:
        tracing.close()


def test_client_chosen_attribute_values_are_bounded(traced, collector: Collector) -> None:
    """A span's attribute values are cut at :data:`~wsserve.tracing.MAX_ATTRIBUTE_CHARS`: a refused
    gRPC request's model name is the client's, up to ``--max-message-bytes`` (the WebSocket
    refuses a name over 256 characters before that), and the exporter's queue holds 2048 spans."""
    from wsserve.tracing import MAX_ATTRIBUTE_CHARS

    _, address = traced
    name = "m" * 200_000
    tp, trace_id, _ = _traceparent()
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name="input", datatype="FP64", shape=[1, 1]).contents.fp64_contents.append(1.0)
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=(("traceparent", tp),),
                                                                          timeout=60)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert collector.wait(trace_id=trace_id)["attributes"]["wsserve.model"] == name[:MAX_ATTRIBUTE_CHARS]


def test_generation_timing_of_several_choices() -> None:
    """A request of several choices: its queue and first token are the first choice's to get
    there, its total the last to end; a choice not ended, or a figure it lacks, is left out."""
    from wsserve.rest.calls import generation_timing

    assert generation_timing([
        {"queue_ms": 0.5, "ttft_ms": 3.0, "total_ms": 10.0},
        None,
        {"queue_ms": 0.2, "ttft_ms": None, "total_ms": 12.5},
        {"queue_ms": 0.9, "ttft_ms": 2.0, "total_ms": 4.0},
    ]) == {"wsserve.queue_ms": 0.2, "wsserve.ttft_ms": 2.0, "wsserve.total_ms": 12.5}
    assert generation_timing([None, {}]) == {}
