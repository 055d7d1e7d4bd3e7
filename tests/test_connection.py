"""The sans-I/O connection core: every per-connection rule, driven with a fake clock.

No socket, no event loop: a :class:`FakeIO` records what the core sends and
whether it closed, fake workers record what was submitted and let a test hand
back results.  (The same rules over a real socket: test_hardening.py,
test_security.py.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

from wsserve.auth import KeyRegistry
from wsserve.config import ServerConfig
from wsserve.connection import Connection, ConnectionContext, Shared
from wsserve.errors import InvalidInput, UnknownModel
from wsserve.metrics import Metrics, VersionStats
from wsserve.pool import LIST_ROWS_MAX_VALUES, _float_rows, list_rows_bytes
from wsserve.protocol import encode_hello, result_head
from wsserve.worker import BatchOutputs

KEY = "sk-test-key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> float:
        self.now += s
        return self.now


class FakeIO:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        assert self.closed is None, "a frame after the close frame"
        self.frames.append(orjson.loads(frame))

    def close(self, code: int, reason: str) -> None:
        assert self.closed is None, "closed twice"
        self.closed = (code, reason)

    def take(self) -> list[dict[str, Any]]:
        out, self.frames = self.frames, []
        return out


@dataclass
class FakePredictWorker:
    submitted: list[Any] = field(default_factory=list)
    cancelled: list[Any] = field(default_factory=list)
    stats: Any = None  # the version's VersionStats (the pool sets it on a real worker)

    def submit(self, sink: Any, *, priority: int = 0, deadline: float | None = None) -> Any:
        item = object()
        self.submitted.append((sink, item, deadline))
        return item

    def cancel(self, item: Any) -> None:
        self.cancelled.append(item)

    def finish(self, i: int = -1) -> None:
        sink, _, _ = self.submitted[i]
        # Small requests keep their checked JSON rows; the real worker converts them in its batch.
        sink.on_rows(0, np.asarray(sink.inputs, dtype=np.float64) * 2.0, sink.n, 0.001, 0.002)


@dataclass
class FakeEngine:
    submitted: list[Any] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)  # each submission's compile-fairness client
    stats: Any = None

    def submit(self, params: Any, sink: Any, *, group: Any = None, deadline: float | None = None,
               client: Any = None) -> Any:
        # the engine's Sequence: a handle with its counts (nothing is generated here)
        handle = SimpleNamespace(prompt_tokens=len(params.prompt), completion_tokens=0)
        self.submitted.append((params, sink, group, deadline))
        self.clients.append(client)
        return handle

    def cancel(self, handle: Any) -> None:
        for _, sink, _, _ in self.submitted:
            if sink.handle is handle and not sink.finished:
                sink.on_done("cancelled", sink.tokens, {"ttft_ms": None, "total_ms": 1.0})


@dataclass
class Entry:
    name: str
    kind: str
    worker: Any
    input_width: int = 1
    version: str = "1"
    decoupled: bool = False  # as ModelEntry has it (a decoupled model's requests stream)

    def __post_init__(self) -> None:
        self.prepare = _float_rows(self.input_width)  # the pool's path for a single float input
        self.result_head = result_head(self.name, self.version)  # as ModelEntry has it


class FakeModels:
    def __init__(self) -> None:
        self.predict = FakePredictWorker()
        self.engine = FakeEngine()
        self.entries = {
            "linear": Entry("linear", "predict", self.predict, 1),
            "charlm": Entry("charlm", "generate", self.engine, 0),
        }
        self.models_json = b'[{"name":"linear"},{"name":"charlm"}]'

    def lookup(self, name: str, version: str | None = None) -> Entry:
        if name not in self.entries:
            raise UnknownModel(f"no model named {name!r}")
        return self.entries[name]

    def knows(self, name: str) -> bool:
        return name in self.entries


class Setup:
    def __init__(self, **config: Any) -> None:
        self.config = ServerConfig(**config).validate()
        self.clock = FakeClock()
        self.models = FakeModels()
        self.shared = Shared()
        self.metrics = Metrics(version="t", read_state=dict)
        self.keys = KeyRegistry(self.config.api_key, admin_keys=self.config.admin_key)
        #: Admin operations that reached the server's hook: (op, model, version); each answered at once,
        #: unless ``admin_later``: then their ``done`` callbacks wait in ``admin_pending``.
        self.admin_calls: list[tuple[str, str, str | None]] = []
        self.admin_result: Any = {"model": "m", "versions": [{"version": "1", "state": "ready"}]}
        self.admin_later = False
        self.admin_pending: list[Any] = []
        self.ctx = ConnectionContext(
            config=self.config, models=self.models, metrics=self.metrics, keys=self.keys, shared=self.shared,
            hello=encode_hello(version="t", limits=self.config.public_limits(), models=["linear", "charlm"],
                               auth_required=bool(self.config.api_key)),
            clock=self.clock, admin=self._admin,
        )

    def _admin(self, op: str, model: str, version: str | None, done: Any, config: str | None = None) -> None:
        self.admin_calls.append((op, model, version) if config is None else (op, model, version, config))
        if self.admin_later:
            self.admin_pending.append(done)
        else:
            done(self.admin_result)

    def connect(self, *, key: str | None = None, address: str = "10.0.0.1") -> tuple[Connection, FakeIO]:
        io = FakeIO()
        conn = Connection(self.ctx, io, address=address, key=key, now=self.clock.now)
        conn.open()
        assert io.take()[0]["type"] == "hello"
        return conn, io

    def send(self, conn: Connection, msg: Any) -> None:
        data = msg if isinstance(msg, bytes) else orjson.dumps(msg)
        conn.receive(data, False, self.clock.now)

    def tick(self, conn: Connection, seconds: float) -> None:
        """Advance the clock and fire the core's timer whenever it is due (as the adapter does)."""
        end = self.clock.now + seconds
        for _ in range(10_000):
            when = conn.next_timer()
            if when is None or when > end:
                break
            self.clock.now = max(self.clock.now, when)
            conn.on_timer(self.clock.now)
        else:
            raise AssertionError("the timer keeps firing without progress")
        self.clock.now = end


