"""BLS bursts: how long one ``execute`` firing thousands of ``async_exec`` calls holds other clients.

    python benchmarks/bench_bls_burst.py --base /path/to/other/checkout   # ~1 min; writes results/bls_burst.md
    python benchmarks/bench_bls_burst.py --reps 1 --no-write                 # a quick look

The server (a child process, ``wsserve serve --models linear`` on a repository holding one Triton
Python model, ``fanout``, whose ``async def execute`` answers a request ``N`` by awaiting ``N``
``async_exec`` calls to the built-in ``linear`` at once, ``asyncio.gather``) gets one ``fanout``
request of ``--calls`` calls over HTTP, while another client on its own WebSocket connection sends
``ping`` frames one after another (the event loop answers them itself: a model queue's wait is not
in it).  Reported: that client's longest wait for an
answer while the burst ran (from its send to its answer), and the burst's own time.  With
``--base DIR`` the same runs against the server of another checkout (e.g. the commit before
:data:`wsserve.bls.BLS_STARTS_PER_TURN`), interleaved; the table gives medians of ``--reps``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from benchmarks.servers import start_command  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

FANOUT_PBTXT = """
backend: "python"
max_batch_size: 0
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "SUM" data_type: TYPE_FP64 dims: [ 1 ] } ]
"""
FANOUT_PY = """
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            calls = [pb_utils.InferenceRequest(model_name="linear", requested_output_names=[],
                                               inputs=[pb_utils.Tensor("input", np.full((1, 1), float(i)))]).async_exec()
                     for i in range(n)]
            responses = await asyncio.gather(*calls)
            bad = [r for r in responses if r.has_error()]
            if bad:
                out.append(pb_utils.InferenceResponse(error=bad[0].error()))
                continue
            total = sum(float(r.output_tensors()[0].as_numpy().sum()) for r in responses)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([total]))]))
        return out
"""


def write_repository(root: Path) -> None:
    (root / "fanout" / "1").mkdir(parents=True)
    (root / "fanout" / "config.pbtxt").write_text(FANOUT_PBTXT)
    (root / "fanout" / "1" / "model.py").write_text(textwrap.dedent(FANOUT_PY))


def fanout(http_url: str, calls: int) -> float:
    """One ``fanout`` request of ``calls`` calls over HTTP; its seconds."""
    import numpy as np
    import tritonclient.http as thttp

    client = thttp.InferenceServerClient(http_url.removeprefix("http://"), network_timeout=600)
    try:
        n = thttp.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([calls], np.int32))
        t0 = time.perf_counter()
        client.infer("fanout", [n])
        return time.perf_counter() - t0
    finally:
        client.close()


async def bystander(url: str, stop: threading.Event, started: threading.Event) -> float:
    """``ping`` frames one after another until ``stop`` (answered by the event loop itself, so the
    wait is the loop's, not a model queue's); the longest wait, seconds."""
    from wsserve_client import Client

    longest = 0.0
    async with Client(url) as client:
        await client.ping()
        started.set()
        while not stop.is_set():
            t0 = time.perf_counter()
            await client.ping()
            longest = max(longest, time.perf_counter() - t0)
    return longest


def one_run(server: ServerProcess, calls: int) -> tuple[float, float]:
    """(the bystander's longest wait, the burst's seconds) for one burst of ``calls``."""
    stop, started = threading.Event(), threading.Event()
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(bystander(server.url, stop, started))))
    thread.start()
    started.wait(30)
    try:
        burst = fanout(server.url.replace("ws://", "http://"), calls)
    finally:
        stop.set()
        thread.join()
    return result[0], burst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000, help="async_exec calls in the burst")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--base", type=Path, help="another checkout to run the same against, interleaved")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write results/bls_burst.md")
    args = ap.parse_args(argv)

    sides = {"this": ROOT} | ({"base": args.base.resolve()} if args.base else {})
    runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model_repository"
        write_repository(root)
        servers = {}
        try:
            for side, tree in sides.items():
                cmd = [sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0",
                       "--log-level", "warning", "--models", "linear", "--model-repository", str(root)]
                servers[side] = start_command(cmd, root=tree)
                one_run(servers[side], 100)  # warm-up
            for rep in range(args.reps):
                for side, server in servers.items():
                    longest, burst = one_run(server, args.calls)
                    runs[side].append((longest, burst))
                    print(f"rep {rep + 1}: {side:4s} longest wait {longest * 1e3:8.1f} ms, burst {burst:6.2f} s",
                          flush=True)
        finally:
            for server in servers.values():
                server.stop()

    med = {side: (statistics.median(w for w, _ in v), statistics.median(b for _, b in v)) for side, v in runs.items()}
    base_note = f" `base`: the checkout at `{args.base}`." if args.base else ""
    lines = [
        "## BLS bursts: one execute's thousands of calls beside another client",
        "",
        f"`python benchmarks/bench_bls_burst.py --calls {args.calls} --reps {args.reps}"
        f"{' --base ' + str(args.base) if args.base else ''}` — a Triton Python model whose `async def execute` "
        f"awaits {args.calls} `async_exec` calls to the built-in `linear` at once (one HTTP request), while another "
        "client on its own WebSocket connection sends `ping` frames one after another (answered by the event loop itself): its longest "
        f"wait for an answer during the burst, and the burst's time; medians of {args.reps} interleaved runs.{base_note} "
        f"Load average at the end: {describe().get('load_average', 'n/a')}.",
        "",
        "| server | longest wait of the other client | burst |",
        "| --- | ---: | ---: |",
    ]
    for side, (longest, burst) in med.items():
        lines.append(f"| {side} | {longest * 1e3:.1f} ms | {burst:.2f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "results" / "bls_burst.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
