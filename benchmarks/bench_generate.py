"""Token generation throughput and time-to-first-token: continuous batching vs a per-request loop.

Modes (``--mode``):

- ``engine`` (in-process): C generations submitted at once to a
  :class:`~wsserve.generation.GenerationEngine`, against the baseline, a
  *per-request loop* - each generation stepping alone in its own asyncio task
  (``model.logits`` on ``[1, k]``, the same sampler, ``sleep(0)`` between
  tokens) - measured side by side in the same process, interleaved run by run.
- ``wire``: the real server (``python -m wsserve serve --port 0``) in a
  subprocess, driven by a raw ``websockets`` client in another process; C
  ``generate`` streams spread over ``min(C, 16)`` connections.

Per configuration it reports aggregate tokens/s (tokens streamed / wall time
from the first submit to the last ``done``) and TTFT p50/p99 (each stream's own
submit or send -> its first token), as medians over ``--runs`` runs, and writes a Markdown
fragment to ``benchmarks/results/generate.md``.

    python benchmarks/bench_generate.py                   # engine + wire, ~2-3 min
    python benchmarks/bench_generate.py --mode engine --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.servers import start_wsserve

CONCURRENCY = (1, 8, 64, 256)


@dataclass
class Result:
    tokens: int
    wall_s: float
    ttft_ms: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def pct(self, q: float) -> float:
        return float(np.percentile(self.ttft_ms, q))


def _params(i: int, max_tokens: int) -> dict[str, Any]:
    """Stream i's request: sampled (temperature 0.8, seed i) - every other one greedy."""
    return {"prompt": ("The ", "def ", "import ", "A ")[i % 4], "max_tokens": max_tokens,
            "temperature": 0.8 if i % 2 else 0.0, "seed": i}


# --------------------------------------------------------------------------- engine level

class _Sink:
    __slots__ = ("all_done", "done", "first", "t0", "tokens")

    def __init__(self, t0: float, all_done: list[int], event: asyncio.Event) -> None:
        self.t0, self.first, self.tokens, self.done = t0, 0.0, 0, (all_done, event)

    def on_token(self, seq: int, text: str) -> None:
        if seq == 0:
            self.first = time.perf_counter() - self.t0
        self.tokens += 1

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        remaining, event = self.done
        remaining[0] -= 1
        if not remaining[0]:
            event.set()

    def on_error(self, exc: Exception) -> None:
        raise RuntimeError(f"generation failed in the benchmark: {exc!r}")


async def run_engine(model: Any, c: int, max_tokens: int, inline_max_batch: int | None) -> Result:
    from wsserve.generation import GenerationEngine, GenerationParams

    kw = {} if inline_max_batch is None else {"inline_max_batch": inline_max_batch}
    engine = GenerationEngine(model, max_generate_batch=256, max_generate_queue=None, **kw)
    engine.start()
    await asyncio.sleep(0)
    remaining, event = [c], asyncio.Event()
    t0 = time.perf_counter()
    sinks = [_Sink(t0, remaining, event) for _ in range(c)]
    for i, sink in enumerate(sinks):
        sink.t0 = time.perf_counter()  # TTFT counts from this request's own submit
        engine.submit(GenerationParams(**_params(i, max_tokens)), sink)
    await event.wait()
    wall = time.perf_counter() - t0
    await engine.close()
    return Result(sum(s.tokens for s in sinks), wall, [s.first * 1e3 for s in sinks])


async def run_loop(model: Any, c: int, max_tokens: int) -> Result:
    """Baseline: every generation steps alone in its own task (no batching across requests)."""
    from wsserve.generation.sampling import (
        NOISE_BLOCK,
        gumbel_block,
        new_generator,
        sample,
    )

    async def one(i: int, sink: _Sink) -> None:
        p = _params(i, max_tokens)
        ctx = model.initial_context(p["prompt"])[None, :]  # [1, k]
        temp = np.array([p["temperature"]])
        top_k = np.zeros(1, np.int64)
        rng = new_generator(p["seed"]) if p["temperature"] > 0 else None
        block = None
        for t in range(p["max_tokens"]):
            noise = None
            if rng is not None:
                if t % NOISE_BLOCK == 0:
                    block = gumbel_block(rng, model.vocab_size)
                noise = block[t % NOISE_BLOCK][None, :]
            tok = int(sample(model.logits(ctx), temp, top_k, noise)[0])
            sink.on_token(t, model.id_to_text[tok])
            ctx = np.concatenate([ctx[:, 1:], [[tok]]], axis=1)
            await asyncio.sleep(0)
        sink.on_done("length", p["max_tokens"], {})

    remaining, event = [c], asyncio.Event()
    t0 = time.perf_counter()
    sinks = [_Sink(t0, remaining, event) for _ in range(c)]
    tasks = [asyncio.ensure_future(one(i, s)) for i, s in enumerate(sinks)]
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    return Result(sum(s.tokens for s in sinks), wall, [s.first * 1e3 for s in sinks])


