"""A hostile or buggy server: what it sends fails at most the call it answers.

The server here is a scripted stand-in (:class:`Fake`, ``websockets`` on 127.0.0.1): the real
wsserve never sends these frames, so a true WebSocket boundary with a fake behind it is the
only way to send them. It answers ``ping`` with ``pong`` and ``cancel`` with the cancelled
terminal frame, as the real server does, and everything else from a script.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import websockets
from wsserve_client import (
    Backoff,
    Client,
    ClientClosed,
    DeadlineExceeded,
    Limits,
    OverloadedError,
    ProtocolError,
    RetryPolicy,
    StreamOverflow,
)

from tests.support import wait_until_async

Frame = dict[str, Any]
Out = str | bytes | Frame
HELLO: Frame = {"type": "hello", "server": "fake", "version": "0", "protocol": 1, "limits": {}, "models": []}
#: Hang detector only: a client that would wait forever fails here instead of hanging the run.
WATCHDOG_S = 30


class Fake:
    """A scripted wsserve stand-in. ``reply(frame)`` gives what answers a predict/generate
    (dicts are sent as JSON text, ``bytes`` as a binary frame, ``str`` as a raw text frame);
    ``received`` holds every frame the client sent."""

    def __init__(self, reply: Callable[[Frame], Sequence[Out]], hello: Out, answer_cancels: bool = True) -> None:
        self.reply = reply
        self.hello = hello
        self.answer_cancels = answer_cancels  # False: a server that ignores cancels
        self.received: list[Frame] = []
        self.connections = 0
        self.open: dict[Any, str] = {}  # unfinished request id -> its type
        self.ws: websockets.ServerConnection | None = None  # the latest connection

    def cancels(self) -> list[Any]:
        return [f["id"] for f in self.received if f.get("type") == "cancel"]

    async def send(self, ws: websockets.ServerConnection, out: Out) -> None:
        if isinstance(out, dict):
            if out.get("type") in ("result", "done", "error"):
                self.open.pop(out.get("id"), None)
            out = orjson.dumps(out).decode()
        await ws.send(out)

    async def handler(self, ws: websockets.ServerConnection) -> None:
        self.connections += 1
        self.ws = ws
        try:
            await self._serve(ws)
        except websockets.ConnectionClosed:
            pass  # the client left while an answer was going out

    async def _serve(self, ws: websockets.ServerConnection) -> None:
        await self.send(ws, self.hello)
        async for msg in ws:
            frame = orjson.loads(msg)
            self.received.append(frame)
            kind, rid = frame.get("type"), frame.get("id")
            if kind == "ping":
                await self.send(ws, {"type": "pong", "id": rid})
            elif kind == "cancel":
                if not self.answer_cancels:
                    pass
                elif self.open.get(rid) == "generate":
                    await self.send(ws, {"type": "done", "id": rid, "reason": "cancelled", "tokens": 0})
                elif rid in self.open:
                    await self.send(ws, {"type": "error", "id": rid, "code": "cancelled", "message": "cancelled"})
            else:
                self.open[rid] = kind
                for out in self.reply(frame):
                    await self.send(ws, out)


@asynccontextmanager
async def fake_server(reply: Callable[[Frame], Sequence[Out]] = lambda f: (), hello: Out = HELLO,
                      answer_cancels: bool = True) -> AsyncIterator[tuple[str, Fake]]:
    fake = Fake(reply, hello, answer_cancels)
    async with websockets.serve(fake.handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", fake


def good_result(frame: Frame) -> Frame:
    return {"type": "result", "id": frame["id"], "model": frame["model"], "version": "1",
            "outputs": [[1.0]], "timing": {}}


def good_generation(frame: Frame) -> list[Frame]:
    rid = frame["id"]
    return [*({"type": "token", "id": rid, "seq": i, "text": t} for i, t in enumerate("abc")),
            {"type": "done", "id": rid, "reason": "length", "tokens": 3, "timing": {}}]


def script(bad: Callable[[Frame], Sequence[Out]]) -> Callable[[Frame], Sequence[Out]]:
    """Answer model ``bad`` with ``bad(frame)``, model ``silent`` never, anything else well."""
    def reply(frame: Frame) -> Sequence[Out]:
        if frame.get("model") == "bad":
            return bad(frame)
        if frame.get("model") == "silent":
            return ()
        return good_generation(frame) if frame["type"] == "generate" else [good_result(frame)]
    return reply


async def _all_ended(c: Client) -> None:
    await wait_until_async(lambda: c.stats().inflight == 0, 5, interval_s=0.01, what="every call ended")


# -- 1. malformed frames ------------------------------------------------------------------

PREDICT_REPLIES: dict[str, tuple[Callable[[Frame], Sequence[Out]], str, bool]] = {
    # name: (reply, what the error names, whether the client must cancel: the reply did not end it)
    "token": (lambda f: [{"type": "token", "id": f["id"], "seq": 0, "text": "x"}], "'token'", True),
    "chunk": (lambda f: [{"type": "chunk", "id": f["id"], "seq": 0, "offset": 0, "outputs": [[1]]}], "'chunk'", True),
    "done": (lambda f: [{"type": "done", "id": f["id"], "reason": "length", "tokens": 1}], "'done'", False),
    "unknown type": (lambda f: [{"type": "progress", "id": f["id"]}], "'progress'", True),
    "outputs not rows": (lambda f: [{**good_result(f), "outputs": "1.0"}], "'outputs'", False),
    "no outputs": (lambda f: [{"type": "result", "id": f["id"], "timing": {}}], "'outputs'", False),
    "timing not an object": (lambda f: [{**good_result(f), "timing": [1]}], "'timing'", False),
    "version not a string": (lambda f: [{**good_result(f), "version": [1]}], "'version'", False),
}


@pytest.mark.parametrize("case", list(PREDICT_REPLIES))
async def test_a_bad_reply_to_a_predict_fails_only_that_call(case: str) -> None:
    bad, names, cancels = PREDICT_REPLIES[case]
    async with fake_server(script(bad)) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        out = await asyncio.gather(c.predict("bad", [[0.5]]), c.predict("good", [[0.5]]), return_exceptions=True)
        assert isinstance(out[0], ProtocolError), out
        assert names in out[0].message and out[0].request_id is not None, out[0].message
        assert out[1].outputs == [[1.0]]  # type: ignore[union-attr]
        assert (await c.predict("good", [[0.5]])).outputs == [[1.0]]  # the connection goes on
        assert await c.ping() > 0 and c.stats().connects == 1
        await _all_ended(c)  # a cancelled request's slot comes back with the server's answer
        assert fake.cancels() == ([out[0].request_id] if cancels else [])


NOT_AN_ARRAY: dict[str, Any] = {
    "ragged rows": [[1.0], [1.0, 2.0]],
    "an object in the rows": [[{"b": 1}]],
    "a named output that is an object": {"a": {"b": 1}},
}


@pytest.mark.parametrize("case", list(NOT_AN_ARRAY))
async def test_outputs_numpy_cannot_hold_fail_an_as_numpy_predict_with_protocol_error(case: str) -> None:
    # These raised numpy's ValueError / TypeError out of predict(as_numpy=True), not a client error.
    outputs = NOT_AN_ARRAY[case]
    async with (fake_server(script(lambda f: [{**good_result(f), "outputs": outputs}])) as (url, _),
                Client(url) as c, asyncio.timeout(WATCHDOG_S)):
        out = await asyncio.gather(c.predict("bad", [[0.5]], as_numpy=True), c.predict("good", [[0.5]], as_numpy=True),
                                   return_exceptions=True)
        assert isinstance(out[0], ProtocolError), out
        assert "'outputs'" in out[0].message and out[0].request_id is not None, out[0].message
        assert out[1].outputs.tolist() == [[1.0]]  # type: ignore[union-attr]
        assert await c.ping() > 0 and c.stats().connects == 1
        await _all_ended(c)


GENERATE_REPLIES: dict[str, tuple[Callable[[Frame], Sequence[Out]], str]] = {
    "result": (lambda f: [{"type": "result", "id": f["id"], "outputs": [[1.0]], "timing": {}}], "'result'"),
    "chunk": (lambda f: [{"type": "chunk", "id": f["id"], "seq": 0, "offset": 0, "outputs": [[1.0]]}], "'chunk'"),
    "unknown type": (lambda f: [{"type": "progress", "id": f["id"]}], "'progress'"),
    "text not a string": (lambda f: [{"type": "token", "id": f["id"], "seq": 0, "text": 5},
                                     {"type": "done", "id": f["id"], "reason": "length", "tokens": 1}], "'text'"),
    "tokens not a count": (lambda f: [{"type": "done", "id": f["id"], "reason": "length", "tokens": "many"}],
                           "'tokens'"),
    "reason not a string": (lambda f: [{"type": "done", "id": f["id"], "reason": None, "tokens": 0}], "'reason'"),
}


@pytest.mark.parametrize("case", list(GENERATE_REPLIES))
async def test_a_bad_frame_for_a_generation_fails_only_that_generation(case: str) -> None:
    bad, names = GENERATE_REPLIES[case]
    async with fake_server(script(bad)) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        async def bad_one() -> str:
            return (await c.complete("bad", "x")).text

        out = await asyncio.gather(bad_one(), c.complete("good", "x"), return_exceptions=True)
        assert isinstance(out[0], ProtocolError) and names in out[0].message, out
        assert out[1].text == "abc"  # type: ignore[union-attr]
        assert (await c.complete("good", "x")).text == "abc" and await c.ping() > 0
        await _all_ended(c)
        assert c.stats().connects == 1


def _logprob_generation(frame: Frame) -> list[Frame]:
    """:func:`good_generation` with each token's ``logprob``/``top_logprobs`` (one alternative)."""
    *tokens, done = good_generation(frame)
    return [*({**t, "logprob": -0.5, "top_logprobs": [{"id": 1, "text": t["text"], "logprob": -0.5}]}
              for t in tokens), done]


