"""wsserve: an async streaming inference server over WebSockets.

Public API::

    from wsserve import ServerConfig, Server, run, __version__
    from wsserve import serve, FunctionModel, onnx_model     # serving a program's own models

The wire protocol is documented in ``docs/PROTOCOL.md``; the CLI is
``wsserve serve`` (see ``wsserve serve --help``); serving your own models
(repository, embedding) is docs/repository.md.
"""

from ._version import __version__
from .config import ServerConfig
from .errors import WsserveError

__all__ = ["__version__", "ServerConfig", "Server", "WsserveError", "run", "serve", "FunctionModel", "onnx_model"]

#: Lazy attributes: importing wsserve must not pull in websockets/numpy.
_LAZY = {
    "Server": "server",
    "run": "server",
    "serve": "embed",
    "onnx_model": "embed",
    "FunctionModel": "repository.function_backend",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsserve' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
