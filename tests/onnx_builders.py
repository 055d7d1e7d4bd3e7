"""Small ONNX graphs built with the ``onnx`` helper API, for tests (and later benchmarks).

Each builder returns ``(onnx.ModelProto, reference)`` where ``reference`` is a
numpy function computing the same thing, so tests compare ONNX Runtime's
answer against an independent one.  Needs the ``onnx`` package (import this
module only after ``pytest.importorskip("onnx")``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["save", "linear_layer", "mlp_two_inputs", "int64_embedding", "fixed_batch", "scalar_affine", "centered", "symbolic_features", "symbolic_matrix", "bool_mask", "string_input", "top_k", "uint8_pixels", "bfloat16_double"]

#: An IR version / opset every onnxruntime >= 1.17 reads.
IR_VERSION = 8
OPSET = 17

Reference = Callable[..., Any]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: Sequence[np.ndarray | tuple[str, np.ndarray]] = ()) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(a, name) for name, a in initializers]  # type: ignore[misc]
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="wsserve-tests")
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, version_dir: Path) -> Path:
    """Write ``version_dir/model.onnx`` (creating the directory)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    onnx.save(model, str(path))
    return path


def linear_layer(d_in: int = 3, d_out: int = 2, seed: int = 0, dtype: Any = np.float32) -> tuple[onnx.ModelProto, Reference]:
    """``y = x @ W + b``: input ``x`` [N, d_in], output ``y`` [N, d_out]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_in, d_out)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = _model(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        [helper.make_tensor_value_info("x", elem, ["N", d_in])],
        [helper.make_tensor_value_info("y", elem, ["N", d_out])],
        [("W", w), ("B", b)],
    )
    return model, lambda x: x.astype(dtype) @ w + b


def mlp_two_inputs(seed: int = 0) -> tuple[onnx.ModelProto, Reference]:
    """Inputs ``a`` [N, 3] and ``b`` [N, 2] (float32), concatenated -> 5 -> 8 (ReLU) -> 4.

    Outputs ``logits`` [N, 4] and ``probs`` [N, 4] (softmax).
    """
    rng = np.random.default_rng(seed)
    w0, b0 = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    w1, b1 = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    f = TensorProto.FLOAT
    model = _model(
        [
            helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
            helper.make_node("Gemm", ["ab", "W0", "B0"], ["h0"]),
            helper.make_node("Relu", ["h0"], ["h"]),
            helper.make_node("Gemm", ["h", "W1", "B1"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        [helper.make_tensor_value_info("a", f, ["N", 3]), helper.make_tensor_value_info("b", f, ["N", 2])],
        [helper.make_tensor_value_info("logits", f, ["N", 4]), helper.make_tensor_value_info("probs", f, ["N", 4])],
        [("W0", w0), ("B0", b0), ("W1", w1), ("B1", b1)],
    )

    def reference(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        h = np.maximum(np.concatenate([a, b], axis=1) @ w0 + b0, 0)
        logits = h @ w1 + b1
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"logits": logits, "probs": e / e.sum(axis=1, keepdims=True)}

    return model, reference


def int64_embedding(vocab: int = 10, dim: int = 3, seed: int = 0) -> tuple[onnx.ModelProto, Reference]:
    """Input ``ids`` [N, 2] int64 -> ``emb`` [N, 2, dim] float32 (an embedding lookup, Gather)."""
    table = np.random.default_rng(seed).standard_normal((vocab, dim)).astype(np.float32)
    model = _model(
        [helper.make_node("Gather", ["E", "ids"], ["emb"], axis=0)],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 2])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 2, dim])],
        [("E", table)],
    )
    return model, lambda ids: table[ids]


def fixed_batch(d: int = 3) -> tuple[onnx.ModelProto, Reference]:
    """Input ``x`` of fixed shape [1, d] -> ``y = 2x`` [1, d] (exported without a dynamic batch axis)."""
    f = TensorProto.FLOAT
    model = _model(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", f, [1, d])],
        [helper.make_tensor_value_info("y", f, [1, d])],
    )
    return model, lambda x: 2 * x


def zero_dimension(shape: Sequence[Any]) -> tuple[onnx.ModelProto, Reference]:
    """Input ``x`` of ``shape`` (holding a dimension fixed at 0) -> ``y = x``: no request can feed it."""
    f = TensorProto.FLOAT
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [helper.make_tensor_value_info("x", f, list(shape))],
                   [helper.make_tensor_value_info("y", f, list(shape))])
    return model, lambda x: x


def scalar_affine() -> tuple[onnx.ModelProto, Reference]:
    """Input ``x``, a scalar (rank 0) -> ``y = 3x + 1``, a scalar: a graph with no batch dimension at all."""
    f = TensorProto.FLOAT
    model = _model(
        [helper.make_node("Mul", ["x", "three"], ["x3"]), helper.make_node("Add", ["x3", "one"], ["y"])],
        [helper.make_tensor_value_info("x", f, [])],
        [helper.make_tensor_value_info("y", f, [])],
        [("three", np.array(3.0, np.float32)), ("one", np.array(1.0, np.float32))],
    )
    return model, lambda x: 3 * x + 1


def centered(d: int = 3) -> tuple[onnx.ModelProto, Reference]:
    """Input ``x`` [N, d] -> ``y = x - mean(x over N)`` [N, d]: the rows are not independent (a graph to
    run whole: ``max_batch_size: 0`` with dims ``[-1, d]``)."""
    f = TensorProto.FLOAT
    model = _model(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1), helper.make_node("Sub", ["x", "m"], ["y"])],
        [helper.make_tensor_value_info("x", f, ["N", d])],
        [helper.make_tensor_value_info("y", f, ["N", d])],
    )
    return model, lambda x: x - x.mean(axis=0, keepdims=True)


def symbolic_features() -> tuple[onnx.ModelProto, Reference]:
    """Input ``x`` [N, F] (F symbolic) -> ``y`` [N, 1] = row sums."""
    f = TensorProto.FLOAT
    axes = np.array([1], dtype=np.int64)
    model = _model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        [helper.make_tensor_value_info("x", f, ["N", "F"])],
        [helper.make_tensor_value_info("y", f, ["N", 1])],
        [("axes", axes)],
    )
    return model, lambda x: x.sum(axis=1, keepdims=True)


def symbolic_matrix() -> tuple[onnx.ModelProto, Reference]:
    """Input ``x`` [N, A, B] (A and B symbolic) -> ``y`` [N, 1, 1] = each row's sum."""
    f = TensorProto.FLOAT
    axes = np.array([1, 2], dtype=np.int64)
    model = _model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        [helper.make_tensor_value_info("x", f, ["N", "A", "B"])],
        [helper.make_tensor_value_info("y", f, ["N", 1, 1])],
        [("axes", axes)],
    )
    return model, lambda x: x.sum(axis=(1, 2), keepdims=True)


