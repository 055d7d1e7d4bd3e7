"""Sans-I/O parts of the client: codec, error mapping, backoff, limiter, public API."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import orjson
import pytest
import wsserve_client
from wsserve_client import errors
from wsserve_client._limiter import Limiter
from wsserve_client.backoff import Backoff, RetryPolicy
from wsserve_client.codec import (
    check_logprobs,
    check_version,
    encode_admin,
    encode_cancel,
    encode_generate,
    encode_predict,
    parse_generation_done,
    parse_hello,
    parse_model_status,
    parse_models,
    parse_result,
    parse_stream_done,
    parse_token,
    parse_token_logprobs,
    timeout_to_ms,
)

# -- public API ---------------------------------------------------------------------------

PUBLIC = {
    "Tensor", "as_tensor",
    "Client", "DEFAULT_URL", "PredictStream", "ResponseStream", "Generation", "PredictResult", "Chunk",
    "Response", "ResponsesSummary",
    "StreamSummary", "GenerationResult", "Completion", "TokenLogprob", "TopLogprob", "ModelInfo", "ModelStatus", "VersionStatus", "ServerHello", "Limits",
    "ClientStats", "RetryPolicy", "Backoff", "WsserveError", "BadJsonError", "BadRequestError",
    "UnknownModelError", "DuplicateIdError", "InvalidInput", "OverloadedError",
    "RateLimitedError", "DeadlineExceeded", "RequestCancelled", "Unauthorized", "Forbidden", "ShuttingDown",
    "InternalServerError", "RequestTooLarge", "ProtocolError", "StreamOverflow", "ConnectionLost", "ClientClosed",
    "error_from_frame", "__version__",
}


def test_public_api_is_pinned() -> None:
    assert set(wsserve_client.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(wsserve_client, name), name


def test_client_does_not_import_the_server_package() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import wsserve_client; "
        "print(any(m == 'wsserve' or m.startswith('wsserve.') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(wsserve_client.__path__[0].rsplit("/", 1)[0])],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "False"


# -- error mapping ----------------------------------------------------------------------

WIRE_CODES = {
    "bad_json": errors.BadJsonError,
    "bad_request": errors.BadRequestError,
    "unknown_model": errors.UnknownModelError,
    "duplicate_id": errors.DuplicateIdError,
    "invalid_input": errors.InvalidInput,
    "overloaded": errors.OverloadedError,
    "rate_limited": errors.RateLimitedError,
    "deadline_exceeded": errors.DeadlineExceeded,
    "cancelled": errors.RequestCancelled,
    "unauthorized": errors.Unauthorized,
    "forbidden": errors.Forbidden,
    "shutting_down": errors.ShuttingDown,
    "internal": errors.InternalServerError,
}


def test_every_wire_code_has_its_class() -> None:
    assert errors.ERROR_CLASSES == WIRE_CODES


@pytest.mark.parametrize("code", sorted(WIRE_CODES))
def test_error_from_frame_maps_code_id_message(code: str) -> None:
    frame = {"type": "error", "id": 17, "code": code, "message": f"because {code}"}
    exc = errors.error_from_frame(frame)
    assert type(exc) is WIRE_CODES[code]
    assert isinstance(exc, errors.WsserveError)
    assert (exc.code, exc.request_id, exc.message) == (code, 17, f"because {code}")
    assert exc.retry_after is None
    assert code in str(exc) and "17" in str(exc)


def test_retry_after_ms_becomes_seconds() -> None:
    exc = errors.error_from_frame(
        {"type": "error", "id": "a", "code": "overloaded", "message": "full", "retry_after_ms": 250}
    )
    assert isinstance(exc, errors.OverloadedError)
    assert exc.retry_after == pytest.approx(0.25)
    assert exc.request_id == "a"


def test_unknown_code_and_junk_fields_do_not_raise() -> None:
    exc = errors.error_from_frame({"type": "error", "id": [1], "code": "teapot", "message": 5})
    assert type(exc) is errors.WsserveError
    assert exc.code == "teapot" and exc.request_id is None and "teapot" in exc.message
    exc2 = errors.error_from_frame({"type": "error", "id": True, "code": "overloaded", "retry_after_ms": "x"})
    assert isinstance(exc2, errors.OverloadedError) and exc2.request_id is None and exc2.retry_after is None


def test_client_side_errors_have_no_wire_code() -> None:
    assert errors.ConnectionLost("x").code is None
    assert errors.RequestTooLarge("x").code is None
    assert issubclass(errors.ClientClosed, errors.ConnectionLost)
    assert not issubclass(errors.RequestCancelled, asyncio.CancelledError)


# -- codec ------------------------------------------------------------------------------

def test_encode_predict_minimal_and_full() -> None:
    assert orjson.loads(encode_predict(1, "linear", [[0.5]])) == {
        "type": "predict", "id": 1, "model": "linear", "inputs": [[0.5]],
    }
    full = orjson.loads(
        encode_predict("x", "mlp", [[1, 2]], version="2", timeout=0.0105, priority=1, stream=True, chunk_rows=4)
    )
    assert full == {
        "type": "predict", "id": "x", "model": "mlp", "inputs": [[1, 2]], "version": "2",
        "stream": True, "chunk_rows": 4, "timeout_ms": 11, "priority": 1,
    }


def test_encode_predict_numpy_inputs() -> None:
    a = np.arange(6, dtype=np.float32).reshape(3, 2) / 4
    assert orjson.loads(encode_predict(1, "m", a))["inputs"] == [[0.0, 0.25], [0.5, 0.75], [1.0, 1.25]]
    strided = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]  # not C-contiguous
    assert orjson.loads(encode_predict(1, "m", strided))["inputs"] == [[0, 2], [4, 6], [8, 10]]


def test_encode_generate_and_cancel() -> None:
    frame = orjson.loads(
        encode_generate(3, "charlm", "The ", max_tokens=5, temperature=0.7, top_k=4, top_p=0.9, min_p=0.1, presence_penalty=0.5,
                        frequency_penalty=-1, repetition_penalty=1.2, logit_bias={3: 100, 7: -1.5}, seed=9, stop="\n")
    )
    assert frame == {
        "type": "generate", "id": 3, "model": "charlm", "prompt": "The ", "max_tokens": 5,
        "temperature": 0.7, "top_k": 4, "top_p": 0.9, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": -1,
        "repetition_penalty": 1.2, "logit_bias": {"3": 100, "7": -1.5}, "seed": 9,
        "stop": ["\n"],
    }
    frame = orjson.loads(encode_generate(5, "charlm", "a", stop_token_ids=(0, 7), min_tokens=3,
                                         include_stop_str_in_output=False))
    assert (frame["stop_token_ids"], frame["min_tokens"], frame["include_stop_str_in_output"]) == ([0, 7], 3, False)
    assert orjson.loads(encode_generate(6, "charlm", "a", guided_choice=("yes", "no")))["guided_choice"] == ["yes", "no"]
    with pytest.raises(TypeError, match="guided_choice"):  # not split into characters
        encode_generate(6, "charlm", "a", guided_choice="yes")
    assert orjson.loads(encode_generate(4, "charlm", "")) == {
        "type": "generate", "id": 4, "model": "charlm", "prompt": "",
    }
    assert encode_cancel(7) == b'{"type":"cancel","id":7}'


def test_encode_generate_repetition_penalty() -> None:
    """``repetition_penalty`` is sent as given (1, off, too: it is not dropped as a default) and
    left out when ``None``; the range (0, 2] is the server's to check, as for the other penalties."""
    assert orjson.loads(encode_generate(1, "charlm", "a", repetition_penalty=1.5)) == {
        "type": "generate", "id": 1, "model": "charlm", "prompt": "a", "repetition_penalty": 1.5,
    }
    assert orjson.loads(encode_generate(1, "charlm", "a", repetition_penalty=1))["repetition_penalty"] == 1
    assert orjson.loads(encode_generate(1, "charlm", "a", repetition_penalty=3))["repetition_penalty"] == 3
    assert "repetition_penalty" not in orjson.loads(encode_generate(1, "charlm", "a", repetition_penalty=None))


