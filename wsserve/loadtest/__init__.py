"""Load-test tool for wsserve and any server speaking its protocol (or a raw echo).

Closed loop (``--connections N --inflight K``) or open loop (``--rate R`` on a
fixed schedule, latency from each request's intended send time), workloads
``predict``/``stream``/``generate`` or a weighted mix with inputs fitted to each
model, several client processes with merged HDR histograms, a text and JSON
report, and SLO exit codes.

Sans-I/O parts: :mod:`.schedule`, :mod:`.workload`, :mod:`.histogram`,
:mod:`.stats`, :mod:`.report`.  I/O: :mod:`.probe`, :mod:`.driver` (one client
process's asyncio loop), :mod:`.runner` (the processes).  :mod:`.cli` is the
command line; the main CLI wires it with::

    from wsserve import loadtest
    loadtest.add_arguments(sub.add_parser("loadtest", help="..."))  # then dispatch to loadtest.run(args)
"""

from .cli import EXIT_USAGE, add_arguments, config_from_args, main, run
from .config import LoadConfig, ServerInfo, WorkerConfig
from .histogram import LatencyHistogram
from .probe import LoadTestError, probe
from .report import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SLO,
    REPORT_SCHEMA,
    build_report,
    evaluate_slo,
    format_text,
)
from .runner import run_load
from .schedule import OpenLoopSchedule, Window, split_evenly
from .stats import RunStats, WorkloadStats
from .workload import (
    ModelShape,
    RequestFactory,
    WeightedCycle,
    WorkloadSpec,
    check_against_models,
    parse_mix,
)

__all__ = [
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