def bool_mask(d: int = 3) -> tuple[onnx.ModelProto, Reference]:
    """Inputs ``x`` [N, d] float32 and ``mask`` [N, d] bool -> ``y`` [N, d] = x where mask else 0."""
    f = TensorProto.FLOAT
    zero = np.zeros(1, dtype=np.float32)
    model = _model(
        [helper.make_node("Where", ["mask", "x", "zero"], ["y"])],
        [helper.make_tensor_value_info("x", f, ["N", d]), helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", d])],
        [helper.make_tensor_value_info("y", f, ["N", d])],
        [("zero", zero)],
    )
    return model, lambda x, mask: np.where(mask, x, 0)


def string_input() -> tuple[onnx.ModelProto, Reference]:
    """Input ``s`` [N, 1] of strings (unsupported by wsserve) -> ``t`` (Identity)."""
    model = _model(
        [helper.make_node("Identity", ["s"], ["t"])],
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["N", 1])],
    )
    return model, lambda s: s


def top_k() -> tuple[onnx.ModelProto, Reference]:
    """Inputs ``x`` [N] and ``k`` [1] (int64) -> ``y`` [K], ``idx`` [K]: the ``k`` largest values and their
    indices; the outputs' size is a value of the request (``max_batch_size: 0`` with dims ``[-1]``)."""
    model = _model(
        [helper.make_node("TopK", ["x", "k"], ["y", "idx"], axis=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]), helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K"]), helper.make_tensor_value_info("idx", TensorProto.INT64, ["K"])],
    )

    def ref(x: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argsort(-x, kind="stable")[: int(k[0])]
        return x[idx], idx

    return model, ref


def uint8_pixels(d: int = 4) -> tuple[onnx.ModelProto, Reference]:
    """An image model's front: input ``image`` uint8 [N, d]; outputs ``scaled`` (float32, /255) and
    ``raw`` (the uint8 pixels back)."""
    model = _model(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["f", "S"], ["scaled"]),
         helper.make_node("Identity", ["image"], ["raw"])],
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", d])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", d]),
         helper.make_tensor_value_info("raw", TensorProto.UINT8, ["N", d])],
        [("S", np.array(1 / 255, dtype=np.float32))],
    )
    return model, lambda x: x.astype(np.float32) * np.float32(1 / 255)


def bfloat16_double(d: int = 3) -> tuple[onnx.ModelProto, Reference]:
    """bfloat16 ``x [N, d]`` -> ``y = bfloat16(2 * float32(x))`` (Cast, Add, Cast: onnxruntime's CPU
    provider has no bfloat16 arithmetic) and ``z = x`` (Identity), both bfloat16; ``w = float32(x)``."""
    bf16 = TensorProto.BFLOAT16
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["f", "f"], ["s"]),
             helper.make_node("Cast", ["s"], ["y"], to=bf16), helper.make_node("Identity", ["x"], ["z"]),
             helper.make_node("Cast", ["x"], ["w"], to=TensorProto.FLOAT)]
    model = _model(nodes, [helper.make_tensor_value_info("x", bf16, ["N", d])],
                   [helper.make_tensor_value_info("y", bf16, ["N", d]), helper.make_tensor_value_info("z", bf16, ["N", d]),
                    helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", d])])
    return model, lambda x: (x.astype(np.float32) * 2, x, x.astype(np.float32))
