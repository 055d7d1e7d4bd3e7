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
it), never shared between two executes running side by side.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Caller", "Gateway", "current", "executing"]


class Gateway(Protocol):
    """What runs a BLS request: :meth:`call` starts ``request`` (a ``pb_utils.InferenceRequest``)
    for ``caller`` and returns a future that always ends with a ``pb_utils.InferenceResponse``
    (an error is in the response, never raised).  Thread-safe; never called on the event loop
    (it answers that with an error response)."""

    def call(self, caller: Caller, request: Any) -> concurrent.futures.Future[Any]: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """The model whose ``execute`` makes a BLS request: its name, version, and the gateway (None:
    the model was loaded without a server, e.g. by :func:`~.loader.load_version` alone)."""

    model: str
    version: int
    gateway: Gateway | None


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