def test_encode_generate_logprobs() -> None:
    assert orjson.loads(encode_generate(1, "charlm", "a", logprobs=3)) == {
        "type": "generate", "id": 1, "model": "charlm", "prompt": "a", "logprobs": 3,
    }
    assert orjson.loads(encode_generate(1, "charlm", "a", logprobs=0))["logprobs"] == 0  # 0 is sent: chosen token only
    assert "logprobs" not in orjson.loads(encode_generate(1, "charlm", "a", logprobs=None))
    assert orjson.loads(encode_generate(1, "charlm", "a", logprobs=20))["logprobs"] == 20


@pytest.mark.parametrize("bad, exc", [(True, TypeError), (False, TypeError), (1.0, TypeError), ("2", TypeError),
                                      ([1], TypeError), (-1, ValueError)])
def test_a_bad_logprobs_is_refused_before_sending(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="logprobs must be"):
        check_logprobs(bad)  # type: ignore[arg-type]
    with pytest.raises(exc, match="logprobs must be"):
        encode_generate(1, "charlm", "a", logprobs=bad)  # type: ignore[arg-type]
    client = wsserve_client.Client("ws://127.0.0.1:9")  # never connects: the call raises first
    with pytest.raises(exc, match="logprobs must be"):
        client.generate("charlm", "a", logprobs=bad)  # type: ignore[arg-type]


