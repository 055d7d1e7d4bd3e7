"""A Triton model repository (config.pbtxt, ONNX models) served as it is: a real server on loopback,
driven by Triton's own clients (``tritonclient.http`` and ``tritonclient.grpc``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402

#: Triton's docs' shape of a config.pbtxt, for the linear layer x [N, 3] -> y [N, 2].
LINEAR_PBTXT = """
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 2 ]
  }
]
version_policy: { latest: { num_versions: 1 } }
dynamic_batching { max_queue_delay_microseconds: 1500 }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""

#: Two inputs and two outputs, of which one is served; a GPU instance group and hints.
MLP_PBTXT = """
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "a" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "b" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "probs" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_GPU } ]
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
"""

TRT_PBTXT = 'platform: "tensorrt_plan"\nmax_batch_size: 8\n'


def _write_repo(root: Path) -> dict[str, Any]:
    """The repository; returns the reference functions by (model, version)."""
    refs: dict[str, Any] = {}
    for version, seed in (("1", 1), ("2", 2)):
        model, ref = ob.linear_layer(3, 2, seed=seed)
        ob.save(model, root / "linear" / version)
        refs[f"linear/{version}"] = ref
    (root / "linear" / "config.pbtxt").write_text(LINEAR_PBTXT)
    model, ref = ob.mlp_two_inputs(seed=3)
    ob.save(model, root / "mlp" / "1")
    refs["mlp/1"] = ref
    (root / "mlp" / "config.pbtxt").write_text(MLP_PBTXT)
    model, _ = ob.linear_layer(3, 2)
    ob.save(model, root / "trt" / "1")
    (root / "trt" / "config.pbtxt").write_text(TRT_PBTXT)
    return refs


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("triton") / "model_repository"
    refs = _write_repo(root)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc), refs
    finally:
        proc.stop()


def _x(rows: int = 5) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) / 7


def test_http_infer_serves_the_latest_version_only(served) -> None:
    proc, _, refs = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.is_model_ready("linear", "2") and not client.is_model_ready("linear", "1")  # latest { num_versions: 1 }
    x = _x()
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    y = client.infer("linear", [inp], outputs=[thttp.InferRequestedOutput("y")]).as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (5, 2)
    np.testing.assert_allclose(y, refs["linear/2"](x), rtol=1e-5, atol=1e-6)


def test_grpc_infer_and_metadata_show_config_pbtxt(served) -> None:
    _, address, refs = served
    client = tgrpc.InferenceServerClient(address)
    try:
        meta = client.get_model_metadata("linear")
        assert list(meta.versions) == ["2"]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 3])]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 2])]
        config = client.get_model_config("linear").config
        assert config.name == "linear" and config.version_policy.latest.num_versions == 1
        assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", 11, [3])]  # TYPE_FP32
        assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("y", 11, [2])]
        assert config.dynamic_batching.max_queue_delay_microseconds == 1500
        x = _x(3)
        inp = tgrpc.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("linear", [inp]).as_numpy("y")
        np.testing.assert_allclose(y, refs["linear/2"](x), rtol=1e-5, atol=1e-6)
    finally:
        client.close()



def test_the_configuration_says_config_pbtxts_max_batch_size_and_a_larger_request_is_split(served) -> None:
    """``max_batch_size`` in the configuration is config.pbtxt's own (Triton's answer: tritonclient and
    perf_analyzer size their batches by it), over HTTP and gRPC; ``parameters.max_batch_rows`` is the
    rows of one execution.  A request of more rows than that is served (Triton refuses it), split
    over executions of at most ``max_batch_size`` rows (the statistics' batch sizes)."""
    proc, address, refs = served
    http = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        config = http.get_model_config("linear")
        assert config["max_batch_size"] == 8 and config["parameters"]["max_batch_rows"]["string_value"] == "8"
        assert grpc_client.get_model_config("linear").config.max_batch_size == 8
        assert http.get_model_config("mlp")["max_batch_size"] == 4
        assert grpc_client.get_model_config("mlp").config.max_batch_size == 4

        x = _x(20)
        inp = thttp.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        y = http.infer("linear", [inp]).as_numpy("y")
        np.testing.assert_allclose(y, refs["linear/2"](x), rtol=1e-5, atol=1e-6)
        stats = http.get_inference_statistics("linear", "2")["model_stats"][0]
        sizes = [b["batch_size"] for b in stats["batch_stats"]]
        assert sizes and max(sizes) <= 8 and stats["inference_count"] >= 20, stats
    finally:
        http.close()
        grpc_client.close()


def test_a_model_with_two_inputs_serves_the_outputs_config_pbtxt_lists(served) -> None:
    proc, address, refs = served
    client = tgrpc.InferenceServerClient(address)
    try:
        meta = client.get_model_metadata("mlp")
        assert [(t.name, list(t.shape)) for t in meta.inputs] == [("a", [-1, 3]), ("b", [-1, 2])]
        assert [t.name for t in meta.outputs] == ["probs"]
        a, b = _x(2), np.ones((2, 2), np.float32)
        ins = [tgrpc.InferInput("a", [2, 3], "FP32"), tgrpc.InferInput("b", [2, 2], "FP32")]
        ins[0].set_data_from_numpy(a)
        ins[1].set_data_from_numpy(b)
        probs = client.infer("mlp", ins).as_numpy("probs")
        np.testing.assert_allclose(probs, refs["mlp/1"](a, b)["probs"], rtol=1e-5, atol=1e-6)
    finally:
        client.close()
    log = proc.stderr_text()
    assert "model 'mlp'" in log and "accepts but ignores: optimization; instance_group[0].kind KIND_GPU (runs on CPU: 1 instance)" in log


