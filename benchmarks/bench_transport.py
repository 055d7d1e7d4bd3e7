"""wsserve on ``--transport picows`` vs ``websockets``, against both libraries' raw echo servers.

``python -m benchmarks.bench_transport`` (~6 min; ``--quick`` ~1 min) starts, each in its own
process on uvloop with one BLAS thread:

- ``echo``: the raw ``websockets`` echo (``peers/echo_server.py``), the ceiling of the default transport;
- ``echo-picows``: a raw picows echo (``peers/picows_echo_server.py``), for reference;
- ``wsserve``: ``wsserve serve`` (``--transport websockets``, the default);
- ``wsserve-picows``: ``wsserve serve --transport picows``;

and drives each with the load-test tool (``python -m wsserve.loadtest``, separate processes) with
single-row ``predict`` on ``linear`` and ``mlp`` (echo: the same frames echoed), closed loop, one
request in flight per connection, at 64 and 256 connections.  Repetitions are interleaved across
servers; medians reported with the range.  The targets (issue #16): ``wsserve-picows linear`` ≥ 2×
the ``websockets`` echo ceiling at 64 connections, and ``wsserve-picows mlp`` ≥ 1.5× ``wsserve mlp``
(in the same run; ``--issue-base DIR`` also runs wsserve from a checkout of the commit the issue was
filed against, 05ffc32, for the literal reading "1.5× the current wsserve").

Then the memory side: RSS per idle connection (1,000 of them) and what one 900 KB message leaves
behind per connection, on each transport (picows keeps its grown read buffer).

Throughput on this 2-core machine is shared between the server and the load-test client, so the
report also gives each server's **CPU time per request** (its busy cores ÷ requests/s), which does
not depend on how fast the client is.  Writes ``benchmarks/results/transport.md`` and
``transport.json``; ``--assemble`` also rebuilds BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/bench_transport.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe
from benchmarks.run import (
    PY,
    RESULTS,
    Plan,
    loadtest_cmd,
    measure,
    median_of,
    shown,
    write_results,
)
from benchmarks.servers import ROOT, start_command
from tests.support import ServerProcess, proc_status, serve_command

_WSSERVE = serve_command("--log-level", "warning", loop="uvloop")

#: name -> (server command, models to drive it with; None = echo)
SERVERS: dict[str, tuple[list[str], tuple[str | None, ...]]] = {
    "echo": ([PY, "benchmarks/peers/echo_server.py", "--port", "0"], (None,)),
    "echo-picows": ([PY, "benchmarks/peers/picows_echo_server.py", "--port", "0"], (None,)),
    "wsserve": (_WSSERVE, ("linear", "mlp")),
    "wsserve-picows": ([*_WSSERVE, "--transport", "picows"], ("linear", "mlp")),
}
LABELS = {
    "echo": "websockets echo (ceiling)",
    "echo-picows": "picows echo",
    "wsserve": "wsserve, websockets",
    "wsserve-picows": "wsserve, picows",
}
#: name -> the checkout a server runs from (default this one): ``--base DIR`` adds wsserve from DIR on both transports
ROOTS: dict[str, Path] = {}


def add_base(base: Path) -> None:
    """Also run wsserve from the checkout ``base`` (e.g. main's, for a before/after), on both transports."""
    for name in ("wsserve", "wsserve-picows"):
        SERVERS[f"{name}@base"] = SERVERS[name]
        LABELS[f"{name}@base"] = f"{LABELS[name]} (base)"
        ROOTS[f"{name}@base"] = base
    BASE_COMPARISONS.extend([
        ("wsserve-picows|linear", "wsserve-picows@base|linear", "wsserve-picows linear ÷ its base", None),
        ("wsserve-picows|mlp", "wsserve-picows@base|mlp", "wsserve-picows mlp ÷ its base", None),
        ("wsserve|linear", "wsserve@base|linear", "wsserve linear ÷ its base", None),
        ("wsserve|mlp", "wsserve@base|mlp", "wsserve mlp ÷ its base", None),
    ])


def add_issue_base(root: Path) -> None:
    """Also run wsserve (websockets, its only transport then) from ``root``, a checkout of the commit the
    transport issue was filed against: its "mlp >= 1.5x the current wsserve" target read literally."""
    SERVERS["wsserve@issue"] = SERVERS["wsserve"]
    LABELS["wsserve@issue"] = "wsserve, websockets (as filed)"
    ROOTS["wsserve@issue"] = root
    BASE_COMPARISONS.extend([
        ("wsserve-picows|mlp", "wsserve@issue|mlp", "wsserve-picows mlp ÷ wsserve mlp as filed", 1.5),
        ("wsserve-picows|linear", "wsserve@issue|linear", "wsserve-picows linear ÷ wsserve linear as filed", None),
        ("wsserve|mlp", "wsserve@issue|mlp", "wsserve mlp ÷ wsserve mlp as filed", None),
    ])


#: (numerator, denominator, label, target multiple or None), keys "server|model"
TARGETS = (
    ("wsserve-picows|linear", "echo|-", "wsserve-picows linear ÷ websockets echo", 2.0),
    ("wsserve-picows|mlp", "wsserve|mlp", "wsserve-picows mlp ÷ wsserve mlp", 1.5),
    ("wsserve-picows|linear", "wsserve|linear", "wsserve-picows linear ÷ wsserve linear", None),
    ("wsserve-picows|linear", "echo-picows|-", "wsserve-picows linear ÷ picows echo", None),
    ("echo-picows|-", "echo|-", "picows echo ÷ websockets echo", None),
    ("wsserve|linear", "echo|-", "wsserve linear ÷ websockets echo", None),
)

#: Before/after rows of ``--base`` (same shape as TARGETS).
BASE_COMPARISONS: list[tuple[str, str, str, float | None]] = []

FULL = Plan(reps=5, duration_s=4.0, warmup_s=1.0, connections=(64, 256))
QUICK = Plan(reps=1, duration_s=1.5, warmup_s=0.5, connections=(64,), quick=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(plan: Plan) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    machine = describe()
    servers: dict[str, ServerProcess] = {}
    try:
        for name, (cmd, _) in SERVERS.items():
            servers[name] = start_command(cmd, root=ROOTS.get(name, ROOT))
            _log(f"started {name} at {servers[name].url}")
        cells = [(name, model, n) for name in servers for model in SERVERS[name][1] for n in plan.connections]
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(plan.reps):
            for name, model, n in cells:
                result = measure(servers[name], model=model, connections=n, plan=plan)
                runs.setdefault(f"{name}|{model or '-'}|{n}", []).append(result)
                brief = result.get("failed") or (
                    f"{result['rps']:>9,.0f} req/s  server {result['server_cpu']:.2f} cores"
                    f"  client {result['client_cpu']:.2f}  p99 {result['p99']:.2f} ms"
                )
                _log(f"[rep {rep + 1}/{plan.reps}] {name:<15} {model or '-':<6} {n:>4} conns: {brief}")
    finally:
        for s in servers.values():
            s.stop()
    summary = {key: median_of(rs) for key, rs in runs.items()}
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": machine,
        "server_commands": {name: shown(cmd) for name, (cmd, _) in SERVERS.items() if name not in ROOTS},
        "base": {name: str(root) for name, root in ROOTS.items() if name.endswith("@base")},
        "issue_base": {name: str(root) for name, root in ROOTS.items() if name.endswith("@issue")},
        "loadtest_command": shown(loadtest_cmd("URL", model="MODEL", connections=0, plan=plan)).replace("-c 0", "-c N"),
        "runs": runs,
        "summary": summary,
    }


def _rss_kib(pid: int) -> int:
    return proc_status(pid, "VmRSS")["VmRSS"]


async def _hold(url: str, idle: int, big: int, big_bytes: int, pid: int) -> dict[str, float]:
    """Open ``idle`` connections (read hello), then send one ``big_bytes`` message on ``big`` of them."""
    import websockets

    r0 = _rss_kib(pid)
    conns = []
    try:
        for _ in range(idle):
            ws = await websockets.connect(url, compression=None, max_size=None, ping_interval=None)
            await ws.recv()
            conns.append(ws)
        await asyncio.sleep(2.0)
        r1 = _rss_kib(pid)
        payload = '"' + "a" * big_bytes + '"'  # a JSON string: answered with bad_request, after the whole read
        for ws in conns[:big]:
            await ws.send(payload)
            await ws.recv()
        await asyncio.sleep(2.0)
        r2 = _rss_kib(pid)
    finally:
        for ws in conns:
            await ws.close()
    return {"idle_kib_per_conn": (r1 - r0) / idle, "after_big_kib_per_conn": (r2 - r1) / big}


async def _flood(url: str, conns: int, frames: int, pid: int) -> float:
    """``conns`` raw sockets each write ``frames`` pipelined ping messages and never read: KiB of RSS per socket."""
    host, port = url.removeprefix("ws://").split(":")
    r0 = _rss_kib(pid)
    socks = []
    handshake = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    ping = b'{"type":"ping","id":1}'
    burst = (bytes((0x81, 0x80 | len(ping))) + b"\0\0\0\0" + ping) * frames  # masked with a zero key
    try:
        for _ in range(conns):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(handshake)
            await reader.readuntil(b"\r\n\r\n")
            socks.append(writer)
        for writer in socks:
            writer.write(burst)
        for writer in socks:
            await writer.drain()
        await asyncio.sleep(3.0)
        return (_rss_kib(pid) - r0) / conns
    finally:
        for writer in socks:
            writer.close()


def run_memory(idle: int = 1000, big: int = 200, big_bytes: int = 900_000, flooders: int = 20,
               flood_frames: int = 20_000) -> dict[str, Any]:
    """RSS per idle connection, and what one large message leaves behind per connection, per transport."""
    out: dict[str, Any] = {"idle": idle, "big": big, "big_bytes": big_bytes, "flooders": flooders,
                           "flood_frames": flood_frames}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < idle + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(idle + 256, hard), hard))
    for name in ("wsserve", "wsserve-picows"):
        cmd = [*SERVERS[name][0], "--models", "linear", "--ping-interval", "off"]
        server = start_command(cmd)
        try:
            time.sleep(1.0)
            out[name] = asyncio.run(_hold(server.url, idle, big, big_bytes, server.proc.pid))
        finally:
            server.stop()
        server = start_command(cmd)
        try:
            time.sleep(1.0)
            out[name]["flood_kib_per_conn"] = asyncio.run(_flood(server.url, flooders, flood_frames, server.proc.pid))
        finally:
            server.stop()
        _log(f"[memory] {name}: {out[name]}")
    return out


