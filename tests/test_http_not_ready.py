"""A model (or version) that exists but cannot serve, on every HTTP model route, on a real server.

As KServe's ModelNotReady: an unknown model or version is 404, one that exists but is not ready
(failed, loading, unloading; a model with no ready version) is 503 on the work and description
routes (OIP v2 ``infer``, metadata, ``config``, ``stats``; Triton's ``generate``; OpenAI's
``/v1/completions`` and ``/v1/chat/completions``), and 400 on OIP's ``/ready`` (Triton's "not
ready", as ``/v2/health/ready``), so a client tells "not ready yet" from "no such model".

The repository: ``named`` (version 1 serves, version 2 fails to load), ``broken`` (its only
version fails), ``gen`` (generative: version 1 serves, version 2 fails), ``badgen`` (generative,
its only version fails); a model moved in while the server runs is held ``loading`` with a gate
file (tests/repo_models.py ``GATED_PY``), so the test decides when it becomes ready.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_models import (
    AFFINE_CONFIG,
    BIGRAM_CONFIG,
    BIGRAM_PY,
    GATED_PY,
    NAMED_CONFIG,
    NAMED_PY,
    RAISES_PY,
    write_affine,
    write_py,
)
from tests.repo_wire import states, wait_models, wait_watching
from tests.support import RawHttp, ServerProcess, wait_until


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, module_transport: str) -> Path:
    """A repository per server (one per transport): a test adds a model to it."""
    root: Path = tmp_path_factory.mktemp("repository")
    for name, config in (("named", NAMED_CONFIG), ("broken", NAMED_CONFIG), ("gen", BIGRAM_CONFIG),
                         ("badgen", BIGRAM_CONFIG)):
        (root / name).mkdir()
        (root / name / "config.toml").write_text(config)
    write_py(root / "named" / "1", NAMED_PY)
    write_py(root / "named" / "2", RAISES_PY)
    write_py(root / "broken" / "1", RAISES_PY)
    write_py(root / "gen" / "1", BIGRAM_PY, **{"seed.txt": "20"})
    write_py(root / "gen" / "2", RAISES_PY)
    write_py(root / "badgen" / "1", RAISES_PY)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, module_transport: str) -> Iterator[ServerProcess]:
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload",
                       transport=module_transport) as srv:
        wait_watching(srv, repo)
        yield srv


def request(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """``method path`` (a JSON body if given) on a fresh connection -> ``(status, body)``."""
    raw = None if body is None else json.dumps(body).encode()
    with RawHttp(server.port) as c:
        a = c.request(method, path, raw, {"Content-Type": "application/json"} if raw is not None else None)
    return a.status, a.body


NAMED_INFER = {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]},
                          {"name": "b", "shape": [1, 1], "datatype": "FP64", "data": [3]}]}
GENERATE = {"text_input": "ab", "max_tokens": 2}
NO_READY = "model 'broken' has no ready version (1: failed)"
V2_FAILED = "version '2' of model 'named' is failed ("


@pytest.mark.parametrize("method,path,body,status,message", [
    ("POST", "/v2/models/broken/infer", NAMED_INFER, 503, NO_READY),
    ("POST", "/v2/models/named/versions/2/infer", NAMED_INFER, 503, V2_FAILED),
    ("GET", "/v2/models/broken", None, 503, NO_READY),
    ("GET", "/v2/models/named/versions/2", None, 503, V2_FAILED),
    ("GET", "/v2/models/broken/config", None, 503, NO_READY),
    ("GET", "/v2/models/named/versions/2/config", None, 503, V2_FAILED),
    ("GET", "/v2/models/broken/stats", None, 503, NO_READY),
    ("GET", "/v2/models/named/versions/2/stats", None, 503, V2_FAILED),
    ("POST", "/v2/models/badgen/generate", GENERATE, 503, "model 'badgen' has no ready version (1: failed)"),
    ("POST", "/v2/models/gen/versions/2/generate_stream", GENERATE, 503, "version '2' of model 'gen' is failed ("),
    # unknown: still 404
    ("POST", "/v2/models/named/versions/3/infer", NAMED_INFER, 404, "model 'named' has no version '3'; available: 1, 2"),
    ("POST", "/v2/models/nope/infer", NAMED_INFER, 404, "no model named 'nope'"),
    ("GET", "/v2/models/named/versions/3", None, 404, "model 'named' has no version '3'"),
    ("GET", "/v2/models/nope/config", None, 404, "no model named 'nope'"),
    ("GET", "/v2/models/named/versions/3/stats", None, 404, "model 'named' has no version '3'"),
    ("POST", "/v2/models/gen/versions/3/generate", GENERATE, 404, "model 'gen' has no version '3'"),
    ("POST", "/v2/models/nope/generate", GENERATE, 404, "no model named 'nope'"),
])
def test_oip_routes_answer_503_for_a_model_that_is_not_ready_404_for_an_unknown_one(
        server: ServerProcess, method: str, path: str, body: Any, status: int, message: str) -> None:
    got_status, raw = request(server, method, path, body)
    got = json.loads(raw)
    assert got_status == status and list(got) == ["error"] and got["error"].startswith(message), (got_status, got)


def test_the_ready_versions_still_serve(server: ServerProcess) -> None:
    status, raw = request(server, "POST", "/v2/models/named/infer", NAMED_INFER)
    assert status == 200 and json.loads(raw)["model_version"] == "1", raw
    status, raw = request(server, "POST", "/v2/models/gen/generate", GENERATE)
    assert status == 200 and json.loads(raw)["model_version"] == "1", raw
    status, raw = request(server, "POST", "/v1/completions", {"model": "gen", "prompt": "ab", "max_tokens": 2})
    assert status == 200 and len(json.loads(raw)["choices"][0]["text"]) == 2, raw


@pytest.mark.parametrize("path,status", [
    ("/v2/models/named/ready", 200),
    ("/v2/models/named/versions/1/ready", 200),
    ("/v2/models/named/versions/2/ready", 400),
    ("/v2/models/broken/ready", 400),
    ("/v2/models/badgen/ready", 400),
    ("/v2/models/named/versions/3/ready", 404),
    ("/v2/models/nope/ready", 404),
])
def test_model_ready_is_400_for_a_model_that_is_not_ready_404_for_an_unknown_one(
        server: ServerProcess, path: str, status: int) -> None:
    """Triton's model readiness: 400 with no body when not ready (as ``/v2/health/ready``), but
    an unknown model or version stays a 404 with the OIP error."""
    got_status, raw = request(server, "GET", path)
    assert got_status == status, (got_status, raw)
    if status == 404:
        assert list(json.loads(raw)) == ["error"]
    else:
        assert raw == b""


@pytest.mark.parametrize("route,body", [
    ("/v1/completions", {"prompt": "ab"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "ab"}]}),
])
def test_openai_routes_answer_503_for_a_model_that_is_not_ready_404_for_an_unknown_one(
        server: ServerProcess, route: str, body: dict[str, Any]) -> None:
    """OpenAI's envelope: a 503 is a ``server_error`` (as ``overloaded``), ``code`` the wire code,
    ``param`` the field naming the model (as for an unknown model, a 404 ``invalid_request_error``)."""
    status, raw = request(server, "POST", route, {"model": "badgen", "max_tokens": 2, **body})
    assert status == 503, raw
    assert json.loads(raw) == {"error": {"message": "model 'badgen' has no ready version (1: failed)",
                                         "type": "server_error", "param": "model", "code": "unknown_model"}}
    status, raw = request(server, "POST", route, {"model": "nope", "max_tokens": 2, **body})
    error = json.loads(raw)["error"]
    assert status == 404 and (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "model", "unknown_model"), raw
    assert error["message"].startswith("no model named 'nope'")


def test_the_openai_sdk_sees_a_server_error(server: ServerProcess) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=30) as client:
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="badgen", messages=[{"role": "user", "content": "ab"}])
    assert info.value.status_code == 503 and info.value.body["code"] == "unknown_model"


def test_a_model_held_loading_is_503_then_serves(server: ServerProcess, repo: Path, tmp_path: Path) -> None:
    """A model whose only version is still loading (its ``Model()`` held by a gate): 503 on the work
    and description routes, 400 on ``/ready``; once loaded, 200 on all of them."""
    gate = tmp_path / "init"
    build = repo / ".held.tmp"
    build.mkdir()
    (build / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(build / "1", bias=1.0, source=GATED_PY, **{"gate.txt": str(tmp_path / "unused"),
                                                             "init_gate.txt": str(gate)})
    os.rename(build, repo / "held")
    try:
        wait_models(server, "held", "version 1 loading", lambda e: states(e) == {"1": "loading"})
        wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="Model() of version 1 started")
        infer = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}
        for method, path, body in (("POST", "/v2/models/held/infer", infer), ("GET", "/v2/models/held", None),
                                   ("POST", "/v2/models/held/versions/1/infer", infer)):
            status, raw = request(server, method, path, body)
            assert status == 503, (path, status, raw)
        assert json.loads(raw) == {"error": "version '1' of model 'held' is loading"}
        assert request(server, "GET", "/v2/models/held/ready") == (400, b"")
        assert request(server, "GET", "/v2/models/held/versions/1/ready") == (400, b"")
    finally:
        gate.touch()
    wait_models(server, "held", "version 1 ready", lambda e: states(e) == {"1": "ready"})
    status, raw = request(server, "POST", "/v2/models/held/infer", infer)
    assert status == 200 and json.loads(raw)["outputs"][0]["data"] == [15.0], raw
    assert request(server, "GET", "/v2/models/held/ready") == (200, b"")
