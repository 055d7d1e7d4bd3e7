"""The load test's settings: one frozen object built from the command line.

:class:`LoadConfig` is what the CLI produces and the runner consumes;
:class:`ServerInfo` is what the probe learnt about the server;
:class:`WorkerConfig` is one client process's share of the work.  All three
are plain values, picklable so they cross into ``spawn``-ed processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .workload import ModelShape, WorkloadSpec

__all__ = ["LoadConfig", "ServerInfo", "WorkerConfig"]

#: Upper bounds of the settings, so that a typo cannot start an unbounded test:
#: its traffic is bounded in count (connections x inflight, rate) and in time
#: (open timeout + warmup + duration + grace).
MAX_CONNECTIONS = 100_000
MAX_INFLIGHT = 100_000
MAX_PROCS = 256
MAX_RATE_PER_S = 10_000_000.0
MAX_DURATION_S = 86_400.0  # a day
MAX_WARMUP_S = 3_600.0
MAX_GRACE_S = 600.0
MAX_OPEN_TIMEOUT_S = 600.0
MAX_LATE_MS = 60_000.0


def _check_count(flag: str, value: int | None, hi: int) -> None:
    if value is not None and (type(value) is not int or not 1 <= value <= hi):
        raise ValueError(f"{flag} must be an integer in 1..{hi:,}, got {value!r}")


def _check_span(flag: str, value: float | None, hi: float, *, zero_ok: bool, unit: str) -> None:
    """A finite number in ``(0, hi]`` (``[0, hi]`` with ``zero_ok``); NaN and infinity are refused."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    if not ok or value > hi:
        low = "[0" if zero_ok else "(0"
        raise ValueError(f"{flag} must be a number in {low}, {hi:g}] {unit}, got {value!r}")

ServerKind = Literal["protocol", "echo"]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Settings of one load test.

    Closed loop (``rate_per_s is None``): every connection keeps ``inflight``
    requests outstanding.  Open loop: ``rate_per_s`` requests/s in total on a
    fixed schedule over ``connections`` connections, at most ``inflight`` (or,
    when ``None``, the server's ``max_inflight``) outstanding per connection;
    when every connection is full the request waits and its wait counts in its
    latency.  ``echo``: ``True`` treats any frame carrying a request's id as its
    answer (raw echo servers), ``False`` requires the protocol, ``None`` detects.
    """

    url: str
    specs: tuple[WorkloadSpec, ...]
    connections: int = 1
    inflight: int | None = None
    rate_per_s: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 1.0
    procs: int = 1
    echo: bool | None = None
    seed: int = 0
    #: sent as ``Authorization: Bearer <key>`` in every handshake; never printed or reported
    api_key: str | None = field(default=None, repr=False)
    # Timeouts
    late_ms: float = 5.0
    grace_s: float = 5.0
    open_timeout_s: float = 10.0
    # Pass/fail
    slo_p99_ms: float | None = None
    max_error_rate: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"URL must start with ws:// or wss://, got {self.url!r}")
        if not self.specs:
            raise ValueError("no workload given")
        _check_count("--connections", self.connections, MAX_CONNECTIONS)
        _check_count("--inflight", self.inflight, MAX_INFLIGHT)
        _check_count("--procs", self.procs, MAX_PROCS)
        _check_span("--rate", self.rate_per_s, MAX_RATE_PER_S, zero_ok=False, unit="requests/s")
        _check_span("--duration", self.duration_s, MAX_DURATION_S, zero_ok=False, unit="s")
        _check_span("--warmup", self.warmup_s, MAX_WARMUP_S, zero_ok=True, unit="s")
        _check_span("--grace", self.grace_s, MAX_GRACE_S, zero_ok=True, unit="s")
        _check_span("--open-timeout", self.open_timeout_s, MAX_OPEN_TIMEOUT_S, zero_ok=False, unit="s")
        _check_span("--late-ms", self.late_ms, MAX_LATE_MS, zero_ok=True, unit="ms")
        if self.procs > self.connections:
            raise ValueError(
                f"--procs ({self.procs}) cannot exceed --connections ({self.connections}): each process needs a connection"
            )
        if self.slo_p99_ms is not None and not (math.isfinite(self.slo_p99_ms) and self.slo_p99_ms > 0):
            raise ValueError(f"--slo-p99-ms must be a number > 0, got {self.slo_p99_ms}")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"--max-error-rate must be within [0, 1], got {self.max_error_rate}")

    @property
    def mode(self) -> Literal["closed", "open"]:
        return "closed" if self.rate_per_s is None else "open"


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the probe connection learnt: protocol or echo, models, limits."""

    kind: ServerKind
    server: str = "unknown"
    version: str | None = None
    max_inflight: int | None = None
    models: dict[str, ModelShape] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """One client process's share: its connections and its slice of the open-loop schedule."""

    load: LoadConfig
    server: ServerInfo
    index: int
    connections: int
    #: per-connection cap on outstanding requests (resolved from config and server)
    inflight: int
