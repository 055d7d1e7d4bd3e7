"""A repository model's queue policy (Triton's ``dynamic_batching.default_queue_policy``), served:
``max_queue_requests`` bounds the requests waiting in its queue (the next one is ``overloaded``,
the others are unaffected), and ``default_timeout_ms`` is the queue deadline of requests without
one (and, with ``allow_timeout_override = false``, of those asking for more). The model is held by
a gate (:data:`~tests.repo_models.GATED_PY`) so that what is queued is known, not timed; Triton's
configuration extension reports the policy.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from tests.repo_models import AFFINE_CONFIG, GATED_PY, affine, write_affine
from tests.support import Conn, ServerProcess, http_get, wait_until

ROWS = [[1.0, 2.0, 3.0]]
HELD = [[-1.0, 0.0, 0.0]]


def _repository(tmp_path: Path, policy: str) -> tuple[Path, Path]:
    repo, gate = tmp_path / "repository", tmp_path / "gate"
    (repo / "q").mkdir(parents=True)
    (repo / "q" / "config.toml").write_text(AFFINE_CONFIG + "max_batch_size = 1\n" + policy)
    write_affine(repo / "q" / "1", bias=1.0, source=GATED_PY, **{"gate.txt": str(gate)})
    return repo, gate


async def test_max_queue_requests_refuses_the_next_request_and_serves_the_queued_ones(tmp_path: Path) -> None:
    import tritonclient.grpc as tgrpc

    from tests.test_grpc import grpc_address

    repo, gate = _repository(tmp_path, "max_queue_requests = 1\n")
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--grpc-port", "0") as server:
        status, _, body = http_get(server.http + "/v2/models/q/config")
        assert status == 200
        assert orjson.loads(body)["dynamic_batching"]["default_queue_policy"] == {
            "timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": True,
            "max_queue_size": 1}
        client = tgrpc.InferenceServerClient(grpc_address(server))
        try:  # the same configuration over gRPC, as Triton's ModelConfig message
            policy = client.get_model_config("q").config.dynamic_batching.default_queue_policy
            assert (policy.max_queue_size, policy.allow_timeout_override) == (1, True)
        finally:
            client.close()
        conn = await Conn.open(server.url)
        try:
            await conn.send({"type": "predict", "id": "held", "model": "q", "inputs": HELD})
            wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="the held predict is computing")
            await conn.send({"type": "predict", "id": "queued", "model": "q", "inputs": ROWS})
            await conn.send({"type": "predict", "id": "refused", "model": "q", "inputs": ROWS})
            (refused,) = (await conn.collect({"refused"}))["refused"]
            assert (refused["type"], refused["code"]) == ("error", "overloaded"), refused
            assert refused["message"] == "queue full: 1 requests queued, limit 1 (max_queue_requests)"
            gate.touch()
            frames = await conn.collect({"held", "queued"})
            assert [frames[i][-1]["type"] for i in ("held", "queued")] == ["result", "result"], frames
            assert frames["queued"][-1]["outputs"] == affine(ROWS, 1.0)
        finally:
            gate.touch()
            await conn.close()


async def test_default_timeout_is_the_queue_deadline_and_without_override_a_longer_one_is_cut(tmp_path: Path) -> None:
    repo, gate = _repository(tmp_path, "default_timeout_ms = 20\nallow_timeout_override = false\n")
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as server:
        status, _, body = http_get(server.http + "/v2/models/q/config")
        assert status == 200
        assert orjson.loads(body)["dynamic_batching"]["default_queue_policy"] == {
            "timeout_action": "REJECT", "default_timeout_microseconds": 20000, "allow_timeout_override": False,
            "max_queue_size": 0}
        conn = await Conn.open(server.url)
        try:
            await conn.send({"type": "predict", "id": "held", "model": "q", "inputs": HELD})
            wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="the held predict is computing")
            await conn.send({"type": "predict", "id": "none", "model": "q", "inputs": ROWS})
            await conn.send({"type": "predict", "id": "longer", "model": "q", "inputs": ROWS, "timeout_ms": 600000})
            sent = time.monotonic()
            wait_until(lambda: time.monotonic() > sent + 0.1, 5, what="the default timeout has passed")
            gate.touch()  # the model is free: the queued requests are past their deadline
            frames = await conn.collect({"held", "none", "longer"})
            assert frames["held"][-1]["type"] == "result"
            for rid in ("none", "longer"):
                assert (frames[rid][-1]["type"], frames[rid][-1]["code"]) == ("error", "deadline_exceeded"), frames[rid]
            r = await conn.request({"type": "predict", "id": "after", "model": "q", "inputs": ROWS})
            assert r["type"] == "result" and r["outputs"] == affine(ROWS, 1.0)  # an idle model serves at once
        finally:
            gate.touch()
            await conn.close()
