"""``--access-log`` and ``--log-format json`` on a real server (stderr read as the operator reads it).

One access record per HTTP request answered (plain, streamed, refused by a limit, left by its
client), none without the flag; JSON lines that parse, with the record's fields; credentials
masked in the message and in the fields alike.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.support import RawHttp, ServerProcess, http_get, request_bytes, wait_until
from wsserve.config import ServerConfig
from wsserve.logs import JsonFormatter, RedactSecrets

KEY = "access-log-key-0123456789"


def _records(proc: ServerProcess) -> list[dict[str, Any]]:
    """The server's JSON log lines, parsed (every line must be one JSON object)."""
    return [json.loads(line) for line in proc.stderr_text().splitlines() if line.strip()]


def _access(proc: ServerProcess) -> list[dict[str, Any]]:
    return [r for r in _records(proc) if r["logger"] == "wsserve.access"]


@pytest.fixture(scope="module")
def served(model_cache: Path):
    with ServerProcess("--models", "linear,charlm", "--access-log", "--log-format", "json", "--api-key", KEY,
                       "--max-message-bytes", "4096", cache_dir=model_cache) as proc:
        yield proc


def _post(port: int, path: str, body: bytes, key: str | None = KEY) -> Any:
    with RawHttp(port) as c:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return c.request("POST", path, body, headers)


def test_every_answered_request_is_one_json_access_record(served: ServerProcess) -> None:
    before = len(_access(served))
    assert http_get(served.http + "/v1/models?format=openai", key=KEY)[0] == 200
    assert _post(served.port, "/predict", b'{"model":"linear","inputs":[[1],[2]]}').status == 200
    assert _post(served.port, "/predict", b'{"model":"nope","inputs":[[1]]}').status == 404
    assert _post(served.port, "/predict", b"x" * 5000).status == 413  # refused by --max-message-bytes
    stream = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 5, "stream": True}).encode()
    streamed = _post(served.port, "/v1/completions", stream)
    assert streamed.status == 200 and b"[DONE]" in streamed.body
    records = wait_until(lambda: r if len(r := _access(served)[before:]) >= 5 else None, 30,
                         what="five access records")
    assert [(r["request"], r["status"]) for r in records] == [
        ("GET /v1/models?format=openai HTTP/1.1", 200), ("POST /predict HTTP/1.1", 200),
        ("POST /predict HTTP/1.1", 404), ("POST /predict HTTP/1.1", 413), ("POST /v1/completions HTTP/1.1", 200)]
    for r in records:
        assert r["level"] == "INFO" and r["client"] == "127.0.0.1" and r["duration_ms"] >= 0
        assert r["message"] == f'127.0.0.1 "{r["request"]}" {r["status"]} {r["bytes"]} {r["duration_ms"]:.1f}ms'
        assert r["time"].endswith("Z") and "T" in r["time"]
    assert records[1]["bytes"] > 0
    assert records[4]["bytes"] >= streamed.body.count(b"data: ") * len(b"data: ")  # the stream's bytes, counted
    # every other record is JSON too (the server's own lines)
    assert any(r["logger"] == "wsserve.server" for r in _records(served))


def test_a_stream_its_client_leaves_is_recorded_as_left(served: ServerProcess) -> None:
    before = len(_access(served))
    body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 100000, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", served.port)) as raw:
        raw.sendall(request_bytes("POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}"}))
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")  # the stream began; the client then goes
    left = wait_until(lambda: [r for r in _access(served)[before:] if r.get("note") == "client left"], 30,
                      what="the left stream's record")
    assert left[0]["request"] == "POST /v1/completions HTTP/1.1" and left[0]["status"] == 200
    assert left[0]["message"].endswith("(client left)")


