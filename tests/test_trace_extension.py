"""Triton's trace extension (``/v2[/models/{name}]/trace/setting``, gRPC ``TraceSetting``).

The rules of :class:`wsserve.tracesettings.TraceControl` (Triton's: a model's unset settings
follow the global ones; ``null`` clears), then real servers on loopback driven by
``tritonclient``, whose spans a real OTLP/HTTP collector receives (tests/test_tracing.py's): a
rate of 2 makes a span of every second request, a level of OFF none, a count of 1 one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import ServerProcess
from wsserve.tracesettings import MAX_TRACE_NUMBER, TraceControl, TraceSettingError

DEFAULTS = {"trace_file": "", "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
            "log_frequency": "0", "trace_mode": "opentelemetry"}

# -- the rules


def test_model_settings_follow_the_global_ones_until_set_and_null_clears() -> None:
    """Triton's L0_trace ``clear_settings`` sequence, on wsserve's settings."""
    t = TraceControl(enabled=True)
    assert t.settings() == t.settings("simple") == DEFAULTS
    t.update({"trace_rate": "12", "log_frequency": "34"}, "simple")
    t.update({"trace_rate": "56", "trace_count": "78", "trace_level": ["OFF"]})
    assert t.update({"trace_rate": None, "trace_count": None}) == {**DEFAULTS, "trace_level": ["OFF"]}
    assert t.settings("simple") == {**DEFAULTS, "trace_level": ["OFF"], "trace_rate": "12", "log_frequency": "34"}
    assert t.update({"trace_rate": None, "trace_level": None}, "simple") == {
        **DEFAULTS, "trace_level": ["OFF"], "log_frequency": "34"}
    assert t.settings() == {**DEFAULTS, "trace_level": ["OFF"]}


def test_rate_samples_one_request_in_n_and_count_counts_down() -> None:
    t = TraceControl(enabled=True)
    assert all(t.sample("m") for _ in range(5))  # the start: every request
    t.update({"trace_rate": "3"})
    assert [t.sample("m") for _ in range(9)] == [False, False, True] * 3
    t.update({"trace_rate": "1", "trace_count": "2"})
    assert [t.sample(None) for _ in range(4)] == [True, True, False, False]
    assert t.settings()["trace_count"] == "0"
    t.update({"trace_count": "-1"})
    assert t.sample("m")


def test_a_model_with_its_own_rate_counts_apart() -> None:
    t = TraceControl(enabled=True)
    t.update({"trace_rate": "2"}, "slow")
    assert [t.sample("slow") for _ in range(4)] == [False, True, False, True]
    assert [t.sample("other") for _ in range(2)] == [True, True]
    t.update({"trace_level": ["OFF"]}, "other")
    assert not t.sample("other") and t.sample("third")
    t.update({"trace_count": "1"})  # slow has no count of its own: it follows the global one
    assert t.settings("slow")["trace_count"] == "1"
    assert [t.sample("slow") for _ in range(4)] == [False, True, False, False]


def test_a_model_request_with_no_settings_clears_its_own_through_the_api() -> None:
    t = TraceControl(enabled=True)
    t.update({"trace_rate": "5", "trace_level": ["OFF"]}, "m")
    t.update(dict.fromkeys(("trace_level", "trace_rate", "trace_count", "log_frequency")), "m")
    assert t.settings("m") == DEFAULTS


@pytest.mark.parametrize(("changes", "message"), [
    ({"trace_colour": "1"}, "unknown trace setting 'trace_colour'"),
    ({"trace_file": "/tmp/t.json"}, "'trace_file' cannot be changed"),
    ({"trace_mode": "triton"}, "'trace_mode' is 'opentelemetry'"),
    ({"trace_level": ["TENSORS"]}, "'TENSORS' is not served (a span holds no tensor values)"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "OFF cannot be given with another level"),
    ({"trace_level": [1]}, "'trace_level' must be a list of levels"),
    ({"trace_rate": "0"}, "'trace_rate' must be an integer in a string, from 1"),
    ({"trace_rate": 5}, "'trace_rate' must be an integer in a string"),
    ({"trace_rate": "--5"}, "'trace_rate' must be an integer in a string"),
    ({"trace_rate": "١٢"}, "'trace_rate' must be an integer in a string"),
    ({"trace_count": "-2"}, "'trace_count' must be an integer in a string, from -1"),
    ({"log_frequency": str(MAX_TRACE_NUMBER + 1)}, "'log_frequency' must be an integer in a string"),
])
def test_bad_settings_are_refused_naming_them_and_change_nothing(changes: dict[str, Any], message: str) -> None:
    t = TraceControl(enabled=True)
    with pytest.raises(TraceSettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        t.update({"trace_rate": "7", **changes})
    assert t.settings() == DEFAULTS


def test_without_an_exporter_the_level_stays_off() -> None:
    t = TraceControl(enabled=False)
    assert t.settings()["trace_level"] == ["OFF"] and not t.sample("m")
    with pytest.raises(TraceSettingError, match="can only be OFF: this server exports no spans"):
        t.update({"trace_level": ["TIMESTAMPS"]})
    assert t.update({"trace_rate": "4"})["trace_rate"] == "4"


# -- real servers

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
grpc = pytest.importorskip("grpc")
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_tracing import OTEL_ENV, Collector  # noqa: E402


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def traced(model_cache: Path, collector: Collector) -> Iterator[tuple[ServerProcess, str]]:
    proc = ServerProcess("--models", "linear,mlp", "--grpc-port", "0", "--otlp-traces-endpoint", collector.url,
                         cache_dir=model_cache, env=OTEL_ENV)
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def _infer(client: Any, model: str, trace_id: str) -> None:
    """One single-row infer of ``model`` whose span, if any, carries ``trace_id``."""
    width = 1 if model == "linear" else 32
    inp = thttp.InferInput("input", [1, width], "FP64")
    inp.set_data_from_numpy(np.zeros((1, width)))
    client.infer(model, [inp], headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})


def _traced(client: Any, collector: Collector, model: str, n: int) -> list[bool]:
    """Which of ``n`` infers of ``model`` got a span: known once a later request's span (of
    ``linear``, the global settings') has arrived."""
    ids = [secrets.token_hex(16) for _ in range(n)]
    for trace_id in ids:
        _infer(client, model, trace_id)
    marker = secrets.token_hex(16)
    _infer(client, "linear", marker)
    collector.wait(trace_id=marker)
    return [collector.find(trace_id=t) is not None for t in ids]


