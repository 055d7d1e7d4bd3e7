"""ONNX MLPs for the benchmarks, built with the ``onnx`` helper API from random weights.

:func:`mlp_weights` draws the weights (He-scaled normal, float32); :func:`onnx_mlp` turns
them into a graph ``x [N, d0] -> Gemm -> Relu -> ... -> Gemm -> Softmax -> y [N, dL]``
(``N`` dynamic: the batch); :func:`write_npz` writes the same weights as a ``model.npz`` of
the built-in ``mlp`` architecture (ReLU between layers, softmax at the end), so the
ONNX and numpy backends can be compared on identical models.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np

__all__ = ["SHAPES", "mlp_weights", "onnx_mlp", "write_onnx", "write_npz", "parameters"]

#: The benchmark's models: ``mlp``'s shape, a 1.3M- and a 21M-parameter MLP.
SHAPES: dict[str, tuple[int, ...]] = {
    "mlp-s": (32, 256, 256, 10),
    "mlp-m": (256, 1024, 1024, 10),
    "mlp-l": (1024, 4096, 4096, 10),
}

Weights = list[tuple[np.ndarray, np.ndarray]]


def parameters(dims: Sequence[int]) -> int:
    return sum(a * b + b for a, b in pairwise(dims))


def mlp_weights(dims: Sequence[int], seed: int = 0) -> Weights:
    """``[(w_i [d_i, d_i+1], b_i [d_i+1])]`` float32, He-scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    return [
        ((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
         (rng.standard_normal(b) * 0.01).astype(np.float32))
        for a, b in pairwise(dims)
    ]


def onnx_mlp(weights: Weights, *, name: str = "mlp") -> bytes:
    """The serialized ONNX graph of the MLP (opset 17, IR 8: any onnxruntime >= 1.17 reads it)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"z{i}"]))
        prev = f"z{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"h{i}"]))
            prev = f"h{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weights[0][0].shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weights[-1][0].shape[1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="wsserve-benchmarks")
    checker.check_model(model)
    return model.SerializeToString()


def write_onnx(version_dir: Path, weights: Weights) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    path.write_bytes(onnx_mlp(weights))
    return path


def write_npz(version_dir: Path, weights: Weights) -> Path:
    """The same weights as the built-in ``mlp`` architecture's ``model.npz``."""
    from wsserve.repository import save_npz_model

    version_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (w, b) in enumerate(weights):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    return save_npz_model(version_dir, "mlp", arrays, {"metrics": {}})