#: A token frame of a generate with ``"logprobs": 2``, as the protocol spells it.
LOGPROB_TOKEN = {"type": "token", "id": 5, "seq": 0, "text": "q", "logprob": -0.12,
                 "top_logprobs": [{"id": 17, "text": "q", "logprob": -0.12}, {"id": 3, "text": "x", "logprob": -2.3}]}


def test_parse_token_logprobs() -> None:
    record = parse_token_logprobs(LOGPROB_TOKEN, parse_token(LOGPROB_TOKEN, 0))
    assert record == wsserve_client.TokenLogprob(
        "q", -0.12, (wsserve_client.TopLogprob(17, "q", -0.12), wsserve_client.TopLogprob(3, "x", -2.3)))
    # k = 0: no alternatives; a model whose logits were not finite: null; an integral number: a float
    k0 = {**LOGPROB_TOKEN, "logprob": None, "top_logprobs": []}
    assert parse_token_logprobs(k0, "q") == wsserve_client.TokenLogprob("q", None, ())
    whole = parse_token_logprobs({**LOGPROB_TOKEN, "logprob": 0,
                                  "top_logprobs": [{"id": 1, "text": "", "logprob": None, "new": 1}]}, "q")
    assert whole.logprob == 0.0 and type(whole.logprob) is float and whole.top == (wsserve_client.TopLogprob(1, "", None),)
    with pytest.raises(AttributeError):  # a frozen value
        record.logprob = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("change, names", [
    ({"logprob": "-1"}, "'logprob'"),
    ({"logprob": True}, "'logprob'"),
    ({"top_logprobs": None}, "'top_logprobs'"),
    ({"top_logprobs": {"id": 1}}, "'top_logprobs'"),
    ({"top_logprobs": ["q"]}, "'top_logprobs'[0]"),
    ({"top_logprobs": [{"text": "q", "logprob": -1.0}]}, "'top_logprobs'[0].id"),
    ({"top_logprobs": [{"id": 1.0, "text": "q", "logprob": -1.0}]}, "'top_logprobs'[0].id"),
    ({"top_logprobs": [{"id": 1, "text": 2, "logprob": -1.0}]}, "'top_logprobs'[0].text"),
    ({"top_logprobs": [{"id": 1, "text": "q", "logprob": -1.0}, {"id": 2, "text": "r"}]}, "'top_logprobs'[1].logprob"),
    ({"top_logprobs": [{"id": 1, "text": "q", "logprob": "low"}]}, "'top_logprobs'[0].logprob"),
])
def test_a_malformed_logprob_token_is_a_protocol_error(change: dict[str, object], names: str) -> None:
    with pytest.raises(errors.ProtocolError, match=r"'token' frame has .*") as ei:
        parse_token_logprobs({**LOGPROB_TOKEN, **change}, "q")
    assert names in ei.value.message and ei.value.request_id == 5


@pytest.mark.parametrize("missing", ["logprob", "top_logprobs"])
def test_a_token_without_logprobs_when_asked_is_a_protocol_error(missing: str) -> None:
    frame = {k: v for k, v in LOGPROB_TOKEN.items() if k != missing}
    with pytest.raises(errors.ProtocolError, match="asked for logprobs"):
        parse_token_logprobs(frame, "q")


