"""The load test's settings: one frozen object built from the command line.

:class:`LoadConfig` is what the CLI produces and the runner consumes;
:class:`ServerInfo` is what the probe learnt about the server;
:class:`WorkerConfig` is one client process's share of the work.  All three
are plain values, picklable so they cross into ``spawn``-ed processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .workload import ModelShape, WorkloadSpec

__all__ = ["LoadConfig", "ServerInfo", "WorkerConfig"]

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
        if self.connections < 1:
            raise ValueError(f"--connections must be >= 1, got {self.connections}")
        if self.inflight is not None and self.inflight < 1:
            raise ValueError(f"--inflight must be >= 1, got {self.inflight}")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"--rate must be > 0 requests/s, got {self.rate_per_s}")
        if not self.duration_s > 0:
            raise ValueError(f"--duration must be > 0 s, got {self.duration_s}")
        if self.warmup_s < 0:
            raise ValueError(f"--warmup must be >= 0 s, got {self.warmup_s}")
        if self.procs < 1:
            raise ValueError(f"--procs must be >= 1, got {self.procs}")
        if self.procs > self.connections:
            raise ValueError(
                f"--procs ({self.procs}) cannot exceed --connections ({self.connections}): each process needs a connection"
            )
        if self.late_ms < 0 or self.grace_s < 0:
            raise ValueError("--late-ms and --grace must be >= 0")
        if self.slo_p99_ms is not None and not self.slo_p99_ms > 0:
            raise ValueError(f"--slo-p99-ms must be > 0, got {self.slo_p99_ms}")
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