def P(rid: Any, **kw: Any) -> dict[str, Any]:
    return {"type": "predict", "id": rid, "model": "linear", "inputs": [[1.0]], **kw}


def G(rid: Any, **kw: Any) -> dict[str, Any]:
    return {"type": "generate", "id": rid, "model": "charlm", "prompt": "The ", **kw}


def codes(frames: list[dict[str, Any]]) -> list[str]:
    return [f.get("code", f["type"]) for f in frames]


# --------------------------------------------------------------------------- open, dispatch, terminal frames


def test_hello_then_a_predict_gets_exactly_one_result() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, P("a", inputs=[[1.0], [2.0]]))
    assert io.take() == [] and s.shared.inflight == 1
    s.models.predict.finish()
    (result,) = io.take()
    assert result["type"] == "result" and result["id"] == "a" and result["outputs"] == [[2.0], [4.0]]
    assert s.shared.inflight == 0 and not conn.inflight
    s.models.predict.finish()  # a late callback changes nothing
    assert io.take() == []


def test_a_plain_predict_answers_the_same_from_its_batchs_shared_outputs() -> None:
    """The worker may hand a plain predict its rows as a range of the whole batch's outputs
    (``on_batch_outputs``): the result is the frame ``on_rows`` gives for the same rows and times,
    the batch's encoding is made once for all its jobs, and the job ends once."""
    s = Setup()
    conn, io = s.connect()
    for rid in ("a", "b", "c"):
        s.send(conn, P(rid, inputs=[[1.0], [2.0]] if rid == "b" else [[3.0]]))
    (a, _, _), (b, _, _), (c, _, _) = s.models.predict.submitted
    assert a.shared_outputs and b.shared_outputs and c.shared_outputs
    y = np.array([[6.0], [2.0], [4.0], [6.0]])  # the batch: a's row, b's two, c's
    out = BatchOutputs(y, 4, 0.002)
    a.on_batch_outputs(out, 0, 1, 0.001)
    encoded = out.encoded
    b.on_batch_outputs(out, 1, 3, 0.0015)
    assert out.encoded is encoded is not None  # made by the first job, used by the next
    c.on_rows(0, y[3:4], 4, 0.001, 0.002)  # the per-request path, for comparison
    fa, fb, fc = io.take()
    assert fa == {**fc, "id": "a"}
    assert fb["id"] == "b" and fb["outputs"] == [[2.0], [4.0]] and fb["timing"]["queue_ms"] == 1.5
    assert fb["timing"]["batch_size"] == 4 and fb["timing"]["compute_ms"] == 2.0
    assert not conn.inflight and s.shared.inflight == 0
    a.on_batch_outputs(out, 0, 1, 0.001)  # a late delivery changes nothing
    assert io.take() == []


def test_streamed_explained_binary_and_seed_predicts_take_no_shared_outputs() -> None:
    s = Setup()
    conn, _ = s.connect()
    s.send(conn, P("s", inputs=[[1.0]], stream=True))
    s.send(conn, P("bin", inputs=[[1.0]], binary_outputs=True))
    s.send(conn, {"x": [0.5]})
    assert [job.shared_outputs for job, _, _ in s.models.predict.submitted] == [False, False, False]


def test_the_hello_is_followed_by_draining_on_a_draining_server() -> None:
    s = Setup()
    s.shared.draining = True
    io = FakeIO()
    Connection(s.ctx, io, address="a", key=None, now=0.0).open()
    assert [f["type"] for f in io.frames] == ["hello", "draining"]


def test_seed_form_answers_a_number_for_one_input_and_a_list_for_several() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, {"x": [0.5]})
    s.models.predict.finish()
    s.send(conn, {"x": [0.5, 1.0]})
    s.models.predict.finish()
    assert io.take() == [{"y_pred": 1.0}, {"y_pred": [1.0, 2.0]}]


