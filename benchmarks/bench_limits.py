"""Worst cases an attacker controls: memory under maximal queued input, CPU to reassemble a frame
that arrives in tiny TCP segments.

``python benchmarks/bench_limits.py`` (about 2 minutes) writes ``benchmarks/results/limits.md``:

1. **Memory.**  A wsserve serving ``mlp`` with its default limits; ``--connections`` clients
   (default 32) each pipeline more maximal messages (1 MiB of JSON, 15,800 mlp rows of ``0``: the
   most rows a message can carry) than their ``max_inflight_bytes`` admits, without reading anything.  The
   server's peak RSS over its idle RSS is set beside the bounds the configuration implies
   (queued input bytes per model + per-connection bytes) and beside what the same rows cost as
   parsed JSON lists (what the server held before inputs were kept as float64).
2. **Reassembly.**  One 1 MB text frame sent in 32-byte TCP segments (``TCP_NODELAY``, one ``send``
   each), to wsserve and to a plain ``websockets`` echo server (the library's own parser): server
   CPU seconds for the frame, median of ``--reps`` runs, side by side.
3. **A stopped reader's cost to others.**  A server with a 1 MiB write-buffer limit and a 1 s
   slow-consumer timeout; one client sends work whose answers it never reads (64 long ``generate``
   streams, or 4 streamed 16,384-row ``mlp`` predicts) while another sends sequential single-row
   ``linear`` predicts.  The other client's round trips before and while the stopped reader is held
   (until the server closes it with 1008), p50 and p99, median of ``--reps`` runs per kind.  (The
   behaviour itself, closed and its work cancelled while others are served, is tested in
   ``tests/test_hardening.py``; this is its cost.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ROOT, start_command, start_wsserve  # noqa: E402
from tests.support import RawClient, client_frame, serve_command  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "limits.md"


def _connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A handshaken WebSocket's socket (the reply is not read: these clients only push)."""
    client = RawClient(port, rcvbuf=rcvbuf, timeout_s=30)
    assert client.status == 101, client.response_head
    return client.sock


def memory(connections: int) -> dict[str, float]:
    server = start_wsserve("--models", "mlp", "--slow-consumer-timeout", "60")
    try:
        port = server.port
        pid = server.proc.pid
        time.sleep(0.5)  # the measurement procedure: idle RSS once start-up settled
        idle = server.memory_kib()
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        rows = 15800  # "0," per value: the most rows a 1 MiB message can carry (65 bytes a row)
        msg = orjson.dumps({"type": "predict", "id": 0, "model": "mlp", "inputs": [[0] * 32] * rows})
        assert len(msg) < 1 << 20
        per_conn = 12  # 12 × 15,800 rows × 32 × 8 B = 47 MiB > the 32 MiB per-connection bound
        socks = []
        sent_rows = 0
        for _ in range(connections):
            socks.append(_connect(port, rcvbuf=4096))
        payload = b"".join(client_frame(msg.replace(b'"id":0', f'"id":{i}'.encode())) for i in range(per_conn))

        async def push(sock: socket.socket) -> None:
            await asyncio.to_thread(sock.sendall, payload)

        async def all_push() -> None:
            await asyncio.gather(*(push(s) for s in socks))

        asyncio.run(all_push())
        sent_rows = rows * per_conn * connections
        time.sleep(3.0)
        peak = server.memory_kib("VmHWM")
        for s in socks:
            s.close()
    finally:
        server.stop()
    cfg_queue = 64 << 20
    cfg_conn = 32 << 20
    as_lists = sent_rows * (32 * 24 + 8 * 32 + 56 + 8)  # float objects + list slots + list headers (CPython)
    return {
        "connections": connections,
        "sent_mib": len(msg) * per_conn * connections / 2**20,
        "sent_rows": sent_rows,
        "idle_mib": idle / 1024,
        "peak_growth_mib": (peak - idle) / 1024,
        "bound_mib": (cfg_queue + connections * cfg_conn) / 2**20,
        "as_lists_mib": as_lists / 2**20,
    }


