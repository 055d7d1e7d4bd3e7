"""The ceiling: a raw ``websockets`` echo server (each text frame sent straight back).

``python benchmarks/peers/echo_server.py --host 127.0.0.1 --port 0`` prints
``ws://HOST:PORT`` when ready.  Same library, loop (uvloop) and settings as
wsserve's transport, with no JSON, no model: whatever a server does per
message on top of this costs throughput, so no real server can beat it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    try:
        while True:
            data = await ws.recv(decode=False)
            await ws.send(data, text=True)
    except Exception:  # noqa: BLE001 - a closed connection ends the handler
        return


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(echo, host, port, compression=None, max_size=None, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"echo server listening on ws://{host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(a.host, a.port))
    except ImportError:
        asyncio.run(main(a.host, a.port))
