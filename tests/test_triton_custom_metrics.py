"""Triton's custom metrics in a Triton Python model: ``pb_utils.MetricFamily`` / ``Metric`` made by
the model show on the server's ``/metrics`` as Triton writes them, refuse what Triton refuses (with
its messages), are bounded per server, may not take wsserve's own names, and leave ``/metrics``
when their model is unloaded (or when the model drops them).  A real server on loopback, a temp
repository of small Triton Python models, ``tritonclient.http`` for the requests and the model
repository extension, ``/metrics`` scraped."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as thttp

from tests.support import ServerProcess, wait_until
from tests.support.metrics import http_get, scrape_metrics
from wsserve.custommetrics import MAX_CUSTOM_METRIC_FAMILIES, MAX_CUSTOM_METRIC_SERIES

PBTXT = ('backend: "python"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
         'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')

#: Counts its requests, keeps the last x[0, 0] and a histogram of them, as the Triton example does.
METERED_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        labels = {"model": args["model_name"], "version": args["model_version"]}
        # (a family object kept: dropping it deletes its metrics, as in Triton)
        self.seen_family = pb_utils.MetricFamily(name="requests_seen", description="Requests executed",
                                                 kind=pb_utils.MetricFamily.COUNTER)
        self.seen = self.seen_family.Metric(labels=labels)
        self.last_family = pb_utils.MetricFamily("last_value", "The last x[0, 0]", pb_utils.MetricFamily.GAUGE)
        self.last = self.last_family.Metric(labels=labels)
        self.hist_family = pb_utils.MetricFamily("input_value", "x[0, 0] of each request",
                                                 pb_utils.MetricFamily.HISTOGRAM)
        self.hist = self.hist_family.Metric(labels=labels, buckets=[0.5, 1.0, 2.0])

    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            self.seen.increment(1)
            self.last.set(float(x[0, 0]))
            self.hist.observe(float(x[0, 0]))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
'''

#: Tries what Triton refuses in initialize and writes each message to errors.json (its directory).
CHECKS_PY = '''
import json
import os

import triton_python_backend_utils as pb_utils


def attempt(fn):
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


class TritonPythonModel:
    def initialize(self, args):
        F = pb_utils.MetricFamily
        self.families = [F("checks_counter", "c", F.COUNTER), F("checks_gauge", "g", F.GAUGE),
                         F("checks_hist", "h", F.HISTOGRAM)]
        self.counter = self.families[0].Metric(labels={"a": "b"})
        self.gauge = self.families[1].Metric()
        self.hist = self.families[2].Metric(buckets=[1.0])
        dropped = F("checks_dropped", "d", F.GAUGE).Metric()  # its family object is dropped at once
        errors = {
            "negative": attempt(lambda: self.counter.increment(-1)),
            "counter_set": attempt(lambda: self.counter.set(3)),
            "gauge_observe": attempt(lambda: self.gauge.observe(3)),
            "hist_value": attempt(lambda: self.hist.value()),
            "hist_increment": attempt(lambda: self.hist.increment(1)),
            "own_name": attempt(lambda: F("wsserve_requests", "mine", F.COUNTER)),
            "bad_name": attempt(lambda: F("9 lives", "d", F.GAUGE)),
            "other_kind": attempt(lambda: F("checks_counter", "again", F.GAUGE)),
            "no_buckets": attempt(lambda: F("checks_hist", "h", F.HISTOGRAM).Metric()),
            "buckets_on_counter": attempt(lambda: F("checks_counter", "c", F.COUNTER).Metric(buckets=[1.0])),
            "label_value": attempt(lambda: F("checks_gauge", "g", F.GAUGE).Metric(labels={"n": 1})),
            "bad_label": attempt(lambda: F("checks_gauge", "g", F.GAUGE).Metric(labels={"__x": "1"})),
            "dropped": attempt(lambda: dropped.set(1)),
        }
        self.counter.increment(2.5)
        self.gauge.set(-4)
        self.gauge.increment(-1)
        errors["values"] = [self.counter.value(), self.gauge.value()]
        with open(os.path.join(args["model_repository"], "errors.json"), "w") as f:
            json.dump(errors, f)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy())]) for r in requests]
'''

#: Makes families, then series, until the server's caps refuse; writes what it got; drops them all.
GREEDY_PY = '''
import gc
import json
import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        F = pb_utils.MetricFamily
        made, families_error = [], None
        for i in range(1000):
            try:
                made.append(F(f"greedy_{i}", "one of many", F.GAUGE))
            except pb_utils.TritonModelException as exc:
                families_error = str(exc)
                break
        del made
        gc.collect()
        family = F("greedy_series", "many label sets", F.GAUGE)
        series, series_error = [], None
        for i in range(5000):
            try:
                series.append(family.Metric(labels={"i": str(i)}))
            except pb_utils.TritonModelException as exc:
                series_error = str(exc)
                break
        del series, family
        gc.collect()
        self.after_family = F("greedy_after", "made once the others were dropped", F.GAUGE)
        self.after = self.after_family.Metric()
        self.after.set(1)
        with open(os.path.join(args["model_repository"], "greedy.json"), "w") as f:
            json.dump({"families_error": families_error, "series_error": series_error}, f)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy())]) for r in requests]
'''


def _write(root: Path, name: str, model_py: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(PBTXT)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("custom_metrics") / "model_repository"
    _write(root, "metered", METERED_PY)
    _write(root, "checks", CHECKS_PY)
    _write(root, "greedy", GREEDY_PY)
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    try:
        yield proc, root
    finally:
        proc.stop()


def _infer(client: thttp.InferenceServerClient, model: str, first: float) -> None:
    x = np.array([[first, 0.0]], np.float32)
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer(model, [inp])


def _text(proc: ServerProcess) -> str:
    status, _, body = http_get(f"{proc.http}/metrics")
    assert status == 200
    return body.decode()


def test_a_models_metric_families_are_on_metrics_as_triton_writes_them(served: Any) -> None:
    proc, _ = served
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    before = scrape_metrics(proc.http).get("requests_seen_total", model="metered", version="1")
    for first in (0.25, 1.5, 3.0):
        _infer(client, "metered", first)
    labels = {"model": "metered", "version": "1"}
    m = scrape_metrics(proc.http)
    assert m.value("requests_seen_total", **labels) == before + 3  # (the parser's name for a counter)
    assert m.value("last_value", **labels) == 3.0
    assert m.value("input_value_bucket", le="0.5", **labels) >= 1
    assert m.value("input_value_bucket", le="2.0", **labels) - m.value("input_value_bucket", le="1.0", **labels) >= 1
    assert m.value("input_value_bucket", le="+Inf", **labels) == m.value("input_value_count", **labels)
    text = _text(proc)
    # a counter's sample is its family's name as given, as Triton (prometheus-cpp) writes it
    assert "# TYPE requests_seen counter\n" in text
    assert 'requests_seen{model="metered",version="1"} ' in text
    assert "# HELP last_value The last x[0, 0]\n# TYPE last_value gauge\n" in text


def test_what_triton_refuses_is_refused_with_its_messages(served: Any) -> None:
    _, root = served
    errors = json.loads((root / "checks" / "errors.json").read_text())
    exc = "TritonModelException: "
    assert errors["negative"] == (exc + "Failed to increment metric value: TRITONSERVER_METRIC_KIND_COUNTER can only "
                                  "be incremented monotonically by non-negative values.")
    assert errors["counter_set"] == exc + "Failed to set metric value: TRITONSERVER_METRIC_KIND_COUNTER does not support Set"
    assert errors["gauge_observe"] == (exc + "Failed to observe metric value: TRITONSERVER_METRIC_KIND_GAUGE does not "
                                       "support Observe")
    assert errors["hist_value"] == exc + "Failed to get metric value: TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value"
    assert "does not support Increment" in errors["hist_increment"]
    assert errors["own_name"].startswith(exc + "Error when creating MetricFamily: ")
    assert "'wsserve_requests' starts with 'wsserve_'" in errors["own_name"]
    assert "'9 lives' is not a Prometheus metric name" in errors["bad_name"]
    assert "'checks_counter' is already a counter" in errors["other_kind"] and "not a gauge" in errors["other_kind"]
    assert errors["no_buckets"] == exc + "Failed to create metric. Missing required buckets."
    assert errors["buckets_on_counter"] == exc + "Failed to create metric. Unexpected buckets found."
    assert "label 'n': its value must be a str, got int" in errors["label_value"]
    assert "'__x' is not a Prometheus label name" in errors["bad_label"]
    assert errors["dropped"] == (exc + "Failed to set metric value: Invalid metric operation as the corresponding "
                                 "'MetricFamily' has been deleted. The 'MetricFamily' object should be deleted AFTER "
                                 "its corresponding 'Metric' objects have been deleted.")
    assert errors["values"] == [2.5, -5.0]
    m = scrape_metrics(served[0].http)
    assert m.value("checks_counter_total", a="b") == 2.5
    assert m.value("checks_gauge") == -5.0


def test_the_caps_are_named_and_dropped_families_leave_metrics(served: Any) -> None:
    proc, root = served
    got = json.loads((root / "greedy" / "greedy.json").read_text())
    assert "Error when creating MetricFamily: this server holds 64 custom metric families" in got["families_error"]
    assert f"MAX_CUSTOM_METRIC_FAMILIES={MAX_CUSTOM_METRIC_FAMILIES}" in got["families_error"]
    assert f"MAX_CUSTOM_METRIC_SERIES={MAX_CUSTOM_METRIC_SERIES}" in got["series_error"]
    text = _text(proc)
    assert "greedy_1" not in text and "greedy_series" not in text  # the families the model dropped are gone
    assert "\ngreedy_after 1.0\n" in text  # so there was room again


def test_unloading_a_model_removes_its_metrics_and_reloads_do_not_grow_metrics(served: Any) -> None:
    proc, _ = served
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    _infer(client, "metered", 1.0)
    assert "requests_seen{" in _text(proc)
    client.unload_model("metered")
    wait_until(lambda: "requests_seen" not in _text(proc), timeout_s=30, what="metered's families gone")
    assert "last_value" not in _text(proc) and "input_value" not in _text(proc)
    sizes, counts = [], []
    for _ in range(3):
        client.load_model("metered")
        _infer(client, "metered", 1.0)
        text = _text(proc)
        sizes.append(len(text.split("# HELP requests_seen")[1]))
        counts.append(scrape_metrics(proc.http).value("requests_seen_total", model="metered", version="1"))
        client.unload_model("metered")
        wait_until(lambda: "requests_seen" not in _text(proc), timeout_s=30, what="metered's families gone")
    assert len(set(sizes)) == 1
    assert counts[0] == counts[1] == counts[2] <= 2  # made anew each time (the warm-up's execute and ours)


def test_a_reload_in_place_keeps_counting_as_triton_shares_a_label_set(served: Any) -> None:
    """The new instance makes the same family and label set while the old one still holds them:
    one series, as Triton's registry merges them; the old one's close leaves it to the new."""
    proc, _ = served
    client = thttp.InferenceServerClient(proc.http.removeprefix("http://"))
    client.load_model("metered")
    _infer(client, "metered", 1.0)
    before = scrape_metrics(proc.http).value("requests_seen_total", model="metered", version="1")
    client.load_model("metered")  # loaded: a reload
    _infer(client, "metered", 1.0)
    text = _text(proc)
    assert text.count("# TYPE requests_seen counter") == 1
    assert scrape_metrics(proc.http).value("requests_seen_total", model="metered", version="1") > before


#: Gives texts /metrics must escape or cannot write, and observes NaN; writes what was refused.
ODD_PY = '''
import json
import os

import triton_python_backend_utils as pb_utils


def attempt(fn):
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


class TritonPythonModel:
    def initialize(self, args):
        F = pb_utils.MetricFamily
        self.escaped_family = F("odd_escaped", "back\\\\slash\\nnew line \\"quoted\\"", F.GAUGE)
        self.escaped = self.escaped_family.Metric(labels={"v": 'a\\\\b"c\\nd'})
        self.escaped.set(1)
        self.hist_family = F("odd_hist", "NaN observed", F.HISTOGRAM)
        self.hist = self.hist_family.Metric(buckets=[0.0, 1.0])
        self.hist.observe(float("nan"))
        self.hist.observe(0.5)
        self.kept = []
        errors = {
            "label": attempt(lambda: self.kept.append(self.escaped_family.Metric(labels={"v": "\\ud800"}))),
            "description": attempt(lambda: self.kept.append(F("odd_surrogate", "\\udfff", F.GAUGE))),
        }
        with open(os.path.join(args["model_repository"], "odd.json"), "w") as f:
            json.dump(errors, f)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy())]) for r in requests]
'''


def test_texts_are_escaped_a_lone_surrogate_is_refused_and_nan_is_counted_in_inf(tmp_path: Path) -> None:
    """A label value or description that cannot be written as UTF-8 is refused to the model (it
    would make every scrape of /metrics fail); backslash, quote and newline are escaped; a NaN
    observation lands in the +Inf bucket only, as prometheus-cpp counts it."""
    root = tmp_path / "model_repository"
    _write(root, "odd", ODD_PY)
    proc = ServerProcess("--models", "none", "--model-repository", str(root))
    try:
        errors = json.loads((root / "odd" / "odd.json").read_text())
        assert "label 'v': its value '\\ud800' is not valid UTF-8" in errors["label"]
        assert errors["description"].startswith("TritonModelException: Error when creating MetricFamily: ")
        assert "valid UTF-8, got text that is not UTF-8" in errors["description"]
        text = _text(proc)  # (a scrape that fails raises here)
        assert '# HELP odd_escaped back\\\\slash\\nnew line "quoted"\n' in text
        m = scrape_metrics(proc.http)  # parsed as exposition by prometheus_client
        assert m.value("odd_escaped", v='a\\b"c\nd') == 1.0
        assert m.value("odd_hist_bucket", le="0.0") == 0.0  # NaN is not <= 0
        assert m.value("odd_hist_bucket", le="1.0") == 1.0
        assert m.value("odd_hist_bucket", le="+Inf") == m.value("odd_hist_count") == 2.0
    finally:
        proc.stop()


def test_a_metric_made_and_dropped_again_and_again_is_not_kept() -> None:
    """A ``Metric`` made through a family and released (the model dropped it) is held by nothing of
    the store's: a model making one per request does not grow the server's memory."""
    import gc
    import weakref

    from wsserve.custommetrics import CustomMetrics

    store = CustomMetrics()
    family = store.owner("m", 1).family("per_request", "made per request", "counter")
    refs = []
    for _ in range(100):
        series = family.metric({"k": "v"}, None)
        series.increment(1)
        series.release()
        refs.append(weakref.ref(series))
        del series
    gc.collect()
    assert sum(r() is not None for r in refs) == 0
    assert store.counts() == (1, 0)


def test_the_text_custom_series_write_to_metrics_is_bounded_in_bytes() -> None:
    """Series with the longest label values (multi-byte, to be escaped) and the most buckets are
    refused once what ``/metrics`` would write passes MAX_CUSTOM_METRIC_BYTES, naming it; what is
    held renders within it, and a released series gives its bytes back."""
    from wsserve.custommetrics import (
        MAX_BUCKETS,
        MAX_CUSTOM_METRIC_BYTES,
        MAX_LABEL_VALUE_CHARS,
        MAX_LABELS,
        CustomMetrics,
        MetricError,
    )

    store = CustomMetrics()
    family = store.owner("m", 1).family("wide", "long labels", "histogram")
    buckets = list(range(MAX_BUCKETS))
    held = []
    with pytest.raises(MetricError, match=r"at most \d+ in all \(MAX_CUSTOM_METRIC_BYTES\)"):
        for i in range(MAX_CUSTOM_METRIC_SERIES):
            labels = {f"l{j}": f"{i}\"é" + "\\" * (MAX_LABEL_VALUE_CHARS - 8) for j in range(MAX_LABELS)}
            held.append(family.metric(labels, buckets))
            held[-1].observe(1.0)
    assert 0 < len(held) < MAX_CUSTOM_METRIC_SERIES
    assert len(store.render()) <= MAX_CUSTOM_METRIC_BYTES
    before = store.counts()
    held.pop().release()
    again = family.metric({f"l{j}": "\\" * MAX_LABEL_VALUE_CHARS for j in range(MAX_LABELS)}, buckets)
    assert store.counts() == before and again.kind == "histogram"


async def test_with_workers_metrics_sums_every_workers_custom_families(tmp_path: Path, model_cache: Path) -> None:
    """``--workers 2``: each worker runs its own copy of the model, whose metrics count what that
    worker served; ``/metrics`` on either worker gives their sums (a histogram's counts, a counter's,
    a gauge's too), as it does for the server's own counters."""
    from tests.support import Conn, wait_until_async

    root = tmp_path / "model_repository"
    _write(root, "metered", METERED_PY)
    proc = ServerProcess("--workers", "2", "--models", "none", "--model-repository", str(root), cache_dir=model_cache)
    conns = []
    try:
        conns = [await Conn.open(proc.url) for _ in range(24)]

        def spread() -> bool:  # the 24 connections, open, are on both workers
            m = proc.metrics()
            per = [m.get("wsserve_connections", worker=w) for w in ("0", "1")]
            return all(n > 0 for n in per) and sum(per) == 24

        await wait_until_async(spread, 60, what="24 connections over both workers", in_thread=True)
        for i, c in enumerate(conns):
            reply = await c.request({"type": "predict", "id": i, "model": "metered", "inputs": [[1.0, 0.0]]})
            assert reply["type"] == "result", reply
        labels = {"model": "metered", "version": "1"}

        def summed() -> bool:
            m = scrape_metrics(proc.http)
            # the 24 requests' x[0, 0] = 1.0 land in (0.5, 1.0] (each worker's warm-up batch of zeros below);
            # each worker's last value is 1.0, so the gauge sums to 2.0
            ones = m.get("input_value_bucket", le="1.0", **labels) - m.get("input_value_bucket", le="0.5", **labels)
            # (checked on the same scrape: the next one may reach the other worker, which reads this
            # one's snapshot as last written, up to half a second ago)
            return ones == 24 and m.get("last_value", **labels) == 2.0 and \
                m.get("requests_seen_total", **labels) == m.get("input_value_count", **labels) >= 24

        # a scrape, whichever worker answers it, sums both workers (after their next snapshot)
        await wait_until_async(summed, 60, what="sums over both workers", in_thread=True)
    finally:
        for c in conns:
            await c.close()
        proc.stop()


def test_merging_workers_snapshots_adds_series_up_and_leaves_out_what_does_not_fit() -> None:
    from wsserve.custommetrics import CustomMetrics, merge_snapshots, render_snapshot

    def worker(value: float, kind_of_other: str = "gauge", buckets: tuple[float, ...] = (1.0,)) -> list[Any]:
        store = CustomMetrics()
        owner = store.owner("m", 1)
        made = []
        for name, kind in (("c", "counter"), ("g", "gauge"), ("other", kind_of_other)):
            fam = owner.family(name, f"{name} help", kind)
            made.append(fam.metric({"k": "v"}, None))
            made[-1].increment(value)
        hist = owner.family("h", "h help", "histogram").metric(None, list(buckets))
        hist.observe(value)
        return store.snapshot()

    merged = merge_snapshots([worker(0.5), worker(2.0, kind_of_other="counter", buckets=(5.0,)), None, [{"bad": 1}]])
    text = render_snapshot(merged).decode()
    assert 'c{k="v"} 2.5' in text and 'g{k="v"} 2.5' in text
    assert 'other{k="v"} 0.5' in text and "# TYPE other gauge" in text  # the counter "other" left out
    assert 'h_bucket{le="1.0"} 1.0' in text and 'h_count 1.0' in text  # the 5.0-bucket histogram left out
