"""Sans-I/O parts of the load-test tool: schedule, window, workloads, histograms, stats, report, SLO.

No sockets, no clock: every time is an argument.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wsserve.loadtest as lt
from wsserve.loadtest import (
    EXIT_OK,
    EXIT_SLO,
    LatencyHistogram,
    LoadConfig,
    ModelShape,
    OpenLoopSchedule,
    RequestFactory,
    RunStats,
    ServerInfo,
    WeightedCycle,
    Window,
    WorkloadSpec,
    build_report,
    check_against_models,
    evaluate_slo,
    format_text,
    parse_mix,
    split_evenly,
)
from wsserve.tensorframe import read_tensors, split, view_tensors


def test_public_api_is_pinned() -> None:
    assert sorted(lt.__all__) == sorted(
        [
            "EXIT_ERROR",
            "EXIT_OK",
            "EXIT_SLO",
            "EXIT_USAGE",
            "REPORT_SCHEMA",
            "LatencyHistogram",
            "LoadConfig",
            "LoadTestError",
            "ModelShape",
            "OpenLoopSchedule",
            "RequestFactory",
            "RunStats",
            "ServerInfo",
            "WeightedCycle",
            "WorkerConfig",
            "WorkloadSpec",
            "WorkloadStats",
            "Window",
            "add_arguments",
            "build_report",
            "check_against_models",
            "config_from_args",
            "evaluate_slo",
            "format_text",
            "main",
            "parse_mix",
            "probe",
            "run",
            "run_load",
            "split_evenly",
        ]
    )
    for name in lt.__all__:
        assert hasattr(lt, name), name


# -- open-loop schedule ------------------------------------------------------


def test_schedule_is_fixed_and_ignores_how_late_the_caller_is() -> None:
    s = OpenLoopSchedule(rate_per_s=100.0, start=10.0, end=11.0)
    assert s.due(9.99) == []
    assert s.due(10.0) == [10.0]
    # the caller wakes up 250 ms late: every intended time it missed is returned, unchanged
    late = s.due(10.25)
    assert late == pytest.approx([10.0 + k / 100 for k in range(1, 26)])
    assert s.next_time == pytest.approx(10.26)
    rest = s.due(100.0)
    assert len(rest) == 100 - 26  # nothing at or after end
    assert all(t < 11.0 for t in rest)
    assert s.next_time == math.inf
    assert s.due(200.0) == []


def test_schedule_limit_returns_the_rest_later() -> None:
    s = OpenLoopSchedule(rate_per_s=1000.0, start=0.0, end=1.0)
    first = s.due(0.5, limit=10)
    assert len(first) == 10
    second = s.due(0.5)
    assert first[-1] < second[0]
    assert len(first) + len(second) == 501


@given(procs=st.integers(1, 6), rate=st.floats(1.0, 50_000.0), dur=st.floats(0.01, 2.0))
def test_schedules_of_several_processes_interleave_into_the_single_schedule(
    procs: int, rate: float, dur: float
) -> None:
    single = OpenLoopSchedule(rate_per_s=rate, start=5.0, end=5.0 + dur).due(1e9)
    parts = [
        OpenLoopSchedule(rate_per_s=rate, start=5.0, end=5.0 + dur, first=i, stride=procs).due(1e9)
        for i in range(procs)
    ]
    assert sorted(t for p in parts for t in p) == single
    assert len(single) == math.ceil(rate * dur - 1e-9) or abs(len(single) - rate * dur) <= 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_per_s": 0.0},
        {"rate_per_s": -1.0},
        {"rate_per_s": math.inf},
        {"rate_per_s": 1.0, "stride": 0},
    ],
)
def test_schedule_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        OpenLoopSchedule(start=0.0, end=1.0, **kwargs)


def test_window_phases_and_membership() -> None:
    w = Window(start=100.0, warmup_s=1.0, duration_s=2.0)
    assert [w.phase(t) for t in (99.0, 100.0, 100.999, 101.0, 102.999, 103.0)] == [
        "pending",
        "warmup",
        "warmup",
        "measure",
        "measure",
        "done",
    ]
    assert not w.measured(100.5) and w.measured(101.0) and w.measured(102.5) and not w.measured(103.0)
    with pytest.raises(ValueError):
        Window(start=0.0, warmup_s=0.0, duration_s=0.0)


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 2) == [1, 1]
    assert sum(split_evenly(257, 4)) == 257


# -- workloads ---------------------------------------------------------------


def test_parse_mix_full_grammar() -> None:
    specs = parse_mix("predict:linear=8, generate:charlm:64=1,stream:mlp:100", rows=2, chunk_rows=10, max_tokens=16)
    assert [(s.kind, s.model, s.weight) for s in specs] == [
        ("predict", "linear", 8),
        ("generate", "charlm", 1),
        ("stream", "mlp", 1),
    ]
    assert specs[0].rows == 2 and specs[1].max_tokens == 64 and specs[2].rows == 100 and specs[2].chunk_rows == 10
    assert [s.label for s in specs] == ["predict:linear:2", "generate:charlm:64", "stream:mlp:100"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("predict", "kind:model"),
        ("fly:linear", "unknown kind 'fly'"),
        ("predict:linear=x", "bad weight"),
        ("predict:linear=0", "weight must be >= 1"),
        ("predict:linear:zero", "bad size"),
        ("predict:linear:0", "rows must be in 1..1048576"),
        ("predict:linear,predict:linear", "listed twice"),
        ("predict:linear,,generate:charlm", "empty item"),
    ],
)
def test_parse_mix_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_mix(text)


@pytest.mark.parametrize("kw, fragment", [
    ({"rows": 10**11}, "rows must be in 1..1048576"),
    ({"chunk_rows": 10**11}, "chunk_rows must be in"),
    ({"kind": "generate", "model": "charlm", "max_tokens": 10**11}, "max_tokens must be in"),
])
def test_workload_sizes_are_bounded(kw: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        WorkloadSpec(**{"kind": "predict", "model": "linear", **kw})


def test_request_values_are_bounded_by_the_models_input_width() -> None:
    """Rows x the input width the server states: a huge ``input_shape`` from the server (or
    many rows of a wide model) is refused before any inputs are built."""
    wide = {"wide": ModelShape("wide", "regression", (1 << 18, 8))}
    with pytest.raises(ValueError, match="more than 1,048,576 values per request"):
        check_against_models(parse_mix("predict:wide"), wide)
    mlp = {"mlp": ModelShape("mlp", "classification", (64,))}
    check_against_models(parse_mix("predict:mlp:16384"), mlp)  # 2**20 values: the edge
    with pytest.raises(ValueError, match="16385 rows of 64 values"):
        check_against_models(parse_mix("predict:mlp:16385"), mlp)


def test_a_model_with_a_variable_dimension_is_refused_naming_it() -> None:
    """A model without a batch dimension may state a variable dim (-1: each request's size, config.pbtxt's
    dims [-1, 3]); the load tool sends rows of one fixed size, so it refuses such a model saying so. It said
    "1 rows of -3 values (input_shape [-1, 3]) is more than 1,048,576 values per request"."""
    variable = {"centered": ModelShape("centered", "regression", (-1, 3))}
    with pytest.raises(ValueError) as info:
        check_against_models(parse_mix("predict:centered"), variable)
    assert str(info.value) == ("workload predict:centered: model 'centered' has input_shape [-1, 3]: a variable "
                               "dimension (-1), whose size each request gives; the load tool sends rows of a fixed size")


def _loadtest_args(argv: list[str]):  # noqa: ANN202 - an argparse.Namespace
    import argparse

    parser = argparse.ArgumentParser()
    lt.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("target", ["dir", "missing/report.json"])
def test_an_unwritable_json_file_is_refused_before_the_run(
    target: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` naming a directory or a file in a missing directory exits 2 naming the flag
    before any connection (here the URL is a closed port, so a run would exit 1), instead of a
    traceback after the whole run with the report lost."""
    (tmp_path / "dir").mkdir()
    code = lt.run(_loadtest_args(["ws://127.0.0.1:1", "--json", str(tmp_path / target)]))
    assert code == 2
    assert "--json" in capsys.readouterr().err


