"""wsserve: an async streaming inference server over WebSockets.

Public API::

    from wsserve import ServerConfig, Server, run, __version__

The wire protocol is documented in ``docs/PROTOCOL.md``; the CLI is
``wsserve serve`` (see ``wsserve serve --help``).
"""

__version__ = "0.1.0"

from .config import ServerConfig  # noqa: E402
from .errors import WsserveError  # noqa: E402

__all__ = ["__version__", "ServerConfig", "Server", "WsserveError", "run"]


def __getattr__(name: str):  # lazy: importing wsserve must not pull in websockets/numpy
    if name in ("Server", "run"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'wsserve' has no attribute {name!r}")