def test_generation_done_carries_the_logprobs_when_asked() -> None:
    done = {"type": "done", "id": 1, "reason": "length", "tokens": 1, "timing": {}}
    record = parse_token_logprobs(LOGPROB_TOKEN, "q")
    assert parse_generation_done(done, "q", [record]).logprobs == (record,)
    assert parse_generation_done(done, "", []).logprobs == ()
    assert parse_generation_done(done, "q").logprobs is None


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "1"])
def test_timeout_must_be_positive(bad: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        timeout_to_ms(bad)  # type: ignore[arg-type]


def test_timeout_rounds_up_to_whole_ms() -> None:
    assert timeout_to_ms(None) is None
    assert timeout_to_ms(0.0001) == 1
    assert timeout_to_ms(2) == 2000


def test_parse_hello_and_defaults() -> None:
    hello = parse_hello({
        "type": "hello", "server": "wsserve", "version": "0.1.0", "protocol": 1, "extra": 1,
        "limits": {"max_message_bytes": 100, "max_inflight": 3, "max_rows": 5, "max_tokens": 7},
        "models": ["linear"],
    })
    assert hello.limits == wsserve_client.Limits(100, 3, 5, 7)
    assert hello.limits.max_logprobs is None  # a server without logprobs
    for value, kept in ((20, 20), (0, 0), (-1, None), ("20", None), (2.5, None)):
        limits = parse_hello({"type": "hello", "limits": {"max_logprobs": value}}).limits
        assert limits.max_logprobs == kept, value
    assert hello.limits.max_stop_token_ids is None  # a server without vLLM's stop controls
    assert parse_hello({"type": "hello", "limits": {"max_stop_token_ids": 64}}).limits.max_stop_token_ids == 64
    limits = parse_hello({"type": "hello", "limits": {"max_guided_choices": 64, "max_guided_choice_chars": 256}}).limits
    assert (limits.max_guided_choices, limits.max_guided_choice_chars) == (64, 256)
    frame = orjson.loads(encode_generate(7, "charlm", "a", guided_regex="[0-9]+", guided_json={"type": "object"}))
    assert (frame["guided_regex"], frame["guided_json"]) == ("[0-9]+", '{"type":"object"}')  # the schema as JSON text
    assert "guided_regex" not in orjson.loads(encode_generate(8, "charlm", "a"))
    with pytest.raises(TypeError, match="guided_regex"):
        encode_generate(9, "charlm", "a", guided_regex=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="guided_json"):
        encode_generate(9, "charlm", "a", guided_json=["not", "a", "schema"])  # type: ignore[arg-type]
    assert parse_hello({"type": "hello", "limits": {"max_guided_pattern_chars": 16384}}).limits.max_guided_pattern_chars \
        == 16384
    assert hello.models == ("linear",)
    assert parse_hello({"type": "hello"}).limits == wsserve_client.Limits()
    with pytest.raises(ValueError):
        parse_hello({"type": "pong"})


def test_parse_result_as_numpy() -> None:
    frame = {"type": "result", "id": 1, "model": "linear", "version": "1",
             "outputs": [[1.5], [2.5]], "timing": {"queue_ms": 0.1}}
    r = parse_result(frame, as_numpy=True)
    assert isinstance(r.outputs, np.ndarray) and r.outputs.shape == (2, 1)
    assert r.timing["queue_ms"] == 0.1 and r.request_id == 1
    assert parse_result(frame).outputs == [[1.5], [2.5]]


def test_parse_models_keeps_raw() -> None:
    (m,) = parse_models({"type": "models", "models": [
        {"name": "mlp", "version": "1", "task": "classification", "input_shape": [32],
         "output_shape": [10], "parameters": 9, "metrics": {"acc": 0.9}, "new": True}, "junk"]})
    assert (m.name, m.input_shape, m.output_shape, m.parameters) == ("mlp", (32,), (10,), 9)
    assert m.raw["new"] is True and m.metrics == {"acc": 0.9}


def test_parse_models_versions_and_a_model_without_a_ready_version() -> None:
    models = parse_models({"type": "models", "models": [
        {"name": "m", "version": "10", "versions": [
            {"version": "2", "state": "ready"}, {"version": "3", "state": "failed", "reason": "bad file"},
            {"version": "10", "state": "ready"}, "junk", {"state": "ready"}]},
        {"name": "down", "version": None, "versions": [{"version": "1", "state": "loading"}]},
        {"name": "old"}]})
    m, down, old = models
    assert m.version == "10" and m.versions == (
        wsserve_client.VersionStatus("2", "ready"), wsserve_client.VersionStatus("3", "failed", "bad file"),
        wsserve_client.VersionStatus("10", "ready"))
    assert down.version is None and down.versions == (wsserve_client.VersionStatus("1", "loading", None),)
    assert old.version is None and old.versions == ()  # a server that does not say


def test_generation_done_carries_the_prompt_tokens_when_the_server_says() -> None:
    done = {"type": "done", "id": 1, "reason": "length", "tokens": 2, "timing": {}, "prompt_tokens": 9}
    assert parse_generation_done(done, "ab").prompt_tokens == 9
    for odd in (None, -1, "9", 9.0, True):
        assert parse_generation_done({**done, "prompt_tokens": odd}, "ab").prompt_tokens is None, odd
    del done["prompt_tokens"]
    assert parse_generation_done(done, "ab").prompt_tokens is None


def test_done_frames_carry_the_version() -> None:
    done = {"type": "done", "id": 1, "reason": "length", "tokens": 2, "rows": 3, "timing": {}, "version": "7"}
    assert parse_stream_done(done).version == "7" and parse_generation_done(done, "ab").version == "7"
    del done["version"]
    assert parse_stream_done(done).version is None and parse_generation_done(done, "ab").version is None


@pytest.mark.parametrize("version, sent", [("2", "2"), (2, 2), ("v1", "v1")])
def test_version_is_sent_as_given(version: object, sent: object) -> None:
    assert orjson.loads(encode_predict(1, "m", [[1]], version=version))["version"] == sent  # type: ignore[arg-type]
    assert orjson.loads(encode_generate(1, "m", "", version=version))["version"] == sent  # type: ignore[arg-type]
    assert orjson.loads(encode_admin("load", 1, "m", version))["version"] == sent  # type: ignore[arg-type]


@pytest.mark.parametrize("bad, exc", [(True, TypeError), (1.0, TypeError), ([1], TypeError), (0, ValueError),
                                      (-2, ValueError)])
def test_a_bad_version_is_refused_before_sending(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="version"):
        check_version(bad)  # type: ignore[arg-type]
    with pytest.raises(exc, match="version"):
        encode_predict(1, "m", [[1]], version=bad)  # type: ignore[arg-type]


def test_encode_admin_and_parse_its_reply() -> None:
    assert orjson.loads(encode_admin("unload", 5, "m")) == {"type": "unload", "id": 5, "model": "m"}
    assert orjson.loads(encode_admin("reload", "r", "m", 3)) == {"type": "reload", "id": "r", "model": "m", "version": 3}
    with pytest.raises(ValueError, match="not an admin operation"):
        encode_admin("predict", 1, "m")
    status = parse_model_status({"type": "load", "id": 1, "ok": True, "model": "m", "versions": [
        {"version": "1", "state": "ready"}, {"version": "2", "state": "failed", "reason": "no file"}]})
    assert status.model == "m" and status.states() == {"1": "ready", "2": "failed"}
    assert status.versions[1].reason == "no file"


# -- backoff ----------------------------------------------------------------------------

def test_backoff_grows_caps_and_jitters_down() -> None:
    b = Backoff(max_attempts=5, base_delay=0.1, max_delay=1.0, jitter=0.5)
    assert [b.delay(i, 0.0) for i in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert b.delay(2, 0.999999) == pytest.approx(0.2, rel=1e-4)


def test_retry_policy_honours_retry_after_and_bounds_attempts() -> None:
    p = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.1, jitter=0.5)
    assert p.delay(0, None, 0.0) == pytest.approx(0.01)
    assert p.delay(0, 0.25, 0.0) == pytest.approx(0.25)  # never shorter than retry_after
    assert p.delay(0, 5.0, 0.0) == pytest.approx(5.0)  # even above max_delay
    assert p.delay(0, 0.25, 0.999999) == pytest.approx(0.375, rel=1e-4)  # jitter stretches
    assert p.should_retry("overloaded", 0) and p.should_retry("rate_limited", 1)
    assert not p.should_retry("overloaded", 2)  # third try was the last
    assert not p.should_retry("invalid_input", 0) and not p.should_retry(None, 0)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"base_delay": 3.0, "max_delay": 1.0}, {"jitter": 2.0}])