LOGPROB_REPLIES: dict[str, tuple[Callable[[Frame], Sequence[Out]], str]] = {
    # a server without logprobs: it ignores the field and sends plain tokens
    "no logprobs": (good_generation, "asked for logprobs"),
    "logprob not a number": (lambda f: [{**t, "logprob": "-1"} if t["type"] == "token" else t
                                        for t in _logprob_generation(f)], "'logprob'"),
    "top_logprobs not a list": (lambda f: [{**t, "top_logprobs": {"id": 1}} if t["type"] == "token" else t
                                           for t in _logprob_generation(f)], "'top_logprobs'"),
    "top id not an integer": (lambda f: [{**t, "top_logprobs": [{"id": "1", "text": "a", "logprob": -1}]}
                                         if t["type"] == "token" else t for t in _logprob_generation(f)], ".id"),
}


@pytest.mark.parametrize("case", list(LOGPROB_REPLIES))
async def test_a_generation_asking_for_logprobs_fails_on_a_token_without_good_ones(case: str) -> None:
    """The stream fails at the bad token, the request (left running: no ``done`` comes) is
    cancelled, other calls go on."""
    bad, names = LOGPROB_REPLIES[case]

    def reply(frame: Frame) -> Sequence[Out]:
        return bad(frame)[:-1] if frame["model"] == "bad" else _logprob_generation(frame)

    async with fake_server(reply) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        good = await c.complete("good", "x", logprobs=1)
        assert good.text == "abc" and good.logprobs is not None
        assert [(r.text, r.logprob, [(t.id, t.text) for t in r.top]) for r in good.logprobs] == \
            [(ch, -0.5, [(1, ch)]) for ch in "abc"]
        gen = c.generate("bad", "x", logprobs=1)
        with pytest.raises(ProtocolError) as ei:
            async for _ in gen:
                pass
        assert names in ei.value.message, ei.value.message
        assert gen.logprobs == [] and gen.text == ""  # it failed at the first token
        await _all_ended(c)
        assert fake.cancels() == [ei.value.request_id]
        assert (await c.complete("good", "x")).logprobs is None  # not asked: none, whatever the server sends
        assert await c.ping() > 0 and c.stats().connects == 1


