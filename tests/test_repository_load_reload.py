"""A load of a model that is already loaded, after its files changed (Triton's model repository
extension, as Triton's explicit load of a modified model): ``tritonclient``'s ``load_model`` over
HTTP and gRPC, and the WebSocket ``load``, against a real server on loopback (no ``--reload``:
only the loads see the changes).

The repository holds ``scaled``, a Triton Python backend model with versions 1 and 2 whose answer
shows the configuration and files it was loaded with (``Y = X * scale + version + OFFSET``,
``scale`` a config.pbtxt ``parameters`` entry, ``OFFSET`` a constant of the version's model.py).
A changed config.pbtxt reloads the model, a changed version directory that version, a removed one
stops; a load when nothing changed reloads nothing; the old model serves until the new one is
ready and finishes the requests it holds; a reload that fails is an error and changes nothing.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
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


def pbtxt(scale: str, gate: Path, *, policy: str = "", max_batch_size: int = 8) -> str:
    return (f'name: "scaled"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n{policy}'
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            f'parameters {{ key: "scale" value: {{ string_value: "{scale}" }} }}\n'
            f'parameters {{ key: "gate" value: {{ string_value: "{gate}" }} }}\n')


ALL = "version_policy: { all { } }\n"

# X[0, 0] == 99: the request holds its execution (after saying so) while the gate's `hold` file exists
MODEL_PY = '''
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = {offset}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.scale = float(config["parameters"]["scale"]["string_value"])
        self.gate = config["parameters"]["gate"]["string_value"]
        self.version = float(args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if x[0, 0] == 99:
                open(os.path.join(self.gate, "started"), "w").close()
                end = time.monotonic() + 120
                while os.path.exists(os.path.join(self.gate, "hold")) and time.monotonic() < end:
                    time.sleep(0.01)
            y = (x * self.scale + self.version + OFFSET).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("Y", y)]))
        return responses
'''

X = np.array([[1.0, -2.0]], dtype=np.float32)


def expect(scale: float, version: int, offset: float = 0.0) -> list[float]:
    return (X[0] * scale + version + offset).tolist()


class Repo:
    """The repository, its server (HTTP and gRPC) and clients."""

    def __init__(self, root: Path) -> None:
        self.model = root / "repository" / "scaled"
        self.gate = root / "gate"
        self.gate.mkdir()
        for version in ("1", "2"):
            self.write_version(version, 0)
        self.write_config("2")
        self.proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root / "repository"))
        self.http = thttp.InferenceServerClient(self.proc.url.split("//")[1].rstrip("/"))
        self.grpc = tgrpc.InferenceServerClient(grpc_address(self.proc))

    def write_version(self, version: str, offset: float) -> None:
        (self.model / version).mkdir(parents=True, exist_ok=True)
        (self.model / version / "model.py").write_text(MODEL_PY.format(offset=offset))

    def write_config(self, scale: str, **kw: Any) -> None:
        (self.model / "config.pbtxt").write_text(pbtxt(scale, self.gate, **kw))

    def infer(self, version: str = "", x: np.ndarray = X) -> list[float]:
        inp = thttp.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return self.http.infer("scaled", [inp], model_version=version).as_numpy("Y")[0].tolist()

    def loads(self, version: str = "") -> int:
        """How many times a version of ``scaled`` (or ``version``) started serving, from the log."""
        return self.proc.stderr_text().count(f"serving model 'scaled' version {version}")

    def close(self) -> None:
        self.http.close()
        self.grpc.close()
        self.proc.stop()


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    r = Repo(tmp_path)
    yield r
    r.close()


def test_a_load_reloads_a_model_whose_config_file_changed_and_nothing_when_nothing_did(repo: Repo) -> None:
    assert repo.infer() == expect(2, 2)
    served = repo.loads()
    repo.http.load_model("scaled")  # nothing changed: nothing is loaded again
    repo.grpc.load_model("scaled")
    assert repo.loads() == served and repo.infer() == expect(2, 2)

    repo.write_config("3")
    repo.http.load_model("scaled")
    assert repo.infer() == expect(3, 2)
    assert repo.loads() == served + 1

    # over gRPC; the new config's policy serves both versions
    repo.write_config("4", policy=ALL)
    repo.grpc.load_model("scaled")
    assert repo.infer("1") == expect(4, 1) and repo.infer("2") == expect(4, 2)
    served = repo.loads()
    repo.grpc.load_model("scaled")
    repo.http.load_model("scaled")
    assert repo.loads() == served

    # back to the latest version only: version 1 stops
    repo.write_config("5")
    repo.http.load_model("scaled")
    assert repo.infer() == expect(5, 2)
    wait_until(lambda: not repo.http.is_model_ready("scaled", "1"), 30.0, what="version 1 unloaded")

    # a load with a config serves it (whatever the files say); one without goes back to the files
    override = json.dumps({
        "name": "scaled", "backend": "python", "max_batch_size": 4,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}],
        "parameters": {"scale": {"string_value": "7"}, "gate": {"string_value": str(repo.gate)}}})
    repo.http.load_model("scaled", config=override)
    assert repo.infer() == expect(7, 2)
    repo.write_config("6")
    repo.grpc.load_model("scaled")
    assert repo.infer() == expect(6, 2)


def test_a_load_reloads_a_changed_version_and_stops_a_removed_one(repo: Repo) -> None:
    repo.write_config("2", policy=ALL)
    repo.http.load_model("scaled")
    assert repo.infer("1") == expect(2, 1) and repo.infer("2") == expect(2, 2)
    ones, twos = repo.loads("1"), repo.loads("2")

    repo.write_version("2", 10)  # version 2's files change: only it loads again
    repo.grpc.load_model("scaled")
    assert repo.infer("2") == expect(2, 2, 10) and repo.infer("1") == expect(2, 1)
    assert (repo.loads("1"), repo.loads("2")) == (ones, twos + 1)

    repo.write_version("1", 20)  # a load of version 2 alone leaves version 1's change for a later load
    request = urllib.request.Request(repo.proc.http + "/v2/repository/models/scaled/load",
                                     data=b'{"parameters": {"version": 2}}', method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
    assert repo.infer("1") == expect(2, 1) and repo.loads("1") == ones
    repo.grpc.load_model("scaled")
    assert repo.infer("1") == expect(2, 1, 20)

    shutil.rmtree(repo.model / "1")  # a removed version directory stops serving
    repo.http.load_model("scaled")
    wait_until(lambda: not repo.http.is_model_ready("scaled", "1"), 30.0, what="version 1 unloaded")
    assert repo.infer() == expect(2, 2, 10)


def test_requests_in_flight_finish_on_the_old_model_while_a_load_swaps_in_the_new(repo: Repo) -> None:
    (repo.gate / "hold").touch()
    held: list[Any] = []

    def slow() -> None:  # (tritonclient.http's client is gevent's: one thread only)
        body = json.dumps({"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [99, 0]}]})
        request = urllib.request.Request(repo.proc.http + "/v2/models/scaled/infer", data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                held.append(json.loads(answer.read())["outputs"][0]["data"])
        except Exception as exc:  # noqa: BLE001 - reported below
            held.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        wait_until(lambda: (repo.gate / "started").exists(), 30.0, what="the slow request running")
        repo.write_config("3")
        repo.http.load_model("scaled")  # answered once the new model serves, the old one still busy
        assert repo.infer() == expect(3, 2)
        assert not held
    finally:
        (repo.gate / "hold").unlink()
        thread.join(60)
    assert held == [[99 * 2 + 2, 0 * 2 + 2]]  # the old model's answer (scale 2), not an error


def test_a_reload_that_fails_is_an_error_and_the_old_model_keeps_serving(repo: Repo) -> None:
    assert repo.infer() == expect(2, 2)
    repo.write_config("not a number")  # parses; initialize() raises
    with pytest.raises(InferenceServerException, match="load failed for model 'scaled': version 2: .*ValueError"):
        repo.http.load_model("scaled")
    assert repo.infer() == expect(2, 2)
    with pytest.raises(InferenceServerException, match="load failed for model 'scaled': version 2"):
        repo.grpc.load_model("scaled")  # tried again: the failed reload left its change unseen
    assert repo.infer() == expect(2, 2)

    (repo.model / "config.pbtxt").write_text('name: "scaled"\nmax_batch_size: [\n')  # does not parse
    with pytest.raises(InferenceServerException, match="model .scaled. cannot be loaded: .*config.pbtxt"):
        repo.http.load_model("scaled")
    assert repo.infer() == expect(2, 2) and repo.http.is_model_ready("scaled", "2")

    repo.write_version("2", 10)  # a version whose new files fail to load keeps serving its old ones
    (repo.model / "2" / "model.py").write_text("raise RuntimeError('half written')\n")
    repo.write_config("2")
    with pytest.raises(InferenceServerException, match="load failed for model 'scaled': version 2: .*half written"):
        repo.http.load_model("scaled")
    assert repo.infer() == expect(2, 2)

    repo.write_version("2", 10)  # fixed: the next load serves it
    repo.write_config("3")
    repo.http.load_model("scaled")
    assert repo.infer() == expect(3, 2, 10)


async def test_the_websocket_load_reloads_a_changed_model_as_http_does(repo: Repo) -> None:
    from wsserve_client import BadRequestError, Client

    async with Client(repo.proc.url) as c:
        served = repo.loads()
        status = await c.load("scaled")
        assert status.states() == {"2": "ready"} and repo.loads() == served
        repo.write_config("3")
        status = await c.load("scaled")
        assert status.states() == {"2": "ready"}
        assert repo.infer() == expect(3, 2)
        repo.write_config("not a number")
        with pytest.raises(BadRequestError, match="load failed for model 'scaled': version 2"):
            await c.load("scaled")
        assert repo.infer() == expect(3, 2)

