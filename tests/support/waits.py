"""Predicate waits: poll a condition until it holds, fail naming it when it never does.

Use these instead of ``sleep`` followed by ``assert``: a wait ends as soon as the
condition holds (fast on a fast machine) and only fails after a generous
``timeout_s`` (robust on a slow one).  A sleep stays only where the elapsed time is
itself the behaviour under test (e.g. "nothing more happens during 50 ms", "wait
out the idle timeout"); say so next to it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["wait_until", "wait_until_async"]

T = TypeVar("T")


def _describe(predicate: object, what: str | None) -> str:
    if what:
        return what
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    if name.endswith("<lambda>"):
        try:  # the lambda's own source line says more than "<lambda>"
            return inspect.getsource(predicate).strip()[:200]  # type: ignore[arg-type]
        except (OSError, TypeError):
            pass
    return name


def _timed_out(predicate: object, what: str | None, timeout_s: float, last: object) -> AssertionError:
    return AssertionError(f"not met within {timeout_s:g} s: {_describe(predicate, what)} (last value: {last!r:.300})")


def wait_until(predicate: Callable[[], T], timeout_s: float, *, interval_s: float = 0.02, what: str | None = None) -> T:
    """Call ``predicate()`` every ``interval_s`` until it returns a truthy value, and return that value.

    Blocking (for plain test functions and benchmarks).  The predicate is always called
    at least once.  Raises ``AssertionError`` naming ``what`` (or the predicate's source)
    and its last value when it is still falsy after ``timeout_s``; exceptions raised by
    the predicate propagate at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(predicate, what, timeout_s, value)
        time.sleep(interval_s)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float,
    *,
    interval_s: float = 0.02,
    what: str | None = None,
    in_thread: bool = False,
) -> T:
    """:func:`wait_until` for coroutines: sleeps with ``asyncio.sleep`` between calls.

    ``predicate`` may be a plain function or return an awaitable (which is awaited).
    ``in_thread=True`` runs a blocking predicate (an HTTP scrape, a ``/proc`` read) in a
    worker thread so the event loop keeps serving the test's own connections.
    Raises ``AssertionError`` as :func:`wait_until` does.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await asyncio.to_thread(predicate) if in_thread else predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() >= deadline:
            raise _timed_out(predicate, what, timeout_s, value)
        await asyncio.sleep(interval_s)