def test_check_against_models() -> None:
    models = {
        "linear": ModelShape("linear", "regression", (1,)),
        "charlm": ModelShape("charlm", "generation", ()),
    }
    check_against_models(parse_mix("predict:linear,generate:charlm"), models)
    with pytest.raises(ValueError, match="no model 'mlpp'; known: charlm, linear"):
        check_against_models(parse_mix("predict:mlpp"), models)
    with pytest.raises(ValueError, match="generate needs a generation model"):
        check_against_models(parse_mix("generate:linear"), models)
    with pytest.raises(ValueError, match="only serves generate"):
        check_against_models(parse_mix("stream:charlm"), models)


def test_explain_specs_ask_for_attributions_on_explainable_models_only() -> None:
    """``--explain``: ``"explain": true`` in JSON and binary frames (the same numbers as without it),
    labelled ``+explain``, refused for generate, and checked against the models reply's ``explain``."""
    spec = WorkloadSpec(kind="predict", model="mlp", rows=2, explain=True)
    plain = RequestFactory(replace(spec, explain=False), input_width=4, seed=2)
    frame = orjson.loads(RequestFactory(spec, input_width=4, seed=2).build(5))
    assert frame["explain"] is True and frame["inputs"] == orjson.loads(plain.build(5))["inputs"]
    assert "explain" not in orjson.loads(plain.build(6))
    header, _ = split(RequestFactory(replace(spec, binary=True), input_width=4, seed=2).build(7))
    assert header["explain"] is True and header["shape"] == [2, 4]
    assert spec.label == "predict:mlp:2+explain" and replace(spec, binary=True).label == "predict:mlp:2/binary+explain"
    with pytest.raises(ValueError, match="generate has no attributions"):
        WorkloadSpec(kind="generate", model="charlm", explain=True)
    assert [s.explain for s in parse_mix("stream:mlp,generate:charlm", explain=True)] == [True, False]
    models = {name: ModelShape.from_json(entry) for name, entry in (
        ("mlp", {"name": "mlp", "task": "classification", "input_shape": [4], "explain": {"method": "ig"}}),
        ("net", {"name": "net", "task": "regression", "input_shape": [4], "explain": None}),
        ("other", {"name": "other", "task": "regression", "input_shape": [4]}))}
    assert [models[n].explainable for n in ("mlp", "net", "other")] == [True, False, None]
    check_against_models(parse_mix("predict:mlp,predict:other", explain=True), models)  # unknown: let the server say
    check_against_models(parse_mix("predict:net"), models)  # no explain asked
    with pytest.raises(ValueError, match="model 'net' cannot be explained"):
        check_against_models(parse_mix("predict:net", explain=True), models)


