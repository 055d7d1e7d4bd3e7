"""``logprobs`` on the OpenAI routes, read with the ``openai`` SDK: the legacy completions shape
(``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``) and the chat shape
(``content[].token/logprob/bytes/top_logprobs``), streamed and not, with the same values as the
WebSocket ``generate``'s token frames for the same request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import Conn, RawHttp, request_bytes

openai = pytest.importorskip("openai")  # the test extra installs it



async def _ws_frames(server, **params: Any) -> list[dict[str, Any]]:
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "g", "model": "charlm", **params})
    frames, done = await conn.until_terminal("g")
    await conn.close()
    assert done["type"] == "done"
    return frames


async def test_completion_logprobs_are_the_websockets(server, openai_client) -> None:
    args = {"prompt": "It was ", "max_tokens": 20, "temperature": 0.9, "seed": 5}
    r = openai_client.completions.create(model="charlm", logprobs=3, **args)
    frames = await _ws_frames(server, **args, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text == "".join(f["text"] for f in frames)
    assert lp.tokens == [f["text"] for f in frames]
    assert lp.token_logprobs == [f["logprob"] for f in frames]
    assert lp.text_offset == list(range(20))  # one character per charlm token, from 0 without echo
    for top, f in zip(lp.top_logprobs, frames, strict=True):
        want = {t["text"]: t["logprob"] for t in f["top_logprobs"]}
        want.setdefault(f["text"], f["logprob"])  # the chosen token is always listed
        assert top == want and 3 <= len(top) <= 4
    plain = openai_client.completions.create(model="charlm", **args)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == r.choices[0].text


async def test_streamed_completion_logprobs_add_up_to_the_response(server, openai_client) -> None:
    args = {"model": "charlm", "prompt": "The ", "max_tokens": 15, "temperature": 0, "logprobs": 0, "stop": ["e "]}
    whole = openai_client.completions.create(**args).choices[0]
    chunks = [c.choices[0] for c in openai_client.completions.create(**args, stream=True) if c.choices]
    tokens = [c for c in chunks if c.finish_reason is None]
    assert [c.text for c in tokens] == whole.logprobs.tokens
    assert [c.logprobs.token_logprobs[0] for c in tokens] == whole.logprobs.token_logprobs
    assert [c.logprobs.text_offset[0] for c in tokens] == whole.logprobs.text_offset
    assert [c.logprobs.top_logprobs[0] for c in tokens] == whole.logprobs.top_logprobs
    assert all(len(t) == 1 for t in whole.logprobs.top_logprobs)  # logprobs 0: the chosen token only
    assert chunks[-1].finish_reason == whole.finish_reason and chunks[-1].logprobs is None


async def test_chat_logprobs_are_the_websockets(server, openai_client) -> None:
    messages = [{"role": "user", "content": "The "}]
    r = openai_client.chat.completions.create(model="charlm", messages=messages, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=2)
    frames = await _ws_frames(server, messages=messages, max_tokens=12, logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(c.token for c in content) == r.choices[0].message.content
    assert [(c.token, c.logprob, c.bytes) for c in content] == \
        [(f["text"], f["logprob"], list(f["text"].encode())) for f in frames]
    assert [[(t.token, t.logprob, t.bytes) for t in c.top_logprobs] for c in content] == \
        [[(t["text"], t["logprob"], list(t["text"].encode())) for t in f["top_logprobs"]] for f in frames]
    stream = openai_client.chat.completions.create(model="charlm", messages=messages, max_tokens=12, temperature=0,
                                            logprobs=True, stream=True)
    streamed = [c.choices[0].logprobs for c in stream if c.choices and c.choices[0].delta.content]
    assert [(s.content[0].token, s.content[0].logprob, s.content[0].top_logprobs) for s in streamed] == \
        [(c.token, c.logprob, []) for c in content]
    plain = openai_client.chat.completions.create(model="charlm", messages=messages, max_tokens=12, temperature=0)
    assert plain.choices[0].logprobs is None


async def test_echo_scores_the_prompt_with_the_generations_values(server, openai_client) -> None:
    """``echo`` with ``logprobs`` (what lm-evaluation-harness sends for loglikelihood): the text is
    prompt + completion, the prompt's tokens come first (the first with null values), and scoring
    a greedy completion as a prompt gives its tokens the values their generation gave them."""
    gen = openai_client.completions.create(model="charlm", prompt="Th", max_tokens=14, temperature=0, logprobs=2)
    text = "Th" + gen.choices[0].text  # 16 characters: all of it is read
    r = openai_client.completions.create(model="charlm", prompt=text, max_tokens=1, temperature=0, logprobs=2, echo=True)
    choice, lp = r.choices[0], r.choices[0].logprobs
    assert choice.text.startswith(text) and len(choice.text) == 17
    assert lp.tokens == list(choice.text) and lp.text_offset == list(range(17))
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[2:16] == gen.choices[0].logprobs.token_logprobs
    assert lp.top_logprobs[2:16] == gen.choices[0].logprobs.top_logprobs
    assert r.usage.prompt_tokens == 16 and r.usage.completion_tokens == 1
    streamed = [c.choices[0] for c in openai_client.completions.create(model="charlm", prompt=text, max_tokens=1,
                                                                temperature=0, logprobs=2, echo=True, stream=True)
                if c.choices]
    assert streamed[0].text == text and streamed[0].logprobs.tokens == list(text)
    assert streamed[0].logprobs.token_logprobs == lp.token_logprobs[:16]
    assert streamed[1].text == choice.text[16] and streamed[1].logprobs.text_offset == [16]


def test_echo_without_logprobs_and_its_bounds(server, openai_client) -> None:
    long = "It was the best of times, it was"
    r = openai_client.completions.create(model="charlm", prompt=long, max_tokens=5, temperature=0, echo=True)
    plain = openai_client.completions.create(model="charlm", prompt=long, max_tokens=5, temperature=0)
    assert r.choices[0].text == long + plain.choices[0].text and r.choices[0].logprobs is None
    for kwargs, param, says in [({"echo": True, "logprobs": 1}, "echo", "reads at most the last 16 characters"),
                                ({"extra_body": {"echo": "yes"}}, "echo", "'echo' must be a boolean")]:
        with pytest.raises(openai.BadRequestError) as info:
            openai_client.completions.create(model="charlm", prompt=long, max_tokens=5, **kwargs)
        assert info.value.body["param"] == param and says in info.value.body["message"]


def test_a_non_streamed_answer_with_logprobs_is_bounded_before_anything_is_generated(server, openai_client) -> None:
    """A non-streamed answer keeps every token's record (~3.7 KB with 20 alternatives) until the last
    choice ends: ``n`` 16 x ``max_tokens`` 100000 x ``logprobs`` 20 was taken (~6 GB held for one
    request; 16 prompts of it ~96 GB).  It holds at most 1,048,576 values (choices x max_tokens x
    (logprobs + 1)), as scoring a prompt does; past that it is refused naming ``logprobs`` before
    anything is queued.  Streamed, nothing is kept: taken."""
    for create, body in [(openai_client.completions.create, {"prompt": "a", "max_tokens": 100_000, "logprobs": 20,
                                                             "n": 16}),
                         (openai_client.chat.completions.create, {"messages": [{"role": "user", "content": "a"}],
                                                                  "max_tokens": 100_000, "logprobs": True,
                                                                  "top_logprobs": 20})]:
        with pytest.raises(openai.BadRequestError) as info:
            create(model="charlm", **body)
        assert info.value.body["param"] == "logprobs", info.value.body
        assert "at most 1048576" in info.value.body["message"] and "stream" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:  # the Responses API's logprobs
        openai_client.responses.create(model="charlm", input="a", max_output_tokens=100_000, top_logprobs=20,
                                       include=["message.output_text.logprobs"])
    assert info.value.body["param"] == "top_logprobs", info.value.body
    # under the bound: taken; streamed (nothing kept): taken past it (16 x 3200 x 21 = 1,075,200 values)
    r = openai_client.completions.create(model="charlm", prompt="a", max_tokens=5, logprobs=20, n=16)
    assert len(r.choices) == 16 and all(len(c.logprobs.tokens) == 5 for c in r.choices)
    stream = openai_client.completions.create(model="charlm", prompt="a", max_tokens=3200, logprobs=20, n=16,
                                              stream=True)
    first = next(iter(stream))
    assert first.choices[0].logprobs is not None
    stream.close()


def test_the_logprobs_a_connections_non_streamed_answers_keep_count_against_max_inflight_bytes(server) -> None:
    """Under the per-request bound, 256 such requests pipelined on one connection would still keep
    ~176 bytes a value each until answered (~45 GB): what they keep counts against the connection's
    ``max_inflight_bytes`` (32 MiB), as input bytes do; past it, ``overloaded`` (a single request
    alone is always taken).  A streamed one keeps nothing: it adds nothing."""
    def completion(max_tokens: int, logprobs: int, **more: object) -> bytes:
        return request_bytes("POST", "/v1/completions", json.dumps(
            {"model": "charlm", "prompt": "a", "max_tokens": max_tokens, "logprobs": logprobs, **more}).encode())

    with RawHttp(server.port) as c:  # 8000 x 21 values x 176 bytes: ~29.6 MB, then 2000 x 21 more: past 32 MiB
        c.send(completion(8000, 20) + completion(2000, 20) + completion(2000, 20, stream=True))
        first, second, third = c.answer(), c.answer(), c.answer()
        assert first.status == 200 and len(json.loads(first.body)["choices"][0]["logprobs"]["tokens"]) == 8000
        assert second.status == 503 and second.header("retry-after") is not None, second.body
        assert "max_inflight_bytes" in json.loads(second.body)["error"]["message"]
        assert third.status == 200 and third.body.endswith(b"data: [DONE]\n\n")
        a = c.request("POST", "/v1/completions", json.dumps(  # once the first is answered: taken
            {"model": "charlm", "prompt": "a", "max_tokens": 2000, "logprobs": 20}).encode())
        assert a.status == 200


def test_a_default_max_tokens_is_lowered_to_what_the_logprobs_bound_leaves(server, openai_client) -> None:
    """A chat (or a Response) that sends no ``max_tokens`` gets the server's limit, 100,000: with
    ``top_logprobs`` 20 that is past the bound above, and such a request (an SDK's usual call) was
    refused.  The default is lowered to what the bound leaves instead (1,048,576 // 21 tokens; // 42
    with ``n`` 2); a ``max_tokens`` the client sent is never changed, past the bound it is refused.  A
    streamed Response keeps its tokens' values too (for its ``.done`` events): bounded the same way."""
    from wsserve.rest.openai import parse_chat_completion
    from wsserve.rest.responses import parse_response_request

    chat = {"model": "charlm", "messages": [{"role": "user", "content": "a"}], "logprobs": True, "top_logprobs": 20}
    assert parse_chat_completion(chat, max_tokens_limit=100_000).params.max_tokens == (1 << 20) // 21
    assert parse_chat_completion({**chat, "n": 2}, max_tokens_limit=100_000).params.max_tokens == (1 << 20) // 42
    assert parse_chat_completion({**chat, "stream": True}, max_tokens_limit=100_000).params.max_tokens == 100_000
    assert parse_chat_completion({**chat, "max_tokens": 100_000}, max_tokens_limit=100_000).params.max_tokens == 100_000
    assert parse_chat_completion({**chat, "top_logprobs": 2}, max_tokens_limit=100_000).params.max_tokens == 100_000
    response = {"model": "charlm", "input": "a", "top_logprobs": 20, "include": ["message.output_text.logprobs"]}
    for stream in (False, True):
        asked = parse_response_request({**response, "stream": stream}, max_tokens_limit=100_000)
        assert asked.completion.params.max_tokens == (1 << 20) // 21 and asked.max_output_tokens is None

    r = openai_client.chat.completions.create(model="charlm", stop=["e"], **{k: v for k, v in chat.items()
                                                                            if k != "model"})
    assert r.choices[0].finish_reason == "stop" and len(r.choices[0].logprobs.content[0].top_logprobs) == 20
    with pytest.raises(openai.BadRequestError) as info:  # streamed, a Response keeps them: refused past the bound
        openai_client.responses.create(model="charlm", input="a", max_output_tokens=100_000, top_logprobs=20,
                                       include=["message.output_text.logprobs"], stream=True)
    assert info.value.body["param"] == "top_logprobs" and "stream it" not in info.value.body["message"]
    events = list(openai_client.responses.create(model="charlm", input="a", top_logprobs=20, stream=True,
                                                 include=["message.output_text.logprobs"],
                                                 extra_body={"stop": ["e"]}))  # (vLLM's field on this route)
    assert events[-1].type == "response.completed"
