"""The ``mlp`` family's architecture names, and :func:`load_model` on a version file.

===============  =====================================================  ==========================
architecture     arrays                                                 class
===============  =====================================================  ==========================
``mlp``          ``w{i}`` float32 ``[d_in, d_out]``, ``b{i}`` float32    ``MLPModel``
``mlp-int8``     ``w{i}.int8``, ``w{i}.scale``, ``b{i}``                 ``MLPInt8Model``
``mlp-sparse``   ``w{i}.mask``, ``w{i}.values``, ``b{i}``                ``MLPSparseModel``
===============  =====================================================  ==========================

The file format, its reader and writer, and the architecture -> reader map
are the model repository's (:mod:`wsserve.repository.npz`, which knows these
three); every reader validates names, dtypes, shapes and values.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..models import mlp_int8, mlp_sparse
from ..models.base import PredictiveModel
from ..models.mlp import MLPModel
from ..repository.layout import MODEL_FILES
from ..repository.npz import MAX_NPZ_BYTES, build_npz_model, read_npz

__all__ = ["FAMILY", "architecture_of", "version_file", "load_model"]

#: The architectures of the ``mlp`` family (the fp32 source and its compressed forms).
FAMILY: tuple[str, ...] = ("mlp", mlp_int8.ARCHITECTURE, mlp_sparse.ARCHITECTURE)


def architecture_of(model: object) -> str | None:
    """The architecture name a model object is stored under, or None if not of the ``mlp`` family."""
    if isinstance(model, MLPModel):
        return "mlp"
    return getattr(type(model), "architecture", None) if isinstance(
        model, (mlp_int8.MLPInt8Model, mlp_sparse.MLPSparseModel)) else None


def version_file(path: str | os.PathLike[str]) -> Path:
    """``path/model.npz`` if ``path`` is a directory (or does not end in ``.npz``), else ``path``."""
    p = Path(path)
    if p.is_dir() or p.suffix != ".npz":
        return p / MODEL_FILES["npz"]
    return p


def load_model(path: str | os.PathLike[str], *, max_bytes: int = MAX_NPZ_BYTES) -> PredictiveModel:
    """Read a version's ``model.npz`` (``path`` is the file or its version directory) and build its model.

    Raises :class:`~wsserve.repository.ModelLoadError` (a ``ValueError``)
    naming the file for a missing, corrupt or ill-fitting file.
    """
    return build_npz_model(read_npz(version_file(path), max_bytes=max_bytes))
