"""int8 weights for the ``mlp``: per-output-channel symmetric quantization (architecture ``mlp-int8``).

Quantization of a weight matrix ``W [d_in, d_out]``, column j::

    scale[j] = float32(max_i |W[i, j]| / 127)      (1.0 for an all-zero column)
    q[i, j]  = clip(rint(W[i, j] / scale[j]), -127, 127)   int8, -128 never used

so ``|W - q * scale| <= scale / 2`` elementwise (plus float32 rounding of the
product).  Biases stay float32 (they are 0.7% of the parameters).

Inference (:class:`MLPInt8Model`): the weights are dequantized once at load
(``q * scale`` as float32) and each layer is ``h @ W + b``, a float32 BLAS
GEMM with float32 accumulation.  numpy has no int8 GEMM, so this saves disk
and load bytes, not time: the latency ratio vs the fp32 ``mlp`` is about 1.0
(applying ``scale`` after an ``h @ q`` product instead measured 1.06: one more
pass over the output).  The ONNX Runtime path in
:mod:`wsserve.compression.onnx_int8` is the one that uses int8 dot-product
instructions.  Row-pure bit for bit like ``mlp``.

File arrays, for layer i: ``w{i}.int8`` int8 ``[d_in, d_out]``, ``w{i}.scale``
float32 ``[d_out]`` (finite, > 0), ``b{i}`` float32 ``[d_out]`` (finite);
meta ``{"layers": L, "metrics": {...}, ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import ModelInfo, PredictiveModel
from .mlp import Params
from .mlp_gradient import GradientPlan, gradient_plan, probability_input_gradient
from .mlp_layers import (
    check_array,
    check_names,
    check_shapes,
    forward_rowpure,
    layer_count,
    meta_metrics,
)
from .rowpure import row_block

__all__ = ["ARCHITECTURE", "MLPInt8Model", "quantize_per_channel", "dequantize"]

ARCHITECTURE = "mlp-int8"


def quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``W [d_in, d_out]`` (finite floats) -> ``(q int8 [d_in, d_out], scale float32 [d_out])``.

    Raises ``ValueError`` on a non-2-D or non-finite ``W``.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or not np.isfinite(w).all():
        raise ValueError(f"quantize_per_channel needs a finite 2-D matrix, got shape {list(w.shape)}")
    peak = np.abs(w).max(axis=0)                                     # [d_out]
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(np.finfo(np.float32).tiny))  # denormal peaks
    q = np.clip(np.rint(w / scale.astype(np.float64)), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q [d_in, d_out] int8, scale [d_out] -> W float32 [d_in, d_out]``."""
    return q.astype(np.float32) * scale


