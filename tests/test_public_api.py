"""Pins the public API (``__all__``) of the core modules.

A failure here means the public surface changed: if that was deliberate,
update the pinned list in the same commit (and the docs/changelog).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PUBLIC = {
    "wsserve": ["__version__", "ServerConfig", "Server", "WsserveError", "run", "serve", "FunctionModel", "onnx_model"],
    "wsserve.embed": ["serve", "onnx_model"],
    "wsserve.protocol": [
        "PROTOCOL_VERSION", "SUBPROTOCOL", "MAX_ID_LENGTH", "MAX_TOP_K", "MAX_PENALTY", "MAX_LOGIT_BIAS", "MAX_LOGIT_BIAS_TOKENS", "MAX_LOGPROBS", "MAX_TEMPERATURE", "MAX_TIMEOUT_MS",
        "MAX_STOP_STRINGS", "MAX_STOP_CHARS", "MAX_STOP_TOKEN_IDS", "MAX_GUIDED_CHOICES", "MAX_GUIDED_CHOICE_CHARS", "guided_choice_tuple", "MAX_GUIDED_PATTERN_CHARS", "guided_pattern_fields", "RequestId", "GenerationParams", "Predict", "Generate", "Cancel",
        "Models", "Ping", "Auth", "Admin", "Request", "decode", "decode_binary", "decode_predict_body", "loads",
        "validate_inputs", "check_rows", "ms", "timing_fields", "stop_tuple", "logit_bias_tuple", "SAMPLING_FIELDS", "sampling_fields", "STOP_FIELDS", "stop_fields", "encode_error", "encode_hello", "encode_draining", "encode_pong", "encode_models",
        "encode_auth_ok", "encode_admin_ok", "encode_result", "result_head", "ResultRows", "encode_seed_result",
        "encode_chunk", "encode_response", "encode_responses_done", "encode_predict_done", "encode_generate_done", "token_prefix", "encode_token", "encode_token_logprobs",
    ],
    "wsserve.tensorframe": [
        "MAX_HEADER_BYTES", "MAX_TENSORS", "MAX_DIMS", "TensorDesc", "TensorPayload", "Spec", "split", "read_tensors",
        "view_tensors", "conform", "encode", "header_length",
    ],
    "wsserve.dtypes": ["BFLOAT16", "BYTES", "DTYPES", "OIP_DTYPES", "OIP_NAMES", "ITEMSIZE", "TENSOR_DTYPES", "array_bytes",
                       "float_max", "is_float", "json_ready"],
    "wsserve.logcontrol": ["LOG_SETTINGS", "LogControl", "LogSettings", "MAX_VERBOSE_LEVEL", "settings_for_level", "updated"],
    "wsserve.tracesettings": ["MAX_TRACE_MODELS", "MAX_TRACE_NUMBER", "TRACE_SETTINGS", "TraceControl", "TraceSettingError"],
    "wsserve.connection": ["Connection", "ConnectionContext", "ConnectionIO", "ModelLookup", "Shared"],
    "wsserve.jobs": ["Job", "JobOwner", "PredictJob", "DecoupledJob", "GenerateJob"],
    "wsserve.decoupled": ["DecoupledWorker", "DecoupledStream", "RESPONSE_OVERHEAD_BYTES", "DEFAULT_MAX_QUEUE_REQUESTS",
                          "refusal", "decoupled_refusal"],
    "wsserve.auth": ["KeyRegistry", "AUTH_FAILURES_PER_CONNECTION", "client_network"],
    "wsserve.stats": ["WorkerStatistics"],
    "wsserve.transport": [
        "App", "Exchange", "Flusher", "HttpExchange", "HttpProtocol", "HttpRequest", "HttpResponse", "WebSocketProtocol",
        "frame_header",
    ],
    "wsserve.errors": [
        "WsserveError", "BadJson", "BadRequest", "UnknownModel", "DuplicateId", "InvalidInput", "Overloaded",
        "RateLimited", "DeadlineExceeded", "Cancelled", "Unauthorized", "Forbidden", "ShuttingDown", "Internal",
        "ERROR_CODES", "error_for_code",
    ],
    "wsserve.batching": ["WorkItem", "Slice", "Batch", "QueueStats", "BatchQueue", "PriorityLevels", "QueuePolicy", "queue_deadline",
                         "MAX_RETRY_AFTER_MS", "MIN_RETRY_AFTER_MS", "MAX_PRIORITY_LEVELS", "TIMEOUT_ACTIONS"],
    "wsserve.config": ["ServerConfig", "DEFAULT_MODELS", "LOG_FORMATS", "MAX_DELAY_MS", "MAX_GENERATE_BATCH", "MAX_SEED", "TRANSPORTS", "flag",
                       "DEFAULT_MODEL_LOAD_TIMEOUT_S", "MAX_MODEL_LOAD_TIMEOUT_S", "check_model_load_timeout",
                       "DEFAULT_WORKER_BOOT_TIMEOUT_S", "MAX_WORKER_BOOT_TIMEOUT_S", "GUIDE_COMPILE_LIMITS",
                       "check_guide_compile_limit", "MAX_RESPONSE_CACHE_BYTES"],
    "wsserve.respcache": ["CacheScope", "CacheStatistics", "ENTRY_OVERHEAD_BYTES", "MAX_ENTRY_FRACTION", "ResponseCache",
                          "request_key"],
    "wsserve.distributed": [
        "WorkerMismatch", "WrittenVersion", "local_cluster", "train_linear_dask", "train_linear_generated_dask",
        "train_mlp_dask", "write_version",
    ],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_all_is_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(PUBLIC[module_name])
    assert len(set(module.__all__)) == len(module.__all__), "duplicate names in __all__"


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_every_public_name_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_the_version_is_written_once() -> None:
    """``wsserve/_version.py`` is the one place: pyproject.toml reads it (dynamic), and the
    installed distribution's metadata agrees."""
    import tomllib
    from importlib.metadata import version

    import wsserve

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "wsserve._version.__version__"}
    assert version("wsserve") == wsserve.__version__


def test_top_level_reexports_are_the_same_objects() -> None:
    import wsserve
    from wsserve import config, errors

    assert wsserve.ServerConfig is config.ServerConfig
    assert wsserve.WsserveError is errors.WsserveError
    from wsserve import embed, server
    from wsserve.repository import function_backend

    assert wsserve.Server is server.Server and wsserve.run is server.run
    assert wsserve.serve is embed.serve and wsserve.onnx_model is embed.onnx_model
    assert wsserve.FunctionModel is function_backend.FunctionModel


def test_unknown_attribute_raises_attribute_error() -> None:
    import wsserve

    with pytest.raises(AttributeError):
        wsserve.no_such_thing  # noqa: B018


def test_importing_wsserve_is_light() -> None:
    # ``import wsserve`` must not pull in the server stack (see wsserve/__init__.py).
    code = "import sys, wsserve; print(sorted(m for m in ('numpy', 'websockets', 'orjson', 'uvloop') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"
