"""config.toml parsing (wsserve.repository.config): every key, every bound, every error names file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsserve.repository import (
    ConfigError,
    ModelConfig,
    TensorConfig,
    VersionPolicy,
    load_config,
    parse_config,
)

P = Path("/repo/m/config.toml")


def test_empty_config_is_all_defaults() -> None:
    cfg = parse_config("", P)
    assert cfg == ModelConfig(path=P)
    assert cfg.inputs is None and cfg.outputs is None and cfg.max_batch_size is None
    assert cfg.instances == 1 and cfg.onnx_intra_op_threads == 1 and cfg.version_policy == VersionPolicy("all")
    assert cfg.batching


def test_every_key() -> None:
    cfg = parse_config(
        """
        backend = "python"
        task = "classification"
        input_shape = [2, 3]
        input_dtype = "int64"
        output_shape = [4]
        max_batch_size = 64
        max_delay_ms = 2.5
        instances = 2
        flops_per_row = 1000
        version_policy = { latest = 2 }
        model_load_timeout_s = 1800
        guide_compile_memory_bytes = 536870912
        guide_compile_cpu_s = 30
        guide_compile_timeout_s = 45
        [onnx]
        intra_op_num_threads = 4
        """,
        P,
    )
    assert cfg.backend == "python" and cfg.task == "classification"
    assert cfg.inputs == (TensorConfig(None, (2, 3), "int64"),)
    assert cfg.outputs == (TensorConfig(None, (4,), None),)
    assert (cfg.max_batch_size, cfg.max_delay_ms, cfg.instances, cfg.flops_per_row) == (64, 2.5, 2, 1000)
    assert cfg.version_policy == VersionPolicy("latest", count=2)
    assert cfg.onnx_intra_op_threads == 4
    assert cfg.model_load_timeout_s == 1800.0
    assert (cfg.guide_compile_memory_bytes, cfg.guide_compile_cpu_s, cfg.guide_compile_timeout_s) == (512 << 20, 30, 45.0)


def test_named_tensors() -> None:
    cfg = parse_config(
        """
        [[inputs]]
        name = "a"
        shape = [3]
        dtype = "float32"
        [[inputs]]
        name = "input:0"
        [[outputs]]
        name = "probabilities"
        """,
        P,
    )
    assert cfg.inputs == (TensorConfig("a", (3,), "float32"), TensorConfig("input:0", None, None))
    assert cfg.outputs == (TensorConfig("probabilities"),)


@pytest.mark.parametrize(
    "text, policy",
    [
        ('version_policy = "all"', VersionPolicy("all")),
        ('version_policy = "latest"', VersionPolicy("latest", count=1)),
        ("version_policy = { latest = 3 }", VersionPolicy("latest", count=3)),
        ("version_policy = { specific = [10, 2, 2] }", VersionPolicy("specific", versions=(2, 10))),
    ],
)
def test_version_policies(text: str, policy: VersionPolicy) -> None:
    assert parse_config(text, P).version_policy == policy


def test_max_batch_size_zero_means_no_batch_dimension() -> None:
    cfg = parse_config("max_batch_size = 0", P)
    assert cfg.max_batch_size == 0 and not cfg.batching


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("bogus = 1", "bogus", ["unknown key", "input_shape"]),
        ("input_shape = []", "input_shape", ["must not be empty"]),
        ("input_shape = [0]", "input_shape", ["dimension 0", "out of range"]),
        ("input_shape = [-3]", "input_shape", ["dimension -3"]),
        ("input_shape = [1.5]", "input_shape", ["integers", "a number"]),
        ("input_shape = [true]", "input_shape", ["integers", "a boolean"]),
        ("input_shape = 3", "input_shape", ["array of positive integers", "an integer"]),
        ("input_shape = [1,1,1,1,1,1,1,1,1]", "input_shape", ["9 dimensions", "at most 8"]),
        ("input_shape = [4194305]", "input_shape", ["4194305", "out of range"]),
        ("input_shape = [4096, 4096]", "input_shape", ["16777216 values per row", "at most 4194304"]),
        ("output_shape = []", "output_shape", ["must not be empty"]),
        ('input_dtype = "bfloat8"', "input_dtype", ["float16", "bfloat16", "'bfloat8'"]),
        ('backend = "tensorflow"', "backend", ["onnx, npz, python", "'tensorflow'"]),
        ('task = "poetry"', "task", ["regression", "'poetry'"]),
        ("task = 1", "task", ["an integer"]),
        ("max_batch_size = -1", "max_batch_size", ["[0, 65536]", "-1"]),
        ("max_batch_size = 65537", "max_batch_size", ["[0, 65536]", "65537"]),
        ("max_batch_size = 1e3", "max_batch_size", ["integer", "a number"]),
        ("max_batch_size = true", "max_batch_size", ["integer", "a boolean"]),
        ('max_batch_size = "8"', "max_batch_size", ["integer", "a string"]),
        ("max_delay_ms = -1", "max_delay_ms", ["[0, 60000]", "-1"]),
        ("max_delay_ms = inf", "max_delay_ms", ["[0, 60000]", "inf"]),
        ("max_delay_ms = nan", "max_delay_ms", ["[0, 60000]", "nan"]),
        ("max_delay_ms = 1e9", "max_delay_ms", ["[0, 60000]"]),
        ("model_load_timeout_s = 0", "model_load_timeout_s", ["(0, 86400]", "got 0"]),
        ("model_load_timeout_s = -5", "model_load_timeout_s", ["(0, 86400]", "-5"]),
        ("model_load_timeout_s = inf", "model_load_timeout_s", ["(0, 86400]", "inf"]),
        ("model_load_timeout_s = nan", "model_load_timeout_s", ["(0, 86400]", "nan"]),
        ("model_load_timeout_s = 86401", "model_load_timeout_s", ["(0, 86400]", "86401"]),
        ('model_load_timeout_s = "600"', "model_load_timeout_s", ["(0, 86400]", "'600'"]),
        ("guide_compile_memory_bytes = 0", "guide_compile_memory_bytes", ["64 MiB..64 GiB", "got 0"]),
        ("guide_compile_memory_bytes = 1e9", "guide_compile_memory_bytes", ["integer", "1000000000.0"]),
        ("guide_compile_cpu_s = 3601", "guide_compile_cpu_s", ["[1, 3600]", "3601"]),
        ("guide_compile_timeout_s = nan", "guide_compile_timeout_s", ["[0.1, 3600]", "nan"]),
        ('guide_compile_timeout_s = "15"', "guide_compile_timeout_s", ["[0.1, 3600]", "'15'"]),
        ("instances = 0", "instances", ["[1, 64]", "0"]),
        ("instances = 100000", "instances", ["[1, 64]", "100000"]),
        ("flops_per_row = 0", "flops_per_row", ["[1, "]),
        ("flops_per_row = 10000000000000000", "flops_per_row", ["10000000000000000"]),
        ('version_policy = "newest"', "version_policy", ["'newest'", "latest"]),
        ("version_policy = { latest = 0 }", "version_policy.latest", ["[1, 1000]", "0"]),
        ("version_policy = { specific = [] }", "version_policy.specific", ["non-empty"]),
        ("version_policy = { specific = [0] }", "version_policy.specific", ["[1, ", "got 0"]),
        ("version_policy = { specific = [1000000000000000] }", "version_policy.specific", ["1000000000000000"]),
        ("version_policy = { oldest = 1 }", "version_policy.oldest", ["unknown policy"]),
        ("version_policy = { latest = 1, specific = [1] }", "version_policy", ["exactly one"]),
        ("onnx = 3", "onnx", ["must be a table"]),
        ("[onnx]\nintra_op_num_threads = 0", "onnx.intra_op_num_threads", ["[1, 64]"]),
        ("[onnx]\nthreads = 2", "onnx.threads", ["unknown key", "intra_op_num_threads"]),
        ('input_shape = [2]\n[[inputs]]\nname = "a"', "input_shape", ["together with [[inputs]]"]),
        ("[[inputs]]\nshape = [2]", "inputs[0].name", ["is required"]),
        ('[[inputs]]\nname = "a b"', "inputs[0].name", ["printable", "'a b'"]),
        ('[[inputs]]\nname = ""', "inputs[0].name", ["printable"]),
        ('[[inputs]]\nname = "a"\n[[inputs]]\nname = "a"', "inputs[1].name", ["duplicate", "'a'"]),
        ('[[inputs]]\nname = "a"\nshape = []', "inputs[0].shape", ["must not be empty"]),
        ('[[inputs]]\nname = "a"\ndtype = "complex64"', "inputs[0].dtype", ["'complex64'"]),
        ('[[outputs]]\nname = "a"\nsize = 3', "outputs[0].size", ["unknown key"]),
        ("max_queue_requests = 0", "max_queue_requests", ["[1, 1000000]"]),
        ("max_queue_requests = 1.5", "max_queue_requests", ["integer"]),
        ("default_timeout_ms = 0", "default_timeout_ms", ["(0, 2147483647]", "0"]),
        ("default_timeout_ms = nan", "default_timeout_ms", ["nan"]),
        ('default_timeout_ms = "5"', "default_timeout_ms", ["'5'"]),
        ('allow_timeout_override = "no"', "allow_timeout_override", ["true or false", "a string"]),
        ("response_cache = 1", "response_cache", ["true or false", "an integer"]),
        ('inputs = "a"', "inputs", ["array of tables"]),
        ("inputs = []", "inputs", ["must not be empty"]),
        # integers beyond TOML's 64 bits: they overflowed a float, or could not be shown, escaping as other errors
        ("max_delay_ms = " + "1" * 400, "max_delay_ms", ["1111111111... (400 digits)", "TOML integers are 64-bit"]),
        ("model_load_timeout_s = -" + "1" * 400, "model_load_timeout_s", ["-111111111... (401 digits)"]),
        ("max_batch_size = 0x" + "f" * 4000, "max_batch_size", ["an integer of 16000 bits", "64-bit"]),
        ("max_batch_size = 9223372036854775808", "max_batch_size", ["9223372036... (19 digits)"]),
        ("input_shape = [2, 0x" + "f" * 4000 + "]", "input_shape", ["16000 bits"]),
        ("[onnx]\nintra_op_num_threads = 0x" + "f" * 4000, "onnx.intra_op_num_threads", ["16000 bits"]),
        ("version_policy = { specific = [1, 0o" + "7" * 5000 + "] }", "version_policy.specific", ["15000 bits"]),
        ('[[inputs]]\nname = "a"\nshape = [2, 0x' + "f" * 4000 + "]", "inputs[0].shape", ["16000 bits"]),
    ],
)
def test_bad_values_name_file_and_key(text: str, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, P)
    err = info.value
    assert err.key == key
    assert str(err).startswith(f"{P}: key '{key}': ")
    for word in words:
        assert word in str(err), (word, str(err))


def test_an_integer_of_more_than_4300_digits_is_invalid_toml() -> None:
    """tomllib's int() of it raised ValueError (Python's digit limit), not a ConfigError."""
    with pytest.raises(ConfigError) as info:
        parse_config("input_shape = [" + "9" * 5000 + "]", P)
    assert str(info.value) == f"{P}: is not valid TOML (an integer of more than 4300 digits; TOML integers are 64-bit)"


def test_too_many_named_inputs() -> None:
    text = "".join(f'[[inputs]]\nname = "i{i}"\n' for i in range(65))
    with pytest.raises(ConfigError, match=r"key 'inputs': has 65 entries; at most 64"):
        parse_config(text, P)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"input_shape = [", ["is not valid TOML"]),
        (b"a = 1\na = 2", ["is not valid TOML"]),
        (b"\xff\xfe", ["is not UTF-8"]),
        # what a Windows editor may write: tomllib said only "Invalid statement (at line 1, column 1)"
        pytest.param(b"\xef\xbb\xbftask = 'regression'\n", ["starts with a byte order mark (BOM)"], id="bom"),
        (b"#" * (64 * 1024 + 1), ["bytes; at most 65536"]),
        # tomllib recurses once per nesting level: these used to escape as RecursionError
        pytest.param(b"a = " + b"[" * 30000 + b"]" * 30000, ["is not valid TOML", "nested too deeply"], id="deep-arrays"),
        pytest.param(b"a = " + b"{b=" * 10000 + b"1" + b"}" * 10000, ["is not valid TOML", "nested too deeply"], id="deep-tables"),
    ],
)
def test_unreadable_config(data: bytes, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, P)
    assert info.value.key is None and str(info.value).startswith(str(P))
    for word in words:
        assert word in str(info.value)


def test_load_config_missing_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path) == ModelConfig(path=path)
    path.write_text("max_batch_size = 8\n")
    assert load_config(path).max_batch_size == 8


def test_load_config_refuses_a_huge_file_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"# " + b"x" * (10 << 20))
    with pytest.raises(ConfigError, match="larger than 65536 bytes"):
        load_config(path)


def test_load_config_directory_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(path)


def test_the_queue_policy_keys() -> None:
    cfg = parse_config("max_queue_requests = 16\ndefault_timeout_ms = 250\nallow_timeout_override = false", P)
    assert (cfg.max_queue_requests, cfg.default_timeout_ms, cfg.allow_timeout_override) == (16, 250.0, False)
    cfg = parse_config("", P)
    assert (cfg.max_queue_requests, cfg.default_timeout_ms, cfg.allow_timeout_override) == (None, None, True)



def test_the_response_cache_key() -> None:
    assert parse_config("response_cache = true", P).response_cache is True
    assert parse_config("", P).response_cache is False


def test_a_default_timeout_under_a_microsecond_is_not_reported_as_none() -> None:
    """config.toml's default_timeout_ms takes any number > 0; Triton's configuration says it in whole
    microseconds, where 0 means no default timeout. 0.0004 ms (a timeout every queued request meets) was
    reported as 0, as if there were none; it is reported as 1 (the least Triton can say)."""
    from wsserve.rest.triton import queue_policy

    cfg = parse_config("default_timeout_ms = 0.0004\n")
    assert cfg.default_timeout_ms == 0.0004
    policy = queue_policy(None, cfg.default_timeout_ms / 1000.0, True)
    assert policy is not None and policy["default_timeout_microseconds"] == 1
    assert queue_policy(8, None, False)["default_timeout_microseconds"] == 0  # type: ignore[index]
    assert queue_policy(None, 0.02, True)["default_timeout_microseconds"] == 20000  # type: ignore[index]
