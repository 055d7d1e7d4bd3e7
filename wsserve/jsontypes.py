"""Decoded values in error messages (one place for every codec): the JSON name of a value's type,
a refused value shown cut, and text made fit for a JSON frame."""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_MESSAGE_CHARS", "described", "frame_text", "json_type", "shown", "utf8_text"]

#: Characters of a refused value an error message shows at most.
SHOWN_CHARS = 64
#: Characters of an error message or a failure reason at most (:func:`frame_text`).
MAX_MESSAGE_CHARS = 2048


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


def described(value: Any) -> str:
    """A refused value for "must be an integer, got ...": a number is shown (``1.5``; an integer
    too large for 64 bits, which the JSON decoder reads as a float, is said to be one), anything
    else named by its JSON type."""
    if type(value) is float:
        if value.is_integer() and abs(value) >= 2**63:
            return f"{value!r} (a JSON integer beyond 64 bits is read as a floating-point number)"
        return shown(value)
    return json_type(value)


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (ending ``...``): a refused
    value may be most of a request (a long string, a large array) and is not echoed whole.  A
    value nested too deeply for ``repr`` (the wire's parser takes 1024 levels) is described instead.
    JSON's ``true``, ``false`` and ``null`` are shown as the client wrote them, not by Python's names."""
    if value is None or type(value) is bool:
        return "null" if value is None else "true" if value else "false"
    try:
        text = repr(value)
    except RecursionError:
        return f"({json_type(value)} nested too deeply to show)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def utf8_text(text: str) -> str:
    """``text`` as a JSON frame (UTF-8) can carry it: each lone surrogate written as its escape
    (``\\udcff``).  Such a character comes from an undecodable byte of a file name (Python reads
    byte 0xff of a path as ``\\udcff``), which a model's error names, and would make the frame
    (or the ``models`` list it is part of) fail to encode.  Any other text is returned as it is."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def frame_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An error message or a failure reason as it goes out: :func:`utf8_text`, and at most
    ``limit`` characters (for ``limit`` >= 40; a longer one is cut, saying how much was left out).  Such text may
    quote an exception a model's own code raised, whose size nothing else bounds: a ``model.py``
    raising a megabyte-long message must not make every error frame of its requests, or the
    ``models`` list naming its failure, a megabyte long."""
    if len(text) > limit:
        kept = max(0, limit - 40)  # room for the tail below, whatever the count
        text = f"{text[:kept]}... ({len(text) - kept} more characters)"
    return utf8_text(text)