def render(data: dict[str, Any]) -> str:
    plan, m, summary = data["plan"], data["machine"], data["summary"]
    conns = plan["connections"]
    la = m.get("load_average") or ["?", "?", "?"]
    k = plan.get("inflight", 1)
    cmd = "python -m benchmarks.bench_transport" + (" --quick" if plan["quick"] else "") + (
        f" --inflight {k}" if k > 1 else "") + (
        f" --client-procs {plan['client_procs']}" if plan["client_procs"] > 1 else "") + (
        f" --connections {' '.join(map(str, conns))}" if tuple(conns) != (64, 256) and not plan["quick"] else "") + (
        " --base BASE" if data.get("base") else "") + (" --issue-base ISSUE_BASE" if data.get("issue_base") else "")
    out = ["## Transports: websockets vs picows" + (f", {k} requests in flight per connection" if k > 1 else ""), ""]
    if k > 1:
        out += [(f"The same servers and comparisons as above with {k} pipelined requests per connection instead of "
                 "one: the client writes the requests a read's replies free up in one write and each server answers "
                 "a connection's ready requests with one write, so the per-message kernel work (one `write` and one "
                 "`read` per request at one in flight, ~7 µs of system CPU per request for every server here) is "
                 "shared and the servers' own per-message work is what differs."), ""]
    if plan["quick"]:
        out += ["> **Quick run**: one short repetition per cell, a smoke test, not numbers to cite.", ""]
    out += [
        (f"Measured {data['started_at']} by `{cmd}` in {data.get('elapsed_s', '?')} s; load average at the start "
        f"{la[0]} / {la[1]} / {la[2]} on {m['cores']} cores (wsserve {m.get('git_commit') or 'commit unknown'})."),
        "",
        (f"Closed loop: N connections, each with {'one single-row `predict`' if k == 1 else f'{k} single-row `predict`s'} in flight (echo servers: the same frames "
        f"echoed), {plan['duration_s']:g} s after {plan['warmup_s']:g} s of warm-up; {plan['reps']} repetitions per "
        f"cell interleaved across the {len(SERVERS)} servers, median shown (range in small print). Every server is one process "
        f"on uvloop; the load-test client is {plan['client_procs']} separate process{'es' if plan['client_procs'] > 1 else ''}. "
        "The wire protocol is the same on both transports."),
        "",
        "| server | model | " + " | ".join(f"{n} conns req/s" for n in conns) + " | "
        + " | ".join(f"{n} conns p50 / p99 ms" for n in conns) + " | "
        + " | ".join(f"{n} conns server µs/req" for n in conns) + " |",
        "|---|---|" + "---:|" * (3 * len(conns)),
    ]
    for name, (_, models) in SERVERS.items():
        for model in models:
            cells = [summary.get(f"{name}|{model or '-'}|{n}") or {} for n in conns]
            rps = [
                f"{c['rps']:,.0f} <sub>({c['rps_min']:,.0f}–{c['rps_max']:,.0f})</sub>" if "rps" in c else "failed"
                for c in cells
            ]
            lat = [f"{c['p50']:.2f} / {c['p99']:.2f}" if "p50" in c else "—" for c in cells]
            cpu = [f"{c['server_us_per_req']:.1f}" if "server_us_per_req" in c else "—" for c in cells]
            out.append(f"| {LABELS[name]} | {model or '—'} | " + " | ".join(rps + lat + cpu) + " |")
    out += [
        "",
        ("*server µs/req*: the server process's CPU time per request (busy cores ÷ requests/s, median of the runs): "
        "its own cost, whatever the client's speed."),
        "",
        "| comparison | " + " | ".join(f"{n} conns" for n in conns) + " | "
        + " | ".join(f"{n} conns, server CPU/req" for n in conns) + " | target (throughput) |",
        "|---|" + "---:|" * (2 * len(conns)) + "---|",
    ]
    verdicts = []
    for num, den, label, target in (*TARGETS, *BASE_COMPARISONS):
        cells, cpu = [], []
        for n in conns:
            a, b = summary.get(f"{num}|{n}") or {}, summary.get(f"{den}|{n}") or {}
            if "rps" not in a or not b.get("rps"):
                cells.append("—")
                cpu.append("—")
                continue
            ratio = a["rps"] / b["rps"]
            mark = "" if target is None or n != 64 else (" ✅" if ratio >= target else " ❌")
            cells.append(f"{ratio:.2f}×{mark}")
            if target is not None and n == 64 and ratio < target:
                verdicts.append(f"{label} is {ratio:.2f}× at 64 connections, below the {target:g}× target")
            cu_a, cu_b = a.get("server_us_per_req"), b.get("server_us_per_req")
            cpu.append(f"{cu_b / cu_a:.2f}× less" if cu_a and cu_b else "—")
        out.append(f"| {label} | " + " | ".join(cells + cpu) + f" | {'≥ ' + format(target, 'g') + '× at 64' if target else '—'} |")
    out += ["", ("**Below target:** " + "; ".join(verdicts) + ".") if verdicts else "All targets met in this run.", ""]
    mem = data.get("memory")
    if mem:
        out += [
            "### Memory per connection",
            "",
            (f"RSS of the server process: growth per connection after opening {mem['idle']:,} idle connections "
            f"(each read its `hello`), then the further growth per connection after {mem['big']} of them each sent "
            f"one {mem['big_bytes']:,}-byte message (a JSON string, answered with `bad_request`); and, on a fresh "
            f"server, the growth per socket when {mem['flooders']} raw sockets each write {mem['flood_frames']:,} "
            "pipelined `ping` messages at once and never read a reply. picows's read buffer grows to the most it "
            "has read at once (a large frame, or a burst the kernel had queued) and is never shrunk; websockets "
            "frees it."),
            "",
            "| transport | KiB per idle connection | KiB per connection left after one large message | KiB per flooding socket |",
            "|---|---:|---:|---:|",
        ]
        for name in ("wsserve", "wsserve-picows"):
            if name in mem:
                m_ = mem[name]
                out.append(f"| {LABELS[name]} | {m_['idle_kib_per_conn']:.1f} | {m_['after_big_kib_per_conn']:,.0f} | "
                           f"{m_.get('flood_kib_per_conn', float('nan')):,.0f} |")
        out += [""]
    base = data.get("base")
    if base:
        out += [(f"*(base)*: the same wsserve commands run from `{next(iter(base.values()))}`, a checkout of the "
                 f"commit the changes measured here started from (`--base`)."), ""]
    issue_base = data.get("issue_base")
    if issue_base:
        out += [(f"*(as filed)*: the same wsserve command run from `{next(iter(issue_base.values()))}`, a checkout of "
                 "the commit the transport issue was filed against (`--issue-base`; websockets was its only transport): "
                 "the mlp target's \"1.5× the current wsserve\" read literally, next to the same-run reading above."), ""]
    out += ["Servers (from the repository root):", "", "```", *data["server_commands"].values(), "```", "",
            "Load, per cell (`--echo` instead of `--model` for the echo servers):", "", "```",
            data["loadtest_command"], "```", "",
            f"Reproduce: `{cmd}` (needs the `fast` extra). Raw per-run figures: `benchmarks/results/{_stem(k)}.json`.", ""]
    return "\n".join(out)


