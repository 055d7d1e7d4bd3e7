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

The pruned model is :class:`wsserve.models.mlp_sparse.MLPSparseModel` (architecture
``mlp-sparse``): storage and inference are described there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..models.mlp import MLPConfig, Params, loss_and_grads
from ..models.optim import Adam

__all__ = [
    "DEFAULT_SCOPE",
    "Scope",
    "prune_masks",
    "finetune_masked",
]

Scope = Literal["global", "layer"]
DEFAULT_SCOPE: Scope = "global"


def prune_masks(weights: Sequence[np.ndarray], fraction: float, scope: Scope = DEFAULT_SCOPE) -> list[np.ndarray]:
    """Boolean keep-masks (same shapes as ``weights``) removing the smallest ``|w|``.

    Exactly ``round(fraction * n)`` entries are False, where ``n`` is each
    matrix's size (``"layer"``) or the total size (``"global"``).  Raises
    ``ValueError`` if ``fraction`` is not in (0, 1), ``scope`` is unknown, or
    the fraction is so close to 0 or 1 that no weight or every weight would go.
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
    total = sum(m.size for m in mags)
    kept = sum(int(f.sum()) for f in flat)
    if kept == total or kept == 0:
        raise ValueError(f"pruning fraction {fraction!r} ({scope}) removes {'no' if kept == total else 'every'} "
                         f"weight of {total:,}; use a fraction that removes at least one and keeps at least one")
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
