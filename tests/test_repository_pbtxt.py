"""Triton's config.pbtxt mapped onto wsserve's ModelConfig (wsserve.repository.pbtxt), sans-I/O,
and read by the repository scan when a model has no config.toml."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")  # the triton extra

from wsserve.repository import (  # noqa: E402
    ConfigError,
    ModelConfig,
    ReloadModel,
    TensorConfig,
    VersionPolicy,
    plan,
    scan,
)
from wsserve.repository.config import MAX_CONFIG_BYTES  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402

#: As Triton's docs write one (model_configuration.md), for an ONNX model.
DOCS_EXAMPLE = """
name: "densenet"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { latest: { num_versions: 1 } }
input [
  {
    name: "input0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "input1"
    data_type: TYPE_INT64
    dims: [ 2, 3 ]
  }
]
output [
  {
    name: "output0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
dynamic_batching { max_queue_delay_microseconds: 2500 }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


def test_the_docs_example_maps_field_by_field() -> None:
    cfg = parse_pbtxt(DOCS_EXAMPLE, "repo/densenet/config.pbtxt", model_name="densenet")
    assert cfg == ModelConfig(
        path=Path("repo/densenet/config.pbtxt"),
        backend="onnx",
        inputs=(TensorConfig("input0", (16,), "float32", (16,)), TensorConfig("input1", (2, 3), "int64", (2, 3))),
        outputs=(TensorConfig("output0", (4,), "float32", (4,)),),
        max_batch_size=8,
        max_delay_ms=2.5,
        instances=2,
        version_policy=VersionPolicy("latest", count=1),
        priority_levels=0,  # Triton's "no priority levels": one class
    )
    assert cfg.source == "config.pbtxt"


def test_defaults_are_tritons() -> None:
    """No version_policy: latest 1; no dynamic_batching: no waiting (greedy); max_batch_size 0; one instance;
    no input/output: the graph's."""
    cfg = parse_pbtxt('backend: "onnxruntime"')
    assert (cfg.backend, cfg.version_policy, cfg.max_delay_ms, cfg.max_batch_size, cfg.instances, cfg.inputs, cfg.outputs) == \
        ("onnx", VersionPolicy("latest", count=1), 0.0, 0, 1, None, None)
    assert not cfg.batching
    assert parse_pbtxt("").backend == "onnx"  # neither platform nor backend: the file names ONNX (Triton infers it)
    assert parse_pbtxt("dynamic_batching { }").max_delay_ms == 0.0


@pytest.mark.parametrize(("text", "autofill"), [
    ('platform: "onnxruntime_onnx"', True),  # Triton auto-completes: the graph decides whether it batches
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [3] }]', True),
    ('output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]', True),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [3] }] output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]', False),
    ("max_batch_size: 4", False),
])
def test_max_batch_size_is_auto_completed_as_triton_does(text: str, autofill: bool) -> None:
    assert parse_pbtxt(text).autofill_batching is autofill


@pytest.mark.parametrize(("text", "policy"), [
    ("version_policy: { all: {} }", VersionPolicy("all")),
    ("version_policy: { latest: { num_versions: 3 } }", VersionPolicy("latest", count=3)),
    ("version_policy: { specific: { versions: [4, 1, 4] } }", VersionPolicy("specific", versions=(1, 4))),
])
def test_version_policies(text: str, policy: VersionPolicy) -> None:
    assert parse_pbtxt(text).version_policy == policy


@pytest.mark.parametrize(("type_name", "dtype"), [
    ("TYPE_FP32", "float32"), ("TYPE_FP64", "float64"), ("TYPE_INT32", "int32"), ("TYPE_INT64", "int64"), ("TYPE_BOOL", "bool"),
])
def test_data_types(type_name: str, dtype: str) -> None:
    cfg = parse_pbtxt(f'input [{{ name: "x" data_type: {type_name} dims: [1] }}]')
    assert cfg.inputs == (TensorConfig("x", (1,), dtype, (1,)),)


def test_a_variable_dim_is_kept_for_the_graphs_check() -> None:
    """No fixed shape (the ONNX backend compares the dims as written with the graph's, at load)."""
    cfg = parse_pbtxt('max_batch_size: 4 input [{ name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] }]')
    assert cfg.inputs == (TensorConfig("x", None, "float32", (-1, 3)),)


