"""One batched predict: ``python examples/predict.py [--url ws://127.0.0.1:8765] [--model linear]``.

For ``linear`` the inputs are ``--x`` values (one row each); for any other model random rows
of the width the server reports in ``models``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import random
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))  # run from a checkout

from wsserve_client import DEFAULT_URL, Client, WsserveError  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    async with Client(args.url) as client:
        models = {m.name: m for m in await client.models()}
        if args.model not in models:
            print(f"no model {args.model!r}; the server has: {', '.join(models)}")
            return 1
        info = models[args.model]
        if args.model == "linear":
            inputs = [[x] for x in args.x]
        else:
            width = info.input_shape[0] if info.input_shape else 1
            rng = random.Random(0)
            inputs = [[rng.gauss(0, 1) for _ in range(width)] for _ in range(args.rows)]
        try:
            result = await client.predict(args.model, inputs, timeout=args.timeout)
        except WsserveError as exc:
            print(f"error: {exc}")
            return 1
        print(f"model {result.model} v{result.version} ({info.task}), timing {dict(result.timing)}")
        for row_in, row_out in zip(inputs, result.outputs, strict=True):
            shown_in = row_in if len(row_in) <= 4 else [*row_in[:3], "..."]
            print(f"  {shown_in} -> {[round(v, 4) for v in row_out]}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--model", default="linear")
    ap.add_argument("--x", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="inputs for linear")
    ap.add_argument("--rows", type=int, default=3, help="random rows for other models")
    ap.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    raise SystemExit(asyncio.run(main(ap.parse_args())))
