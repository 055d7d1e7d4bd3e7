"""Hundreds of concurrent calls on ONE socket: predicts and generations multiplexed by id.

``python examples/concurrency.py [--url ws://127.0.0.1:8765] [--predicts 2000] [--generations 16]``

The client keeps at most the server's ``max_inflight`` requests outstanding (the rest wait
their turn client-side), and the server batches the concurrent predicts together.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import statistics
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))  # run from a checkout

from wsserve_client import DEFAULT_URL, Client  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    async with Client(args.url) as client:
        assert client.hello is not None
        print(f"connected: {client.hello.server} {client.hello.version}, limits {client.hello.limits}")
        latencies: list[float] = []
        batch_sizes: list[int] = []

        async def one_predict(i: int) -> None:
            t0 = time.perf_counter()
            r = await client.predict("linear", [[(i % 100) / 100]])
            latencies.append(time.perf_counter() - t0)
            batch_sizes.append(int(r.timing.get("batch_size", 1)))

        async def one_generation(i: int) -> str:
            c = await client.complete("charlm", "The ", max_tokens=args.tokens, temperature=0.8, seed=i)
            return c.text

        gens = []
        if "charlm" in client.hello.models and args.generations:
            gens = [one_generation(i) for i in range(args.generations)]
        start = time.perf_counter()
        results = await asyncio.gather(*(one_predict(i) for i in range(args.predicts)), *gens)
        elapsed = time.perf_counter() - start
        lat_ms = sorted(x * 1000 for x in latencies)
        print(f"{args.predicts} predicts + {len(gens)} generations in {elapsed:.2f} s on one socket "
              f"({args.predicts / elapsed:,.0f} predicts/s)")
        print(f"predict latency ms: p50 {statistics.median(lat_ms):.2f}, "
              f"p99 {lat_ms[int(len(lat_ms) * 0.99) - 1]:.2f}, max {lat_ms[-1]:.2f}; "
              f"mean server batch {statistics.mean(batch_sizes):.1f} rows")
        for i, text in enumerate(results[args.predicts:][:4]):
            print(f"generation {i}: {text!r}")
        print(f"client stats: {client.stats()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--predicts", type=int, default=2000)
    ap.add_argument("--generations", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=40)
    asyncio.run(main(ap.parse_args()))
