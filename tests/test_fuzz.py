"""Property-based fuzzing of the decoder and validation, then of a real server over the wire.

Sans-I/O: any text or bytes given to :func:`wsserve.protocol.decode` yields a request
object or a :class:`~wsserve.errors.WsserveError` with a wire code — never another
exception — and :func:`~wsserve.protocol.validate_inputs` likewise; well-formed
messages built from the real message shapes are always accepted with their values.

Over the wire: a few hundred messages drawn from the same strategies (raw text, bytes,
wrong types in every field, oversize frames) are sent to one real server; each gets
the replies the protocol promises (exactly one terminal frame per predict/generate id,
one reply for ping/models/auth/bad input, none for a well-formed cancel), the
connection is never closed except with 1009 for an oversize message, the server logs
no internal error, and a ping afterwards is answered.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from wsserve.errors import ERROR_CODES, WsserveError
from wsserve.protocol import (
    Auth,
    Cancel,
    Generate,
    Models,
    Ping,
    Predict,
    decode,
    encode_error,
    validate_inputs,
)

REQUEST_TYPES = (Predict, Generate, Cancel, Models, Ping, Auth)
#: codes ``decode``/``validate_inputs`` may raise: everything else needs a server
DECODE_CODES = {"bad_json", "bad_request", "invalid_input"}
TYPES = ("predict", "generate", "cancel", "models", "ping", "auth")
INT64 = (-(2**63), 2**64 - 1)  # what JSON ints orjson keeps as ints
ID_INTS = (-(2**63), 2**63 - 1)  # what the protocol accepts as an integer id

# --------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
good_ids = st.one_of(st.text(max_size=10), st.integers(*ID_INTS), st.integers(0, 1000))
numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False))


def rows(width: int) -> st.SearchStrategy[list[list[float]]]:
    return st.lists(st.lists(numbers, min_size=width, max_size=width), min_size=1, max_size=8)


def weighted(*pairs: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick a strategy with the given weights, then draw from it (``one_of`` favours the simplest branches)."""
    return st.sampled_from([strategy for weight, strategy in pairs for _ in range(weight)]).flatmap(lambda s: s)


#: For each message type: well-formed values of each optional field, and out-of-range or mistyped ones.
OPTIONAL: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "predict": {
        "version": st.just("1"),
        "stream": st.booleans(),
        "chunk_rows": st.integers(1, 5),
        "timeout_ms": st.one_of(st.integers(1, 5000), st.floats(0.01, 5000)),
        "priority": st.sampled_from([0, 1]),
    },
    "generate": {
        "max_tokens": st.integers(1, 40),
        "temperature": st.floats(0, 3),
        "top_k": st.integers(0, 50),
        "seed": st.integers(-(2**63), 2**64 - 1),
        "stop": st.one_of(st.text(min_size=1, max_size=3), st.lists(st.text(min_size=1, max_size=4), max_size=4)),
        "timeout_ms": st.floats(0.01, 5000),
        "priority": st.sampled_from([0, 1]),
        "version": st.just("1"),
    },
    "auth": {"id": good_ids},
    "ping": {"id": good_ids},
    "models": {"id": good_ids},
    "cancel": {},
}
BAD: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["", "Predict", "predict ", "fly", None]),
    "id": st.sampled_from([True, False, 1.5, None, [], {}, 2**64, 2**63, -(2**63) - 1, "i" * 129]),
    "model": st.sampled_from(["", "linaer", "LINEAR", "charlm", "linear", "mlp", None, 1, ["linear"]]),
    "inputs": st.one_of(
        st.just([]), st.just([[]]), st.lists(st.lists(numbers, min_size=1, max_size=33), min_size=1, max_size=4),
        st.lists(st.lists(st.one_of(st.booleans(), st.none(), st.text(max_size=2)), min_size=1, max_size=2),
                 min_size=1, max_size=2),
        st.just([[[1.0]]]), st.just(1.0), st.just("x"), st.lists(numbers, max_size=3),
    ),
    "version": st.sampled_from(["2", "", 1, None]),
    "stream": st.sampled_from([0, 1, "true", None]),
    "chunk_rows": st.sampled_from([0, -1, 1.5, "2", True]),
    "timeout_ms": st.sampled_from([0, -1, "5", True, 2**31, 1e300]),
    "priority": st.sampled_from([-1, 2, 0.5, True, "1"]),
    "prompt": st.sampled_from([None, 1, ["a"], {"a": 1}]),
    "max_tokens": st.sampled_from([0, -1, 201, 300, 1.5, "3", True, 2**70]),
    "temperature": st.sampled_from([-0.1, -1, "0", True, 1e308]),
    "top_k": st.sampled_from([-1, 1.5, "3", True, 2**31, 2**63, 2**64 - 1]),
    "seed": st.sampled_from([2**70, -(2**70), 1.5, "7", True]),
    "stop": st.one_of(st.sampled_from(["", [""], [1], {"a": "b"}, 5]), st.lists(st.just("a"), min_size=17, max_size=17),
                      st.just(["a" * 257])),
    "token": st.sampled_from([None, 1, ["k"]]),
}


