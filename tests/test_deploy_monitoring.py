"""deploy/monitoring: the Grafana dashboard and the Prometheus alerting rules, checked offline.

Every query parses as PromQL (``promql-parser``, the deploy extra), and every metric and label it
reads is one a real server exports: a ``--workers 2`` server (so the supervisor's and the
per-worker series exist too) is scraped after predicts and a generation.
Labels Prometheus adds when it scrapes (``instance``, ``job``) are allowed; so is ``le`` on a
histogram's buckets."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, Conn, ServerProcess, http_get, wait_until

if os.environ.get("CI"):  # the deploy extra installs them: under CI, missing is a failure
    import promql_parser as promql
    import yaml
else:
    promql = pytest.importorskip("promql_parser")
    yaml = pytest.importorskip("yaml")

MONITORING = ROOT / "deploy" / "monitoring"
SCRAPE_LABELS = {"instance", "job"}
#: Grafana's built-in variables, as Grafana substitutes them before sending a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _queries() -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` of every dashboard target, variable query and alert."""
    dash = _dashboard()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for rule in _alert_rules():
        yield f"alert {rule['alert']}", rule["expr"]


def _parse(expr: str) -> Any:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return promql.parse(expr)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """The metric names (``("metric", name)``) and label names (``("label", name)``) a parsed
    expression reads: selectors, their matchers, and ``by``/``without``/``on``/``ignoring``."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        if node.name:
            yield "metric", node.name
        for matcher in node.matchers.matchers:
            yield "label", matcher.name
        return
    if kind == "MatrixSelector":
        yield from _walk(node.vector_selector)
        return
    modifier = getattr(node, "modifier", None)
    labels = getattr(modifier, "labels", None) or getattr(getattr(modifier, "matching", None), "labels", None)
    for label in labels or ():
        yield "label", label
    for attr in ("expr", "lhs", "rhs", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (int, float, str)):
            yield from _walk(child)
    for arg in getattr(node, "args", None) or ():
        yield from _walk(arg)


def test_every_query_parses_and_the_dashboard_is_well_formed() -> None:
    queries = list(_queries())
    assert len(queries) >= 20
    for where, expr in queries:
        try:
            _parse(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: {expr!r} does not parse: {exc}")
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "label_values(wsserve_requests_total, model)" in variables["model"]["definition"]


def test_alert_rules_are_well_formed() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"Wsserve[A-Za-z]+", n) for n in names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]


@pytest.fixture(scope="module")
def exported(model_cache: Path) -> dict[str, set[str]]:
    """Every sample name a ``--workers 2`` server exports after some work, with its labels."""
    with ServerProcess("--workers", "2", cache_dir=model_cache) as server:
        asyncio.run(_work(server))

        def scrape() -> dict[str, set[str]] | None:
            samples: dict[str, set[str]] = {}
            for family in text_string_to_metric_families(http_get(server.http + "/metrics")[2].decode()):
                for sample in family.samples:
                    samples.setdefault(sample.name, set()).update(sample.labels)
            wanted = ("wsserve_time_to_first_token_seconds_bucket", "wsserve_request_time_per_output_token_seconds_bucket",
                      "wsserve_prompt_tokens_total", "wsserve_batch_size_bucket", "wsserve_queue_duration_seconds_bucket")
            return samples if all(w in samples for w in wanted) else None  # every worker's share merged

        return wait_until(scrape, 60, what="the workload's series in one scrape")


async def _work(server: ServerProcess) -> None:
    conn = await Conn.open(server.url)
    for i in range(4):
        assert (await conn.request({"type": "predict", "id": i, "model": "linear", "inputs": [[1.0]]}))["type"] == "result"
    await conn.send({"type": "generate", "id": "g", "model": "charlm", "prompt": "The ", "max_tokens": 8})
    assert (await conn.until_terminal("g"))[1]["type"] == "done"
    await conn.close()


@pytest.mark.parametrize("where,expr", list(_queries()), ids=[w for w, _ in _queries()])
def test_every_metric_and_label_a_query_reads_is_exported(exported: dict[str, set[str]], where: str,
                                                         expr: str) -> None:
    read = list(_walk(_parse(expr)))
    metrics = {name for kind, name in read if kind == "metric"}
    assert metrics, f"{where}: reads no metric"
    for name in metrics:
        assert name in exported, f"{where}: {name} is not exported (known: {sorted(exported)})"
    have = set().union(*(exported[m] for m in metrics)) | SCRAPE_LABELS
    if any(m.endswith("_bucket") for m in metrics):
        have.add("le")
    for kind, label in read:
        if kind == "label":
            assert label in have, f"{where}: label {label!r} is not on {sorted(metrics)} ({sorted(have)})"
