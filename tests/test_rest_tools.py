"""``wsserve.rest.tools``: the schema a forced tool call follows (vLLM's), and the calls found in a
``"required"`` array as it is generated, sans-I/O."""

from __future__ import annotations

import json

import pytest

from wsserve.rest.errors import ParamError
from wsserve.rest.tools import CallScanner, parse_tool_choice

P = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}
TOOLS = [{"type": "function", "function": {"name": "w", "parameters": P}},
         {"type": "function", "function": {"name": "now"}}]


def test_named_and_required_schemas_are_vllms() -> None:
    assert parse_tool_choice({}) is None
    assert parse_tool_choice({"tools": TOOLS, "tool_choice": "none"}) is None
    named = parse_tool_choice({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "w"}}})
    assert named is not None and named.name == "w" and json.loads(named.schema) == P
    empty = parse_tool_choice({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "now"}}})
    assert empty is not None and json.loads(empty.schema) == {"type": "object", "properties": {}}
    required = parse_tool_choice({"tools": TOOLS, "tool_choice": "required"})
    assert required is not None and required.name is None
    item = {"properties": {"name": {"type": "string", "enum": ["w"]}, "parameters": P},
            "required": ["name", "parameters"]}
    nothing = {"properties": {"name": {"type": "string", "enum": ["now"]},
                              "parameters": {"type": "object", "properties": {}}}, "required": ["name", "parameters"]}
    assert json.loads(required.schema) == {"type": "array", "minItems": 1,
                                           "items": {"type": "object", "anyOf": [item, nothing]}}
    untyped = parse_tool_choice({"tools": [{"function": {"name": "w", "parameters": P}}],  # vLLM's default type
                                 "tool_choice": {"function": {"name": "w"}}})
    assert untyped == named
    one = parse_tool_choice({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False})
    assert one is not None and json.loads(one.schema)["maxItems"] == 1


def test_required_moves_the_defs_to_the_top_without_changing_the_tools() -> None:
    ref = {"type": "object", "properties": {"u": {"$ref": "#/$defs/U"}}, "$defs": {"U": {"enum": ["c"]}}}
    tools = [{"type": "function", "function": {"name": "a", "parameters": ref}}]
    schema = json.loads(parse_tool_choice({"tools": tools, "tool_choice": "required"}).schema)
    assert schema["$defs"] == {"U": {"enum": ["c"]}} and "$defs" not in schema["items"]["anyOf"][0]["properties"]
    assert "$defs" in ref  # the request's own object is left as it was
    clash = [*tools, {"type": "function", "function": {"name": "b", "parameters": {"$defs": {"U": {"enum": ["f"]}}}}}]
    with pytest.raises(ParamError) as info:
        parse_tool_choice({"tools": clash, "tool_choice": "required"})
    assert info.value.param == "tools" and "'$defs' 'U' differently" in info.value.message


def test_a_required_schema_over_the_pattern_limit_is_refused_naming_tool_choice() -> None:
    big = {"type": "object", "properties": {"x": {"enum": ["y" * 3000]}}}
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": big}} for i in range(6)]
    assert parse_tool_choice({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "f0"}}})
    with pytest.raises(ParamError) as info:
        parse_tool_choice({"tools": tools, "tool_choice": "required"})
    assert info.value.param == "tool_choice" and "field 'tool_choice' holds" in info.value.message


def test_the_scanner_finds_each_call_when_its_element_closes() -> None:
    text = '[ {"name": "w", "parameters": {"unit": "c}\\"{"}} , {"name":"now","parameters":{}}]'
    whole = CallScanner()
    assert whole.feed(text) == [("w", '{"unit": "c}\\"{"}'), ("now", "{}")] and whole.closed
    pieces, found = CallScanner(), []
    for i, c in enumerate(text):
        got = pieces.feed(c)
        if got:
            found.append((i, got))
        assert pieces.closed == (i == len(text) - 1)
    assert [calls for _, calls in found] == [[("w", '{"unit": "c}\\"{"}')], [("now", "{}")]]
    assert found[0][0] == text.index("} ,")  # the element's own closing brace
    cut = CallScanner()
    assert cut.feed(text[:40]) == [] and not cut.closed
