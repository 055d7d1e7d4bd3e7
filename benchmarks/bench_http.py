"""HTTP throughput: wsserve's ``/predict`` and OIP ``/v2/models/mlp/infer`` vs FastAPI/uvicorn and KServe,
and WebSocket predict throughput with the HTTP layer vs the commit before it.

``python benchmarks/bench_http.py [--reps 5] [--duration 5] [--kserve-python PY] [--ws-against DIR]``

Part 1 (HTTP).  Each server is one process (uvloop, ``OPENBLAS_NUM_THREADS=1``)
serving the same trained ``mlp``; the load is ``wrk`` (Debian's ``wrk``
package: ``apt-get install wrk``), one thread, 64 keep-alive connections,
each POSTing one single-row JSON body (``benchmarks/wrk/*.lua``, the same body
for every server) as soon as its last answer came back.  Servers:

- wsserve (this checkout): ``/predict`` (the predict form) and the OIP route;
- FastAPI/uvicorn (``peers/fastapi_http_server.py``): the same two routes, the
  model called per request;
- KServe's Python model server (``peers/kserve_server.py``), OIP route only,
  from its own virtualenv (``--kserve-python``; KServe pins its own FastAPI,
  pydantic and numpy).

Before measuring, every server's answer to the benchmark body is checked
against wsserve's (same outputs within 1e-6).  Cells run interleaved, ``--reps``
times, each after a ``--warmup`` run; the median is reported with the range.

Part 2 (WebSocket, ``--ws-against DIR``: a checkout of the commit before the
HTTP layer, e.g. ``git worktree add /tmp/base 50fb55b``, main before the HTTP merge).  Both servers are
driven by this checkout's ``python -m wsserve.loadtest`` (``-c 64 -k 1
--model mlp``), interleaved, medians and the ratio reported.

Writes ``benchmarks/results/http.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/bench_http.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe  # noqa: E402
from benchmarks.servers import ROOT, bench_env, start_command  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

PY = sys.executable
RESULTS = ROOT / "benchmarks" / "results"
WRK_DIR = ROOT / "benchmarks" / "wrk"
ROUTES = {"predict": ("predict_mlp.lua", "/predict"), "infer": ("infer_mlp.lua", "/v2/models/mlp/infer")}


def wsserve_cmd() -> list[str]:
    return [PY, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0", "--models", "linear,mlp",
            "--log-level", "warning"]


def _body(lua: str) -> bytes:
    text = (WRK_DIR / lua).read_text()
    return re.search(r"wrk\.body = '(.*)'", text).group(1).encode()  # type: ignore[union-attr]


def _post(url: str, body: bytes) -> Any:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _outputs(answer: Any) -> list[float]:
    if "outputs" in answer and isinstance(answer["outputs"][0], dict):  # OIP
        return answer["outputs"][0]["data"]
    return answer["outputs"][0]


def wait_ready(url: str, timeout_s: float = 90.0) -> None:
    """Poll ``/v2/health/ready`` (servers that print their URL before listening)."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} not ready after {timeout_s:g} s")
        time.sleep(0.2)


def http_url(server: ServerProcess) -> str:
    return server.http


# --------------------------------------------------------------------------- wrk


def wrk_cmd(url: str, route: str, connections: int, duration_s: float) -> list[str]:
    lua, _ = ROUTES[route]
    return ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", "-s", f"benchmarks/wrk/{lua}", url]


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(server: ServerProcess, route: str, connections: int, duration_s: float) -> dict[str, Any]:
    cpu0 = server.cpu_seconds()
    proc = subprocess.run(wrk_cmd(http_url(server), route, connections, duration_s), cwd=ROOT, capture_output=True,
                          text=True, timeout=duration_s + 60)
    cpu = server.cpu_seconds() - cpu0
    out = proc.stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if proc.returncode != 0 or rps is None or total is None:
        return {"failed": (proc.stderr or out).strip()[-500:]}
    # Server CPU (all its threads, user + system) per request: far less sensitive to other load than req/s.
    result: dict[str, Any] = {"rps": float(rps.group(1)), "cpu_us": cpu / max(1, int(total.group(1))) * 1e6}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _ms(m.group(1)) if m else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = sock.group(1).strip() if sock else ""
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "failed" not in r]
    if not good:
        return {"failed": runs[0].get("failed", "not run") if runs else "not run", "n": 0}
    out = {k: statistics.median(r[k] for r in good) for k in ("rps", "cpu_us", "p50", "p90", "p99")}
    out.update(rps_min=min(r["rps"] for r in good), rps_max=max(r["rps"] for r in good), n=len(good),
               non2xx=sum(r["non2xx"] for r in good),
               socket_errors=sorted({r["socket_errors"] for r in good if r["socket_errors"]}))
    return out


