"""Prometheus metrics of one server (its own registry, so tests can run several).

Names follow PROTOCOL.md and Prometheus conventions.  Hot-path updates use
pre-bound label children (``Metrics.request``); gauges that mirror state
(connections, in-flight, queue depth) are read at scrape time by a collector,
costing nothing per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # the *_created series only add noise here

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registered before the server's state exists; nothing to pre-check

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._read()
        yield GaugeMetricFamily("wsserve_connections", "Open WebSocket connections.", value=state["connections"])
        yield GaugeMetricFamily(
            "wsserve_inflight_requests",
            "Unfinished predict and generate requests across all connections.",
            value=state["inflight"],
        )
        depth = GaugeMetricFamily("wsserve_queue_depth", "Requests waiting in a model's queue.", labels=["model"])
        rows = GaugeMetricFamily("wsserve_queue_rows", "Rows waiting in a model's predict queue.", labels=["model"])
        for model, (requests, queued_rows) in state["queues"].items():
            depth.add_metric([model], requests)
            rows.add_metric([model], queued_rows)
        yield depth
        yield rows
        yield GaugeMetricFamily("wsserve_ready", "1 when ready to serve, 0 while starting or draining.", value=state["ready"])


class Metrics:
    """All metrics of one server."""

    def __init__(self, *, version: str, read_state: Callable[[], dict[str, Any]]) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        Info("wsserve", "wsserve build information.", registry=r).info({"version": version})
        self.requests = Counter(
            "wsserve_requests", "Requests by model, type and result code (ok on success).",
            ["model", "type", "code"], registry=r,
        )
        self.duration = Histogram(
            "wsserve_request_duration_seconds", "Time from receipt to terminal frame.",
            ["model", "type"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue = Histogram(
            "wsserve_queue_duration_seconds", "Time a request waited before its first batch or step.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "wsserve_batch_size", "Rows (predict) or sequences (generate) per batch.",
            ["model"], buckets=_BATCH_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "wsserve_batch_compute_seconds", "Model compute time per batch.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter("wsserve_generated_tokens", "Tokens streamed by generate.", ["model"], registry=r)
        self.messages = Counter("wsserve_messages_received", "WebSocket messages received.", registry=r)
        self.closes = Counter(
            "wsserve_connections_closed", "Closed connections by close code.", ["code"], registry=r,
        )
        self.slow_consumers = Counter(
            "wsserve_slow_consumer_closes", "Connections closed because they stopped reading.", registry=r,
        )
        r.register(_StateCollector(read_state))
        self._children: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}

    def request_done(self, model: str, kind: str, code: str, duration_s: float) -> None:
        """Count one finished request (cached label children: ~1 µs)."""
        key = (model, kind, code)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(model, kind, code)
        child.inc()
        dkey = (model, kind)
        hist = self._durations.get(dkey)
        if hist is None:
            hist = self._durations[dkey] = self.duration.labels(model, kind)
        hist.observe(duration_s)

    def on_batch(self, model: str, rows: int, compute_s: float) -> None:
        self.batch_size.labels(model).observe(rows)
        self.compute.labels(model).observe(compute_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
