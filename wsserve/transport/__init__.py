"""The I/O edge: one listening socket speaking HTTP/1.1 and WebSocket.

- :mod:`.http` - :class:`HttpProtocol`, the asyncio protocol every TCP connection
  starts with: HTTP/1.1 parsed by ``httptools`` (keep-alive, pipelining, limits,
  timeouts); plain requests go to the application's routes, answered at once or
  later through their :class:`Exchange` (in request order, whole or streamed);
  a WebSocket upgrade hands the socket to :mod:`.websocket` (or :mod:`.picows_conn`,
  per ``config.transport``).
- :mod:`.websocket` - :class:`WebSocketProtocol`: the handshake, control frames,
  fragments, extensions and errors done by the ``websockets`` library's sans-I/O
  :class:`~websockets.server.ServerProtocol`; whole data frames parsed and
  replies framed here (the fast path); feeds one sans-I/O
  :class:`~wsserve.connection.Connection`.
- :mod:`.picows_conn` - ``--transport picows``: the same front hands the upgraded
  socket to a ``picows`` protocol instead (imported only then: the ``fast`` extra);
  :class:`~.picows_conn.PicowsConnection` is the core's I/O there.
- :mod:`.framing` - frame headers; :mod:`.flush` - writing every connection's
  replies once per batch, read or loop iteration.
- :mod:`.app` - the narrow interface the server implements for the transport.
"""

from .app import App, HttpExchange, HttpRequest, HttpResponse
from .flush import Flusher
from .framing import frame_header
from .http import Exchange, HttpProtocol
from .websocket import WebSocketProtocol

__all__ = [
    "App", "Exchange", "Flusher", "HttpExchange", "HttpProtocol", "HttpRequest", "HttpResponse", "WebSocketProtocol",
    "frame_header",
]
