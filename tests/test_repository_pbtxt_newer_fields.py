"""config.pbtxt fields of current Triton releases that older tritonclient releases (2.41, what pip resolves
beside ``grpcio-health-checking`` >= 1.85) lack in ``ModelConfig``: ``ensemble_scheduling.max_inflight_requests``,
``runtime``, ``model_metrics``, per tensor ``is_non_linear_format_io``.  Each parses (the loader completes the
message class from tritonclient's descriptor when it lacks them) and is read by wsserve's policy."""

from __future__ import annotations

import json
import types

import pytest

pytest.importorskip("tritonclient.grpc")  # the triton extra

from tritonclient.grpc import model_config_pb2  # noqa: E402

from tests.test_ensemble_plan import ensemble_pbtxt, step  # noqa: E402
from wsserve.repository import ConfigError  # noqa: E402
from wsserve.repository.ensemble_config import MAX_INFLIGHT_REQUESTS  # noqa: E402
from wsserve.repository.pbtxt import (  # noqa: E402
    completed_model_config_class,
    parse_json_config,
    parse_pbtxt,
)

NEWER = {"ModelEnsembling": ["max_inflight_requests"], "ModelConfig": ["runtime", "model_metrics"],
         "ModelInput": ["is_non_linear_format_io"], "ModelOutput": ["is_non_linear_format_io"]}

PY_MODEL = ('backend: "python"\nmax_batch_size: 0\ninput [{ name: "IN" data_type: TYPE_INT32 dims: [1] }]\n'
            'output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]\n')
ONNX_MODEL = ('platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [3] }]\n'
              'output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]\n')
METRICS = ('model_metrics { metric_control [ { metric_identifier { family: "nv_inference_first_response_histogram_ms" }'
           ' histogram_options { buckets: [ 1, 2.5, 10, 100 ] } } ] }\n')
PIPE = ensemble_pbtxt(", ".join([step("scale", {"x": "IN"}, {"y": "scaled"}), step("linear", {"x": "scaled"}, {"y": "OUT"})]))


def _has(cls: type, message: str, field: str) -> bool:
    return field in cls.DESCRIPTOR.file.message_types_by_name[message].fields_by_name


def test_the_message_class_has_every_newer_field_with_triton_s_numbers_and_is_built_once() -> None:
    cls = completed_model_config_class(model_config_pb2)
    assert completed_model_config_class(model_config_pb2) is cls
    numbers = {("ModelEnsembling", "max_inflight_requests"): 2, ("ModelConfig", "runtime"): 25,
               ("ModelConfig", "model_metrics"): 26, ("ModelInput", "is_non_linear_format_io"): 9,
               ("ModelOutput", "is_non_linear_format_io"): 7}
    for (message, field), number in numbers.items():
        assert cls.DESCRIPTOR.file.message_types_by_name[message].fields_by_name[field].number == number
    # the wire form is Triton's: a current Triton reads what this class writes, field by field
    m = cls()
    m.ensemble_scheduling.max_inflight_requests = 3
    assert m.ensemble_scheduling.SerializeToString() == b"\x10\x03"  # field 2, varint 3
    if all(_has(model_config_pb2.ModelConfig, msg, f) for msg, fields in NEWER.items() for f in fields):
        assert cls is model_config_pb2.ModelConfig  # a tritonclient that has them all is used as it is
    else:  # the installed tritonclient's own classes (the gRPC service's) are left as they are
        assert cls is not model_config_pb2.ModelConfig and not _has(model_config_pb2.ModelConfig, "ModelConfig", "runtime")


def test_a_tritonclient_that_has_every_field_is_used_as_it_is() -> None:
    cls = completed_model_config_class(model_config_pb2)
    current = types.ModuleType("model_config_pb2")  # what a tritonclient >= 2.63 gives: the fields are its own
    current.DESCRIPTOR, current.ModelConfig = cls.DESCRIPTOR.file, cls  # type: ignore[attr-defined]
    assert completed_model_config_class(current) is cls


