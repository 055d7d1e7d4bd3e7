"""The per-request CPU of a single-row ``predict``, in-process: no sockets, no client.

``python -m benchmarks.bench_core`` (~1 min) builds a real :class:`~wsserve.server.Server` (its
``ModelPool``, ``PredictWorker``, metrics, flusher) serving the built-in ``linear`` (or ``--model``)
on uvloop, and drives it from ``-c`` (64) fake connections in the pattern a server under a closed-loop
load sees: each connection's next request arrives as its own loop callback once its answer was
written, so the requests of one loop iteration share a batch.  Two drivers:

- ``core``: :class:`~wsserve.connection.Connection` with a fake ``ConnectionIO`` that queues frames and
  flushes through the server's flusher, as the adapters do;
- ``picows``: the real picows adapter (:class:`~wsserve.transport.picows_conn.PicowsConnection`) fed
  fake picows frames, its writes going to a fake transport (picows's own C parsing/framing is not in it).

Each run prints microseconds of process CPU per request (``time.process_time``) over ``-n`` requests
after a warm-up.  ``--base DIR`` also runs the same driver against another checkout (this file is run
with that checkout first on ``PYTHONPATH``; it imports only ``wsserve``), interleaved, and reports the
median of ``--rounds`` runs of each side by side.  ``--profile FILE``: one run under cProfile, the
top functions by own time printed and the stats written to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the child (one run)


class _CoreIO:
    """A transport adapter's sending side with no socket: frames queue, the flusher writes them."""

    def __init__(self, flusher: Any, on_reply: Any) -> None:
        self.flusher = flusher
        self.on_reply = on_reply
        self.out: list[bytes] = []
        self.marked = False
        self.conn: Any = None

    def send(self, frame: bytes) -> None:
        self.out.append(frame)
        if not self.marked:
            self.marked = True
            self.flusher.mark(self)

    send_binary = send

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")

    def flush(self) -> None:
        self.marked = False
        out, self.out = self.out, []
        for frame in out:
            self.on_reply(self, frame)


class _Frame:
    """What the picows adapter reads of a ``picows.WSFrame``."""

    __slots__ = ("msg_type", "fin", "rsv1", "rsv2", "rsv3", "last_in_buffer", "_payload", "payload_size")

    def __init__(self, msg_type: Any, payload: bytes) -> None:
        self.msg_type = msg_type
        self.fin = True
        self.rsv1 = self.rsv2 = self.rsv3 = False
        self.last_in_buffer = True
        self._payload = payload
        self.payload_size = len(payload)

    def get_payload_as_bytes(self) -> bytes:
        return self._payload


class _Transport:
    """The TCP transport under picows: writes go nowhere and never block."""

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class _WS:
    """The ``picows.WSTransport`` the adapter writes through."""

    def __init__(self, on_reply: Any) -> None:
        self.underlying_transport = _Transport()
        self.is_close_frame_sent = False
        self.on_reply = on_reply
        self.listener: Any = None

    def send(self, msg_type: Any, payload: bytes) -> None:
        self.on_reply(self.listener, payload)


