"""A Triton model's per-level queue policies, served (config.pbtxt ``dynamic_batching {
priority_queue_policy [ { key: <level> value: { ... } } ] }``): a level's own ``max_queue_size``
bounds that level in place of the ``default_queue_policy``'s, and its ``default_timeout_microseconds``
/ ``allow_timeout_override`` are the queue deadline of the requests queued there; the levels without
a policy keep the default one.  Triton's clients send the priorities; the model is held by one
request (see :mod:`tests.test_repo_wire_priority`), so what is queued is known, not timed.  The
configuration extension reports the policies over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from wsserve_client import Client, DeadlineExceeded, OverloadedError, WsserveError  # noqa: E402

from tests.support import ServerProcess, http_get, wait_until, wait_until_async  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repo_wire_priority import (  # noqa: E402
    LOGGED_PY,
    PBTXT,
    _answered,
    _calls,
    _grpc_input,
    _x,
)

#: Level 1 holds 2 requests (the default policy: 1 a level); level 3 cuts a request's queue
#: deadline to 20 ms, its own timeout refused (allow_timeout_override false).
POLICIES = PBTXT + """dynamic_batching { priority_levels: 3 default_priority_level: 2
  default_queue_policy { max_queue_size: 1 }
  priority_queue_policy [
    { key: 1 value: { max_queue_size: 2 } },
    { key: 3 value: { default_timeout_microseconds: 20000 allow_timeout_override: false } } ] }
"""


#: A decoupled model with the same policies, applied as to the others: x[0, 0] == -1 holds its
#: execute until the file ``gate`` exists (``gate.started`` says it began); each execute logs its
#: request's x[0, 0] (``calls.jsonl``), then sends one response and FINAL.
DECOUPLED_PY = """
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.dir = args["model_repository"]

    def execute(self, requests):
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            with open(os.path.join(self.dir, "calls.jsonl"), "a") as f:
                f.write(json.dumps([float(x[0, 0])]) + "\\n")
            if x[0, 0] == -1:
                open(os.path.join(self.dir, "gate.started"), "w").close()
                while not os.path.exists(os.path.join(self.dir, "gate")):
                    time.sleep(0.005)
            r.get_response_sender().send(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]),
                                         flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("priority_policy") / "model_repository"
    (root / "policies" / "1").mkdir(parents=True)
    (root / "policies" / "config.pbtxt").write_text(POLICIES)
    (root / "policies" / "1" / "model.py").write_text(LOGGED_PY)
    (root / "streamed" / "1").mkdir(parents=True)
    (root / "streamed" / "config.pbtxt").write_text(POLICIES + "model_transaction_policy { decoupled: true }\n")
    (root / "streamed" / "1" / "model.py").write_text(DECOUPLED_PY)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, root
    finally:
        (root / "policies" / "gate").touch()  # a failed test never leaves an execute held
        (root / "streamed" / "gate").touch()
        proc.stop()


def _hold(client: Any, root: Path, results: dict[str, Any]) -> None:
    (root / "policies" / "gate").unlink(missing_ok=True)
    (root / "policies" / "gate.started").unlink(missing_ok=True)
    client.async_infer("policies", [_grpc_input(-1)], partial(_answered, results, "held"), request_id="held")
    wait_until(lambda: (root / "policies" / "gate.started").exists(), 60, what="the held execute started")


def _queue(proc: ServerProcess, client: Any, results: dict[str, Any], rid: str, priority: int, depth: int) -> None:
    client.async_infer("policies", [_grpc_input(depth)], partial(_answered, results, rid), request_id=rid,
                       priority=priority)
    wait_until(lambda: rid in results or proc.metrics().get("wsserve_queue_depth", model="policies") == depth, 60,
               what=f"{rid} queued")
    assert rid not in results, results[rid]  # queued, not refused


def test_a_levels_own_max_queue_size_bounds_it_and_the_others_keep_the_default(served) -> None:
    proc, root = served
    client = tgrpc.InferenceServerClient(grpc_address(proc))
    results: dict[str, Any] = {}
    before = len(_calls(root, "policies"))
    try:
        _hold(client, root, results)
        _queue(proc, client, results, "top1", 1, 1)
        _queue(proc, client, results, "top2", 1, 2)  # level 1's own bound: 2 (the default policy's is 1)
        _queue(proc, client, results, "mid", 0, 3)
        for rid, priority, level, limit in (("top3", 1, 1, 2), ("mid2", 2, 2, 1)):
            with pytest.raises(tgrpc.InferenceServerException) as refused:
                client.infer("policies", [_grpc_input(9)], request_id=rid, priority=priority)
            assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"  # overloaded
            assert f"requests queued at priority level {level}, limit {limit}" in refused.value.message()
        (root / "policies" / "gate").touch()
        wait_until(lambda: len(results) == 4, 60, what="every request answered")
    finally:
        (root / "policies" / "gate").touch()
        client.close()
    assert all(err is None for _, err in results.values()), results
    assert _calls(root, "policies")[before:] == ["held", "top1", "top2", "mid"]


