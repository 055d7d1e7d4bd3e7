"""Decoded values in error messages (one place for every codec): the JSON name of a value's type,
and a refused value shown cut."""

from __future__ import annotations

from typing import Any

__all__ = ["json_type", "shown"]

#: Characters of a refused value an error message shows at most.
SHOWN_CHARS = 64


def json_type(value: Any) -> str:
    """``null``, ``boolean``, ``number``, ``string``, ``array`` or ``object`` for what a JSON
    decoder returns (tuples count as arrays); the Python type's name for anything else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (ending ``...``): a refused
    value may be most of a request (a long string, a large array) and is not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
