"""Binary tensor frames against JSON predicts: rows/s, server CPU per row, in-process decode cost.

    python benchmarks/bench_binary.py                 # ~2 min; writes benchmarks/results/binary.md
    python benchmarks/bench_binary.py --reps 1 --duration 2 --no-write   # a quick look

The server (a child process: ``wsserve.serve`` with one :class:`wsserve.FunctionModel`, a
1024 -> 10 float32 linear layer cheap enough to run on the event loop, so the codec is what
is measured) is driven by this process over 64 raw WebSocket connections, each keeping
``--inflight`` predicts outstanding (closed loop).  The driver sends pre-built, pre-masked
frames and only counts the replies (it checks each is a ``result``), so its own cost is the
same for both encodings.  Per configuration (JSON or binary, 1 or 16 rows per message) the
runs are interleaved, ``--reps`` of each; the table shows medians.  Server CPU per row is
``/proc`` user+system time of the server over the measured window divided by rows answered.

Decode cost: ``protocol.decode`` + the pool's input preparation for the JSON message, against
``protocol.decode_binary`` + ``ModelEntry.prepare_binary`` for the binary one, in this process
(best of 5 timeit repeats, per row).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from benchmarks.machine import describe  # noqa: E402
from tests.support import ServerProcess, cpu_seconds  # noqa: E402
from wsserve.loadtest.frames import (  # noqa: E402
    FrameReader,
    Masker,
    check_response,
    handshake_request,
)
from wsserve.tensorframe import encode  # noqa: E402

WIDTH, CLASSES = 1024, 10
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {1: 2.5, 16: 5.0}


def serve_child(port: int) -> None:
    """The server process: one cheap 1024 -> 10 linear layer (float32)."""
    import wsserve

    rng = np.random.default_rng(0)
    w = rng.standard_normal((WIDTH, CLASSES)).astype(np.float32) / 32
    b = rng.standard_normal(CLASSES).astype(np.float32)

    def wide(batch: np.ndarray) -> np.ndarray:  # [n, 1024] -> [n, 10]
        return batch @ w + b

    model = wsserve.FunctionModel(wide, input_shape=(WIDTH,), output_shape=(CLASSES,), dtype="float32",
                                  flops_per_row=2 * WIDTH * CLASSES)
    sys.exit(wsserve.serve(models={"wide": model}, host="127.0.0.1", port=port, log_level="warning"))


def messages(rows: int, kind: str, rid: int = 0) -> bytes:
    x = np.random.default_rng(rows).random((rows, WIDTH), dtype=np.float32)
    if kind == "json":
        return orjson.dumps({"type": "predict", "id": rid, "model": "wide", "inputs": x.tolist()})
    return encode({"type": "predict", "id": rid, "model": "wide", "binary_outputs": True}, x, key="inputs")


class Conn(asyncio.Protocol):
    """One raw client connection: a handshake, then a closed loop of the same framed message."""

    def __init__(self, frames: list[bytes], inflight: int, counts: dict[str, int], ready: asyncio.Future[None],
                 host: str, port: int) -> None:
        self.frames, self.inflight, self.counts, self.ready = frames, inflight, counts, ready
        self.request, self.key = handshake_request(host=host, port=port, path="/")
        self.buf = bytearray()
        self.open = False
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.buf += data
            parsed = check_response(self.buf, self.key)
            if parsed is None:
                return
            head, _ = parsed
            rest = bytes(self.buf[head:])
            self.open = True
            self.ready.set_result(None)
            data = rest
            if not data:
                return
        for op, payload in self.reader.feed(data):
            if op == 1 and payload.startswith(b'{"type":"hello"'):
                continue
            ok = payload.startswith(b'{"type":"result"') if op == 1 else payload[4:20] == b'{"type":"result"'
            self.counts["ok" if ok else "bad"] += 1
            if not ok and self.counts["bad"] == 1:
                print("unexpected reply:", payload[:200], file=sys.stderr)
            if self.running:  # send again the request (id 0..9) this reply answered
                at = payload.find(b'"id":', 0, 40) + 5
                self.transport.write(self.frames[payload[at] - 48])  # type: ignore[union-attr]

    def start(self) -> None:
        for frame in self.frames[: self.inflight]:
            self.transport.write(frame)  # type: ignore[union-attr]


async def drive(port: int, payloads: list[bytes], *, connections: int, inflight: int, warmup: float, duration: float,
                pid: int) -> tuple[float, float]:
    """``(messages/s, server CPU seconds per message)`` over the measured window."""
    loop = asyncio.get_running_loop()
    masker = Masker(0)
    frames = [masker.frame(1 if p.startswith(b"{") else 2, p) for p in payloads]
    counts = {"ok": 0, "bad": 0}
    conns = []
    for _ in range(connections):
        ready: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(lambda r=ready: Conn(frames, inflight, counts, r, "127.0.0.1", port),
                                                "127.0.0.1", port)
        await ready
        conns.append(proto)
    for c in conns:
        c.start()
    await asyncio.sleep(warmup)
    n0, cpu0, t0 = counts["ok"], cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(duration)
    n1, cpu1, t1 = counts["ok"], cpu_seconds(pid), time.perf_counter()
    for c in conns:
        c.running = False
    await asyncio.sleep(0.3)  # let outstanding replies arrive before closing
    for c in conns:
        c.transport.close()  # type: ignore[union-attr]
    if counts["bad"]:
        raise RuntimeError(f"{counts['bad']} replies were not results")
    done = n1 - n0
    return done / (t1 - t0), (cpu1 - cpu0) / max(done, 1)


def decode_costs() -> dict[tuple[str, int], float]:
    """Seconds per row to decode and prepare one message in-process (best of 5)."""
    from wsserve.pool import _float_rows
    from wsserve.protocol import decode, decode_binary
    from wsserve.repository import TensorSpec
    from wsserve.tensorframe import conform, view_tensors

    prepare = _float_rows(WIDTH, True)  # the pool's path for a single float32 input
    specs = (TensorSpec("input", (WIDTH,), "float32"),)
    out: dict[tuple[str, int], float] = {}
    for rows in (1, 16):
        js, bn = messages(rows, "json"), messages(rows, "binary")

        def json_path() -> None:
            req = decode(js)
            prepare(req.inputs, 65536, 1 << 19)

        def binary_path() -> None:
            req = decode_binary(bn, max_rows=65536)
            t = req.tensors
            conform(view_tensors(t.payload, t.descs), t.descs, specs)

        for kind, fn in (("json", json_path), ("binary", binary_path)):
            number = 2000 // rows
            best = min(timeit.repeat(fn, number=number, repeat=5))
            out[(kind, rows)] = best / number / rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--inflight", type=int, default=2, help="outstanding predicts per connection")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write results/binary.md")
    ap.add_argument("--serve-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 1 <= args.inflight <= 10:
        ap.error("--inflight must be 1 to 10 (single-digit ids)")
    if args.serve_child is not None:
        serve_child(args.serve_child)
        return 0

    costs = decode_costs()
    configs = [(kind, rows) for rows in (1, 16) for kind in ("json", "binary")]
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in configs}
    server = ServerProcess.from_command([sys.executable, str(Path(__file__).resolve()), "--serve-child", "0"])
    try:
        for rep in range(args.reps):
            for kind, rows in configs:
                msgs, cpu = asyncio.run(drive(server.port, [messages(rows, kind, i) for i in range(args.inflight)], connections=args.connections,
                                              inflight=args.inflight, warmup=args.warmup,
                                              duration=args.duration, pid=server.proc.pid))
                runs[(kind, rows)].append((msgs * rows, cpu / rows))
                print(f"rep {rep + 1}: {kind:6s} {rows:2d} rows/msg: {msgs * rows:9.0f} rows/s, "
                      f"server CPU {cpu / rows * 1e6:7.1f} us/row", flush=True)
    finally:
        server.stop()

    med = {c: (statistics.median(r for r, _ in v), statistics.median(c_ for _, c_ in v)) for c, v in runs.items()}
    lines = [
        "## Binary tensor frames",
        "",
        f"`python benchmarks/bench_binary.py --reps {args.reps} --duration {args.duration:g} "
        f"--connections {args.connections} --inflight {args.inflight}` — a 1024 → 10 float32 linear layer "
        "(`wsserve.FunctionModel`, run on the event loop, so the codec is what is measured), "
        f"{args.connections} connections × {args.inflight} predicts in flight from one raw-socket driver "
        "process (pre-built frames; replies counted, not parsed). JSON: `inputs` as rows of numbers, "
        "answer as JSON. Binary: a binary tensor frame (float32) with `binary_outputs`, answer as a "
        f"binary frame. Medians of {args.reps} interleaved runs of {args.duration:g} s each "
        f"({args.warmup:g} s warm-up); a target counts as met when both ratios reach it. "
        f"Load average at the end: {describe().get('load_average', 'n/a')} (2 cores shared with other work: "
        "run to run spread is large; the CPU per row is the steadier figure).",
        "",
        "| rows/message | JSON rows/s | binary rows/s | ratio of medians | median of per-run ratios | target "
        "| server CPU/row JSON | binary | CPU ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows in (1, 16):
        (jr, jc), (br, bc) = med[("json", rows)], med[("binary", rows)]
        ratio = br / jr
        paired = statistics.median(b[0] / j[0] for j, b in zip(runs[("json", rows)], runs[("binary", rows)]))
        ok = "met" if min(ratio, paired) >= TARGETS[rows] else "**not met**"
        lines.append(f"| {rows} | {jr:,.0f} | {br:,.0f} | {ratio:.2f}× | {paired:.2f}× | ≥ {TARGETS[rows]:g}× ({ok}) | "
                     f"{jc * 1e6:.1f} µs | {bc * 1e6:.1f} µs | {jc / bc:.2f}× |")
    lines += [
        "",
        "Every run (rows/s):",
        "",
        "| configuration | " + " | ".join(f"run {i + 1}" for i in range(args.reps)) + " |",
        "|---|" + "---:|" * args.reps,
    ]
    for kind, rows in configs:
        lines.append(f"| {kind}, {rows} rows/msg | " + " | ".join(f"{r:,.0f}" for r, _ in runs[(kind, rows)]) + " |")
    lines += [
        "",
        "In-process decode + validation cost per row (`protocol.decode` + the pool's float32 input "
        "preparation, against `protocol.decode_binary` + `tensorframe.view_tensors` + `conform`; best of 5):",
        "",
        "| rows/message | JSON µs/row | binary µs/row | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for rows in (1, 16):
        j, b = costs[("json", rows)], costs[("binary", rows)]
        lines.append(f"| {rows} | {j * 1e6:.1f} | {b * 1e6:.2f} | {j / b:.0f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "binary.md").write_text(text)
        print(f"wrote {RESULTS / 'binary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
