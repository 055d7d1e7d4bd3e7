"""Chat messages (OpenAI's ``messages``), sans-I/O: checked once for ``POST /v1/chat/completions``
and the WebSocket ``generate``'s ``messages`` extension.

A conversation is a non-empty list of ``{"role", "content"[, "name"]}`` objects:

- ``role``: ``"system"``, ``"developer"``, ``"user"`` or ``"assistant"``.  ``"tool"`` and
  ``"function"`` (tool calling) are refused by name: wsserve's models call no tools; but see
  ``tools`` below for ``POST /v1/chat/completions``.
- ``content``: a string, or a non-empty array of text parts ``{"type": "text", "text": ...}``
  (joined, as OpenAI joins them); other part types (images, audio, files) are refused by name,
  and so is an empty array (OpenAI refuses it too; it is not read as ``""``).  An ``assistant``
  message may have ``null`` content (read as ``""``).
- ``name``: optional string, passed on to the model's template.

A message carrying tool calling or audio (non-empty ``tool_calls``, ``function_call``, ``audio``,
``tool_call_id``) is refused by name rather than read as text; other fields, and those when null
or empty (an SDK's response message sent back as is), are ignored.  Sizes are bounded by the
request's own bound (``max_message_bytes`` on the WebSocket, the HTTP body limit).

With ``tools=True`` (``POST /v1/chat/completions``, which makes tool calls by guided decoding:
:mod:`wsserve.rest.tools`) a conversation may hold the turns of a tool call, given a textual form
since a model's template sees ``{"role", "content"}`` only:

- an ``assistant`` message with ``tool_calls`` (1 to :data:`MAX_TOOL_CALLS` of ``{"id", "type":
  "function", "function": {"name", "arguments"}}``, ``id`` and ``name`` strings of 1 to
  :data:`MAX_TOOL_CALL_ID_CHARS` characters, ``arguments`` a string): its content is its text
  (``null`` is ``""``) followed by each call's ``arguments``, one per line (what the model
  generated for the call, for a named ``tool_choice``);
- a ``tool`` message (a tool's result): ``tool_call_id`` must name a call of an earlier assistant
  message (as OpenAI requires); its content is the result's text.


The model turns the conversation into its prompt (its ``chat_prompt``,
:meth:`wsserve.generation.model.TokenModelAdapter.chat_prompt`); a model without one refuses
chat requests, as vLLM does for a tokenizer without a chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .jsontypes import json_type, shown

__all__ = ["ChatMessage", "MAX_TOOL_CALLS", "MAX_TOOL_CALL_ID_CHARS", "ROLES", "parse_messages", "text_parts"]

#: Roles a message may have.
ROLES = ("system", "developer", "user", "assistant")

_REFUSED_ROLES = {"tool": "tool results", "function": "function results"}
#: An assistant message names at most this many tool calls; a call's ``id`` and its function's
#: ``name`` hold at most this many characters.
MAX_TOOL_CALLS = 64
MAX_TOOL_CALL_ID_CHARS = 256
#: Message fields that would change what the conversation means: refused unless null or empty.
_REFUSED_FIELDS = ("tool_calls", "function_call", "audio", "tool_call_id")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One checked message."""

    role: str
    content: str
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        """``{"role", "content"[, "name"]}``: what a model's ``chat_prompt`` is given (a fresh dict)."""
        d = {"role": self.role, "content": self.content}
        if self.name is not None:
            d["name"] = self.name
        return d


