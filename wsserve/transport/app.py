"""What the transport needs from the application (the server), and the HTTP values it passes.

The transport owns sockets, parsing and framing; the application owns routes,
handshake admission and the per-connection cores.  :class:`App` is everything
the transport may call, so the transport never sees the server itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..httpmsg import HttpExchange, HttpRequest, HttpResponse

if TYPE_CHECKING:
    from ..config import ServerConfig
    from ..connection import Connection, ConnectionIO
    from ..logs import AccessLog
    from .flush import Flusher

__all__ = ["App", "Counters", "HttpExchange", "HttpRequest", "HttpResponse"]


class Counters:
    """Frames handled per path, for one server (``/metrics`` and tests)."""

    __slots__ = ("frames_fast", "frames_library")

    def __init__(self) -> None:
        self.frames_fast = 0
        self.frames_library = 0


class App(Protocol):
    config: ServerConfig
    flusher: Flusher
    counters: Counters
    server_header: str
    #: ``--trusted-proxy`` as networks (:func:`wsserve.config.proxy_networks`); () for none.
    trusted_proxies: tuple[Any, ...]
    #: ``--access-log``: where HTTP requests are recorded once answered (:class:`wsserve.logs.AccessLog`); None: off.
    access_log: AccessLog | None

    def route_http(self, request: HttpRequest, exchange: HttpExchange) -> HttpResponse | None:
        """Answer a plain (non-upgrade) request: a response to send now, or None when the
        application answers later through ``exchange`` (in request order).  Never raises."""

    def vet_websocket(self, request: HttpRequest) -> tuple[Any, HttpResponse | None]:
        """Admission of a WebSocket handshake: ``(grant, None)`` to accept (``grant``: what the
        application grants the connection, e.g. its API key, handed back as it is to
        :meth:`open_connection`), ``(None, response)`` to refuse it with that response.  Never raises."""

    def open_connection(self, io: ConnectionIO, address: str, grant: Any) -> Connection:
        """A new connection core for an accepted WebSocket (it has not sent hello yet);
        ``grant``: what :meth:`vet_websocket` returned."""

    def connection_closed(self, conn: Connection, close_code: int) -> None:
        """The socket of ``conn`` is gone (``close_code``: the code of the side that closed, 1006 if none)."""

    def track(self, transport_protocol: object, alive: bool) -> None:
        """Register (alive) or forget a TCP connection's protocol (shutdown closes what is left).
        An HTTP connection is forgotten when it closes or becomes a WebSocket (before the
        handshake is vetted)."""
