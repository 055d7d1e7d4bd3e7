"""Prometheus metrics of one server (its own registry, so tests can run several).

Names follow PROTOCOL.md and Prometheus conventions.  The per-request path
only touches plain Python counters on the event-loop thread (a dict increment,
a ``bisect`` into fixed buckets); ``prometheus_client`` turns them into the
exposition format when ``/metrics`` is scraped.  That keeps metrics at a
fraction of a microsecond per request, where the library's locked
``Counter``/``Histogram`` cost several.  Not thread-safe: update from the loop.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "Histogram", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    """Fixed-bucket histogram: ``observe`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class _Family:
    """Labelled histograms of one metric name."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.children: dict[tuple[str, ...], Histogram] = {}

    def get(self, key: tuple[str, ...]) -> Histogram:
        h = self.children.get(key)
        if h is None:
            h = self.children[key] = Histogram(self.bounds)
        return h

    def export(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        for key, h in self.children.items():
            fam.add_metric(list(key), h.cumulative(), sum_value=h.sum)
        return fam


class _Collector(Collector):
    def __init__(self, metrics: "Metrics") -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return []  # registered before the server's state exists

    def collect(self) -> Iterator[Metric]:
        m = self._m
        state = m.read_state()
        requests = CounterMetricFamily(
            "wsserve_requests", "Requests by model, type and result code (ok on success).", labels=["model", "type", "code"]
        )
        for (model, kind, code), n in m.requests.items():
            requests.add_metric([model, kind, code], n)
        yield requests
        yield m.duration.export()
        yield m.queue.export()
        yield m.batch_size.export()
        yield m.compute.export()
        tokens = CounterMetricFamily("wsserve_generated_tokens", "Tokens streamed by generate.", labels=["model"])
        for model, n in m.tokens.items():
            tokens.add_metric([model], n)
        yield tokens
        closes = CounterMetricFamily("wsserve_connections_closed", "Closed connections by close code.", labels=["code"])
        for code, n in m.closes.items():
            closes.add_metric([code], n)
        yield closes
        yield CounterMetricFamily(
            "wsserve_slow_consumer_closes", "Connections closed because they stopped reading.", value=m.slow_consumers
        )
        yield CounterMetricFamily("wsserve_messages_received", "WebSocket messages received.", value=state["messages"])
        frames = CounterMetricFamily(
            "wsserve_websocket_frames", "Client frames by parsing path: fast (whole data frames) or library.",
            labels=["path"],
        )
        for path, n in state.get("frames", {}).items():
            frames.add_metric([path], n)
        yield frames
        yield GaugeMetricFamily("wsserve_connections", "Open WebSocket connections.", value=state["connections"])
        yield GaugeMetricFamily(
            "wsserve_http_connections", "Open HTTP connections (not upgraded to WebSocket).",
            value=state.get("http_connections", 0),
        )
        yield GaugeMetricFamily(
            "wsserve_inflight_requests", "Unfinished predict and generate requests across all connections.",
            value=state["inflight"],
        )
        depth = GaugeMetricFamily("wsserve_queue_depth", "Requests waiting in a model's queue.", labels=["model"])
        rows = GaugeMetricFamily("wsserve_queue_rows", "Rows waiting in a model's predict queue.", labels=["model"])
        for model, (queued, queued_rows) in state["queues"].items():
            depth.add_metric([model], queued)
            rows.add_metric([model], queued_rows)
        yield depth
        yield rows
        yield GaugeMetricFamily("wsserve_event_loop_tasks", "asyncio tasks on the server's loop.", value=state["tasks"])
        yield GaugeMetricFamily("wsserve_ready", "1 when ready to serve, 0 while starting or draining.", value=state["ready"])


class Metrics:
    """All metrics of one server.  ``read_state()`` returns the gauges' values."""

    def __init__(self, *, version: str, read_state: Callable[[], dict[str, Any]]) -> None:
        self.read_state = read_state
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration = _Family(
            "wsserve_request_duration_seconds", "Time from receipt to terminal frame.", ("model", "type"), LATENCY_BUCKETS
        )
        self.queue = _Family(
            "wsserve_queue_duration_seconds", "Time a request waited before its first batch or step.", ("model",),
            LATENCY_BUCKETS,
        )
        self.batch_size = _Family(
            "wsserve_batch_size", "Rows (predict) or sequences (generate) per batch.", ("model",), BATCH_BUCKETS
        )
        self.compute = _Family(
            "wsserve_batch_compute_seconds", "Model compute time per batch.", ("model",), LATENCY_BUCKETS
        )
        self.tokens: dict[str, int] = {}
        self.closes: dict[str, int] = {}
        self.slow_consumers = 0
        self.registry = CollectorRegistry(auto_describe=True)
        Info("wsserve", "wsserve build information.", registry=self.registry).info({"version": version})
        self.registry.register(_Collector(self))

    def request_done(self, model: str, kind: str, code: str, duration_s: float) -> None:
        """Count one finished request and observe its duration."""
        key = (model, kind, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        h = self.duration.children.get((model, kind))
        if h is None:
            h = self.duration.get((model, kind))
        h.counts[bisect_left(h.bounds, duration_s)] += 1
        h.sum += duration_s

    def rejected(self, model: str, kind: str, code: str) -> None:
        """Count a request refused before any work (not in the duration histogram)."""
        key = (model, kind, code)
        self.requests[key] = self.requests.get(key, 0) + 1

    def queued(self, model: str, seconds: float) -> None:
        h = self.queue.children.get((model,))
        if h is None:
            h = self.queue.get((model,))
        h.counts[bisect_left(h.bounds, seconds)] += 1
        h.sum += seconds

    def on_batch(self, model: str, rows: int, compute_s: float) -> None:
        self.batch_size.get((model,)).observe(rows)
        self.compute.get((model,)).observe(compute_s)

    def add_tokens(self, model: str, n: int) -> None:
        self.tokens[model] = self.tokens.get(model, 0) + n

    def closed(self, code: int | None) -> None:
        key = str(code if code is not None else 1006)
        self.closes[key] = self.closes.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)
