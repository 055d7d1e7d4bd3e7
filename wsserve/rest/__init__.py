"""HTTP on the WebSocket port: the original ``POST /predict``, the Open Inference Protocol v2
(KServe/Triton REST) and OpenAI-compatible completions, batched in the same queues as the
WebSocket traffic.

- :mod:`.api` - :class:`HttpApi`: routing, CORS, keys, admission, the handlers;
- :mod:`.router` - the route table (404, 405 with ``Allow``, ``{name}`` segments);
- :mod:`.calls` - requests in flight (worker sinks answering through their exchange)
  and :class:`HttpSession`, a connection's admission state;
- :mod:`.oip`, :mod:`.openai` - the two protocols' codecs (pure functions);
- :mod:`.errors` - a status per wire error code, the three error envelopes.

Sans-I/O: the transport (:mod:`wsserve.transport.http`) owns the sockets.
"""

from .api import HttpApi
from .calls import HttpSession
from .errors import STATUS, error_response, plain_error
from .router import Route, Router

__all__ = ["HttpApi", "HttpSession", "Route", "Router", "STATUS", "error_response", "plain_error"]
