"""Choosing the next token for a whole batch in one vectorized call (pure numpy).

Sampling uses the Gumbel-max trick: ``argmax(logits / T + G)`` with ``G`` i.i.d.
standard Gumbel noise is an exact sample from ``softmax(logits / T)``.  The noise
comes from each request's own generator (:func:`gumbel_block`), drawn in fixed
blocks, so a request's tokens depend only on its seed and its logits - never on
batch size or neighbours.  Every batch operation here is elementwise or per row
(division, sort, argmax), so a row's result is bitwise independent of the batch.
"""

from __future__ import annotations

import numpy as np

from .params import MIN_TEMPERATURE

__all__ = ["NOISE_BLOCK", "gumbel_block", "new_generator", "sample"]

#: Rows of noise drawn per refill of a sampled request (amortises generator calls).
NOISE_BLOCK = 16


def new_generator(seed: int | None) -> np.random.Generator:
    """A request's private generator: PCG64 seeded with ``seed mod 2**64`` (fresh if None)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.Generator(np.random.PCG64(seed & 0xFFFF_FFFF_FFFF_FFFF))


def gumbel_block(rng: np.random.Generator, vocab_size: int) -> np.ndarray:
    """``[NOISE_BLOCK, V]`` float64 standard Gumbel noise, row t for the request's t-th next token.

    ``-log(-log(U))`` with ``U`` uniform from the request's generator, consumed in
    order, so the noise for a request's t-th token does not depend on anything
    else.  (Vectorized logs on a block of fixed shape: 3x faster than
    ``Generator.gumbel`` and still the same values for the same seed.)
    """
    u = rng.random((NOISE_BLOCK, vocab_size))
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)
    np.negative(u, out=u)
    return u


def sample(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_k: np.ndarray,
    noise: np.ndarray | None,
) -> np.ndarray:
    """Pick one token per row.

    ``logits [B, V]`` float64; ``temperature [B]`` (0 = greedy); ``top_k [B]`` int
    (0 = off); ``noise [B, V]`` Gumbel noise (zero rows for greedy requests), or
    ``None`` when every row is greedy.  Returns ``[B]`` int64 token ids.
    Greedy rows take the argmax (first index on ties).
    """
    if noise is None:
        return logits.argmax(axis=1)  # [B]
    vocab = logits.shape[1]
    scale = np.where(temperature > 0, np.maximum(temperature, MIN_TEMPERATURE), 1.0)  # [B]
    z = logits / scale[:, None]  # [B, V]
    rows = np.flatnonzero((top_k > 0) & (top_k < vocab) & (temperature > 0))
    if len(rows):
        sub = z[rows]  # [R, V]
        kth = np.sort(sub, axis=1)[np.arange(len(rows)), vocab - top_k[rows]]  # [R] k-th largest
        sub[sub < kth[:, None]] = -np.inf
        z[rows] = sub
    z += noise
    return z.argmax(axis=1)  # [B]
