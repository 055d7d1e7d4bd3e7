"""Business Logic Scripting (BLS), the model's side: which ``execute`` is running in this thread.

A Triton Python model calls another model from ``execute`` with
``pb_utils.InferenceRequest(...).exec()`` (or ``await ....async_exec()`` in an ``async def
execute``).  The request object is the model's own, built with no reference to the server, so
:meth:`~.triton_backend.TritonPythonModel` runs each ``execute`` inside :func:`executing`, which
records the calling model and the server's :class:`Gateway` in a context variable;
``exec`` finds them with :func:`current` (outside an ``execute``: None, and ``exec`` raises, as
Triton's does in ``initialize`` and ``finalize``).  The gateway itself (the pool, the batching
queues, the limits) is :class:`wsserve.bls.BlsGateway`, injected by the registry at load: this
module only names what the model's side needs of it.

The context variable is per thread (and per asyncio task: an ``async def execute``'s tasks see
it), never shared between two executes running side by side.  A thread the model starts itself
(a ``ThreadPoolExecutor`` in ``execute``) has none: Triton serves its BLS requests all the same
(anywhere once the model is initialized, until ``finalize``), so a request also finds its caller
as :func:`from_code` says (a request remembers the ``execute`` it was built in, too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CALLER_HOOK", "Caller", "Gateway", "current", "executing", "from_code"]

#: The name a Triton Python model's module holds its hook under: a callable answering the model's
#: :class:`Caller` while it serves (initialized, not finalized), else None.
CALLER_HOOK = "__wsserve_bls_caller__"


class Gateway(Protocol):
    """What runs a BLS request: :meth:`call` starts ``request`` (a ``pb_utils.InferenceRequest``)
    for ``caller`` and returns a future that always ends with a ``pb_utils.InferenceResponse``
    (an error is in the response, never raised).  Thread-safe; never called on the event loop
    (it answers that with an error response)."""

    def call(self, caller: Caller, request: Any) -> concurrent.futures.Future[Any]: ...

    def call_async(self, caller: Caller, request: Any) -> asyncio.Future[Any]:
        """As :meth:`call`, from a coroutine of the model's own running loop: an asyncio future of
        that loop (``async_exec``)."""
        ...

    def call_decoupled(self, caller: Caller, request: Any) -> Any:
        """``exec(decoupled=True)``: an iterator of the called model's responses as they come."""
        ...

    def call_decoupled_async(self, caller: Caller, request: Any) -> asyncio.Future[Any]:
        """``async_exec(decoupled=True)``: an asyncio future of the model's loop, set to that
        iterator when the first response comes."""
        ...


@dataclass(frozen=True, slots=True)
class Caller:
    """The model whose ``execute`` makes a BLS request: its name, version, and the gateway (None:
    the model was loaded without a server, e.g. by :func:`~.loader.load_version` alone)."""

    model: str
    version: int
    gateway: Gateway | None
    #: the model version's custom metrics (:class:`wsserve.custommetrics.Owner`), for a
    #: ``pb_utils.MetricFamily`` made in ``execute`` or a thread of the model's; None: none
    metrics: Any = None


_CALLER: ContextVar[Caller | None] = ContextVar("wsserve_bls_caller", default=None)


@contextlib.contextmanager
def executing(caller: Caller) -> Iterator[None]:
    """While the block runs, :func:`current` is ``caller`` in this thread."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


def current() -> Caller | None:
    """The ``execute`` running here (its model and gateway), or None outside one."""
    return _CALLER.get()


def from_code(depth: int = 1) -> Caller | None:
    """The model whose code is running in this thread: the innermost frame of a model.py (its
    module's :data:`CALLER_HOOK`) from ``depth`` frames up, asked for its :class:`Caller` (None:
    no model's code, or a model not serving: in ``initialize``, ``finalize``)."""
    try:
        frame: Any = sys._getframe(depth + 1)
    except ValueError:  # a stack shallower than that
        return None
    while frame is not None:
        hook: Callable[[], Caller | None] | None = frame.f_globals.get(CALLER_HOOK)
        if hook is not None:
            return hook()
        frame = frame.f_back
    return None
