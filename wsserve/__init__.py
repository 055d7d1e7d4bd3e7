"""wsserve: an async streaming inference server over WebSockets.

Public API::

    from wsserve import ServerConfig, Server, run, __version__

The wire protocol is documented in ``docs/PROTOCOL.md``; the CLI is
``wsserve serve`` (see ``wsserve serve --help``).
"""

from ._version import __version__
from .config import ServerConfig
from .errors import WsserveError

__all__ = ["__version__", "ServerConfig", "Server", "WsserveError", "run"]


def __getattr__(name: str):  # lazy: importing wsserve must not pull in websockets/numpy
    if name in ("Server", "run"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'wsserve' has no attribute {name!r}")
