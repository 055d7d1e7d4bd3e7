"""Shared pieces of the ``mlp`` family's readers: bounds, array checks, a row-pure forward.

Every ``from_arrays`` here checks names, dtypes, shapes and values against
these bounds and raises ``ValueError`` naming the array and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .mlp import softmax
from .rowpure import rowpure_matmul

__all__ = [
    "MAX_LAYERS",
    "MAX_WIDTH",
    "MAX_PARAMETERS",
    "LayerShapes",
    "check_shapes",
    "check_array",
    "check_names",
    "layer_count",
    "meta_metrics",
    "forward_rowpure",
]

#: Upper bounds on what a model file may describe (checked before any allocation from meta).
MAX_LAYERS = 64
MAX_WIDTH = 1 << 16
MAX_PARAMETERS = 1 << 27

#: ``[(d_in, d_out), ...]`` one pair per layer, chained (``d_out[i] == d_in[i+1]``).
LayerShapes = list[tuple[int, int]]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def layer_count(meta: Mapping[str, Any], architecture: str) -> int:
    """``meta["layers"]`` as an int in ``1..MAX_LAYERS``; raises ``ValueError``."""
    n = meta.get("layers")
    if not _is_int(n) or not 1 <= int(n) <= MAX_LAYERS:
        raise ValueError(f"{architecture}: meta 'layers' must be an integer in 1..{MAX_LAYERS}, got {n!r}")
    return int(n)


def meta_metrics(meta: Mapping[str, Any], architecture: str) -> dict[str, Any]:
    """A copy of ``meta["metrics"]`` (``{}`` if absent); ``ValueError`` if it is not an object."""
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ValueError(f"{architecture}: meta 'metrics' must be a JSON object, got {type(metrics).__name__}")
    return dict(metrics)


def check_shapes(shapes: Sequence[Sequence[int]], architecture: str) -> LayerShapes:
    """Validate chained layer shapes within the bounds; raises ``ValueError``."""
    if not isinstance(shapes, (list, tuple)) or not 1 <= len(shapes) <= MAX_LAYERS:
        raise ValueError(f"{architecture}: expected 1..{MAX_LAYERS} layer shapes, got {shapes!r:.80}")
    out: LayerShapes = []
    for i, s in enumerate(shapes):
        if not isinstance(s, (list, tuple)) or len(s) != 2 or not all(_is_int(v) for v in s):
            raise ValueError(f"{architecture}: layer {i} shape must be [d_in, d_out] integers, got {s!r:.80}")
        a, b = int(s[0]), int(s[1])
        if not (1 <= a <= MAX_WIDTH and 1 <= b <= MAX_WIDTH):
            raise ValueError(f"{architecture}: layer {i} shape {[a, b]} outside 1..{MAX_WIDTH}")
        if out and out[-1][1] != a:
            raise ValueError(f"{architecture}: layer {i} takes {a} inputs but layer {i - 1} gives {out[-1][1]}")
        out.append((a, b))
    total = sum(a * b + b for a, b in out)
    if total > MAX_PARAMETERS:
        raise ValueError(f"{architecture}: {total} parameters is over the {MAX_PARAMETERS} limit")
    return out


def check_names(arrays: Mapping[str, np.ndarray], expected: set[str], architecture: str) -> None:
    """The array names must be exactly ``expected``; raises ``ValueError`` naming the difference."""
    missing = sorted(expected - set(arrays))
    extra = sorted(set(arrays) - expected)
    if missing or extra:
        raise ValueError(f"{architecture}: missing arrays {missing}, unexpected arrays {extra}")


def check_array(
    arrays: Mapping[str, np.ndarray], name: str, dtype: Any, shape: tuple[int, ...], architecture: str,
    *, finite: bool = False,
) -> np.ndarray:
    """``arrays[name]`` if it has exactly ``dtype`` and ``shape`` (and is finite if asked)."""
    a = np.asarray(arrays[name])
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{architecture}: array {name!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    if a.shape != shape:
        raise ValueError(f"{architecture}: array {name!r} has shape {list(a.shape)}, expected {list(shape)}")
    if finite and not np.isfinite(a).all():
        raise ValueError(f"{architecture}: array {name!r} holds non-finite values")
    return a


def forward_rowpure(
    layers: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    x: np.ndarray,
    label: str,
    blocks: Sequence[int],
) -> np.ndarray:
    """``[n, d] -> [n, C]`` softmax probabilities through ``(W, scale, b)`` float32 layers.

    Each layer is ``h @ W`` (float32 GEMM, in same-shaped blocks of ``blocks[i]`` rows: see
    :mod:`wsserve.models.rowpure`), times the per-output-column ``scale`` if not None, plus
    ``b``; ReLU between layers.  Row i of the result is bitwise the same whatever else is in
    the batch, as :class:`wsserve.models.mlp.MLPModel` does.  Raises ``ValueError`` naming
    ``label`` on a wrong input shape.
    """
    d = layers[0][0].shape[0]
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{label} expects inputs of shape [n, {d}], got {list(x.shape)}")
    h = np.array(x, dtype=np.float32, order="C")
    last = len(layers) - 1
    for i, ((w, scale, b), block) in enumerate(zip(layers, blocks, strict=True)):
        h = rowpure_matmul(h, w, block)                 # [n, d_i] -> [n, d_{i+1}], float32 accumulation
        if scale is not None:
            h *= scale
        h += b
        if i < last:
            np.maximum(h, 0, out=h)
    return softmax(h.astype(np.float64))                # [n, C]