def test_ping_models_and_bad_messages() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, {"type": "ping", "id": 1})
    s.send(conn, {"type": "models", "id": 2})
    s.send(conn, b"not json")
    conn.receive(b"{}", True, s.clock.now)  # a binary frame
    s.send(conn, P("u", model="nope"))
    frames = io.take()
    assert frames[0] == {"type": "pong", "id": 1}
    assert frames[1]["type"] == "models" and frames[1]["models"][0]["name"] == "linear"
    assert codes(frames[2:]) == ["bad_json", "bad_request", "unknown_model"]
    assert frames[4]["id"] == "u" and io.closed is None
    # metrics label only real model names
    assert s.metrics.requests[("", "predict", "unknown_model")] == 1


def test_invalid_utf8_fails_the_connection_with_1007_and_stops_its_work() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, P(1))
    conn.receive(b'{"type":"ping","id":"\xff"}', False, s.clock.now)
    assert io.closed is not None and io.closed[0] == 1007
    assert s.models.predict.cancelled and not conn.inflight and s.shared.inflight == 0
    s.send(conn, {"type": "ping", "id": 2})  # dropped: the connection is closing
    assert io.frames == []


def test_cancel_ends_a_predict_with_cancelled_and_a_generate_with_done() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, P("p"))
    s.send(conn, G("g"))
    s.send(conn, {"type": "cancel", "id": "p"})
    s.send(conn, {"type": "cancel", "id": "g"})
    s.send(conn, {"type": "cancel", "id": "unknown"})  # ignored
    frames = io.take()
    assert [(f["id"], f["type"], f.get("code") or f.get("reason")) for f in frames] == [
        ("p", "error", "cancelled"), ("g", "done", "cancelled")]
    assert s.models.predict.cancelled


def test_a_bug_while_handling_a_message_is_internal_and_the_connection_lives() -> None:
    s = Setup()
    conn, io = s.connect()
    s.models.entries["linear"].worker = None  # submit() will raise AttributeError
    s.send(conn, P("x"))
    (err,) = io.take()
    assert err["code"] == "internal" and err["id"] == "x"
    s.send(conn, {"type": "ping", "id": 1})
    assert io.take() == [{"type": "pong", "id": 1}]


# --------------------------------------------------------------------------- ids and capacity


def test_duplicate_ids_are_refused_while_unfinished_and_free_after() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, P(7))
    s.send(conn, P(7))
    assert codes(io.take()) == ["duplicate_id"]
    s.models.predict.finish(0)
    s.send(conn, P(7))
    assert codes(io.take()) == ["result"] and len(conn.inflight) == 1


def test_max_inflight_then_a_slot_frees() -> None:
    s = Setup(max_inflight=2)
    conn, io = s.connect()
    for i in range(3):
        s.send(conn, P(i))
    (err,) = io.take()
    assert err["id"] == 2 and err["code"] == "overloaded" and "max_inflight" in err["message"]
    s.models.predict.finish(0)
    s.send(conn, P(3))
    assert codes(io.take()) == ["result"]


def test_max_inflight_bytes_counts_inputs_but_a_lone_request_always_fits() -> None:
    s = Setup(max_inflight_bytes=1000)
    conn, io = s.connect()
    s.send(conn, P("big", inputs=[[1.0]] * 200))  # 1600 bytes: alone, accepted
    s.send(conn, P("small"))
    (err,) = io.take()
    assert err["id"] == "small" and "max_inflight_bytes" in err["message"]
    s.models.predict.finish(0)
    assert conn.inflight_bytes == 0
    s.send(conn, P("small"))
    assert conn.inflight_bytes == list_rows_bytes(1, 1)  # kept as its JSON row: counted as such


# --------------------------------------------------------------------------- rate limits


def test_rate_limit_per_connection_refuses_then_recovers() -> None:
    s = Setup(rate_limit_per_s=2.0, rate_limit_burst=3)
    conn, io = s.connect()
    for i in range(4):
        s.send(conn, P(i))
    (err,) = io.take()
    assert err["id"] == 3 and err["code"] == "rate_limited" and 0 < err["retry_after_ms"] <= 500
    s.send(conn, {"type": "ping", "id": "p"})  # not rate limited
    assert io.take() == [{"type": "pong", "id": "p"}]
    s.clock.advance(0.5)
    s.send(conn, P(4))
    assert io.take() == []  # accepted (in flight)


def test_key_rate_limit_is_shared_by_connections_with_the_same_key() -> None:
    s = Setup(api_key=frozenset({KEY}), key_rate_limit_per_s=1.0, rate_limit_burst=2)
    a, io_a = s.connect(key=KEY)
    b, io_b = s.connect(key=KEY)
    s.send(a, P(1))
    s.send(b, P(1))
    assert io_a.take() == [] and io_b.take() == []  # the key's burst of 2, over two connections
    s.send(a, P(2))
    (err,) = io_a.take()
    assert err["code"] == "rate_limited" and "API key" in err["message"]


