"""Decoupled models: what one streamed response costs the server, over the WebSocket and over gRPC.

    python benchmarks/bench_decoupled.py               # ~1 min; writes benchmarks/results/decoupled.md
    python benchmarks/bench_decoupled.py --reps 1 --no-write   # a quick look

The server (a child process: ``wsserve serve`` on a repository holding one decoupled Triton Python
model, ``burst``, which answers a request ``N`` with ``N`` responses of one INT32 each, sent from
``execute`` through its response sender, then FINAL; 2 instances) is driven by this process with
``--requests`` requests of ``--responses`` responses each, ``--concurrency`` at a time:

- ``websocket``: the wsserve Python client's ``predict_responses`` (one ``response`` frame each,
  then ``done``), ``--concurrency`` streams on one connection;
- ``grpc``: tritonclient's ``ModelStreamInfer`` stream (``async_stream_infer``, one stream message
  per response, Triton's empty final response asked for), ``--concurrency`` requests in flight.

Each form's runs are interleaved, ``--reps`` of each; the table gives medians.  Server CPU per
response is ``/proc`` user+system time of the server over the run divided by the responses.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.machine import describe  # noqa: E402
from tests.support import ServerProcess, cpu_seconds  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402

BURST_PBTXT = """
backend: "python"
max_batch_size: 0
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
model_transaction_policy { decoupled: true }
"""
BURST_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
FORMS = ("websocket", "grpc")


def write_repository(root: Path) -> None:
    (root / "burst" / "1").mkdir(parents=True)
    (root / "burst" / "config.pbtxt").write_text(BURST_PBTXT)
    (root / "burst" / "1" / "model.py").write_text(textwrap.dedent(BURST_PY))


async def run_websocket(url: str, requests: int, responses: int, concurrency: int) -> int:
    """Responses received for ``requests`` requests, ``concurrency`` at a time, on one connection."""
    from wsserve_client import Client

    got = 0
    left = requests
    async with Client(url) as client:
        async def worker() -> None:
            nonlocal got, left
            while left > 0:
                left -= 1
                async for _ in client.predict_responses("burst", [[responses]]):
                    got += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return got


def run_grpc(address: str, requests: int, responses: int, concurrency: int) -> int:
    """Responses received for ``requests`` requests over one ``ModelStreamInfer`` stream, at most
    ``concurrency`` in flight (a request is sent when one ends with its empty final response)."""
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(address)
    got = 0
    ended = threading.Semaphore(0)
    failure: list[str] = []

    def callback(result, error) -> None:  # type: ignore[no-untyped-def]
        nonlocal got
        if error is not None:
            failure.append(str(error))
            ended.release()
            return
        response = result.get_response()
        if response.parameters["triton_final_response"].bool_param:
            ended.release()
        if response.outputs:
            got += 1

    client.start_stream(callback=callback)
    try:
        n = tgrpc.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([responses], np.int32))
        sent = 0
        for _ in range(min(concurrency, requests)):
            client.async_stream_infer("burst", [n], request_id=str(sent), enable_empty_final_response=True)
            sent += 1
        for _ in range(requests):
            if not ended.acquire(timeout=120):
                raise RuntimeError("a request did not end within 120 s")
            if failure:
                raise RuntimeError(f"gRPC error: {failure[0]}")
            if sent < requests:
                client.async_stream_infer("burst", [n], request_id=str(sent), enable_empty_final_response=True)
                sent += 1
    finally:
        client.stop_stream()
        client.close()
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--responses", type=int, default=100, help="responses per request")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write results/decoupled.md")
    args = ap.parse_args(argv)

    runs: dict[str, list[tuple[float, float]]] = {f: [] for f in FORMS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model_repository"
        write_repository(root)
        server = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
        try:
            address = grpc_address(server)
            pid = server.proc.pid
            run_grpc(address, 4, args.responses, 2)  # warm-up, both paths
            asyncio.run(run_websocket(server.url, 4, args.responses, 2))
            for rep in range(args.reps):
                for form in FORMS:
                    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                    if form == "websocket":
                        got = asyncio.run(run_websocket(server.url, args.requests, args.responses, args.concurrency))
                    else:
                        got = run_grpc(address, args.requests, args.responses, args.concurrency)
                    cpu1, t1 = cpu_seconds(pid), time.perf_counter()
                    if got != args.requests * args.responses:
                        raise RuntimeError(f"{form}: {got} responses, expected {args.requests * args.responses}")
                    runs[form].append((got / (t1 - t0), (cpu1 - cpu0) / got))
                    print(f"rep {rep + 1}: {form:9s} {got / (t1 - t0):9.0f} responses/s, "
                          f"server CPU {(cpu1 - cpu0) / got * 1e6:6.1f} us/response", flush=True)
        finally:
            server.stop()

    med = {f: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for f, v in runs.items()}
    lines = [
        "## Decoupled models: one streamed response",
        "",
        f"`python benchmarks/bench_decoupled.py --requests {args.requests} --responses {args.responses} "
        f"--concurrency {args.concurrency} --reps {args.reps}` — a decoupled Triton Python model answering "
        f"each request with {args.responses} responses of one INT32 (sent from `execute` through its response "
        f"sender, then FINAL; 2 instances), {args.requests} requests per run, {args.concurrency} in flight. "
        "`websocket`: the wsserve Python client's `predict_responses` on one connection (a `response` frame "
        "each, then `done`); `grpc`: tritonclient's `ModelStreamInfer` stream (one message each, Triton's "
        "empty final response). Server CPU per response: `/proc` user+system of the server over the run ÷ "
        f"responses. Medians of {args.reps} interleaved runs. Load average at the end: "
        f"{describe().get('load_average', 'n/a')}.",
        "",
        "| transport | responses/s | server CPU/response |",
        "|---|---:|---:|",
    ]
    for form in FORMS:
        rate, cpu = med[form]
        lines.append(f"| {form} | {rate:,.0f} | {cpu * 1e6:.1f} µs |")
    lines += ["", "Every run (responses/s, server µs/response):", "",
              "| transport | " + " | ".join(f"run {i + 1}" for i in range(args.reps)) + " |",
              "|---|" + "---:|" * args.reps]
    for form in FORMS:
        lines.append(f"| {form} | " + " | ".join(f"{r:,.0f} / {c * 1e6:.1f}" for r, c in runs[form]) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "decoupled.md"
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
