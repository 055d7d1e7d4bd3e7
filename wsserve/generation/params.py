"""What one generation asks for: :class:`~wsserve.protocol.GenerationParams`.

The value type and its checks live with the wire codec (one place validates a
``generate``); this module re-exports it for the engine's users, with the
sampling constant :data:`MIN_TEMPERATURE`.
"""

from __future__ import annotations

from ..protocol import (
    MAX_GUIDED_CHOICE_CHARS,
    MAX_GUIDED_CHOICES,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    GenerationParams,
)

__all__ = [
    "MIN_TEMPERATURE",
    "MAX_TEMPERATURE",
    "MAX_TOP_K",
    "MAX_STOP_STRINGS",
    "MAX_STOP_CHARS",
    "MAX_STOP_TOKEN_IDS",
    "MAX_GUIDED_CHOICES",
    "MAX_GUIDED_CHOICE_CHARS",
    "GenerationParams",
]

#: Positive temperatures below this behave as this (avoids overflow of logits / T).
MIN_TEMPERATURE = 1e-6
