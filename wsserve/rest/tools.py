"""Tool calling on ``POST /v1/chat/completions`` the way vLLM does it without a tool parser: by
guided decoding (vLLM's "named function calling" and ``tool_choice: "required"``), sans-I/O.

- :func:`parse_tool_choice` - a body's ``tools`` and ``tool_choice`` checked, and the forced
  call they ask for as a :class:`ToolChoice` (None: the tools play no part in decoding):

  - ``tools``: 1 to :data:`MAX_TOOLS` of ``{"type": "function", "function": {"name",
    "description"?, "parameters"?, "strict"?}}`` (``type`` may be left out, as vLLM takes it); a ``name`` is 1 to 64 letters, digits, ``_``
    and ``-`` (OpenAI's rule), each once; ``parameters`` a JSON Schema object whose JSON text
    holds at most :data:`~wsserve.protocol.MAX_GUIDED_PATTERN_CHARS` characters (absent:
    ``{"type": "object", "properties": {}}``, no arguments, as vLLM).  Descriptions are taken
    and not shown to the model (a model's template sees the messages only).
  - ``tool_choice``: ``{"type": "function", "function": {"name": N}}`` (named): the generation
    is JSON following ``N``'s ``parameters``; ``"required"``: a JSON array of one or more
    ``{"name", "parameters"}`` objects, each one of the tools' (vLLM's schema: ``anyOf`` over
    the tools, their ``$defs`` moved to the top; with ``parallel_tool_calls: false``, exactly one
    call); ``"none"``: the tools are ignored.
    ``"auto"`` is refused, as vLLM refuses it without ``--enable-auto-tool-choice``: wsserve
    has no tool parser to find calls in free text.  Absent with tools is ``"auto"`` (vLLM's
    default), so refused too; absent without tools is ``"none"``.

- :class:`CallScanner` - the complete ``{"name", "parameters"}`` elements of a ``"required"``
  array as they are generated (the JSON text fed in pieces), for the answer's ``tool_calls``.
- :func:`tool_call_id` - a call's ``id``, ``chatcmpl-tool-<32 hex>`` as vLLM's.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest
from ..jsontypes import json_type, shown
from ..protocol import MAX_GUIDED_PATTERN_CHARS, schema_text
from .errors import ParamError

__all__ = ["MAX_TOOLS", "CallScanner", "ToolChoice", "parse_tool_choice", "tool_call_id"]

#: ``tools`` holds at most this many functions.
MAX_TOOLS = 64
#: OpenAI's rule for a function's name.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A function without ``parameters`` takes none (vLLM's schema for it).
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_NAMED_FORM = '{"type": "function", "function": {"name": ...}}'


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A forced tool call: ``name`` the named function's, or None for ``"required"`` (an array of
    calls); ``schema`` the JSON Schema's JSON text the generation follows."""

    name: str | None
    schema: str