def test_a_request_the_key_limit_refuses_does_not_spend_the_connections_budget() -> None:
    # The connection's token was taken before the key's bucket refused: a connection sharing a
    # busy key was then refused for "this connection" although it had sent nothing that ran.
    s = Setup(api_key=frozenset({KEY}), key_rate_limit_per_s=1.0, rate_limit_per_s=0.5, rate_limit_burst=2)
    a, io_a = s.connect(key=KEY)
    b, io_b = s.connect(key=KEY)
    s.send(b, P(1))
    s.send(b, P(2))
    assert io_b.take() == []  # the key's burst of 2, spent by b
    s.send(a, P(1))
    s.send(a, P(2))
    assert [f["message"] for f in io_a.take()] == ["rate limit of 1 requests/s for this API key exceeded"] * 2
    s.clock.advance(2.0)  # the key refills 2 tokens; a's bucket was never spent, so it holds 2
    s.send(a, P(3))
    s.send(a, P(4))
    assert io_a.take() == []
    s.send(a, P(5))  # now both are spent: the connection's limit answers first
    (err,) = io_a.take()
    assert err["code"] == "rate_limited" and "this connection" in err["message"]


# --------------------------------------------------------------------------- auth


def test_without_a_key_work_and_models_are_unauthorized_ping_and_cancel_are_not() -> None:
    s = Setup(api_key=frozenset({KEY}))
    conn, io = s.connect()
    assert not conn.authenticated and conn in s.shared.unauthenticated
    s.send(conn, P(1))
    s.send(conn, G(2))
    s.send(conn, {"type": "models", "id": 3})
    s.send(conn, {"type": "ping", "id": 4})
    s.send(conn, {"type": "cancel", "id": 1})
    frames = io.take()
    assert [(f["id"], f.get("code", f["type"])) for f in frames] == [
        (1, "unauthorized"), (2, "unauthorized"), (3, "unauthorized"), (4, "pong")]
    s.send(conn, {"type": "auth", "id": "a", "token": KEY})
    assert io.take() == [{"type": "auth", "id": "a", "ok": True}]
    assert conn.authenticated and conn not in s.shared.unauthenticated
    s.send(conn, P(5))
    assert io.take() == []


def test_a_bearer_key_from_the_handshake_authenticates() -> None:
    s = Setup(api_key=frozenset({KEY}))
    conn, io = s.connect(key=KEY)
    assert conn.authenticated and conn.next_timer() is None
    s.send(conn, P(1))
    assert io.take() == []


def test_auth_timeout_closes_an_unauthenticated_connection() -> None:
    s = Setup(api_key=frozenset({KEY}), auth_timeout_s=5.0)
    conn, io = s.connect()
    assert conn.next_timer() == pytest.approx(s.clock.now + 5.0)
    s.tick(conn, 4.9)
    assert io.closed is None
    s.send(conn, {"type": "ping", "id": 1})  # activity does not extend it
    s.tick(conn, 0.2)
    assert io.closed == (1008, "authentication timeout")
    assert conn not in s.shared.unauthenticated


def test_three_failed_auths_close_the_connection() -> None:
    s = Setup(api_key=frozenset({KEY}))
    conn, io = s.connect()
    for i in range(3):
        s.send(conn, {"type": "auth", "id": i, "token": "guess"})
    assert codes(io.take()) == ["unauthorized"] * 3
    assert io.closed is not None and io.closed[0] == 1008


def test_failed_auths_are_limited_per_address_even_for_the_right_key() -> None:
    s = Setup(api_key=frozenset({KEY}))
    for _ in range(5):  # 5 connections x 2 failures = the address's 10 a minute
        conn, io = s.connect(address="10.9.9.9")
        for i in range(2):
            s.send(conn, {"type": "auth", "id": i, "token": "guess"})
    conn, io = s.connect(address="10.9.9.9")
    s.send(conn, {"type": "auth", "id": "right", "token": KEY})
    (err,) = io.take()
    assert err["code"] == "rate_limited" and err["retry_after_ms"] > 0
    other, io2 = s.connect(address="10.1.1.1")  # another address is not affected
    s.send(other, {"type": "auth", "id": 1, "token": KEY})
    assert io2.take()[0]["ok"] is True
    s.clock.advance(6.5)  # one failure refills every 6 s
    s.send(conn, {"type": "auth", "id": "later", "token": KEY})
    assert io.take()[0]["ok"] is True


