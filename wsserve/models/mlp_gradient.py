"""Input gradient of an MLP's class probability: a numpy backward pass.

For a ReLU network with softmax outputs (the ``mlp`` family, see
:mod:`wsserve.models.mlp`) and one target class per row, computes

    g[i] = d p[i, target[i]] / d x[i]        p = softmax(forward(params, x))

for a whole batch at once.  Pure numerics, generic over float dtype (pass
float64 params for attributions); row i depends only on ``x[i]`` and
``target[i]``, bit for bit: every product runs through
:func:`~wsserve.models.rowpure.rowpure_matmul` (a plain GEMM gives a row
different last bits by its position in the batch on some BLAS builds).  At a ReLU kink (a pre-activation exactly 0) the derivative is
taken as 0, the same convention as :func:`wsserve.models.mlp.loss_and_grads`.
"""

from __future__ import annotations

import numpy as np

from .mlp import Params
from .rowpure import row_block, rowpure_matmul

__all__ = ["GradientPlan", "gradient_plan", "probability_input_gradient"]


#: Per layer: the weights' row block, their transpose (C-contiguous) and its row block.
GradientPlan = list[tuple[int, np.ndarray, int]]


def gradient_plan(params: Params) -> GradientPlan:
    """What :func:`probability_input_gradient` works out per layer before its products (the
    :func:`~wsserve.models.rowpure.row_block` probes, the transposes): compute it once for many calls."""
    plan = []
    for w, _ in params:
        wt = np.ascontiguousarray(w.T)
        plan.append((row_block(w), wt, row_block(wt)))
    return plan


def probability_input_gradient(
    params: Params, x: np.ndarray, target: np.ndarray, plan: GradientPlan | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad [n, d], probs [n, C])``: d p_target / d x per row, and the probabilities.

    ``x`` is ``[n, d]``, ``target`` ``[n]`` integer class ids in ``0..C-1``
    (the caller validates them; an out-of-range id raises ``IndexError``).
    The arithmetic is in ``x``'s dtype promoted with the params' dtype.
    """
    if plan is None:
        plan = gradient_plan(params)
    acts = []                                           # ReLU outputs, for the masks
    h = np.ascontiguousarray(x)
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        h = rowpure_matmul(h, w, plan[i][0]) + b        # [n, d_i] -> [n, d_{i+1}]
        if i < last:
            np.maximum(h, 0, out=h)
            acts.append(h)
    z = h - h.max(axis=1, keepdims=True)                # [n, C]
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(target))
    pt = p[rows, target]                                # [n]
    delta = -pt[:, None] * p                            # d p_t / d z_j = p_t (1[j=t] - p_j)
    delta[rows, target] += pt
    for i in range(last, -1, -1):
        _, wt, block = plan[i]
        delta = rowpure_matmul(np.ascontiguousarray(delta), wt, block)  # [n, d_{i+1}] -> [n, d_i]
        if i > 0:
            delta *= acts[i - 1] > 0                    # ReLU'(pre) == (post > 0)
    return delta, p
