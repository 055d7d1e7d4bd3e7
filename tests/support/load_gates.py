"""Gates a test holds a ``model.py`` with: a ``threading.Event`` per key, in this process.

A model.py written by the test (run by an in-process server) calls :func:`wait_gate` with the key
the test wrote into its version directory; the load (its ``Model()``) then blocks until the test
sets the event.  Every wait gives up after 120 s (returning), so a broken test cannot hold a
thread forever.  Tests set their events at the end (``try/finally``), then wait for the load threads to end.
"""

from __future__ import annotations

import threading
import uuid

__all__ = ["new_gate", "wait_gate", "GATES"]

#: key -> the event a model.py waits on (tests only: one process runs one test at a time).
GATES: dict[str, threading.Event] = {}


def new_gate() -> tuple[str, threading.Event]:
    """A fresh key and its (unset) event."""
    key = uuid.uuid4().hex
    GATES[key] = threading.Event()
    return key, GATES[key]


def wait_gate(key: str) -> None:
    """Block until the test sets ``key``'s event (at most 120 s)."""
    GATES[key].wait(120)