@given(weights=st.lists(st.integers(1, 9), min_size=1, max_size=5), rounds=st.integers(1, 4))
def test_weighted_cycle_is_exactly_proportional_per_round(weights: list[int], rounds: int) -> None:
    cycle = WeightedCycle(weights)
    picks = [cycle.next() for _ in range(sum(weights) * rounds)]
    assert [picks.count(i) for i in range(len(weights))] == [w * rounds for w in weights]


def test_weighted_cycle_spreads_the_minority_evenly() -> None:
    cycle = WeightedCycle([8, 1])
    picks = [cycle.next() for _ in range(90)]
    gaps = [
        b - a
        for a, b in zip([i for i, p in enumerate(picks) if p == 1], [i for i, p in enumerate(picks) if p == 1][1:], strict=False)
    ]
    assert set(gaps) == {9}


def test_request_factory_builds_valid_frames_fitting_the_model() -> None:
    spec = WorkloadSpec(kind="stream", model="mlp", rows=3, chunk_rows=2)
    f = RequestFactory(spec, input_width=32, seed=1, variants=4)
    frames = [orjson.loads(f.build(i)) for i in range(8)]
    assert [fr["id"] for fr in frames] == list(range(8))
    for fr in frames:
        assert fr["type"] == "predict" and fr["model"] == "mlp" and fr["stream"] is True and fr["chunk_rows"] == 2
        assert len(fr["inputs"]) == 3 and all(len(r) == 32 and all(0.0 <= v < 1.0 for v in r) for r in fr["inputs"])
    assert frames[0]["inputs"] != frames[1]["inputs"]  # variants differ
    assert frames[0]["inputs"] == frames[4]["inputs"]  # and cycle
    g = orjson.loads(RequestFactory(WorkloadSpec(kind="generate", model="charlm", max_tokens=7)).build(123456789))
    assert g["type"] == "generate" and g["id"] == 123456789 and g["max_tokens"] == 7 and isinstance(g["prompt"], str)


