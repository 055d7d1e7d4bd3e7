"""Magnitude pruning of the ``mlp``, masked fine-tuning, sparse storage (architecture ``mlp-sparse``).

Pruning (:func:`prune_masks`) removes the weights with the smallest ``|w|``;
biases are never pruned.  Exactly ``round(fraction * count)`` weights go
(ties broken by position, so the result is deterministic):

- ``scope="global"`` (the default): one ranking over all weight matrices.
  Layers with small weights lose more: at 90% on the default ``mlp`` the
  256x256 layer keeps ~5% and the input layer ~49%.  It is the more
  accurate choice on ``mlp`` at 50% and, after fine-tuning, at 90%
  (benchmarks/results/compress.md); it can empty a layer at extreme fractions.
- ``scope="layer"``: each matrix loses the same fraction of its own weights.

Measured on the default ``mlp`` (benchmarks/results/compress.md): 50% global
pruning loses 1.8 held-out points without fine-tuning and none with 2 epochs
of it (so the issue's "50% within 1 point" needs ``finetune``); 90% loses 64
points without, 11 with 2 epochs, 4 with 4 epochs.

Fine-tuning (:func:`finetune_masked`): Adam on the training split with the
mask fixed - gradients of pruned weights are zeroed before each step, so
their Adam moments stay 0 and the weights stay exactly 0 - and the same
cross-entropy/backprop as training (:func:`wsserve.models.mlp.loss_and_grads`).

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
from typing import Any, Literal

import numpy as np

from ..models.base import ModelInfo, PredictiveModel
from ..models.mlp import MLPConfig, Params, loss_and_grads
from ..models.optim import Adam
from ..models.mlp_gradient import probability_input_gradient
from .layers import check_array, check_names, check_shapes, forward_rowpure, meta_metrics

__all__ = [
    "ARCHITECTURE",
    "DEFAULT_SCOPE",
    "Scope",
    "MLPSparseModel",
    "prune_masks",
    "finetune_masked",
]

ARCHITECTURE = "mlp-sparse"
Scope = Literal["global", "layer"]
DEFAULT_SCOPE: Scope = "global"


def prune_masks(weights: Sequence[np.ndarray], fraction: float, scope: Scope = DEFAULT_SCOPE) -> list[np.ndarray]:
    """Boolean keep-masks (same shapes as ``weights``) removing the smallest ``|w|``.

    Exactly ``round(fraction * n)`` entries are False, where ``n`` is each
    matrix's size (``"layer"``) or the total size (``"global"``).  Raises
    ``ValueError`` if ``fraction`` is not in (0, 1) or ``scope`` is unknown.
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ValueError(f"pruning fraction must be in (0, 1), got {fraction!r}")
    mags = [np.abs(np.asarray(w, dtype=np.float64)).ravel() for w in weights]

    def keep(m: np.ndarray) -> np.ndarray:
        k = int(round(fraction * m.size))
        mask = np.ones(m.size, dtype=bool)
        mask[np.argsort(m, kind="stable")[:k]] = False
        return mask

    if scope == "layer":
        flat = [keep(m) for m in mags]
    elif scope == "global":
        allmask = keep(np.concatenate(mags))
        flat = np.split(allmask, np.cumsum([m.size for m in mags])[:-1])
    else:
        raise ValueError(f"pruning scope must be 'global' or 'layer', got {scope!r}")
    return [f.reshape(np.shape(w)) for f, w in zip(flat, weights)]


def finetune_masked(
    params: Params,
    masks: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 2,
    seed: int = 0,
    config: MLPConfig | None = None,
) -> Params:
    """Fine-tune float32 copies of ``params`` on ``(x, y)`` with the pruning masks fixed.

    Adam with the training hyperparameters of ``config`` (default
    :class:`MLPConfig`: lr 3e-3 decaying linearly to 2%, batch 256), for
    ``epochs`` passes in an order drawn from ``seed``.  Pruned weights are
    exactly 0 in the result.  Deterministic for a seed with one BLAS thread.
    Returns new arrays; ``params`` is not modified.
    """
    cfg = config or MLPConfig()
    tuned: Params = [((np.asarray(w, np.float32) * m).astype(np.float32), np.array(b, np.float32))
                     for (w, b), m in zip(params, masks)]
    fmasks = [m.astype(np.float32) for m in masks]
    xf = np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng([seed, 2])
    adam = Adam(tuned, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps)
    total = epochs * -(-len(xf) // cfg.batch_size)
    for _ in range(epochs):
        order = rng.permutation(len(xf))
        for start in range(0, len(xf), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            _, grads = loss_and_grads(tuned, xf[idx], y[idx])
            grads = [(gw * m, gb) for (gw, gb), m in zip(grads, fmasks)]
            frac = adam.t / max(1, total - 1)
            adam.step(grads, cfg.learning_rate * (1 - (1 - cfg.final_lr_fraction) * frac))
    for (w, _), m in zip(tuned, fmasks):
        w *= m  # already 0 (zero moments give zero steps); keeps the contract explicit
    return tuned


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
        self._grad_params = self.dense_params(np.float64)  # for input_gradient, made once
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
        return forward_rowpure(self._compute, x, ARCHITECTURE)

    def dense_params(self, dtype: Any = np.float64) -> Params:
        """The effective dense ``[(W, b), ...]`` in ``dtype`` (pruned entries 0)."""
        return [(w.astype(dtype), b.astype(dtype)) for w, _, b in self._compute]

    def masks(self) -> list[np.ndarray]:
        """Copies of the keep-masks."""
        return [m.copy() for m in self._masks]

    def input_gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``d predict(x)[i, target[i]] / d x[i]`` as ``[n, d]`` float64 (see :mod:`wsserve.explain`)."""
        grad, _ = probability_input_gradient(self._grad_params, np.asarray(x, np.float64), target)
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