async def _child(driver: str, model: str, conns: int, requests: int, warmup: int, cache_dir: str | None,
                 profile: str | None) -> dict[str, Any]:
    import orjson

    from wsserve.config import ServerConfig
    from wsserve.server import Server
    from wsserve.trainer import prepare_builtin_repository

    config = ServerConfig(host="127.0.0.1", port=0, models=(model,), cache_dir=Path(cache_dir) if cache_dir else None,
                          ping_interval_s=None)
    with tempfile.TemporaryDirectory(prefix="bench-core-") as scratch:
        builtin = prepare_builtin_repository(config.models, seed=config.seed, cache_dir=config.cache_dir,
                                             cache=config.cache, scratch=Path(scratch))
        server = Server(config, builtin_repository=builtin)
        await server.start()
    width = server.pool.lookup(model).input_width
    loop = asyncio.get_running_loop()
    row = [round(0.01 * i, 2) for i in range(width)]
    msgs = [orjson.dumps({"type": "predict", "id": i, "model": model, "inputs": [row]}) for i in range(conns)]
    total = warmup + requests
    state = {"sent": 0, "done": 0, "t0": 0.0, "c0": 0.0}
    collected = [0, 0]  # objects the cyclic GC freed, and its runs, during the measured requests

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and warmup <= state["done"] < total:
            collected[0] += info["collected"]
            collected[1] += 1

    gc.callbacks.append(on_gc)
    finished = loop.create_future()
    now = time.monotonic

    def reply(owner: Any, frame: bytes) -> None:
        if frame.startswith(b'{"type":"hello"'):
            return
        if not frame.startswith(b'{"type":"result"'):
            raise AssertionError(frame[:200])
        state["done"] += 1
        if state["done"] == warmup:
            state["t0"], state["c0"] = time.perf_counter(), time.process_time()
            if profile:
                prof.enable()
        if state["done"] == total:
            if profile:
                prof.disable()
            finished.set_result((time.perf_counter() - state["t0"], time.process_time() - state["c0"]))
        elif state["sent"] < total:
            state["sent"] += 1
            loop.call_soon(send_next, owner)

    if driver == "core":
        def send_next(io: Any) -> None:
            conn = io.conn
            conn.receive(io.msg, False, now())
            if io.marked:  # the adapters flush right after a read that produced replies
                server.flusher.flush()
            if conn.timer_epoch != io.epoch:  # ... and re-read the core's timer when it may have moved
                io.epoch = conn.timer_epoch
                conn.next_timer()

        owners = []
        for i in range(conns):
            io = _CoreIO(server.flusher, reply)
            io.msg, io.epoch = msgs[i], -1  # type: ignore[attr-defined]
            io.conn = server.open_connection(io, "127.0.0.1", None)
            io.conn.open()
            owners.append(io)
        server.flusher.flush()
    elif driver == "picows":
        from picows import WSMsgType

        from wsserve.transport.picows_conn import PicowsConnection

        def send_next(pc: Any) -> None:
            pc.on_ws_frame(pc.ws, pc.bench_frame)

        owners = []
        for i in range(conns):
            pc = PicowsConnection(server, "127.0.0.1", None, None)
            ws = _WS(reply)
            ws.listener = pc
            pc.bench_frame = _Frame(WSMsgType.TEXT, msgs[i])  # type: ignore[attr-defined]
            pc.on_ws_connected(ws)  # type: ignore[arg-type]
            owners.append(pc)
        server.flusher.flush()
    else:
        raise SystemExit(f"unknown driver {driver!r}")

    if profile:
        import cProfile

        prof = cProfile.Profile()
    for owner in owners:
        state["sent"] += 1
        loop.call_soon(send_next, owner)
    wall, cpu = await finished
    await server.pool.close()
    if profile:
        import pstats

        prof.dump_stats(profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    gc.callbacks.remove(on_gc)
    return {"us_per_req_cpu": cpu / requests * 1e6, "us_per_req_wall": wall / requests * 1e6, "requests": requests,
            "gc_collected_per_request": collected[0] / requests, "gc_runs": collected[1]}


def child_main(args: argparse.Namespace) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(_child(args.driver, args.model, args.connections, args.requests, args.warmup,
                                args.cache_dir, args.profile))
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- the parent (side by side)


def _run(root: Path, args: argparse.Namespace, driver: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(root), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--driver", driver, "--model", args.model,
           "-c", str(args.connections), "-n", str(args.requests), "--warmup", str(args.warmup)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{root}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


DRIVERS = {
    "core": "`Connection` + fake `ConnectionIO` (the core alone)",
    "picows": "`PicowsConnection` fed fake picows frames (adapter + core)",
}


def render(args: argparse.Namespace, drivers: list[str], sides: dict[str, Path],
           figures: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """The markdown fragment: µs of CPU per request (median and range) and what the GC freed, per driver and side."""
    cmd = (f"python -m benchmarks.bench_core --model {args.model} -c {args.connections} -n {args.requests} "
           f"--rounds {args.rounds}" + (" --base BASE" if args.base else ""))
    out = [
        f"### In-process: CPU per single-row `{args.model}` predict",
        "",
        (f"`{cmd}`: a real server core (model pool, batching worker, metrics, flusher) on uvloop, driven by "
         f"{args.connections} fake connections with one request in flight each ({args.requests:,} requests per run "
         f"after {args.warmup:,} of warm-up), no sockets; µs of process CPU per request, median of {args.rounds} "
         "interleaved runs (range in small print). *GC freed*: objects the cyclic garbage collector had to free "
         "per request (reference cycles)."
         + (f" *base*: the same harness run against `{sides['base']}`." if "base" in sides else "")),
        "",
        "| driver | " + " | ".join(f"{s} µs/request" for s in sides) + (" | base ÷ head" if "base" in sides else "")
        + " | " + " | ".join(f"{s} GC freed / request" for s in sides) + " |",
        "|---|" + "---:|" * (2 * len(sides) + (1 if "base" in sides else 0)),
    ]
    for d in drivers:
        us = {s: [r["us_per_req_cpu"] for r in figures[d][s]] for s in sides}
        med = {s: statistics.median(v) for s, v in us.items()}
        cells = [f"{med[s]:.2f} <sub>({min(us[s]):.2f}–{max(us[s]):.2f})</sub>" for s in sides]
        if "base" in sides:
            cells.append(f"{med['base'] / med['head']:.2f}×")
        cells += [f"{statistics.median(r.get('gc_collected_per_request', float('nan')) for r in figures[d][s]):.2f}"
                  for s in sides]
        out.append(f"| {DRIVERS.get(d, d)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--driver", default=None, help="core | picows (default: both)")
    p.add_argument("--model", default="linear")
    p.add_argument("-c", "--connections", type=int, default=64)
    p.add_argument("-n", "--requests", type=int, default=40_000)
    p.add_argument("--warmup", type=int, default=5_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--base", type=Path, default=None, help="another checkout to compare with (e.g. main's)")
    p.add_argument("--cache-dir", default=os.environ.get("WSSERVE_TEST_CACHE_DIR"))
    p.add_argument("--profile", default=None, help="cProfile one run (this checkout) into FILE")
    p.add_argument("--results", type=Path, default=None,
                   help="also write the table as a markdown fragment FILE (e.g. benchmarks/results/core.md)")
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.profile:
        args.driver = args.driver or "core"
        args.child = True
        return child_main(args)
    drivers = [args.driver] if args.driver else ["core", "picows"]
    sides = {"head": ROOT} | ({"base": args.base.resolve()} if args.base else {})
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {d: {s: [] for s in sides} for d in drivers}
    for r in range(args.rounds):
        for d in drivers:
            for side, root in sides.items():
                run = _run(root, args, d)
                figures[d][side].append(run)
                print(f"[round {r + 1}/{args.rounds}] {d:<6} {side:<4} {run['us_per_req_cpu']:6.2f} us/request, "
                      f"GC freed {run.get('gc_collected_per_request', float('nan')):.2f} objects/request",
                      file=sys.stderr, flush=True)
    table = render(args, drivers, sides, figures)
    print(table)
    if args.results:
        args.results.write_text(table)
        print(f"wrote {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
