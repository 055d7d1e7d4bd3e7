"""A raw ``picows`` echo server (each text frame sent straight back): the ceiling of ``--transport picows``.

``python benchmarks/peers/picows_echo_server.py --host 127.0.0.1 --port 0`` prints
``ws://HOST:PORT`` when ready.  picows's own listener on uvloop, no JSON, no
model, no coalescing: whatever wsserve on picows does per message on top of
this costs throughput.  Needs the ``fast`` extra (``pip install picows``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            transport.send(WSMsgType.TEXT, frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


def listener(request: WSUpgradeRequest) -> WSListener:
    return Echo()


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    server = await ws_create_server(listener, host, port, max_frame_size=1 << 30)
    port = server.sockets[0].getsockname()[1]
    print(f"picows echo server listening on ws://{host}:{port}", flush=True)
    await stop
    server.close()


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