def test_failed_auths_from_one_ipv6_network_share_one_budget() -> None:
    # The budget was per address string: a client holds a whole IPv6 /64 (2**64 addresses), so a new
    # source address per guess gave it unlimited guesses (and each one evicted a real entry).
    s = Setup(api_key=frozenset({KEY}))
    for i in range(10):
        conn, io = s.connect(address=f"2001:db8:1:2::{i + 1:x}")
        s.send(conn, {"type": "auth", "id": i, "token": "guess"})
        assert codes(io.take()) == ["unauthorized"]
    conn, io = s.connect(address="2001:db8:1:2:ffff:ffff:ffff:ffff")  # the same /64
    s.send(conn, {"type": "auth", "id": "next", "token": "guess"})
    assert codes(io.take()) == ["rate_limited"]
    other, io2 = s.connect(address="2001:db8:1:3::1")  # another /64 is not affected
    s.send(other, {"type": "auth", "id": 1, "token": KEY})
    assert io2.take()[0]["ok"] is True
    v4, io4 = s.connect(address="10.1.2.3")  # IPv4 stays per address
    s.send(v4, {"type": "auth", "id": 1, "token": KEY})
    assert io4.take()[0]["ok"] is True


@pytest.mark.parametrize("token", ["", "k", KEY[:-1], KEY, KEY + "x", "z" * 4096])
def test_keys_are_compared_as_fixed_length_digests(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # hmac.compare_digest returns early when the lengths differ (its documentation says a timing
    # attack may learn the length): tokens were compared with the keys themselves, so the time
    # told a guesser each key's length. Every comparison is now between two SHA-256 digests.
    import hmac

    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = KeyRegistry([KEY, "another-key-of-another-length"], admin_keys=["adm"], metrics_key="metrics-key-1")
    assert (keys.match(token) == KEY) is (token == KEY)
    assert keys.match_metrics(token) is (token == KEY)
    assert len(seen) >= 4 and set(seen) == {(32, 32)}, seen


def test_eviction_closes_the_oldest_unauthenticated_connection() -> None:
    s = Setup(api_key=frozenset({KEY}))
    first, io1 = s.connect()
    second, io2 = s.connect()
    assert s.shared.evict_unauthenticated()
    assert io1.closed is not None and io1.closed[0] == 1008 and first.evicted and io2.closed is None
    assert s.shared.evicting == 1


# --------------------------------------------------------------------------- deadlines, idle, slow consumers


def test_timeout_ms_expires_a_request_at_its_deadline_not_before() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, P("t", timeout_ms=50))
    s.send(conn, G("g", timeout_ms=80))
    s.tick(conn, 0.049)
    assert io.take() == []
    s.tick(conn, 0.002)
    assert [(f["id"], f["code"]) for f in io.take()] == [("t", "deadline_exceeded")]
    s.tick(conn, 0.030)
    assert [(f["id"], f["code"]) for f in io.take()] == [("g", "deadline_exceeded")]
    assert s.models.predict.submitted[0][2] == pytest.approx(1000.050)  # the worker got the deadline too


def test_idle_timeout_closes_only_connections_with_nothing_in_flight() -> None:
    s = Setup(idle_timeout_s=10.0)
    busy, io_b = s.connect()
    quiet, io_q = s.connect()
    s.send(busy, P(1))
    s.tick(quiet, 9.0)
    s.send(quiet, {"type": "ping", "id": 1})  # activity restarts the idle clock
    s.tick(quiet, 9.0)
    assert io_q.closed is None
    s.tick(quiet, 1.5)
    assert io_q.closed == (1000, "idle timeout")
    s.tick(busy, 30.0)
    assert io_b.closed is None  # something in flight
    s.models.predict.finish(0)
    s.tick(busy, 10.5)
    assert io_b.closed == (1000, "idle timeout")


def test_slow_consumer_new_work_refused_then_closed_after_the_grace_period() -> None:
    s = Setup(max_write_buffer_bytes=1000, slow_consumer_timeout_s=2.0)
    conn, io = s.connect()
    conn.wrote(1500, s.clock.now)
    assert conn.congested
    s.send(conn, P(1))
    (err,) = io.take()
    assert err["code"] == "overloaded" and "not reading" in err["message"]
    conn.wrote(900, s.clock.advance(1.0))  # caught up: served again
    s.send(conn, P(2))
    assert io.take() == []
    conn.wrote(1500, s.clock.now)
    s.tick(conn, 1.9)
    assert io.closed is None
    s.tick(conn, 0.2)
    assert io.closed is not None and io.closed[0] == 1008
    assert s.metrics.slow_consumers == 1 and s.models.predict.cancelled  # its work was stopped


def test_four_times_the_write_buffer_closes_at_once() -> None:
    s = Setup(max_write_buffer_bytes=1000)
    conn, io = s.connect()
    conn.wrote(1500, s.clock.now)
    assert io.closed is None and conn.congested
    conn.wrote(4001, s.clock.now)
    assert io.closed is not None and io.closed[0] == 1008


