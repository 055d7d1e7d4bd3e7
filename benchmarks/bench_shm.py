"""Tensors in system shared memory (Triton's extension) beside the same tensors on the wire, driven by
Triton's own load generator.

``python benchmarks/bench_shm.py [--runs 3] [--width 262144] [--concurrency 4]`` (~2 min)

One wsserve process (uvloop, ``OPENBLAS_NUM_THREADS=1``) serves ``wide``, an ONNX model whose input is
``--width`` float32 values a row (1 MiB at the default) and whose output is their sum (one value), from
a model repository, on its HTTP port and a gRPC port.  ``perf_analyzer`` (``bash
scripts/install-perf-analyzer``, or ``$WSSERVE_PERF_ANALYZER``) drives it over each protocol with the
input sent in the request (HTTP: binary data; gRPC: raw contents) and with ``--shared-memory system``
(the client registers regions, the request names them), batch 1, at ``--concurrency``; the four cells
interleaved ``--runs`` times.  Reported: medians of perf_analyzer's throughput (inferences/s) and p99
latency, the server's CPU per inference, and shared memory ÷ the wire per protocol.  Writes
``benchmarks/results/shm.md``.  Shared memory needs the client on the server's machine and the
admin rule (loopback without keys, as here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_grpc as grpc_bench  # noqa: E402
from benchmarks.bench_grpc import GRPC_LINE, perf_analyzer  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from tests.support import ServerProcess, cpu_seconds, wait_until  # noqa: E402

CELLS = (("http", False), ("http", True), ("grpc", False), ("grpc", True))


def write_model(root: Path, width: int) -> None:
    """``root/wide``: config.pbtxt and an ONNX graph ``y = sum(x, axis=1)`` of ``[batch, width]`` float32."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "wide" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "wide" / "1" / "model.onnx"))
    (root / "wide" / "config.pbtxt").write_text(
        'name: "wide"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width} ] }} ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')


def run_one(binary: str, protocol: str, url: str, shm: bool, concurrency: int, window_ms: int) -> dict[str, float]:
    """One perf_analyzer run of ``wide`` (zero inputs: its random bytes are not all finite floats):
    throughput (infer/s) and p99 latency (us)."""
    extra = ("--input-data", "zero") + (("--shared-memory", "system", "--output-shared-memory-size", "64") if shm else ())
    return grpc_bench.run_one(binary, protocol, url, concurrency, 1, window_ms, model="wide", extra=extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--width", type=int, default=262144)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--window-ms", type=int, default=3000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shm.md"))
    args = ap.parse_args()
    binary = perf_analyzer()
    results: dict[tuple[str, bool], list[dict[str, float]]] = {cell: [] for cell in CELLS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repository"
        write_model(root, args.width)
        body = args.width * 4 + 4096  # one row in the request, with room for its header
        flags = ("--models", "none", "--model-repository", str(root), "--loop", "uvloop", "--grpc-port", "0",
                 "--max-message-bytes", str(body), "--max-inflight-bytes", str(body * args.concurrency * 2))
        with ServerProcess(*flags, env={"OPENBLAS_NUM_THREADS": "1"}) as server:
            found = wait_until(lambda: GRPC_LINE.search(server.stderr_text()), 60, what="the gRPC port in the log")
            urls = {"http": f"127.0.0.1:{server.port}", "grpc": f"127.0.0.1:{found.group(1)}"}
            for protocol, shm in CELLS:  # warm-up
                run_one(binary, protocol, urls[protocol], shm, args.concurrency, 1000)
            for r in range(args.runs):
                for protocol, shm in (CELLS if r % 2 == 0 else tuple(reversed(CELLS))):
                    cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
                    figures = run_one(binary, protocol, urls[protocol], shm, args.concurrency, args.window_ms)
                    busy = (cpu_seconds(server.proc.pid) - cpu0) / (time.perf_counter() - t0)
                    figures["cpu_us"] = busy / figures["throughput"] * 1e6
                    results[(protocol, shm)].append(figures)
                    print(protocol, "shm" if shm else "wire", figures, flush=True)
    write(args, results)


def write(args: Any, results: dict[tuple[str, bool], list[dict[str, float]]]) -> None:
    med = {c: {k: statistics.median(r[k] for r in rs) for k in ("throughput", "p99_us", "cpu_us")}
           for c, rs in results.items()}
    machine = describe()
    mib = args.width * 4 / 2**20
    lines = [
        "## System shared memory beside the wire (`perf_analyzer`, a 1-row input of "
        f"{mib:g} MiB)",
        "",
        f"Command: `python benchmarks/bench_shm.py --runs {args.runs} --width {args.width} --concurrency "
        f"{args.concurrency}` - one wsserve process (uvloop, one BLAS thread) serving `wide` (ONNX: the sum of "
        f"{args.width:,} float32 values a row) from a model repository over HTTP and `--grpc-port`; Triton's "
        f"`perf_analyzer` at concurrency {args.concurrency}, batch 1, {args.window_ms} ms windows, zero inputs, the input in "
        "the request (HTTP binary data, gRPC raw contents) or in system shared memory (`--shared-memory system`: "
        f"the client registers its regions, each request names them); 4 cells interleaved {args.runs} times, "
        f"medians. {machine.get('cpu', '')}, {machine.get('cores', '')} cores; perf_analyzer runs on the same "
        "machine (it uses one of the cores); load average at the end "
        f"{' / '.join(map(str, machine.get('load_average') or ['?']))}.",
        "",
        "| protocol | input | inferences/s | p99 latency ms | server CPU µs per inference | runs (inferences/s) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for protocol, shm in CELLS:
        m = med[(protocol, shm)]
        runs = ", ".join(f"{r['throughput']:,.0f}" for r in results[(protocol, shm)])
        lines.append(f"| {protocol} | {'shared memory' if shm else 'in the request'} | {m['throughput']:,.0f} | "
                     f"{m['p99_us'] / 1000:.2f} | {m['cpu_us']:,.0f} | {runs} |")
    lines.append("")
    for protocol in ("http", "grpc"):
        a, b = med[(protocol, True)], med[(protocol, False)]
        lines.append(f"- {protocol}: shared memory ÷ in the request: {a['throughput'] / b['throughput']:.2f}× the "
                     f"inferences/s, {b['cpu_us'] / a['cpu_us']:.2f}× less server CPU per inference.")
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
