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
from the first submit to the last ``done``), TTFT p50/p99 (each stream's own
submit or send -> its first token) and CPU per token (in-process: the process's
CPU time; wire: the server process's, from ``/proc/PID/stat``), as medians over
``--runs`` runs, and writes a Markdown fragment to ``benchmarks/results/generate.md``.
The engine runs the model through :class:`~wsserve.generation.TokenModelAdapter`,
as the server does.

``--before DIR`` measures another checkout's code (e.g. ``/work/main``) with this
script, side by side: ``--runs`` times, this checkout and DIR each measure
``--runs-per-process`` runs in a fresh subprocess, alternating who goes first;
medians are over all their runs, and the fragment shows both ("after" = this checkout).

    python benchmarks/bench_generate.py                   # engine + wire, ~2-3 min
    python benchmarks/bench_generate.py --mode engine --runs 3
    python benchmarks/bench_generate.py --runs 5 --before /work/main
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
#: The checkout whose ``wsserve`` is measured (``--before`` sets it for its subprocesses).
CODE = Path(os.environ.get("WSSERVE_BENCH_CODE", str(ROOT)))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(CODE))

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.servers import start_wsserve

CONCURRENCY = (1, 8, 64, 256)


@dataclass
class Result:
    tokens: int
    wall_s: float
    ttft_ms: list[float]
    cpu_s: float = float("nan")  # CPU seconds of the process doing the serving (NaN: unknown)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def cpu_us_per_token(self) -> float:
        return self.cpu_s / self.tokens * 1e6

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

    def on_token_logprobs(self, seq: int, text: str, logprobs: Any) -> None:
        self.on_token(seq, text)

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        remaining, event = self.done
        remaining[0] -= 1
        if not remaining[0]:
            event.set()

    def on_error(self, exc: Exception) -> None:
        raise RuntimeError(f"generation failed in the benchmark: {exc!r}")


def new_engine(model: Any, inline_max_batch: int | None) -> Any:
    """A started generation engine as the benchmarks run it (256 slots, no queue bound)."""
    from wsserve.generation import GenerationEngine

    kw = {} if inline_max_batch is None else {"inline_max_batch": inline_max_batch}
    engine = GenerationEngine(model, max_generate_batch=256, max_generate_queue=None, **kw)
    engine.start()
    return engine


async def run_engine(model: Any, c: int, max_tokens: int, inline_max_batch: int | None,
                     extra: dict[str, Any] | None = None, engine: Any = None) -> Result:
    """C streams of :func:`_params` (plus ``extra``'s fields, e.g. ``top_p``) through one engine:
    a new one, closed after, or ``engine`` (a :func:`new_engine`, left running: what it keeps
    between requests, such as compiled guide patterns, is kept between runs, as in a server)."""
    from wsserve.generation import GenerationParams

    own = engine is None
    if own:
        engine = new_engine(model, inline_max_batch)
    await asyncio.sleep(0)
    remaining, event = [c], asyncio.Event()
    cpu0, t0 = time.process_time(), time.perf_counter()
    sinks = [_Sink(t0, remaining, event) for _ in range(c)]
    for i, sink in enumerate(sinks):
        sink.t0 = time.perf_counter()  # TTFT counts from this request's own submit
        engine.submit(GenerationParams(**{**_params(i, max_tokens), **(extra or {})}), sink)
    await event.wait()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if own:
        await engine.close()
    return Result(sum(s.tokens for s in sinks), wall, [s.first * 1e3 for s in sinks], cpu)


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
    cpu0, t0 = time.process_time(), time.perf_counter()
    sinks = [_Sink(t0, remaining, event) for _ in range(c)]
    tasks = [asyncio.ensure_future(one(i, s)) for i, s in enumerate(sinks)]
    await asyncio.gather(*tasks)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Result(sum(s.tokens for s in sinks), wall, [s.first * 1e3 for s in sinks], cpu)


def served_charlm() -> Any:
    """The server's charlm weights (cached), wrapped as the server serves a generative model."""
    from wsserve.generation import TokenModelAdapter
    from wsserve.trainer import train_default_models

    return TokenModelAdapter(train_default_models(names=["charlm"])["charlm"], name="charlm")