@pytest.mark.parametrize("limit", [0, 1, 16, MAX_INFLIGHT_REQUESTS])
def test_an_ensemble_s_max_inflight_requests_is_read(limit: int) -> None:
    text = PIPE.replace("ensemble_scheduling {", f"ensemble_scheduling {{ max_inflight_requests: {limit}")
    cfg = parse_pbtxt(text, "pipe/config.pbtxt", model_name="pipe")
    assert cfg.ensemble is not None and cfg.ensemble.max_inflight_requests == limit and cfg.warnings == ()


def test_every_max_inflight_requests_triton_takes_is_read_and_past_its_uint32_the_config_is_refused() -> None:
    """Triton takes any ``uint32`` (its limiter counts in a ``size_t``): 4294967295 loads there, so here."""
    text = PIPE.replace("ensemble_scheduling {", "ensemble_scheduling { max_inflight_requests: 4294967295")
    cfg = parse_pbtxt(text, "pipe/config.pbtxt", model_name="pipe")
    assert cfg.ensemble is not None and cfg.ensemble.max_inflight_requests == 4294967295 == MAX_INFLIGHT_REQUESTS
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(text.replace("4294967295", "4294967296"), "pipe/config.pbtxt", model_name="pipe")
    assert "max_inflight_requests: 4294967296" in str(info.value) and "out of range" in str(info.value)


def test_runtime_is_the_python_backend_s_library_or_empty_and_nothing_else_is_served() -> None:
    """Triton (core ``src/backend_model.cc``): ``runtime`` names the library it loads; for backend ``python``
    on Linux ``libtriton_python.so``, found in ``<backend directory>/python``.  ``model.py`` would name a
    Python-based backend's ``<backend directory>/python/model.py``, which the Python backend does not ship."""
    cfg = parse_pbtxt(PY_MODEL + 'runtime: "libtriton_python.so"\n', "m/config.pbtxt", model_name="m")
    assert cfg.backend == "python" and cfg.warnings == ()
    # the model's args["model_config"] has it
    assert json.loads(cfg.triton_model_config)["runtime"] == "libtriton_python.so"
    assert parse_pbtxt(PY_MODEL + 'runtime: ""\n', "m/config.pbtxt", model_name="m").warnings == ()
    for text, value in ((PY_MODEL + 'runtime: "other.py"\n', "'other.py' is not served"),
                        (PY_MODEL + 'runtime: "model.py"\n', "'model.py' names a Python-based backend, run from "
                                                              "<backend directory>/python/model.py"),
                        (PY_MODEL + 'runtime: "triton_python.dll"\n', "'triton_python.dll' is Triton's library "
                                                                        "name on Windows"),
                        (ONNX_MODEL + 'runtime: "model.py"\n', "<backend directory>/onnxruntime/model.py"),
                        (ONNX_MODEL + 'runtime: "libtriton_pytorch.so"\n', "'libtriton_pytorch.so'"),
                        (ONNX_MODEL + 'runtime: "libtriton_python.so"\n', "'libtriton_python.so' is not served"),
                        (PY_MODEL + 'runtime: "libtriton_onnxruntime.so"\n', "'libtriton_onnxruntime.so'")):
        with pytest.raises(ConfigError) as info:
            parse_pbtxt(text, "m/config.pbtxt", model_name="m")
        assert info.value.key == "runtime" and value in str(info.value), text
        name = "python" if text.startswith(PY_MODEL) else "onnxruntime"
        assert f"leave it out, or 'libtriton_{name}.so'" in str(info.value), text
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(PIPE + 'runtime: "model.py"\n', "pipe/config.pbtxt", model_name="pipe")
    assert info.value.key == "runtime" and "an ensemble has no runtime" in str(info.value)


