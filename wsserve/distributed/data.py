"""Partition layouts and the generated ``linear`` data set, pure numpy (no Dask).

Two kinds of data are split into partitions:

- **in-memory rows** (the 100-row ``linear`` set, the ``mlp`` training set): built on
  the client, cut into contiguous row ranges by :func:`row_ranges` and scattered;
- **the generated linear set** (:func:`linear_block`): ``rows`` rows of the same
  distribution as the original (``X ~ U(0,1)``, ``y = 3X + U(0,1)``) cut into
  blocks of :data:`BLOCK_ROWS`; block ``j`` is drawn from
  ``np.random.default_rng([seed, TRAIN_STREAM, j])``, so every block is made
  where it is needed (on a worker) and the data set is a function of
  ``(seed, rows)`` alone: the same for any partition or worker count.  A
  partition is a contiguous run of blocks (:func:`block_ranges`).

The generated set is *not* the 100-row original (that one is drawn from
``default_rng(seed)``); it is a different sample of the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.linear import make_linear_data

__all__ = [
    "BLOCK_ROWS",
    "HELDOUT_STREAM",
    "MAX_PARTITIONS",
    "MAX_ROWS",
    "MAX_SEED",
    "TRAIN_STREAM",
    "BlockRange",
    "block_ranges",
    "linear_block",
    "linear_heldout",
    "linear_partition",
    "row_ranges",
    "check_seed",
]

#: Rows per generated block (the unit of generation; a partition is whole blocks).
BLOCK_ROWS = 1 << 16
#: Largest generated data set (10^8 rows = 1.6 GB of float64 over all workers).
MAX_ROWS = 100_000_000
#: Most partitions any training run accepts.
MAX_PARTITIONS = 1024
#: Seeds are ``0 <= seed <= MAX_SEED`` (numpy's SeedSequence takes non-negative ints).
MAX_SEED = 2**63 - 1
#: Second seed word of the generated training blocks and of the generated held-out set.
TRAIN_STREAM = 1
HELDOUT_STREAM = 2


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is an int in ``0..MAX_SEED``; else raise ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return int(seed)


def _check_partitions(partitions: int, units: int, what: str) -> None:
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise ValueError(f"partitions must be an integer, got {partitions!r}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be in 1..{MAX_PARTITIONS}, got {partitions}")
    if partitions > units:
        raise ValueError(f"partitions ({partitions}) must not exceed the number of {what} ({units})")


def row_ranges(n_rows: int, partitions: int) -> list[tuple[int, int]]:
    """``partitions`` contiguous ``(start, stop)`` ranges covering ``0..n_rows``.

    Sizes differ by at most one (the first ones are larger), like ``np.array_split``.
    Raises ``ValueError`` unless ``1 <= partitions <= min(n_rows, MAX_PARTITIONS)``.
    """
    _check_partitions(partitions, n_rows, "rows")
    base, extra = divmod(n_rows, partitions)
    out, start = [], 0
    for i in range(partitions):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


@dataclass(frozen=True, slots=True)
class BlockRange:
    """Blocks ``first..stop-1`` of a generated set of ``rows`` rows (one partition)."""

    first: int
    stop: int
    rows: int

    @property
    def n_rows(self) -> int:
        """Rows in this partition (the last block of the set may be short)."""
        return min(self.stop * BLOCK_ROWS, self.rows) - self.first * BLOCK_ROWS


def block_ranges(rows: int, partitions: int) -> list[BlockRange]:
    """Split the generated set of ``rows`` rows into ``partitions`` runs of whole blocks.

    Raises ``ValueError`` unless ``1 <= rows <= MAX_ROWS`` and
    ``1 <= partitions <= min(number of blocks, MAX_PARTITIONS)``.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"rows must be an integer in 1..{MAX_ROWS}, got {rows!r}")
    n_blocks = -(-rows // BLOCK_ROWS)
    _check_partitions(partitions, n_blocks, f"{BLOCK_ROWS}-row blocks")
    return [BlockRange(a, b, rows) for a, b in row_ranges(n_blocks, partitions)]


def linear_block(seed: int, j: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Block ``j`` of the generated set of ``rows`` rows: ``(x [m, 1], y [m, 1])`` float64."""
    n = min(BLOCK_ROWS, rows - j * BLOCK_ROWS)
    if n <= 0:
        raise ValueError(f"block {j} is past the end of a {rows}-row set")
    return make_linear_data(np.random.default_rng([seed, TRAIN_STREAM, j]), n)


def linear_partition(seed: int, blocks: BlockRange) -> tuple[np.ndarray, np.ndarray]:
    """All rows of one partition, ``(x [m, 1], y [m, 1])``; runs on a worker."""
    parts = [linear_block(seed, j, blocks.rows) for j in range(blocks.first, blocks.stop)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def linear_heldout(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The generated set's held-out rows (a separate stream; small, made on the client)."""
    return make_linear_data(np.random.default_rng([seed, HELDOUT_STREAM]), n)