def test_one_message_over_four_times_the_write_buffer_is_given_the_timeout_to_drain() -> None:
    """A result bigger than four times the limit, written while under it, closed the connection at
    that very write (1008), however fast its client reads: now it drains within the timeout, and the
    connection is closed at once only if more is added while it is over (or after the timeout)."""
    s = Setup(max_write_buffer_bytes=1000, slow_consumer_timeout_s=2.0)
    conn, io = s.connect()
    conn.wrote(10_000, s.clock.now)  # one 10 kB message
    assert io.closed is None and conn.congested
    conn.wrote(6_000, s.clock.advance(0.5))  # draining
    assert io.closed is None
    conn.wrote(0, s.clock.advance(0.5))  # drained: served again, the next big message likewise
    assert not conn.congested
    conn.wrote(10_000, s.clock.now)
    assert io.closed is None
    conn.wrote(10_001, s.clock.now)  # more added while over: past what the message left
    assert io.closed is not None and io.closed[0] == 1008
    s2 = Setup(max_write_buffer_bytes=1000, slow_consumer_timeout_s=2.0)
    conn2, io2 = s2.connect()
    conn2.wrote(10_000, s2.clock.now)
    s2.tick(conn2, 2.1)  # never drained: the timeout still holds
    assert io2.closed is not None and io2.closed[0] == 1008


# --------------------------------------------------------------------------- draining and closing


def test_draining_refuses_new_work_and_closes_after_the_last_request() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, P(1))
    s.shared.draining = True
    conn.drain(5000)
    s.send(conn, P(2))
    s.send(conn, {"type": "ping", "id": 3})
    frames = io.take()
    assert frames[0] == {"type": "draining", "deadline_ms": 5000}
    assert (frames[1]["id"], frames[1]["code"]) == (2, "shutting_down") and frames[2]["type"] == "pong"
    assert io.closed is None
    s.models.predict.finish(0)
    assert codes(io.take()) == ["result"] and io.closed == (1001, "server shutting down")


def test_drain_closes_an_idle_connection_at_once_and_end_all_fails_the_rest() -> None:
    s = Setup()
    idle, io_i = s.connect()
    busy, io_b = s.connect()
    s.send(busy, G("g"))
    s.shared.draining = True
    idle.drain(100)
    busy.drain(100)
    assert io_i.closed == (1001, "server shutting down") and io_b.closed is None
    from wsserve.errors import ShuttingDown

    busy.end_all(ShuttingDown("drain deadline reached"))
    frames = io_b.take()
    assert frames[-1]["id"] == "g" and frames[-1]["code"] == "shutting_down"


def test_lost_connection_abandons_work_and_sends_nothing() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, P(1))
    s.send(conn, G(2))
    conn.lost()
    assert not conn.inflight and s.shared.inflight == 0 and s.models.predict.cancelled
    s.models.predict.finish(0)
    assert io.frames == [] and io.closed is None
    assert s.metrics.requests[("linear", "predict", "cancelled")] == 1


def test_finished_requests_count_in_their_versions_statistics() -> None:
    """Triton's statistics: a success adds its duration and queue time, anything else a failure."""
    s = Setup()
    stats = s.models.predict.stats = VersionStats()
    conn, io = s.connect()
    s.send(conn, P("a", inputs=[[1.0], [2.0]]))
    s.models.predict.finish()  # queued 0.001 s (FakePredictWorker)
    assert (stats.ok, stats.fail) == (1, 0) and stats.ok_s >= 0 and stats.queue_s == pytest.approx(0.001)
    s.send(conn, P("b"))
    conn.lost()  # cancelled: a failure
    assert (stats.ok, stats.fail) == (1, 1) and stats.queue_s == pytest.approx(0.001)
    stats.on_batch(4, 2, 0.5, 10.0)
    stats.on_batch(4, 1, 0.25, 11.0)
    assert (stats.executions, stats.rows, stats.pair_count, stats.last) == (2, 8, 3, 11.0)
    assert stats.pair_s == pytest.approx(1.25) and stats.sizes == {4: [2, 0.75]}


def test_generate_goes_to_the_engine_with_the_connection_as_its_fairness_group() -> None:
    s = Setup()
    conn, io = s.connect()
    s.send(conn, G("g", max_tokens=5, temperature=0.5, seed=3, timeout_ms=1000))
    params, sink, group, deadline = s.models.engine.submitted[0]
    assert group is conn and deadline == pytest.approx(1001.0)
    assert (params.max_tokens, params.temperature, params.seed) == (5, 0.5, 3)
    sink.on_token(0, "a")
    sink.on_done("length", 1, {"ttft_ms": 1.0, "total_ms": 2.0})
    assert [f["type"] for f in io.take()] == ["token", "done"]
    assert s.metrics.tokens == {"charlm": 1}


def test_generate_compiles_count_against_the_connections_key_else_its_address() -> None:
    """A guided pattern's compile takes a fair share of its client's, not its connection's: the
    key when the connection has one, else its address."""
    s = Setup()
    conn, _ = s.connect(address="10.0.0.7")
    s.send(conn, G("a", max_tokens=5))
    keyed, _ = s.connect(key="k1", address="10.0.0.7")
    s.send(keyed, G("b", max_tokens=5))
    assert s.models.engine.clients == [("address", "10.0.0.7"), ("key", "k1")]


