"""Tool calling on ``POST /v1/chat/completions`` by guided decoding (vLLM's named function calling
and ``tool_choice: "required"``) on a real loopback server, through the ``openai`` SDK: charlm's
generation follows the function's ``parameters`` schema and comes back as ``tool_calls``, streamed
(the SDK's ``chat.completions.stream()`` helper accumulates the deltas and parses the arguments) or
not; a conversation holding a tool call and its result is taken; bad ``tools``, an unknown named
function, ``"auto"`` and a second guided form are refused naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

openai = pytest.importorskip("openai")  # the test extra installs it
pytest.importorskip("outlines_core")  # the structured extra

UNIT = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather", "parameters": UNIT,
                                      "strict": True}},
    {"type": "function", "function": {"name": "now", "strict": True}},  # no parameters: {} only
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What's the weather?"}]


def _unit(arguments: str) -> None:
    value = json.loads(arguments)
    assert type(value) is dict and set(value) == {"unit"} and value["unit"] in ("c", "f"), arguments


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_named_tool_choice_answers_a_tool_call_following_the_schema(openai_client, temperature: float) -> None:
    for seed in range(3):
        r = openai_client.chat.completions.create(model="charlm", messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                                  max_tokens=60, n=2, seed=seed, temperature=temperature,
                                                  logprobs=True)
        assert len(r.choices) == 2
        ids = set()
        for choice in r.choices:
            assert choice.finish_reason == "stop", choice
            assert not choice.message.content and choice.message.role == "assistant"
            (call,) = choice.message.tool_calls
            assert call.type == "function" and call.function.name == "get_weather"
            assert call.id.startswith("chatcmpl-tool-") and len(call.id) == len("chatcmpl-tool-") + 32
            ids.add(call.id)
            _unit(call.function.arguments)
            assert "".join(t.token for t in choice.logprobs.content) == call.function.arguments
        assert len(ids) == 2
        assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)


def test_named_tool_choice_streamed_gives_the_same_call(openai_client) -> None:
    for seed in range(3):
        kw: dict[str, Any] = {"model": "charlm", "messages": ASK, "tools": TOOLS, "tool_choice": NAMED,
                              "max_tokens": 60, "seed": seed, "temperature": 1.0}
        whole = openai_client.chat.completions.create(**kw)
        with openai_client.chat.completions.stream(**kw) as stream:
            final = stream.get_final_completion()
        choice = final.choices[0]
        (call,) = choice.message.tool_calls
        assert choice.finish_reason == "stop" and call.function.name == "get_weather" and call.type == "function"
        assert call.id.startswith("chatcmpl-tool-")
        assert call.function.arguments == whole.choices[0].message.tool_calls[0].function.arguments
        assert call.function.parsed_arguments in ({"unit": "c"}, {"unit": "f"})
        # the raw chunks: the first delta names the call, the later ones carry arguments only
        chunks = list(openai_client.chat.completions.create(stream=True, **kw))
        deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].index == 0
        assert all(d.id is None and d.function.name is None and d.index == 0 for d in deltas[1:])
        assert "".join(d.function.arguments for d in deltas) == call.function.arguments


def test_a_function_without_parameters_takes_an_empty_object(openai_client) -> None:
    r = openai_client.chat.completions.create(model="charlm", messages=ASK, tools=TOOLS, max_tokens=20,
                                              tool_choice={"type": "function", "function": {"name": "now"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "now" and json.loads(call.function.arguments) == {}


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_answers_calls_of_the_tools(openai_client, stream: bool) -> None:
    seen, reasons = set(), set()
    for seed in range(4):
        kw: dict[str, Any] = {"model": "charlm", "messages": ASK, "tools": TOOLS, "tool_choice": "required",
                              "max_tokens": 200, "seed": seed, "temperature": 1.0, "n": 2, "logprobs": True}
        whole = openai_client.chat.completions.create(**kw)
        if stream:
            calls: dict[int, dict[int, Any]] = {}
            ends: dict[int, str] = {}
            logged = [0, 0]  # every token's logprobs come, in a chunk of their own while no call is complete
            for chunk in openai_client.chat.completions.create(stream=True, **kw):
                for c in chunk.choices:
                    logged[c.index] += len(c.logprobs.content) if c.logprobs else 0
                    for d in c.delta.tool_calls or ():
                        calls.setdefault(c.index, {})[d.index] = d
                    if c.finish_reason:
                        ends[c.index] = c.finish_reason
            got = [([(d.function.name, d.function.arguments) for _, d in sorted(calls.get(i, {}).items())], ends[i])
                   for i in range(2)]
            assert logged == [len(c.logprobs.content) for c in whole.choices]
        else:
            got = [([(t.function.name, t.function.arguments) for t in c.message.tool_calls or ()], c.finish_reason)
                   for c in whole.choices]
        for i, (pairs, reason) in enumerate(got):
            assert reason in ("tool_calls", "length"), reason
            reasons.add(reason)
            if reason == "tool_calls":
                assert pairs
            for name, arguments in pairs:
                seen.add(name)
                if name == "get_weather":
                    _unit(arguments)
                else:
                    assert name == "now" and json.loads(arguments) == {}
            expected = [(t.function.name, t.function.arguments) for t in whole.choices[i].message.tool_calls or ()]
            assert pairs == expected  # streamed or not, the same calls (seeded)
    assert "tool_calls" in reasons and seen


def test_required_without_parallel_calls_makes_exactly_one(openai_client) -> None:
    for seed in range(4):
        r = openai_client.chat.completions.create(model="charlm", messages=ASK, tools=TOOLS, tool_choice="required",
                                                  parallel_tool_calls=False, max_tokens=200, seed=seed,
                                                  temperature=1.0)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice


def test_a_conversation_with_a_tool_call_and_its_result_is_taken(openai_client) -> None:
    first = openai_client.chat.completions.create(model="charlm", messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                                  max_tokens=60, temperature=0)
    message = first.choices[0].message
    call = message.tool_calls[0]
    history = [*ASK, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "It is 21 degrees."}]
    r = openai_client.chat.completions.create(model="charlm", messages=history, max_tokens=8, temperature=0)
    assert r.choices[0].message.content and r.choices[0].finish_reason == "length"
    # the template's text of it: each call's arguments, the tool's result (charlm joins contents)
    joined = "\n".join([ASK[0]["content"], call.function.arguments, "It is 21 degrees."])
    same = openai_client.completions.create(model="charlm", prompt=joined, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == same.choices[0].text
    assert r.usage.prompt_tokens == same.usage.prompt_tokens
    # with tools still given and "none": the tools play no part
    r = openai_client.chat.completions.create(model="charlm", messages=history, max_tokens=8, temperature=0,
                                              tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == same.choices[0].text and not r.choices[0].message.tool_calls


@pytest.mark.parametrize(("kwargs", "param", "says"), [
    ({"tools": TOOLS}, "tool_choice", "'tool_choice' \"auto\" (the default with 'tools') is not supported"),
    ({"tools": TOOLS, "tool_choice": "auto"}, "tool_choice", "no tool parser"),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "'tool_choice' names function 'nope', which is not one of 'tools' (get_weather, now)"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "'tool_choice' must be \"none\""),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice", "a named 'tool_choice' must be"),
    ({"tools": [], "tool_choice": "none"}, "tools", "'tools' must be an array of 1 to 64 functions"),
    ({"tools": TOOLS * 33, "tool_choice": "none"}, "tools", "got 66 of them"),
    ({"tools": [{"type": "retrieval"}], "tool_choice": "none"}, "tools", "'tools[0]' must be"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}], "tool_choice": "none"}, "tools",
     "'tools[0].function.name' must be 1 to 64 letters"),
    ({"tools": [TOOLS[0], TOOLS[0]], "tool_choice": "none"}, "tools",
     "'tools[1].function.name' 'get_weather' names a function twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}], "tool_choice": "none"},
     "tools", "'tools[0].function.parameters' must be a JSON Schema object, got array"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"enum": ["x" * 17000]}}}],
      "tool_choice": "none"}, "tools", "field 'tools[0].function.parameters' holds"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "frobnicate"}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice",
     "field 'tool_choice': outlines-core cannot use this JSON Schema"),
    ({"tools": TOOLS, "tool_choice": NAMED, "response_format": {"type": "json_object"}}, "tool_choice",
     "'tool_choice' and 'response_format' cannot both be given"),
    ({"tools": TOOLS, "tool_choice": "required", "extra_body": {"guided_regex": "a"}}, "tool_choice",
     "'tool_choice' and 'guided_regex' cannot both be given"),
    ({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": 1}, "parallel_tool_calls", "a boolean"),
    ({"messages": [{"role": "tool", "tool_call_id": "c1", "content": "42"}]}, "messages",
     "'messages[0].tool_call_id' must name a tool call of an earlier assistant message"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                        "function": {"name": "f"}}]}]},
     "messages", "'messages[0].tool_calls[0].function.arguments' must be a string"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_tool_requests_are_refused_naming_the_field(openai_client, kwargs: dict, param: str, says: str,
                                                        stream: bool) -> None:
    args = {"model": "charlm", "messages": ASK, "max_tokens": 5, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        r = openai_client.chat.completions.create(stream=stream, **args)
        if stream:
            list(r)
    body = info.value.body
    assert info.value.status_code == 400 and body["param"] == param and body["code"] == "bad_request", body
    assert says in body["message"], body

