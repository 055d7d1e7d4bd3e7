"""Triton's ``model_warmup`` (config.pbtxt): the batches a version runs before it serves.

The config's samples as :mod:`wsserve.repository.warmup` reads and builds them, then a real
server on loopback serving a Triton Python backend model that records each execution: a version
runs its samples (``count`` times, ``batch_size`` rows, values from ``zero_data``,
``random_data`` or a file in ``warmup/``) before it is ready, and one whose sample cannot run
does not serve, naming the sample.
"""

from __future__ import annotations

import json
import os
import re
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import ServerProcess
from wsserve.repository.errors import ConfigError, ModelLoadError
from wsserve.repository.tensors import TensorSpec
from wsserve.repository.warmup import (
    MAX_WARMUP_COUNT,
    WarmupInput,
    WarmupSample,
    warmup_batches,
)

pytest.importorskip("tritonclient.grpc")  # config.pbtxt is read with Triton's protobuf messages
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402

HEAD = """name: "rec"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

WARMUP = """model_warmup [
  { name: "from_file" batch_size: 2 count: 3
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] input_data_file: "x.bin" } }
    inputs { key: "N" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } } },
  { name: "random" batch_size: 5
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] random_data: true } }
    inputs { key: "N" value: { data_type: TYPE_INT32 dims: [ 1 ] random_data: true } } }
]
"""


def _parse(text: str) -> object:
    return parse_pbtxt(text, Path("/repo/rec/config.pbtxt"), model_name="rec")


# -- the config


def test_samples_are_read_with_tritons_defaults() -> None:
    config = _parse(HEAD + WARMUP)
    first, second = config.warmup
    assert first == WarmupSample("from_file", 2, {"N": WarmupInput("int32", (1,), "zero"),
                                                   "X": WarmupInput("float32", (3,), "x.bin")}, 3)
    assert second.count == 1 and second.batch_size == 5  # count 0 (absent) runs once, as Triton reads it
    assert not any("model_warmup" in w for w in config.warnings)  # honoured now, not a hint


@pytest.mark.parametrize(("sample", "message"), [
    ('{ batch_size: 1 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } }',
     r"model_warmup\[0\]\.name': is required"),
    ('{ name: "s" batch_size: 0 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } }',
     r"batch_size': must be 1 to 8, got 0"),
    ('{ name: "s" batch_size: 9 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } }',
     r"batch_size': must be 1 to 8, got 9"),
    (f'{{ name: "s" batch_size: 1 count: {MAX_WARMUP_COUNT + 1} '
     'inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } }', r"count': must be at most"),
    ('{ name: "s" batch_size: 1 }', r"inputs': is required"),
    ('{ name: "s" batch_size: 1 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] } } }',
     r"needs its data: zero_data: true, random_data: true or input_data_file"),
    ('{ name: "s" batch_size: 1 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] '
     'input_data_file: "../../etc/passwd" } } }', r"input_data_file': must be a file name in the model's warmup/ folder"),
    ('{ name: "s" batch_size: 1 inputs { key: "X" value: { data_type: TYPE_INVALID dims: [ 3 ] zero_data: true } } }',
     r"data_type': TYPE_INVALID is not served"),
    ('{ name: "s" batch_size: 1 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 0 ] zero_data: true } } }',
     r"dims': must be 0 to 8 sizes of at least 1"),
    ('{ name: "s" batch_size: 8 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 1048576 ] zero_data: true } } }',
     r"dims': with batch_size 8 hold more than 4194304 values"),
])
def test_bad_samples_are_refused_naming_them(sample: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(HEAD + f"model_warmup [ {sample} ]\n")


def test_a_model_without_a_batch_dimension_warms_up_one_request_at_a_time() -> None:
    head = HEAD.replace("max_batch_size: 8", "max_batch_size: 0")
    sample = '{ name: "s" batch_size: 2 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } }'
    with pytest.raises(ConfigError, match=r"must be 1 to 1 \(the model has no batch dimension\), got 2"):
        _parse(head + f"model_warmup [ {sample} ]\n")


# -- the batches

SPECS = (TensorSpec("X", (3,), "float32"), TensorSpec("N", (1,), "int32"))


def test_batches_repeat_a_files_row_and_check_it(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "x.bin").write_bytes(np.array([1.5, -2.0, 4.0], dtype="<f4").tobytes())
    samples = _parse(HEAD + WARMUP).warmup
    (first, a), (second, b) = warmup_batches(samples, SPECS, tmp_path, tmp_path / "1" / "model.py")
    assert a["X"].tolist() == [[1.5, -2.0, 4.0]] * 2 and a["N"].tolist() == [[0], [0]] and a["N"].dtype == np.int32
    assert b["X"].shape == (5, 3) and ((b["X"] >= 0) & (b["X"] < 1)).all() and b["X"].dtype == np.float32
    where = tmp_path / "1" / "model.py"
    (tmp_path / "warmup" / "x.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match=r"sample 'from_file': input 'X': .*x.bin holds 8 bytes; \[3\] float32 values are 12"):
        list(warmup_batches(samples, SPECS, tmp_path, where))
    (tmp_path / "warmup" / "x.bin").write_bytes(np.array([1.0, np.nan, 0.0], dtype="<f4").tobytes())
    with pytest.raises(ModelLoadError, match="holds a value that is not finite"):
        list(warmup_batches(samples, SPECS, tmp_path, where))
    (tmp_path / "warmup" / "x.bin").unlink()
    with pytest.raises(ModelLoadError, match="x.bin cannot be read"):
        list(warmup_batches(samples, SPECS, tmp_path, where))


@pytest.mark.parametrize(("specs", "message"), [
    ((TensorSpec("X", (3,), "float32"),), r"gives inputs \['N', 'X'\]; the model takes \['X'\]"),
    ((TensorSpec("X", (3,), "float64"), TensorSpec("N", (1,), "int32")), "input 'X' is float32; the model takes float64"),
    ((TensorSpec("X", (4,), "float32"), TensorSpec("N", (1,), "int32")), r"input 'X' has dims \[3\]; the model takes \[4\]"),
])
def test_samples_that_are_not_the_models_inputs_are_refused(specs: tuple[TensorSpec, ...], message: str,
                                                             tmp_path: Path) -> None:
    samples = _parse(HEAD + WARMUP.replace('input_data_file: "x.bin"', "zero_data: true")).warmup
    with pytest.raises(ModelLoadError, match=message):
        list(warmup_batches(samples, specs, tmp_path, tmp_path / "model.py"))


def test_string_inputs_take_empty_random_or_length_prefixed_file_data(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "s.bin").write_bytes(b"".join(len(x).to_bytes(4, "little") + x for x in (b"ab", b"", b"xyz")))
    spec = (TensorSpec("T", (3,), "bytes"),)
    made = {src: next(warmup_batches((WarmupSample("s", 2, {"T": WarmupInput("bytes", (3,), src)}, 1),), spec, tmp_path,
                                     tmp_path / "model.py"))[1]["T"] for src in ("zero", "random", "s.bin")}
    assert made["zero"].tolist() == [[b"", b"", b""]] * 2
    assert made["s.bin"].tolist() == [[b"ab", b"", b"xyz"]] * 2 and made["s.bin"].dtype == object
    assert all(type(v) is bytes and v.isdigit() for v in made["random"].ravel())
    (tmp_path / "warmup" / "s.bin").write_bytes((9).to_bytes(4, "little") + b"ab")
    with pytest.raises(ModelLoadError, match=r"s.bin ends inside element 0 of 3"):
        list(warmup_batches((WarmupSample("s", 1, {"T": WarmupInput("bytes", (3,), "s.bin")}, 1),), spec, tmp_path,
                            tmp_path / "model.py"))


def _build_in_thread(samples: tuple[WarmupSample, ...], specs: tuple[TensorSpec, ...], model_dir: Path) -> object:
    """``warmup_batches``'s outcome (its error, or its batches), run in a daemon thread so that a read
    that blocks forever fails this test instead of hanging the run (the join's bound is only that)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(list(warmup_batches(samples, specs, model_dir, model_dir / "model.py")))
        except Exception as exc:  # noqa: BLE001 - the outcome looked at
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert outcome, "building the warm-up batch blocked reading its data file"
    return outcome[0]


@pytest.mark.parametrize("dtype", ["float32", "bytes"])
def test_a_data_file_that_is_not_a_regular_file_is_refused_not_waited_on(tmp_path: Path, dtype: str) -> None:
    (tmp_path / "warmup").mkdir()
    os.mkfifo(tmp_path / "warmup" / "x.bin")  # no writer ever opens it: opening it to read would block
    samples = (WarmupSample("s", 1, {"X": WarmupInput(dtype, (3,), "x.bin")}, 1),)
    got = _build_in_thread(samples, (TensorSpec("X", (3,), dtype),), tmp_path)
    assert isinstance(got, ModelLoadError) and re.search(r"x.bin is not a regular file", str(got)), got
    (tmp_path / "warmup" / "x.bin").unlink()
    (tmp_path / "warmup" / "x.bin").symlink_to("/dev/zero")  # a device: endless zeros, refused before reading
    got = _build_in_thread(samples, (TensorSpec("X", (3,), dtype),), tmp_path)
    assert isinstance(got, ModelLoadError) and re.search(r"x.bin is not a regular file", str(got)), got


def test_a_variable_dimension_takes_the_samples_size(tmp_path: Path) -> None:
    samples = (WarmupSample("seq7", 2, {"ids": WarmupInput("int64", (7,), "zero")}, 1),)
    ((_, arrays),) = warmup_batches(samples, (TensorSpec("ids", (-1,), "int64"),), tmp_path, tmp_path / "model.onnx")
    assert arrays["ids"].shape == (2, 7)


def test_samples_are_built_one_at_a_time(tmp_path: Path) -> None:
    """64 samples of MAX_VALUES values each are 1 GiB of float32 at once; a warm-up holds one."""
    samples = tuple(WarmupSample(f"s{i}", 1 << 10, {"X": WarmupInput("float32", (1 << 12,), "zero")}, 1)
                    for i in range(8))  # 8 samples of 16 MiB
    one = (1 << 22) * 4
    tracemalloc.start()
    try:
        for _sample, arrays in warmup_batches(samples, (TensorSpec("X", (1 << 12,), "float32"),), tmp_path,
                                              tmp_path / "model.py"):
            assert arrays["X"].nbytes == one
            del arrays
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * one, f"{peak / one:.1f} samples held at once"


# -- a real server

RECORDER_PY = '''
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.log = os.path.join(args["model_repository"], "calls.jsonl")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            n = pb_utils.get_input_tensor_by_name(request, "N").as_numpy()
            with open(self.log, "a") as f:
                f.write(json.dumps({"x": x.tolist(), "n": n.tolist()}) + "\\n")
            if (n > 100).any():
                raise ValueError("N above 100")
            y = x.sum(axis=1, keepdims=True).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("Y", y)]))
        return responses
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warmup") / "repository"
    for name, config in (("rec", HEAD + WARMUP), ("bad", HEAD.replace('"rec"', '"bad"') + WARMUP.replace(
            'zero_data: true } } },', 'input_data_file: "n.bin" } } },'))):
        model = root / name
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.py").write_text(RECORDER_PY)
        (model / "config.pbtxt").write_text(config)
        (model / "warmup").mkdir()
        (model / "warmup" / "x.bin").write_bytes(np.array([1.5, -2.0, 4.0], dtype="<f4").tobytes())
    (root / "bad" / "warmup" / "n.bin").write_bytes(np.array([101], dtype="<i4").tobytes())  # the model refuses it
    return root


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess("--models", "none", "--model-repository", str(repo))
    yield proc
    proc.stop()


def test_a_version_runs_its_samples_before_it_serves(served: ServerProcess, repo: Path) -> None:
    client = thttp.InferenceServerClient(served.http.split("//")[1])
    try:
        assert client.is_model_ready("rec")
        calls = [json.loads(line) for line in (repo / "rec" / "calls.jsonl").read_text().splitlines()]
        assert len(calls) == 4  # from_file 3 times, random once: then it was ready
        assert calls[:3] == [{"x": [[1.5, -2.0, 4.0]] * 2, "n": [[0], [0]]}] * 3
        assert len(calls[3]["x"]) == 5 and all(0 <= v < 1 for row in calls[3]["x"] for v in row)
        x = thttp.InferInput("X", [1, 3], "FP32")
        x.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
        n = thttp.InferInput("N", [1, 1], "INT32")
        n.set_data_from_numpy(np.array([[1]], dtype=np.int32))
        assert client.infer("rec", [x, n]).as_numpy("Y").tolist() == [[6.0]]

        # a sample the model fails: the version does not serve, and the reason names the sample
        assert not client.is_model_ready("bad")
        (row,) = [r for r in client.get_model_repository_index() if r["name"] == "bad"]
        assert row["state"] == "UNAVAILABLE"
        assert re.search(r"model_warmup sample 'from_file' failed: .*N above 100", row["reason"]), row
        with pytest.raises(InferenceServerException, match="bad"):
            client.infer("bad", [x, n])
    finally:
        client.close()