def test_small_inputs_reach_the_worker_as_checked_rows_and_large_ones_as_float64_arrays() -> None:
    s = Setup()
    conn, _ = s.connect()
    s.send(conn, P(1, inputs=[[1], [2.5]]))  # converted with its batch, by the worker
    s.send(conn, P(2, inputs=[[0.5]] * (LIST_ROWS_MAX_VALUES + 1)))  # converted at once: 8 bytes a value
    small, large = (sub[0] for sub in s.models.predict.submitted)
    assert small.inputs == [[1], [2.5]] and small.nbytes == list_rows_bytes(2, 1) > 16
    assert large.inputs.dtype == np.float64 and large.inputs.shape == (LIST_ROWS_MAX_VALUES + 1, 1)
    assert large.nbytes == 8 * (LIST_ROWS_MAX_VALUES + 1)


# --------------------------------------------------------------------------- admin operations


ADMIN_KEY = "sk-admin-key"
FORBIDDEN = "needs the admin key (--admin-key), or loopback when no keys are configured"


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.20", "8.8.8.8", "2001:db8::1", "fe80::1"])
def test_without_keys_admin_operations_are_forbidden_beyond_loopback(address: str) -> None:
    s = Setup()
    conn, io = s.connect(address=address)
    for op in ("load", "unload", "reload"):
        s.send(conn, {"type": op, "id": op, "model": "m", "version": 2})
    assert [(f["type"], f["id"], f["code"], f["message"]) for f in io.take()] == [
        ("error", op, "forbidden", f"{op} {FORBIDDEN}") for op in ("load", "unload", "reload")]
    assert s.admin_calls == [] and conn.inflight == {} and io.closed is None
    assert s.metrics.requests[("", "other", "forbidden")] == 3
    s.send(conn, P("p"))  # the connection serves on
    assert len(s.models.predict.submitted) == 1


@pytest.mark.parametrize("address", ["127.0.0.1", "127.3.2.1", "::1"])
def test_without_keys_admin_operations_are_allowed_from_loopback(address: str) -> None:
    s = Setup()
    conn, io = s.connect(address=address)
    s.send(conn, {"type": "load", "id": 1, "model": "m", "version": 2})
    s.send(conn, {"type": "unload", "id": "u", "model": "m"})
    s.send(conn, {"type": "reload", "id": None, "model": "m", "version": "3"})
    assert s.admin_calls == [("load", "m", "2"), ("unload", "m", None), ("reload", "m", "3")]
    assert io.take() == [
        {"type": op, "id": rid, "ok": True, "model": "m", "versions": [{"version": "1", "state": "ready"}]}
        for op, rid in (("load", 1), ("unload", "u"), ("reload", None))
    ]


@pytest.mark.parametrize("keys", [{"admin_key": frozenset({ADMIN_KEY})},
                                  {"api_key": frozenset({KEY}), "admin_key": frozenset({ADMIN_KEY})}])
def test_with_keys_only_the_admin_key_may_administer_even_from_loopback(keys: dict[str, Any]) -> None:
    s = Setup(**keys)
    nobody, io = s.connect(address="127.0.0.1")
    s.send(nobody, {"type": "load", "id": 1, "model": "m"})
    assert [(f["code"], f["message"]) for f in io.take()] == [("forbidden", f"load {FORBIDDEN}")]
    if "api_key" in keys:
        user, io = s.connect(key=KEY, address="127.0.0.1")
        s.send(user, {"type": "unload", "id": 2, "model": "m"})
        assert [f["code"] for f in io.take()] == ["forbidden"]
        s.send(user, P("p"))  # an ordinary key predicts as before
        assert len(s.models.predict.submitted) == 1
    assert s.admin_calls == []
    admin, io = s.connect(key=ADMIN_KEY, address="10.0.0.9")  # a Bearer admin key on the handshake, from anywhere
    s.send(admin, {"type": "reload", "id": 3, "model": "m"})
    assert [f["type"] for f in io.take()] == ["reload"]
    by_message, io = s.connect(address="10.0.0.9")  # or the admin key in an auth message
    s.send(by_message, {"type": "auth", "id": "a", "token": ADMIN_KEY})
    s.send(by_message, {"type": "unload", "id": 4, "model": "m", "version": 1})
    assert io.take() == [{"type": "auth", "id": "a", "ok": True},
                         {"type": "unload", "id": 4, "ok": True, "model": "m",
                          "versions": [{"version": "1", "state": "ready"}]}]
    assert s.admin_calls == [("reload", "m", None), ("unload", "m", "1")]


