"""What ``--otlp-traces-endpoint`` costs: ``POST /predict`` (one ``mlp`` row) with tracing off, on
(spans exported to a local OTLP/HTTP collector) and on with the collector down, side by side.

``python -m benchmarks.bench_tracing [--reps 5] [--duration 4]``

Three wsserve processes (this checkout, uvloop, one BLAS thread) serve the same trained ``mlp``;
each is loaded in turn by ``wrk`` (one thread, 64 keep-alive connections, the body of
``benchmarks/wrk/predict_mlp.lua``; no ``traceparent``: each request a trace of its own), the cells interleaved ``--reps`` times after a warm-up.
The collector is a small ``http.server`` in this process that decodes each ``POST /v1/traces``
(opentelemetry-proto) and counts its spans; the SDK's export settings are its defaults
(``BatchSpanProcessor``: 5 s schedule, batches of 512, a queue of 2048, past which spans are
dropped).  Reports the median requests/s and the server's CPU per request (user + system: all
its threads, the exporter's too), the spans the collector received, and writes
``benchmarks/results/tracing.md``.  Needs the ``otel`` extra and Debian's ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from benchmarks.bench_http import cost_table, http_url, median_of, run_wrk, wait_ready
from benchmarks.machine import describe
from benchmarks.servers import BENCH_THREADS, START_TIMEOUT_S
from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
#: The "1% sampled" cell: the SDK's standard sampler variables (a parent's decision is kept).
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}


class SpanSink:
    """An OTLP/HTTP trace receiver on 127.0.0.1 that counts the spans it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        lock = threading.Lock()
        sink = self
        reply = ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                with lock:
                    sink.spans += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _dead_url() -> str:
    """An OTLP URL on a local port nothing listens on (connections refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1/traces"


def _set_trace(server: ServerProcess, settings: dict[str, str]) -> None:
    """``POST /v2/trace/setting`` (from loopback, where no keys make it an admin's)."""
    request = urllib.request.Request(http_url(server) + "/v2/trace/setting", json.dumps(settings).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200, answer.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tracing.md")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sink = SpanSink()
    on = ("--otlp-traces-endpoint", sink.url)
    cells: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
        "off": ((), {}),
        "on": (on, {}),
        "on, 1% sampled": (on, SAMPLED),
        "on, trace_rate 100": (on, {}),
        "on, collector down": (("--otlp-traces-endpoint", _dead_url()), {}),
    }
    servers = {name: ServerProcess("--models", "mlp", "--loop", "uvloop", *flags, env={**BENCH_THREADS, **env},
                                   start_timeout_s=START_TIMEOUT_S) for name, (flags, env) in cells.items()}
    # Triton's trace extension: one request in 100 gets a span, the others are left out before any span work
    _set_trace(servers["on, trace_rate 100"], {"trace_rate": "100"})
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cells}
    answered = 0
    try:
        for server in servers.values():
            wait_ready(http_url(server))
            run_wrk(server, "predict", args.connections, 1.0)  # warm-up
        received0 = sink.spans
        for rep in range(args.reps):
            for name, server in servers.items():
                runs[name].append(run_wrk(server, "predict", args.connections, args.duration))
                if name == "on" and "failed" not in runs[name][-1]:  # (the 1% cell's spans count too)
                    answered += round(runs[name][-1]["rps"] * args.duration)
                print(f"rep {rep + 1} {name}: {runs[name][-1]}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        sink.close()
    received = sink.spans - received0
    med = {name: median_of(r) for name, r in runs.items()}
    machine = describe()
    lines = [
        "## Tracing: what `--otlp-traces-endpoint` costs",
        "",
        f"Measured {started} by `python -m benchmarks.bench_tracing --reps {args.reps} --duration "
        f"{args.duration:g}`; {machine.get('cpu', '?')}, load average at the start "
        f"{' / '.join(map(str, machine.get('load_average') or ['?']))}.",
        "",
        f"`POST /predict`, one `mlp` row, `wrk -t1 -c{args.connections}` for {args.duration:g} s per run, "
        f"{args.reps} runs per cell interleaved, median (range in small print). One span per request, the "
        "SDK's default export settings (the 1% cell: `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, "
        "`OTEL_TRACES_SAMPLER_ARG=0.01`, the SDK's sampler, which still begins a span per request; the "
        "trace_rate cell: `POST /v2/trace/setting {\"trace_rate\": \"100\"}`, Triton's trace extension, "
        "deciding before any span work); the collector (in the harness, on the same machine) received "
        f"{received:,} spans (the 1% cell's few included) for about {answered:,} requests answered by the "
        "fully traced server in its timed runs "
        "(spans past the SDK's queue of 2048 are dropped, by design, when export falls behind).",
        "",
        *cost_table("tracing", med),
    ]
    lines += ["", "Reproduce: `pip install 'wsserve[otel]'`, then `python -m benchmarks.bench_tracing` "
              "(needs Debian's `wrk`).", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
