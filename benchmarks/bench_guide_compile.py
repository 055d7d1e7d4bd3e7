"""What compiling a structured-outputs pattern in a child process costs a first (uncached) request.

``python -m benchmarks.bench_guide_compile [--runs 7]`` (~30 s) compiles a few patterns against
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

from wsserve.generation.guide_sandbox import compile_in_child, vocabulary_payload
from wsserve.generation.structured import GuidePattern, build_index, outlines_vocabulary
from wsserve.models.charlm import VOCAB

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
    args = parser.parse_args()
    print(f"{'vocabulary':>10} {'pattern':>7} {'in-process ms':>14} {'child ms':>9} {'added ms':>9}")
    for texts in (list(VOCAB), synthetic_vocabulary(32_000), synthetic_vocabulary(128_000)):
        for name, pattern in PATTERNS.items():
            inproc, child = await measure(texts, pattern, args.runs)
            print(f"{len(texts):>10} {name:>7} {inproc:>14.1f} {child:>9.1f} {child - inproc:>9.1f}")


if __name__ == "__main__":
    asyncio.run(main())
