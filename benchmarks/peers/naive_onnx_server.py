"""A naive per-message server for ONNX models: the same ``model.onnx`` run once per message.

The ONNX counterpart of ``naive_server.py``: one coroutine per connection reads a
message, decodes it with the stdlib ``json``, builds a float32 array for that message
alone, calls ``InferenceSession.run`` on it on the event loop (no batching across
requests or connections), encodes the answer with ``json.dumps`` and ``await
ws.send`` s it before reading the next message.  Sessions are set up as wsserve's ONNX
backend sets them up (CPU provider, sequential, one intra-op and one inter-op thread,
no spinning), so both run the same kernels on the same number of threads.

It speaks enough of the wsserve protocol for ``wsserve loadtest`` to drive it:
``hello``, ``models`` (with each model's ``input_shape``), non-streamed ``predict`` →
``result``, and ``error`` frames for bad requests.  Models with one float input and one
output only.

``python benchmarks/peers/naive_onnx_server.py --model NAME=PATH [--model ...] --port 0``
prints ``ws://HOST:PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import _common  # noqa: F401  (sys.path, BLAS threads)
import numpy as np
import onnxruntime as ort
from websockets.asyncio.server import ServerConnection, serve


def session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


class Served:
    """One model: its session, input name and per-row input shape."""

    def __init__(self, name: str, path: str, threads: int) -> None:
        self.name = name
        self.session = session(path, threads)
        (inp,) = self.session.get_inputs()
        self.input = inp.name
        self.shape = [int(d) for d in inp.shape[1:]]
        self.output = self.session.get_outputs()[0].name

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": "1", "task": "classification", "input_shape": self.shape,
                "output_shape": [int(d) for d in self.session.get_outputs()[0].shape[1:]], "parameters": 0}


def _error(rid: Any, code: str, message: str) -> str:
    return json.dumps({"type": "error", "id": rid, "code": code, "message": message})


def handler(models: dict[str, Served]):
    listing = [m.describe() for m in models.values()]
    hello = json.dumps({"type": "hello", "server": "naive-onnx", "version": "0", "protocol": 1, "models": list(models)})

    def handle(text: str) -> str:
        try:
            msg = json.loads(text)
        except ValueError:
            return _error(None, "bad_json", "not JSON")
        if not isinstance(msg, dict):
            return _error(None, "bad_request", "not an object")
        rid = msg.get("id")
        kind = msg.get("type")
        if kind == "models":
            return json.dumps({"type": "models", "id": rid, "models": listing})
        if kind == "ping":
            return json.dumps({"type": "pong", "id": rid})
        if kind != "predict":
            return _error(rid, "bad_request", f"unsupported type {kind!r}")
        model = models.get(msg.get("model"))
        if model is None:
            return _error(rid, "unknown_model", f"no model named {msg.get('model')!r}")
        try:
            x = np.array(msg["inputs"], dtype=np.float32)
            (y,) = model.session.run([model.output], {model.input: x})
        except Exception as exc:  # noqa: BLE001 - the naive server answers every failure the same way
            return _error(rid, "invalid_input", str(exc))
        return json.dumps({"type": "result", "id": rid, "model": model.name, "version": "1", "outputs": y.tolist()})

    async def connection(ws: ServerConnection) -> None:
        await ws.send(hello)
        async for text in ws:
            await ws.send(handle(text))

    return connection


async def main(host: str, port: int, models: dict[str, Served]) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(handler(models), host, port, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"naive ONNX server listening on ws://{host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="naive per-message ONNX server (benchmark peer)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a model.onnx to serve as NAME")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1, as wsserve)")
    a = ap.parse_args()
    served = {}
    for spec in a.model:
        name, _, path = spec.partition("=")
        served[name] = Served(name, path, a.threads)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(a.host, a.port, served))
    else:
        uvloop.run(main(a.host, a.port, served))
