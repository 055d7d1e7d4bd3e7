"""The pruned ``mlp`` (architecture ``mlp-sparse``): sparse storage, dense inference.

Built by :mod:`wsserve.compression.prune` (magnitude pruning, masked fine-tuning).

Storage (:class:`MLPSparseModel`), for layer i with shape ``[d_in, d_out]``
(meta ``"shapes"``): ``w{i}.mask`` uint8 ``[ceil(d_in*d_out/8)]``, the kept
positions as a row-major bitmap (``np.packbits``, big-endian bit order,
padding bits 0); ``w{i}.values`` float32 ``[popcount]``, the kept weights in
row-major order; ``b{i}`` float32 ``[d_out]``.  A bitmap costs 1 bit per
weight where flat int32 indices cost 32 bits per kept weight, so it is
smaller whenever more than 1/32 of the weights are kept - with int32
indices a 50%-pruned file would be as big as the dense one.

Inference densifies once at load and runs the same float32 GEMM as ``mlp``
(row-pure bit for bit): the latency ratio vs ``mlp`` is about 1.0 - the
sparsity saves disk, not time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    meta_metrics,
)
from .rowpure import row_block

__all__ = ["ARCHITECTURE", "MLPSparseModel"]

ARCHITECTURE = "mlp-sparse"


class MLPSparseModel(PredictiveModel):
    """``mlp`` with pruned weights stored as bitmap + values; ``predict`` like ``MLPModel``.

    Build with :meth:`from_pruned` or :meth:`from_arrays`.  Thread-safe for reads.
    """

    architecture = ARCHITECTURE

    def __init__(
        self,
        masks: list[np.ndarray],
        values: list[np.ndarray],
        biases: list[np.ndarray],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Already validated parts: bool ``masks [d_in, d_out]``, float32 kept ``values``, float32 biases."""
        self._masks = masks
        self._values = values
        self._biases = biases
        self._meta = dict(meta or {})
        dense = []
        for m, v in zip(masks, values):
            w = np.zeros(m.shape, dtype=np.float32)
            w[m] = v                                        # row-major, like the stored order
            dense.append(w)
        self._compute = [(w, None, b) for w, b in zip(dense, biases)]
        self._blocks = [row_block(w) for w, _, _ in self._compute]  # see wsserve.models.rowpure
        self._grad_params = self.dense_params(np.float64)  # for input_gradient, made once
        self._grad_plan: GradientPlan | None = None  # its row blocks and transposes, at the first explain
        n_in, n_out = masks[0].shape[0], masks[-1].shape[1]
        self.info = ModelInfo(
            name="mlp", version=ARCHITECTURE, task="classification",
            input_shape=(n_in,), output_shape=(n_out,),
            parameters=int(sum(v.size + b.size for v, b in zip(values, biases))),
            metrics=meta_metrics(self._meta, ARCHITECTURE),
            extra={"architecture": ARCHITECTURE, "layers": [n_in] + [m.shape[1] for m in masks]},
        )

    @classmethod
    def from_pruned(cls, params: Params, masks: Sequence[np.ndarray], *,
                    meta: Mapping[str, Any] | None = None) -> MLPSparseModel:
        """Keep ``W[mask]`` of each float layer; raises ``ValueError`` on bad shapes or values."""
        check_shapes([np.shape(w) for w, _ in params], ARCHITECTURE)
        ms, vs, bs = [], [], []
        for i, ((w, b), m) in enumerate(zip(params, masks, strict=True)):
            m = np.asarray(m, dtype=bool)
            w32, b32 = np.asarray(w, np.float32), np.ascontiguousarray(b, np.float32)
            if m.shape != w32.shape or b32.shape != (w32.shape[1],):
                raise ValueError(f"{ARCHITECTURE}: layer {i} mask/bias shapes do not match {list(w32.shape)}")
            if not (np.isfinite(w32).all() and np.isfinite(b32).all()):
                raise ValueError(f"{ARCHITECTURE}: layer {i} holds non-finite values")
            ms.append(m)
            vs.append(np.ascontiguousarray(w32[m]))
            bs.append(b32)
        return cls(ms, vs, bs, meta=meta)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``[n, d] -> [n, C]`` probabilities, row-pure bit for bit; ``ValueError`` on a bad shape."""
        return forward_rowpure(self._compute, x, ARCHITECTURE, self._blocks)

    def dense_params(self, dtype: Any = np.float64) -> Params:
        """The effective dense ``[(W, b), ...]`` in ``dtype`` (pruned entries 0)."""
        return [(w.astype(dtype), b.astype(dtype)) for w, _, b in self._compute]

    def masks(self) -> list[np.ndarray]:
        """Copies of the keep-masks."""
        return [m.copy() for m in self._masks]

    def input_gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``d predict(x)[i, target[i]] / d x[i]`` as ``[n, d]`` float64 (see :mod:`wsserve.explain`)."""
        if self._grad_plan is None:  # planned once, not per call (a race only plans it twice)
            self._grad_plan = gradient_plan(self._grad_params)
        grad, _ = probability_input_gradient(self._grad_params, np.asarray(x, np.float64), target, self._grad_plan)
        return grad

    def nonzero_parameters(self) -> int:
        """Non-zero entries of the effective weights and biases."""
        return int(sum(np.count_nonzero(v) + np.count_nonzero(b) for v, b in zip(self._values, self._biases)))

    def flops_per_row(self) -> int:
        return int(sum(m.size for m in self._masks))  # dense GEMM after densifying

    # -- persistence -------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` for :func:`wsserve.repository.npz.save_npz_model`."""
        arrays: dict[str, np.ndarray] = {}
        for i, (m, v, b) in enumerate(zip(self._masks, self._values, self._biases)):
            arrays[f"w{i}.mask"] = np.packbits(m.ravel())
            arrays[f"w{i}.values"] = v
            arrays[f"b{i}"] = b
        shapes = [list(m.shape) for m in self._masks]
        return arrays, {**self._meta, "layers": len(shapes), "shapes": shapes}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> MLPSparseModel:
        """Inverse of :meth:`to_arrays`; raises ``ValueError`` naming any bad array or meta field."""
        shapes = check_shapes(meta.get("shapes"), ARCHITECTURE)  # type: ignore[arg-type]
        if meta.get("layers", len(shapes)) != len(shapes):
            raise ValueError(f"{ARCHITECTURE}: meta 'layers' {meta.get('layers')!r} != {len(shapes)} shapes")
        check_names(arrays, {f"{p}{i}{s}" for i in range(len(shapes))
                             for p, s in (("w", ".mask"), ("w", ".values"), ("b", ""))}, ARCHITECTURE)
        ms, vs, bs = [], [], []
        for i, (a, b) in enumerate(shapes):
            size = a * b
            packed = check_array(arrays, f"w{i}.mask", np.uint8, (-(-size // 8),), ARCHITECTURE)
            bits = np.unpackbits(packed)
            if bits[size:].any():
                raise ValueError(f"{ARCHITECTURE}: array 'w{i}.mask' has padding bits set")
            mask = bits[:size].astype(bool).reshape(a, b)
            kept = int(np.count_nonzero(mask))
            values = check_array(arrays, f"w{i}.values", np.float32, (kept,), ARCHITECTURE, finite=True)
            bias = check_array(arrays, f"b{i}", np.float32, (b,), ARCHITECTURE, finite=True)
            ms.append(mask)
            vs.append(np.ascontiguousarray(values))
            bs.append(np.ascontiguousarray(bias))
        return cls(ms, vs, bs, meta=meta)
