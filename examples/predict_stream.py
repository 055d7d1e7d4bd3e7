"""Streamed predict: rows come back in chunks as they are computed.

``python examples/predict_stream.py [--url ws://127.0.0.1:8765] [--rows 10000] [--chunk-rows 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))  # run from a checkout

from wsserve_client import DEFAULT_URL, Client  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    inputs = [[i / args.rows] for i in range(args.rows)]
    async with Client(args.url) as client:
        start = time.perf_counter()
        async with client.predict_stream("linear", inputs, chunk_rows=args.chunk_rows) as stream:
            async for chunk in stream:
                first, last = chunk.outputs[0][0], chunk.outputs[-1][0]
                print(
                    f"{(time.perf_counter() - start) * 1000:8.2f} ms  chunk {chunk.seq:3}: rows "
                    f"{chunk.offset}..{chunk.offset + len(chunk.outputs) - 1}  y {first:.3f} .. {last:.3f}"
                )
        s = stream.summary
        print(f"done: {s.reason}, {s.rows} rows, timing {dict(s.timing)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--chunk-rows", type=int, default=1_000)
    asyncio.run(main(ap.parse_args()))
