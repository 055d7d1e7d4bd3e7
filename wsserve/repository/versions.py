"""Version numbers, version policies and the default version. Pure functions.

A version is a positive integer written in canonical decimal (``"1"``,
``"10"``; not ``"0"``, ``"01"``, ``"+1"``, ``" 1"``), at most 15 digits, and
versions compare as numbers: ``10 > 2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from .config import MAX_VERSION, VersionPolicy

__all__ = ["VersionState", "parse_version", "select_versions", "default_version"]

#: A loaded version's life cycle, as ``models`` reports it.
VersionState = Literal["loading", "ready", "unloading", "failed"]

_MAX_DIGITS = len(str(MAX_VERSION))


def parse_version(value: str | int) -> int | None:
    """The version number for a directory name or a request's ``"version"``, or ``None`` if it is not one.

    Accepts a canonical decimal string or a (non-bool) int in ``[1, MAX_VERSION]``.
    Never raises.
    """
    if type(value) is int:
        return value if 0 < value <= MAX_VERSION else None
    if type(value) is not str or not 0 < len(value) <= _MAX_DIGITS:
        return None
    if not value.isascii() or not value.isdigit() or value[0] == "0":
        return None
    return int(value)


def select_versions(available: Iterable[int], policy: VersionPolicy) -> tuple[int, ...]:
    """The versions to serve among ``available``, ascending.

    ``all``: every one; ``latest``: the ``policy.count`` highest; ``specific``:
    those of ``policy.versions`` that are available (a listed version that is
    not there is simply not served).
    """
    versions = sorted(set(available))
    if policy.kind == "latest":
        return tuple(versions[-policy.count:]) if policy.count > 0 else ()
    if policy.kind == "specific":
        wanted = set(policy.versions)
        return tuple(v for v in versions if v in wanted)
    return tuple(versions)


def default_version(states: Mapping[int, VersionState | str]) -> int | None:
    """The highest version whose state is ``"ready"``, or ``None`` if none is ready."""
    ready = [v for v, state in states.items() if state == "ready"]
    return max(ready) if ready else None