SEQ_CASES: dict[str, tuple[list[int], int, int]] = {
    # name: (the seqs the server sends, the expected seq and the one got where it fails)
    "a gap": ([0, 2], 1, 2),
    "a repeat": ([0, 1, 1], 2, 1),
    "out of order": ([0, 2, 1], 1, 2),
    "starting at 1": ([1, 2], 0, 1),
}


@pytest.mark.parametrize("case", list(SEQ_CASES))
async def test_a_token_out_of_seq_order_fails_only_that_generation(case: str) -> None:
    """A token frame whose ``seq`` is not the next (0, 1, 2, ...) means a token was lost,
    repeated or reordered: the generation fails there with :class:`ProtocolError` naming the
    expected and the received ``seq`` (its text is not silently short), the request (left running:
    no ``done`` came) is cancelled, and the connection's other generations go on."""
    seqs, expected, got = SEQ_CASES[case]
    texts = "abcdefgh"

    def bad(frame: Frame) -> Sequence[Out]:
        return [{"type": "token", "id": frame["id"], "seq": s, "text": texts[i]} for i, s in enumerate(seqs)]

    async with fake_server(script(bad)) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        gen = c.generate("bad", "x")
        out = await asyncio.gather(c.complete("good", "x"), _drain(gen), c.complete("good", "y"),
                                   return_exceptions=True)
        assert isinstance(out[1], ProtocolError), out
        assert f"'seq' = {got}, expected {expected}" in out[1].message, out[1].message
        assert out[1].request_id == gen.request_id
        assert gen.text == texts[:expected]  # the tokens before the bad one, in order
        assert out[0].text == out[2].text == "abc"  # type: ignore[union-attr]
        await _all_ended(c)
        assert fake.cancels() == [gen.request_id]
        assert (await c.complete("good", "x")).text == "abc" and await c.ping() > 0
        assert c.stats().connects == 1


