"""Shapes with variable dimensions: ``-1`` in a model's declared shape takes any size (Triton's
wildcard).  Sans-I/O, no dependencies: every layer that checks a tensor's shape uses it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["VARIABLE", "MAX_VALUES", "fits"]

#: A declared dimension that takes any size (config.pbtxt's ``-1``).
VARIABLE = -1
#: Values one row may hold where a declared dimension is :data:`VARIABLE` (the request sizes it): the
#: repository's bound on a declared row (``MAX_ROW_ELEMENTS``), on every transport.
MAX_VALUES = 1 << 22


def fits(shape: Sequence[int], declared: Sequence[int]) -> bool:
    """True when ``shape`` (a tensor's) has ``declared``'s rank and equals it wherever ``declared`` is
    not :data:`VARIABLE`."""
    return len(shape) == len(declared) and all(d == VARIABLE or d == s for s, d in zip(shape, declared, strict=True))
