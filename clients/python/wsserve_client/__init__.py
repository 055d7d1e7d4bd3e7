"""wsserve_client — async Python client for wsserve, the WebSocket inference server.

::

    import asyncio
    from wsserve_client import Client

    async def main() -> None:
        async with Client("ws://127.0.0.1:8765") as c:
            r = await c.predict("linear", [[0.5], [1.0]])
            print(r.outputs, r.version, r.timing)
            async for text in c.generate("charlm", "The ", max_tokens=40):
                print(text, end="", flush=True)

    asyncio.run(main())

Public API: :class:`Client`; results (:class:`PredictResult`, :class:`Chunk`,
:class:`StreamSummary`, :class:`GenerationResult`, :class:`Completion`, :class:`TokenLogprob`,
:class:`TopLogprob`, :class:`ModelInfo`,
:class:`ModelStatus`, :class:`VersionStatus`, :class:`ServerHello`, :class:`Limits`,
:class:`ClientStats`); streams (:class:`PredictStream`, :class:`Generation`); policies (:class:`RetryPolicy`, :class:`Backoff`); and the error tree
rooted at :class:`WsserveError` (see :mod:`wsserve_client.errors`).
"""

from .backoff import Backoff, RetryPolicy
from .client import DEFAULT_URL, Client
from .errors import (
    BadJsonError,
    BadRequestError,
    ClientClosed,
    ConnectionLost,
    DeadlineExceeded,
    DuplicateIdError,
    Forbidden,
    InternalServerError,
    InvalidInput,
    OverloadedError,
    ProtocolError,
    RateLimitedError,
    RequestCancelled,
    RequestTooLarge,
    ShuttingDown,
    StreamOverflow,
    Unauthorized,
    UnknownModelError,
    WsserveError,
    error_from_frame,
)
from .results import (
    Chunk,
    ClientStats,
    Completion,
    GenerationResult,
    Limits,
    ModelInfo,
    ModelStatus,
    PredictResult,
    Response,
    ResponsesSummary,
    ServerHello,
    StreamSummary,
    TokenLogprob,
    TopLogprob,
    VersionStatus,
)
from .streams import Generation, PredictStream, ResponseStream
from .tensors import Tensor, as_tensor

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Tensor",
    "as_tensor",
    "DEFAULT_URL",
    "PredictStream",
    "ResponseStream",
    "Generation",
    "PredictResult",
    "Chunk",
    "StreamSummary",
    "Response",
    "ResponsesSummary",
    "GenerationResult",
    "Completion",
    "TokenLogprob",
    "TopLogprob",
    "ModelInfo",
    "ModelStatus",
    "VersionStatus",
    "ServerHello",
    "Limits",
    "ClientStats",
    "RetryPolicy",
    "Backoff",
    "WsserveError",
    "BadJsonError",
    "BadRequestError",
    "UnknownModelError",
    "DuplicateIdError",
    "InvalidInput",
    "OverloadedError",
    "RateLimitedError",
    "DeadlineExceeded",
    "RequestCancelled",
    "Unauthorized",
    "Forbidden",
    "ShuttingDown",
    "InternalServerError",
    "RequestTooLarge",
    "ProtocolError",
    "StreamOverflow",
    "ConnectionLost",
    "ClientClosed",
    "error_from_frame",
    "__version__",
]
