"""Input gradient of an MLP's class probability: a numpy backward pass.

For a ReLU network with softmax outputs (the ``mlp`` family, see
:mod:`wsserve.models.mlp`) and one target class per row, computes

    g[i] = d p[i, target[i]] / d x[i]        p = softmax(forward(params, x))

for a whole batch at once.  Pure numerics, generic over float dtype (pass
float64 params for attributions); row i depends only on ``x[i]`` and
``target[i]``.  At a ReLU kink (a pre-activation exactly 0) the derivative is
taken as 0, the same convention as :func:`wsserve.models.mlp.loss_and_grads`.
"""

from __future__ import annotations

import numpy as np

from .mlp import Params

__all__ = ["probability_input_gradient"]


def probability_input_gradient(
    params: Params, x: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad [n, d], probs [n, C])``: d p_target / d x per row, and the probabilities.

    ``x`` is ``[n, d]``, ``target`` ``[n]`` integer class ids in ``0..C-1``
    (the caller validates them; an out-of-range id raises ``IndexError``).
    The arithmetic is in ``x``'s dtype promoted with the params' dtype.
    """
    acts = []                                           # ReLU outputs, for the masks
    h = x
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        h = h @ w + b                                   # [n, d_i] -> [n, d_{i+1}]
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
        delta = delta @ params[i][0].T                  # [n, d_{i+1}] -> [n, d_i]
        if i > 0:
            delta *= acts[i - 1] > 0                    # ReLU'(pre) == (post > 0)
    return delta, p
