"""A naive per-message inference server, in the style of the original design.

One coroutine per connection reads a message, decodes it with the stdlib
``json``, builds a numpy array for that message alone, runs the model on it
(no batching across requests or connections), encodes the answer with
``json.dumps`` and ``await ws.send`` s it before reading the next message.

It speaks enough of the wsserve protocol for the same load tool to drive it:
``hello``, ``models``, non-streamed ``predict`` → ``result``, the seed form
``{"x": [...]}`` → ``{"y_pred": ...}``, and ``error`` frames for bad requests.
Serves the same trained ``linear`` and ``mlp`` as wsserve.

``python benchmarks/peers/naive_server.py --port 0`` prints ``ws://HOST:PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import _common  # noqa: F401  (sys.path, BLAS threads)
import numpy as np
from websockets.asyncio.server import ServerConnection, serve

MODELS = _common.load_models()
LISTING = _common.describe(MODELS)
HELLO = json.dumps({"type": "hello", "server": "naive", "version": "0", "protocol": 1, "models": list(MODELS)})


def _error(rid, code: str, message: str) -> str:
    return json.dumps({"type": "error", "id": rid, "code": code, "message": message})


def handle(text: str) -> str:
    try:
        msg = json.loads(text)
    except ValueError:
        return _error(None, "bad_json", "not JSON")
    if not isinstance(msg, dict):
        return _error(None, "bad_request", "not an object")
    if "type" not in msg and "x" in msg:  # the seed form
        x = np.array(msg["x"], dtype=np.float64).reshape(-1, 1)
        y = MODELS["linear"].predict(x)[:, 0]
        return json.dumps({"y_pred": float(y[0]) if len(y) == 1 else y.tolist()})
    rid = msg.get("id")
    kind = msg.get("type")
    if kind == "models":
        return json.dumps({"type": "models", "id": rid, "models": LISTING})
    if kind == "ping":
        return json.dumps({"type": "pong", "id": rid})
    if kind != "predict":
        return _error(rid, "bad_request", f"unsupported type {kind!r}")
    model = MODELS.get(msg.get("model"))
    if model is None:
        return _error(rid, "unknown_model", f"no model named {msg.get('model')!r}")
    try:
        x = np.array(msg["inputs"], dtype=np.float64)
        y = model.predict(x)
    except Exception as exc:  # noqa: BLE001 - the naive server answers every failure the same way
        return _error(rid, "invalid_input", str(exc))
    return json.dumps({"type": "result", "id": rid, "model": msg["model"], "version": "1", "outputs": y.tolist()})


async def connection(ws: ServerConnection) -> None:
    await ws.send(HELLO)
    async for text in ws:
        await ws.send(handle(text))


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(connection, host, port, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"naive server listening on ws://{host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="naive per-message inference server (benchmark peer)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(a.host, a.port))
    else:
        uvloop.run(main(a.host, a.port))
