"""What the sampling options, logprobs and guided decoding cost a generation step: ``top_p``, the
presence/frequency penalties, ``logprobs``, ``guided_choice``, ``guided_regex``.

``python -m benchmarks.bench_sampling`` (~1-2 min) runs the generation engine in-process on the
server's charlm (as :mod:`benchmarks.bench_generate`'s engine mode: every other stream sampled at
temperature 0.8, seeded, the rest greedy; 200 tokens each) at 1 and 64 concurrent streams, with:

- ``plain``: no option (the default workload);
- ``top_p``: ``top_p`` 0.9 on every stream (nucleus filtering applies to the sampled half);
- ``penalties``: ``presence_penalty`` 0.5 and ``frequency_penalty`` 0.5 on every stream (greedy too);
- ``both``: the two together;
- ``repetition``: vLLM's ``repetition_penalty`` 1.2 on every stream (the prompt's tokens and the
  generated ones);
- ``logprobs_0`` / ``logprobs_5``: ``logprobs`` 0 (each token's own log-probability) and 5 (and the
  5 likeliest alternatives) on every stream: a log-softmax of those rows per step, one record and
  its own token event per token (not the step's one block of plain events).
- ``guided_choice``: ``guided_choice`` of 16 choices of 200 characters on every stream (each row's
  allowed tokens per step, a mask of the guided rows, one token event per token);
- ``guided_regex``: ``guided_regex`` ``[a-z ,.]{200}`` on every stream (compiled once, in the
  warm-up, then taken from the engine's cache).

Each variant runs on its own engine for the whole run, as a server keeps one per model.

Runs are interleaved (every variant once per round, ``--runs`` rounds); it reports medians of
aggregate tokens/s and CPU us per token, and each variant's tokens/s as a ratio of ``plain`` in
the same rounds.  Writes ``benchmarks/results/sampling.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_generate import new_engine, run_engine, served_charlm  # noqa: E402
from benchmarks.machine import describe  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "top_p": {"top_p": 0.9},
    "penalties": {"presence_penalty": 0.5, "frequency_penalty": 0.5},
    "both": {"top_p": 0.9, "presence_penalty": 0.5, "frequency_penalty": 0.5},
    "repetition": {"repetition_penalty": 1.2},
    "logprobs_0": {"logprobs": 0},
    "logprobs_5": {"logprobs": 5},
    # 16 choices of 200 characters (fixed text: the same in every run), as long as the streams
    "guided_choice": {"guided_choice": tuple(
        ("".join("abcdefghijklmnopqrstuvwxyz ,."[(i * 7 + j * j * 3 + j) % 29] for j in range(200)))
        for i in range(16))},
    "guided_regex": {"guided_regex": "[a-z ,.]{200}"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--concurrency", default="1,64")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampling.md"))
    args = ap.parse_args()
    levels = tuple(int(x) for x in args.concurrency.split(","))
    model = served_charlm()
    res: dict[tuple[str, int], list[Any]] = {(v, c): [] for v in VARIANTS for c in levels}

    async def rounds() -> None:
        # one engine per variant for the whole run, as a server keeps its model's engine (what it
        # keeps between requests is kept between runs: guided_regex's compiled pattern)
        engines = {name: new_engine(model, None) for name in VARIANTS}
        for name, extra in VARIANTS.items():  # warm-up (guided_regex: its compile, then cached)
            await run_engine(model, 8, 20, None, extra, engines[name])
        for _ in range(args.runs):
            for c in levels:
                for name, extra in VARIANTS.items():
                    res[name, c].append(await run_engine(model, c, args.tokens, None, extra, engines[name]))
        for engine in engines.values():
            await engine.close()

    asyncio.run(rounds())
    cmd = "python -m benchmarks.bench_sampling " + " ".join(sys.argv[1:])
    lines = [
        "## Sampling options: what `top_p`, the penalties, `logprobs` and guided decoding cost a step (`generate`, charlm)", "",
        f"Command: `{cmd.strip()}` - {args.runs} interleaved rounds, medians; {args.tokens} tokens per stream, "
        "every other stream sampled (temperature 0.8, seeded), the rest greedy; the engine in-process on the "
        f"server's charlm (96-token vocabulary). {describe()['cpu']}, {platform.python_implementation()} "
        f"{platform.python_version()}, "
        f"numpy {np.__version__}, one BLAS thread, {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f} at the start). CPU us/token: the process's CPU time per streamed token. "
        "Ratio: the variant's tokens/s over `plain`'s in the same round, median over rounds.", "",
        "| variant | streams | tokens/s | CPU us/token | ÷ plain |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in levels:
        for name in VARIANTS:
            rs = res[name, c]
            tps = statistics.median(r.tokens_per_s for r in rs)
            cpu = statistics.median(r.cpu_us_per_token for r in rs)
            ratio = statistics.median(r.tokens_per_s / p.tokens_per_s for r, p in zip(rs, res["plain", c]))
            lines.append(f"| `{name}` | {c} | {tps:,.0f} | {cpu:.1f} | {ratio:.2f}× |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
