"""A load request's ``config`` (Triton's model repository extension): ``tritonclient``'s
``load_model(name, config=...)`` over HTTP and gRPC against a real server on loopback.

The repository holds ``scaled``, a Triton Python backend model with versions 1 and 2 whose
answer shows the configuration it was loaded with (``Y = X * scale + version``, ``scale`` a
config ``parameters`` entry).  A load with a config serves the model with it (its version
policy, batch size and parameters); a bad one changes nothing; a load without one goes back to
the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import ServerProcess, wait_until

grpc = pytest.importorskip("grpc")  # the grpc extra installs it
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.test_grpc import grpc_address  # noqa: E402

PBTXT = """name: "scaled"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
parameters { key: "scale" value: { string_value: "2" } }
"""

MODEL_PY = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.scale = float(config["parameters"]["scale"]["string_value"])
        self.version = float(args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = (x * self.scale + self.version).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("Y", y)]))
        return responses
'''


def override(scale: str, *, max_batch_size: int = 4, policy: dict[str, Any] | None = None, **extra: Any) -> str:
    """Triton's JSON model configuration (what ``load_model(config=...)`` sends)."""
    return json.dumps({
        "name": "scaled", "backend": "python", "max_batch_size": max_batch_size,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}],
        "parameters": {"scale": {"string_value": scale}},
        "version_policy": policy if policy is not None else {"all": {}}, **extra})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("load-config") / "repository"
    model = root / "scaled"
    for version in ("1", "2"):
        (model / version).mkdir(parents=True)
        (model / version / "model.py").write_text(MODEL_PY)
    (model / "config.pbtxt").write_text(PBTXT)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    yield proc, grpc_address(proc)
    proc.stop()


X = np.array([[1.0, -2.0]], dtype=np.float32)


def infer(client: Any, version: str = "") -> list[float]:
    inp = thttp.InferInput("X", [1, 2], "FP32")
    inp.set_data_from_numpy(X)
    return client.infer("scaled", [inp], model_version=version).as_numpy("Y")[0].tolist()


def batch_rows(client: Any) -> str:
    """The rows of one execution of the default version (its config's ``max_batch_size``, which
    the answered ``max_batch_size`` says too)."""
    return client.get_model_config("scaled")["parameters"]["max_batch_rows"]["string_value"]


def expect(scale: float, version: int) -> list[float]:
    return (X[0] * scale + version).tolist()


def test_load_with_a_config_serves_it_until_a_load_without_one(served: tuple[ServerProcess, str]) -> None:
    proc, address = served
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    gclient = tgrpc.InferenceServerClient(address)
    try:
        # the files: the latest version only, scale 2, batches of 8
        assert infer(http) == expect(2, 2)
        assert not http.is_model_ready("scaled", "1")
        assert batch_rows(http) == "8"

        http.load_model("scaled", config=override("5"))
        assert http.is_model_ready("scaled", "1") and http.is_model_ready("scaled", "2")
        assert infer(http, "1") == expect(5, 1) and infer(http, "2") == expect(5, 2)
        assert batch_rows(http) == "4"

        # a bad config is refused naming the problem; the model keeps serving what it served
        with pytest.raises(InferenceServerException, match="'name'.* is 'other' but the model's directory is 'scaled'"):
            http.load_model("scaled", config=override("7", name="other"))
        with pytest.raises(InferenceServerException, match="not a valid Triton model configuration in JSON"):
            http.load_model("scaled", config='{"max_batch_size": 4, "colour": "red"}')
        with pytest.raises(InferenceServerException, match="max_batch_size"):
            http.load_model("scaled", config=override("7", max_batch_size=-1))
        assert infer(http, "1") == expect(5, 1)

        # gRPC (string_param), and a policy of one version: the other one stops
        gclient.load_model("scaled", config=override("3", policy={"specific": {"versions": [1]}}))
        assert infer(http, "1") == expect(3, 1)
        assert not http.is_model_ready("scaled", "2")

        # a load without a config: back to the files (their policy, scale and batch size)
        http.load_model("scaled")
        assert infer(http) == expect(2, 2)
        assert not http.is_model_ready("scaled", "1")
        assert batch_rows(http) == "8"
    finally:
        http.close()
        gclient.close()