def cost_table(first: str, med: dict[str, dict[str, Any]]) -> list[str]:
    """A Markdown table of :func:`median_of` cells against the first one (``off``): req/s with
    its range, server µs per request, and both as ratios; ``first`` heads the cells' column."""
    lines = [f"| {first} | req/s | server µs/request | ÷ off (req/s) | server CPU ÷ off |",
             "|---|---:|---:|---:|---:|"]
    off = next(iter(med.values()))
    for name, m in med.items():
        if "failed" in m:
            lines.append(f"| {name} | failed: {m['failed'][:80]} | | | |")
            continue
        lines.append(f"| {name} | {m['rps']:,.0f} <sub>({m['rps_min']:,.0f}–{m['rps_max']:,.0f})</sub> | "
                     f"{m['cpu_us']:.1f} | {m['rps'] / off['rps']:.2f}× | {m['cpu_us'] / off['cpu_us']:.2f}× |")
    return lines


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- part 1: HTTP


def run_http(args: argparse.Namespace) -> dict[str, Any]:
    servers: dict[str, ServerProcess] = {}
    commands: dict[str, str] = {}
    skipped: dict[str, str] = {}
    specs: list[tuple[str, list[str], tuple[str, ...], bool]] = [
        ("wsserve", wsserve_cmd(), ("predict", "infer"), False),
        ("fastapi", [PY, "benchmarks/peers/fastapi_http_server.py", "--port", "0"], ("predict", "infer"), False),
    ]
    if args.kserve_python:
        specs.append(("kserve", [args.kserve_python, "benchmarks/peers/kserve_server.py", "--port", "0"], ("infer",), True))
    else:
        skipped["kserve"] = "not run: no --kserve-python given"
    try:
        for name, cmd, _, poll in specs:
            commands[name] = " ".join("python" if c == PY else c for c in cmd)
            try:
                servers[name] = start_command(cmd)
                if poll:
                    wait_ready(http_url(servers[name]))
                _log(f"started {name} at {servers[name].url}")
            except (RuntimeError, OSError) as exc:
                skipped[name] = str(exc).strip().splitlines()[-1][:300]
                servers.pop(name, None)
                _log(f"SKIPPED {name}: {exc}")
        cells = [(name, route) for name, _, routes, _ in specs if name in servers for route in routes]
        # Same answers everywhere (the peers serve the same weights).
        reference = {route: _outputs(_post(http_url(servers["wsserve"]) + path, _body(lua)))
                     for route, (lua, path) in ROUTES.items()}
        for name, route in cells:
            lua, path = ROUTES[route]
            got = _outputs(_post(http_url(servers[name]) + path, _body(lua)))
            diff = max(abs(a - b) for a, b in zip(got, reference[route], strict=True))
            if diff > 1e-6:
                raise SystemExit(f"{name} {route}: answers differ from wsserve's by {diff}")
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.reps):
            for name, route in cells:
                run_wrk(servers[name], route, args.connections, args.warmup)
                result = run_wrk(servers[name], route, args.connections, args.duration)
                runs.setdefault(f"{name}|{route}", []).append(result)
                brief = result.get("failed") or (f"{result['rps']:>9,.0f} req/s  {result['cpu_us']:6.1f} us CPU/req  "
                                                 f"p50 {result['p50']:.2f}  p99 {result['p99']:.2f} ms  "
                                                 f"non-2xx {result['non2xx']}")
                _log(f"[rep {rep + 1}/{args.reps}] {name:<8} {route:<8} {brief}")
    finally:
        for s in servers.values():
            s.stop()
    return {"summary": {k: median_of(v) for k, v in runs.items()}, "runs": runs, "commands": commands,
            "skipped": skipped}


# --------------------------------------------------------------------------- part 2: WebSocket before/after


#: Offered load of the fixed-rate WebSocket comparison (requests/s, well under either server's capacity).
FIXED_RATE = 4000


