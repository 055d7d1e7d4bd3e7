"""Your own models: wsserve's ONNX backend vs a naive per-message ONNX server, ONNX vs numpy, swaps.

``python -m benchmarks.bench_repository`` (needs the ``onnx`` extra) builds three MLPs with the
``onnx`` helper API from random weights — ``mlp``'s shape 32→256→256→10, 256→1024→1024→10
(1.3M parameters) and 1024→4096→4096→10 (21M) — into a model repository, plus the first one's
weights as a ``model.npz`` of the built-in ``mlp`` architecture, and measures:

1. **compute**: ONNX Runtime (one thread) and the numpy backend per call at batch 1 and per row
   at batch 16 and 64, in this process (``RepositoryModel.predict``, process CPU time, medians of
   interleaved runs); the two backends' outputs are checked equal first;
2. **peers**: ``wsserve serve --models none --model-repository REPO`` vs
   ``benchmarks/peers/naive_onnx_server.py`` (the same model.onnx files, one ``session.run`` per
   message on the event loop), 64 connections, single-row closed-loop ``predict`` through
   ``wsserve loadtest``, repetitions interleaved across servers and models, medians;
   the numpy-backend copy of ``mlp-s`` runs in the same rotation;
3. **swaps**: a ``--reload`` server with model ``swap`` (version 1, 256→1024→1024→10): p50/p99 of
   the same 64-connection load with and without version 2 being moved into the model directory
   and out again (one rename each) every second, interleaved; a side connection records which
   version answered.

Writes ``benchmarks/results/repository.md`` and ``repository.json``.  ``--quick`` is a smoke run;
``--from-json benchmarks/results/repository.json --analysis NOTES.md`` re-renders the fragment from
the saved figures with hand-written findings appended (nothing is measured again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/bench_repository.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.machine import describe  # noqa: E402
from benchmarks.onnx_mlp import SHAPES, mlp_weights, parameters, write_npz, write_onnx  # noqa: E402
from benchmarks.run import PY, Plan, measure, median_of, shown  # noqa: E402
from benchmarks.servers import ROOT, start_command, start_wsserve  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONNECTIONS = 64
#: The 1.3M- and 21M-parameter targets of issue #12 (wsserve ÷ naive at 64 connections).
TARGETS = {"mlp-m": 1.8, "mlp-l": 5.0}
SWAP_SHAPE = SHAPES["mlp-m"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- models


def build_repository(repo: Path) -> None:
    """REPO/<name>/1/model.onnx for every shape, REPO/mlp-npz/1/model.npz = mlp-s's weights."""
    for name, dims in SHAPES.items():
        weights = mlp_weights(dims, seed=1)
        write_onnx(repo / name / "1", weights)
        if name == "mlp-s":
            write_npz(repo / "mlp-npz" / "1", weights)


def build_swap_repository(repo: Path) -> Path:
    """REPO/swap/1/model.onnx and a staged version 2 (``REPO/swap/.2.staged``, hidden: ignored)."""
    write_onnx(repo / "swap" / "1", mlp_weights(SWAP_SHAPE, seed=1))
    staged = repo / "swap" / ".2.staged"
    write_onnx(staged, mlp_weights(SWAP_SHAPE, seed=2))
    return staged


# --------------------------------------------------------------------------- 1. compute


def _cost_us(fn: Any, batch: np.ndarray, repeat: int) -> list[float]:
    fn(batch)
    number = 1
    while True:  # calibrate: each run at least 0.1 s of CPU
        t = time.process_time()
        for _ in range(number):
            fn(batch)
        if time.process_time() - t >= 0.1:
            break
        number *= 2
    runs = []
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(number):
            fn(batch)
        runs.append((time.process_time() - t) / number * 1e6)
    return runs