def test_a_config_that_fails_to_load_is_an_error_and_the_model_keeps_serving(
        served: tuple[ServerProcess, str]) -> None:
    """A config that parses but whose model fails to load (``initialize`` raises on its scale)
    is answered as the failed load it is, naming the version; the versions the model served keep
    serving with what they had, the others its policy leaves out are not stopped."""
    proc, _ = served
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    try:
        http.load_model("scaled")
        assert infer(http) == expect(2, 2)
        # version 2, served: its reload fails, it keeps serving the files' config
        with pytest.raises(InferenceServerException, match="load failed for model 'scaled': version 2"):
            http.load_model("scaled", config=override("not a number", policy={"latest": {"num_versions": 1}}))
        assert infer(http) == expect(2, 2)
        # version 1, not served: it fails, and version 2 (which the policy leaves out) still serves
        with pytest.raises(InferenceServerException, match="load failed for model 'scaled': version 1"):
            http.load_model("scaled", config=override("not a number", policy={"specific": {"versions": [1]}}))
        assert http.is_model_ready("scaled", "2")
        assert infer(http, "2") == expect(2, 2)
        http.load_model("scaled")
        assert infer(http) == expect(2, 2)
    finally:
        http.close()


def test_hot_reload_keeps_a_config_until_its_config_file_changes(tmp_path: Path) -> None:
    """Under ``--reload`` a rescan (here: another model's files change) leaves a model loaded with
    a request's config as it is (its policy's versions, its parameters); a change of its own
    config file reloads it from its files."""
    from tests.repo_models import AFFINE_CONFIG, write_affine
    from tests.repo_wire import wait_watching

    root = tmp_path / "repository"
    model = root / "scaled"
    for version in ("1", "2"):
        (model / version).mkdir(parents=True)
        (model / version / "model.py").write_text(MODEL_PY)
    (model / "config.pbtxt").write_text(PBTXT)
    (root / "other").mkdir()
    (root / "other" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "other" / "1", bias=0.0)
    proc = ServerProcess("--models", "none", "--model-repository", str(root), "--reload")
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    try:
        wait_watching(proc, root)
        http.load_model("scaled", config=override("5"))
        assert infer(http, "1") == expect(5, 1) and infer(http, "2") == expect(5, 2)

        def other_loads() -> int:
            return proc.stderr_text().count("serving model 'other' version 1")

        before = other_loads()
        write_affine(root / "other" / "1", bias=1.0)  # a rescan: 'other' reloads
        wait_until(lambda: other_loads() > before, 30.0, what="'other' reloaded")
        assert http.is_model_ready("scaled", "1")
        assert infer(http, "1") == expect(5, 1) and infer(http, "2") == expect(5, 2)

        (model / "config.pbtxt").write_text(PBTXT.replace('string_value: "2"', 'string_value: "3"'))
        wait_until(lambda: not http.is_model_ready("scaled", "1") and infer(http) == expect(3, 2), 30.0,
                   what="'scaled' reloaded from its changed config file")
    finally:
        http.close()
        proc.stop()


ENSEMBLE = json.dumps({
    "name": "scaled", "platform": "ensemble", "max_batch_size": 8,
    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}],
    "ensemble_scheduling": {"step": [{"model_name": "double", "model_version": -1, "input_map": {"X": "X"},
                                      "output_map": {"Y": "Y"}}]}})


def test_a_config_that_made_a_model_an_ensemble_is_gone_with_it(tmp_path: Path) -> None:
    """A model loaded with a config that makes it an ensemble runs its step; loaded again
    without one it is the files' model, and stays so when that step model changes (it was then
    planned again as the ensemble of the dropped config, replacing the model)."""
    root = tmp_path / "repository"
    for name, versions in (("scaled", ("1", "2")), ("double", ("1",))):
        for version in versions:
            (root / name / version).mkdir(parents=True)
            (root / name / version / "model.py").write_text(MODEL_PY)
        (root / name / "config.pbtxt").write_text(PBTXT.replace('"scaled"', f'"{name}"'))
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    try:
        http.load_model("scaled", config=ENSEMBLE)
        assert http.get_model_config("scaled")["platform"] == "ensemble"
        assert infer(http) == expect(2, 1)  # 'double' version 1's answer
        http.load_model("scaled")
        assert infer(http) == expect(2, 2)
        http.load_model("double", config=override("3").replace('"scaled"', '"double"'))  # its step model changes
        assert http.get_model_config("scaled")["platform"] != "ensemble"
        assert infer(http) == expect(2, 2)
    finally:
        http.close()
        proc.stop()


def test_an_ensemble_config_that_cannot_be_planned_changes_nothing(tmp_path: Path) -> None:
    """A config making a model an ensemble whose step model is not served is refused naming the
    step, and the model keeps serving its files' version (it was retired, leaving it failed)."""
    root = tmp_path / "repository"
    for version in ("1", "2"):
        (root / "scaled" / version).mkdir(parents=True)
        (root / "scaled" / version / "model.py").write_text(MODEL_PY)
    (root / "scaled" / "config.pbtxt").write_text(PBTXT)
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    try:
        assert infer(http) == expect(2, 2)
        with pytest.raises(InferenceServerException, match="'double'"):
            http.load_model("scaled", config=ENSEMBLE)
        assert http.is_model_ready("scaled", "2")
        assert http.get_model_config("scaled").get("platform") != "ensemble"
        assert infer(http) == expect(2, 2)
    finally:
        http.close()
        proc.stop()