def test_trace_settings_decide_which_requests_get_a_span(traced: tuple[ServerProcess, str],
                                                         collector: Collector) -> None:
    proc, address = traced
    http = thttp.InferenceServerClient(proc.http.split("//")[1])
    gclient = tgrpc.InferenceServerClient(address)
    try:
        assert "trace" in http.get_server_metadata()["extensions"]
        assert http.get_trace_settings() == http.get_trace_settings(model_name="mlp") == DEFAULTS
        assert _traced(http, collector, "mlp", 2) == [True, True]

        assert http.update_trace_settings(model_name="mlp", settings={"trace_rate": "2"})["trace_rate"] == "2"
        assert http.get_trace_settings()["trace_rate"] == "1"
        assert _traced(http, collector, "mlp", 4) == [False, True, False, True]

        gclient.update_trace_settings(model_name="mlp", settings={"trace_level": ["OFF"]})
        assert _traced(http, collector, "mlp", 2) == [False, False]

        got = gclient.get_trace_settings(model_name="mlp", as_json=True)["settings"]
        assert got["trace_level"] == {"value": ["OFF"]} and got["trace_rate"] == {"value": ["2"]}
        gclient.update_trace_settings(model_name="mlp", settings={"trace_level": None, "trace_rate": None})
        assert http.get_trace_settings(model_name="mlp") == DEFAULTS

        http.update_trace_settings(model_name="mlp", settings={"trace_count": "1"})
        assert _traced(http, collector, "mlp", 3) == [True, False, False]
        assert http.get_trace_settings(model_name="mlp")["trace_count"] == "0"
        http.update_trace_settings(model_name="mlp", settings={})  # a model's empty request clears its own
        assert http.get_trace_settings(model_name="mlp") == DEFAULTS

        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            http.get_trace_settings(model_name="nope")
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            gclient.update_trace_settings(model_name="nope", settings={"trace_rate": "3"})
        with pytest.raises(InferenceServerException, match="'trace_file' cannot be changed"):
            http.update_trace_settings(settings={"trace_file": "/tmp/x.json"})
        proc.wait_logged("trace settings of model 'mlp' changed by 127.0.0.1")
    finally:
        http.close()
        gclient.close()


