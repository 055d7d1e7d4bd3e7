"""vLLM's stop controls (``stop_token_ids``, ``min_tokens``, ``include_stop_str_in_output``) on a
real loopback server: the WebSocket ``generate``, OpenAI's ``/v1/completions`` and
``/v1/chat/completions`` through the ``openai`` SDK (the fields in ``extra_body``, as vLLM's users
send them) and Triton's generate.  Each expected text is the one without the fields, cut where
the stop token or string is (or kept through it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import Conn
from tests.test_gen_wire import GEN, generate
from tests.test_http_triton_generate import events, post
from wsserve.models.charlm import VOCAB

openai = pytest.importorskip("openai")  # the test extra installs it


def tid(ch: str) -> int:
    """charlm's token id of the character ``ch``."""
    return VOCAB.index(ch)


def first_of(text: str, chars: str, start: int = 0) -> int:
    return min(i for i in (text.find(c, start) for c in chars) if i >= 0)


async def test_websocket_stop_token_ids_and_include_stop_str_in_output(server_url: str) -> None:
    conn = await Conn.open(server_url)
    assert conn.hello["limits"]["max_stop_token_ids"] == 64
    plain, _ = await generate(conn, "p", prompt="The ", max_tokens=80)
    at = first_of(plain, "st")
    ids = [tid("s"), tid("t")]
    text, done = await generate(conn, "s", prompt="The ", max_tokens=80, stop_token_ids=ids)
    assert (text, done["reason"], done["tokens"]) == (plain[:at], "stop", at)
    text, done = await generate(conn, "i", prompt="The ", max_tokens=80, stop_token_ids=ids,
                                include_stop_str_in_output=True)
    assert (text, done["reason"], done["tokens"]) == (plain[:at + 1], "stop", at + 1)
    # a stop string with include_stop_str_in_output: through its end, nothing after it
    stop = plain[30:33]
    cut = plain.find(stop) + 3
    text, done = await generate(conn, "x", prompt="The ", max_tokens=80, stop=stop, include_stop_str_in_output=True)
    assert (text, done["reason"], done["tokens"]) == (plain[:cut], "stop", cut)
    await conn.close()


async def test_websocket_min_tokens_defers_the_stop(server_url: str) -> None:
    """A stop string ending within the first ``min_tokens`` tokens is text; the next one ends it.
    (Greedy text does not change: stop strings only cut it.)"""
    conn = await Conn.open(server_url)
    plain, _ = await generate(conn, "p", prompt="The ", max_tokens=200)
    stop = " t"
    first = plain.index(stop)
    second = plain.index(stop, first + 1)
    text, done = await generate(conn, "m", prompt="The ", max_tokens=200, stop=[stop], min_tokens=first + 2)
    assert (text, done["reason"], done["tokens"]) == (plain[:second], "stop", second)
    text, done = await generate(conn, "m1", prompt="The ", max_tokens=200, stop=[stop], min_tokens=first + 1)
    assert (text, done["reason"]) == (plain[:first], "stop")
    await conn.close()


@pytest.mark.parametrize(("fields", "says"), [
    ({"stop_token_ids": 3}, "field 'stop_token_ids' must be a list of token ids, got number"),
    ({"stop_token_ids": [1, -1]}, "field 'stop_token_ids' must hold token ids (non-negative integers), got -1"),
    ({"stop_token_ids": [1, True]}, "field 'stop_token_ids' must hold token ids"),
    ({"stop_token_ids": list(range(65))}, "field 'stop_token_ids' must be a list of at most 64 token ids"),
    ({"stop_token_ids": [96]}, "field 'stop_token_ids' names token 96; the model's vocabulary has 96 tokens"),
    ({"min_tokens": 11}, "field 'min_tokens' must be an integer in [0, max_tokens] ([0, 10] here), got 11"),
    ({"min_tokens": -1}, "field 'min_tokens' must be an integer in [0, max_tokens]"),
    ({"min_tokens": 1.5}, "field 'min_tokens' must be an integer"),
    ({"include_stop_str_in_output": "yes"}, "field 'include_stop_str_in_output' must be a boolean, got string"),
])
async def test_websocket_bad_stop_controls_are_refused_by_name(server_url: str, fields: dict, says: str) -> None:
    conn = await Conn.open(server_url)
    reply = await conn.request({**GEN, "id": "bad", "prompt": "a", "max_tokens": 10, **fields})
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] == "bad", reply
    assert says in reply["message"], reply["message"]
    await conn.close()


async def test_openai_completions_take_vllms_stop_controls(server, openai_client) -> None:
    base = {"model": "charlm", "prompt": "The ", "max_tokens": 80, "temperature": 0}
    plain = openai_client.completions.create(**base).choices[0].text
    at = first_of(plain, "st")
    ids = [tid("s"), tid("t")]
    r = openai_client.completions.create(**base, extra_body={"stop_token_ids": ids})
    # the stop token is not sent but counted, as vLLM counts its output token ids
    assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == (plain[:at], "stop", at + 1)
    r = openai_client.completions.create(**base, extra_body={"stop_token_ids": ids, "include_stop_str_in_output": True})
    assert (r.choices[0].text, r.choices[0].finish_reason) == (plain[:at + 1], "stop")
    # min_tokens keeps "s" and "t" from being generated at first: a text of its own, the WebSocket's
    body = {"stop_token_ids": ids, "min_tokens": at + 5}
    r = openai_client.completions.create(**base, extra_body=body)
    ws, reason = await _ws(server, prompt="The ", max_tokens=80, **body)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (ws, reason)
    assert len(ws) >= at + 5 and not set(ws[:at + 5]) & {"s", "t"} and ws != plain[:len(ws)]
    # streamed: one chunk per token sent, the same text
    chunks = [c.choices[0] for c in openai_client.completions.create(**base, stream=True, extra_body=body)]
    assert "".join(c.text for c in chunks) == ws and chunks[-1].finish_reason == "stop"