async def _drain(gen: Any) -> list[str]:
    return [t async for t in gen]


async def test_a_token_for_a_streamed_predict_is_a_protocol_error() -> None:
    bad = script(lambda f: [{"type": "token", "id": f["id"], "seq": 0, "text": "x"}])
    async with fake_server(bad) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        with pytest.raises(ProtocolError, match="'token' frame for streamed predict") as ei:
            async for _ in c.predict_stream("bad", [[0.5]]):
                pass
        await _all_ended(c)
        assert fake.cancels() == [ei.value.request_id]
        assert [ch.outputs async for ch in c.predict_stream("good", [[0.5]])] == [[[1.0]]]  # a plain result


def _binary(header: Frame, payload: bytes) -> bytes:
    h = orjson.dumps(header)
    return len(h).to_bytes(4, "little") + h + payload


async def test_a_malformed_binary_reply_fails_the_call_its_header_names() -> None:
    # 1x1 float32 needs 4 payload bytes; 3 come.
    bad = script(lambda f: [_binary({"type": "result", "id": f["id"], "dtype": "float32", "shape": [1, 1]}, b"\0\0\0")])
    async with fake_server(bad) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        with pytest.raises(ProtocolError, match="binary 'result' frame for predict .* is malformed"):
            await c.predict("bad", [[0.5]])
        assert (await c.predict("good", [[0.5]])).outputs == [[1.0]]
        assert c.stats().inflight == 0 and fake.cancels() == []


async def test_a_binary_reply_naming_one_output_twice_fails_its_call() -> None:
    # The second tensor of the same name replaced the first: one output silently dropped.
    desc = {"name": "y", "dtype": "float32", "shape": [1]}
    bad = script(lambda f: [_binary({"type": "result", "id": f["id"], "outputs": [desc, desc]}, b"\0" * 8)])
    async with fake_server(bad) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        with pytest.raises(ProtocolError, match="binary 'result' frame for predict .* is malformed.*'y' twice"):
            await c.predict("bad", [[0.5]])
        assert (await c.predict("good", [[0.5]])).outputs == [[1.0]]
        assert c.stats().inflight == 0 and fake.cancels() == []


async def test_frames_naming_no_pending_call_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    noise: list[Out] = ["{not json", "[1, 2]", '{"id": 99}', b"\x01\x00", _binary({"id": "nobody"}, b""),
                        {"type": "token", "id": "nobody", "seq": 0, "text": "x"}]
    async with fake_server(lambda f: [*noise, good_result(f)]) as (url, fake), Client(url) as c:
        with caplog.at_level(logging.DEBUG, logger="wsserve_client"):
            async with asyncio.timeout(WATCHDOG_S):
                assert (await c.predict("good", [[0.5]])).outputs == [[1.0]]
                assert await c.ping() > 0
    text = caplog.text
    for what in ("not JSON", "not a JSON object", "without a type", "binary frame", "'token' frame for no pending"):
        assert what in text, (what, text)


