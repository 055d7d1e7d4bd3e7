"""Row-pure matrix products: row ``i`` of ``h @ w`` depends only on ``h[i]``, bit for bit.

A BLAS GEMM does not promise that.  Its kernels sum a row's products in an order that can depend
on how many rows the call has and on where the row sits in the kernel's register tile: with
OpenBLAS 0.3.31 (numpy 2.4's wheels) on a Haswell-class CPU, most row counts from 1 to 300 give
some rows different last bits than a 300-row call, and in any call of 12 rows or more, rows 6-11
of every 12 differ from rows 0-5 for the same input.  So a model that batched rows with a plain
``h @ w`` answered a row differently alone and in a batch.

:func:`rowpure_matmul` makes every row go through the same call: the rows in blocks of a fixed
size ``B`` (the last one padded with zero rows), one stacked ``np.matmul`` of ``[n / B, B, k] @
[k, m]``, each block its own GEMM of the same shape.  What is left is a row's position inside its
block; :func:`row_block` picks ``B`` once per weight matrix by checking, on this machine's BLAS,
that a row's result is the same at each of the ``B`` positions (8 where that holds - measured
1.66x the time of one plain GEMM for 64 rows of the built-in ``mlp`` -, else 1: one row per GEMM,
which no position can change).  BLAS runs the same instructions whatever the values are, so one
check per shape answers for every input.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BLOCK_CANDIDATES", "row_block", "rowpure_matmul"]

#: Block sizes tried by :func:`row_block`, largest first (1 always holds).
BLOCK_CANDIDATES = (8,)


def row_block(w: np.ndarray) -> int:
    """The rows per GEMM call that keep products with ``w`` (``[k, m]``, in the dtype the rows
    will have) row-pure on this machine: the first of :data:`BLOCK_CANDIDATES` at whose every
    position a row gets the same result, else 1.  A few small GEMMs (microseconds)."""
    k = w.shape[0]
    rng = np.random.default_rng(0)
    for b in BLOCK_CANDIDATES:
        x = rng.standard_normal((b, k)).astype(w.dtype)
        base = np.matmul(x[None], w)[0]
        if all(np.array_equal(np.matmul(np.roll(x, s, axis=0)[None], w)[0], np.roll(base, s, axis=0))
               for s in range(1, b)):
            return b
    return 1


def rowpure_matmul(h: np.ndarray, w: np.ndarray, block: int) -> np.ndarray:
    """``h @ w`` (``[n, k] @ [k, m] -> [n, m]``, C-contiguous) with row ``i`` a function of ``h[i]``
    alone, bit for bit, given ``block = row_block(w)``."""
    n, k = h.shape
    pad = -n % block
    if pad:
        h = np.concatenate([h, np.zeros((pad, k), dtype=h.dtype)])
    out = np.matmul(h.reshape(-1, block, k), w)
    return out.reshape(-1, w.shape[1])[:n] if pad else out.reshape(n, w.shape[1])
