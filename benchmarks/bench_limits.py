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
"""
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
