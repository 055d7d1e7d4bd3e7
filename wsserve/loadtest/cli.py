"""Command line of the load test: ``wsserve loadtest URL ...`` / ``python -m wsserve.loadtest URL ...``.

A thin adapter: :func:`add_arguments` declares the flags on any
``argparse`` parser (the main CLI adds a ``loadtest`` sub-command with it),
:func:`config_from_args` turns them into a :class:`~.config.LoadConfig`, and
:func:`run` runs the test, prints the report and returns the exit code
(0 ok, 1 could not run, 2 bad arguments, 3 SLO breached).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from .config import LoadConfig
from .probe import LoadTestError
from .report import EXIT_ERROR, format_text
from .runner import run_load
from .workload import KINDS, WorkloadSpec, parse_mix

__all__ = ["EXIT_USAGE", "add_arguments", "config_from_args", "main", "run"]

EXIT_USAGE = 2

_EPILOG = """\
examples:
  closed loop, 64 connections, 1 request in flight each, single-row predict on linear:
    %(prog)s ws://127.0.0.1:8765 -c 64 -d 10
  open loop at 5000 req/s on mlp, 16-row requests, fail if p99 > 20 ms or > 0.1%% errors:
    %(prog)s ws://127.0.0.1:8765 --rate 5000 -c 32 --model mlp --rows 16 --slo-p99-ms 20 --max-error-rate 0.001
  a mix: 8 predicts on linear for each generate of 64 tokens on charlm, two client processes:
    %(prog)s ws://127.0.0.1:8765 -c 32 --mix predict:linear=8,generate:charlm:64=1 --procs 2
  a raw echo server (a reply carrying the request's id is the answer):
    %(prog)s ws://127.0.0.1:9000 -c 64 --echo

exit status: 0 ok, 1 could not run, 2 bad arguments, 3 SLO breached.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the load test's flags on ``parser`` (and its epilog, when it has none)."""
    if parser.epilog is None:
        parser.epilog = _EPILOG
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("url", help="server URL, e.g. ws://127.0.0.1:8765")
    load = parser.add_argument_group("load shape")
    load.add_argument("-c", "--connections", type=int, default=1, help="WebSocket connections in total (default 1)")
    load.add_argument(
        "-k",
        "--inflight",
        type=int,
        default=None,
        help="closed loop: requests kept outstanding per connection (default 1); "
        "open loop: the most outstanding per connection (default: the server's max_inflight)",
    )
    load.add_argument(
        "-r",
        "--rate",
        type=float,
        default=None,
        help="open loop: requests/s in total on a fixed schedule (latency from each intended send time); "
        "without it the test is closed loop",
    )
    load.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds (default 10)")
    load.add_argument("-w", "--warmup", type=float, default=1.0, help="unmeasured seconds of load first (default 1)")
    load.add_argument(
        "-p", "--procs", type=int, default=1, help="client processes; connections are split between them (default 1)"
    )
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--workload", choices=KINDS, default="predict", help="predict (default), stream (streamed predict) or generate"
    )
    work.add_argument("--model", default=None, help="model name (default: linear; charlm for generate)")
    work.add_argument("--rows", type=int, default=1, help="rows per predict request (default 1)")
    work.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk for stream (default: the server's)")
    work.add_argument("--max-tokens", type=int, default=32, help="tokens per generate request (default 32)")
    work.add_argument(
        "--binary", action="store_true",
        help="send predict/stream inputs as binary tensor frames (float64 after a JSON header) instead of JSON",
    )
    work.add_argument(
        "--explain", action="store_true",
        help='ask predict/stream requests for attributions ("explain": true; the model must be explainable)',
    )
    work.add_argument(
        "--mix",
        default=None,
        metavar="SPEC",
        help="weighted mix instead of --workload/--model: kind:model[:size][=weight],... "
        "e.g. predict:linear=8,generate:charlm=1 (size = rows, or max_tokens for generate)",
    )
    mode = work.add_mutually_exclusive_group()
    mode.add_argument(
        "--echo",
        dest="echo",
        action="store_const",
        const=True,
        default=None,
        help="the server is a raw echo: any frame carrying a request's id answers it (default: detect)",
    )
    mode.add_argument(
        "--protocol",
        dest="echo",
        action="store_const",
        const=False,
        help="require a wsserve-protocol server (refuse an echo)",
    )
    work.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    work.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="send 'Authorization: Bearer KEY' in each handshake (default: $WSSERVE_API_KEY if set)",
    )
    out = parser.add_argument_group("output and pass/fail")
    out.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the full report as JSON to FILE")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress line each second")
    out.add_argument("--slo-p99-ms", type=float, default=None, help="exit 3 when p99 latency exceeds this (ms)")
    out.add_argument(
        "--max-error-rate", type=float, default=None, help="exit 3 when errors/requests exceeds this (0..1)"
    )
    out.add_argument(
        "--late-ms",
        type=float,
        default=5.0,
        help="open loop: a send this far behind schedule counts as late (default 5)",
    )
    out.add_argument(
        "--grace", type=float, default=5.0, help="seconds to wait for outstanding replies after the run (default 5)"
    )
    out.add_argument(
        "--open-timeout", type=float, default=10.0, help="seconds allowed to open a connection (default 10)"
    )


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """Build the config; raises ``ValueError`` with a message naming the bad flag."""
    if args.mix:
        specs = parse_mix(args.mix, rows=args.rows, chunk_rows=args.chunk_rows, max_tokens=args.max_tokens,
                          binary=args.binary, explain=args.explain)
    else:
        model = args.model or ("charlm" if args.workload == "generate" else "linear")
        specs = [
            WorkloadSpec(
                kind=args.workload, model=model, rows=args.rows, chunk_rows=args.chunk_rows, max_tokens=args.max_tokens,
                binary=args.binary and args.workload != "generate",
                explain=args.explain and args.workload != "generate",
            )
        ]
    return LoadConfig(
        url=args.url,
        specs=tuple(specs),
        connections=args.connections,
        inflight=args.inflight,
        rate_per_s=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        procs=args.procs,
        echo=args.echo,
        seed=args.seed,
        api_key=args.api_key or os.environ.get("WSSERVE_API_KEY") or None,
        late_ms=args.late_ms,
        grace_s=args.grace,
        open_timeout_s=args.open_timeout,
        slo_p99_ms=args.slo_p99_ms,
        max_error_rate=args.max_error_rate,
        progress=not args.quiet,
    )


def _check_json_path(path: Path | None) -> None:
    """Refuse a ``--json`` FILE that could not be written, before the run rather than after it."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--json {path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--json {path}: no such directory: {parent}")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise ValueError(f"--json {path}: not writable")


def run(args: argparse.Namespace) -> int:
    """Run the load test described by ``args``; print the report; return the exit code
    (``--json`` FILE is checked before the run; if writing it fails anyway, the text report
    is already printed and the exit code is 1)."""
    try:
        cfg = config_from_args(args)
        _check_json_path(args.json)
    except ValueError as exc:
        print(f"loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = run_load(cfg, err=sys.stderr)
    except LoadTestError as exc:
        print(f"loadtest: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("loadtest: interrupted", file=sys.stderr)
        return 130
    print(format_text(report), flush=True)
    if args.json is not None:
        try:
            args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as exc:
            print(f"loadtest: error: --json {args.json}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
    return int(report["exit_code"])


def main(argv: list[str] | None = None) -> int:
    """``python -m wsserve.loadtest``."""
    parser = argparse.ArgumentParser(
        prog="wsserve loadtest", description="Load-test a wsserve (or any protocol-speaking, or echo) WebSocket server."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