# -- 2. hello --------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 0, "1", 1.5, None])
async def test_a_hello_of_another_protocol_version_is_refused_at_connect(protocol: object) -> None:
    async with fake_server(hello={**HELLO, "protocol": protocol}) as (url, fake):
        c = Client(url, reconnect=Backoff(max_attempts=3, base_delay=0.01, max_delay=0.01))
        async with asyncio.timeout(WATCHDOG_S):
            with pytest.raises(ProtocolError, match=r"protocol .*this client speaks wsserve protocol 1"):
                await c.connect()
            with pytest.raises(ProtocolError):
                await c.ping()  # a later call is refused the same way
            await c.close()
        assert fake.connections == 2  # once per call: a refusal is not retried


BAD_LIMITS: Frame = {"max_message_bytes": 0, "max_inflight": -1, "max_rows": "many", "max_tokens": 2**60,
                     "max_binary_header_bytes": 1.5}


@pytest.mark.parametrize("limits", [BAD_LIMITS, [1, 2], "none"], ids=["bad values", "a list", "a string"])
async def test_hello_limits_that_are_not_sane_counts_are_not_trusted(
        limits: object, caplog: pytest.LogCaptureFixture) -> None:
    async with fake_server(script(lambda f: ()), hello={**HELLO, "limits": limits}) as (url, fake):
        with caplog.at_level(logging.WARNING, logger="wsserve_client"):
            async with Client(url) as c, asyncio.timeout(WATCHDOG_S):
                assert c.hello is not None and c.hello.limits == Limits()  # as if not announced
                assert c.stats().capacity is None
                out = await asyncio.gather(*(c.predict("good", [[0.5]]) for _ in range(5)))
                assert [r.outputs for r in out] == [[[1.0]]] * 5
    if isinstance(limits, dict):
        for name in limits:
            assert f"hello limit {name}=" in caplog.text, caplog.text
    else:
        assert "hello limits" in caplog.text


# -- 3. whole-call timeout --------------------------------------------------------------------

async def test_a_predict_timeout_covers_the_wait_for_an_inflight_slot() -> None:
    async with fake_server(script(lambda f: ())) as (url, fake), Client(url, max_inflight=1) as c:
        async with asyncio.timeout(WATCHDOG_S):
            holder = asyncio.ensure_future(c.predict("silent", [[0.5]]))  # holds the only slot
            await wait_until_async(lambda: c.stats().requests_sent == 1, 5)
            with pytest.raises(TimeoutError) as ei:
                await c.predict("silent", [[0.5]], timeout=0.05)
            assert isinstance(ei.value, DeadlineExceeded) and "never sent" in ei.value.message
            assert [f["type"] for f in fake.received] == ["predict"]  # the second was never sent
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            await _all_ended(c)
            assert await c.ping() > 0  # the connection stays usable


async def test_a_predict_timeout_sends_cancel_and_raises_timeout_error() -> None:
    async with fake_server(script(lambda f: ())) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        with pytest.raises(TimeoutError) as ei:
            await c.predict("silent", [[0.5]], timeout=0.05)
        assert isinstance(ei.value, DeadlineExceeded) and "cancel sent" in ei.value.message
        await _all_ended(c)
        assert fake.cancels() == [ei.value.request_id]
        assert (await c.predict("good", [[0.5]], timeout=5)).outputs == [[1.0]]


async def test_a_generation_timeout_fires_while_tokens_are_still_buffered() -> None:
    """A server that streams tokens faster than the caller reads them, forever: the deadline
    covers the whole stream, so it still fires although a token is always waiting (the tokens
    that arrived before it are read first, those after it are not)."""
    flooding: list[asyncio.Task[None]] = []

    async def flood(fake: Fake, rid: Any) -> None:
        seq = 0
        while rid in fake.open:
            assert fake.ws is not None
            await fake.send(fake.ws, {"type": "token", "id": rid, "seq": seq, "text": "x"})
            seq += 1
            await asyncio.sleep(0.001)

    def reply(frame: Frame) -> Sequence[Out]:
        flooding.append(asyncio.ensure_future(flood(fake, frame["id"])))
        return ()

    async with fake_server(reply) as (url, fake):
        async with Client(url) as c, asyncio.timeout(WATCHDOG_S):
            n = 0
            with pytest.raises(TimeoutError) as ei:
                async for _ in c.generate("flood", "x", timeout=0.05):
                    n += 1
                    await asyncio.sleep(0.002)  # a slow consumer: the flood outpaces it
            assert isinstance(ei.value, DeadlineExceeded) and n > 0
            await _all_ended(c)
            assert fake.cancels() == [ei.value.request_id]
            assert await c.ping() > 0
        for t in flooding:
            t.cancel()


