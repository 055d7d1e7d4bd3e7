"""KServe's Python model server (``kserve.ModelServer``) serving the same ``mlp`` and ``linear`` over OIP v2 REST.

A :class:`kserve.Model` per model, as KServe's custom-model guide writes one:
``predict`` takes the decoded :class:`kserve.InferRequest`, runs the model
and returns an :class:`kserve.InferResponse` (FP64).  One uvicorn worker, no
gRPC; KServe's logging is not configured (``--configure_logging false``: no
access-log line per request) and latency logging is off, which favours KServe.

KServe pins its own FastAPI/pydantic/numpy, so it runs from its own
virtualenv (``benchmarks/bench_http.py --kserve-python``)::

    python -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve threadpoolctl
    /tmp/kserve-venv/bin/python benchmarks/peers/kserve_server.py --port 0

prints ``http://HOST:PORT`` once it has the port (the caller polls
``/v2/health/ready`` for readiness).
"""

from __future__ import annotations

import argparse
import socket
import sys
import uuid

import _common  # noqa: F401  (sys.path, BLAS threads)
import numpy as np

ap = argparse.ArgumentParser(description="KServe ModelServer (benchmark peer)")
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, default=0)
a, _ = ap.parse_known_args()
# kserve parses sys.argv when imported: no logging configured, so no access log line per request
sys.argv = [sys.argv[0], "--configure_logging", "false"]

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402

MODELS = _common.load_models()


class Served(Model):
    def __init__(self, name: str, model) -> None:
        super().__init__(name)
        self.model = model
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float64)
        y = self.model.predict(x.reshape(x.shape[0], -1))
        out = InferOutput(name="output", shape=list(y.shape), datatype="FP64", data=y)
        rid = payload.id or str(uuid.uuid4())  # the response needs an id; KServe's examples generate one
        return InferResponse(response_id=rid, model_name=self.name, infer_outputs=[out])


if __name__ == "__main__":
    port = a.port
    if port == 0:
        with socket.socket() as s:
            s.bind((a.host, 0))
            port = s.getsockname()[1]
    print(f"kserve listening on http://{a.host}:{port}", flush=True)
    ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False).start(
        [Served(name, m) for name, m in MODELS.items()]
    )
