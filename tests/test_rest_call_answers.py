"""An HTTP predict call whose answer cannot be made still answers, with its own error.

:class:`wsserve.rest.calls.PredictCall` used to end its request as ``ok`` before encoding the
answer: an answer that failed to encode (or an output region that vanished) left the client with
no response at all, and the request counted as a success.  Fakes stand in for the session and
the exchange (the call's true boundaries: what it reports and what it sends).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson

from wsserve.errors import InvalidInput
from wsserve.rest.calls import PredictFormCall


class _Session:
    def __init__(self) -> None:
        self.ended: list[str] = []

    def finished(self, call: Any, code: str) -> None:
        self.ended.append(code)


class _Exchange:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def respond(self, response: Any) -> None:
        self.sent.append(response)


class _Cancels:
    def __init__(self) -> None:
        self.cancelled: list[Any] = []

    def cancel(self, item: Any) -> None:
        self.cancelled.append(item)


def _call(result: Any) -> tuple[PredictFormCall, _Session, _Exchange]:
    """A call whose answer is made by ``result(outputs)`` (standing in for an encoder)."""

    class Call(PredictFormCall):
        __slots__ = ()

        def _result(self, outputs: Any) -> None:
            result(outputs)

    session, exchange = _Session(), _Exchange()
    entry = SimpleNamespace(name="m", version="1", worker=_Cancels(), explanation=None)
    call = Call(session, exchange, entry, np.zeros((1, 1)), 1, 8, "wsserve", 0.0, None)  # type: ignore[arg-type]
    return call, session, exchange


def test_an_answer_that_cannot_be_encoded_is_an_internal_error_answer() -> None:
    def broken(outputs: Any) -> None:
        raise TypeError("Type is not JSON serializable: complex")

    call, session, exchange = _call(broken)
    call.on_rows(0, np.zeros((1, 1)), 1, 0.0, 0.0)
    assert session.ended == ["internal"]
    (response,) = exchange.sent
    assert response.status == 500
    assert "the answer could not be made: TypeError" in orjson.loads(response.body)["error"]["message"]


def test_a_wsserve_error_while_answering_is_that_requests_error() -> None:
    def gone(outputs: Any) -> None:
        raise InvalidInput("shared memory region 'r' is not registered")

    call, session, exchange = _call(gone)
    call.on_rows(0, np.zeros((1, 1)), 1, 0.0, 0.0)
    assert session.ended == ["invalid_input"]
    (response,) = exchange.sent
    assert response.status == 400 and "region 'r' is not registered" in response.body.decode()
    call.on_rows(0, np.zeros((1, 1)), 1, 0.0, 0.0)  # nothing more once ended
    assert len(exchange.sent) == 1 and session.ended == ["invalid_input"]


def test_an_answer_made_ends_the_call_once_as_ok() -> None:
    sent: list[Any] = []
    call, session, exchange = _call(sent.append)
    call.on_rows(0, np.ones((1, 1)), 1, 0.0, 0.0)
    assert session.ended == ["ok"] and len(sent) == 1