def test_a_levels_own_default_timeout_is_the_deadline_of_its_requests_only(served) -> None:
    """Level 3's 20 ms (no override: a request asking for 10 minutes gets 20 ms too); a level-2
    request, queued under the default policy (no timeout), waits as long as the model is held."""
    proc, root = served
    client = tgrpc.InferenceServerClient(grpc_address(proc))
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    results: dict[str, Any] = {}
    before = len(_calls(root, "policies"))
    try:
        _hold(client, root, results)
        _queue(proc, client, results, "low", 3, 1)
        inp = thttp.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(_x(2))
        low_http = http.async_infer("policies", [inp], request_id="low-http", priority=3, timeout=600_000_000)
        wait_until(lambda: proc.metrics().get("wsserve_queue_depth", model="policies") == 2, 60, what="low-http queued")
        _queue(proc, client, results, "mid", 2, 3)
        sent = time.monotonic()
        wait_until(lambda: time.monotonic() > sent + 0.1, 5, what="level 3's default timeout has passed")
        (root / "policies" / "gate").touch()
        wait_until(lambda: len(results) == 3, 60, what="the gRPC requests answered")
        with pytest.raises(thttp.InferenceServerException) as late:
            low_http.get_result()
        assert "deadline" in str(late.value).lower(), late.value
    finally:
        (root / "policies" / "gate").touch()
        client.close()
        http.close()
    assert results["held"][1] is None and results["mid"][1] is None, results
    err = results["low"][1]
    assert err is not None and "deadline" in err.message().lower(), err
    assert _calls(root, "policies")[before:] == ["held", "mid"]


def test_the_configuration_reports_each_levels_policy(served) -> None:
    proc, _ = served
    status, _, body = http_get(f"{proc.http}/v2/models/policies/config")
    assert status == 200
    db = orjson.loads(body)["dynamic_batching"]
    assert db["default_queue_policy"]["max_queue_size"] == 1
    assert db["priority_queue_policy"] == {
        "1": {"timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": False,
              "max_queue_size": 2},
        "3": {"timeout_action": "REJECT", "default_timeout_microseconds": 20000, "allow_timeout_override": False,
              "max_queue_size": 0}}
    client = tgrpc.InferenceServerClient(grpc_address(proc))
    try:
        policies = client.get_model_config("policies").config.dynamic_batching.priority_queue_policy
        assert sorted(policies) == [1, 3]
        assert (policies[1].max_queue_size, policies[3].default_timeout_microseconds) == (2, 20000)
    finally:
        client.close()


async def test_a_decoupled_models_levels_and_their_policies_are_applied(served) -> None:
    """A decoupled model's requests wait by level as the others' do (Triton's dynamic batcher holds
    them): each level in the order it came, level 1 first; a level's own ``max_queue_size`` bounds
    it (level 1: 2), the default policy's the others (1 each); level 3's 20 ms queue timeout ends a
    request still waiting (its own longer timeout not taken), not the ones that started."""
    proc, root = served
    model = root / "streamed"
    (model / "gate").unlink(missing_ok=True)
    before = len(_calls(root, "streamed")) if (model / "calls.jsonl").exists() else 0
    results: dict[str, Any] = {}

    async def run(client: Client, rid: str, first: float, priority: int, timeout: float | None = None) -> None:
        try:
            got = [r async for r in client.predict_responses("streamed", [[first, 0.0]], priority=priority,
                                                              timeout=timeout)]
            results[rid] = got
        except WsserveError as exc:
            results[rid] = exc

    def depth() -> float | None:
        return proc.metrics().get("wsserve_queue_depth", model="streamed")

    async with Client(proc.url) as client:
        tasks = [asyncio.create_task(run(client, "held", -1, 0))]
        await wait_until_async(lambda: (model / "gate.started").exists(), 60, what="the held execute started")
        for rid, priority, want in (("mid", 0, 1), ("top1", 1, 2), ("top2", 1, 3)):
            tasks.append(asyncio.create_task(run(client, rid, want + 1, priority)))  # x[0, 0]: 2, 3, 4
            await wait_until_async(lambda want=want: rid in results or depth() == want, 60, what=f"{rid} queued")
            assert rid not in results, results[rid]
        for rid, priority, level, limit in (("top3", 1, 1, 2), ("mid2", 2, 2, 1)):
            await run(client, rid, 1, priority)
            assert isinstance(results[rid], OverloadedError), results[rid]
            assert f"requests wait for an instance at priority level {level} (max_queue_requests={limit})" in str(
                results[rid])
        await run(client, "low", 1, 3, timeout=600.0)  # waits 20 ms at level 3, then ends
        assert isinstance(results["low"], DeadlineExceeded) and "queue timeout" in str(results["low"]), results["low"]
        (model / "gate").touch()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert all(isinstance(results[rid], list) and len(results[rid]) == 1 for rid in ("held", "mid", "top1", "top2"))
    assert _calls(root, "streamed")[before:] == [-1, 3, 4, 2]  # held, top1, top2, mid
    assert "is decoupled: its requests wait" not in proc.stderr_text()  # the old warning: nothing is ignored now