def run_loadtest(server: ServerProcess, args: argparse.Namespace, rate: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        load = ["--rate", str(rate)] if rate else ["-k", "1"]
        cmd = [PY, "-m", "wsserve.loadtest", server.url, "-c", str(args.connections), *load, "--model", "mlp",
               "-d", f"{args.duration:g}", "-w", f"{args.warmup:g}", "-q", "--json", str(out)]
        cpu0 = server.cpu_seconds()
        proc = subprocess.run(cmd, cwd=ROOT, env=bench_env(), capture_output=True, text=True,
                              timeout=args.duration + args.warmup + 90)
        cpu = server.cpu_seconds() - cpu0  # warm-up included, as its requests are
        if proc.returncode not in (0, 3) or not out.exists():
            return {"failed": (proc.stderr or proc.stdout).strip()[-500:]}
        rep = json.loads(out.read_text())
    lat = rep["latency_ms"]
    served = rep["requests"]["ok"] * (args.duration + args.warmup) / args.duration  # the warm-up's share, estimated
    return {"rps": rep["throughput"]["achieved_rps"], "cpu_us": cpu / max(1.0, served) * 1e6, "p50": lat["p50"],
            "p90": lat["p90"], "p99": lat["p99"], "non2xx": rep["requests"]["sent"] - rep["requests"]["ok"],
            "socket_errors": ""}


#: The connection core's predict path in-process (no socket, no worker): receive a single-row ``predict``
#: for a 32-wide model, then hand its job the result.  Runs against whichever checkout is on PYTHONPATH,
#: so it only uses the API both sides have.  Prints the mean microseconds per message of 7 timed blocks.
CORE_SNIPPET = r"""
import json, time
import numpy as np, orjson
from wsserve.auth import KeyRegistry
from wsserve.config import ServerConfig
from wsserve.connection import Connection, ConnectionContext, Shared
from wsserve.metrics import Metrics
from wsserve.pool import ModelEntry

class IO:
    def send(self, frame): pass
    def close(self, code, reason): pass

class Worker:
    pending = None
    def submit(self, sink, *, priority=0, deadline=None):
        self.pending = sink
        return object()
    def cancel(self, item): pass

class Pool:
    models_json = b"[]"
    def __init__(self, entry): self.entry = entry
    def lookup(self, name, version=None): return self.entry
    def knows(self, name): return True

worker = Worker()
entry = ModelEntry(name="mlp", version="1", kind="predict", model=None, worker=worker, input_width=32)
try:  # since the model repository, inputs go through the entry's prepare (mlp: the float-rows fast path)
    from wsserve.pool import _float_rows
    entry.prepare = _float_rows(32)
except ImportError:  # a base from before the repository
    pass
ctx = ConnectionContext(config=ServerConfig(), models=Pool(entry), metrics=Metrics(version="x", read_state=dict),
                        keys=KeyRegistry([]), shared=Shared(), hello=b"{}", clock=time.monotonic)
conn = Connection(ctx, IO(), address="127.0.0.1", key=None, now=time.monotonic())
msg = orjson.dumps({"type": "predict", "id": 1, "model": "mlp", "inputs": [[0.5] * 32]})
out = np.zeros((1, 10))
def one():
    conn.receive(msg, False, 1.0)
    worker.pending.on_rows(0, out, 1, 0.0, 0.0)
for _ in range(3000):
    one()
n, times = 20000, []
for _ in range(7):
    t = time.perf_counter()
    for _ in range(n):
        one()
    times.append((time.perf_counter() - t) / n * 1e6)
print(json.dumps(times))
"""


def run_core(base: Path, rounds: int) -> dict[str, Any]:
    """In-process connection-core cost, base and head interleaved: the fastest block of each round."""
    best: dict[str, list[float]] = {"base": [], "head": []}
    for r in range(rounds):
        for name, root in (("base", base), ("head", ROOT)):
            proc = subprocess.run([PY, "-c", CORE_SNIPPET], cwd=root, env=bench_env(root), capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode != 0:
                return {"failed": proc.stderr.strip()[-500:]}
            best[name].append(min(json.loads(proc.stdout)))
            _log(f"[round {r + 1}/{rounds}] core {name:<5} {best[name][-1]:.2f} us/message")
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
            for name, v in best.items()}


def _commit(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"


def run_ws(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.ws_against).resolve()
    servers = {}
    try:
        servers["head"] = start_command(wsserve_cmd())
        servers["base"] = start_command(wsserve_cmd(), root=base)
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.reps):
            for name in ("base", "head"):
                result = run_loadtest(servers[name], args)
                runs.setdefault(name, []).append(result)
                fixed = run_loadtest(servers[name], args, rate=FIXED_RATE)
                runs.setdefault(f"{name}@rate", []).append(fixed)
                brief = result.get("failed") or (f"{result['rps']:>9,.0f} req/s  {result['cpu_us']:6.1f} us CPU/req  "
                                                 f"p50 {result['p50']:.2f}  p99 {result['p99']:.2f} ms")
                at_rate = fixed.get("failed") or f"at {FIXED_RATE}/s: {fixed['cpu_us']:6.1f} us CPU/req"
                _log(f"[rep {rep + 1}/{args.reps}] websocket {name:<5} {brief}; {at_rate}")
    finally:
        for s in servers.values():
            s.stop()
    return {"summary": {k: median_of(v) for k, v in runs.items()}, "runs": runs,
            "commits": {"base": _commit(base), "head": args.commit}, "core": run_core(base, max(12, args.reps))}


# --------------------------------------------------------------------------- report


def _cell(s: dict[str, Any] | None) -> str:
    if not s:
        return "—"
    if "failed" in s:
        return "failed"
    return f"{s['rps']:,.0f} <sub>({s['rps_min']:,.0f}–{s['rps_max']:,.0f})</sub>"


def _cpu(s: dict[str, Any] | None) -> str:
    if not s or "failed" in s:
        return "—"
    return f"{s['cpu_us']:.0f}"


def _lat(s: dict[str, Any] | None) -> str:
    if not s or "failed" in s:
        return "—"
    return f"{s['p50']:.2f} / {s['p99']:.2f}"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, target: float) -> str:
    if not a or not b or "failed" in a or "failed" in b:
        return "—"
    r = a["rps"] / b["rps"]
    return f"{r:.2f}× {'✅' if r >= target else '❌'}"