def test_a_grpc_stream_its_client_cancels_is_recorded_as_cancelled(model_cache: Path) -> None:
    """A ModelStreamInfer the client cancels mid-generation did not end OK: its record has the
    note ``grpc-status CANCELLED`` (as the HTTP stream a client leaves is noted), with the bytes
    written until then.  It was recorded as a stream that ended OK."""
    tgrpc = pytest.importorskip("tritonclient.grpc")  # the grpc extra

    from tests.test_grpc import _generate, grpc_address

    with ServerProcess("--models", "charlm", "--grpc-port", "0", "--access-log", "--log-format", "json",
                       cache_dir=model_cache) as proc:
        client = tgrpc.InferenceServerClient(grpc_address(proc))
        try:
            results: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: results.put((result, error)))
            _generate(client, results, "long", True, max_tokens=100000)
            result, error = results.get(timeout=60)
            assert error is None and result.get_response().id == "long"  # the generation is under way
            client.stop_stream(cancel_requests=True)
        finally:
            client.close()
        [record] = wait_until(lambda: [r for r in _access(proc) if r["request"].endswith("/ModelStreamInfer HTTP/2")],
                              30, what="the cancelled stream's record")
    assert record["status"] == 200 and record["note"] == "grpc-status CANCELLED", record
    assert record["bytes"] > 0 and record["message"].endswith("(grpc-status CANCELLED)")


def test_credentials_are_masked_in_the_fields_as_in_the_message(served: ServerProcess) -> None:
    before = len(_access(served))
    assert http_get(served.http + f"/v1/models?token={KEY}", key=KEY)[0] == 200
    record = wait_until(lambda: (r := _access(served)[before:]) and r[0], 30, what="the record")
    assert KEY not in json.dumps(record) and "***" in record["request"] and "***" in record["message"]


def test_without_the_flag_nothing_is_logged_per_request(model_cache: Path) -> None:
    with ServerProcess("--models", "linear", "--log-format", "json", cache_dir=model_cache) as proc:
        for _ in range(3):
            assert http_get(proc.http + "/v1/models")[0] == 200
        assert http_get(proc.http + "/healthz")[0] == 200
        assert not _access(proc) and _records(proc)  # JSON lines, none of them access records


def test_text_access_lines_and_workers_in_json(model_cache: Path) -> None:
    with ServerProcess("--models", "linear", "--access-log", cache_dir=model_cache) as proc:
        assert http_get(proc.http + "/v1/models")[0] == 200
        line = wait_until(lambda: next((ln for ln in proc.stderr_text().splitlines() if "wsserve.access" in ln), None),
                          30, what="the text access line")
        assert ' INFO wsserve.access: 127.0.0.1 "GET /v1/models HTTP/1.1" 200 ' in line and line.endswith("ms")
        with RawHttp(proc.port) as c:  # a target with a quote and a backslash: escaped as nginx's, in the quotes
            assert c.request("GET", '/v1/models?q="x\\"y').status == 200
        line = wait_until(lambda: next((ln for ln in proc.stderr_text().splitlines() if "q=" in ln), None),
                          30, what="the access line of the quoted target")
        assert ' 127.0.0.1 "GET /v1/models?q=\\x22x\\x5C\\x22y HTTP/1.1" 200 ' in line, line
    with ServerProcess("--models", "linear", "--workers", "2", "--log-format", "json", "--access-log",
                       cache_dir=model_cache) as proc:
        assert http_get(proc.http + "/v1/models")[0] == 200
        record = wait_until(lambda: next(iter(_access(proc)), None), 30, what="a worker's access record")
        assert record["worker"] in ("0", "1")