def test_instances_gpu_and_threads_and_model_file() -> None:
    cfg = parse_pbtxt("""
        instance_group [ { count: 2 kind: KIND_GPU gpus: [0, 1] }, { kind: KIND_CPU }, { count: 3 kind: KIND_AUTO } ]
        parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
        default_model_filename: "densenet.onnx"
    """)
    assert (cfg.instances, cfg.onnx_intra_op_threads, cfg.model_file) == (4 + 1 + 3, 3, "densenet.onnx")
    assert cfg.warnings == ("instance_group[0].kind KIND_GPU (runs on CPU: 4 instances)",)
    assert parse_pbtxt('default_model_filename: "model.onnx"').model_file is None
    leading = parse_pbtxt('parameters { key: "intra_op_thread_count" value: { string_value: "' + "0" * 5000 + '4" } }')
    assert leading.onnx_intra_op_threads == 4


def test_hints_are_accepted_and_listed_for_one_warning() -> None:
    cfg = parse_pbtxt("""
        platform: "onnxruntime_onnx"
        input [{ name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 2, 2] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [2] label_filename: "labels.txt" }]
        dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 8] preserve_ordering: true }
        instance_group [{ count: 1 kind: KIND_CPU rate_limiter { priority: 1 } }]
        optimization { execution_accelerators { cpu_execution_accelerator: [{ name: "openvino" }] } }
        model_warmup [{ name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [3, 2, 2] zero_data: true } } }]
        response_cache { enable: true }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        model_transaction_policy { decoupled: false }
    """)
    assert cfg.max_delay_ms == 0.1
    assert cfg.response_cache is True  # honoured, not a hint
    assert [w.name for w in cfg.warmup] == ["w"]  # honoured too (tests/test_repository_model_warmup.py)
    assert set(cfg.warnings) == {
        "optimization", "dynamic_batching.preferred_batch_size",
        "dynamic_batching.preserve_ordering", "input[0].format", "output[0].label_filename",
        "instance_group[0].rate_limiter", "parameters.execution_mode",
    }


def test_response_cache_enable_maps_onto_the_config_key() -> None:
    """``response_cache { enable: true }`` is config.toml's ``response_cache = true``; absent or
    ``enable: false``, the model is not cached (and nothing is warned about)."""
    assert parse_pbtxt("response_cache { enable: true }").response_cache is True
    off = parse_pbtxt("response_cache { enable: false }")
    assert (off.response_cache, off.warnings) == (False, ())
    assert parse_pbtxt("max_batch_size: 4").response_cache is False


def test_the_default_queue_policy_maps_onto_the_models_queue_fields() -> None:
    """Triton's ``default_queue_policy``: ``max_queue_size`` requests, ``default_timeout_microseconds``
    (0: none) and ``allow_timeout_override`` (protobuf's default: false); the rest of
    ``dynamic_batching`` is still a hint."""
    cfg = parse_pbtxt("""
        dynamic_batching { preferred_batch_size: 4 default_queue_policy { max_queue_size: 8
          default_timeout_microseconds: 2500 allow_timeout_override: true } }
    """)
    assert (cfg.max_queue_requests, cfg.default_timeout_ms, cfg.allow_timeout_override) == (8, 2.5, True)
    assert cfg.warnings == ("dynamic_batching.preferred_batch_size",)
    cfg = parse_pbtxt("dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000 } }")
    assert (cfg.max_queue_requests, cfg.default_timeout_ms, cfg.allow_timeout_override) == (None, 1.0, False)
    cfg = parse_pbtxt("dynamic_batching { }")
    assert (cfg.max_queue_requests, cfg.default_timeout_ms, cfg.allow_timeout_override) == (None, None, True)


def test_priority_levels_map_onto_the_models_levels() -> None:
    """Triton's ``priority_levels`` / ``default_priority_level`` are honoured, not warned about; a
    config without them (or without ``dynamic_batching``) has Triton's "no levels" (0); a model
    without config.pbtxt keeps None (wsserve's two classes)."""
    cfg = parse_pbtxt("dynamic_batching { priority_levels: 3 default_priority_level: 2 }")
    assert (cfg.priority_levels, cfg.default_priority_level, cfg.warnings) == (3, 2, ())
    cfg = parse_pbtxt("dynamic_batching { priority_levels: 16 default_priority_level: 16 preserve_ordering: false }")
    assert (cfg.priority_levels, cfg.default_priority_level) == (16, 16)
    for text in ("dynamic_batching { }", "max_batch_size: 4"):
        assert (parse_pbtxt(text).priority_levels, parse_pbtxt(text).default_priority_level) == (0, 0)
    # without levels Triton checks no default and reports it as written; one level either way
    assert (parse_pbtxt("dynamic_batching { default_priority_level: 3 }").priority_levels,
            parse_pbtxt("dynamic_batching { default_priority_level: 3 }").default_priority_level) == (0, 3)
    one = parse_pbtxt("dynamic_batching { priority_levels: 1 default_priority_level: 1 preserve_ordering: true }")
    assert (one.priority_levels, one.warnings) == (1, ("dynamic_batching.preserve_ordering",))