def test_policies_reject_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


# -- limiter ----------------------------------------------------------------------------

async def test_limiter_fifo_capacity_and_cancellation() -> None:
    lim = Limiter(2)
    await lim.acquire()
    await lim.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await lim.acquire()
        order.append(i)

    tasks = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert lim.waiting == 3 and lim.used == 2
    tasks[1].cancel()
    await asyncio.sleep(0)
    lim.release()
    await asyncio.sleep(0)
    assert order == [0]
    lim.release()
    await asyncio.sleep(0)
    assert order == [0, 2] and lim.used == 2 and lim.waiting == 0
    lim.set_capacity(None)
    lim.release()
    lim.release()
    assert lim.used == 0
    with pytest.raises(RuntimeError):
        lim.release()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_limiter_capacity_growth_wakes_waiters() -> None:
    lim = Limiter(1)
    await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    lim.set_capacity(2)
    await asyncio.sleep(0)
    assert waiter.done() and lim.used == 2


def test_retry_policy_caps_the_servers_retry_after() -> None:
    """A server's retry_after_ms is honoured only up to max_retry_after (default 60 s), jitter
    included: a hostile server asking for an hour cannot park the client for an hour."""
    p = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.1, jitter=0.5)
    assert p.max_retry_after == 60.0
    assert p.delay(0, 3600.0, 0.0) == pytest.approx(60.0)
    assert p.delay(0, 3600.0, 0.999999) == pytest.approx(60.0)  # the jitter does not stretch it past
    assert p.delay(0, 59.0, 0.0) == pytest.approx(59.0)  # below the cap: honoured as before
    short = RetryPolicy(max_retry_after=1.0, jitter=0.0)
    assert short.delay(0, 1e9, 0.0) == pytest.approx(1.0)
    assert short.delay(0, float("nan"), 0.0) == pytest.approx(short.base_delay)  # not a number: ignored
    assert RetryPolicy(max_retry_after=0.0, jitter=0.0).delay(0, 30.0, 0.0) == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), "60"])
