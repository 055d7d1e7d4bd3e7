"""A load past its timeout (``--model-load-timeout-s``, config.toml's ``model_load_timeout_s``).

A ``model.py`` whose ``Model()`` blocks on a ``threading.Event`` the test holds
(:mod:`tests.support.load_gates`) stands for a load that never returns.  The server runs in
this process, on loopback; the versions' states and reasons are read from the ``models`` frame.
Timeouts are tiny (0.2 s) for the hung models only; the good ones get config.toml's
``model_load_timeout_s = 600`` so a slow machine does not fail them.  Every test sets its
events at the end and waits for the load threads to end: no thread outlives its test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import wsserve
from tests.repo_models import AFFINE_CONFIG, affine, write_affine
from tests.support import Conn, http_get, wait_until, wait_until_async
from tests.support.load_gates import GATES, new_gate
from wsserve.registry import LOAD_CONCURRENCY, MAX_LOAD_THREADS

HUNG_PY = """
from pathlib import Path

from tests.support.load_gates import wait_gate


class Model:
    def __init__(self, version_dir):
        self.dir = Path(version_dir)
        wait_gate((self.dir / "gate.txt").read_text().strip())

    def predict(self, batch):
        return batch[:, :1]

    def close(self):
        (self.dir / "closed.txt").touch()
"""

ROWS = [[1.0, 2.0, 3.0]]


def _write_hung(repo: Path, name: str, key: str, config: str = AFFINE_CONFIG) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.toml").write_text(config)
    (version / "model.py").write_text(HUNG_PY)
    (version / "gate.txt").write_text(key)
    return version


def _write_hung_models(repo: Path, key: str, names: list[str]) -> list[str]:
    """Hung models ``names``, each with config.toml's own timeout of 0.2 s; returns ``names``."""
    for name in names:
        _write_hung(repo, name, key, AFFINE_CONFIG + "model_load_timeout_s = 0.2\n")
    return names


def _write_good(repo: Path, name: str) -> None:
    (repo / name).mkdir(parents=True)
    (repo / name / "config.toml").write_text(AFFINE_CONFIG + "model_load_timeout_s = 600\n")
    write_affine(repo / name / "1", bias=1.0)


def _load_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("wsserve-load-")]


@pytest.fixture
def gate() -> Iterator[tuple[str, threading.Event]]:
    """A gate for hung models; set at the end, and the load threads it held waited for."""
    key, event = new_gate()
    try:
        yield key, event
    finally:
        event.set()
        wait_until(lambda: not _load_threads(), 30, what="the held load threads end")
        GATES.pop(key, None)


@pytest.fixture
async def started() -> AsyncIterator[Any]:
    """``await started(repo, **settings)``: an in-process server on loopback serving ``repo``; closed at the end."""
    servers: list[wsserve.Server] = []

    async def start(repo: Path, **settings: Any) -> wsserve.Server:
        server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), model_repository=(repo,), **settings))
        servers.append(server)
        # start() waits for the initial loads: a hung one for its timeout only (the bound is a guard)
        await asyncio.wait_for(server.start(), 60)
        return server

    yield start
    for server in servers:
        await server.drain(timeout_s=5)
        await server.close()


async def _versions(conn: Conn) -> dict[str, dict[str, Any]]:
    """``{model: {version: {"state", "reason"?}}}`` from a ``models`` frame."""
    reply = await conn.request({"type": "models", "id": "m"})
    assert reply["type"] == "models", reply
    return {m["name"]: {v["version"]: v for v in m["versions"]} for m in reply["models"]}