def bench_engine(levels: tuple[int, ...], runs: int, max_tokens: int, inline_max_batch: int | None) -> dict[str, Any]:
    from wsserve.trainer import train_default_models

    model = train_default_models(names=["charlm"])["charlm"]  # the server's weights, cached
    out: dict[str, Any] = {k: {c: [] for c in levels} for k in ("engine", "inline", "loop")}

    async def main() -> None:
        out["hop"] = await measure_hop(model)  # type: ignore[assignment]
        await run_engine(model, 8, 20, inline_max_batch)  # warm-up (threads, caches)
        for _ in range(runs):
            for c in levels:
                out["engine"][c].append(await run_engine(model, c, max_tokens, inline_max_batch))
                out["inline"][c].append(await run_engine(model, c, max_tokens, 10**9))
                out["loop"][c].append(await run_loop(model, c, max_tokens))

    asyncio.run(main())
    return out


async def measure_hop(model: Any) -> list[str]:
    """The numbers behind the engine's inline/executor threshold (``inline_max_batch``)."""
    from concurrent.futures import ThreadPoolExecutor

    from wsserve.generation import GenerationParams, Scheduler, run_step

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as ex:
        for _ in range(200):
            await loop.run_in_executor(ex, int)
        hops = []
        for _ in range(2000):
            t = time.perf_counter()
            await loop.run_in_executor(ex, int)
            hops.append(time.perf_counter() - t)
    cells = []
    for b in (1, 8, 16, 32, 64, 256):
        sched = Scheduler(model, max_generate_batch=256)
        for i in range(b):
            sched.add_request(GenerationParams(**_params(i, 10**6)), 0.0)
        batch = sched.schedule(0.0)
        ts = []
        for _ in range(300):
            t = time.perf_counter()
            run_step(model, batch)
            ts.append(time.perf_counter() - t)
        cells.append(f"B={b}: {statistics.median(ts) * 1e6:.0f}")
    return [f"Inline threshold: an executor round trip (`run_in_executor` of a no-op) takes "
            f"{statistics.median(hops) * 1e6:.0f} us (median); one batched step (`run_step`, us, median): "
            + ", ".join(cells) + ". The engine runs steps of up to `inline_max_batch` = 64 sequences (about two round "
            "trips) on the loop thread; bigger ones go to the executor, pipelined with delivering the "
            "previous step's tokens, so the loop is never blocked much longer than that.", ""]


# --------------------------------------------------------------------------- over the wire

async def wire_client(url: str, c: int, max_tokens: int) -> dict[str, Any]:
    """Runs in its own process: C streams over min(C, 16) connections; returns a Result as JSON."""
    import orjson
    from websockets.asyncio.client import connect

    n_conn = min(c, 16)
    conns = [await connect(url, max_size=None, compression=None) for _ in range(n_conn)]
    for ws in conns:
        await ws.recv()  # hello
    for ws in conns:  # warm-up: one short generation per connection, untimed
        await ws.send(orjson.dumps({"type": "generate", "id": "warm", "model": "charlm", "prompt": "a",
                                    "max_tokens": 8}).decode())
        while orjson.loads(await ws.recv(decode=False))["type"] != "done":
            pass
    firsts: dict[int, float] = {}
    sent: dict[int, float] = {}
    tokens = [0]
    done = [0]

    async def reader(ws: Any, expected: int) -> None:
        finished = 0
        while finished < expected:
            frame = orjson.loads(await ws.recv(decode=False))
            kind = frame["type"]
            if kind == "token":
                tokens[0] += 1
                if frame["seq"] == 0:
                    firsts[frame["id"]] = time.perf_counter()
            elif kind == "done":
                finished += 1
            elif kind == "error":
                raise RuntimeError(f"server error: {frame}")

    t0 = time.perf_counter()
    per_conn = [0] * n_conn
    for i in range(c):
        per_conn[i % n_conn] += 1
        sent[i] = time.perf_counter()  # TTFT counts from this request's own send
        await conns[i % n_conn].send(orjson.dumps({"type": "generate", "id": i, "model": "charlm", **_params(i, max_tokens)}).decode())
    await asyncio.gather(*(reader(ws, n) for ws, n in zip(conns, per_conn)))
    wall = time.perf_counter() - t0
    done[0] = c
    for ws in conns:
        await ws.close()
    return {"tokens": tokens[0], "wall_s": wall, "ttft_ms": [(firsts[i] - sent[i]) * 1e3 for i in range(c)]}


def bench_wire(levels: tuple[int, ...], runs: int, max_tokens: int, cache_dir: str | None) -> dict[int, list[Result]]:
    server = start_wsserve(cache_dir=cache_dir or None)
    url = server.url
    out: dict[int, list[Result]] = {c: [] for c in levels}
    try:
        for r in range(runs + 1):
            for c in levels if r else (8,):  # the first pass is a warm-up
                res = subprocess.run(
                    [sys.executable, __file__, "--wire-client", url, str(c), str(max_tokens if r else 20)],
                    capture_output=True, text=True, timeout=120, check=True,
                )
                if r:
                    d = json.loads(res.stdout)
                    out[c].append(Result(d["tokens"], d["wall_s"], d["ttft_ms"]))
    finally:
        server.stop()
    return out