async def test_tokens_that_arrived_before_the_deadline_are_still_read_after_it() -> None:
    """A reader that comes back after the deadline gets the tokens the server sent in time, then
    the timeout (the JS client does the same); a server that then goes silent cannot hold it."""
    def reply(frame: Frame) -> Sequence[Out]:
        return [{"type": "token", "id": frame["id"], "seq": i, "text": t} for i, t in enumerate("abc")]

    async with fake_server(reply) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        gen = c.generate("slow", "x", timeout=0.01)
        first = await gen.__anext__()
        await wait_until_async(lambda: gen._call is not None and len(gen._call.items) == 2, 5, interval_s=0.001,
                               what="the other two tokens buffered")
        # the client's own deadline (timeout + DEADLINE_GRACE_S) passes while nobody reads
        await wait_until_async(lambda: asyncio.get_running_loop().time() > gen._deadline, 10, interval_s=0.01,
                               what="the deadline passed")
        rest = []
        with pytest.raises(DeadlineExceeded):
            async for t in gen:
                rest.append(t)
        assert [first, *rest] == ["a", "b", "c"]
        await _all_ended(c)
        assert fake.cancels() == [gen.request_id]


async def test_a_stream_timeout_covers_the_wait_for_an_inflight_slot() -> None:
    async with fake_server(script(lambda f: ())) as (url, fake), Client(url, max_inflight=1) as c:
        async with asyncio.timeout(WATCHDOG_S):
            holder = asyncio.ensure_future(c.predict("silent", [[0.5]]))
            await wait_until_async(lambda: c.stats().requests_sent == 1, 5)
            with pytest.raises(TimeoutError, match="not sent within timeout"):
                async for _ in c.generate("good", "x", timeout=0.05):
                    pass
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            await _all_ended(c)
            assert [f["type"] for f in fake.received] == ["predict", "cancel"]  # the generate never went out
            assert (await c.complete("good", "x", timeout=5)).text == "abc"


def overloaded_first(n: int, retry_after_ms: int) -> Callable[[Frame], Sequence[Out]]:
    """Refuse the first ``n`` requests with ``overloaded`` asking for ``retry_after_ms``."""
    seen: list[Any] = []

    def reply(frame: Frame) -> Sequence[Out]:
        seen.append(frame["id"])
        if len(seen) <= n:
            return [{"type": "error", "id": frame["id"], "code": "overloaded", "message": "full",
                     "retry_after_ms": retry_after_ms}]
        return [good_result(frame)]
    return reply


async def test_retries_stop_at_the_calls_timeout() -> None:
    """A server asking to come back in 10 s: with timeout=0.2 the client does not sleep past its
    deadline to retry; the refusal is the answer, at once."""
    retry = RetryPolicy(max_attempts=5)
    async with fake_server(overloaded_first(10, 10_000)) as (url, fake), Client(url, retry=retry) as c:
        async with asyncio.timeout(WATCHDOG_S):  # 4 retries 10 s apart would end here
            with pytest.raises(OverloadedError) as ei:
                await c.predict("good", [[0.5]], timeout=0.2)
            assert ei.value.retry_after == 10.0
            assert [f["type"] for f in fake.received] == ["predict"]  # no retry was made


