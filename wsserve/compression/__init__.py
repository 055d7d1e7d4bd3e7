"""Model compression for the numpy ``mlp``: int8 weights, magnitude pruning, ONNX int8.

Public API (re-exported from the submodules):

- :func:`compress` (``.compress``): the whole job on files - source version
  -> new version directory with measured figures in its meta.
- :func:`prune_masks`, :func:`finetune_masked` (``.prune``).
- The compressed models themselves live with the other models, re-exported here:
  :class:`MLPInt8Model`, :func:`quantize_per_channel`, :func:`dequantize`
  (:mod:`wsserve.models.mlp_int8`, architecture ``mlp-int8``) and
  :class:`MLPSparseModel` (:mod:`wsserve.models.mlp_sparse`, ``mlp-sparse``).
- :data:`FAMILY`, :func:`architecture_of`, :func:`load_model` (``.architectures``).
  The version file (``model.npz``) is the model repository's format: read and
  written by :mod:`wsserve.repository.npz`, which knows all three architectures.
- ONNX Runtime dynamic quantization lives in :mod:`.onnx_int8` (not imported
  here: it needs the ``onnx`` extra when called); ``wsserve compress`` (the
  command) in :mod:`.cli`.
"""

from ..models.mlp_int8 import MLPInt8Model, dequantize, quantize_per_channel
from ..models.mlp_sparse import MLPSparseModel
from .architectures import FAMILY, architecture_of, load_model
from .compress import METHODS, MODEL_FILE, compress
from .prune import DEFAULT_SCOPE, finetune_masked, prune_masks

__all__ = [
    "DEFAULT_SCOPE",
    "FAMILY",
    "METHODS",
    "MODEL_FILE",
    "MLPInt8Model",
    "MLPSparseModel",
    "architecture_of",
    "compress",
    "dequantize",
    "finetune_masked",
    "load_model",
    "prune_masks",
    "quantize_per_channel",
]
