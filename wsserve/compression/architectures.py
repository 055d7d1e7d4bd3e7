"""Architecture name -> reader, for the ``mlp`` family, and :func:`load_model` on a version file.

===============  =====================================================  ==========================
architecture     arrays                                                 class
===============  =====================================================  ==========================
``mlp``          ``w{i}`` float32 ``[d_in, d_out]``, ``b{i}`` float32    ``MLPModel``
``mlp-int8``     ``w{i}.int8``, ``w{i}.scale``, ``b{i}``                 ``MLPInt8Model``
``mlp-sparse``   ``w{i}.mask``, ``w{i}.values``, ``b{i}``                ``MLPSparseModel``
===============  =====================================================  ==========================

Every reader validates names, dtypes, shapes (within :mod:`.layers` bounds)
and values and raises ``ValueError`` with the architecture and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ..models.base import PredictiveModel
from ..models.mlp import MLPModel
from . import prune, quantize
from .layers import check_array, check_names, check_shapes, layer_count, meta_metrics
from .versionfile import MAX_FILE_BYTES, VersionFile, load_version

__all__ = ["ARCHITECTURES", "architecture_of", "mlp_from_arrays", "model_from_version", "load_model"]

Reader = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], PredictiveModel]


def mlp_from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> MLPModel:
    """Validating reader for architecture ``mlp`` (the arrays of ``MLPModel.to_arrays()``).

    ``meta["layers"]`` is used when present, else the number of ``w{i}``
    arrays.  Raises ``ValueError`` on any bad name, dtype, shape or value.
    """
    n = layer_count(meta, "mlp") if "layers" in meta else sum(1 for k in arrays if k.startswith("w"))
    if not 1 <= n <= 64:
        raise ValueError(f"mlp: expected 1..64 layers, found {n}")
    check_names(arrays, {f"{p}{i}" for i in range(n) for p in "wb"}, "mlp")
    shapes = []
    for i in range(n):
        w = np.asarray(arrays[f"w{i}"])
        if w.ndim != 2:
            raise ValueError(f"mlp: array 'w{i}' must be 2-D, got {list(w.shape)}")
        shapes.append(w.shape)
    check_shapes(shapes, "mlp")
    params = []
    for i, (a, b) in enumerate(shapes):
        w = check_array(arrays, f"w{i}", np.float32, (a, b), "mlp", finite=True)
        bias = check_array(arrays, f"b{i}", np.float32, (b,), "mlp", finite=True)
        params.append((w, bias))
    return MLPModel(params, metrics=meta_metrics(meta, "mlp"))


#: Architecture name -> reader ``(arrays, meta) -> model``.  Read-only.
ARCHITECTURES: Mapping[str, Reader] = MappingProxyType({
    "mlp": mlp_from_arrays,
    quantize.ARCHITECTURE: quantize.MLPInt8Model.from_arrays,
    prune.ARCHITECTURE: prune.MLPSparseModel.from_arrays,
})


def architecture_of(model: object) -> str | None:
    """The architecture name a model object is stored under, or None if not of the ``mlp`` family."""
    if isinstance(model, MLPModel):
        return "mlp"
    return getattr(type(model), "architecture", None) if isinstance(
        model, (quantize.MLPInt8Model, prune.MLPSparseModel)) else None


def model_from_version(vf: VersionFile) -> PredictiveModel:
    """Build the model a loaded version file holds; ``ValueError`` naming the file on any problem."""
    reader = ARCHITECTURES.get(vf.architecture)
    if reader is None:
        raise ValueError(f"model file {str(vf.path)!r}: unknown architecture {vf.architecture!r} "
                         f"(known: {', '.join(ARCHITECTURES)})")
    try:
        return reader(vf.arrays, vf.meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"model file {str(vf.path)!r}: {exc}") from exc


def load_model(path: str | os.PathLike[str], *, max_file_bytes: int = MAX_FILE_BYTES) -> PredictiveModel:
    """Read a version file (or its directory) and build its model.

    Raises :class:`~wsserve.compression.versionfile.VersionFileError` for a
    missing/corrupt file and ``ValueError`` for contents that do not fit the
    architecture.
    """
    return model_from_version(load_version(path, max_file_bytes=max_file_bytes))
