"""A scikit-learn model, converted to ONNX with skl2onnx, served from this program.

``python examples/serve_sklearn.py [--port 8765]`` trains a small pipeline on the iris data set
(bundled with scikit-learn: no download), converts it to ONNX in memory and serves it as
``iris`` until Ctrl-C. Needs ``pip install 'wsserve[onnx]' scikit-learn skl2onnx``.

The graph has two outputs, so replies carry them by name::

    → {"type":"predict","id":1,"model":"iris","inputs":[[5.1,3.5,1.4,0.2]]}
    ← {"type":"result","id":1,"model":"iris","version":"1",
       "outputs":{"label":[0],"probabilities":[[0.98,0.02,0.0]]},"timing":{...}}

``--write-repository DIR`` writes ``DIR/iris/1/model.onnx`` (and a config.toml) instead of serving,
for ``wsserve serve --model-repository DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

import wsserve

CONFIG_TOML = 'task = "classification"\nmax_batch_size = 64\n'


def train() -> Pipeline:
    """Standardise the 4 features, then a logistic regression over the 3 species (deterministic)."""
    x, y = load_iris(return_X_y=True)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)


def to_onnx_bytes(pipeline: Pipeline) -> bytes:
    """The pipeline as an ONNX graph: input ``features`` [N, 4] float32 (N dynamic = the batch),
    outputs ``label`` [N] int64 and ``probabilities`` [N, 3] (``zipmap`` off: plain tensors)."""
    onx = to_onnx(
        pipeline,
        initial_types=[("features", FloatTensorType([None, 4]))],
        options={LogisticRegression: {"zipmap": False}},
        target_opset=17,
    )
    return onx.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    ap.add_argument("--write-repository", type=Path, metavar="DIR", help="write DIR/iris/1/model.onnx and exit")
    args = ap.parse_args()
    onnx_bytes = to_onnx_bytes(train())
    if args.write_repository is not None:
        version_dir = args.write_repository / "iris" / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        (args.write_repository / "iris" / "config.toml").write_text(CONFIG_TOML)
        (version_dir / "model.onnx").write_bytes(onnx_bytes)
        print(f"wrote {version_dir / 'model.onnx'}; serve it with: wsserve serve --model-repository {args.write_repository}")
        return 0
    iris = wsserve.onnx_model(onnx_bytes, name="iris", task="classification", max_batch_size=64)
    print("iris: inputs", [s.to_json() for s in iris.inputs], "outputs", [s.to_json() for s in iris.outputs])
    return wsserve.serve(models={"iris": iris}, host=args.host, port=args.port)


if __name__ == "__main__":
    raise SystemExit(main())