def test_the_onnx_backend_s_library_is_taken_as_runtime_and_its_windows_name_is_refused() -> None:
    """``libtriton_onnxruntime.so`` is the library Triton on Linux loads for backend ``onnxruntime``
    (``AssembleCPPRuntimeLibraryName``), so a config naming it (config.pbtxt, or JSON as a load request's
    or Triton's ``/v2/models/<m>/config`` gives it) loads there and here."""
    for head in (ONNX_MODEL, ONNX_MODEL.replace('platform: "onnxruntime_onnx"', 'backend: "onnxruntime"'),
                 ONNX_MODEL.replace('platform: "onnxruntime_onnx"', 'platform: "onnxruntime_onnx"\nbackend: "onnxruntime"')):
        cfg = parse_pbtxt(head + 'runtime: "libtriton_onnxruntime.so"\n', "m/config.pbtxt", model_name="m")
        assert cfg.warnings == (), head
    doc = {"name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "runtime": "libtriton_onnxruntime.so",
           "max_batch_size": 4, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
           "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}]}
    assert parse_json_config(json.dumps(doc), "m/config.pbtxt", model_name="m").warnings == ()
    # Triton's name on Windows (``triton_onnxruntime.dll``) is a file Triton on Linux does not find: refused here too
    for load in (lambda: parse_pbtxt(ONNX_MODEL + 'runtime: "triton_onnxruntime.dll"\n', "m/config.pbtxt", model_name="m"),
                 lambda: parse_json_config(json.dumps({**doc, "runtime": "triton_onnxruntime.dll"}), "m/config.pbtxt",
                                           model_name="m")):
        with pytest.raises(ConfigError) as info:
            load()
        assert info.value.key == "runtime" and str(info.value).endswith(
            "'triton_onnxruntime.dll' is Triton's library name on Windows, a file Triton on Linux (as wsserve) does not "
            "find: leave it out, or 'libtriton_onnxruntime.so', the library Triton on Linux loads for backend 'onnxruntime'")


def test_model_metrics_parses_and_is_a_hint() -> None:
    """wsserve's per-model histograms (wsserve_request_duration_seconds...) have fixed buckets shared by every
    model and no ``nv_inference_first_response_histogram_ms``: the buckets are listed in the warning."""
    for text in (ONNX_MODEL, PY_MODEL, PIPE):
        cfg = parse_pbtxt(text + METRICS, "m/config.pbtxt", model_name="m" if "platform: \"ensemble\"" not in text
                          else "pipe")
        assert cfg.warnings == ("model_metrics",), text


@pytest.mark.parametrize("side", ["input", "output"])
def test_is_non_linear_format_io_true_is_refused_naming_the_tensor_and_false_is_taken(side: str) -> None:
    text = ONNX_MODEL.replace('dims: [3] }' if side == "input" else 'dims: [2] }',
                              ('dims: [3]' if side == "input" else 'dims: [2]') + " is_non_linear_format_io: VALUE }")
    cfg = parse_pbtxt(text.replace("VALUE", "false"), "m/config.pbtxt", model_name="m")
    assert cfg.warnings == ()
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(text.replace("VALUE", "true"), "m/config.pbtxt", model_name="m")
    assert info.value.key == f"{side}[0].is_non_linear_format_io" and "TensorRT" in str(info.value)


def test_a_load_request_s_json_config_takes_the_newer_fields_too() -> None:
    doc = {"backend": "python", "max_batch_size": 0, "runtime": "libtriton_python.so",
           "input": [{"name": "IN", "data_type": "TYPE_INT32", "dims": [1], "is_non_linear_format_io": False}],
           "output": [{"name": "OUT", "data_type": "TYPE_INT32", "dims": [1]}],
           "model_metrics": {"metric_control": [{"histogram_options": {"buckets": [1.0, 5.0]}}]}}
    cfg = parse_json_config(json.dumps(doc), "m/config.pbtxt", model_name="m")
    assert cfg.backend == "python" and cfg.warnings == ("model_metrics",)
