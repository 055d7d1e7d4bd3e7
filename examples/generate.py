"""Token streaming, printed as it arrives; Ctrl-C stops the generation on the server.

``python examples/generate.py [--url ws://127.0.0.1:8765] [--prompt "The "] [--max-tokens 200]
[--temperature 0.8 --top-k 20 --seed 1] [--stop ". "] [--logprobs 3]``

With ``--logprobs K``, a table follows the text: each token's probability and the K likeliest
tokens of its step (the model's own distribution, before sampling).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))  # run from a checkout

from wsserve_client import DEFAULT_URL, Client, WsserveError  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    async with Client(args.url) as client:
        gen = client.generate(
            args.model, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
            top_k=args.top_k, seed=args.seed, stop=args.stop or None, logprobs=args.logprobs,
        )
        print(args.prompt, end="", flush=True)
        try:
            async with gen:  # leaving early (Ctrl-C, error) sends cancel to the server
                async for text in gen:
                    print(text, end="", flush=True)
        except WsserveError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
        r = gen.result
        if r.logprobs is not None:
            print("\n\ntoken   prob   likeliest")
            for record in r.logprobs:
                alternatives = "  ".join(f"{t.text!r} {_p(t.logprob)}" for t in record.top)
                print(f"{record.text!r:>5} {_p(record.logprob)}   {alternatives}")
        print(f"\n[{r.reason}: {r.tokens} tokens, time to first token {r.timing.get('ttft_ms')} ms, "
              f"total {r.timing.get('total_ms')} ms]", file=sys.stderr)
    return 0


def _p(logprob: float | None) -> str:
    """A log-probability as a percentage."""
    return "  n/a" if logprob is None else f"{100 * math.exp(logprob):5.1f}%"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--model", default="charlm")
    ap.add_argument("--prompt", default="The ")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--logprobs", type=int, default=None, metavar="K",
                    help="show each token's probability and the K likeliest tokens (0-20)")
    try:
        raise SystemExit(asyncio.run(main(ap.parse_args())))
    except KeyboardInterrupt:
        print("\n[interrupted: cancelled on the server]", file=sys.stderr)
        raise SystemExit(130) from None