def bench_engine(levels: tuple[int, ...], runs: int, max_tokens: int, inline_max_batch: int | None) -> dict[str, Any]:
    model = served_charlm()
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
                cpu0 = server.cpu_seconds()  # includes the client's connect and untimed warm-up (small)
                res = subprocess.run(
                    [sys.executable, __file__, "--wire-client", url, str(c), str(max_tokens if r else 20)],
                    capture_output=True, text=True, timeout=120, check=True,
                )
                if r:
                    d = json.loads(res.stdout)
                    out[c].append(Result(d["tokens"], d["wall_s"], d["ttft_ms"], server.cpu_seconds() - cpu0))
    finally:
        server.stop()
    return out


# --------------------------------------------------------------------------- report

def _median(results: list[Result]) -> tuple[float, float, float]:
    return (statistics.median(r.tokens_per_s for r in results),
            statistics.median(r.pct(50) for r in results),
            statistics.median(r.pct(99) for r in results))


def _cpu(results: list[Result]) -> float:
    return statistics.median(r.cpu_us_per_token for r in results)


def _table(title: str, rows: dict[int, list[Result]], base: dict[int, list[Result]] | None) -> list[str]:
    head = "| streams | tokens/s | TTFT p50 ms | TTFT p99 ms | CPU us/token | vs 1 stream |"
    lines = [f"**{title}**", "", head + (" vs per-request loop |" if base else ""),
             "|---:|---:|---:|---:|---:|---:|" + ("---:|" if base else "")]
    one = _median(rows[min(rows)])[0]
    for c, results in rows.items():
        tps, p50, p99 = _median(results)
        line = f"| {c} | {tps:,.0f} | {p50:.2f} | {p99:.2f} | {_cpu(results):.2f} | {tps / one:.1f}x |"
        if base:
            line += f" {tps / _median(base[c])[0]:.1f}x |"
        lines.append(line)
    return lines + [""]


def _reading(inline: dict[int, list[Result]]) -> list[str]:
    """Fit CPU per step = fixed + per_sequence * B on the all-inline engine and say what it implies.

    CPU time, not wall time: on a shared machine wall figures move with other load."""
    t1 = _cpu(inline[1])  # us per step with one stream (one token per step)
    t256 = 256 * _cpu(inline[256])  # us per step with 256
    per_token = (t256 - t1) / 255
    fixed = t1 - per_token
    at64 = 64 * t1 / (fixed + 64 * per_token)
    text = (f"Reading (from CPU per token, all inline): a step costs about {fixed:.0f} us fixed (Python + ~10 small "
            f"numpy calls + one loop iteration) plus {per_token:.1f} us per sequence (mostly numpy: the model, "
            f"sampling, noise; then delivery). That caps 64 streams at ~{at64:.0f}x one stream and any batch at "
            f"~{t1 / per_token:.0f}x. Over the wire every token is also a "
            "WebSocket frame built, written and parsed in Python, which lowers all ratios; wire figures vary "
            "by up to 2x between runs on this shared machine.")
    return [text, ""]


def _to_json(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k == "hop" else {str(c): [r.__dict__ for r in rs] for c, rs in v.items()} for k, v in res.items()}


def _from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k == "hop" else {int(c): [Result(**r) for r in rs] for c, rs in v.items()} for k, v in d.items()}


def measure(mode: str, levels: tuple[int, ...], runs: int, args: argparse.Namespace) -> dict[str, Any]:
    """``{"engine"|"inline"|"loop"|"wire": {C: [Result per run]}, "hop": [...]}`` for this process's code."""
    out: dict[str, Any] = {}
    with threadpool_limits(limits=1):
        if mode in ("engine", "both"):
            out.update(bench_engine(levels, runs, args.tokens, args.inline_max_batch))
        if mode in ("wire", "both"):
            out["wire"] = bench_wire(levels, runs, args.tokens, args.cache_dir)
    return out


