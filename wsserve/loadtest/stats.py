"""Counters and histograms one client process collects, and how they merge.

Sans-I/O.  A :class:`RunStats` holds one :class:`WorkloadStats` per workload
spec (same order in every process) plus connection-level facts.  It turns into
a plain JSON-ready dict (histograms encoded) with :meth:`RunStats.to_dict` to
cross a process boundary, back with :meth:`RunStats.from_dict`, and
:meth:`RunStats.merge` adds another process's stats into this one.

Counting rules (the report relies on them):

* ``sent``/``ok``/``errors`` and the latency histograms count only requests
  whose *intended* send time lies in the measurement window;
* ``ok_in_window`` counts successful completions whose *arrival* lies in the
  window (this is what throughput is computed from, so a server that falls
  behind shows a lower achieved rate even if it answers everything later);
* ``tokens`` counts ``token`` frames (generate) or ``chunk`` frames (stream)
  arriving in the window;
* client-side failures appear among the error codes as ``connection_closed``
  (the connection died with the request unfinished), ``no_reply`` (still
  unfinished when the grace period after the run ended) and ``not_sent``
  (open loop: due, but every connection had ``inflight`` requests outstanding
  until the grace period ended).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .histogram import LatencyHistogram

__all__ = ["CLIENT_ERROR_CODES", "RunStats", "WorkloadStats"]

CLIENT_ERROR_CODES = ("connection_closed", "no_reply", "not_sent")


@dataclass(slots=True)
class WorkloadStats:
    """Measurements of one workload spec (see the module docstring for what counts)."""

    label: str
    kind: str
    sent: int = 0
    ok: int = 0
    ok_in_window: int = 0
    tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: time to first token (generate) / first chunk (stream), from the intended send time
    first: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: gap between consecutive tokens (generate) / chunks (stream)
    gap: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: WorkloadStats) -> None:
        if other.label != self.label:
            raise ValueError(f"cannot merge stats of {other.label!r} into {self.label!r}")
        self.sent += other.sent
        self.ok += other.ok
        self.ok_in_window += other.ok_in_window
        self.tokens += other.tokens
        self.errors.update(other.errors)
        self.latency.merge(other.latency)
        self.first.merge(other.first)
        self.gap.merge(other.gap)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "sent": self.sent,
            "ok": self.ok,
            "ok_in_window": self.ok_in_window,
            "tokens": self.tokens,
            "errors": dict(self.errors),
            "latency": self.latency.encode(),
            "first": self.first.encode(),
            "gap": self.gap.encode(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkloadStats:
        return cls(
            label=d["label"],
            kind=d["kind"],
            sent=int(d["sent"]),
            ok=int(d["ok"]),
            ok_in_window=int(d["ok_in_window"]),
            tokens=int(d["tokens"]),
            errors=Counter({str(k): int(v) for k, v in d["errors"].items()}),
            latency=LatencyHistogram.decode(d["latency"]),
            first=LatencyHistogram.decode(d["first"]),
            gap=LatencyHistogram.decode(d["gap"]),
        )


@dataclass(slots=True)
class RunStats:
    """Everything one client process (or, after merging, the whole run) measured."""

    workloads: list[WorkloadStats]
    connections: int = 0
    connect_failures: int = 0
    #: connections the server closed (or that broke) before the tool closed them at the end
    closed_early: int = 0
    late_sends: int = 0
    #: actual minus intended send time of every measured request (open loop only)
    send_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    close_codes: Counter[str] = field(default_factory=Counter)
    procs: int = 1
    #: successful measured requests of each client process, in process order
    ok_per_proc: list[int] = field(default_factory=list)
    #: cores each client process kept busy (user + system CPU time / wall time) while it sent measured requests
    cpu_cores_per_proc: list[float] = field(default_factory=list)

    @classmethod
    def for_labels(cls, labels_kinds: list[tuple[str, str]]) -> RunStats:
        return cls(workloads=[WorkloadStats(label=lab, kind=kind) for lab, kind in labels_kinds])

    def merge(self, other: RunStats) -> None:
        if [w.label for w in other.workloads] != [w.label for w in self.workloads]:
            raise ValueError("cannot merge stats of different workload mixes")
        for mine, theirs in zip(self.workloads, other.workloads, strict=True):
            mine.merge(theirs)
        self.connections += other.connections
        self.connect_failures += other.connect_failures
        self.closed_early += other.closed_early
        self.late_sends += other.late_sends
        self.send_lag.merge(other.send_lag)
        self.close_codes.update(other.close_codes)
        self.procs += other.procs
        self.ok_per_proc.extend(other.ok_per_proc)
        self.cpu_cores_per_proc.extend(other.cpu_cores_per_proc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workloads": [w.to_dict() for w in self.workloads],
            "connections": self.connections,
            "connect_failures": self.connect_failures,
            "closed_early": self.closed_early,
            "late_sends": self.late_sends,
            "send_lag": self.send_lag.encode(),
            "close_codes": dict(self.close_codes),
            "procs": self.procs,
            "ok_per_proc": list(self.ok_per_proc),
            "cpu_cores_per_proc": list(self.cpu_cores_per_proc),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunStats:
        return cls(
            workloads=[WorkloadStats.from_dict(w) for w in d["workloads"]],
            connections=int(d["connections"]),
            connect_failures=int(d["connect_failures"]),
            closed_early=int(d["closed_early"]),
            late_sends=int(d["late_sends"]),
            send_lag=LatencyHistogram.decode(d["send_lag"]),
            close_codes=Counter({str(k): int(v) for k, v in d["close_codes"].items()}),
            procs=int(d["procs"]),
            ok_per_proc=[int(v) for v in d["ok_per_proc"]],
            cpu_cores_per_proc=[float(v) for v in d["cpu_cores_per_proc"]],
        )

    @classmethod
    def merged(cls, parts: list[RunStats]) -> RunStats:
        """A new stats object equal to the sum of ``parts`` (at least one)."""
        if not parts:
            raise ValueError("nothing to merge")
        total = cls.from_dict(parts[0].to_dict())
        for part in parts[1:]:
            total.merge(part)
        return total