def test_priority_queue_policies_map_onto_the_models_levels() -> None:
    """Triton's ``priority_queue_policy``: each level's own policy, its fields read as
    ``default_queue_policy``'s (an absent field is protobuf's default, not the default policy's)."""
    from wsserve.batching import QueuePolicy

    cfg = parse_pbtxt("""
        dynamic_batching { priority_levels: 3 default_priority_level: 2
          default_queue_policy { max_queue_size: 8 default_timeout_microseconds: 5000 allow_timeout_override: true }
          priority_queue_policy [
            { key: 3 value: { max_queue_size: 2 } },
            { key: 1 value: { default_timeout_microseconds: 1500 allow_timeout_override: true timeout_action: REJECT } } ] }""")
    assert (cfg.max_queue_requests, cfg.default_timeout_ms, cfg.allow_timeout_override) == (8, 5.0, True)
    assert cfg.priority_queue_policies == ((1, QueuePolicy(None, 1.5, True)), (3, QueuePolicy(2, None, False)))
    assert cfg.warnings == ()
    assert parse_pbtxt("dynamic_batching { priority_levels: 2 default_priority_level: 1 }").priority_queue_policies == ()


def test_timeout_action_delay_is_read_for_the_default_and_each_levels_policy() -> None:
    """Triton's ``timeout_action: DELAY``: a request past its queue timeout waits on (served after its
    level's others) instead of being rejected; REJECT, protobuf's default, where a policy leaves it out."""
    from wsserve.batching import QueuePolicy

    cfg = parse_pbtxt("""
        dynamic_batching { priority_levels: 2 default_priority_level: 2
          default_queue_policy { default_timeout_microseconds: 5000 timeout_action: DELAY }
          priority_queue_policy [
            { key: 1 value: { default_timeout_microseconds: 1500 timeout_action: DELAY } },
            { key: 2 value: { max_queue_size: 3 } } ] }""")
    assert (cfg.default_timeout_ms, cfg.timeout_action) == (5.0, "DELAY")
    assert cfg.priority_queue_policies == ((1, QueuePolicy(None, 1.5, False, "DELAY")), (2, QueuePolicy(3, None, False)))
    assert cfg.priority_queue_policies[1][1].timeout_action == "REJECT"
    assert parse_pbtxt("dynamic_batching { }").timeout_action == "REJECT"


