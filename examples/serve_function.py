"""A plain numpy function served from this program: great-circle distances.

``python examples/serve_function.py [--port 8765]`` serves ``distance`` until Ctrl-C. A row is
``[lat1, lon1, lat2, lon2]`` in degrees; the answer is ``[km]``. Requests from every connection are
batched, so the function sees ``[n, 4]`` arrays::

    → {"type":"predict","id":1,"model":"distance","inputs":[[48.8566,2.3522,51.5074,-0.1278]]}
    ← {"type":"result","id":1,"model":"distance","version":"1","outputs":[[343.56]],"timing":{...}}
"""

from __future__ import annotations

import argparse

import numpy as np

import wsserve

EARTH_RADIUS_KM = 6371.0


def haversine_km(batch: np.ndarray) -> np.ndarray:
    """``[n, 4]`` (lat1, lon1, lat2, lon2 in degrees) -> ``[n, 1]`` great-circle distance in km."""
    lat1, lon1, lat2, lon2 = np.radians(batch).T
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return (2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a)))[:, None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    args = ap.parse_args()
    distance = wsserve.FunctionModel(
        haversine_km, name="distance", input_shape=(4,), output_shape=(1,),
        flops_per_row=30,  # cheap: small batches run on the event loop, no thread hop
    )
    return wsserve.serve(models={"distance": distance}, host=args.host, port=args.port)


if __name__ == "__main__":
    raise SystemExit(main())