class MLPInt8Model(PredictiveModel):
    """``mlp`` with int8 per-channel weights; ``predict`` like ``MLPModel`` (float64 probabilities).

    Build with :meth:`from_params` (quantizes float weights) or
    :meth:`from_arrays` (reads a file's arrays).  Thread-safe for reads.
    """

    architecture = ARCHITECTURE

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """``layers``: ``[(q int8 [d_in, d_out], scale float32 [d_out], b float32 [d_out]), ...]``,
        already validated (use the classmethods)."""
        self._layers = [(q, s, b) for q, s, b in layers]
        self._compute = [(dequantize(q, s), None, b) for q, s, b in layers]
        self._blocks = [row_block(w) for w, _, _ in self._compute]  # see wsserve.models.rowpure
        self._grad_params = self.dequantized_params(np.float64)  # for input_gradient, made once
        self._grad_plan: GradientPlan | None = None  # its row blocks and transposes, at the first explain
        self._meta = dict(meta or {})
        n_in, n_out = layers[0][0].shape[0], layers[-1][0].shape[1]
        params = sum(q.size + s.size + b.size for q, s, b in layers)
        self.info = ModelInfo(
            name="mlp", version=ARCHITECTURE, task="classification",
            input_shape=(n_in,), output_shape=(n_out,), parameters=int(params),
            metrics=meta_metrics(self._meta, ARCHITECTURE),
            extra={"architecture": ARCHITECTURE,
                   "layers": [n_in] + [q.shape[1] for q, _, _ in layers]},
        )

    @classmethod
    def from_params(cls, params: Params, *, meta: Mapping[str, Any] | None = None) -> MLPInt8Model:
        """Quantize float ``[(W, b), ...]``; raises ``ValueError`` on bad shapes or values."""
        check_shapes([w.shape for w, _ in params], ARCHITECTURE)
        layers = []
        for i, (w, b) in enumerate(params):
            q, s = quantize_per_channel(w)
            b32 = np.asarray(b, dtype=np.float32)
            if b32.shape != (w.shape[1],) or not np.isfinite(b32).all():
                raise ValueError(f"{ARCHITECTURE}: bias {i} must be finite with shape [{w.shape[1]}]")
            layers.append((q, s, np.ascontiguousarray(b32)))
        return cls(layers, meta=meta)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``[n, d] -> [n, C]`` probabilities, row-pure bit for bit; ``ValueError`` on a bad shape."""
        return forward_rowpure(self._compute, x, ARCHITECTURE, self._blocks)

    def dequantized_params(self, dtype: Any = np.float64) -> Params:
        """The effective weights ``[(float32(q * scale), b), ...]`` (what ``predict`` uses) in ``dtype``."""
        return [(w.astype(dtype), b.astype(dtype)) for w, _, b in self._compute]

    def input_gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``d predict(x)[i, target[i]] / d x[i]`` as ``[n, d]`` float64 (see :mod:`wsserve.explain`)."""
        if self._grad_plan is None:  # planned once, not per call (a race only plans it twice)
            self._grad_plan = gradient_plan(self._grad_params)
        grad, _ = probability_input_gradient(self._grad_params, np.asarray(x, np.float64), target, self._grad_plan)
        return grad

    def nonzero_parameters(self) -> int:
        """Non-zero entries of the effective weights and biases."""
        return int(sum(np.count_nonzero(q) + np.count_nonzero(b) for q, _, b in self._layers))

    def flops_per_row(self) -> int:
        return int(sum(q.size for q, _, _ in self._layers))

    # -- persistence -------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` for :func:`wsserve.repository.npz.save_npz_model`."""
        arrays: dict[str, np.ndarray] = {}
        for i, (q, s, b) in enumerate(self._layers):
            arrays[f"w{i}.int8"] = q
            arrays[f"w{i}.scale"] = s
            arrays[f"b{i}"] = b
        return arrays, {**self._meta, "layers": len(self._layers)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> MLPInt8Model:
        """Inverse of :meth:`to_arrays`; raises ``ValueError`` naming any bad array or meta field."""
        n = layer_count(meta, ARCHITECTURE)
        check_names(arrays, {f"{p}{i}{s}" for i in range(n)
                             for p, s in (("w", ".int8"), ("w", ".scale"), ("b", ""))}, ARCHITECTURE)
        shapes = []
        for i in range(n):
            q = np.asarray(arrays[f"w{i}.int8"])
            if q.ndim != 2:
                raise ValueError(f"{ARCHITECTURE}: array 'w{i}.int8' must be 2-D, got {list(q.shape)}")
            shapes.append(q.shape)
        check_shapes(shapes, ARCHITECTURE)
        layers = []
        for i, (a, b) in enumerate(shapes):
            q = check_array(arrays, f"w{i}.int8", np.int8, (a, b), ARCHITECTURE)
            if (q == -128).any():
                raise ValueError(f"{ARCHITECTURE}: array 'w{i}.int8' uses -128 (symmetric range is -127..127)")
            s = check_array(arrays, f"w{i}.scale", np.float32, (b,), ARCHITECTURE, finite=True)
            if not (s > 0).all():
                raise ValueError(f"{ARCHITECTURE}: array 'w{i}.scale' must be positive")
            bias = check_array(arrays, f"b{i}", np.float32, (b,), ARCHITECTURE, finite=True)
            with np.errstate(over="ignore"):
                overflow = not np.isfinite(q.astype(np.float32) * s).all()
            if overflow:
                raise ValueError(f"{ARCHITECTURE}: layer {i} weights overflow float32")
            layers.append((np.ascontiguousarray(q), np.ascontiguousarray(s), np.ascontiguousarray(bias)))
        return cls(layers, meta=meta)