def parse_messages(value: Any, field: str = "messages", *, tools: bool = False) -> tuple[ChatMessage, ...]:
    """Check a decoded ``messages`` value; raises ``BadRequest`` naming ``field`` and the message
    index (``'messages[2].content'``) of the first problem.  ``tools``: tool calls and results
    are taken (the module docstring), else refused by name."""
    if type(value) is not list:
        raise BadRequest(f"field '{field}' must be an array of messages, got {json_type(value)}")
    if not value:
        raise BadRequest(f"field '{field}' must hold at least one message")
    out = []
    call_ids: set[str] = set()  # the tool calls of the assistant messages so far
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if type(msg) is not dict:
            raise BadRequest(f"'{where}' must be an object with 'role' and 'content', got {json_type(msg)}")
        role = msg.get("role")
        if type(role) is not str:
            raise BadRequest(f"'{where}.role' must be a string, got {json_type(role)}")
        if role not in ROLES and not (tools and role == "tool"):
            if role in _REFUSED_ROLES:
                raise BadRequest(f"'{where}.role' {role!r} is not supported: {_REFUSED_ROLES[role]} need tool "
                                 "calling, which wsserve's models do not do")
            raise BadRequest(f"'{where}.role' must be one of {', '.join(ROLES)}; got {role[:64]!r}")
        for key in _REFUSED_FIELDS:
            if msg.get(key) not in (None, [], {}) and not (tools and _tool_field(role, key)):
                raise BadRequest(f"'{where}.{key}' is not supported: wsserve's models do not call tools or take "
                                 "audio")
        content = msg.get("content")
        if content is None and role == "assistant":
            content = ""
        elif type(content) is list:
            content = text_parts(content, f"{where}.content")
        elif type(content) is not str:
            raise BadRequest(f"'{where}.content' must be a string or an array of text parts, got {json_type(content)}")
        name = msg.get("name")
        if name is not None and type(name) is not str:
            raise BadRequest(f"'{where}.name' must be a string, got {json_type(name)}")
        if tools and role == "assistant" and msg.get("tool_calls"):
            arguments = _tool_calls(msg["tool_calls"], f"{where}.tool_calls", call_ids)
            content = "\n".join([content, *arguments] if content else arguments)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if type(call_id) is not str or call_id not in call_ids:
                raise BadRequest(f"'{where}.tool_call_id' must name a tool call of an earlier assistant message "
                                 f"(a tool message answers one), got {shown(call_id, 40)}")
        out.append(ChatMessage(role, content, name))
    return tuple(out)


def _tool_field(role: str, key: str) -> bool:
    """``key`` is a tool-calling field a message of ``role`` may carry (with ``tools``)."""
    return (role, key) in (("assistant", "tool_calls"), ("tool", "tool_call_id"))


def _short_string(value: Any, at: str) -> str:
    """``value`` when it is a string of 1 to ``MAX_TOOL_CALL_ID_CHARS`` characters (a tool call's
    ``id`` or function ``name``); raises ``BadRequest`` naming ``at`` otherwise."""
    if type(value) is not str or not 0 < len(value) <= MAX_TOOL_CALL_ID_CHARS:
        raise BadRequest(f"'{at}' must be a string of 1 to {MAX_TOOL_CALL_ID_CHARS} characters, got {shown(value, 40)}")
    return value


def _tool_calls(calls: Any, where: str, call_ids: set[str]) -> list[str]:
    """An assistant message's ``tool_calls`` checked: each call's ``arguments``, in order; each
    ``id`` is added to ``call_ids``.  Raises ``BadRequest`` naming the call's field."""
    if type(calls) is not list or len(calls) > MAX_TOOL_CALLS:
        raise BadRequest(f"'{where}' must be an array of at most {MAX_TOOL_CALLS} tool calls, got "
                         f"{json_type(calls) if type(calls) is not list else f'{len(calls)} of them'}")
    arguments = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if type(call) is not dict or call.get("type", "function") != "function":
            raise BadRequest(f"'{at}' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                             f"\"arguments\"}}}}, got {shown(call, 60)}")
        call_id, function = _short_string(call.get("id"), f"{at}.id"), call.get("function")
        if type(function) is not dict:
            raise BadRequest(f"'{at}.function' must be an object with 'name' and 'arguments', got "
                             f"{json_type(function)}")
        _short_string(function.get("name"), f"{at}.function.name")
        args = function.get("arguments")
        if type(args) is not str:
            raise BadRequest(f"'{at}.function.arguments' must be a string (the call's JSON arguments), got "
                             f"{json_type(args)}")
        call_ids.add(call_id)
        arguments.append(args)
    return arguments


def text_parts(parts: list[Any], where: str, kinds: tuple[str, ...] = ("text",)) -> str:
    """An array of content parts as one text (each must be ``{"type": <one of kinds>, "text": str}``;
    at least one): chat's ``text`` parts, the Responses API's ``input_text``/``output_text``.
    Raises ``BadRequest`` naming the part (``where[j]``) and the problem."""
    if not parts:
        raise BadRequest(f"'{where}' is an empty array; send a string or at least one text part")
    texts = []
    for j, part in enumerate(parts):
        if type(part) is not dict:
            raise BadRequest(f"'{where}[{j}]' must be a content part object, got {json_type(part)}")
        kind = part.get("type")
        if kind not in kinds:
            shown = kind[:64] if type(kind) is str else json_type(kind)
            named = "" if kinds == ("text",) else f" ({', '.join(kinds)})"
            raise BadRequest(f"'{where}[{j}].type' {shown!r} is not supported: only text parts{named}")
        text = part.get("text")
        if type(text) is not str:
            raise BadRequest(f"'{where}[{j}].text' must be a string, got {json_type(text)}")
        texts.append(text)
    return "".join(texts)