@pytest.mark.parametrize(("text", "key", "words"), [
    ("dynamic_batching { priority_levels: 3 }", "dynamic_batching.default_priority_level",
     ["must be in [1, 3]", "priority_levels is 3", "got 0"]),
    ("dynamic_batching { priority_levels: 3 default_priority_level: 4 }", "dynamic_batching.default_priority_level",
     ["must be in [1, 3]", "got 4"]),
    ("dynamic_batching { priority_levels: 17 default_priority_level: 1 }", "dynamic_batching.priority_levels",
     ["[0, 16]", "got 17"]),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value { "
     "max_queue_size: 4 } } }", "dynamic_batching.priority_queue_policy", ["key 3 not in [1, 2]", "priority_levels is 2"]),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy [ { key: 0 value { } }, "
     "{ key: 1 value { } }, { key: 9 value { } } ] }", "dynamic_batching.priority_queue_policy", ["keys 0, 9 not in [1, 2]"]),
    ("dynamic_batching { priority_queue_policy { key: 1 value { max_queue_size: 4 } } }",
     "dynamic_batching.priority_queue_policy", ["key 1 not in [1, 0]", "priority_levels is 0"]),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 2 value { "
     "timeout_action: 5 } } }", "dynamic_batching.priority_queue_policy[2].timeout_action",
     ["5 is not one of Triton's values"]),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 2 value { "
     "max_queue_size: 1000001 } } }", "dynamic_batching.priority_queue_policy[2].max_queue_size", ["1000001"]),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 preserve_ordering: true }",
     "dynamic_batching.preserve_ordering", ["priority_levels 2", "one level"]),
    ("dynamic_batching { default_queue_policy { timeout_action: 2 } }",
     "dynamic_batching.default_queue_policy.timeout_action", ["2 is not one of Triton's values"]),
    ("dynamic_batching { default_queue_policy { max_queue_size: 2000000 } }",
     "dynamic_batching.default_queue_policy.max_queue_size", ["[0, 1000000]", "2000000"]),
    ("dynamic_batching { default_queue_policy { default_timeout_microseconds: 9999999999999 } }",
     "dynamic_batching.default_queue_policy.default_timeout_microseconds", ["9999999999999"]),
    ('platform: "tensorrt_plan"', "platform", ["'tensorrt_plan'", "onnxruntime_onnx"]),
    ('platform: "pytorch_libtorch"', "platform", ["'pytorch_libtorch'"]),
    ('platform: "ensemble"', "input", ["required in an ensemble"]),  # served (test_ensemble_plan.py) when complete
    ('backend: "pytorch"', "backend", ["'pytorch'", "onnxruntime", "python"]),
    ('backend: "python"', "input", ["required for a Python model"]),
    ('name: "other"', "name", ["'other'", "'m'", "directory"]),
    ("max_batch_size: -1", "max_batch_size", ["[0, 65536]", "-1"]),
    ("max_batch_size: 70000", "max_batch_size", ["70000"]),
    ("sequence_batching { iterative_sequence: true }", "sequence_batching.iterative_sequence",
     ["Triton Python model only", "onnxruntime", "set_release_flags"]),
    ("ensemble_scheduling { }", "ensemble_scheduling", ["not supported"]),
    ('batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 }]', "batch_input", ["max_batch_size > 0"]),
    ('batch_output [{ target_name: "y" }]', "batch_output", ["max_batch_size > 0"]),
    ("model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled", ["backend: \"python\"", "only"]),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [4] reshape: { shape: [2, 3] } }]', "input[0].reshape.shape", ["[4] against [6]"]),
    ('input [{ name: "x" data_type: TYPE_INT64 dims: [1] is_shape_tensor: true }]', "input[0].is_shape_tensor", ["shape tensors"]),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [1] allow_ragged_batch: true }]', "input[0].allow_ragged_batch", ["max_batch_size > 0"]),
    ('output [{ name: "y" data_type: TYPE_FP32 dims: [4] reshape: { shape: [-1] } }]', "output[0].reshape.shape", ["variable on both sides"]),
    ('input [{ name: "x" data_type: TYPE_INVALID dims: [1] }]', "input[0].data_type", ["is required", "TYPE_BF16", "TYPE_FP16"]),
    ('input [{ name: "x" data_type: TYPE_STRING dims: [1] }]', "input[0].data_type", ["TYPE_STRING"]),
    ('input [{ name: "x" dims: [1] }]', "input[0].data_type", ["required"]),
    ('input [{ name: "x" data_type: 99 dims: [1] }]', "input[0].data_type", ["99 is not one of Triton's values"]),
    ("instance_group [{ kind: 7 }]", "instance_group[0].kind", ["7 is not one of Triton's values"]),
    ('input [{ data_type: TYPE_FP32 dims: [1] }]', "input[0].name", ["required"]),
    ('input [{ name: "a b" data_type: TYPE_FP32 dims: [1] }]', "input[0].name", ["'a b'"]),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [1] }, { name: "x" data_type: TYPE_FP32 dims: [1] }]', "input[1].name", ["duplicate"]),
    ('input [{ name: "x" data_type: TYPE_FP32 }]', "input[0].dims", ["required"]),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [0] }]', "input[0].dims", ["dimension 0"]),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [-2] }]', "input[0].dims", ["dimension -2"]),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [1,1,1,1,1,1,1,1,1] }]', "input[0].dims", ["9 dimensions"]),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [4096, 4096] }]', "input[0].dims", ["values per row"]),
    ("version_policy: { latest: { num_versions: 0 } }", "version_policy.latest.num_versions", ["[1, 1000]"]),
    ("version_policy: { specific: { } }", "version_policy.specific.versions", ["at least one"]),
    ("version_policy: { specific: { versions: [0] } }", "version_policy.specific.versions", ["version 0"]),
    ("dynamic_batching { max_queue_delay_microseconds: 60000001 }", "dynamic_batching.max_queue_delay_microseconds", ["60000001"]),
    ("instance_group [{ count: 65 }]", "instance_group", ["65 instances", "64"]),
    ("instance_group [{ count: -1 }]", "instance_group[0].count", ["-1"]),
    ("instance_group [{ kind: KIND_MODEL }]", "instance_group[0].kind", ["KIND_MODEL"]),
    ('default_model_filename: "../model.onnx"', "default_model_filename", ["plain file name"]),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "many" } }', "parameters.intra_op_thread_count", ["'many'"]),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "65" } }', "parameters.intra_op_thread_count", ["[0, 64]"]),
    # int() of more than 4300 digits (leading zeros counted) raised ValueError, not a ConfigError
    ('parameters { key: "intra_op_thread_count" value: { string_value: "' + "9" * 5000 + '" } }',
     "parameters.intra_op_thread_count", ["[0, 64]", "'99999"]),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "' + "0" * 5000 + '65" } }',
     "parameters.intra_op_thread_count", ["[0, 64]"]),
])
def test_refusals_name_file_and_field(text: str, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(text, "repo/m/config.pbtxt", model_name="m")
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"repo/m/config.pbtxt: key '{key}': ")
    for word in words:
        assert word in message