def reassembly_cpu(cmd: list[str], name: str, size: int = 1_000_000, segment: int = 32) -> float:
    """Server CPU seconds for one ``size``-byte text frame sent in ``segment``-byte TCP segments."""
    server = start_command(cmd)
    try:
        sock = _connect(server.port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(0.3)
        data = client_frame(b'"' + b"a" * (size - 2) + b'"')
        before = server.cpu_seconds()
        for i in range(0, len(data), segment):
            sock.send(data[i : i + segment])
            time.sleep(20e-6)  # pace the segments so that the server reads them one by one
        sock.settimeout(30)
        got = b""
        while len(got) < 4:
            got += sock.recv(65536)
        time.sleep(0.2)
        used = server.cpu_seconds() - before
        sock.close()
        return used
    finally:
        server.stop()


STUCK_FLAGS = ("--max-write-buffer-bytes", str(1 << 20), "--slow-consumer-timeout", "1",
               "--max-message-bytes", str(4 << 20), "--models", "linear,mlp,charlm")


def _stuck_requests(kind: str) -> list[dict[str, object]]:
    """What the stopped reader sends (as tests/test_hardening.py's slow-consumer tests)."""
    if kind == "generate":  # 64 x 100,000 tokens: ~300 MB of token frames if nothing stopped them
        return [{"type": "generate", "id": i, "model": "charlm", "prompt": "The ", "max_tokens": 100000}
                for i in range(64)]
    return [{"type": "predict", "id": i, "model": "mlp", "inputs": [[0] * 32] * 16384, "stream": True,
             "chunk_rows": 32} for i in range(4)]


def _round_trips(ws: object, seconds: float, until: object = None) -> list[float]:
    """Sequential single-row ``linear`` predicts on ``ws`` for ``seconds`` (or until ``until()``
    is true, checked every 20 requests): round trips in seconds."""
    out: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and not (until is not None and i % 20 == 0 and until()):  # type: ignore[operator]
        t = time.perf_counter()
        ws.send(orjson.dumps({"type": "predict", "id": i, "model": "linear", "inputs": [[1.0]]}).decode())  # type: ignore[attr-defined]
        reply = orjson.loads(ws.recv())  # type: ignore[attr-defined]
        out.append(time.perf_counter() - t)
        assert reply["type"] == "result", reply
        i += 1
    return out


def stuck_reader(kind: str) -> dict[str, float]:
    """One run: the other client's round trips (ms) before and while a stopped reader is held."""
    from websockets.sync.client import connect

    server = start_wsserve(*STUCK_FLAGS)
    try:
        with connect(server.url, max_size=None) as ws:
            ws.recv()  # hello
            _round_trips(ws, 0.3)  # warm-up
            before = _round_trips(ws, 1.5)
            stuck = RawClient(server.port, rcvbuf=4096, timeout_s=30)
            try:
                stuck.recv_json()  # hello
                stuck.send(*_stuck_requests(kind))
                closes = lambda: server.metrics().get("wsserve_slow_consumer_closes_total") >= 1  # noqa: E731
                t0 = time.monotonic()
                during = _round_trips(ws, 30.0, until=closes)
                held = time.monotonic() - t0
                assert closes(), "the stopped reader was not closed within 30 s"
            finally:
                stuck.close()
    finally:
        server.stop()

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1e3

    return {"before_p50": pct(before, 0.5), "before_p99": pct(before, 0.99), "during_p50": pct(during, 0.5),
            "during_p99": pct(during, 0.99), "during_n": len(during), "held_s": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    mem = memory(args.connections)
    print(mem, flush=True)
    wsserve_cmd = serve_command("--models", "linear", "--max-message-bytes", str(2 << 20))
    echo_cmd = [sys.executable, "benchmarks/peers/echo_server.py", "--port", "0"]
    ours, lib = [], []
    for _ in range(args.reps):  # interleaved
        ours.append(reassembly_cpu(wsserve_cmd, "wsserve"))
        lib.append(reassembly_cpu(echo_cmd, "echo"))
        print(f"wsserve {ours[-1]:.3f} s, websockets echo {lib[-1]:.3f} s", flush=True)
    mo, ml = statistics.median(ours), statistics.median(lib)
    stuck: dict[str, list[dict[str, float]]] = {"generate": [], "stream": []}
    for _ in range(args.reps):  # interleaved
        for kind in stuck:
            stuck[kind].append(stuck_reader(kind))
            print(kind, stuck[kind][-1], flush=True)
    rows = []
    for kind, label in (("generate", "64 `generate` streams of 100,000 tokens"),
                        ("stream", "4 streamed `mlp` predicts of 16,384 rows")):
        med = {k: statistics.median(r[k] for r in stuck[kind]) for k in stuck[kind][0]}
        rows.append(f"| {label} | {med['before_p50']:.2f} / {med['before_p99']:.2f} | "
                    f"{med['during_p50']:.2f} / {med['during_p99']:.2f} | "
                    f"{med['during_p99'] / med['before_p99']:.1f}x | {med['held_s']:.1f} |")
    stuck_table = "\n".join(rows)
    load = os.getloadavg()[0]
    text = f"""## Limits: worst-case memory and reassembly CPU

`python benchmarks/bench_limits.py --connections {args.connections} --reps {args.reps}` (load average at the end {load:.1f}).

**Memory under maximal queued input.** {mem['connections']} connections each pipelined 12 maximal
`mlp` predicts (under 1 MiB of JSON = 15,800 rows of `0` each; {mem['sent_mib']:.0f} MiB and {mem['sent_rows']:,} rows in
all) without reading a reply. Inputs are held as float64 once validated, and bounded per model
(`--max-queue-bytes`, 64 MiB) and per connection (`--max-inflight-bytes`, 32 MiB): what is over a bound
is refused with `overloaded`. What the peak holds beyond queued inputs is transient: a message being
parsed is a list of Python floats (about 8 MiB for 1 MiB of JSON) until it is validated and converted.

| | MiB |
|---|---:|
| server RSS when idle | {mem['idle_mib']:.0f} |
| peak RSS growth under the attack | {mem['peak_growth_mib']:.0f} |
| bound on queued inputs of the model (`--max-queue-bytes`) | 64 |
| the same rows held as parsed JSON lists, the representation before this change (estimate: 32 B per float, list slots and headers) | {mem['as_lists_mib']:.0f} |

**Reassembly of a 1 MB frame sent in 32-byte TCP segments** (server CPU seconds, median of {args.reps}, interleaved):

| server | CPU s | ratio |
|---|---:|---:|
| wsserve (fast path, `bytearray` reassembly) | {mo:.3f} | {mo / ml:.2f} |
| plain `websockets` echo server (the library's parser) | {ml:.3f} | 1.00 |

**A stopped reader's cost to the other clients.** `--max-write-buffer-bytes 1048576
--slow-consumer-timeout 1`: one client sends work and never reads again; another sends
sequential single-row `linear` predicts on its own connection. Its round trips (ms, p50 / p99)
in 1.5 s before, and from the stopped reader's requests until the server closed that connection
(1008), median of {args.reps} runs per kind, interleaved. *held*: seconds until the close (after
the 1 s timeout, or at once when the unsent answers reach four times the limit). The streamed
predicts' ~1 MB messages are decoded on the loop (any message up to `--max-message-bytes` is),
whoever reads the answers: that is most of their p99.

| stopped reader sent | before p50 / p99 | during p50 / p99 | p99 during / before | held s |
|---|---:|---:|---:|---:|
{stuck_table}
"""
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
