"""An ensemble's place in the registry as its repository changes: a real server on loopback, driven
by ``tritonclient.http`` and the WebSocket admin operations."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.http")
import tritonclient.http as thttp  # noqa: E402

from tests.support import Conn, ServerProcess, wait_until  # noqa: E402

#: A Triton Python model answering ``x * factor`` (``factor`` from its parameters' ``factor``).
TIMES_PY = '''
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.factor = float(json.loads(args["model_config"])["parameters"]["factor"]["string_value"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy() * self.factor)])
                for r in requests]
'''


def _python_pbtxt(factor: int) -> str:
    return ('backend: "python"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
            f'parameters {{ key: "factor" value: {{ string_value: "{factor}" }} }}\n')


ENSEMBLE_PBTXT = ('platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
                  'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
                  'ensemble_scheduling { step [ { model_name: "step" model_version: -1 '
                  'input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }\n')


def _write_python(root: Path, name: str, factor: int) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(TIMES_PY))
    (root / name / "config.pbtxt").write_text(_python_pbtxt(factor))


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path / "model_repository"
    _write_python(root, "step", 2)
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text(ENSEMBLE_PBTXT)
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    try:
        yield proc, root
    finally:
        proc.stop()


def _infer(client: thttp.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("y")  # type: ignore[no-any-return]


async def test_a_model_that_was_an_ensemble_no_longer_follows_its_old_steps(served) -> None:
    """'m', an ensemble over 'step', becomes a Python model of its own: unloading 'step' afterwards
    must leave it serving (it was re-planned from its old ensemble config, failed and retired)."""
    proc, root = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(_infer(client, "m", x), x * 2)
    _write_python(root, "m", 3)
    conn = await Conn.open(proc.url)
    try:
        answer = await conn.request({"type": "reload", "id": 1, "model": "m"})
    finally:
        await conn.close()
    assert answer["ok"] is True, answer
    np.testing.assert_array_equal(_infer(client, "m", x), x * 3)
    client.unload_model("step")
    wait_until(lambda: not client.is_model_ready("step"), 30)
    client.load_model("step")  # (its re-plannings are over once it is back)
    wait_until(lambda: client.is_model_ready("step"), 30)
    assert client.is_model_ready("m"), client.get_model_repository_index()
    np.testing.assert_array_equal(_infer(client, "m", x), x * 3)


def _successes(client: thttp.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"]), int(stats["fail"]["count"])


def test_each_steps_request_counts_in_its_models_statistics(served) -> None:
    """Triton counts an ensemble's step requests as the step models' own (success, fail), an inner
    ensemble's too: one request to 'outer' (a step on 'm', a step on 'step') is one success of each."""
    proc, root = served
    (root / "outer" / "1").mkdir(parents=True)
    (root / "outer" / "config.pbtxt").write_text(ENSEMBLE_PBTXT.replace('model_name: "step"', 'model_name: "m"'))
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    client.load_model("outer")
    wait_until(lambda: client.is_model_ready("outer"), 30)
    before = {name: _successes(client, name) for name in ("outer", "m", "step")}
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(_infer(client, "outer", x), x * 2)
    after = {name: _successes(client, name) for name in ("outer", "m", "step")}
    assert after == {name: (ok + 1, fail) for name, (ok, fail) in before.items()}


async def test_an_ensemble_version_an_admin_unloaded_stays_unloaded_when_its_step_changes(served) -> None:
    proc, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    conn = await Conn.open(proc.url)
    try:
        answer = await conn.request({"type": "unload", "id": 1, "model": "m", "version": "1"})
    finally:
        await conn.close()
    assert answer["ok"] is True, answer
    wait_until(lambda: not client.is_model_ready("m"), 30)
    client.unload_model("step")
    wait_until(lambda: not client.is_model_ready("step"), 30)
    client.load_model("step")
    wait_until(lambda: client.is_model_ready("step"), 30)
    assert not client.is_model_ready("m"), client.get_model_repository_index()
