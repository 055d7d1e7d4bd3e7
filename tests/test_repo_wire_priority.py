"""A Triton model's priority levels, served (config.pbtxt ``dynamic_batching { priority_levels: 3
default_priority_level: 2 }``): requests queued behind a held execute run level 1 first, level 3 last,
in arrival order inside a level; a request's ``priority`` 0, or one above the levels, is the default
level (Triton's ``InferenceRequest::SetPriority``).  Triton's clients (``tritonclient.grpc`` and
``tritonclient.http``) send the priorities; the Triton Python model takes one request per execute
(``max_batch_size: 1``) and logs each request id, so the order it received them is read, not timed.
What is queued is known from ``wsserve_queue_depth`` before the held execute is let go.  The
configuration extension reports the levels; the WebSocket refuses a priority above them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402

from tests.support import Conn, ServerProcess, http_get, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402

#: One request per execute (max_batch_size 1); each execute appends its request ids to calls.jsonl
#: beside config.pbtxt.  A request whose first value is -1 creates ``gate.started`` and waits (at most
#: 60 s) for ``gate`` in the model's directory: the model is then busy and the next requests queue.
LOGGED_PY = '''
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.dir = os.path.join(args["model_repository"])

    def execute(self, requests):
        with open(os.path.join(self.dir, "calls.jsonl"), "a") as f:
            f.write(json.dumps([r.request_id() for r in requests]) + "\\n")
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            if x[0, 0] == -1:
                open(os.path.join(self.dir, "gate.started"), "w").close()
                end = time.monotonic() + 60
                while not os.path.exists(os.path.join(self.dir, "gate")):
                    if time.monotonic() > end:
                        raise RuntimeError("the gate never opened")
                    time.sleep(0.005)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
'''

PBTXT = ('backend: "python"\nmax_batch_size: 1\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
         'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')
LEVELS = "dynamic_batching { priority_levels: 3 default_priority_level: 2 }\n"
BOUNDED = PBTXT + ("dynamic_batching { priority_levels: 3 default_priority_level: 2 "
                   "default_queue_policy { max_queue_size: 1 } }\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("priority") / "model_repository"
    for name, config in (("levels", PBTXT + LEVELS), ("flat", PBTXT + "dynamic_batching { }\n"), ("bounded", BOUNDED)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(LOGGED_PY)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, root
    finally:
        for name in ("levels", "flat", "bounded"):
            (root / name / "gate").touch()  # a failed test never leaves an execute held
        proc.stop()


def _x(first: float) -> np.ndarray:
    return np.array([[first, 0.0]], np.float32)


def _grpc_input(first: float) -> Any:
    inp = tgrpc.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(_x(first))
    return inp


def _calls(root: Path, model: str) -> list[str]:
    """The request ids ``model`` executed so far, in order (one per execute)."""
    lines = (root / model / "calls.jsonl").read_text().splitlines()
    return [rid for line in lines for rid in json.loads(line)]


def _answered(results: dict[str, Any], rid: str, result: Any, error: Any) -> None:
    results[rid] = (result, error)


def _run_held(proc: ServerProcess, root: Path, model: str, queued: list[tuple[str, int]]) -> list[str]:
    """Hold ``model`` with one request, queue ``queued`` (id, priority) one by one (each seen in
    ``wsserve_queue_depth`` before the next is sent; an id starting ``http`` over HTTP, the others
    over gRPC), let it go; the ids it then executed."""
    before = len(_calls(root, model))
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    grpc_client = tgrpc.InferenceServerClient(grpc_address(proc))
    results: dict[str, Any] = {}
    try:
        with ThreadPoolExecutor(1) as pool:
            grpc_client.async_infer(model, [_grpc_input(-1)], partial(_answered, results, "held"), request_id="held")
            wait_until(lambda: (root / model / "gate.started").exists(), 60, what="the held execute started")
            for depth, (rid, priority) in enumerate(queued, 1):
                if rid.startswith("http"):
                    inp = thttp.InferInput("x", [1, 2], "FP32")
                    inp.set_data_from_numpy(_x(depth))
                    done = pool.submit(http.infer, model, [inp], request_id=rid, priority=priority)
                    done.add_done_callback(lambda f, rid=rid: _answered(results, rid, f.result(), f.exception()))
                else:
                    grpc_client.async_infer(model, [_grpc_input(depth)], partial(_answered, results, rid),
                                            request_id=rid, priority=priority)
                wait_until(lambda depth=depth: proc.metrics().get("wsserve_queue_depth", model=model) == depth, 60,
                           what=f"{depth} requests queued")
            (root / model / "gate").touch()
            wait_until(lambda: len(results) == len(queued) + 1, 60, what="every request answered")
    finally:
        (root / model / "gate").touch()
        grpc_client.close()
        http.close()
    assert all(err is None for _, err in results.values()), results
    return _calls(root, model)[before:]


def test_levels_run_highest_first_and_in_arrival_order_inside_a_level(served) -> None:
    proc, root = served
    queued = [("p3", 3), ("p0", 0), ("p2", 2), ("p1", 1), ("http99", 99), ("p3b", 3)]
    # level 1; level 2: priority 0 and 99 (over HTTP) are the default level, in arrival order with p2; level 3
    assert _run_held(proc, root, "levels", queued) == ["held", "p1", "p0", "p2", "http99", "p3", "p3b"]


def test_a_model_without_levels_serves_every_priority_alike_in_arrival_order(served) -> None:
    """No ``priority_levels`` in config.pbtxt: Triton's one level, a request's priority is not used."""
    proc, root = served
    queued = [("a", 0), ("b", 2), ("c", 1), ("d", 1)]
    assert _run_held(proc, root, "flat", queued) == ["held", "a", "b", "c", "d"]


def test_the_configuration_reports_the_models_levels(served) -> None:
    proc, _ = served
    for model, levels in (("levels", (3, 2)), ("flat", (0, 0))):
        status, _, body = http_get(f"{proc.http}/v2/models/{model}/config")
        assert status == 200
        db = orjson.loads(body)["dynamic_batching"]
        assert (db["priority_levels"], db["default_priority_level"]) == levels
        client = tgrpc.InferenceServerClient(grpc_address(proc))
        try:
            db = client.get_model_config(model).config.dynamic_batching
            assert (db.priority_levels, db.default_priority_level) == levels
        finally:
            client.close()


async def test_the_websocket_takes_the_models_levels_and_refuses_one_above(served) -> None:
    proc, _ = served
    conn = await Conn.open(proc.url)
    try:
        ok = await conn.request({"type": "predict", "id": "ok", "model": "levels", "inputs": [[1.0, 2.0]], "priority": 3})
        assert ok["type"] == "result" and ok["outputs"] == [[1.0, 2.0]], ok
        bad = await conn.request({"type": "predict", "id": "bad", "model": "levels", "inputs": [[1.0, 2.0]],
                                  "priority": 4})
        assert (bad["type"], bad["id"], bad["code"]) == ("error", "bad", "bad_request"), bad
        assert bad["message"] == (
            "field 'priority' must be in [0, 3] for model 'levels', got 4 (its config.pbtxt "
            "dynamic_batching.priority_levels is 3, 1 the highest; 0 is default_priority_level 2)")
        for value, shown in ((-1, "-1"), (2.0, "2.0"), (True, "true")):  # refused when read: no model named yet
            bad = await conn.request({"type": "predict", "id": "r", "model": "levels", "inputs": [[1.0, 2.0]],
                                      "priority": value})
            assert (bad["type"], bad["code"]) == ("error", "bad_request"), bad
            assert bad["message"] == (  # it said "must be 0 (normal) or 1 (high)", which 'levels' is not
                "field 'priority' must be an integer >= 0 (0 normal, 1 high; 0..N for a model whose config.pbtxt "
                f"sets dynamic_batching.priority_levels N), got {shown}")
        flat = await conn.request({"type": "predict", "id": "f", "model": "flat", "inputs": [[1.0, 2.0]], "priority": 2})
        assert (flat["type"], flat["code"]) == ("error", "bad_request"), flat
        assert "sets no dynamic_batching.priority_levels" in flat["message"]
        assert (await conn.request({"type": "predict", "id": "f1", "model": "flat", "inputs": [[1.0, 2.0]],
                                    "priority": 1}))["type"] == "result"
    finally:
        await conn.close()


def test_max_queue_size_bounds_each_level(served) -> None:
    """Triton's ``max_queue_size`` is per priority level (each level's queue has the
    ``default_queue_policy``): with one level-3 request waiting, a level-1 request is still queued
    (it was refused: the bound counted every level), and a second level-3 one is refused."""
    proc, root = served
    client = tgrpc.InferenceServerClient(grpc_address(proc))
    results: dict[str, Any] = {}
    before = len(_calls(root, "bounded"))
    try:
        client.async_infer("bounded", [_grpc_input(-1)], partial(_answered, results, "held"), request_id="held")
        wait_until(lambda: (root / "bounded" / "gate.started").exists(), 60, what="the held execute started")
        client.async_infer("bounded", [_grpc_input(1)], partial(_answered, results, "low"), request_id="low", priority=3)
        wait_until(lambda: proc.metrics().get("wsserve_queue_depth", model="bounded") == 1, 60, what="low queued")
        client.async_infer("bounded", [_grpc_input(2)], partial(_answered, results, "top"), request_id="top", priority=1)
        wait_until(lambda: "top" in results or proc.metrics().get("wsserve_queue_depth", model="bounded") == 2, 60,
                   what="top queued or answered")
        assert "top" not in results, results["top"]  # not refused
        with pytest.raises(tgrpc.InferenceServerException) as refused:
            client.infer("bounded", [_grpc_input(3)], request_id="low2", priority=3)
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"  # overloaded (PROTOCOL.md)
        assert "1 requests queued at priority level 3, limit 1" in refused.value.message()
        (root / "bounded" / "gate").touch()
        wait_until(lambda: len(results) == 3, 60, what="every request answered")
    finally:
        (root / "bounded" / "gate").touch()
        client.close()
    assert all(err is None for _, err in results.values()), results
    assert _calls(root, "bounded")[before:] == ["held", "top", "low"]
