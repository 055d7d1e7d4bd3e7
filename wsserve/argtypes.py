"""argparse value types shared by the subcommands (``wsserve compress``, ``wsserve train``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["bounded_int"]


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``lo..hi``, else ``ArgumentTypeError`` naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, got {value}")
        return value

    return parse
