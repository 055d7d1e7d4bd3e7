"""``wsserve.chat.parse_messages``: what a conversation may hold, and the error naming the first problem."""

from __future__ import annotations

import pytest

from wsserve.chat import ChatMessage, parse_messages
from wsserve.errors import BadRequest


def test_roles_contents_and_names() -> None:
    got = parse_messages([
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": None, "refusal": None, "audio": None},
        {"role": "assistant", "content": "ok", "tool_calls": [], "annotations": []},
    ])
    assert got == (ChatMessage("system", "be brief"), ChatMessage("developer", ""), ChatMessage("user", "ab", "ann"),
                   ChatMessage("assistant", ""), ChatMessage("assistant", "ok"))
    assert got[2].as_dict() == {"role": "user", "content": "ab", "name": "ann"}
    assert got[0].as_dict() == {"role": "system", "content": "be brief"}
    assert got[0].as_dict() is not got[0].as_dict()  # a fresh dict per call: model code may change it


@pytest.mark.parametrize("value,message", [
    (None, "field 'messages' must be an array of messages, got null"),
    ({"role": "user"}, "field 'messages' must be an array of messages, got object"),
    ([], "field 'messages' must hold at least one message"),
    (["hi"], "'messages[0]' must be an object with 'role' and 'content', got string"),
    ([{"content": "x"}], "'messages[0].role' must be a string, got null"),
    ([{"role": "User", "content": "x"}], "'messages[0].role' must be one of system, developer, user, assistant; got 'User'"),
    ([{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}], "'messages[1].role' 'tool' is not supported"),
    ([{"role": "function", "content": "1"}], "'messages[0].role' 'function' is not supported"),
    ([{"role": "user", "content": None}], "'messages[0].content' must be a string or an array of text parts, got null"),
    ([{"role": "user", "content": []}], "'messages[0].content' is an empty array; send a string or at least one text part"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": []}], "'messages[1].content' is an empty array"),
    ([{"role": "user", "content": ["a"]}], "'messages[0].content[0]' must be a content part object, got string"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "'messages[0].content[0].type' 'image_url' is not supported"),
    ([{"role": "user", "content": [{"type": 3}]}], "'messages[0].content[0].type' 'number' is not supported"),
    ([{"role": "user", "content": [{"type": "text"}]}], "'messages[0].content[0].text' must be a string, got null"),
    ([{"role": "user", "content": "x", "name": 1}], "'messages[0].name' must be a string, got number"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}], "'messages[0].tool_calls' is not supported"),
    ([{"role": "assistant", "content": "", "function_call": {"name": "f"}}], "'messages[0].function_call' is not"),
    ([{"role": "user", "content": "x", "tool_call_id": "c"}], "'messages[0].tool_call_id' is not supported"),
    ([{"role": "assistant", "content": "", "audio": {"id": "a"}}], "'messages[0].audio' is not supported"),
])
def test_the_first_problem_is_named(value: object, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_messages(value)
    assert message in info.value.message


def test_a_long_role_is_cut_in_the_message() -> None:
    with pytest.raises(BadRequest) as info:
        parse_messages([{"role": "x" * 10_000, "content": ""}])
    assert len(info.value.message) < 200


CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"unit": "c"}'}}


def test_tool_calls_and_results_are_taken_with_tools_as_text() -> None:
    got = parse_messages([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "c2", "function": {
            "name": "now", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 degrees"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{**CALL, "id": "c3"}]},
    ], tools=True)
    assert got == (ChatMessage("user", "weather?"), ChatMessage("assistant", '{"unit": "c"}\n{}'),
                   ChatMessage("tool", "21 degrees"), ChatMessage("tool", "noon"),
                   ChatMessage("assistant", 'Let me check.\n{"unit": "c"}'))


@pytest.mark.parametrize("value,message", [
    ([{"role": "tool", "tool_call_id": "c1", "content": "1"}],
     "'messages[0].tool_call_id' must name a tool call of an earlier assistant message"),
    ([{"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "content": "1"}],
     "'messages[1].tool_call_id' must name a tool call of an earlier assistant message (a tool message answers one), "
     "got null"),
    ([{"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "c1"}],
     "'messages[1].content' must be a string or an array of text parts, got null"),
    ([{"role": "assistant", "content": "", "tool_calls": "x"}], "'messages[0].tool_calls' must be an array of at most 64"),
    ([{"role": "assistant", "content": "", "tool_calls": [CALL] * 65}], "got 65 of them"),
    ([{"role": "assistant", "content": "", "tool_calls": [{**CALL, "type": "code"}]}], "'messages[0].tool_calls[0]' must be"),
    ([{"role": "assistant", "content": "", "tool_calls": [{**CALL, "id": ""}]}], "'messages[0].tool_calls[0].id' must be"),
    ([{"role": "assistant", "content": "", "tool_calls": [{**CALL, "id": "x" * 257}]}], "1 to 256 characters"),
    ([{"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": None}]}],
     "'messages[0].tool_calls[0].function' must be an object"),
    ([{"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": {"arguments": "{}"}}]}],
     "'messages[0].tool_calls[0].function.name' must be a string"),
    ([{"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]}],
     "'messages[0].tool_calls[0].function.arguments' must be a string (the call's JSON arguments), got object"),
    ([{"role": "user", "content": "x", "tool_call_id": "c1"}], "'messages[0].tool_call_id' is not supported"),
    ([{"role": "user", "content": "x", "tool_calls": [CALL]}], "'messages[0].tool_calls' is not supported"),
    ([{"role": "assistant", "content": "", "function_call": {"name": "f"}}], "'messages[0].function_call' is not"),
    ([{"role": "function", "content": "1"}], "'messages[0].role' 'function' is not supported"),
])
def test_tool_messages_are_checked_with_tools(value: object, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_messages(value, tools=True)
    assert message in info.value.message
