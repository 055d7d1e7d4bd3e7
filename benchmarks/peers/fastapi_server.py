"""What a user would otherwise write: a FastAPI WebSocket endpoint served by uvicorn.

``receive_json`` / ``send_json``, the model called per message, one uvicorn
worker (uvicorn picks uvloop and its default WebSocket implementation).
Speaks the same subset as ``naive_server.py`` (hello, models, predict → result)
and serves the same trained ``linear`` and ``mlp``.

``python benchmarks/peers/fastapi_server.py --port 0`` prints ``ws://HOST:PORT`` when ready.
Needs ``pip install fastapi uvicorn`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (sys.path, BLAS threads)
import numpy as np
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

MODELS = _common.load_models()
LISTING = _common.describe(MODELS)

app = FastAPI()


@app.websocket("/")
async def predict_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(
        {"type": "hello", "server": "fastapi", "version": "0", "protocol": 1, "models": list(MODELS)}
    )
    try:
        while True:
            msg = await websocket.receive_json()
            rid = msg.get("id")
            if msg.get("type") == "models":
                await websocket.send_json({"type": "models", "id": rid, "models": LISTING})
                continue
            model = MODELS.get(msg.get("model"))
            if msg.get("type") != "predict" or model is None:
                await websocket.send_json({"type": "error", "id": rid, "code": "bad_request", "message": "unsupported"})
                continue
            try:
                y = model.predict(np.asarray(msg["inputs"], dtype=np.float64))
            except Exception as exc:  # noqa: BLE001
                await websocket.send_json({"type": "error", "id": rid, "code": "invalid_input", "message": str(exc)})
                continue
            await websocket.send_json(
                {"type": "result", "id": rid, "model": msg["model"], "version": "1", "outputs": y.tolist()}
            )
    except WebSocketDisconnect:
        return


class _Server(uvicorn.Server):
    """Prints the ``ws://`` line once uvicorn listens (with the real port when ``--port 0``)."""

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets=sockets)
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        print(f"fastapi server listening on ws://{host}:{port}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="FastAPI/uvicorn WebSocket inference endpoint (benchmark peer)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    _Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning", access_log=False)).run()
