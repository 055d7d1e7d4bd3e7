"""The map and reduce steps that run on Dask workers: pure numpy functions.

They are importable top-level functions (Dask ships them to workers by
reference, so workers need the same wsserve installed) and take and return only
numpy arrays, floats and tuples of them.

Map steps return *sums* over the partition's rows (not means), so the reduce is
a plain sum and the client divides by the total row count once: the mean
gradient of the whole data set, whatever the partitioning.
"""

from __future__ import annotations

import numpy as np

from ..models.mlp import Params, loss_and_grads

__all__ = [
    "linear_gradient_sums",
    "linear_normal_sums",
    "mlp_gradient_sums",
    "sum_arrays",
    "sum_gradients",
    "partition_rows",
]


def linear_gradient_sums(w: float, b: float, part: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``[sum(err*x), sum(err), sum(err^2), rows]`` with ``err = x*w + b - y`` (map)."""
    x, y = part
    err = x[:, 0] * w + b - y[:, 0]  # [m]
    return np.array([np.sum(err * x[:, 0]), np.sum(err), np.sum(err * err), len(err)], dtype=np.float64)


def linear_normal_sums(part: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``[rows, sum x, sum x^2, sum y, sum x*y]``: the least-squares normal equations (map)."""
    x, y = part[0][:, 0], part[1][:, 0]
    return np.array([len(x), x.sum(), (x * x).sum(), y.sum(), (x * y).sum()], dtype=np.float64)


def partition_rows(part: tuple[np.ndarray, np.ndarray]) -> int:
    """Rows held by a partition (used to check a persisted partition)."""
    return len(part[0])


def sum_arrays(*partials: np.ndarray) -> np.ndarray:
    """Elementwise sum of equally shaped arrays (reduce), added in partition order."""
    total = np.array(partials[0], dtype=np.float64, copy=True)
    for p in partials[1:]:
        total += p
    return total


def mlp_gradient_sums(
    params: Params, part: tuple[np.ndarray, np.ndarray], local_idx: np.ndarray
) -> tuple[int, float, Params]:
    """``(rows, summed loss, summed gradients)`` over rows ``local_idx`` of a partition (map).

    ``part`` is ``(x [m, d] float32, y [m] int)``; ``local_idx`` indexes into it.
    """
    x, y = part
    n = len(local_idx)
    loss, grads = loss_and_grads(params, x[local_idx], y[local_idx])  # means over n rows
    return n, loss * n, [(gw * n, gb * n) for gw, gb in grads]


def sum_gradients(*partials: tuple[int, float, Params]) -> tuple[int, float, Params]:
    """Sum the ``(rows, loss, gradients)`` of :func:`mlp_gradient_sums` (reduce)."""
    rows, loss, grads = partials[0]
    total: Params = [(gw.copy(), gb.copy()) for gw, gb in grads]
    for n, part_loss, part_grads in partials[1:]:
        rows += n
        loss += part_loss
        for (tw, tb), (gw, gb) in zip(total, part_grads):
            tw += gw
            tb += gb
    return rows, loss, total