def render(http: dict[str, Any] | None, ws: dict[str, Any] | None, args: argparse.Namespace, started: str,
           seconds: float, load: str, commit: str) -> str:
    lines = ["## HTTP: /predict and OIP v2 infer vs FastAPI and KServe; WebSocket before/after", ""]
    cmd = f"python benchmarks/bench_http.py --reps {args.reps} --duration {args.duration:g} --warmup {args.warmup:g}"
    if args.kserve_python:
        cmd += f" --kserve-python {args.kserve_python}"
    if args.ws_against:
        cmd += f" --ws-against {args.ws_against}"
    if args.only != "http,ws":
        cmd += f" --only {args.only}"
    lines += [f"Measured {started} by `{cmd}` in {seconds:.0f} s; load average at the start {load} "
              f"(wsserve {commit}).", ""]
    if http is not None:
        s = http["summary"]
        lines += [
            f"`mlp`, one row per request (the same JSON body for every server: `benchmarks/wrk/*.lua`), "
            f"`wrk -t1 -c{args.connections} -d{args.duration:g}s --latency -s benchmarks/wrk/<route>_mlp.lua URL`: "
            f"{args.connections} keep-alive connections, one request in flight on each; {args.reps} interleaved "
            f"repetitions of {args.duration:g} s after a {args.warmup:g} s warm-up each; median (range). Every "
            "server is one process on uvloop with `OPENBLAS_NUM_THREADS=1`; its answer to the body was checked "
            "against wsserve's before measuring.",
            "",
            "| server | `POST /predict` req/s | `POST /v2/models/mlp/infer` req/s | server CPU µs/request (predict / infer) | p50 / p99 ms (predict) | p50 / p99 ms (infer) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        names = {"wsserve": "wsserve", "fastapi": "FastAPI/uvicorn", "kserve": "KServe ModelServer"}
        for name, label in names.items():
            if name in http["skipped"]:
                lines.append(f"| {label} | {http['skipped'][name]} | | | | |")
                continue
            p, i = s.get(f"{name}|predict"), s.get(f"{name}|infer")
            lines.append(f"| {label} | {_cell(p)} | {_cell(i)} | {_cpu(p)} / {_cpu(i)} | {_lat(p)} | {_lat(i)} |")
        lines += ["", "Server CPU per request is the server process's CPU time (all threads, user + system, from "
                  "`/proc`) over the requests it answered: it moves far less with other load on the machine than "
                  "req/s does.", "", "| comparison | ratio | target |", "|---|---:|---|"]
        w_p, w_i = s.get("wsserve|predict"), s.get("wsserve|infer")
        lines.append(f"| wsserve `/predict` ÷ FastAPI `/predict` | {_ratio(w_p, s.get('fastapi|predict'), 1.5)} | ≥ 1.5× |")
        lines.append(f"| wsserve OIP infer ÷ FastAPI OIP infer | {_ratio(w_i, s.get('fastapi|infer'), 1.5)} | ≥ 1.5× |")
        lines.append(f"| wsserve OIP infer ÷ KServe OIP infer | {_ratio(w_i, s.get('kserve|infer'), 3.0)} | ≥ 3× |")
        errors = {k: (v.get("non2xx"), v.get("socket_errors")) for k, v in s.items()
                  if v.get("non2xx") or v.get("socket_errors")}
        lines += ["", f"Non-2xx answers / socket errors during the runs: {errors or 'none'}.", ""]
        lines += ["Servers: " + "; ".join(f"{k}: `{v}`" for k, v in http["commands"].items()) + ".", ""]
    if ws is not None:
        s = ws["summary"]
        c = ws["commits"]
        lines += [
            f"WebSocket `predict` on `mlp`, single row, `python -m wsserve.loadtest ws://… -c {args.connections} -k 1 "
            f"--model mlp -d {args.duration:g} -w {args.warmup:g}` against this commit ({c['head']}) and the one "
            f"before the HTTP layer ({c['base']}, `--ws-against {args.ws_against}`), {args.reps} interleaved "
            "repetitions, median (range):",
            "",
            "| server | req/s | server CPU µs/request | p50 / p99 ms |",
            "|---|---:|---:|---:|",
            f"| before ({c['base']}) | {_cell(s.get('base'))} | {_cpu(s.get('base'))} | {_lat(s.get('base'))} |",
            f"| with HTTP ({c['head']}) | {_cell(s.get('head'))} | {_cpu(s.get('head'))} | {_lat(s.get('head'))} |",
            "",
            f"Throughput ratio with ÷ before: {_ratio(s.get('head'), s.get('base'), 0.95)} (target ≥ 0.95×).",
        ]
        b, h = s.get("base"), s.get("head")
        if b and h and "failed" not in b and "failed" not in h:
            lines.append(f"Server CPU per request in these closed-loop runs, before ÷ with: {b['cpu_us'] / h['cpu_us']:.2f}× "
                         "(with batching it depends on the batch sizes the client's timing produces).")
        b, h = s.get("base@rate"), s.get("head@rate")
        if b and h and "failed" not in b and "failed" not in h:
            lines.append(f"At a fixed offered load (`--rate {FIXED_RATE}` instead of `-k 1`, same connections, so "
                         f"both see the same arrivals), server CPU per request, median: before {b['cpu_us']:.0f} µs, "
                         f"with HTTP {h['cpu_us']:.0f} µs: {b['cpu_us'] / h['cpu_us']:.2f}×.")
        core = ws["core"]
        if "failed" not in core:
            cb, ch = core["base"], core["head"]
            lines += [
                "",
                "The connection core's predict path in-process (`CORE_SNIPPET` in this script: a sans-I/O "
                "`Connection` receives a single-row `predict` for a 32-wide model and its job gets the result; "
                f"no socket, no model), {cb['n']} processes per side interleaved, each timing 7 blocks of 20,000 "
                "messages and keeping its fastest; the fastest over all processes (noise only adds time, so "
                "the minimum is the estimate of the code's own cost), then the median and range of the "
                f"per-process figures: before **{cb['min']:.2f} µs/message** (median {cb['median']:.2f}, "
                f"{cb['min']:.2f}–{cb['max']:.2f}), with HTTP **{ch['min']:.2f} µs** (median {ch['median']:.2f}, "
                f"{ch['min']:.2f}–{ch['max']:.2f}): {cb['min'] / ch['min']:.2f}× the speed. The core now calls the "
                "shared `Admission` (two method calls per predict) where it had the checks inline.",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--kserve-python", help="python of a virtualenv with kserve installed")
    ap.add_argument("--ws-against", help="a checkout of the commit before the HTTP layer (WebSocket comparison)")
    ap.add_argument("--only", default="http,ws", help="parts to run: http, ws (comma-separated)")
    ap.add_argument("--out", type=Path, default=RESULTS / "http.md")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if "http" in parts and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    args.commit = _commit(ROOT)  # what the servers run (read before they start)
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True).stdout.strip():
        args.commit += "+changes"
    load = " / ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    t0 = time.monotonic()
    http = run_http(args) if "http" in parts else None
    ws = run_ws(args) if "ws" in parts and args.ws_against else None
    text = render(http, ws, args, started, time.monotonic() - t0, load, args.commit)
    args.out.write_text(text + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps(
        {"machine": describe(), "http": http, "ws": ws, "args": vars(args) | {"out": str(args.out)}}, indent=1,
        default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