# --------------------------------------------------------------------------- report

def _median(results: list[Result]) -> tuple[float, float, float]:
    return (statistics.median(r.tokens_per_s for r in results),
            statistics.median(r.pct(50) for r in results),
            statistics.median(r.pct(99) for r in results))


def _table(title: str, rows: dict[int, list[Result]], base: dict[int, list[Result]] | None) -> list[str]:
    head = "| streams | tokens/s | TTFT p50 ms | TTFT p99 ms | vs 1 stream |"
    lines = [f"**{title}**", "", head + (" vs per-request loop |" if base else ""),
             "|---:|---:|---:|---:|---:|" + ("---:|" if base else "")]
    one = _median(rows[min(rows)])[0]
    for c, results in rows.items():
        tps, p50, p99 = _median(results)
        line = f"| {c} | {tps:,.0f} | {p50:.2f} | {p99:.2f} | {tps / one:.1f}x |"
        if base:
            line += f" {tps / _median(base[c])[0]:.1f}x |"
        lines.append(line)
    return lines + [""]


def _reading(inline: dict[int, list[Result]]) -> list[str]:
    """Fit step time = fixed + per_token * B on the all-inline engine and say what it implies."""
    t1 = 1e6 / _median(inline[1])[0]  # us per step with one stream
    t256 = 256 * 1e6 / _median(inline[256])[0]  # us per step with 256
    per_token = (t256 - t1) / 255
    fixed = t1 - per_token
    at64 = 64 * t1 / (fixed + 64 * per_token)
    text = (f"Reading: a step costs about {fixed:.0f} us fixed (Python + ~10 small numpy calls + one loop "
            f"iteration) plus {per_token:.1f} us per sequence (numpy compute, scheduler bookkeeping "
            f"and delivery). That caps 64 streams at ~{at64:.0f}x one stream and any batch at "
            f"~{t1 / per_token:.0f}x: charlm is so small that one stream is already fast, so the 12x target "
            "would need a heavier model per step (where batching amortises weight traffic) or a slower "
            "single stream. Over the wire every token is also a "
            "WebSocket frame built, written and parsed in Python, which lowers all ratios; wire figures vary "
            "by up to 2x between runs on this shared machine.")
    return [text, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("engine", "wire", "both"), default="both")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=200, help="max_tokens per stream")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--inline-max-batch", type=int, default=None, help="engine setting (default: its own)")
    ap.add_argument("--cache-dir", default=None, help="weights cache for the wire server")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate.md"))
    ap.add_argument("--wire-client", nargs=3, metavar=("URL", "C", "TOKENS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.wire_client:
        url, c, n = args.wire_client
        print(json.dumps(asyncio.run(wire_client(url, int(c), int(n)))))
        return

    levels = tuple(int(x) for x in args.concurrency.split(","))
    cmd = "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:])
    setup = (f"Command: `{cmd.strip()}` - {args.runs} runs, medians; {args.tokens} tokens per stream, "
             "every other stream sampled (temperature 0.8, seeded), the rest greedy. "
             f"{platform.python_implementation()} {platform.python_version()}, "
             f"numpy {np.__version__}, one BLAS thread, {os.cpu_count()} cores (shared machine; "
             f"load average {os.getloadavg()[0]:.1f} at the start).")
    lines = ["## Token generation: continuous batching (`generate`, charlm)", "", setup, ""]
    t_start = time.perf_counter()
    with threadpool_limits(limits=1):
        if args.mode in ("engine", "both"):
            res = bench_engine(levels, args.runs, args.tokens, args.inline_max_batch)
            threshold = "default `inline_max_batch`=64" if args.inline_max_batch is None else (
                f"`inline_max_batch`={args.inline_max_batch}")
            lines += _table(f"In-process engine as the server runs it ({threshold}: bigger batches step in "
                            "the executor, pipelined)", res["engine"], res["loop"])
            lines += _table("In-process engine, every step inline (no thread hop)", res["inline"], res["loop"])
            lines += _table("In-process per-request loop (baseline: each generation steps alone in its task)",
                            res["loop"], None)
            if 1 in levels and 64 in levels:
                for key, label in (("engine", "as served"), ("inline", "all inline")):
                    e1, e64, l64 = (_median(res[k][c])[0] for k, c in ((key, 1), (key, 64), ("loop", 64)))
                    verdict = (f"Targets at 64 streams, engine {label}: {e64 / e1:.1f}x one stream "
                               f"(target >= 12x), {e64 / l64:.1f}x the per-request loop (target >= 5x).")
                    lines += [verdict, ""]
            lines += res["hop"]
            if 1 in levels and 256 in levels:
                lines += _reading(res["inline"])
    if args.mode in ("wire", "both"):
        wire = bench_wire(levels, args.runs, args.tokens, args.cache_dir)
        lines += _table("Over the wire (server subprocess, raw websockets client in another process, "
                        "streams over min(C, 16) connections)", wire, None)
    lines += [f"Whole run: {time.perf_counter() - t_start:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
