"""The ceiling: a raw ``websockets`` echo server (each text frame sent straight back).

``python benchmarks/peers/echo_server.py --host 127.0.0.1 --port 0`` prints
``ws://HOST:PORT`` when ready.  Same library, loop (uvloop) and settings as
wsserve's transport, with no JSON, no model: whatever a server does per
message on top of this costs throughput, so no real server can beat it.

``--conformance`` (for ``benchmarks/conformance``, the Autobahn runs) echoes
each message with its type instead: text decoded (so the library checks UTF-8
and fails the connection with 1007) and sent as text, binary as binary;
``--compression`` offers permessage-deflate.  Neither is used by the benchmarks.
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


async def echo_typed(ws: ServerConnection) -> None:
    try:
        async for message in ws:  # str for text (UTF-8 checked by the library), bytes for binary
            await ws.send(message)
    except Exception:  # noqa: BLE001 - a closed connection ends the handler
        return


async def main(host: str, port: int, conformance: bool = False, compression: bool = False) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    handler = echo_typed if conformance else echo
    async with serve(handler, host, port, compression="deflate" if compression else None, max_size=None,
                     ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"echo server listening on ws://{host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--conformance", action="store_true", help="echo text as text and binary as binary")
    ap.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(a.host, a.port, a.conformance, a.compression))
    except ImportError:
        asyncio.run(main(a.host, a.port, a.conformance, a.compression))