def test_without_an_endpoint_tracing_stays_off_and_changes_need_the_admin(model_cache: Path) -> None:
    proc = ServerProcess("--models", "linear", "--api-key", "api-key-0123456789", "--admin-key",
                         "admin-key-0123456789", cache_dir=model_cache)
    try:
        http = thttp.InferenceServerClient(proc.http.split("//")[1])
        api = {"Authorization": "Bearer api-key-0123456789"}
        admin = {"Authorization": "Bearer admin-key-0123456789"}
        assert http.get_trace_settings(headers=api)["trace_level"] == ["OFF"]
        with pytest.raises(InferenceServerException, match="changing trace settings needs the admin key"):
            http.update_trace_settings(settings={"trace_rate": "2"}, headers=api)
        with pytest.raises(InferenceServerException, match="can only be OFF"):
            http.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, headers=admin)
        assert http.update_trace_settings(settings={"trace_rate": "2"}, headers=admin)["trace_rate"] == "2"
        http.close()
    finally:
        proc.stop()


def test_a_rate_change_keeps_the_count_of_spans_left(traced: tuple[ServerProcess, str], collector: Collector) -> None:
    """``trace_count`` counts down as spans are made; changing ``trace_rate`` alone leaves what is
    left (Triton's: a setting not given keeps its current value), globally and for a model."""
    proc, address = traced
    http = thttp.InferenceServerClient(proc.http.split("//")[1])
    gclient = tgrpc.InferenceServerClient(address)
    try:
        http.update_trace_settings(model_name="mlp", settings={"trace_count": "1"})
        assert _traced(http, collector, "mlp", 2) == [True, False]
        assert http.update_trace_settings(model_name="mlp", settings={"trace_rate": "1"})["trace_count"] == "0"
        assert _traced(http, collector, "mlp", 1) == [False]
        http.update_trace_settings(model_name="mlp", settings={})

        gclient.update_trace_settings(settings={"trace_count": "1"})
        _infer(http, "linear", secrets.token_hex(16))  # the global scope's one span
        assert http.get_trace_settings()["trace_count"] == "0"
        got = gclient.update_trace_settings(settings={"trace_rate": "2"}, as_json=True)["settings"]
        assert got["trace_count"] == {"value": ["0"]}
    finally:
        http.update_trace_settings(settings={"trace_count": None, "trace_rate": None})
        http.close()
        gclient.close()


def test_a_request_the_sampler_leaves_out_spends_no_count(traced: tuple[ServerProcess, str],
                                                          collector: Collector) -> None:
    """A ``traceparent`` whose caller did not sample it (flags ``00``) makes no span (the SDK's
    parent-based sampler), so it does not use up ``trace_count``: the count is of spans made."""
    proc, _address = traced
    http = thttp.InferenceServerClient(proc.http.split("//")[1])
    try:
        http.update_trace_settings(model_name="mlp", settings={"trace_count": "1"})
        inp = thttp.InferInput("input", [1, 32], "FP64")
        inp.set_data_from_numpy(np.zeros((1, 32)))
        unsampled = secrets.token_hex(16)
        http.infer("mlp", [inp], headers={"traceparent": f"00-{unsampled}-{secrets.token_hex(8)}-00"})
        assert http.get_trace_settings(model_name="mlp")["trace_count"] == "1"
        assert _traced(http, collector, "mlp", 2) == [True, False]
        assert collector.find(trace_id=unsampled) is None
    finally:
        http.update_trace_settings(model_name="mlp", settings={})
        http.close()
