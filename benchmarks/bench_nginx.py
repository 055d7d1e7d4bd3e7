"""The cost of nginx in front: one wsserve directly vs deploy/nginx.conf in front of two.

Two wsserve processes (A, B) and Debian's nginx with ``deploy/nginx.conf`` (rewritten to
127.0.0.1 and temporary paths by ``tests/nginxproc.py``) on this machine. Per run, interleaved:

- ``direct``: ``wsserve loadtest`` against A alone;
- ``nginx``: the same load through nginx, whose ``least_conn`` spreads the connections over A and B.

Workloads: single-row ``predict`` on ``linear`` (closed loop, ``-c`` connections, 1 in flight
each) and ``generate`` on ``charlm`` (tokens/s). Medians over ``--runs``. On a 2-core machine
the load client, nginx and both servers share the cores, so the nginx column cannot show
scaling; it shows what the extra hop costs. Writes ``benchmarks/results/nginx.md``.

    python benchmarks/bench_nginx.py            # ~2 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, to_markdown  # noqa: E402
from benchmarks.servers import bench_env, start_wsserve  # noqa: E402
from tests.nginxproc import NGINX, NginxProcess  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "nginx.md"


def loadtest(url: str, workload: str, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "wsserve.loadtest", url, "-c", str(args.connections), "-k", "1",
               "-d", str(args.duration), "-w", "1", "-q", "--json", f.name]
        cmd += ["--workload", "generate", "--max-tokens", "64"] if workload == "generate" else ["--model", "linear"]
        subprocess.run(cmd, cwd=ROOT, env=bench_env(), check=True, timeout=args.duration + 120)
        return json.loads(Path(f.name).read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if NGINX is None:
        sys.exit("nginx is not installed (apt-get install -y nginx)")
    machine = describe()
    serve = ("--log-level", "warning", "--models", "linear,charlm")
    samples: dict[tuple[str, str], list[dict]] = {}
    a = start_wsserve(*serve)
    b = start_wsserve(*serve)
    try:
        ports = [a.port, b.port]
        with tempfile.TemporaryDirectory() as tmp, NginxProcess(Path(tmp), ports) as nginx:
            for run in range(args.runs):
                for workload in ("predict", "generate"):
                    for route, url in (("direct", a.url), ("nginx", nginx.url)):
                        rep = loadtest(url, workload, args)
                        assert rep["requests"]["errors"] == 0, rep["errors"]
                        samples.setdefault((workload, route), []).append(rep)
                        print(f"  run {run + 1}/{args.runs} {workload:8} {route:6} "
                              f"{rep['throughput']['achieved_rps']:,.0f} req/s "
                              f"p50 {rep['latency_ms']['p50']:.2f} ms", flush=True)
    finally:
        a.stop()
        b.stop()

    def med(key: tuple[str, str], f) -> float:
        return statistics.median(f(r) for r in samples[key])

    cmd = f"python benchmarks/bench_nginx.py --runs {args.runs} --duration {args.duration:g} --connections {args.connections}"
    lines = [
        "## Behind nginx (`deploy/nginx.conf`)",
        "",
        f"Command: `{cmd}`. Closed loop, {args.connections} connections, one request in flight each, "
        f"{args.duration:g} s measured after 1 s of warm-up, medians over {args.runs} interleaved runs. "
        "*direct*: `wsserve loadtest` to one wsserve process; *nginx*: the same load through nginx "
        "(Debian's package, `deploy/nginx.conf`) spreading the connections over two wsserve processes. "
        "Client, nginx and servers share this machine's cores.",
        "",
        to_markdown(machine),
        f"- Load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| workload | route | req/s | p50 ms | p99 ms | tokens/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for workload in ("predict", "generate"):
        for route in ("direct", "nginx"):
            key = (workload, route)
            tokens = "-"
            if workload == "generate":
                tokens = f"{med(key, lambda r: sum(w.get('tokens_per_s', 0) for w in r['workloads'].values())):,.0f}"
            lines.append(
                f"| {workload} | {route} | {med(key, lambda r: r['throughput']['achieved_rps']):,.0f} "
                f"| {med(key, lambda r: r['latency_ms']['p50']):.2f} | {med(key, lambda r: r['latency_ms']['p99']):.2f} "
                f"| {tokens} |")
    rps = {k: med(k, lambda r: r["throughput"]["achieved_rps"]) for k in samples}
    gen = rps[("generate", "nginx")] / rps[("generate", "direct")]
    p50 = {k: med(k, lambda r: r["latency_ms"]["p50"]) for k in samples}
    lines += [
        "",
        f"Reading: the extra hop adds {p50[('predict', 'nginx')] - p50[('predict', 'direct')]:.2f} ms to the "
        f"median single-row predict and the closed-loop rate is {rps[('predict', 'nginx')] / rps[('predict', 'direct')]:.2f}x "
        "the direct one, because nginx relays every frame twice and, with the second server, competes with the load "
        "client and the first server for the same two cores: a second server behind a proxy adds capacity only when "
        f"it has cores of its own (another host, or a bigger machine). Token streams: {gen:.2f}x the direct rate.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