@pytest.mark.parametrize(("address", "origin", "host", "allowed"), [
    ("127.0.0.1", None, "anything.example:8765", True),  # not a browser
    ("127.0.0.1", "http://localhost:8765", "localhost:8765", True),
    ("127.0.0.1", "http://LOCALHOST:8765", "LOCALHOST:8765", True),
    ("::1", "http://[::1]:8765", "[::1]:8765", True),
    ("127.0.0.1", "http://127.0.0.2", "127.0.0.2", True),
    ("127.0.0.1", "http://rebind.example:8765", "rebind.example:8765", False),  # DNS rebinding
    ("127.0.0.1", "http://localhost.rebind.example", "localhost.rebind.example", False),
    ("127.0.0.1", "http://127.0.0.1.rebind.example", "127.0.0.1.rebind.example", False),
    ("127.0.0.1", "http://10.0.0.1:8765", "10.0.0.1:8765", False),
    ("127.0.0.1", "http://x", None, False),
    ("10.0.0.1", None, "localhost:8765", False),  # not loopback
])
def test_who_may_administer_a_server_without_keys(address: str, origin: str | None, host: str | None,
                                                   allowed: bool) -> None:
    from wsserve.admission import local_admin

    assert local_admin(address, origin, host) is allowed
    s = Setup()
    conn = Connection(s.ctx, FakeIO(), address=address, key=None, now=s.clock.now,
                      local_admin=local_admin(address, origin, host))
    assert conn.may_admin() is allowed


def test_an_admin_failure_is_an_error_frame_for_its_id() -> None:
    s = Setup()
    conn, io = s.connect(address="127.0.0.1")
    s.admin_result = UnknownModel("no model named 'm' in the model repository")
    s.send(conn, {"type": "load", "id": "x", "model": "m"})
    assert io.take() == [{"type": "error", "id": "x", "code": "unknown_model",
                          "message": "no model named 'm' in the model repository"}]


def test_a_running_admin_operation_holds_a_draining_connection_open_until_it_answers() -> None:
    """A load still running when the drain starts is answered (its one frame), then the connection
    closes; as for a job, not closed under it with the answer dropped."""
    s = Setup()
    s.admin_later = True
    conn, io = s.connect(address="127.0.0.1")
    s.send(conn, {"type": "load", "id": "l", "model": "m"})
    s.shared.draining = True
    conn.drain(5000)
    assert codes(io.take()) == ["draining"] and io.closed is None
    s.admin_pending.pop()(s.admin_result)
    assert [(f["type"], f["id"]) for f in io.take()] == [("load", "l")]
    assert io.closed == (1001, "server shutting down")


def test_the_drain_deadline_ends_a_running_admin_operation_once() -> None:
    s = Setup()
    s.admin_later = True
    conn, io = s.connect(address="127.0.0.1")
    s.send(conn, {"type": "reload", "id": 7, "model": "m"})
    s.send(conn, G("g"))
    s.shared.draining = True
    conn.drain(100)
    from wsserve.errors import ShuttingDown

    conn.end_all(ShuttingDown("drain deadline reached"))
    frames = io.take()[1:]  # after "draining"
    assert [(f["id"], f["code"]) for f in frames if f["type"] == "error"] == [("g", "shutting_down"), (7, "shutting_down")]
    s.admin_pending.pop()(s.admin_result)  # the operation ends after all: its answer is not sent too
    assert io.take() == []


def test_a_running_admin_operation_stops_the_idle_clock() -> None:
    s = Setup(idle_timeout_s=30.0)
    s.admin_later = True
    conn, io = s.connect(address="127.0.0.1")
    assert conn.next_timer() is not None
    s.send(conn, {"type": "load", "id": 1, "model": "m"})
    assert conn.next_timer() is None  # a slow load is not idleness
    s.admin_pending.pop()(s.admin_result)
    assert conn.next_timer() is not None


def test_admin_operations_on_a_server_without_a_repository_are_bad_requests() -> None:
    s = Setup()
    s.ctx = dataclasses.replace(s.ctx, admin=None)
    conn, io = s.connect(address="127.0.0.1")
    s.send(conn, {"type": "unload", "id": 1, "model": "m"})
    assert [(f["code"], f["message"]) for f in io.take()] == [("bad_request", "unload: this server serves no model repository")]


def test_a_float32_input_keeps_small_requests_as_rows_and_checks_its_range_either_way() -> None:
    """The pool's path for one float32 vector input (the built-in mlp, float32 repository models):
    small requests stay checked JSON rows as for float64, a bigger one becomes float64 at once; a
    value beyond float32's range is refused by both, naming the row."""
    prepare = _float_rows(2, float32=True)
    rows, n, nbytes = prepare([[1, 2.5]], 100, 1 << 20)
    assert rows == [[1, 2.5]] and n == 1 and nbytes == list_rows_bytes(1, 2)
    big = [[0.5, -0.5]] * (LIST_ROWS_MAX_VALUES // 2 + 1)
    rows, n, nbytes = prepare(big, 100, 1 << 20)
    assert rows.dtype == np.float64 and rows.shape == (len(big), 2) and nbytes == rows.nbytes
    for inputs in ([[0, 0], [3.5e38, 0]], [*big[:-1], [0, 0], [0, -1e39]]):
        with pytest.raises(InvalidInput) as info:
            prepare(inputs, 100, 1 << 20)
        assert info.value.message == f"'inputs' row {len(inputs) - 1} holds a value beyond float32's range"
