"""What the Python test suites and the benchmarks share to drive a real server.

Importable as ``tests.support`` from tests/, clients/python/tests/ and benchmarks/
(each puts the repository root on ``sys.path``).  Imports no ``wsserve`` module and no
pytest, so the client's tests and the benchmarks can use it as they are.

- :mod:`~tests.support.process`: :class:`ServerProcess` (the CLI in a subprocess, ready
  on its :data:`READY_LINE`), ``/proc`` readers.
- :mod:`~tests.support.conn`: :class:`Conn`, a thin JSON client on ``websockets``.
- :mod:`~tests.support.rawws`: :class:`RawClient` / :class:`AsyncRawClient`, handshake
  and frames by hand.
- :mod:`~tests.support.metrics`: :func:`scrape_metrics` (``/metrics`` parsed, optional
  Bearer key), :func:`http_get`.
- :mod:`~tests.support.rawhttp`: :class:`RawHttp`, an HTTP/1.1 client on a raw socket
  (any bytes out, answers read by hand), :func:`request_bytes`.
- :mod:`~tests.support.waits`: :func:`wait_until` / :func:`wait_until_async`.
- :mod:`~tests.support.load_gates`: ``threading.Event`` gates an in-process server's ``model.py``
  waits on (a load that hangs until the test lets it go).
"""

from tests.support.conn import TERMINAL, Conn
from tests.support.metrics import Metrics, http_get, scrape_metrics
from tests.support.process import (
    READY_LINE,
    ROOT,
    TRANSPORTS,
    ServerProcess,
    child_env,
    cpu_seconds,
    interrupt_on_sigterm,
    proc_status,
    serve_command,
)
from tests.support.rawhttp import Answer, RawHttp, request_bytes
from tests.support.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    AsyncRawClient,
    Frame,
    FrameParser,
    RawClient,
    client_frame,
    close_code,
    encode_message,
    handshake_request,
)
from tests.support.waits import wait_until, wait_until_async

__all__ = [
    "OP_BINARY", "OP_CLOSE", "OP_CONT", "OP_PING", "OP_PONG", "OP_TEXT", "READY_LINE", "ROOT", "TERMINAL", "TRANSPORTS",
    "Answer", "AsyncRawClient", "Conn", "Frame", "FrameParser", "Metrics", "RawClient", "RawHttp", "ServerProcess",
    "child_env",
    "client_frame", "close_code", "cpu_seconds", "encode_message", "handshake_request", "http_get",
    "proc_status", "request_bytes", "scrape_metrics", "serve_command", "wait_until", "wait_until_async",
    "interrupt_on_sigterm",
]