async def test_a_hung_load_fails_after_the_timeout_and_the_server_starts(
    tmp_path: Path, gate: tuple[str, threading.Event], started: Any,
) -> None:
    key, event = gate
    repo = tmp_path / "repo"
    hung = _write_hung(repo, "hung", key)
    _write_good(repo, "good")
    # the server-wide timeout applies to the hung model; the good one has its own in config.toml
    server = await started(repo, model_load_timeout_s=0.2)
    assert (await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/readyz"))[0] == 200
    conn = await Conn.open(server.url)
    versions = await _versions(conn)
    assert versions["hung"]["1"]["state"] == "failed", versions
    reason = versions["hung"]["1"]["reason"]
    assert reason.startswith(str(hung / "model.py")), reason
    assert "did not load within 0.2 s (--model-load-timeout-s)" in reason, reason
    assert versions["good"]["1"]["state"] == "ready", versions
    r = await conn.request({"type": "predict", "id": 1, "model": "good", "inputs": ROWS})
    assert r["type"] == "result" and r["outputs"] == affine(ROWS, 1.0), r
    r = await conn.request({"type": "predict", "id": 2, "model": "hung", "inputs": ROWS})
    assert (r["type"], r["code"]) == ("error", "unknown_model") and "1: failed" in r["message"], r
    assert server.registry.abandoned_loads == 1
    # an admin reload of it meets the same timeout: answered, failed, a second thread abandoned
    reply = await conn.request({"type": "reload", "id": "r", "model": "hung"})
    assert reply.get("ok") is True and reply["versions"][0]["state"] == "failed", reply
    assert "did not load within 0.2 s (--model-load-timeout-s)" in reply["versions"][0]["reason"], reply
    assert server.registry.abandoned_loads == 2
    metrics_url = f"http://127.0.0.1:{server.port}/metrics"
    assert "wsserve_model_loads_abandoned 2.0" in (await asyncio.to_thread(http_get, metrics_url))[2].decode()

    # the abandoned load ends after all: its model is discarded (closed), not served
    event.set()
    await wait_until_async(lambda: server.registry.abandoned_loads == 0, 30, what="the abandoned load ended")
    assert "wsserve_model_loads_abandoned 0.0" in (await asyncio.to_thread(http_get, metrics_url))[2].decode()
    await wait_until_async(lambda: (hung / "closed.txt").exists(), 30, what="the late model was closed")
    versions = await _versions(conn)
    assert versions["hung"]["1"]["state"] == "failed", versions
    # a load (admin, from loopback) tries it again: it returns now
    reply = await conn.request({"type": "load", "id": "l", "model": "hung"})
    assert reply.get("ok") is True and reply["versions"] == [{"version": "1", "state": "ready"}], reply
    await conn.ws.close()


async def test_more_hung_loads_than_load_slots_do_not_stop_a_good_model(
    tmp_path: Path, gate: tuple[str, threading.Event], started: Any,
) -> None:
    repo = tmp_path / "repo"
    hung = _write_hung_models(repo, gate[0], [f"hung{i}" for i in range(LOAD_CONCURRENCY + 1)])
    _write_good(repo, "zgood")  # scanned (and queued) after the hung ones
    server = await started(repo)
    conn = await Conn.open(server.url)
    versions = await _versions(conn)
    for name in hung:
        state = versions[name]["1"]
        assert state["state"] == "failed", versions
        assert "did not load within 0.2 s (config.toml's model_load_timeout_s)" in state["reason"], state
    assert versions["zgood"]["1"]["state"] == "ready", versions
    r = await conn.request({"type": "predict", "id": 1, "model": "zgood", "inputs": ROWS})
    assert r["type"] == "result" and r["outputs"] == affine(ROWS, 1.0), r
    assert server.registry.abandoned_loads == len(hung)
    await conn.ws.close()


async def test_load_threads_are_bounded_and_a_refused_load_says_why(
    tmp_path: Path, gate: tuple[str, threading.Event], started: Any,
) -> None:
    key, event = gate
    repo = tmp_path / "repo"
    hung = _write_hung_models(repo, key, [f"hung{i:02d}" for i in range(MAX_LOAD_THREADS + 1)])
    server = await started(repo)
    conn = await Conn.open(server.url)
    versions = await _versions(conn)
    reasons = {name: versions[name]["1"].get("reason", "") for name in hung}
    assert all(versions[name]["1"]["state"] == "failed" for name in hung), versions
    timed_out = [n for n, r in reasons.items() if "did not load within 0.2 s" in r]
    refused = [n for n, r in reasons.items() if f"the most load threads there may be ({MAX_LOAD_THREADS}) are alive" in r]
    assert len(timed_out) == MAX_LOAD_THREADS and len(refused) == 1, reasons
    # (how many of the 8 are abandoned by then depends on which slot freed first: at least 4)
    assert "of them abandoned after their load timeout and still running (model 'hung" \
        in reasons[refused[0]], reasons
    assert len(_load_threads()) == MAX_LOAD_THREADS
    assert server.registry.abandoned_loads == MAX_LOAD_THREADS

    # once the hung loads end, the refused model loads
    event.set()
    await wait_until_async(lambda: server.registry.abandoned_loads == 0, 30, what="the abandoned loads ended")
    reply = await conn.request({"type": "load", "id": "l", "model": refused[0]})
    assert reply.get("ok") is True and reply["versions"] == [{"version": "1", "state": "ready"}], reply
    await conn.ws.close()


WARMING_PY = """
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from tests.support.load_gates import wait_gate


class TritonPythonModel:
    def initialize(self, args):
        self.dir = Path(args["model_repository"])

    def execute(self, requests):
        with open(self.dir / "executions.txt", "a") as f:
            f.write("x\\n")
        if (self.dir / "executions.txt").read_text().count("x") == 1:  # the first warm-up execution is held
            wait_gate((self.dir / "gate.txt").read_text().strip())
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]) for r in requests]
"""

WARMING_PBTXT = """name: "warming"
backend: "python"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
model_warmup [ { name: "many" batch_size: 4 count: 1000
                 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } } ]
"""


async def test_a_warm_up_past_the_load_timeout_stops_with_its_abandoned_load(
    tmp_path: Path, gate: tuple[str, threading.Event], started: Any,
) -> None:
    pytest.importorskip("tritonclient.grpc")  # config.pbtxt is read with Triton's protobuf messages
    key, event = gate
    model = tmp_path / "repo" / "warming"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(WARMING_PY)
    (model / "config.pbtxt").write_text(WARMING_PBTXT)
    (model / "gate.txt").write_text(key)
    server = await started(tmp_path / "repo", model_load_timeout_s=0.2)
    conn = await Conn.open(server.url)
    versions = await _versions(conn)
    assert "did not load within 0.2 s" in versions["warming"]["1"]["reason"], versions
    event.set()  # its first warm-up execution returns: the abandoned load stops, not running 999 more
    await wait_until_async(lambda: server.registry.abandoned_loads == 0, 30, what="the abandoned load ended")
    assert (model / "executions.txt").read_text().count("x") == 1
    await conn.ws.close()


#: A decoupled model that never sends FINAL: its warm-up request stays open until the model sees
#: it cancelled (then it writes ``cancelled.txt``).
NEVER_FINAL_PY = """
import threading
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.dir = Path(args["model_repository"])

    def execute(self, requests):
        sender = requests[0].get_response_sender()

        def run():
            while not sender.is_cancelled():
                threading.Event().wait(0.01)
            (self.dir / "cancelled.txt").touch()

        threading.Thread(target=run, daemon=True).start()
"""


async def test_a_decoupled_warm_up_never_final_ends_with_its_abandoned_load(tmp_path: Path, started: Any) -> None:
    """A decoupled model's ``model_warmup`` request waits for its FINAL; a model that never sends it
    holds the load until its timeout, and the abandoned load then ends, the model seeing its
    warm-up request cancelled."""
    pytest.importorskip("tritonclient.grpc")
    model = tmp_path / "repo" / "never"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(NEVER_FINAL_PY)
    (model / "config.pbtxt").write_text(WARMING_PBTXT.replace('"warming"', '"never"').replace(
        "max_batch_size: 4\n", "max_batch_size: 4\nmodel_transaction_policy { decoupled: true }\n"))
    server = await started(tmp_path / "repo", model_load_timeout_s=0.2)
    conn = await Conn.open(server.url)
    versions = await _versions(conn)
    assert "did not load within 0.2 s" in versions["never"]["1"]["reason"], versions
    await wait_until_async(lambda: server.registry.abandoned_loads == 0, 30, what="the abandoned load ended")
    await wait_until_async(lambda: (model / "cancelled.txt").exists(), 30, what="the model saw its request cancelled")
    await conn.ws.close()