_PY_SEQ = ('backend: "python"\nmax_batch_size: 4\ninput [{ name: "IN" data_type: TYPE_INT32 dims: [1] }]\n'
           'output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]\n')


@pytest.mark.parametrize(("text", "key", "words"), [
    ('sequence_batching { state [{ input_name: "a" output_name: "b" data_type: TYPE_FP32 dims: [1] }] }',
     "sequence_batching.state", ["implicit state", "ONNX models"]),
    ("sequence_batching { max_sequence_idle_microseconds: 3600000001 }",
     "sequence_batching.max_sequence_idle_microseconds", ["3600000001"]),
    ('sequence_batching { control_input [{ name: "S" }] }', "sequence_batching.control_input[0].control",
     ["exactly one control, got 0"]),
    ('sequence_batching { control_input [{ name: "S" control [{ kind: CONTROL_SEQUENCE_START }] }] }',
     "sequence_batching.control_input[0].control[0]", ["int32_false_true", "two values"]),
    ('sequence_batching { control_input [{ name: "S" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 }] }] }',
     "sequence_batching.control_input[0].control[0].data_type", ["TYPE_FP32", "TYPE_UINT64"]),
    ('sequence_batching { control_input [{ name: "IN" control [{ kind: CONTROL_SEQUENCE_READY int32_false_true: [0, 1] }] }] }',
     "sequence_batching.control_input[0].name", ["'IN' is already an input"]),
    ("sequence_batching { }\nmodel_transaction_policy { decoupled: true }", "sequence_batching", ["decoupled"]),
])
def test_sequence_batching_refusals_name_the_field(text: str, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(_PY_SEQ + text, "repo/m/config.pbtxt", model_name="m")
    assert info.value.key == key
    for word in words:
        assert word in str(info.value)


def test_sequence_batching_of_a_python_model_is_read() -> None:
    cfg = parse_pbtxt(_PY_SEQ + 'sequence_batching { oldest { max_candidate_sequences: 4 } control_input [\n'
                      '{ name: "S" control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] },\n'
                      '{ name: "C" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING }] }] }',
                      "repo/m/config.pbtxt", model_name="m")
    seq = cfg.sequence
    assert seq.max_idle_s == 1.0 and seq.strategy == "oldest"  # Triton's default idle time
    assert [(c.name, c.kind, c.dtype.name, c.false, c.true) for c in seq.controls] == [
        ("S", "START", "float32", 0.0, 1.0), ("C", "CORRID", "object", 0, 1)]
    assert seq.as_json["max_sequence_idle_microseconds"] == "1000000"
    assert seq.max_candidate_sequences == 4 and cfg.max_delay_ms == 0.0
    assert not [w for w in cfg.warnings if "sequence_batching" in w]  # Oldest's fields are served


def test_oldest_sequence_batching_serves_its_candidates_and_window_and_bounds_them() -> None:
    from wsserve.repository.errors import ConfigError

    cfg = parse_pbtxt(_PY_SEQ + 'sequence_batching { oldest { max_candidate_sequences: 16 '
                      'max_queue_delay_microseconds: 2500 preferred_batch_size: [2] preserve_ordering: true } }',
                      "repo/m/config.pbtxt", model_name="m")
    assert (cfg.sequence.max_candidate_sequences, cfg.sequence.max_queue_delay_us, cfg.max_delay_ms) == (16, 2500, 2.5)
    assert {w for w in cfg.warnings if "sequence_batching" in w} == {
        "sequence_batching.oldest.preferred_batch_size", "sequence_batching.oldest.preserve_ordering"}
    with pytest.raises(ConfigError, match="max_candidate_sequences.*4096"):
        parse_pbtxt(_PY_SEQ + 'sequence_batching { oldest { max_candidate_sequences: 5000 } }', "repo/m/config.pbtxt")
    with pytest.raises(ConfigError, match="max_queue_delay_microseconds"):
        parse_pbtxt(_PY_SEQ + 'sequence_batching { oldest { max_queue_delay_microseconds: 99000000000 } }',
                    "repo/m/config.pbtxt")


@pytest.mark.parametrize(("data", "words"), [
    (b"max_batch_size: 8\nbogus_field: 1\n", ["not a valid Triton model configuration", "2:1", "bogus_field"]),
    (b"max_batch_size: \"eight\"", ["not a valid Triton model configuration"]),
    (b"max_batch_size: 1 max_batch_size: 2", ["not a valid Triton model configuration"]),
    (b'input [{ name: "x" data_type: 9223372036854775807 dims: [1] }]', ["not a valid Triton model configuration", "out of range"]),
    (b"instance_group [{ kind: -99999999999 }]", ["not a valid Triton model configuration", "out of range"]),
    (b"\xff\xfe", ["not UTF-8"]),
    (b"#" * (MAX_CONFIG_BYTES + 1), ["bytes; at most"]),
])
def test_bad_text_names_the_file(data: bytes, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(data, "repo/m/config.pbtxt")
    assert str(info.value).startswith("repo/m/config.pbtxt: ")
    for word in words:
        assert word in str(info.value)


def test_without_tritonclient_the_error_names_the_file_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # `from tritonclient.grpc import ...` raises ImportError
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(DOCS_EXAMPLE, "repo/densenet/config.pbtxt")
    assert str(info.value) == ("repo/densenet/config.pbtxt: reading a Triton config.pbtxt needs tritonclient[grpc]: "
                               "pip install 'wsserve[triton]'")


def test_the_core_does_not_import_tritonclient(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.toml").write_text("max_batch_size = 4\n")
    code = ("import sys, wsserve.repository, wsserve.registry; s = wsserve.repository.scan(sys.argv[1]); "
            "assert s.models[0].config is not None; assert 'tritonclient' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)


# --------------------------------------------------------------------------- the scan


def _model(repo: Path, name: str, *files: tuple[str, str]) -> Path:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.onnx").write_bytes(b"not loaded by scan")
    for fname, text in files:
        (repo / name / fname).write_text(text)
    return repo / name


def test_the_scan_reads_config_pbtxt_without_config_toml(tmp_path: Path) -> None:
    _model(tmp_path, "densenet", ("config.pbtxt", DOCS_EXAMPLE))
    m = scan(tmp_path).model("densenet")
    assert m is not None and m.error is None and m.ignored == ()  # config.pbtxt is not "junk"
    assert m.config == parse_pbtxt(DOCS_EXAMPLE, tmp_path / "densenet" / "config.pbtxt", model_name="densenet")
    assert m.selected == (1,)


def test_both_config_files_refuse_the_model_naming_both(tmp_path: Path) -> None:
    _model(tmp_path, "m", ("config.pbtxt", DOCS_EXAMPLE.replace("densenet", "m")), ("config.toml", "max_batch_size = 4\n"))
    m = scan(tmp_path).model("m")
    assert m is not None and m.config is None
    assert m.error == f"{tmp_path / 'm'}: holds both config.toml and config.pbtxt; keep one (wsserve would not know which to follow)"


def test_a_name_other_than_the_directory_is_refused(tmp_path: Path) -> None:
    _model(tmp_path, "resnet", ("config.pbtxt", DOCS_EXAMPLE))  # name: "densenet"
    m = scan(tmp_path).model("resnet")
    assert m is not None and m.config is None and m.error is not None
    assert m.error.startswith(f"{tmp_path / 'resnet' / 'config.pbtxt'}: key 'name': is 'densenet'")


def test_default_model_filename_is_the_version_file(tmp_path: Path) -> None:
    model = _model(tmp_path, "m", ("config.pbtxt", 'default_model_filename: "net.onnx"'))
    m = scan(tmp_path).model("m")
    assert m is not None and m.versions[0].error is not None and "there is no net.onnx" in m.versions[0].error
    (model / "1" / "net.onnx").write_bytes(b"x")
    m = scan(tmp_path).model("m")
    assert m is not None and m.versions[0].error is None and m.versions[0].backend == "onnx"


def test_a_changed_config_pbtxt_reloads_the_model(tmp_path: Path) -> None:
    """--reload: the scan's fingerprint covers config.pbtxt, so an edit plans a ReloadModel."""
    model = _model(tmp_path, "m", ("config.pbtxt", "max_batch_size: 8"))
    first = scan(tmp_path)
    assert plan(first, scan(tmp_path)) == []
    (model / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100 }\n")
    second = scan(tmp_path)
    actions = plan(first, second)
    assert [type(a) for a in actions] == [ReloadModel]
    assert second.model("m").config.max_delay_ms == 0.1  # type: ignore[union-attr]
    (model / "config.pbtxt").rename(model / "config.toml")  # the same bytes, another file: not the same config
    (model / "config.toml").write_text("max_batch_size = 8\n")
    assert [type(a) for a in plan(second, scan(tmp_path))] == [ReloadModel]


def test_load_version_reads_default_model_filename_and_names_config_pbtxt(tmp_path: Path) -> None:
    """The loader opens ``default_model_filename``; a graph that disagrees names config.pbtxt, not config.toml."""
    pytest.importorskip("onnxruntime")
    onnx_builders = pytest.importorskip("tests.onnx_builders")
    from wsserve.repository import ModelLoadError, load_version

    model, ref = onnx_builders.linear_layer(3, 2)
    onnx_builders.save(model, tmp_path / "1")
    (tmp_path / "1" / "model.onnx").rename(tmp_path / "1" / "net.onnx")
    cfg = parse_pbtxt('max_batch_size: 4 default_model_filename: "net.onnx" input [{ name: "x" data_type: TYPE_FP32 dims: [3] }]',
                      tmp_path / "config.pbtxt")
    loaded = load_version("m", 1, tmp_path / "1", cfg)
    try:
        x = np.ones((2, 3), np.float32)
        np.testing.assert_allclose(loaded.predict(x), ref(x), rtol=1e-5, atol=1e-6)
        assert loaded.path == tmp_path / "1" / "net.onnx" and loaded.config.instances == 1
    finally:
        loaded.close()
    bad = parse_pbtxt('max_batch_size: 4 default_model_filename: "net.onnx" input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]',
                      tmp_path / "config.pbtxt")
    with pytest.raises(ModelLoadError, match=r"net\.onnx: model 'm', input 'x': config\.pbtxt dims \[4\] .* disagree with the graph's shape \[-1, 3\]"):
        load_version("m", 1, tmp_path / "1", bad)


def test_a_tritonclient_that_fails_to_import_refuses_the_pbtxt_model_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only ImportError: protobuf's generated code raises runtime_version.VersionError (an Exception) when the
    installed protobuf is older than the one tritonclient's model_config_pb2 was generated for. The scan went down
    with it (and the server's start); now the config.pbtxt model is refused naming the cause, the others stay."""
    from google.protobuf import runtime_version

    class Broken(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            raise runtime_version.VersionError("Detected mismatched Protobuf Gencode/Runtime version suffixes")

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", Broken("tritonclient.grpc"))
    _model(tmp_path, "densenet", ("config.pbtxt", DOCS_EXAMPLE))
    _model(tmp_path, "plain", ("config.toml", "max_batch_size = 4\n"))
    s = scan(tmp_path)
    assert s.model("plain") is not None and s.model("plain").error is None  # type: ignore[union-attr]
    m = s.model("densenet")
    assert m is not None and m.config is None and m.error is not None
    assert m.error.startswith(f"{tmp_path / 'densenet' / 'config.pbtxt'}: reading a Triton config.pbtxt needs tritonclient[grpc]")
    assert "VersionError: Detected mismatched Protobuf" in m.error
