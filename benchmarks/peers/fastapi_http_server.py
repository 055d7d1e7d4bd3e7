"""What a user would otherwise write for HTTP: FastAPI routes served by uvicorn, the model called per request.

- ``POST /predict`` with ``{"model": ..., "inputs": [[...], ...]}`` ->
  ``{"model", "version", "outputs"}`` (wsserve's predict form), and the seed
  form ``{"x": ...}`` -> ``{"y_pred": ...}`` on ``linear``;
- ``POST /v2/models/{name}/infer`` - the Open Inference Protocol's JSON form
  (one input tensor, ``data`` flat), answered with the output in FP64.

Idiomatic FastAPI: pydantic request models, ``async def`` endpoints (the model
runs on the event loop, as cheap as it is), default JSON responses, one
uvicorn worker on uvloop.  Serves the same trained ``linear`` and ``mlp``.

``python benchmarks/peers/fastapi_http_server.py --port 0`` prints ``http://HOST:PORT`` when ready.
Needs ``pip install fastapi uvicorn`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
from typing import Any

import _common  # noqa: F401  (sys.path, BLAS threads)
import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

MODELS = _common.load_models()

app = FastAPI()


class PredictIn(BaseModel):
    model: str | None = None
    inputs: list[list[float]] | None = None
    x: float | list[float] | None = None


class TensorIn(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferIn(BaseModel):
    id: str | None = None
    inputs: list[TensorIn]


@app.post("/predict")
async def predict(req: PredictIn) -> dict[str, Any]:
    if req.x is not None:
        xs = [req.x] if isinstance(req.x, float) else req.x
        y = MODELS["linear"].predict(np.asarray(xs, dtype=np.float64).reshape(-1, 1))[:, 0]
        return {"y_pred": float(y[0]) if isinstance(req.x, float) or len(xs) == 1 else y.tolist()}
    model = MODELS.get(req.model or "")
    if model is None or req.inputs is None:
        raise HTTPException(404, "no such model")
    y = model.predict(np.asarray(req.inputs, dtype=np.float64))
    return {"model": req.model, "version": "1", "outputs": y.tolist()}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, req: InferIn) -> dict[str, Any]:
    model = MODELS.get(name)
    if model is None:
        raise HTTPException(404, "no such model")
    t = req.inputs[0]
    y = model.predict(np.asarray(t.data, dtype=np.float64).reshape(t.shape))
    out = {"name": "output", "shape": list(y.shape), "datatype": "FP64", "data": y.reshape(-1).tolist()}
    return {"model_name": name, "model_version": "1", "id": req.id, "outputs": [out]}


class _Server(uvicorn.Server):
    """Prints the ``http://`` line once uvicorn listens (with the real port when ``--port 0``)."""

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets=sockets)
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        print(f"fastapi http server listening on http://{host}:{port}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="FastAPI/uvicorn HTTP inference endpoints (benchmark peer)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    _Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning", access_log=False)).run()