def test_a_config_whose_policy_selects_no_version_changes_nothing(served: tuple[ServerProcess, str]) -> None:
    """A config whose version policy selects none of the model's version directories is refused
    naming it (Triton: at least one version must be available under the policy); it unloaded
    every version the model served and answered success."""
    proc, address = served
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    gclient = tgrpc.InferenceServerClient(address)
    try:
        http.load_model("scaled")
        with pytest.raises(InferenceServerException, match="version_policy selects none of its versions"):
            http.load_model("scaled", config=override("5", policy={"specific": {"versions": [7]}}))
        with pytest.raises(InferenceServerException, match="version_policy selects none of its versions"):
            gclient.load_model("scaled", config=override("5", policy={"specific": {"versions": [7]}}))
        assert http.is_model_ready("scaled", "2")
        assert infer(http) == expect(2, 2)
    finally:
        http.close()
        gclient.close()


async def test_the_websocket_load_takes_a_config_as_http_does(served: tuple[ServerProcess, str]) -> None:
    """The WebSocket ``load`` with ``config`` (the Python client's ``load(..., config=...)``): a JSON
    object or a string, served as the HTTP load's parameter is; a bad one refused naming the
    problem (the model keeps what it served), a load without one back to the files."""
    from wsserve_client import BadRequestError, Client

    proc, _ = served
    http = thttp.InferenceServerClient(proc.url.split("//")[1].rstrip("/"))
    try:
        async with Client(proc.url) as c:
            status = await c.load("scaled", config=json.loads(override("5")))  # an object
            assert status.states() == {"1": "ready", "2": "ready"}
            assert infer(http, "1") == expect(5, 1) and infer(http, "2") == expect(5, 2)
            assert batch_rows(http) == "4"
            status = await c.load("scaled", config=override("3", policy={"specific": {"versions": [1]}}))  # text
            assert infer(http, "1") == expect(3, 1)
            assert not http.is_model_ready("scaled", "2")

            with pytest.raises(BadRequestError, match="'name'.* is 'other' but the model's directory is 'scaled'"):
                await c.load("scaled", config=json.loads(override("7", name="other")))
            with pytest.raises(BadRequestError, match="not a valid Triton model configuration in JSON"):
                await c.load("scaled", config='{"max_batch_size": 4, "colour": "red"}')
            with pytest.raises(BadRequestError, match="version_policy selects none of its versions"):
                await c.load("scaled", config=json.loads(override("5", policy={"specific": {"versions": [7]}})))
            with pytest.raises(BadRequestError, match="load failed for model 'scaled': version 1"):
                await c.load("scaled", config=override("not a number", policy={"specific": {"versions": [1]}}))
            assert infer(http, "1") == expect(3, 1)  # still what it served

            # the field's own bounds, as the server reads the frame
            with pytest.raises(BadRequestError, match=r"field 'config' must be a model configuration in JSON \(an "
                                                      r"object, or a string of 1 to 65536 characters\); it has 65537"):
                await c.load("scaled", config="{" * 65537)
            with pytest.raises(BadRequestError, match="it has 0 characters"):
                await c.load("scaled", config="")
            with pytest.raises(TypeError, match="config must be a mapping or a JSON string"):
                await c.load("scaled", config=[1])  # type: ignore[arg-type]

            await c.load("scaled")  # back to the files: the latest version, scale 2, batches of 8
            assert infer(http) == expect(2, 2)
            assert not http.is_model_ready("scaled", "1")
            assert batch_rows(http) == "8"
    finally:
        http.close()


def test_a_websocket_config_nested_too_deeply_is_a_bad_request_with_its_id(served: tuple[ServerProcess, str]) -> None:
    """A ``load``'s ``config`` object nested deeper than the frame's JSON may be written again (the
    server serializes it to pass it on as text) is refused as any bad field: ``bad_request`` with
    the load's id, not an internal error without one; the connection goes on."""
    from tests.support.rawws import RawClient

    proc, _ = served
    depth = 300  # the frame parses (orjson reads 1024 levels) but cannot be written back (254)
    deep = '{"a":' * depth + "1" + "}" * depth
    with RawClient(proc.port) as ws:
        assert ws.recv_json()["type"] == "hello"
        ws.send('{"type":"load","id":7,"model":"scaled","config":' + deep + "}")
        error = ws.recv_json()
        assert (error["type"], error["id"], error["code"]) == ("error", 7, "bad_request")
        assert "field 'config'" in error["message"] and "nest" in error["message"]
        ws.send({"type": "ping", "id": 8})
        assert ws.recv_json() == {"type": "pong", "id": 8}
    assert "internal error while handling a message" not in proc.stderr_text()