def compute(repo: Path, repeat: int) -> dict[str, Any]:
    """Per-call and per-row cost of each model's ``predict`` at batch 1, 16, 64 (µs, CPU time)."""
    from wsserve.repository import ModelConfig, load_version

    models = {name: load_version(name, 1, repo / name / "1", ModelConfig()) for name in (*SHAPES, "mlp-npz")}
    rng = np.random.default_rng(0)
    x = rng.random((64, SHAPES["mlp-s"][0])).astype(np.float32)
    onnx_y, npz_y = models["mlp-s"].predict(x), models["mlp-npz"].predict(x)
    agree = float(np.abs(onnx_y - npz_y).max())
    assert agree < 1e-5, f"the ONNX and numpy backends disagree by {agree}"
    out: dict[str, Any] = {"max_abs_difference_onnx_vs_npz": agree, "models": {}}
    for name, model in models.items():
        d = model.inputs[0].shape[0]
        runs: dict[int, list[float]] = {1: [], 16: [], 64: []}
        for _ in range(max(1, repeat // 3)):  # interleave batch sizes across the whole run
            for n in runs:
                runs[n] += _cost_us(model.predict, rng.random((n, d)).astype(np.float32), 3)
        out["models"][name] = {
            "backend": model.backend,
            "parameters": model.info.parameters,
            "batch1_us": statistics.median(runs[1]),
            "batch16_us_per_row": statistics.median(runs[16]) / 16,
            "batch64_us_per_row": statistics.median(runs[64]) / 64,
        }
        _log(f"compute {name:<8} {out['models'][name]}")
        model.close()
    return out


# --------------------------------------------------------------------------- 2. peers


def peers(repo: Path, plan: Plan) -> dict[str, Any]:
    wsserve_flags = ["--models", "none", "--model-repository", str(repo), "--log-level", "warning"]
    naive_cmd = [PY, "benchmarks/peers/naive_onnx_server.py", "--port", "0",
                 *[arg for name in SHAPES for arg in ("--model", f"{name}={repo / name / '1' / 'model.onnx'}")]]
    cells = [(server, model) for model in SHAPES for server in ("naive", "wsserve")] + [("wsserve", "mlp-npz")]
    servers = {"wsserve": start_wsserve(*wsserve_flags), "naive": start_command(naive_cmd)}
    runs: dict[str, list[dict[str, Any]]] = {}
    load_before = _load()
    try:
        for rep in range(plan.reps):
            for server, model in cells:
                result = measure(servers[server], model=model, connections=CONNECTIONS, plan=plan)
                runs.setdefault(f"{server}|{model}", []).append(result)
                brief = result.get("failed") or (f"{result['rps']:>9,.0f} req/s  p50 {result['p50']:.2f}  "
                                                 f"p99 {result['p99']:.2f} ms  cpu {result['server_cpu']}/{result['client_cpu']}")
                _log(f"[rep {rep + 1}/{plan.reps}] {server:<8} {model:<8} {brief}")
    finally:
        for s in servers.values():
            s.stop()
    return {
        "commands": {"wsserve": "python -m wsserve serve --host 127.0.0.1 --port 0 " + " ".join(wsserve_flags[:3])
                     + " REPO --log-level warning",
                     "naive": shown(naive_cmd).replace(str(repo), "REPO")},
        "load_before": load_before, "load_after": _load(),
        "summary": {key: median_of(rs) for key, rs in runs.items()},
        "runs": runs,
    }


# --------------------------------------------------------------------------- 3. swaps


class Swapper(threading.Thread):
    """Moves version 2 into the model directory and out again, one rename each, every ``period_s``."""

    def __init__(self, staged: Path, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.staged, self.live = staged, staged.parent / "2"
        self.period_s = period_s
        self.stop = threading.Event()
        self.renames = 0

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            src, dst = (self.staged, self.live) if self.staged.exists() else (self.live, self.staged)
            os.rename(src, dst)
            self.renames += 1

    def finish(self) -> None:
        self.stop.set()
        self.join()
        if self.live.exists():
            os.rename(self.live, self.staged)


class VersionProbe(threading.Thread):
    """One more connection: a single-row predict every 50 ms, recording which version answered."""

    def __init__(self, url: str, width: int) -> None:
        super().__init__(daemon=True)
        self.url, self.width = url, width
        self.stop = threading.Event()
        self.versions: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        from websockets.sync.client import connect

        body = {"type": "predict", "id": 0, "model": "swap", "inputs": [[0.5] * self.width]}
        with connect(self.url, compression=None, max_size=None) as ws:
            ws.recv()  # hello
            while not self.stop.wait(0.05):
                body["id"] += 1
                ws.send(json.dumps(body))
                reply = json.loads(ws.recv())
                if reply.get("type") == "result":
                    self.versions.append(reply["version"])
                else:
                    self.errors.append(f"{reply.get('code')}: {reply.get('message')}")


def swaps(repo: Path, staged: Path, plan: Plan) -> dict[str, Any]:
    server = start_wsserve("--models", "none", "--model-repository", str(repo), "--reload")
    runs: dict[str, list[dict[str, Any]]] = {"steady": [], "swapping": []}
    probes: list[dict[str, Any]] = []
    load_before = _load()
    try:
        for rep in range(plan.reps):
            for kind in ("steady", "swapping") if rep % 2 == 0 else ("swapping", "steady"):  # no order bias
                probe = VersionProbe(server.url, SWAP_SHAPE[0])
                probe.start()
                swapper = Swapper(staged) if kind == "swapping" else None
                if swapper is not None:
                    swapper.start()
                result = measure(server, model="swap", connections=CONNECTIONS, plan=plan)
                if swapper is not None:
                    swapper.finish()
                probe.stop.set()
                probe.join()
                changes = sum(1 for a, b in zip(probe.versions, probe.versions[1:], strict=False) if a != b)
                result.update(renames=swapper.renames if swapper else 0, probe_replies=len(probe.versions),
                              probe_versions=sorted(set(probe.versions)), probe_changes=changes,
                              probe_errors=probe.errors[:5])
                runs[kind].append(result)
                probes.append({"kind": kind, "versions": "".join(probe.versions)})
                _log(f"[rep {rep + 1}/{plan.reps}] {kind:<9} " + (result.get("failed") or (
                    f"{result['rps']:>8,.0f} req/s  p50 {result['p50']:.2f}  p99 {result['p99']:.2f}  "
                    f"max {result['max']:.1f} ms  errors {result['errors']}  renames {result['renames']}  "
                    f"default changed {changes}x")))
                time.sleep(2.5)  # let the last rename be noticed and settle before the next run
    finally:
        server.stop()
    log = server.stderr_text()
    return {
        "plan": {"reps": plan.reps, "duration_s": plan.duration_s, "warmup_s": plan.warmup_s},
        "command": "python -m wsserve serve --host 127.0.0.1 --port 0 --models none --model-repository REPO --reload",
        "load_before": load_before, "load_after": _load(),
        "summary": {kind: median_of(rs) for kind, rs in runs.items()},
        "runs": runs,
        "loads": len(re.findall(r"serving model 'swap' version 2", log)),
        "unloads": len(re.findall(r"unloaded model 'swap' version 2", log)),
        "failed_lines": [line for line in log.splitlines() if "failed" in line or " ERROR " in line][:10],
    }


# --------------------------------------------------------------------------- report


def _f(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def paired_ratios(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over repetitions of ``b ÷ a`` for runs measured side by side (rep i of each):
    ``rps`` (throughput) and ``per_cpu`` (requests per second of server CPU, which a busy machine
    distorts less: a server starved of CPU serves fewer requests but not fewer per CPU-second)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=False) if "rps" in x and "rps" in y]
    if not pairs:
        return {}
    return {
        "rps": statistics.median(y["rps"] / x["rps"] for x, y in pairs),
        "per_cpu": statistics.median((y["rps"] / max(y["server_cpu"], 1e-3)) / (x["rps"] / max(x["server_cpu"], 1e-3))
                                     for x, y in pairs),
        "min": min(y["rps"] / x["rps"] for x, y in pairs),
        "max": max(y["rps"] / x["rps"] for x, y in pairs),
    }


def render(report: dict[str, Any]) -> str:
    plan, comp, peer, swap = report["plan"], report["compute"], report["peers"], report["swaps"]
    m = report["machine"]
    lines = [
        "## Your own models: ONNX MLPs, wsserve vs a naive per-message server",
        "",
        f"Measured {report['started_at']} by `{report['command']}` in {report['elapsed_s']:.0f} s on "
        f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores, shared with other work: load average "
        f"{peer['load_before']} before the peer runs, {peer['load_after']} after), wsserve {m.get('commit', '?')}, "
        f"onnxruntime {report['onnxruntime']}. Three MLPs built with the `onnx` helper API from random weights "
        "(`benchmarks/onnx_mlp.py`: Gemm/Relu layers, softmax output, float32); every server is one process "
        "with one BLAS and one ONNX Runtime thread; the load-test client is one separate process.",
        "",
        "### Compute alone (in process)",
        "",
        f"`RepositoryModel.predict` (what the server calls), median of {plan['compute_repeat']} interleaved runs, "
        "process CPU time. The ONNX and numpy backends of `mlp-s` hold the same weights "
        f"(outputs differ by at most {comp['max_abs_difference_onnx_vs_npz']:.1e}).",
        "",
        "| model | backend | parameters | batch 1, µs/call | batch 16, µs/row | batch 64, µs/row | batch 1 ÷ batch 64 per row |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in comp["models"].items():
        shape = "→".join(map(str, SHAPES.get(name, SHAPES["mlp-s"])))
        lines.append(f"| {name} ({shape}) | {c['backend']} | {_f(c['parameters'])} | {_f(c['batch1_us'], 1)} | "
                     f"{_f(c['batch16_us_per_row'], 2)} | {_f(c['batch64_us_per_row'], 2)} | "
                     f"{c['batch1_us'] / c['batch64_us_per_row']:.1f}× |")
    s = peer["summary"]
    lines += [
        "",
        f"### Served: {CONNECTIONS} connections, single-row `predict`",
        "",
        f"Closed loop, one request in flight per connection, {plan['duration_s']:g} s after {plan['warmup_s']:g} s "
        f"of warm-up, {plan['reps']} repetitions interleaved across servers and models, medians (range in small "
        "print). Commands:",
        "",
        f"- wsserve: `{peer['commands']['wsserve']}`",
        f"- naive: `{peer['commands']['naive']}`",
        f"- load: `python -m wsserve.loadtest URL -c {CONNECTIONS} -k 1 -d {plan['duration_s']:g} "
        f"-w {plan['warmup_s']:g} --model MODEL -q --json FILE`",
        "",
        "*wsserve ÷ naive* is the median over repetitions of the ratio of runs measured one after the "
        "other (range in small print); *per server CPU-second* divides each run's throughput by the cores "
        "its server was busy, which other processes on a shared machine distort less.",
        "",
        "| model | parameters | naive req/s | wsserve req/s | wsserve ÷ naive | target | per server CPU-second | naive p50 / p99 ms | wsserve p50 / p99 ms | busy cores server / client (naive; wsserve) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    ratios = {}
    for name, dims in SHAPES.items():
        n, w = s.get(f"naive|{name}", {}), s.get(f"wsserve|{name}", {})
        pr = paired_ratios(peer.get("runs", {}).get(f"naive|{name}", []), peer.get("runs", {}).get(f"wsserve|{name}", []))
        if "rps" not in n or "rps" not in w or not pr:
            lines.append(f"| {name} | {_f(parameters(dims))} | {n.get('failed', '—')} | {w.get('failed', '—')} | | | | | | |")
            continue
        ratio = pr["rps"]
        ratios[name] = ratio
        target = TARGETS.get(name)
        verdict = f"≥ {target}× {'✅' if ratio >= target else '❌'}" if target else "report"
        lines.append(
            f"| {name} ({'→'.join(map(str, dims))}) | {_f(parameters(dims))} | {_f(n['rps'])} <sub>({_f(n['rps_min'])}–{_f(n['rps_max'])})</sub> | "
            f"{_f(w['rps'])} <sub>({_f(w['rps_min'])}–{_f(w['rps_max'])})</sub> | **{ratio:.2f}×** "
            f"<sub>({pr['min']:.2f}–{pr['max']:.2f})</sub> | {verdict} | {pr['per_cpu']:.2f}× | "
            f"{n['p50']:.2f} / {n['p99']:.2f} | {w['p50']:.2f} / {w['p99']:.2f} | "
            f"{n['server_cpu']:.2f} / {n['client_cpu']:.2f}; {w['server_cpu']:.2f} / {w['client_cpu']:.2f} |")
    errors = {k: v["errors"] for k, v in s.items() if v.get("errors")}
    lines += ["", f"Errors: {errors or 'none'}."]
    o, z = s.get("wsserve|mlp-s", {}), s.get("wsserve|mlp-npz", {})
    onnx_npz = paired_ratios(peer.get("runs", {}).get("wsserve|mlp-npz", []), peer.get("runs", {}).get("wsserve|mlp-s", []))
    if "rps" in o and "rps" in z and onnx_npz:
        lines += [
            "",
            "### ONNX vs numpy backend, same weights (`mlp-s`, served by wsserve)",
            "",
            "| backend | req/s | p50 / p99 ms | server busy cores |",
            "|---|---:|---:|---:|",
            f"| onnx (model.onnx) | {_f(o['rps'])} | {o['p50']:.2f} / {o['p99']:.2f} | {o['server_cpu']:.2f} |",
            f"| numpy (model.npz, built-in `mlp` architecture) | {_f(z['rps'])} | {z['p50']:.2f} / {z['p99']:.2f} | {z['server_cpu']:.2f} |",
            "",
            f"ONNX ÷ numpy throughput: {onnx_npz['rps']:.2f}× <sub>({onnx_npz['min']:.2f}–{onnx_npz['max']:.2f})</sub>, "
            f"per server CPU-second {onnx_npz['per_cpu']:.2f}× (medians of paired runs).",
        ]
    st, sw = swap["summary"].get("steady", {}), swap["summary"].get("swapping", {})
    if "p99" in st and "p99" in sw:
        sp = swap["plan"]
        renames = [r.get("renames", 0) for r in swap["runs"]["swapping"]]
        changes = [r.get("probe_changes", 0) for r in swap["runs"]["swapping"]]
        lines += [
            "",
            "### Latency during version swaps",
            "",
            f"`{swap['command']}`; model `swap` = {'→'.join(map(str, SWAP_SHAPE))} (ONNX). While the same load runs "
            f"({CONNECTIONS} connections, single-row, {sp['duration_s']:g} s + {sp['warmup_s']:g} s warm-up), "
            "version 2 is renamed into `REPO/swap/2` and out again every second (each rename is a swap: loaded, "
            "warmed up and made the default; or retired, drained and unloaded). Runs interleaved with steady ones "
            f"(the order alternating), {sp['reps']} each, medians. Load average {swap['load_before']} before, {swap['load_after']} after.",
            "",
            "| run | req/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
            "|---|---:|---:|---:|---:|---:|---|",
            f"| steady | {_f(st['rps'])} | {st['p50']:.2f} | {st['p90']:.2f} | {st['p99']:.2f} | {st['max']:.1f} | {st['errors'] or 0} |",
            f"| swapping | {_f(sw['rps'])} | {sw['p50']:.2f} | {sw['p90']:.2f} | {sw['p99']:.2f} | {sw['max']:.1f} | {sw['errors'] or 0} |",
            "",
            f"p99 swapping ÷ steady: {sw['p99'] / st['p99']:.2f}×. Renames per swapping run: {renames}; the side "
            f"connection saw the default version change {changes} times per run (versions seen: "
            f"{sorted({v for r in swap['runs']['swapping'] for v in r.get('probe_versions', [])})}); the server "
            f"logged {swap['loads']} loads and {swap['unloads']} unloads of version 2 in all"
            + (f"; problems logged: {swap['failed_lines']}" if swap["failed_lines"] else ", and no failure") + ".",
        ]
    if report.get("analysis"):
        lines += ["", report["analysis"].strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--swap-duration", type=float, default=10.0)
    ap.add_argument("--swap-reps", type=int, default=3)
    ap.add_argument("--compute-repeat", type=int, default=9)
    ap.add_argument("--only", default="compute,peers,swaps", help="sections to run (comma-separated)")
    ap.add_argument("--quick", action="store_true", help="1 repetition of 1 s: a smoke run")
    ap.add_argument("--analysis", type=Path, help="markdown appended to the fragment (findings written by hand)")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: render the fragment again from a report this script wrote (with --analysis)")
    ap.add_argument("--out", type=Path, default=RESULTS / "repository.md")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        if args.analysis is not None:
            report["analysis"] = args.analysis.read_text()
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
        args.out.write_text(render(report))
        print(args.out.read_text())
        return 0
    if args.quick:
        args.reps, args.duration, args.warmup, args.swap_duration, args.swap_reps, args.compute_repeat = 1, 1.0, 0.5, 3.0, 1, 3
    only = set(args.only.split(","))
    import onnxruntime

    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    plan = Plan(reps=args.reps, duration_s=args.duration, warmup_s=args.warmup, connections=(CONNECTIONS,))
    swap_plan = Plan(reps=args.swap_reps, duration_s=args.swap_duration, warmup_s=args.warmup, connections=(CONNECTIONS,))
    machine = describe()
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.bench_repository" + (" --quick" if args.quick else ""),
        "machine": {"cpu": machine.get("cpu_model") or machine.get("cpu"), "cores": os.cpu_count(),
                    "commit": machine.get("git_commit") or machine.get("commit")},
        "onnxruntime": onnxruntime.__version__,
        "plan": {"reps": args.reps, "duration_s": args.duration, "warmup_s": args.warmup, "compute_repeat": args.compute_repeat},
        "compute": {"models": {}, "max_abs_difference_onnx_vs_npz": float("nan")},
        "peers": {"summary": {}, "load_before": "", "load_after": "", "commands": {"wsserve": "", "naive": ""}},
        "swaps": {"summary": {}, "runs": {"swapping": []}},
    }
    with tempfile.TemporaryDirectory(prefix="wsserve-bench-repo-") as tmp:
        repo, swap_repo = Path(tmp) / "repo", Path(tmp) / "swap-repo"
        build_repository(repo)
        staged = build_swap_repository(swap_repo)
        if "compute" in only:
            report["compute"] = compute(repo, args.compute_repeat)
        if "peers" in only:
            report["peers"] = peers(repo, plan)
        if "swaps" in only:
            report["swaps"] = swaps(swap_repo, staged, swap_plan)
    report["elapsed_s"] = time.monotonic() - t0
    if args.analysis is not None:
        report["analysis"] = args.analysis.read_text()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    args.out.write_text(render(report))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