def test_config_and_formatter_contracts() -> None:
    with pytest.raises(ValueError, match="--log-format must be one of text, json, got 'xml'"):
        ServerConfig(log_format="xml").validate()
    with pytest.raises(ValueError, match="--access-log must be a boolean"):
        ServerConfig(access_log="yes").validate()  # type: ignore[arg-type]
    import io

    from wsserve.logs import AccessLog

    out_text, out_json = io.StringIO(), io.StringIO()
    text, js = AccessLog("text", ["s3cret"], None, out_text), AccessLog("json", ["s3cret"], "2", out_json)
    assert text.add("10.0.0.1", "GET /x?k=s3cret HTTP/1.1", 200, 5, 1.25) is True  # the first: flush owed
    assert text.add("10.0.0.1", "GET /y HTTP/1.1", 404, 9, 0.5, "client left") is False
    assert out_text.getvalue() == ""  # kept until flushed, then in one write
    text.flush()
    first, second = out_text.getvalue().splitlines()
    assert first.endswith(' INFO wsserve.access: 10.0.0.1 "GET /x?k=*** HTTP/1.1" 200 5 1.2ms')
    assert second.endswith('"GET /y HTTP/1.1" 404 9 0.5ms (client left)')
    js.add("10.0.0.1", "GET /x HTTP/1.1", 200, 5, 1.25)
    js.flush()
    record = json.loads(out_json.getvalue())
    assert {k: record[k] for k in ("level", "logger", "worker", "client", "status", "bytes", "duration_ms")} == {
        "level": "INFO", "logger": "wsserve.access", "worker": "2", "client": "10.0.0.1", "status": 200, "bytes": 5,
        "duration_ms": 1.25}
    record = logging.LogRecord("wsserve.x", logging.ERROR, __file__, 1, "failed with %s", ("Bearer abc",), None)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactSecrets().filter(record)
    out = json.loads(JsonFormatter(worker="1").format(record))
    assert out["message"] == "failed with Bearer ***" and out["level"] == "ERROR" and out["worker"] == "1"
    assert "RuntimeError: boom" in out["exception"]


def test_grpc_rpcs_are_recorded_too(model_cache: Path) -> None:
    # --access-log recorded HTTP requests only: a gRPC RPC (an HTTP/2 POST) left no record.
    tgrpc = pytest.importorskip("tritonclient.grpc")  # the grpc extra
    import grpc
    import numpy as np
    from tritonclient.utils import InferenceServerException

    from tests.test_grpc import _answers, _generate, grpc_address

    with ServerProcess("--models", "linear,charlm", "--grpc-port", "0", "--access-log", "--log-format", "json",
                       cache_dir=model_cache) as proc:
        client = tgrpc.InferenceServerClient(grpc_address(proc))
        try:
            tensor = tgrpc.InferInput("input", [1, 1], "FP64")
            tensor.set_data_from_numpy(np.array([[1.0]]))
            client.infer("linear", [tensor])
            with pytest.raises(InferenceServerException):
                client.get_model_metadata("nope")
            # grpc.health.v1 on the same port: recorded under its own service's path
            from grpc_health.v1 import health_pb2, health_pb2_grpc
            with grpc.insecure_channel(grpc_address(proc)) as channel:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            # a stream: its record counts the bytes of every message it wrote (it counted 0)
            results: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: results.put((result, error)))
            try:
                _generate(client, results, "s", True, max_tokens=6, temperature=0)
                answers = _answers(results)
            finally:
                client.stop_stream()
        finally:
            client.close()
        records = wait_until(lambda: r if len(r := _access(proc)) >= 4 else None, 30, what="four gRPC records")
    assert len(answers) == 6 and answers[-1][2]  # six token responses, the last one final
    infer, unknown, check, stream = records[-4:]
    assert check["request"] == "POST /grpc.health.v1.Health/Check HTTP/2" and check["bytes"] == 2  # SERVING
    assert stream["request"] == "POST /inference.GRPCInferenceService/ModelStreamInfer HTTP/2"
    assert stream["status"] == 200 and "note" not in stream
    # each response holds its id, a 1-character text_output and the final flag: more than 6 x 10 bytes
    assert stream["bytes"] > 60
    assert infer["request"] == "POST /inference.GRPCInferenceService/ModelInfer HTTP/2"
    assert infer["status"] == 200 and infer["bytes"] > 0 and "note" not in infer and infer["client"] == "127.0.0.1"
    assert unknown["request"] == "POST /inference.GRPCInferenceService/ModelMetadata HTTP/2"
    assert unknown["note"] == "grpc-status NOT_FOUND"
