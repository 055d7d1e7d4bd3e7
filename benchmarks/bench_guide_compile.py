"""What compiling a structured-outputs pattern in a child process costs a first (uncached) request.

``python -m benchmarks.bench_guide_compile [--runs 7]`` (~30 s; writes ``benchmarks/results/guide_compile.md``) compiles a few patterns against
three vocabularies (charlm's 96 tokens; synthetic ones of 32,000 and 128,000 distinct random
lowercase/digit strings of 1-8 characters, the sizes of real LLM tokenizers) two ways:

- ``in-process``: :func:`~wsserve.generation.structured.build_index` (the pre-sandbox path, run in
  a thread: outlines-core's Vocabulary made once per engine, so not counted);
- ``child``: :func:`~wsserve.generation.guide_sandbox.compile_in_child` (what the engine does now:
  a new interpreter importing numpy and outlines-core, the token texts sent as JSON and the
  Vocabulary rebuilt per compile, the tables back as ``.npy`` and checked).

It prints the median milliseconds of each and the difference (the added latency of a first
compile; later requests for the pattern hit the engine's cache either way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import string
import time
from pathlib import Path

from benchmarks.machine import describe
from wsserve.generation.guide_sandbox import compile_in_child, vocabulary_payload
from wsserve.generation.structured import GuidePattern, build_index, outlines_vocabulary
from wsserve.models.charlm import VOCAB

RESULTS = Path(__file__).resolve().parent / "results"

PATTERNS = {
    "regex": GuidePattern("regex", r"[0-9]{3}-[a-z]+( [a-z]+)?"),
    "json": GuidePattern("json", json.dumps({"type": "object", "properties": {
        "a": {"enum": ["x", "yy"]}, "n": {"type": "integer"}}, "required": ["a", "n"]})),
}


def synthetic_vocabulary(size: int, seed: int = 0) -> list[str]:
    """``size`` distinct token texts, the single characters of charlm first."""
    rng = random.Random(seed)
    texts = dict.fromkeys(VOCAB)
    alphabet = string.ascii_lowercase + string.digits + ' {}":,'
    while len(texts) < size:
        texts["".join(rng.choices(alphabet, k=rng.randint(2, 8)))] = None
    return list(texts)


async def measure(texts: list[str], pattern: GuidePattern, runs: int) -> tuple[float, float]:
    """Median ms of an in-process build and of a child's compile."""
    vocabulary = outlines_vocabulary(texts)
    payload = vocabulary_payload(texts)
    inproc, child = [], []
    for _ in range(runs):
        t = time.perf_counter()
        await asyncio.to_thread(build_index, pattern, vocabulary)
        inproc.append(time.perf_counter() - t)
        t = time.perf_counter()
        await compile_in_child(pattern, payload, len(texts))
        child.append(time.perf_counter() - t)
    return statistics.median(inproc) * 1e3, statistics.median(child) * 1e3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "guide_compile.md",
                        help="the BENCHMARKS.md fragment written (python -m benchmarks.assemble)")
    args = parser.parse_args()
    machine = describe()
    lines = [
        "## Structured outputs: what a first compile costs (`guided_regex` / `guided_json`)", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python -m benchmarks.bench_guide_compile "
        f"--runs {args.runs}`; {machine.get('cpu', '?')}, load average at the start "
        f"{' / '.join(map(str, machine.get('load_average') or ['?']))}.", "",
        "Median of the runs, per vocabulary (charlm's 96 tokens; synthetic ones of 32,000 and 128,000 "
        "distinct 2-8 character strings) and pattern (a regex; a small JSON Schema): the pattern compiled in "
        "this process (`build_index`, in a thread: the pre-sandbox path) and in a child process with its limits "
        "(`compile_in_child`: what the server does; the difference is the added latency of a request whose "
        "pattern is not cached yet; later requests hit the engine's cache either way).", "",
        "| vocabulary | pattern | in-process ms | child ms | added ms |",
        "|---:|---|---:|---:|---:|",
    ]
    for texts in (list(VOCAB), synthetic_vocabulary(32_000), synthetic_vocabulary(128_000)):
        for name, pattern in PATTERNS.items():
            inproc, child = await measure(texts, pattern, args.runs)
            lines.append(f"| {len(texts):,} | {name} | {inproc:.1f} | {child:.1f} | {child - inproc:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