def test_request_factory_binary_frames_are_read_by_the_servers_own_parser() -> None:
    """``--binary``: tensor frames the server's tensorframe module splits and reads, with the id
    spliced into the header (ids of any length keep the payload 8-byte aligned)."""
    spec = WorkloadSpec(kind="stream", model="mlp", rows=3, chunk_rows=2, binary=True)
    f = RequestFactory(spec, input_width=6, input_shape=(2, 3), seed=1, variants=2)
    json_twin = RequestFactory(replace(spec, binary=False), input_width=6, seed=1, variants=2)
    assert f.binary and not json_twin.binary and spec.label == "stream:mlp:3/binary"
    for rid in (0, 7, 12345, 10**15):
        data = f.build(rid)
        header, payload = split(data)
        assert (len(data) - len(payload)) % 8 == 0  # the payload starts 8-byte aligned
        assert {k: header[k] for k in ("id", "type", "model", "stream", "chunk_rows", "dtype", "shape")} == {
            "id": rid, "type": "predict", "model": "mlp", "stream": True, "chunk_rows": 2, "dtype": "float64",
            "shape": [3, 2, 3]}
        (desc,) = read_tensors(header, len(payload), max_rows=8)
        (x,) = view_tensors(payload, [desc])
        expected = orjson.loads(json_twin.build(rid))["inputs"]
        assert x.shape == (3, 2, 3) and x.reshape(3, 6).tolist() == expected  # the JSON body's numbers
    with pytest.raises(ValueError, match="generate"):
        WorkloadSpec(kind="generate", model="charlm", binary=True)
    mixed = parse_mix("predict:linear,generate:charlm", binary=True)
    assert [s.binary for s in mixed] == [True, False]


def test_request_factory_is_deterministic_per_seed() -> None:
    spec = WorkloadSpec(kind="predict", model="linear")
    assert RequestFactory(spec, seed=3).build(1) == RequestFactory(spec, seed=3).build(1)
    assert RequestFactory(spec, seed=3).build(1) != RequestFactory(spec, seed=4).build(1)


# -- histograms and stats ----------------------------------------------------


def test_histogram_percentiles_within_precision() -> None:
    h = LatencyHistogram()
    values_ms = [i / 10 for i in range(1, 10_001)]  # 0.1 .. 1000 ms
    for v in values_ms:
        h.record_s(v / 1000)
    s = h.summary_ms()
    assert s["count"] == 10_000
    for label, exact in (("p50", 500.0), ("p90", 900.0), ("p99", 990.0), ("p99.9", 999.0), ("max", 1000.0)):
        assert s[label] == pytest.approx(exact, rel=2e-3), label
    assert s["min"] == pytest.approx(0.1, rel=2e-3)


def test_histogram_clamps_out_of_range_values() -> None:
    h = LatencyHistogram()
    h.record_s(-1.0)
    h.record_s(1e9)
    assert h.count == 2 and h.min_ms == pytest.approx(0.001) and h.max_ms >= 3_599_000_000 / 1000