def measure_side_by_side(levels: tuple[int, ...], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each run: this checkout and ``--before`` once each, in fresh subprocesses, alternating who goes first."""
    codes = {"after": str(ROOT), "before": str(Path(args.before).resolve())}
    merged: dict[str, dict[str, Any]] = {"after": {}, "before": {}}
    for r in range(args.runs):
        for label in (("after", "before") if r % 2 == 0 else ("before", "after")):
            env = {**os.environ, "WSSERVE_BENCH_CODE": codes[label], "PYTHONPATH": codes[label]}
            cmd = [sys.executable, __file__, "--child", "--mode", args.mode, "--runs", str(args.runs_per_process),
                   "--tokens", str(args.tokens), "--concurrency", args.concurrency]
            if args.inline_max_batch is not None:
                cmd += ["--inline-max-batch", str(args.inline_max_batch)]
            if args.cache_dir:
                cmd += ["--cache-dir", args.cache_dir]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
            if res.returncode:
                raise RuntimeError(f"{label} run failed:\n{res.stderr[-3000:]}")
            one = _from_json(json.loads(res.stdout))
            into = merged[label]
            for key, value in one.items():
                if key == "hop":
                    into.setdefault("hop", value)
                else:
                    for c, rs in value.items():
                        into.setdefault(key, {}).setdefault(c, []).extend(rs)
            print(f"run {r + 1}/{args.runs} {label}: done", file=sys.stderr)
    return merged


def _targets(res: dict[str, Any], label: str) -> list[str]:
    lines = []
    for key, how in (("engine", "as served"), ("inline", "all inline")):
        e1, e64, l64 = (_median(res[k][c])[0] for k, c in ((key, 1), (key, 64), ("loop", 64)))
        ok = e64 / e1 >= 12 and e64 / l64 >= 8
        lines += [(f"{label}Targets at 64 streams, engine {how}: {e64 / e1:.1f}x one stream (target >= 12x), "
                   f"{e64 / l64:.1f}x the per-request loop (target >= 8x): {'met' if ok else 'not met'}."), ""]
    return lines


def _engine_section(res: dict[str, Any], levels: tuple[int, ...], args: argparse.Namespace, label: str) -> list[str]:
    threshold = "default `inline_max_batch`=64" if args.inline_max_batch is None else (
        f"`inline_max_batch`={args.inline_max_batch}")
    lines = _table(f"{label}In-process engine as the server runs it ({threshold}: bigger batches step in "
                   "the executor, pipelined)", res["engine"], res["loop"])
    lines += _table(f"{label}In-process engine, every step inline (no thread hop)", res["inline"], res["loop"])
    lines += _table(f"{label}In-process per-request loop (baseline: each generation steps alone in its task)",
                    res["loop"], None)
    if 1 in levels and 64 in levels:
        lines += _targets(res, label)
    return lines


def _comparison(after: dict[str, Any], before: dict[str, Any], levels: tuple[int, ...]) -> list[str]:
    """One row per figure at 64 streams: before, after, after / before."""
    lines = ["**Before / after at 64 streams (same machine, same run, interleaved)**", "",
             "| figure | before (`--before`) | after (this branch) | after / before |", "|---|---:|---:|---:|"]

    def row(name: str, fmt: str, b: float, a: float) -> None:
        lines.append(f"| {name} | {fmt.format(b)} | {fmt.format(a)} | {a / b if b else float('nan'):.2f} |")

    for key, how in (("engine", "engine as served"), ("inline", "engine all inline"), ("wire", "wire")):
        if key not in after or 64 not in after[key]:
            continue
        a64, b64 = after[key][64], before[key][64]
        row(f"{how}: tokens/s", "{:,.0f}", _median(b64)[0], _median(a64)[0])
        if 1 in levels:
            row(f"{how}: x one stream", "{:.1f}x", _median(b64)[0] / _median(before[key][1])[0],
                _median(a64)[0] / _median(after[key][1])[0])
        if key != "wire":
            row(f"{how}: x per-request loop", "{:.1f}x", _median(b64)[0] / _median(before["loop"][64])[0],
                _median(a64)[0] / _median(after["loop"][64])[0])
        row(f"{how}: TTFT p99 ms", "{:.2f}", _median(b64)[2], _median(a64)[2])
        row(f"{how}: CPU us/token", "{:.2f}", _cpu(b64), _cpu(a64))
        if 1 in levels and key != "wire":  # the ratio by CPU time: less sensitive to other load on the machine
            row(f"{how}: x one stream, by CPU/token", "{:.1f}x", _cpu(before[key][1]) / _cpu(b64),
                _cpu(after[key][1]) / _cpu(a64))
        if 1 in levels:
            row(f"{how}: 1 stream tokens/s", "{:,.0f}", _median(before[key][1])[0], _median(after[key][1])[0])
            row(f"{how}: 1 stream CPU us/token", "{:.2f}", _cpu(before[key][1]), _cpu(after[key][1]))
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("engine", "wire", "both"), default="both")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=200, help="max_tokens per stream")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--inline-max-batch", type=int, default=None, help="engine setting (default: its own)")
    ap.add_argument("--cache-dir", default=None, help="weights cache for the wire server")
    ap.add_argument("--before", default=None, metavar="DIR",
                    help="another checkout (e.g. /work/main) measured side by side, interleaved")
    ap.add_argument("--runs-per-process", type=int, default=3,
                    help="with --before: runs in each subprocess (so medians are over runs x this)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate.md"))
    ap.add_argument("--wire-client", nargs=3, metavar=("URL", "C", "TOKENS"), help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one run, JSON on stdout
    args = ap.parse_args()
    if args.wire_client:
        url, c, n = args.wire_client
        print(json.dumps(asyncio.run(wire_client(url, int(c), int(n)))))
        return
    levels = tuple(int(x) for x in args.concurrency.split(","))
    if args.child:
        print(json.dumps(_to_json(measure(args.mode, levels, args.runs, args))))
        return

    cmd = "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:])
    runs = f"{args.runs} x {args.runs_per_process} runs" if args.before else f"{args.runs} runs"
    setup = (f"Command: `{cmd.strip()}` - {runs}, medians; {args.tokens} tokens per stream, "
             "every other stream sampled (temperature 0.8, seeded), the rest greedy; the model is the "
             "server's charlm behind `TokenModelAdapter`. "
             f"{platform.python_implementation()} {platform.python_version()}, "
             f"numpy {np.__version__}, one BLAS thread, {os.cpu_count()} cores (shared machine; "
             f"load average {os.getloadavg()[0]:.1f} at the start). CPU us/token: CPU time of the serving "
             "process (in-process: the whole benchmark process; wire: the server, read from `/proc` in 10 ms "
             "clock ticks, so too coarse for one stream) per streamed token.")
    lines = ["## Token generation: continuous batching (`generate`, charlm)", "", setup, ""]
    t_start = time.perf_counter()
    if args.before:
        both = measure_side_by_side(levels, args)
        after, before = both["after"], both["before"]
        lines += [(f"Before = `{args.before}` (git {_git_head(Path(args.before))}), after = this checkout "
                   f"(git {_git_head(ROOT)}); each run starts both in fresh processes, alternately first."), ""]
        lines += _comparison(after, before, levels)
    else:
        after, before = measure(args.mode, levels, args.runs, args), None
    if "engine" in after:
        lines += _engine_section(after, levels, args, "After: " if before else "")
        if before:
            lines += _engine_section(before, levels, args, "Before: ")
        lines += after["hop"]
        if 1 in levels and 256 in levels:
            lines += _reading(after["inline"])
    if "wire" in after:
        title = ("Over the wire (server subprocess, raw websockets client in another process, "
                 "streams over min(C, 16) connections)")
        lines += _table(("After: " if before else "") + title, after["wire"], None)
        if before:
            lines += _table("Before: " + title, before["wire"], None)
    lines += [f"Whole run: {time.perf_counter() - t_start:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


def _git_head(path: Path) -> str:
    res = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    return res.stdout.strip() or "?"


if __name__ == "__main__":
    main()
