"""The optimiser every numpy-trained model shares: Adam with bias correction.

:class:`Adam` updates parameter arrays *in place*; the learning rate is passed
to every :meth:`Adam.step`, so each model keeps its own schedule (``mlp``:
linear decay; ``charlm``: warm-up then cosine) and this module knows none.

The update is the one in Kingma & Ba (2015), section 2, in its "more efficient
order"::

    m   = beta1 * m + (1 - beta1) * g
    v   = beta2 * v + (1 - beta2) * g * g
    a_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)      # a float64 scalar
    p  -= a_t * m / (sqrt(v) + eps)

which equals ``lr * m_hat / (sqrt(v_hat) + eps_hat)`` with
``eps_hat = eps / sqrt(1 - beta2**t)`` (so ``eps`` weighs a little more in the
first steps than in the textbook form).  Every operation is element-wise, with no
reductions and no BLAS, so a step is bit-for-bit the same on any machine for
the same inputs; ``a_t * m`` is computed in float64 and rounded once into the
parameter's dtype.

``params`` may be one array or a (nested) list/tuple of arrays - e.g. ``mlp``'s
``[(W, b), ...]`` or a NamedTuple - and ``grads`` must have the same structure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

__all__ = ["Adam", "ArrayTree"]

#: An array, or a list/tuple (incl. NamedTuple) of them, nested to any depth.
ArrayTree: TypeAlias = np.ndarray | Sequence["ArrayTree"]


def _leaves(tree: ArrayTree, what: str) -> list[np.ndarray]:
    """The arrays of ``tree`` in depth-first order.  Raises ``TypeError`` on anything else."""
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [leaf for sub in tree for leaf in _leaves(sub, what)]
    raise TypeError(f"{what} must be numpy arrays or lists/tuples of them, "
                    f"got {type(tree).__name__}")


class Adam:
    """Adam over the arrays of ``params``, which it updates in place.

    Call order: construct once with the parameters, then ``step(grads, lr)``
    once per mini-batch.  ``t`` counts the steps taken (0 before the first).
    Raises ``ValueError`` for betas outside ``[0, 1)``, a negative ``eps``,
    parameters that are not writable floating-point arrays, or (in
    :meth:`step`) gradients whose structure or shapes differ from ``params``;
    ``TypeError`` for leaves that are not numpy arrays.
    """

    def __init__(self, params: ArrayTree, *, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta!r}")
        if not (eps >= 0.0 and math.isfinite(eps)):
            raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
        self._params = _leaves(params, "params")
        for i, p in enumerate(self._params):
            if p.dtype.kind != "f" or not p.flags.writeable:
                raise ValueError(f"parameter {i} must be a writable float array, "
                                 f"got dtype {p.dtype}, writeable={p.flags.writeable}")
        self._m = [np.zeros_like(p) for p in self._params]
        self._v = [np.zeros_like(p) for p in self._params]
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._t = 0

    @property
    def t(self) -> int:
        """Steps taken so far."""
        return self._t

    def step(self, grads: ArrayTree, lr: float) -> None:
        """Apply one update with learning rate ``lr`` to every parameter in place.

        ``grads`` has the structure of ``params``.  Nothing is updated (and
        ``t`` does not move) if it does not match.
        """
        flat = _leaves(grads, "grads")
        if len(flat) != len(self._params):
            raise ValueError(f"got {len(flat)} gradient arrays for {len(self._params)} parameters")
        for i, (p, g) in enumerate(zip(self._params, flat)):
            if g.shape != p.shape:
                raise ValueError(f"gradient {i} has shape {g.shape}, parameter {p.shape}")
        self._t += 1
        b1, b2 = self.beta1, self.beta2
        step = lr * np.sqrt(1 - b2**self._t) / (1 - b1**self._t)  # np.float64
        for p, g, m, v in zip(self._params, flat, self._m, self._v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            p -= (step * m) / (np.sqrt(v) + self.eps)
