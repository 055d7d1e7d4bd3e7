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