def test_retry_policy_rejects_a_bad_max_retry_after(bad: object) -> None:
    with pytest.raises(ValueError, match="max_retry_after"):
        RetryPolicy(max_retry_after=bad)  # type: ignore[arg-type]


def test_trace_context_is_checked_and_sent_only_with_a_traceparent() -> None:
    import orjson
    from wsserve_client.codec import (
        check_trace_context,
        encode_generate,
        encode_predict,
    )

    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    frame = orjson.loads(encode_predict(1, "m", [[1.0]], traceparent=tp, tracestate="k=v"))
    assert (frame["traceparent"], frame["tracestate"]) == (tp, "k=v")
    frame = orjson.loads(encode_generate(2, "m", "hi", traceparent=tp))
    assert frame["traceparent"] == tp and "tracestate" not in frame
    assert "traceparent" not in orjson.loads(encode_predict(3, "m", [[1.0]]))
    with pytest.raises(TypeError, match="traceparent must be a string"):
        check_trace_context(b"00-...", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tracestate has 513 characters; the server takes at most 512"):
        check_trace_context(tp, "k=" + "v" * 511)
    with pytest.raises(ValueError, match="tracestate needs a traceparent"):
        encode_predict(4, "m", [[1.0]], tracestate="k=v")


def test_as_numpy_keeps_string_outputs_strings() -> None:
    """A string output (a model's BYTES tensor, answered as JSON strings) becomes an object array of
    ``str``: it raised numpy's bare ValueError, and numeric-looking strings must not turn into numbers."""
    from wsserve_client.codec import to_numpy

    labels = to_numpy([["cat"], ["12"]])
    assert labels.dtype == object and labels.tolist() == [["cat"], ["12"]]
    named = to_numpy({"label": [["dog"]], "score": [[0.5]]})
    assert named["label"].dtype == object and named["score"].dtype == np.float64