async def _ws(server, **fields: Any) -> tuple[str, str]:
    conn = await Conn.open(server.url)
    text, done = await generate(conn, "g", **fields)
    await conn.close()
    return text, done["reason"]


def test_openai_chat_takes_vllms_stop_controls(openai_client) -> None:
    args = {"model": "charlm", "messages": [{"role": "user", "content": "The "}], "max_tokens": 60, "temperature": 0}
    plain = openai_client.chat.completions.create(**args).choices[0].message.content
    at = plain.index(" ")
    r = openai_client.chat.completions.create(**args, extra_body={"stop_token_ids": [tid(" ")],
                                                                 "include_stop_str_in_output": True})
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (plain[:at + 1], "stop")
    second = plain.find(" ", at + 1)
    assert second > 0
    r = openai_client.chat.completions.create(**args, stop=[" "], extra_body={"min_tokens": at + 1})
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (plain[:second], "stop")


@pytest.mark.parametrize(("extra", "param"), [
    ({"min_tokens": 6}, "min_tokens"),  # above max_tokens (5), as vLLM refuses it
    ({"min_tokens": -1}, "min_tokens"),
    ({"stop_token_ids": "1"}, "stop_token_ids"),
    ({"stop_token_ids": [-2]}, "stop_token_ids"),
    ({"stop_token_ids": [96]}, "stop_token_ids"),  # charlm has 96 tokens: checked when queued
    ({"include_stop_str_in_output": 1}, "include_stop_str_in_output"),
])
def test_openai_bad_stop_controls_are_refused_by_name(openai_client, extra: dict, param: str) -> None:
    for create, args in [(openai_client.completions.create, {"prompt": "a"}),
                         (openai_client.chat.completions.create, {"messages": [{"role": "user", "content": "a"}]})]:
        with pytest.raises(openai.BadRequestError) as info:
            create(model="charlm", max_tokens=5, extra_body=extra, **args)
        assert info.value.status_code == 400
        assert info.value.body["param"] == param and info.value.body["code"] == "bad_request", info.value.body


async def test_triton_generate_takes_vllms_stop_controls(server) -> None:
    plain, _ = await _ws(server, prompt="The ", max_tokens=60)
    at = first_of(plain, "st")
    ids = [tid("s"), tid("t")]
    status, raw = post(server, "/v2/models/charlm/generate",
                       {"text_input": "The ", "parameters": {"max_tokens": 60, "stop_token_ids": ids}})
    assert status == 200 and json.loads(raw)["text_output"] == "The " + plain[:at]  # the prompt prepended
    status, raw = post(server, "/v2/models/charlm/generate_stream",
                       {"text_input": "The ", "max_tokens": 60, "stop_token_ids": ids,
                        "parameters": {"include_stop_str_in_output": True, "min_tokens": 0}})
    got = events(raw)
    assert status == 200 and "".join(e["text_output"] for e in got) == plain[:at + 1]
    assert got[-1]["finish_reason"] == "stop" and len(got) == at + 2  # a token per event, then the end
    status, raw = post(server, "/v2/models/charlm/generate",
                       {"text_input": "The ", "parameters": {"max_tokens": 5, "min_tokens": 9}})
    assert status == 400 and "'min_tokens'" in json.loads(raw)["error"]


def test_openai_scoring_form_refuses_min_tokens(openai_client) -> None:
    """``max_tokens: 0`` with ``echo`` generates nothing: a ``min_tokens`` is refused by name."""
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model="charlm", prompt="ab", max_tokens=0, echo=True, extra_body={"min_tokens": 1})
    assert info.value.body["param"] == "min_tokens" and "with 'max_tokens': 0" in info.value.body["message"]
    r = openai_client.completions.create(model="charlm", prompt="ab", max_tokens=0, echo=True, extra_body={"min_tokens": 0})
    assert r.choices[0].text == "ab"


def test_openai_scoring_form_checks_stop_token_ids_as_a_generation_does(openai_client) -> None:
    """``max_tokens: 0`` with ``echo`` queues no generation: its ``stop_token_ids`` are checked
    against the vocabulary all the same."""
    for extra in ({}, {"logprobs": 1}):
        with pytest.raises(openai.BadRequestError) as info:
            openai_client.completions.create(model="charlm", prompt="ab", max_tokens=0, echo=True,
                                             extra_body={"stop_token_ids": [len(VOCAB)]}, **extra)
        assert info.value.body["param"] == "stop_token_ids" and f"names token {len(VOCAB)}" in info.value.body["message"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("extra", "param"), [({"stop_token_ids": [len(VOCAB)]}, "stop_token_ids"),
                                              ({"logit_bias": {str(len(VOCAB)): 1}}, "logit_bias")])
def test_openai_echo_with_logprobs_names_a_token_outside_the_vocabulary(openai_client, stream: bool, extra: dict,
                                                                        param: str) -> None:
    """``echo`` with ``logprobs`` scores the prompt before it queues the generation, whose ids are
    checked then: the answer still names the field (``param``), as without ``echo``."""
    with pytest.raises(openai.BadRequestError) as info:
        r = openai_client.completions.create(model="charlm", prompt="ab", max_tokens=3, echo=True, logprobs=1,
                                             stream=stream, extra_body=extra)
        if stream:
            list(r)
    body = info.value.body
    assert body["param"] == param and f"names token {len(VOCAB)};" in body["message"], body
