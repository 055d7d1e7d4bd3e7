"""vLLM's ``guided_regex`` / ``guided_json`` and OpenAI's ``response_format`` on a real loopback
server: the WebSocket ``generate``, and ``/v1/completions``, ``/v1/chat/completions`` and
``/v1/responses`` through the ``openai`` SDK.  With charlm, greedy and sampled: a generation that
ends with ``stop`` fully matches (the JSON parses and follows its schema); one that ends by
``length`` is a prefix of a match.  Bad and oversized patterns are refused naming the field."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import Conn
from tests.test_gen_wire import GEN, generate

openai = pytest.importorskip("openai")  # the test extra installs it
pytest.importorskip("outlines_core")  # the structured extra

REGEX = r"[0-9]{3}-[a-z]+( [a-z]+)?"
#: every prefix of a match of REGEX fully matches this
PREFIX = r"[0-9]{0,3}|[0-9]{3}-[a-z]*( [a-z]*)?"
SCHEMA = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}}, "required": ["a"]}
SEEDS = range(4)


def _check(text: str, reason: str) -> None:
    if reason == "stop":
        assert re.fullmatch(REGEX, text), text
    else:
        assert reason == "length" and re.fullmatch(PREFIX, text), (text, reason)


def _follows_schema(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"a"} and value["a"] in ("x", "yy"), text


async def test_websocket_generate_matches_the_regex_and_the_schema(server_url: str) -> None:
    conn = await Conn.open(server_url)
    assert conn.hello["limits"]["max_guided_pattern_chars"] == 16384
    reasons = set()
    for seed in SEEDS:
        for temperature in (0, 1.2):
            text, done = await generate(conn, f"r{seed}-{temperature}", prompt="Call ", max_tokens=14,
                                        temperature=temperature, seed=seed, guided_regex=REGEX)
            _check(text, done["reason"])
            reasons.add(done["reason"])
            for schema in (SCHEMA, json.dumps(SCHEMA)):  # an object, or a string holding one
                text, done = await generate(conn, f"j{seed}-{temperature}", prompt="{", max_tokens=40,
                                            temperature=temperature, seed=seed, guided_json=schema)
                assert done["reason"] == "stop", text
                _follows_schema(text)
    assert "stop" in reasons
    await conn.close()


@pytest.mark.parametrize(("fields", "says"), [
    ({"guided_regex": "("}, "field 'guided_regex': outlines-core cannot use this pattern"),
    ({"guided_regex": "x" * 16385}, "field 'guided_regex' holds 16385 characters; at most 16384"),
    ({"guided_regex": ""}, "field 'guided_regex' must be a non-empty string"),
    ({"guided_regex": "a{1000000}"}, "field 'guided_regex': the pattern's counted repetitions spell out"),
    ({"guided_regex": "a)|(b"}, "field 'guided_regex': outlines-core cannot use this pattern: unopened group"),
    ({"guided_regex": "caf\u00e9"}, "field 'guided_regex': outlines-core cannot use this pattern"),  # no such token
    ({"guided_json": {"type": "frobnicate"}}, "field 'guided_json': outlines-core cannot use this JSON Schema"),
    ({"guided_json": {"type": "string", "pattern": "a)|(b"}}, "field 'guided_json': outlines-core cannot use this "
                                                              "JSON Schema: its pattern \"a)|(b\" has an unopened group"),
    ({"guided_json": "[1, 2"}, "field 'guided_json' must be a JSON Schema"),
    ({"guided_json": "[" * 5000 + "]" * 5000}, "field 'guided_json' must be a JSON Schema"),  # too deep for json
    ({"guided_json": {"enum": ["x" * 9000, "y" * 9000]}}, "field 'guided_json' holds"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "fields 'guided_choice' and 'guided_regex' cannot both be given"),
])
async def test_websocket_bad_patterns_are_refused_by_name(server_url: str, fields: dict, says: str) -> None:
    conn = await Conn.open(server_url)
    reply = await conn.request({**GEN, "id": "bad", "prompt": "a", "max_tokens": 10, **fields})
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] == "bad", reply
    assert says in reply["message"], reply["message"]
    await conn.close()


def _completion(r, stream: bool) -> list[tuple[str, str]]:
    if not stream:
        return [(c.text, c.finish_reason) for c in r.choices]
    got: dict[int, list[str]] = {}
    ends: dict[int, str] = {}
    for chunk in r:
        for c in chunk.choices:
            got.setdefault(c.index, []).append(c.text)
            if c.finish_reason:
                ends[c.index] = c.finish_reason
    return [("".join(got[i]), ends[i]) for i in sorted(got)]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_completions_match_the_regex(openai_client, stream: bool) -> None:
    reasons = set()
    for seed in SEEDS:
        for temperature in (0, 1.0):
            for extra in ({"guided_regex": REGEX}, {"structured_outputs": {"regex": REGEX}}):
                r = openai_client.completions.create(model="charlm", prompt="Call ", max_tokens=14, n=2, seed=seed,
                                                     temperature=temperature, stream=stream, extra_body=extra)
                for text, reason in _completion(r, stream):
                    _check(text, reason)
                    reasons.add(reason)
    assert "stop" in reasons


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_response_format_json_schema_follows_the_schema(openai_client, stream: bool) -> None:
    formats = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}},
        {"extra_body": {"guided_json": SCHEMA}},
        {"extra_body": {"structured_outputs": {"json": SCHEMA}}},
    ]
    for seed in SEEDS:
        for kw in formats:
            r = openai_client.chat.completions.create(
                model="charlm", messages=[{"role": "user", "content": "Answer in JSON."}], max_tokens=60,
                temperature=1.0, seed=seed, stream=stream, **kw)
            if stream:
                chunks = [c.choices[0] for c in r if c.choices]
                text, reason = "".join(c.delta.content or "" for c in chunks), chunks[-1].finish_reason
            else:
                text, reason = r.choices[0].message.content, r.choices[0].finish_reason
            assert reason == "stop", text
            _follows_schema(text)


def test_openai_json_object_is_a_json_object(openai_client) -> None:
    ended = 0
    for seed in range(6):
        r = openai_client.chat.completions.create(
            model="charlm", messages=[{"role": "user", "content": "JSON please"}], max_tokens=80, temperature=0.7,
            seed=seed, response_format={"type": "json_object"})
        text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert text.startswith("{"), text
        if reason == "stop":
            assert type(json.loads(text)) is dict
            ended += 1
    assert ended  # at least one ended by itself


def test_openai_responses_text_format_json_schema(openai_client) -> None:
    for fmt in ({"type": "json_schema", "name": "a", "schema": SCHEMA, "strict": True}, {"type": "json_object"}):
        r = openai_client.responses.create(model="charlm", input="Answer in JSON.", max_output_tokens=60,
                                           temperature=0, text={"format": fmt})
        assert r.status == "completed", r
        value = json.loads(r.output_text)
        assert type(value) is dict and (fmt["type"] == "json_object" or value["a"] in ("x", "yy"))
        assert r.text.format.type == fmt["type"]


@pytest.mark.parametrize(("extra", "param", "says"), [
    ({"guided_regex": "("}, "guided_regex", "outlines-core cannot use this pattern"),
    ({"guided_regex": "x" * 16385}, "guided_regex", "at most 16384"),
    ({"guided_json": {"type": "frobnicate"}}, "guided_json", "outlines-core cannot use this JSON Schema"),
    ({"guided_json": "[" * 5000 + "]" * 5000}, "guided_json", "must be a JSON Schema"),
    ({"structured_outputs": {"regex": "("}}, "structured_outputs", "outlines-core cannot use this pattern"),
    ({"structured_outputs": {"regex": "a)|(b"}}, "structured_outputs", "unopened group"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "frobnicate"}}}},
     "response_format", "outlines-core cannot use this JSON Schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}, "response_format", "needs"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "response_format",
     "'guided_regex' and 'response_format'"),
    ({"guided_regex": "a", "guided_json": SCHEMA}, "guided_json", "'guided_regex' and 'guided_json'"),
    ({"guided_grammar": "root ::= 'a'"}, "guided_grammar", "not supported"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_bad_patterns_are_refused_with_400_naming_the_field(openai_client, extra: dict, param: str, says: str,
                                                                   stream: bool) -> None:
    for create, args in [(openai_client.completions.create, {"prompt": "a"}),
                         (openai_client.chat.completions.create, {"messages": [{"role": "user", "content": "a"}]})]:
        with pytest.raises(openai.BadRequestError) as info:
            r = create(model="charlm", max_tokens=5, stream=stream, extra_body=extra, **args)
            if stream:
                list(r)
        assert info.value.status_code == 400
        body = info.value.body
        assert body["param"] == param and body["code"] == "bad_request" and says in body["message"], body


def test_openai_responses_refuses_a_bad_text_format_naming_text(openai_client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.responses.create(model="charlm", input="a", max_output_tokens=5,
                                       text={"format": {"type": "json_schema", "name": "a",
                                                        "schema": {"type": "frobnicate"}}})
    body = info.value.body
    assert info.value.status_code == 400 and body["param"] == "text", body
    assert "field 'text': outlines-core cannot use this JSON Schema" in body["message"], body


@pytest.mark.parametrize(("route", "field", "value"), [
    ("chat/completions", "response_format", '{"type":' + "[" * 1000 + "]" * 1000 + "}"),
    ("responses", "text", '{"format":' + "[" * 1000 + "]" * 1000 + "}"),
])
def test_openai_a_format_nesting_too_deeply_to_show_is_a_400_naming_it(server, route: str, field: str,
                                                                       value: str) -> None:
    """The refusal quotes the value (repr, cut): a value as deep as the body's parser takes
    (1024 levels) raised RecursionError there, a 500.  The body is written by hand: the SDK's own
    json.dumps cannot encode it (urllib, the standard library's client)."""
    import urllib.error
    import urllib.request

    head = '"messages":[{"role":"user","content":"a"}]' if route != "responses" else '"input":"a"'
    body = '{"model":"charlm",' + head + f',"{field}":{value}}}'
    req = urllib.request.Request(f"{server.http}/v1/{route}", data=body.encode(),
                                 headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=60)
    error = json.loads(info.value.read())["error"]
    assert info.value.code == 400 and error["param"] == field, error
    assert "nested too deeply" in error["message"], error


@pytest.mark.parametrize("stream", [False, True])
def test_openai_echo_with_logprobs_refuses_a_bad_pattern_with_400_naming_it(openai_client, stream: bool) -> None:
    """echo with logprobs scores the prompt first, then queues: its pattern was compiled only
    there, so a streamed request got a 200 and the refusal as an error in the stream."""
    with pytest.raises(openai.BadRequestError) as info:
        r = openai_client.completions.create(model="charlm", prompt="ab", max_tokens=5, echo=True, logprobs=1,
                                             stream=stream, extra_body={"guided_regex": "("})
        if stream:
            list(r)
    body = info.value.body
    assert info.value.status_code == 400 and body["param"] == "guided_regex", body
    assert "outlines-core cannot use this pattern" in body["message"], body
    r = openai_client.completions.create(model="charlm", prompt="ab", max_tokens=14, echo=True, logprobs=1,
                                         extra_body={"guided_regex": REGEX})
    text, reason = r.choices[0].text, r.choices[0].finish_reason
    assert text.startswith("ab") and len(r.choices[0].logprobs.tokens) > 2
    _check(text[2:], reason)