def test_histogram_encode_decode_merge_equals_union() -> None:
    rng = random.Random(7)
    a, b, union = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for _ in range(5000):
        x = rng.expovariate(1 / 0.002)
        (a if rng.random() < 0.3 else b).record_s(x)
        union.record_s(x)
    merged = LatencyHistogram.decode(a.encode())
    merged.merge(LatencyHistogram.decode(b.encode()))
    assert merged.summary_ms() == union.summary_ms()
    with pytest.raises(ValueError):
        LatencyHistogram.decode("not a histogram")


def test_empty_histogram_summary_is_zeros() -> None:
    s = LatencyHistogram.decode(LatencyHistogram().encode()).summary_ms()
    assert s == {"count": 0, "min": 0.0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "p99.9": 0.0, "max": 0.0}


def _stats(ok_latencies_s: list[float], errors: dict[str, int] | None = None) -> RunStats:
    st_ = RunStats.for_labels([("predict:linear", "predict")])
    w = st_.workloads[0]
    for x in ok_latencies_s:
        w.latency.record_s(x)
    w.ok = w.ok_in_window = len(ok_latencies_s)
    w.errors.update(errors or {})
    w.sent = w.ok + sum((errors or {}).values())
    st_.connections = 2
    st_.close_codes["1000"] += 2
    return st_


def test_run_stats_round_trip_and_merge() -> None:
    a = _stats([0.001] * 10, {"overloaded": 2})
    b = _stats([0.003] * 30, {"overloaded": 1, "no_reply": 1})
    total = RunStats.merged([RunStats.from_dict(orjson.loads(orjson.dumps(a.to_dict()))), b])
    w = total.workloads[0]
    assert (w.ok, w.sent, dict(w.errors)) == (40, 44, {"overloaded": 3, "no_reply": 1})
    assert w.latency.count == 40 and w.latency.value_at_ms(50) == pytest.approx(3.0, rel=2e-3)
    assert total.connections == 4 and total.close_codes == {"1000": 4} and total.procs == 2
    assert a.workloads[0].ok == 10  # merged() does not modify its inputs
    other = RunStats.for_labels([("generate:charlm", "generate")])
    with pytest.raises(ValueError):
        a.merge(other)


# -- report and SLO ------------------------------------------------------------


def _cfg(**kw) -> LoadConfig:
    base = dict(
        url="ws://127.0.0.1:1",
        specs=(WorkloadSpec("predict", "linear"),),
        connections=2,
        inflight=1,
        duration_s=2.0,
        warmup_s=0.5,
    )
    base.update(kw)
    return LoadConfig(**base)


def test_report_figures() -> None:
    cfg = _cfg(rate_per_s=50.0)
    rep = build_report(
        cfg,
        ServerInfo(kind="protocol", server="wsserve", version="0.1.0"),
        _stats([0.002] * 90, {"overloaded": 10}),
        started_at_unix=0.0,
    )
    assert rep["requests"] == {"sent": 100, "ok": 90, "errors": 10, "error_rate": 0.1}
    assert rep["throughput"] == {"target_rps": 50.0, "achieved_rps": 45.0, "achieved_ratio": 0.9}
    assert rep["latency_ms"]["p50"] == pytest.approx(2.0, rel=2e-3)
    assert rep["errors"] == {"overloaded": 10}
    assert rep["exit_code"] == EXIT_OK and rep["slo"]["passed"] is True
    text = format_text(rep)
    assert "45.0 req/s achieved of 50.0 target (90.0%)" in text
    assert "overloaded=10" in text and "late sends" in text and "p99.9" in text


@pytest.mark.parametrize(
    "slo_ms, max_err, expected",
    [
        (None, None, EXIT_OK),
        (5.0, None, EXIT_OK),
        (1.0, None, EXIT_SLO),
        (None, 0.2, EXIT_OK),
        (None, 0.05, EXIT_SLO),
    ],
)
def test_report_exit_code_follows_slo(slo_ms: float | None, max_err: float | None, expected: int) -> None:
    rep = build_report(
        _cfg(slo_p99_ms=slo_ms, max_error_rate=max_err),
        ServerInfo(kind="echo"),
        _stats([0.002] * 90, {"internal": 10}),
        started_at_unix=0.0,
    )
    assert rep["exit_code"] == expected
    assert rep["slo"]["passed"] is (expected == EXIT_OK)
    assert ("SLO: FAIL" in format_text(rep)) is (expected == EXIT_SLO)


