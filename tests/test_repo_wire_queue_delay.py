"""A Triton model's ``timeout_action: DELAY`` queue policies, served (config.pbtxt ``dynamic_batching {
default_queue_policy { ... timeout_action: DELAY } priority_queue_policy [ ... ] }``): a request whose
queue timeout passes while it waits is not refused but served after every request of its level whose
timeout has not passed (Triton core's ``PolicyQueue::delayed_queue_``), still ahead of the lower
levels; its own deadline (``timeout``), when longer than the policy's, still ends it.  The model is
held by one request (see :mod:`tests.test_repo_wire_priority`), so what is queued is known; the wait
past the policy's timeout is a predicate on the clock, and the order is read from the model's log."""

from __future__ import annotations

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

from tests.support import ServerProcess, http_get, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repo_wire_priority import (  # noqa: E402
    LOGGED_PY,
    PBTXT,
    _answered,
    _calls,
    _grpc_input,
    _x,
)

#: Both levels delay a request queued for 2 s (level 1 by its own policy, level 2 by the default one);
#: a request's own timeout does not shorten it (allow_timeout_override false).
DELAYING = PBTXT + """dynamic_batching { priority_levels: 2 default_priority_level: 2
  default_queue_policy { default_timeout_microseconds: 2000000 timeout_action: DELAY max_queue_size: 8 }
  priority_queue_policy [
    { key: 1 value: { default_timeout_microseconds: 2000000 timeout_action: DELAY max_queue_size: 4 } } ] }
"""
POLICY_S = 2.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("queue_delay") / "model_repository"
    (root / "delaying" / "1").mkdir(parents=True)
    (root / "delaying" / "config.pbtxt").write_text(DELAYING)
    (root / "delaying" / "1" / "model.py").write_text(LOGGED_PY)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, root
    finally:
        (root / "delaying" / "gate").touch()  # a failed test never leaves an execute held
        proc.stop()


def _depth(proc: ServerProcess) -> Any:
    return proc.metrics().get("wsserve_queue_depth", model="delaying")


def _queue(proc: ServerProcess, client: Any, results: dict[str, Any], rid: str, priority: int, depth: int) -> None:
    client.async_infer("delaying", [_grpc_input(depth)], partial(_answered, results, rid), request_id=rid,
                       priority=priority)
    wait_until(lambda: rid in results or _depth(proc) == depth, 60, what=f"{rid} queued")
    assert rid not in results, results[rid]  # queued, not refused


def test_a_request_past_its_queue_timeout_is_served_after_its_levels_fresh_ones_not_refused(served) -> None:
    proc, root = served
    client = tgrpc.InferenceServerClient(grpc_address(proc))
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    results: dict[str, Any] = {}
    before = len(_calls(root, "delaying")) if (root / "delaying" / "calls.jsonl").exists() else 0
    try:
        (root / "delaying" / "gate").unlink(missing_ok=True)
        client.async_infer("delaying", [_grpc_input(-1)], partial(_answered, results, "held"), request_id="held")
        wait_until(lambda: (root / "delaying" / "gate.started").exists(), 60, what="the held execute started")
        _queue(proc, client, results, "top-old", 1, 1)
        _queue(proc, client, results, "low-old", 2, 2)
        inp = thttp.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(_x(3))
        # its own deadline, 3 s, outlasts the policy's 2 s: delayed at 2 s, ended at 3 s
        doomed = http.async_infer("delaying", [inp], request_id="low-doomed", priority=2, timeout=3_000_000)
        wait_until(lambda: _depth(proc) == 3, 60, what="low-doomed queued")
        queued = time.monotonic()
        wait_until(lambda: time.monotonic() > queued + 1.5 * POLICY_S, 10,
                   what="the old requests' queue timeout and low-doomed's own deadline have passed")
        _queue(proc, client, results, "low-fresh", 2, 4)
        _queue(proc, client, results, "top-fresh", 1, 5)
        (root / "delaying" / "gate").touch()
        wait_until(lambda: len(results) == 5, 60, what="the gRPC requests answered")
        with pytest.raises(thttp.InferenceServerException) as late:
            doomed.get_result()
        assert "deadline" in str(late.value).lower(), late.value
    finally:
        (root / "delaying" / "gate").touch()
        client.close()
        http.close()
    assert all(err is None for _, err in results.values()), results  # delayed, not refused
    assert _calls(root, "delaying")[before:] == ["held", "top-fresh", "top-old", "low-fresh", "low-old"]


def test_the_configuration_reports_delay(served) -> None:
    proc, _ = served
    status, _, body = http_get(f"{proc.http}/v2/models/delaying/config")
    assert status == 200, body
    db = orjson.loads(body)["dynamic_batching"]
    assert db["default_queue_policy"] == {"timeout_action": "DELAY", "default_timeout_microseconds": 2000000,
                                          "allow_timeout_override": False, "max_queue_size": 8}
    assert db["priority_queue_policy"] == {"1": {"timeout_action": "DELAY", "default_timeout_microseconds": 2000000,
                                                 "allow_timeout_override": False, "max_queue_size": 4}}
    client = tgrpc.InferenceServerClient(grpc_address(proc))
    try:
        config = client.get_model_config("delaying").config.dynamic_batching
        delay = type(config.default_queue_policy).DELAY
        assert config.default_queue_policy.timeout_action == delay
        assert config.priority_queue_policy[1].timeout_action == delay
    finally:
        client.close()
