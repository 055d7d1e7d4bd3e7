"""Prometheus metrics of one server (its own registry, so tests can run several).

Names follow PROTOCOL.md and Prometheus conventions.  The per-request path
only touches plain Python counters on the event-loop thread (a dict increment,
a ``bisect`` into fixed buckets); ``prometheus_client`` turns them into the
exposition format when ``/metrics`` is scraped.  That keeps metrics at a
fraction of a microsecond per request, where the library's locked
``Counter``/``Histogram`` cost several.  Not thread-safe: update from the loop.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Info, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .custommetrics import CustomMetrics, merge_snapshots, render_snapshot

__all__ = ["Metrics", "Histogram", "VersionStats", "CONTENT_TYPE", "fold_dead_snapshot", "supervisor_snapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: How old a worker's snapshot (written twice a second) may be before ``/metrics`` on another worker
#: stops showing its gauges: a worker whose event loop no longer runs is not shown as ready.
STALE_SNAPSHOT_S = 5.0

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Time per generated token: from 10 µs (a small model's step shared by many sequences) up.
TOKEN_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)


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


class VersionStats:
    """One model version's counters for Triton's statistics extension (``GET /v2/models/.../stats``).

    Per finished request (:meth:`Metrics.predict_done` / :meth:`Metrics.request_done`; an ensemble
    step's: :meth:`on_request`):
    ``ok``/``ok_s`` (count and total seconds of successful requests), ``fail``/``fail_s``
    (the others: errors, timeouts, cancellations), ``queue_s`` (total wait of the successful
    ones before their first batch, a decoupled model's before its first ``execute``; its count is
    ``ok``).  Per computed batch (:meth:`on_batch`, the worker calls it): ``executions``, ``rows``, ``compute_s``;
    ``pair_count``/``pair_s``: the batch's requests and its compute time once per request
    (Triton's per-request ``compute_infer``); ``sizes``: ``{rows: [batches, seconds]}``;
    ``last``: the monotonic time the last batch ended (None: none yet).  Per response-cache lookup
    (:meth:`on_cache`, the worker calls it): ``cache_hit``/``cache_hit_s`` (hits and the time to
    look them up), ``cache_miss``/``cache_miss_s`` (misses, the time to look them up and to store
    their outputs).  Plain attributes, event-loop thread only; no object is made per request."""

    __slots__ = ("ok", "ok_s", "fail", "fail_s", "queue_s", "executions", "rows", "compute_s", "pair_count",
                 "pair_s", "sizes", "last", "cache_hit", "cache_hit_s", "cache_miss", "cache_miss_s")

    def __init__(self) -> None:
        self.ok = self.fail = self.executions = self.rows = self.pair_count = 0
        self.ok_s = self.fail_s = self.queue_s = self.compute_s = self.pair_s = 0.0
        self.cache_hit = self.cache_miss = 0
        self.cache_hit_s = self.cache_miss_s = 0.0
        self.sizes: dict[int, list[float]] = {}
        self.last: float | None = None

    def on_batch(self, rows: int, requests: int, compute_s: float, ended: float) -> None:
        """One computed batch of ``rows`` rows from ``requests`` requests, ended at monotonic ``ended``."""
        self.executions += 1
        self.rows += rows
        self.compute_s += compute_s
        self.pair_count += requests
        self.pair_s += compute_s * requests
        size = self.sizes.get(rows)
        if size is None:
            size = self.sizes[rows] = [0, 0.0]
        size[0] += 1
        size[1] += compute_s
        self.last = ended

    def on_request(self, ok: bool, duration_s: float, queue_s: float) -> None:
        """One finished request that is no client's own (an ensemble step's, which Triton counts as
        the step model's request): ``ok`` or not, ``duration_s`` from its queueing to its end,
        ``queue_s`` its wait before its first batch (kept for a success only)."""
        if ok:
            self.ok += 1
            self.ok_s += duration_s
            self.queue_s += queue_s
        else:
            self.fail += 1
            self.fail_s += duration_s

    def on_cache(self, hit: bool, seconds: float) -> None:
        """One response-cache lookup: a hit or a miss, taking ``seconds``."""
        if hit:
            self.cache_hit += 1
            self.cache_hit_s += seconds
        else:
            self.cache_miss += 1
            self.cache_miss_s += seconds

    def snapshot(self, mono_now: float, wall_now: float) -> dict[str, Any]:
        """JSON-ready values; ``last`` as Unix seconds (0: no batch yet), from the two clocks' now."""
        return {
            "ok": self.ok, "ok_s": self.ok_s, "fail": self.fail, "fail_s": self.fail_s, "queue_s": self.queue_s,
            "executions": self.executions, "rows": self.rows, "compute_s": self.compute_s,
            "pair_count": self.pair_count, "pair_s": self.pair_s,
            "cache_hit": self.cache_hit, "cache_hit_s": self.cache_hit_s,
            "cache_miss": self.cache_miss, "cache_miss_s": self.cache_miss_s,
            "sizes": {str(k): list(v) for k, v in self.sizes.items()},
            "last": 0.0 if self.last is None else wall_now - (mono_now - self.last),
        }


def merge_version_stats(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of :meth:`VersionStats.snapshot` values (``last``: the latest)."""
    out: dict[str, Any] = {"sizes": {}, "last": 0.0}
    for snap in snaps:
        for key, value in snap.items():
            if key == "sizes":
                _merge_hist(out["sizes"], value)
            elif key == "last":
                out["last"] = max(out["last"], value)
            else:
                out[key] = out.get(key, 0) + value
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

    def snapshot(self) -> dict[str, list[float]]:
        """``{"label\\x00label": [count per bucket..., sum]}`` (JSON-ready)."""
        return {_SEP.join(key): [*h.counts, h.sum] for key, h in self.children.items()}


_SEP = "\x00"  # joins label values into one JSON key


def _merge_counts(into: dict[str, float], more: dict[str, float]) -> None:
    for key, n in more.items():
        into[key] = into.get(key, 0) + n


def _merge_hist(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for key, values in more.items():
        mine = into.get(key)
        if mine is None or len(mine) != len(values):
            into[key] = list(values)
        else:
            for i, v in enumerate(values):
                mine[i] += v


def fold_dead_snapshot(retired: dict[str, Any] | None, dead: dict[str, Any]) -> dict[str, Any]:
    """What dead workers counted, as one snapshot: ``retired`` (a previous fold, or None) plus
    the counters, histograms and model statistics of the dead worker's last snapshot ``dead``.
    Gauges are dropped (``alive`` is false).  Neither argument is modified.

    Under ``--workers`` the supervisor keeps one such snapshot however many workers died, so
    the metrics directory (read whole by every scrape) does not grow with each restart."""
    out: dict[str, Any] = {"worker": "retired", "pid": 0, "alive": False, "counters": {}, "histograms": {},
                           "model_stats": {}, "gauges": {}}
    for snap in (retired or {}), dead:
        for name, values in snap.get("counters", {}).items():
            _merge_counts(out["counters"].setdefault(name, {}), values)
        for name, values in snap.get("histograms", {}).items():
            _merge_hist(out["histograms"].setdefault(name, {}), {k: list(v) for k, v in values.items()})
        for key, values in snap.get("model_stats", {}).items():
            mine = out["model_stats"].get(key)
            out["model_stats"][key] = merge_version_stats([mine, values] if mine is not None else [values])
    return out


def supervisor_snapshot(restarts: Mapping[int, int], backoff_s: Mapping[int, float], *, pid: int,
                        boot_timeouts: Mapping[int, int] | None = None) -> dict[str, Any]:
    """The ``--workers`` supervisor's figures as a snapshot the workers' ``/metrics`` merges
    (the supervisor writes it as ``supervisor.json`` next to the workers' snapshots).

    ``restarts``: restarts the supervisor made of each worker index (0 for one never restarted,
    so the series exists before its first increment); ``backoff_s``: for each index, the delay
    of its pending restart while the dead worker waits in backoff, 0 otherwise; ``boot_timeouts``:
    the workers of each index stopped for their boot timeout (None: 0 for each index of
    ``restarts``).  One entry per
    worker index, so the file does not grow with restarts.  The result has the shape of a
    worker's snapshot — ``counters`` (summed by the merge like any worker's), no histograms
    or model statistics — with ``alive`` false because the supervisor serves nothing and has
    none of a worker's gauges; its own gauges, already keyed by ``worker``, are under
    ``worker_gauges``.  Pure: no clock, no file."""
    return {
        "worker": "supervisor", "pid": pid, "alive": False,
        "counters": {"worker_restarts": {str(i): n for i, n in sorted(restarts.items())},
                     "worker_boot_timeouts": {str(i): (boot_timeouts or {}).get(i, 0) for i in sorted(restarts)}},
        "histograms": {}, "model_stats": {}, "gauges": {},
        "worker_gauges": {"restart_backoff": {str(i): float(s) for i, s in sorted(backoff_s.items())}},
    }


def _cumulative(bounds: tuple[float, ...], values: list[float]) -> list[tuple[str, float]]:
    out, total = [], 0.0
    for bound, n in zip((*bounds, float("inf")), values[:-1]):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return out


_HISTOGRAMS = (
    ("duration", "wsserve_request_duration_seconds", "Time from receipt to terminal frame.", ("model", "type"), LATENCY_BUCKETS),
    ("queue", "wsserve_queue_duration_seconds", "Time a request waited before its first batch or step.", ("model",),
     LATENCY_BUCKETS),
    ("batch_size", "wsserve_batch_size", "Rows (predict) or sequences (generate) per batch.", ("model",), BATCH_BUCKETS),
    ("compute", "wsserve_batch_compute_seconds", "Model compute time per batch.", ("model",), LATENCY_BUCKETS),
    ("ttft", "wsserve_time_to_first_token_seconds",
     "Generations: time from receipt to the first generated token (observed when the generation ends).", ("model",),
     LATENCY_BUCKETS),
    ("tpot", "wsserve_request_time_per_output_token_seconds",
     "Generations of two tokens or more that ended by length or stop: mean time between tokens after the first.",
     ("model",), TOKEN_BUCKETS),
    ("guide_compile", "wsserve_guide_compile_seconds",
     "guided_regex / guided_json patterns compiled (in a child process): wall time of each compile that ended, "
     "built or refused.", ("model",), LATENCY_BUCKETS),
)


class _Collector(Collector):
    """Renders a merged snapshot: this process's, plus (with worker processes) every
    other worker's last snapshot and the supervisor's (:func:`supervisor_snapshot`):
    counters and histograms summed, gauges by ``worker``."""

    def __init__(self, metrics: "Metrics") -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return []  # registered before the server's state exists

    def collect(self) -> Iterator[Metric]:
        snaps = self._m._scraped or self._m.snapshots()  # the scrape's own, when render() read them
        counters: dict[str, dict[str, float]] = {}
        hists: dict[str, dict[str, list[float]]] = {}
        for snap in snaps:
            for name, values in snap["counters"].items():
                _merge_counts(counters.setdefault(name, {}), values)
            for name, values in snap["histograms"].items():
                _merge_hist(hists.setdefault(name, {}), values)

        def counter(name: str, doc: str, labels: list[str], values: dict[str, float]) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=labels)
            for key, n in values.items():
                fam.add_metric(key.split(_SEP) if labels else [], n)
            return fam

        yield counter("wsserve_requests", "Requests by model, type and result code (ok on success).",
                      ["model", "type", "code"], counters.get("requests", {}))
        for key, name, doc, labels, bounds in _HISTOGRAMS:
            fam = HistogramMetricFamily(name, doc, labels=list(labels))
            for labelkey, values in hists.get(key, {}).items():
                fam.add_metric(labelkey.split(_SEP), _cumulative(bounds, values), sum_value=values[-1])
            yield fam
        yield counter("wsserve_generated_tokens", "Tokens streamed by generate.", ["model"], counters.get("tokens", {}))
        yield counter("wsserve_prompt_tokens", "Prompt tokens the model read: of the generations that took a batch "
                      "slot, and of the prompts scored (echo with logprobs).",
                      ["model"], counters.get("prompt_tokens", {}))
        yield counter("wsserve_guide_compiles",
                      "guided_regex / guided_json requests by how their pattern was had: compiled, cached (compiled "
                      "before), refused (by the library, a bound or the child's limits), remembered (refused "
                      "before), timed_out, failed (a bug), abandoned (every request waiting for it left or passed its "
                      "deadline: its child killed), cancelled (the model's engine closed).",
                      ["model", "result"], counters.get("guide_compiles", {}))
        yield counter("wsserve_response_cache", "Response-cache lookups of plain predicts by model and result "
                      "(hit: answered from the cache; miss: queued to be computed, then stored if whole, finite and "
                      "small enough).",
                      ["model", "result"], counters.get("response_cache", {}))
        yield counter("wsserve_batch_isolations",
                      "Predict batches (and generation steps) of several requests that failed and whose requests were computed alone.",
                      ["model"], counters.get("isolations", {}))
        yield counter("wsserve_connections_closed", "Closed connections by close code.", ["code"], counters.get("closes", {}))
        yield counter("wsserve_slow_consumer_closes", "Connections closed because they stopped reading.", [],
                      counters.get("slow_consumers", {}))
        yield counter("wsserve_messages_received", "WebSocket messages received.", [], counters.get("messages", {}))
        yield counter("wsserve_websocket_frames", "Client frames by parsing path: fast (whole data frames) or library.",
                      ["path"], counters.get("frames", {}))
        live = [s for s in snaps if s.get("alive", True) and not s.get("stale")]
        per_worker = self._m.worker is not None
        extra = ["worker"] if per_worker else []

        def gauge(name: str, doc: str, field: str, labels: list[str] = ()) -> GaugeMetricFamily:  # type: ignore[assignment]
            fam = GaugeMetricFamily(name, doc, labels=[*labels, *extra])
            for snap in live:
                value = snap["gauges"][field]
                tail = [str(snap["worker"])] if per_worker else []
                if labels:
                    for key, n in value.items():
                        fam.add_metric([key, *tail], n)
                else:
                    fam.add_metric(tail, value)
            return fam

        yield gauge("wsserve_connections", "Open WebSocket connections.", "connections")
        yield gauge("wsserve_http_connections", "Open HTTP connections (not upgraded to WebSocket).", "http_connections")
        yield gauge("wsserve_inflight_requests", "Unfinished predict and generate requests across all connections.",
                    "inflight")
        yield gauge("wsserve_queue_depth", "Requests waiting in a model's queue.", "queue_depth", ["model"])
        yield gauge("wsserve_queue_rows", "Rows waiting in a model's predict queue.", "queue_rows", ["model"])
        yield gauge("wsserve_generation_running", "Generations holding a slot of a generative model's running batch "
                    "(the waiting ones: wsserve_queue_depth).", "generation_running", ["model"])
        yield gauge("wsserve_response_cache_bytes", "Bytes held by the response cache (--response-cache-bytes "
                    "bounds them).", "response_cache_bytes")
        yield gauge("wsserve_response_cache_entries", "Responses held by the response cache.", "response_cache_entries")
        yield gauge("wsserve_event_loop_tasks", "asyncio tasks on the server's loop.", "tasks")
        yield gauge("wsserve_ready", "1 when ready to serve, 0 while starting or draining.", "ready")
        yield gauge("wsserve_model_loads_abandoned", "Model loads past their --model-load-timeout-s still running "
                    "(abandoned threads; at most 8 load threads live at once).", "loads_abandoned")
        if per_worker:  # the supervisor's figures (supervisor_snapshot); one process has no supervisor
            yield counter("wsserve_worker_restarts", "Restarts of a dead worker process by the --workers supervisor.",
                          ["worker"], counters.get("worker_restarts", {}))
            yield counter("wsserve_worker_boot_timeouts",
                          "Workers the --workers supervisor stopped because they were not ready within "
                          "--worker-boot-timeout-s of their start (each also a boot failure).",
                          ["worker"], counters.get("worker_boot_timeouts", {}))
            backoff: dict[str, float] = {}
            for snap in snaps:
                backoff.update(snap.get("worker_gauges", {}).get("restart_backoff", {}))
            fam = GaugeMetricFamily("wsserve_worker_restart_backoff_seconds",
                                    "Delay of a dead worker's pending restart while it waits in backoff "
                                    "(crash loop), 0 when it runs.", labels=["worker"])
            for index, seconds in backoff.items():
                fam.add_metric([index], seconds)
            yield fam


class Metrics:
    """All metrics of one server.  ``read_state()`` returns the gauges' values."""

    def __init__(self, *, version: str, read_state: Callable[[], dict[str, Any]], worker: int | None = None,
                 peers_dir: Path | None = None) -> None:
        """``worker``/``peers_dir``: with several worker processes, this process's index and
        the directory where every worker writes its snapshot (:meth:`write_snapshot`);
        ``/metrics`` then reports totals over all workers and gauges labelled by ``worker``."""
        self.read_state = read_state
        self.requests: dict[tuple[str, str, str], int] = {}
        #: The histogram families of :data:`_HISTOGRAMS`, by key; each is also an attribute
        #: (``self.duration``, ``self.queue``, ..., the hot paths' direct reference).
        self._families = {key: _Family(name, doc, labels, bounds) for key, name, doc, labels, bounds in _HISTOGRAMS}
        self.duration, self.queue, self.batch_size, self.compute, self.ttft, self.tpot = (
            self._families[k] for k in ("duration", "queue", "batch_size", "compute", "ttft", "tpot"))
        #: Prompt tokens of started generations per model (:meth:`on_generation_done`).
        self.prompt_tokens: dict[str, int] = {}
        #: Triton statistics per ``(model, version)`` (:meth:`version_stats`).
        self.model_stats: dict[tuple[str, str], VersionStats] = {}
        self.tokens: dict[str, int] = {}
        #: Isolated predict batches per model (:meth:`on_isolated`).
        self.isolations: dict[str, int] = {}
        #: Response-cache lookups per ``(model, "hit" | "miss")`` (:meth:`on_cache`).
        self.cache_results: dict[tuple[str, str], int] = {}
        #: Guide patterns had per ``(model, result)`` (:meth:`on_guide_compile`).
        self.guide_compiles: dict[tuple[str, str], int] = {}
        self.closes: dict[str, int] = {}
        self.slow_consumers = 0
        self.worker = worker
        self._peers_dir = Path(peers_dir) if peers_dir is not None else None
        #: The families the served models make (a Triton Python model's ``pb_utils.MetricFamily``),
        #: rendered after the server's own; this process's only (not merged across ``--workers``).
        self.custom = CustomMetrics()
        #: the snapshots a ``render`` with workers read for its scrape (its collection reuses them), else None
        self._scraped: list[dict[str, Any]] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        Info("wsserve", "wsserve build information.", registry=self.registry).info({"version": version})
        self.registry.register(_Collector(self))

    def version_stats(self, model: str, version: str) -> VersionStats:
        """The statistics of one model version (made at its first call, then the same object:
        a reloaded version keeps counting, as /metrics does per model)."""
        key = (model, version)
        stats = self.model_stats.get(key)
        if stats is None:
            stats = self.model_stats[key] = VersionStats()
        return stats

    def request_done(self, model: str, kind: str, code: str, duration_s: float,
                     stats: VersionStats | None = None) -> None:
        """Count one finished request and observe its duration (in ``stats`` too, when given)."""
        if stats is not None:
            if code == "ok":
                stats.ok += 1
                stats.ok_s += duration_s
            else:
                stats.fail += 1
                stats.fail_s += duration_s
        key = (model, kind, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        h = self.duration.children.get((model, kind))
        if h is None:
            h = self.duration.get((model, kind))
        h.counts[bisect_left(h.bounds, duration_s)] += 1
        h.sum += duration_s

    def predict_done(self, model: str, code: str, duration_s: float, queue_s: float,
                     stats: VersionStats | None = None) -> None:
        """:meth:`request_done` for a ``predict`` and, when ``queue_s >= 0``, :meth:`queued`, in one
        call (the hot path: one method call and one label lookup per family instead of two calls).
        ``stats``: the version's :class:`VersionStats` (a success's queue time goes there too, when
        measured: ``queue_s >= 0``; -1: none, a request that ended before its first batch, or a
        decoupled model's before its first ``execute`` started; a decoupled model's request, on every
        transport, is measured from its submit to the start of its first execute)."""
        if stats is not None:
            if code == "ok":
                stats.ok += 1
                stats.ok_s += duration_s
                if queue_s >= 0:
                    stats.queue_s += queue_s
            else:
                stats.fail += 1
                stats.fail_s += duration_s
        key = (model, "predict", code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        h = self.duration.children.get((model, "predict"))
        if h is None:
            h = self.duration.get((model, "predict"))
        h.counts[bisect_left(h.bounds, duration_s)] += 1
        h.sum += duration_s
        if queue_s >= 0:
            self.queued(model, queue_s)

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

    def on_isolated(self, model: str) -> None:
        """A predict batch or generation step of ``model`` failed and its requests are computed alone
        (the predict worker and the generation engine call it)."""
        self.isolations[model] = self.isolations.get(model, 0) + 1

    def on_cache(self, model: str, result: str) -> None:
        """A plain predict of ``model`` was looked up in the response cache: ``result`` is ``"hit"``
        or ``"miss"`` (the predict worker calls it)."""
        key = (model, result)
        self.cache_results[key] = self.cache_results.get(key, 0) + 1

    def on_generation_done(self, model: str, prompt_tokens: int, ttft_s: float | None, tpot_s: float | None) -> None:
        """A generation of ``model`` that took a batch slot ended (the engine calls it once per
        generation, from the loop): its prompt's token count, the time from its receipt to its
        first generated token (None: none), and its mean time per token after the first (None:
        fewer than two tokens, or it did not end by ``length`` or ``stop``)."""
        self.prompt_tokens[model] = self.prompt_tokens.get(model, 0) + prompt_tokens
        if ttft_s is not None:
            self.ttft.get((model,)).observe(ttft_s)
        if tpot_s is not None:
            self.tpot.get((model,)).observe(tpot_s)

    def on_prompt_scored(self, model: str, tokens: int) -> None:
        """A prompt of ``tokens`` tokens was scored by ``model`` (``echo`` with ``logprobs``): its
        tokens count as prompt tokens, as a generation's do."""
        self.prompt_tokens[model] = self.prompt_tokens.get(model, 0) + tokens

    def on_guide_compile(self, model: str, result: str, seconds: float | None = None) -> None:
        """A ``guided_regex`` / ``guided_json`` request of ``model`` had its pattern: ``result`` is
        one of ``compiled``, ``cached``, ``refused``, ``remembered``, ``timed_out``, ``failed``,
        ``abandoned`` (no request waited for it any more: stopped, its child killed), ``cancelled``
        (the engine closed) (a fixed set: the label cannot grow); ``seconds``: the compile's wall time,
        for one that ran in a child and ended (the generation engine calls it)."""
        key = (model, result)
        self.guide_compiles[key] = self.guide_compiles.get(key, 0) + 1
        if seconds is not None:
            self._families["guide_compile"].get((model,)).observe(seconds)

    def add_tokens(self, model: str, n: int) -> None:
        self.tokens[model] = self.tokens.get(model, 0) + n

    def closed(self, code: int | None) -> None:
        """Count a closed connection under its close code; the codes applications choose
        (3000-3999, 4000-4999: a client picks any) count as ``3xxx`` / ``4xxx``, so clients
        cannot grow the label set past the ~20 codes RFC 6455 defines."""
        code = 1006 if code is None else code
        key = str(code) if code < 3000 else "3xxx" if code < 4000 else "4xxx" if code < 5000 else "other"
        self.closes[key] = self.closes.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Every value of this process, JSON-ready (what other workers merge)."""
        state = self.read_state()
        mono, wall = time.monotonic(), time.time()
        return {
            "worker": self.worker,
            "pid": os.getpid(),
            "alive": True,
            "counters": {
                "requests": {_SEP.join(k): n for k, n in self.requests.items()},
                "tokens": dict(self.tokens),
                "prompt_tokens": dict(self.prompt_tokens),
                "isolations": dict(self.isolations),
                "response_cache": {_SEP.join(k): n for k, n in self.cache_results.items()},
                "guide_compiles": {_SEP.join(k): n for k, n in self.guide_compiles.items()},
                "closes": dict(self.closes),
                "slow_consumers": {"": self.slow_consumers},
                "messages": {"": state["messages"]},
                "frames": dict(state.get("frames", {})),
            },
            "histograms": {key: family.snapshot() for key, family in self._families.items()},
            "custom": self.custom.snapshot(),
            "model_stats": {_SEP.join(k): v.snapshot(mono, wall) for k, v in self.model_stats.items()},
            "gauges": {
                "connections": state["connections"], "http_connections": state.get("http_connections", 0),
                "inflight": state["inflight"],
                "queue_depth": {m: q for m, (q, _) in state["queues"].items()},
                "queue_rows": {m: r for m, (_, r) in state["queues"].items()},
                "generation_running": dict(state.get("generation_running", {})),
                "tasks": state["tasks"], "ready": state["ready"],
                "loads_abandoned": state.get("loads_abandoned", 0),
                "response_cache_bytes": state.get("response_cache_bytes", 0),
                "response_cache_entries": state.get("response_cache_entries", 0),
            },
        }

    def snapshots(self) -> list[dict[str, Any]]:
        """This process's snapshot and (with workers) every other ``*.json`` of the directory:
        the other workers' last ones, the dead workers' fold and the supervisor's.  A worker's
        snapshot older than :data:`STALE_SNAPSHOT_S` (its event loop no longer runs: hung, or
        stopped) is marked ``stale``: its counters (and its models' custom families) stay in the
        totals, its gauges (``wsserve_ready`` among them) are left out rather than shown with the
        values it last had."""
        own = self.snapshot()
        if self._peers_dir is None:
            return [own]
        out = [own]
        now = time.time()
        for path in sorted(self._peers_dir.glob("*.json")):
            if path.name == f"worker-{self.worker}.json":
                continue
            try:
                written = path.stat().st_mtime
                snap = json.loads(path.read_text())
            except (OSError, ValueError):  # being replaced, or gone: skip this scrape
                continue
            if isinstance(snap, dict) and "counters" in snap:
                if now - written > STALE_SNAPSHOT_S:
                    snap["stale"] = True
                out.append(snap)
        return out

    def model_statistics(self) -> dict[tuple[str, str], dict[str, Any]]:
        """``{(model, version): merged VersionStats values}``: this process's, plus (with workers)
        every other worker's last snapshot (as ``/metrics`` merges its counters)."""
        parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for snap in self.snapshots():
            for key, values in snap.get("model_stats", {}).items():
                model, _, version = key.partition(_SEP)
                parts.setdefault((model, version), []).append(values)
        return {key: merge_version_stats(values) for key, values in parts.items()}

    def write_snapshot(self) -> None:
        """Write this worker's snapshot for the others (atomically: temp file + rename)."""
        if self._peers_dir is None:
            return
        path = self._peers_dir / f"worker-{self.worker}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        os.replace(tmp, path)

    def render(self) -> bytes:
        """The exposition: the server's metrics, then the models' custom families (:attr:`custom`;
        with workers, every live worker's merged: :func:`~wsserve.custommetrics.merge_snapshots`)."""
        if self._peers_dir is None:
            return generate_latest(self.registry) + self.custom.render()
        snaps = self._scraped = self.snapshots()  # read once: the collection below takes them too
        try:
            own = generate_latest(self.registry)
        finally:
            self._scraped = None
        custom = [snap.get("custom") for snap in snaps if snap.get("alive", True)]
        return own + render_snapshot(merge_snapshots(custom))