async def test_a_servers_hour_long_retry_after_is_cut_to_max_retry_after() -> None:
    retry = RetryPolicy(max_attempts=3, max_retry_after=0.01)
    async with fake_server(overloaded_first(2, 3_600_000)) as (url, fake), Client(url, retry=retry) as c:
        async with asyncio.timeout(WATCHDOG_S):  # honoured, the hour would end here
            assert (await c.predict("good", [[0.5]])).outputs == [[1.0]]
        assert [f["type"] for f in fake.received] == ["predict"] * 3


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "plain send"])
async def test_the_cancel_after_a_bad_frame_goes_out_on_either_send_path(
        coalesce: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsserve_client._connection as connection_module

    monkeypatch.setattr(connection_module, "COALESCE", coalesce)
    bad = script(lambda f: [{"type": "token", "id": f["id"], "seq": 0, "text": "x"}])
    async with fake_server(bad) as (url, fake), Client(url) as c, asyncio.timeout(WATCHDOG_S):
        assert (c._conn is not None and c._conn._fast is not None) == coalesce
        with pytest.raises(ProtocolError) as ei:
            await c.predict("bad", [[0.5]])
        await _all_ended(c)
        assert fake.cancels() == [ei.value.request_id] and c.stats().cancels_sent == 1


# -- 4. bounded close ------------------------------------------------------------------------

async def test_close_is_bounded_when_the_server_stops_reading() -> None:
    """A server that stops reading: the client's writes back up, so not even its close frame
    can be written. ``close()`` must still return (after ``close_timeout``), not wait forever."""
    stop = asyncio.Event()

    async def deaf(ws: websockets.ServerConnection) -> None:
        await ws.send(orjson.dumps(HELLO).decode())
        ws.transport.pause_reading()
        await stop.wait()

    big = [[0.5] * 250_000]  # about 1 MB of JSON
    async with websockets.serve(deaf, "127.0.0.1", 0, max_size=None, close_timeout=0.1) as server:
        port = server.sockets[0].getsockname()[1]
        c = Client(f"ws://127.0.0.1:{port}", close_timeout=0.5, ping_interval=None)
        try:
            await c.connect()
            calls = [asyncio.ensure_future(c.predict("linear", big)) for _ in range(32)]
            conn = c._conn
            assert conn is not None and conn._fast is not None
            await wait_until_async(lambda: conn._fast.congested, 10, what="the client's writes back up")
            # Without a bound this waits for the socket to drain, which never happens. (The
            # watchdog does not cancel: a close() stuck there may not even end when cancelled.)
            closing = asyncio.ensure_future(c.close())
            await asyncio.wait({closing}, timeout=WATCHDOG_S)
            assert closing.done(), "close() did not return"
            await closing
            out = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WATCHDOG_S)
            assert all(isinstance(r, ClientClosed) for r in out), out
            assert not c.stats().connected
        finally:
            stop.set()


# -- 5. bounded stream buffering ---------------------------------------------------------------

async def test_a_stream_whose_consumer_does_not_read_overflows_alone() -> None:
    text = "y" * 1000

    def reply(frame: Frame) -> Sequence[Out]:
        if frame.get("model") == "flood":
            return [{"type": "token", "id": frame["id"], "seq": i, "text": text} for i in range(200)]
        return good_generation(frame)

    async with fake_server(reply) as (url, fake), Client(url, max_stream_buffer_bytes=20_000) as c:
        async with asyncio.timeout(WATCHDOG_S):
            gen = c.generate("flood", "x")
            await gen.__aenter__()  # sent; the caller does not read while the server sends
            await wait_until_async(lambda: fake.cancels() == [gen.request_id], 10,
                                   what="the client cancels the overflowing stream")
            with pytest.raises(StreamOverflow, match="max_stream_buffer_bytes=20000") as ei:
                await gen.__anext__()
            assert ei.value.request_id == gen.request_id
            assert (await c.complete("good", "x")).text == "abc"  # other calls are not affected
            await _all_ended(c)
            assert await c.ping() > 0 and c.stats().connects == 1


async def test_a_server_that_ignores_cancels_cannot_hold_the_inflight_slots() -> None:
    """A request the server never ends, not even after the client's cancel, held its inflight
    slot for good: with max_inflight=1 every later call waited forever. Now the slot is freed
    cancel_timeout after the cancel (the call ends with ProtocolError)."""
    async with fake_server(script(lambda f: ()), answer_cancels=False) as (url, fake), \
            Client(url, max_inflight=1, cancel_timeout=0.2) as c:
        async with asyncio.timeout(WATCHDOG_S):
            with pytest.raises(DeadlineExceeded, match="cancel sent"):
                await c.predict("silent", [[0.5]], timeout=0.05)
            assert (await c.predict("good", [[0.5]])).outputs == [[1.0]]  # the slot came back
            gen = c.generate("silent", "x")
            first = asyncio.ensure_future(gen.__anext__())  # sends the request, then waits
            await wait_until_async(lambda: c.stats().requests_sent == 3, 5, what="the generate sent")
            gen.cancel()  # keeps iterating to the server's end of the stream, which never comes
            with pytest.raises(ProtocolError, match="did not end the request within 0.2s of its cancel"):
                await first
            await _all_ended(c)
            assert [f["type"] for f in fake.received] == ["predict", "cancel", "predict", "generate", "cancel"]
    with pytest.raises(ValueError, match="cancel_timeout"):
        Client(url, cancel_timeout=0)
