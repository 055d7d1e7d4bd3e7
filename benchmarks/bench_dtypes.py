"""uint8 images in their own dtype against the forms a client had before: rows/s, server CPU, bytes.

    python benchmarks/bench_dtypes.py                # ~1.5 min; writes benchmarks/results/dtypes.md
    python benchmarks/bench_dtypes.py --reps 1 --duration 2 --no-write   # a quick look

The server (a child process: ``wsserve.serve`` with one :class:`wsserve.FunctionModel` taking a
``uint8`` image of 3 × 64 × 64 pixels and answering its 3 channel means, cheap enough to run on
the event loop, so the codec is what is measured) is driven by this process over 64 raw WebSocket
connections, each keeping ``--inflight`` predicts outstanding (the closed loop of
``bench_binary.py``: pre-built frames, replies counted).  One image per message, in three forms:

- ``json``: ``inputs`` as nested lists of integers (what a JSON client sends);
- ``binary int32``: a binary tensor frame of ``int32`` values (what the Python client sent for a
  ``uint8`` numpy array before ``binary_dtypes``, and still sends to a server without it; the
  server range-checks and casts them);
- ``binary uint8``: a binary tensor frame of ``uint8`` values (one byte a pixel).

Per form the runs are interleaved, ``--reps`` of each; the table shows medians.  Server CPU per
image is ``/proc`` user+system time of the server over the measured window divided by answers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from benchmarks.bench_binary import drive  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from tests.support import ServerProcess  # noqa: E402
from wsserve.tensorframe import encode  # noqa: E402

SHAPE = (3, 64, 64)
FORMS = ("json", "binary int32", "binary uint8")


def serve_child(port: int) -> None:
    """The server process: uint8 [3, 64, 64] -> the 3 channel means (float32)."""
    import wsserve

    def means(batch: np.ndarray) -> np.ndarray:  # [n, 3, 64, 64] uint8 -> [n, 3]
        return batch.reshape(len(batch), 3, -1).mean(axis=2, dtype=np.float32)

    model = wsserve.FunctionModel(means, input_shape=SHAPE, output_shape=(3,), dtype="uint8",
                                  output_dtype="float32", flops_per_row=2 * 3 * 64 * 64)
    sys.exit(wsserve.serve(models={"image": model}, host="127.0.0.1", port=port, log_level="warning",
                           max_message_bytes=1 << 20))


def message(form: str, rid: int) -> bytes:
    """One image request of ``form`` with id ``rid`` (0..9)."""
    image = np.random.default_rng(rid).integers(0, 256, (1, *SHAPE), dtype=np.uint8)
    fields = {"type": "predict", "id": rid, "model": "image", "binary_outputs": True}
    if form == "json":
        return orjson.dumps({"type": "predict", "id": rid, "model": "image", "inputs": image.tolist()})
    return encode(fields, image.astype(np.int32) if form == "binary int32" else image, key="inputs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--inflight", type=int, default=2, help="outstanding predicts per connection")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write results/dtypes.md")
    ap.add_argument("--serve-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 1 <= args.inflight <= 10:
        ap.error("--inflight must be 1 to 10 (single-digit ids)")
    if args.serve_child is not None:
        serve_child(args.serve_child)
        return 0

    runs: dict[str, list[tuple[float, float]]] = {f: [] for f in FORMS}
    sizes = {f: len(message(f, 0)) for f in FORMS}
    server = ServerProcess.from_command([sys.executable, str(Path(__file__).resolve()), "--serve-child", "0"])
    try:
        for rep in range(args.reps):
            for form in FORMS:
                msgs, cpu = asyncio.run(drive(server.port, [message(form, i) for i in range(args.inflight)],
                                              connections=args.connections, inflight=args.inflight,
                                              warmup=args.warmup, duration=args.duration, pid=server.proc.pid))
                runs[form].append((msgs, cpu))
                print(f"rep {rep + 1}: {form:13s} {msgs:8.0f} images/s, server CPU {cpu * 1e6:7.1f} us/image",
                      flush=True)
    finally:
        server.stop()

    med = {f: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for f, v in runs.items()}
    base_rate, base_cpu = med["binary int32"]
    lines = [
        "## uint8 images in their own dtype",
        "",
        f"`python benchmarks/bench_dtypes.py --reps {args.reps} --duration {args.duration:g} "
        f"--connections {args.connections} --inflight {args.inflight}` — a `uint8` image of "
        f"{' × '.join(map(str, SHAPE))} pixels per message into `wsserve.FunctionModel` (its 3 channel "
        "means, run on the event loop, so the codec is what is measured), "
        f"{args.connections} connections × {args.inflight} predicts in flight from one raw-socket driver "
        "process (pre-built frames; replies counted). `binary int32` is what the Python client sent for a "
        "`uint8` array before `hello` listed `binary_dtypes` (and still sends to an older server). "
        f"Medians of {args.reps} interleaved runs of {args.duration:g} s each ({args.warmup:g} s warm-up). "
        f"Load average at the end: {describe().get('load_average', 'n/a')}.",
        "",
        "| form | message bytes | images/s | ÷ binary int32 | server CPU/image | CPU ÷ binary int32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for form in FORMS:
        rate, cpu = med[form]
        lines.append(f"| {form} | {sizes[form]:,} | {rate:,.0f} | {rate / base_rate:.2f}× | {cpu * 1e6:.1f} µs | "
                     f"{cpu / base_cpu:.2f}× |")
    lines += ["", "Every run (images/s):", "",
              "| form | " + " | ".join(f"run {i + 1}" for i in range(args.reps)) + " |",
              "|---|" + "---:|" * args.reps]
    for form in FORMS:
        lines.append(f"| {form} | " + " | ".join(f"{r:,.0f}" for r, _ in runs[form]) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "dtypes.md"
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