@pytest.mark.parametrize("closed_early, code", [(0, EXIT_OK), (1, EXIT_OK), (2, lt.EXIT_ERROR)])
def test_connections_the_server_closed_are_reported_and_all_of_them_is_exit_1(closed_early: int, code: int) -> None:
    stats = _stats([0.002] * 90, {})
    stats.connections, stats.closed_early = 2, closed_early
    rep = build_report(_cfg(), ServerInfo(kind="protocol"), stats, started_at_unix=0.0)
    assert rep["connections"] == {"opened": 2, "failed": 0, "closed_early": closed_early}
    assert rep["exit_code"] == code
    text = format_text(rep)
    assert (f"{closed_early} connection(s) closed by the server before the end" in text) is (closed_early > 0)
    assert ("closed every connection before the end" in text) is (code == lt.EXIT_ERROR)
    assert RunStats.from_dict(orjson.loads(orjson.dumps(stats.to_dict()))).closed_early == closed_early


def test_slo_without_any_success_is_a_breach() -> None:
    assert evaluate_slo(p99_ms=None, error_rate=1.0, ok=0, slo_p99_ms=100.0, max_error_rate=None)
    assert not evaluate_slo(p99_ms=None, error_rate=0.0, ok=0, slo_p99_ms=None, max_error_rate=None)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"url": "http://x"}, "ws://"),
        ({"connections": 0}, "--connections"),
        ({"procs": 3}, "cannot exceed"),
        ({"rate_per_s": 0.0}, "--rate"),
        ({"duration_s": 0.0}, "--duration"),
        ({"max_error_rate": 2.0}, "--max-error-rate"),
        ({"slo_p99_ms": -1.0}, "--slo-p99-ms"),
        ({"inflight": 0}, "--inflight"),
        # every count and every time is bounded and finite: the test's traffic is bounded
        ({"duration_s": math.inf}, "--duration"),
        ({"duration_s": math.nan}, "--duration"),
        ({"duration_s": 1e9}, "--duration"),
        ({"rate_per_s": math.inf}, "--rate"),
        ({"warmup_s": math.nan}, "--warmup"),
        ({"warmup_s": math.inf}, "--warmup"),
        ({"grace_s": math.nan}, "--grace"),
        ({"grace_s": math.inf}, "--grace"),
        ({"open_timeout_s": -1.0}, "--open-timeout"),
        ({"open_timeout_s": math.nan}, "--open-timeout"),
        ({"open_timeout_s": 0.0}, "--open-timeout"),
        ({"late_ms": math.nan}, "--late-ms"),
        ({"connections": 10**8}, "--connections"),
        ({"connections": 10**8, "procs": 10**8}, "--connections"),
        ({"inflight": 10**11}, "--inflight"),
        ({"slo_p99_ms": math.nan}, "--slo-p99-ms"),
    ],
)
def test_config_errors_name_the_flag(kw: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        _cfg(**kw)


@pytest.mark.parametrize("argv,explained", [
    (["--model", "mlp", "--explain"], [True]),
    (["--workload", "stream", "--explain", "--binary"], [True]),
    (["--workload", "generate", "--explain"], [False]),  # generate has no attributions: the flag does not apply
    (["--mix", "predict:linear,generate:charlm", "--explain"], [True, False]),
    (["--model", "mlp"], [False]),
])
def test_the_explain_flag_reaches_the_predict_and_stream_specs(argv: list[str], explained: list[bool]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    lt.add_arguments(parser)
    cfg = lt.config_from_args(parser.parse_args(["ws://127.0.0.1:1", *argv]))
    assert [s.explain for s in cfg.specs] == explained