def _stem(inflight: int) -> str:
    """The results' file name: ``transport`` (one request in flight), ``transport_kK`` (K)."""
    return "transport" if inflight == 1 else f"transport_k{inflight}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 short repetition at 64 connections (~1 min)")
    ap.add_argument("--reps", type=int, help="repetitions per cell (default 5)")
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 4)")
    ap.add_argument("--client-procs", type=int, default=1, help="load-test client processes per run (default 1)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where transport.md/json go")
    ap.add_argument("--assemble", action="store_true", help="also rebuild BENCHMARKS.md")
    ap.add_argument("--base", type=Path, help="also run wsserve from this checkout (before/after), both transports")
    ap.add_argument("--issue-base", type=Path,
                    help="also run wsserve (websockets) from this checkout of the commit the transport issue was filed against")
    ap.add_argument("--connections", type=int, nargs="+", help="connection counts (default 64 256)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-per-connection measurement (~40 s)")
    ap.add_argument("--inflight", type=int, default=1, choices=range(1, 65), metavar="K",
                    help="requests in flight per connection (default 1; K > 1 writes transport_kK.md)")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = replace(plan, reps=args.reps)
    if args.duration:
        plan = replace(plan, duration_s=args.duration)
    plan = replace(plan, client_procs=args.client_procs, inflight=args.inflight)
    if args.connections:
        plan = replace(plan, connections=tuple(args.connections))
    if args.base:
        add_base(args.base.resolve())
    if args.issue_base:
        add_issue_base(args.issue_base.resolve())
    t0 = time.monotonic()
    data = run(plan)
    if not args.no_memory:
        data["memory"] = run_memory()
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_results(args.results, _stem(args.inflight), data, render(data), rebuild=args.assemble)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
