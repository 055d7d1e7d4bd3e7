"""Model compression for the numpy ``mlp``: int8 weights, magnitude pruning, ONNX int8.

Public API (re-exported from the submodules):

- :func:`compress` (``.compress``): the whole job on files - source version
  -> new version directory with measured figures in its meta.
- :class:`MLPInt8Model`, :func:`quantize_per_channel`, :func:`dequantize`
  (``.quantize``, architecture ``mlp-int8``).
- :class:`MLPSparseModel`, :func:`prune_masks`, :func:`finetune_masked`
  (``.prune``, architecture ``mlp-sparse``).
- :data:`ARCHITECTURES`, :func:`load_model`, :func:`mlp_from_arrays`
  (``.architectures``); :func:`save_version`, :func:`load_version`,
  :func:`encode_version`, :class:`VersionFileError` (``.versionfile``).
- ONNX Runtime dynamic quantization lives in :mod:`.onnx_int8` (not imported
  here: it needs the ``onnx`` extra when called).
"""

from .architectures import ARCHITECTURES, architecture_of, load_model, mlp_from_arrays, model_from_version
from .compress import METHODS, compress
from .prune import DEFAULT_SCOPE, MLPSparseModel, finetune_masked, prune_masks
from .quantize import MLPInt8Model, dequantize, quantize_per_channel
from .versionfile import (
    MODEL_FILE,
    VersionFile,
    VersionFileError,
    encode_version,
    load_version,
    save_version,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_SCOPE",
    "METHODS",
    "MODEL_FILE",
    "MLPInt8Model",
    "MLPSparseModel",
    "VersionFile",
    "VersionFileError",
    "architecture_of",
    "compress",
    "dequantize",
    "encode_version",
    "finetune_masked",
    "load_model",
    "load_version",
    "mlp_from_arrays",
    "model_from_version",
    "prune_masks",
    "quantize_per_channel",
    "save_version",
]