def tool_call_id() -> str:
    """A new tool call's ``id`` (vLLM's form: ``chatcmpl-tool-`` and a random UUID's hex)."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def parse_tool_choice(obj: dict[str, Any]) -> ToolChoice | None:
    """A body's ``tools`` and ``tool_choice`` (the module docstring).  Raises :class:`ParamError`
    naming ``tools`` (with the offending entry's path in the message) or ``tool_choice``."""
    tools = _tools(obj.get("tools"))
    parallel = obj.get("parallel_tool_calls")
    if parallel is not None and type(parallel) is not bool:
        raise ParamError("parallel_tool_calls", f"'parallel_tool_calls' must be a boolean, got {json_type(parallel)}")
    choice = obj.get("tool_choice")
    if choice is None:
        choice = "auto" if tools else "none"
    if choice == "none":
        return None
    if not tools:
        raise ParamError("tool_choice", f"'tool_choice' {shown(choice, 60)} needs 'tools' (the functions it "
                                        "chooses among)")
    if choice == "auto":
        raise ParamError("tool_choice", "'tool_choice' \"auto\" (the default with 'tools') is not supported: "
                                        "wsserve has no tool parser to find tool calls in free text (as vLLM "
                                        "without --enable-auto-tool-choice); send \"required\", a named "
                                        f"function ({_NAMED_FORM}) or \"none\"")
    if choice == "required":
        items = [{"properties": {"name": {"type": "string", "enum": [name]}, "parameters": params},
                  "required": ["name", "parameters"]} for name, params in tools.items()]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": items}}
        if parallel is False:
            schema["maxItems"] = 1
        defs = _hoisted_defs(items)
        if defs:
            schema["$defs"] = defs
        return ToolChoice(None, _schema(schema))
    if type(choice) is not dict:
        raise ParamError("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                        f"{_NAMED_FORM}, got {shown(choice, 60)}")
    function = choice.get("function")
    name = function.get("name") if type(function) is dict else None
    if choice.get("type", "function") != "function" or type(name) is not str:  # type: vLLM's default
        raise ParamError("tool_choice", f"a named 'tool_choice' must be {_NAMED_FORM}, got {shown(choice, 80)}")
    if name not in tools:
        raise ParamError("tool_choice", f"'tool_choice' names function {shown(name, 70)}, which is not one of "
                                        f"'tools' ({', '.join(list(tools)[:8])}{', ...' if len(tools) > 8 else ''})")
    return ToolChoice(name, _schema(tools[name]))


def _schema(schema: dict[str, Any]) -> str:
    """``schema`` as the JSON text guided decoding takes; refused naming ``tool_choice`` when it
    is longer than the pattern limit (a ``"required"`` array's schema holds every tool's)."""
    try:
        return schema_text(schema, "tool_choice")
    except BadRequest as exc:
        raise ParamError("tool_choice", exc.message) from None


def _tools(value: Any) -> dict[str, dict[str, Any]]:
    """``tools`` checked: function name -> its ``parameters`` schema, in order (empty: absent)."""
    if value is None:
        return {}
    if type(value) is not list or not 0 < len(value) <= MAX_TOOLS:
        got = f"{len(value)} of them" if type(value) is list else json_type(value)
        raise ParamError("tools", f"'tools' must be an array of 1 to {MAX_TOOLS} functions (omit it for none), "
                                  f"got {got}")
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if type(tool) is not dict or tool.get("type", "function") != "function" \
                or type(tool.get("function")) is not dict:  # type: "function" when absent, as vLLM
            raise ParamError("tools", f"'{where}' must be {{\"type\": \"function\", \"function\": {{\"name\", "
                                      f"\"description\", \"parameters\"}}}}, got {shown(tool, 80)}")
        function = tool["function"]
        name = function.get("name")
        if type(name) is not str or not _NAME.fullmatch(name):
            raise ParamError("tools", f"'{where}.function.name' must be 1 to 64 letters, digits, '_' or '-', "
                                      f"got {shown(name, 70)}")
        if name in out:
            raise ParamError("tools", f"'{where}.function.name' {name!r} names a function twice")
        description = function.get("description")
        if description is not None and (type(description) is not str
                                        or len(description) > MAX_GUIDED_PATTERN_CHARS):
            raise ParamError("tools", f"'{where}.function.description' must be a string of at most "
                                      f"{MAX_GUIDED_PATTERN_CHARS} characters")
        if function.get("strict") is not None and type(function["strict"]) is not bool:
            raise ParamError("tools", f"'{where}.function.strict' must be a boolean, got "
                                      f"{json_type(function['strict'])}")
        params = function.get("parameters")
        if params is None:
            params = _NO_PARAMETERS
        if type(params) is not dict:
            raise ParamError("tools", f"'{where}.function.parameters' must be a JSON Schema object, got "
                                      f"{json_type(params)}")
        try:
            schema_text(params, f"{where}.function.parameters")  # within the pattern limit
        except BadRequest as exc:
            raise ParamError("tools", exc.message) from None
        out[name] = params
    return out


def _hoisted_defs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``$defs`` of the tools' parameters moved to the array schema's top (where their
    ``#/$defs/...`` references resolve), as vLLM does; each item gets a copy of its parameters
    without them.  A name defined twice differently is refused naming ``tools``."""
    defs: dict[str, Any] = {}
    for item in items:
        params = item["properties"]["parameters"]
        if type(params.get("$defs")) is not dict:
            continue
        for key, value in params["$defs"].items():
            if key in defs and defs[key] != value:
                raise ParamError("tools", f"the tools define '$defs' {shown(key, 40)} differently; "
                                          "\"required\" puts every tool's '$defs' in one schema")
            defs[key] = value
        item["properties"]["parameters"] = {k: v for k, v in params.items() if k != "$defs"}
    return defs


class CallScanner:
    """The complete elements of a JSON array of ``{"name", "parameters"}`` objects (a
    ``"required"`` generation), found as its text is fed in pieces.  Call order: :meth:`feed`
    with each piece; :attr:`closed` once the array's ``]`` came."""

    __slots__ = ("_text", "_depth", "_string", "_escape", "_start", "closed")

    def __init__(self) -> None:
        self._text: list[str] = []  # the current element's characters so far
        self._depth = 0
        self._string = self._escape = False
        self._start = False  # inside an element
        self.closed = False

    def feed(self, piece: str) -> list[tuple[str, str]]:
        """The elements ``piece`` completes, as ``(name, arguments)``: ``arguments`` is the
        element's ``parameters`` as JSON text (``json.dumps``, as vLLM writes them)."""
        calls = []
        for c in piece:
            if self._start:
                self._text.append(c)
            if self._string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._string = False
                continue
            if c == '"':
                self._string = True
            elif c in "[{":
                self._depth += 1
                if self._depth == 2 and c == "{":
                    self._start, self._text = True, ["{"]
            elif c in "]}":
                self._depth -= 1
                if self._depth == 1 and self._start:
                    self._start = False
                    call = _call("".join(self._text))
                    if call is not None:
                        calls.append(call)
                elif self._depth == 0:
                    self.closed = True
        return calls


def _call(text: str) -> tuple[str, str] | None:
    """An element's ``(name, arguments)``, or None if it is not a call (the guide makes it one)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if type(value) is not dict or type(value.get("name")) is not str or "parameters" not in value:
        return None
    return value["name"], json.dumps(value["parameters"], ensure_ascii=False)