@st.composite
def shaped(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A message of ``kind`` with the real shape: well-formed, or with one field wrong or missing."""
    msg: dict[str, Any] = {"type": kind}
    if kind == "predict":
        model = draw(st.sampled_from(["linear", "mlp"]))
        msg.update(id=draw(good_ids), model=model, inputs=draw(rows(1 if model == "linear" else 32)))
    elif kind == "generate":
        msg.update(id=draw(good_ids), model="charlm", prompt=draw(st.text(max_size=20)))
    elif kind == "cancel":
        msg["id"] = draw(good_ids)
    elif kind == "auth":
        msg["token"] = draw(st.text(max_size=10))
    for key, strategy in OPTIONAL[kind].items():
        if draw(st.booleans()):
            msg[key] = draw(strategy)
    how = draw(st.sampled_from(["clean"] * 5 + ["bad"] * 3 + ["any"] + ["drop"]))
    if how in ("bad", "any"):
        key = draw(st.sampled_from(sorted(set(msg) | set(OPTIONAL[kind]) | {"id"})))
        msg[key] = draw(BAD.get(key, json_values) if how == "bad" else json_values)
    elif how == "drop":
        del msg[draw(st.sampled_from(sorted(msg)))]
    return msg


predict_msgs = shaped("predict")
generate_msgs = shaped("generate")
other_msgs = weighted(
    (2, shaped("cancel")), (2, shaped("ping")), (1, shaped("models")), (1, shaped("auth")),
    (2, st.fixed_dictionaries({"x": st.one_of(st.lists(numbers, max_size=4), numbers, json_values)})),
    (1, st.fixed_dictionaries({"type": st.one_of(st.text(max_size=8), json_values)}, optional={"id": good_ids})),
    (1, st.dictionaries(st.text(max_size=8), json_values, max_size=5)),
)
objects = weighted((3, predict_msgs), (3, generate_msgs), (3, other_msgs))


def dumps(obj: Any, allow_nan: bool = False) -> str:
    """JSON text as any client library might write it (Python's json: big ints, escapes, NaN on request)."""
    return json.dumps(obj, allow_nan=allow_nan)


#: whole messages as text: JSON objects (shaped or not), any JSON, NaN-bearing JSON, any text
texts = weighted(
    (4, objects.map(dumps)),
    (1, json_values.map(dumps)),
    (1, st.dictionaries(st.sampled_from(["type", "id", "inputs", "x"]),
                        st.sampled_from([math.nan, math.inf, -math.inf, 1e308]), min_size=1).map(lambda o: dumps(o, True))),
    (2, st.text(max_size=40)),
    (2, objects.map(dumps).flatmap(lambda s: st.integers(0, len(s)).map(lambda i: s[:i]))),  # truncated JSON
)


# --------------------------------------------------------------------------- sans-I/O properties

def _check_error(exc: WsserveError) -> None:
    assert exc.code in DECODE_CODES, exc.code
    assert exc.code in ERROR_CODES
    assert isinstance(exc.message, str) and exc.message
    assert exc.request_id is None or type(exc.request_id) in (str, int)
    frame = orjson.loads(encode_error(exc))
    assert frame["type"] == "error" and frame["code"] == exc.code and frame["id"] == exc.request_id


def _check_request(req: Any, max_tokens: int) -> None:
    assert isinstance(req, REQUEST_TYPES), type(req)
    if isinstance(req, Predict):
        if req.seed_form is None:
            assert type(req.id) in (str, int)
        else:
            assert req.id is None and req.model == "linear"
        # a predict's priority is any integer >= 0 here; the model's priority levels bound it when queued
        assert isinstance(req.model, str) and type(req.stream) is bool
        assert type(req.priority) is int and req.priority >= 0
        assert req.chunk_rows is None or (type(req.chunk_rows) is int and req.chunk_rows >= 1)
        assert req.timeout_ms is None or (math.isfinite(req.timeout_ms) and req.timeout_ms > 0)
    elif isinstance(req, Generate):
        p = req.params
        assert type(req.id) in (str, int) and isinstance(req.model, str) and isinstance(p.prompt, str)
        assert 1 <= p.max_tokens <= max_tokens
        assert math.isfinite(p.temperature) and 0 <= p.temperature <= 100
        assert type(p.top_k) is int and 0 <= p.top_k < 2**31
        assert p.seed is None or 0 <= p.seed < 2**64
        assert all(type(s) is str and s for s in p.stop) and p.priority in (0, 1)
    elif isinstance(req, Auth):
        assert isinstance(req.token, str)
    else:
        assert req.id is None or type(req.id) in (str, int)
    if isinstance(req, (Cancel,)):
        assert type(req.id) in (str, int)


def _decode_checked(data: str | bytes, max_tokens: int = 100_000) -> Any:
    try:
        req = decode(data, max_tokens=max_tokens)
    except WsserveError as exc:
        _check_error(exc)
        return exc
    _check_request(req, max_tokens)
    return req


def _validate_checked(value: Any, width: int, max_rows: int) -> None:
    try:
        out = validate_inputs(value, width, max_rows)
    except WsserveError as exc:
        assert exc.code == "invalid_input" and exc.message
        return
    assert 1 <= len(out) <= max_rows
    assert out.dtype == np.float64 and out.shape == (len(value), width) and np.isfinite(out).all()
    for row in out:
        assert len(row) == width


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(texts, st.binary(max_size=64), texts.map(str.encode)), max_tokens=st.integers(64, 200_000))
def test_decode_any_input_gives_a_request_or_a_wire_error(data: str | bytes, max_tokens: int) -> None:
    # max_tokens limits below the default of 64: see test_default_max_tokens_respects_a_lower_limit
    _decode_checked(data, max_tokens)


@pytest.mark.parametrize("limit", [1, 10, 63])
def test_default_max_tokens_respects_a_lower_limit(limit: int) -> None:
    req = decode(b'{"type":"generate","id":1,"model":"charlm","prompt":"a"}', max_tokens=limit)
    assert isinstance(req, Generate) and 1 <= req.params.max_tokens <= limit


@settings(max_examples=300, deadline=None)
@given(obj=objects, width=st.sampled_from([1, 32]), max_rows=st.integers(1, 10))
def test_decode_then_validate_structured_messages(obj: dict[str, Any], width: int, max_rows: int) -> None:
    req = _decode_checked(orjson.dumps(obj) if _orjson_safe(obj) else dumps(obj).encode())
    if isinstance(req, Predict):
        _validate_checked(req.inputs, width, max_rows)
    _validate_checked(obj.get("inputs"), width, max_rows)


def _orjson_safe(obj: Any) -> bool:
    try:
        orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Well-formed messages: the decoder must accept each with its values."""
    good_id = draw(st.one_of(st.text(max_size=10), st.integers(*ID_INTS)))
    kind = draw(st.sampled_from(["predict", "generate", "cancel", "ping", "auth"]))
    if kind == "predict":
        msg = {"type": kind, "id": good_id, "model": draw(st.text(max_size=6)), "inputs": draw(rows(1)),
               "stream": draw(st.booleans()), "priority": draw(st.sampled_from([0, 1]))}
        if draw(st.booleans()):
            msg["chunk_rows"] = draw(st.integers(1, 10**6))
        if draw(st.booleans()):
            msg["timeout_ms"] = draw(st.floats(0.001, 1e9))
    elif kind == "generate":
        msg = {"type": kind, "id": good_id, "model": draw(st.text(max_size=6)), "prompt": draw(st.text(max_size=20)),
               "max_tokens": draw(st.integers(1, 100_000)), "temperature": draw(st.floats(0, 100)),
               "top_k": draw(st.integers(0, 1000)), "seed": draw(st.integers(-(2**63), 2**64 - 1)),
               "stop": draw(st.lists(st.text(min_size=1, max_size=256), max_size=16))}
    elif kind == "auth":
        msg = {"type": kind, "id": good_id, "token": draw(st.text(max_size=20))}
    else:
        msg = {"type": kind, "id": good_id}
    return kind, msg


@settings(max_examples=200, deadline=None)
@given(valid_requests())
def test_well_formed_messages_are_accepted_with_their_values(case: tuple[str, dict[str, Any]]) -> None:
    kind, msg = case
    req = decode(orjson.dumps(msg))
    _check_request(req, 100_000)
    assert req.id == msg["id"]
    if kind == "predict":
        assert isinstance(req, Predict) and req.inputs == msg["inputs"] and req.stream == msg["stream"]
        assert req.chunk_rows == msg.get("chunk_rows") and req.priority == msg["priority"]
        assert validate_inputs(req.inputs, 1, 8).tolist() == [[float(v) for v in row] for row in msg["inputs"]]
    elif kind == "generate":
        p = req.params
        assert isinstance(req, Generate) and p.prompt == msg["prompt"] and p.max_tokens == msg["max_tokens"]
        assert p.stop == tuple(msg["stop"]) and p.seed == msg["seed"] % 2**64 and p.top_k == msg["top_k"]
    elif kind == "auth":
        assert isinstance(req, Auth) and req.token == msg["token"]
    else:
        assert type(req).__name__.lower() == kind


# --------------------------------------------------------------------------- over the wire

MAX_MESSAGE_BYTES = 4096
WIRE_FLAGS = ("--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-tokens", "200", "--max-rows", "16",
              "--models", "linear,mlp,charlm")


class WireCase:
    """One fuzz message and what the protocol promises for it."""

    def __init__(self, payload: str | bytes, *, binary: bool = False) -> None:
        self.payload = payload
        self.binary = binary
        size = len(payload.encode() if isinstance(payload, str) else payload)
        self.oversize = size > MAX_MESSAGE_BYTES
        self.invalid_utf8 = False  # a text frame that is not UTF-8: the connection fails with 1007
        if isinstance(payload, bytes) and not binary:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                self.invalid_utf8 = True
        obj: Any = None
        if isinstance(payload, str) and not binary:
            try:
                obj = json.loads(payload)
            except ValueError:
                obj = None
        self.obj = obj if isinstance(obj, dict) else None
        kind = self.obj.get("type") if self.obj else None
        rid = self.obj.get("id") if self.obj else None
        valid = (type(rid) is str and len(rid) <= 128) or (type(rid) is int and ID_INTS[0] <= rid <= ID_INTS[1])
        self.rid = rid if valid else None
        self.kind = kind if isinstance(kind, str) else None
        self.seed_form = self.obj is not None and kind is None and "x" in self.obj

    def expects(self) -> str:
        """``terminal`` (a predict/generate whose id the server can read), ``seed`` (the seed form: one
        ``y_pred`` or ``error``, maybe after later pings), ``maybe`` (a cancel: none, or one error if
        malformed) or ``one`` (exactly one reply frame, before the reply to a later ping)."""
        if self.kind in ("predict", "generate") and self.rid is not None:
            return "terminal"
        if self.seed_form:
            return "seed"
        if self.kind == "cancel":
            return "maybe"
        return "one"


wire_cases = weighted(
    (6, predict_msgs.map(dumps).map(WireCase)),
    (6, generate_msgs.map(dumps).map(WireCase)),
    (3, other_msgs.map(dumps).map(WireCase)),
    (3, texts.map(WireCase)),
    (1, st.binary(max_size=32).map(lambda b: WireCase(b, binary=True))),
    (1, st.binary(min_size=1, max_size=16).map(lambda b: WireCase(b"\xff" + b))),  # invalid UTF-8, text frame
    (1, st.integers(MAX_MESSAGE_BYTES + 1, 3 * MAX_MESSAGE_BYTES).map(lambda n: WireCase("x" * n))),
)


class WireSession:
    """One synchronous connection that is reopened after a 1009 close."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws = self._open()
        self.sent = 0
        self.reopened = 0

    def _open(self) -> ClientConnection:
        ws = connect(self.url, compression=None, max_size=None, open_timeout=10, legacy=True)  # closed by close()
        assert orjson.loads(ws.recv(timeout=10))["type"] == "hello"
        return ws

    def recv(self) -> dict[str, Any]:
        frame = orjson.loads(self.ws.recv(timeout=10))
        assert isinstance(frame, dict) and ("type" in frame or "y_pred" in frame), frame
        return frame

    def run(self, case: WireCase) -> None:
        self.sent += 1
        sentinel = f"\x00sentinel-{self.sent}"
        if case.binary:
            self.ws.send(case.payload)
        elif isinstance(case.payload, bytes):
            self.ws.send(case.payload, text=True)
        else:
            self.ws.send(case.payload)
        if case.oversize or case.invalid_utf8:
            code = 1009 if case.oversize else 1007
            with pytest.raises(ConnectionClosed) as info:
                self.ws.send(orjson.dumps({"type": "ping", "id": sentinel}).decode())
                self.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == code
            self.ws = self._open()
            self.reopened += 1
            event(f"{'oversize' if case.oversize else 'invalid UTF-8'}: closed {code}")
            return
        self.ws.send(orjson.dumps({"type": "ping", "id": sentinel}).decode())
        mode = case.expects()
        replies: list[dict[str, Any]] = []  # frames answering the case (not the sentinel)
        terminal = pong = False
        while not (pong and (terminal or mode not in ("terminal", "seed"))):
            frame = self.recv()  # this server has no API keys: a well-formed auth is answered ok, never closed
            if frame.get("type") == "pong" and frame.get("id") == sentinel:
                assert not pong
                pong = True
                continue
            replies.append(frame)
            if mode == "terminal" and frame.get("type") in ("result", "done", "error") and frame.get("id") == case.rid:
                assert not terminal, f"second terminal frame for {case.rid!r}: {frame}"
                terminal = True
            elif mode == "terminal" and frame.get("type") == "error" and frame.get("id") is None:
                assert frame["code"] == "bad_json", frame  # the id could not be read: the only other outcome
                terminal = True
            elif mode == "seed":
                assert not terminal, f"second reply to a seed-form message: {frame}"
                assert "y_pred" in frame or (frame["type"] == "error" and frame["id"] is None), frame
                terminal = True
        self._check(case, mode, replies)
        last = replies[-1] if replies else {}
        event(f"{mode}: {last.get('code') or last.get('type') or ('y_pred' if 'y_pred' in last else 'no reply')}")

    @staticmethod
    def _check(case: WireCase, mode: str, replies: list[dict[str, Any]]) -> None:
        for frame in replies:
            if frame.get("type") == "error":
                assert frame["code"] in ERROR_CODES and isinstance(frame["message"], str) and frame["message"]
                assert frame["code"] != "internal", frame
        if mode == "terminal":
            streamed = [f for f in replies if f["type"] in ("token", "chunk")]
            assert all(f["id"] == case.rid for f in streamed)
            assert [f["seq"] for f in streamed] == list(range(len(streamed)))
            assert len(replies) == len(streamed) + 1, replies
        elif mode == "seed":
            assert len(replies) == 1, replies
        elif mode == "maybe":
            assert len(replies) <= 1, replies
            if replies:
                assert replies[0]["type"] == "error" and replies[0]["code"] == "bad_request"
        else:
            assert len(replies) == 1, (case.payload, replies)
            reply = replies[0]
            if case.kind == "ping" and reply["type"] != "error":
                assert reply == {"type": "pong", "id": case.rid}
            elif case.kind == "auth" and reply["type"] != "error":
                assert reply == {"type": "auth", "id": case.rid, "ok": True}
            elif case.kind == "models" and reply["type"] != "error":
                assert reply["id"] == case.rid and [m["name"] for m in reply["models"]] == ["linear", "mlp", "charlm"]
            else:
                assert reply["type"] == "error", reply
                assert reply["id"] in (case.rid, None)


def test_over_the_wire_every_message_gets_its_promised_replies(start_server) -> None:
    server = start_server(*WIRE_FLAGS)
    wire = WireSession(server.url)

    @settings(max_examples=int(os.environ.get("WSSERVE_FUZZ_EXAMPLES", "300")), deadline=None,
              suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(case=wire_cases)
    def fuzz(case: WireCase) -> None:
        assume(not (isinstance(case.payload, str) and "\x00sentinel" in case.payload))
        wire.run(case)

    fuzz()
    # Afterwards: a ping on the same connection is answered, nothing is left in flight, no internal error.
    wire.ws.send(orjson.dumps({"type": "ping", "id": "final"}).decode())
    assert wire.recv() == {"type": "pong", "id": "final"}
    wire.ws.close()
    metrics = server.metrics()
    assert not [key for key in metrics.samples if ("code", "internal") in key[1]]
    assert metrics.value("wsserve_inflight_requests") == 0
    log = server.stderr_text()
    assert "Traceback" not in log and "internal error" not in log