def test_a_tensorrt_model_is_refused_naming_its_platform(served) -> None:
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert not client.is_model_ready("trt")
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("trt")
    proc.wait_logged("key 'platform': 'tensorrt_plan' is not served by wsserve")


def test_reload_follows_an_edited_config_pbtxt(tmp_path: Path) -> None:
    """--reload: version_policy latest 1 -> all serves version 1 too; a bad edit keeps what serves."""
    root = tmp_path / "model_repository"
    _write_repo(root)
    shutil.rmtree(root / "trt")
    with ServerProcess("--models", "none", "--model-repository", str(root), "--reload") as proc:
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        assert client.is_model_ready("linear", "2") and not client.is_model_ready("linear", "1")
        pbtxt = root / "linear" / "config.pbtxt"
        pbtxt.write_text(LINEAR_PBTXT.replace("{ latest: { num_versions: 1 } }", "{ all: {} }"))
        wait_until(lambda: client.is_model_ready("linear", "1"), 60.0, what="version 1 served after the edit")
        wait_until(lambda: client.get_model_config("linear")["version_policy"] == {"all": {}}, 60.0,
                   what="version 2 reloaded under the new config")
        pbtxt.write_text(LINEAR_PBTXT.replace("dynamic_batching { max_queue_delay_microseconds: 1500 }", "sequence_batching { iterative_sequence: true }"))
        wait_until(lambda: "key 'sequence_batching.iterative_sequence': is served for a Triton Python model only" in proc.stderr_text(), 60.0,
                   what="the refused edit logged")
        assert client.is_model_ready("linear", "1") and client.is_model_ready("linear", "2")


@pytest.mark.parametrize("bad", [
    'max_batch_size: 8\ninput [ { name: "x" data_type: 99 dims: [ 3 ] } ]\n',  # an enum number Triton's proto does not name
    "max_batch_size: 8\ninstance_group [ { kind: 7 } ]\n",
    "max_batch_size: 8\ninstance_group [ { kind: 9223372036854775807 } ]\n",  # protobuf raises ValueError, not ParseError
])
def test_an_unnamed_enum_number_refuses_that_model_only(tmp_path: Path, bad: str) -> None:
    """proto3 enums are open: protobuf's text parser takes any number for an enum field. Such a
    config.pbtxt is refused naming the file and field; the other models serve (the scan crashed)."""
    root = tmp_path / "model_repository"
    _write_repo(root)
    shutil.rmtree(root / "trt")
    model, _ = ob.linear_layer(3, 2)
    ob.save(model, root / "odd" / "1")
    (root / "odd" / "config.pbtxt").write_text(bad)
    with ServerProcess("--models", "none", "--model-repository", str(root)) as proc:
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        assert client.is_model_ready("linear") and client.is_model_ready("mlp")
        assert not client.is_model_ready("odd")
        key = "input[0].data_type" if "data_type" in bad else "instance_group[0].kind"
        said = (f"{root / 'odd' / 'config.pbtxt'}: is not a valid Triton model configuration" if "922" in bad
                else f"{root / 'odd' / 'config.pbtxt'}: key '{key}': ")
        wait_until(lambda: said in proc.stderr_text(), 60.0, what="the refusal logged")


def test_a_config_pbtxt_without_max_batch_size_batches_a_graph_that_can(tmp_path: Path) -> None:
    """Triton's auto-complete (onnxruntime backend, AutoCompleteMaxBatch): a config.pbtxt that does not list both
    inputs and outputs and leaves max_batch_size 0 batches when every graph input and output has a dynamic first
    dimension (Triton's default-max-batch-size); a graph with a fixed first dimension runs whole. A minimal
    config.pbtxt (platform only) of a PyTorch-style export failed to load ("a dynamic dimension 0 besides the batch")."""
    root = tmp_path / "model_repository"
    model, ref = ob.linear_layer(3, 2)
    ob.save(model, root / "minimal" / "1")
    (root / "minimal" / "config.pbtxt").write_text('name: "minimal"\nplatform: "onnxruntime_onnx"\n')
    model, _ = ob.linear_layer(3, 2)
    ob.save(model, root / "inputs_only" / "1")
    (root / "inputs_only" / "config.pbtxt").write_text('input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n')
    fixed, fixed_ref = ob.fixed_batch(3)
    ob.save(fixed, root / "fixed" / "1")
    (root / "fixed" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    with ServerProcess("--models", "none", "--model-repository", str(root)) as proc:
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        assert client.is_model_ready("minimal"), proc.stderr_text()
        for name in ("minimal", "inputs_only"):
            meta = client.get_model_metadata(name)
            assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("x", [-1, 3])]
            x = _x(5)
            inp = thttp.InferInput("x", [5, 3], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_allclose(client.infer(name, [inp]).as_numpy("y"), ref(x), rtol=1e-5, atol=1e-6)
        assert client.is_model_ready("fixed")  # [1, 3] fixed: not batched (max_batch_size 0), the graph's whole shape
        assert [t["shape"] for t in client.get_model_metadata("fixed")["inputs"]] == [[1, 3]]
