"""Chat messages (OpenAI's ``messages``), sans-I/O: checked once for ``POST /v1/chat/completions``
and the WebSocket ``generate``'s ``messages`` extension.

A conversation is a non-empty list of ``{"role", "content"[, "name"]}`` objects:

- ``role``: ``"system"``, ``"developer"``, ``"user"`` or ``"assistant"``.  ``"tool"`` and
  ``"function"`` (tool calling) are refused by name: wsserve's models call no tools.
- ``content``: a string, or a non-empty array of text parts ``{"type": "text", "text": ...}``
  (joined, as OpenAI joins them); other part types (images, audio, files) are refused by name,
  and so is an empty array (OpenAI refuses it too; it is not read as ``""``).  An ``assistant``
  message may have ``null`` content (read as ``""``).
- ``name``: optional string, passed on to the model's template.

A message carrying tool calling or audio (non-empty ``tool_calls``, ``function_call``, ``audio``,
``tool_call_id``) is refused by name rather than read as text; other fields, and those when null
or empty (an SDK's response message sent back as is), are ignored.  Sizes are bounded by the
request's own bound (``max_message_bytes`` on the WebSocket, the HTTP body limit).

The model turns the conversation into its prompt (its ``chat_prompt``,
:meth:`wsserve.generation.model.TokenModelAdapter.chat_prompt`); a model without one refuses
chat requests, as vLLM does for a tokenizer without a chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .jsontypes import json_type

__all__ = ["ChatMessage", "ROLES", "parse_messages", "text_parts"]

#: Roles a message may have.
ROLES = ("system", "developer", "user", "assistant")

_REFUSED_ROLES = {"tool": "tool results", "function": "function results"}
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


def parse_messages(value: Any, field: str = "messages") -> tuple[ChatMessage, ...]:
    """Check a decoded ``messages`` value; raises ``BadRequest`` naming ``field`` and the message
    index (``'messages[2].content'``) of the first problem."""
    if type(value) is not list:
        raise BadRequest(f"field '{field}' must be an array of messages, got {json_type(value)}")
    if not value:
        raise BadRequest(f"field '{field}' must hold at least one message")
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if type(msg) is not dict:
            raise BadRequest(f"'{where}' must be an object with 'role' and 'content', got {json_type(msg)}")
        role = msg.get("role")
        if type(role) is not str:
            raise BadRequest(f"'{where}.role' must be a string, got {json_type(role)}")
        if role not in ROLES:
            if role in _REFUSED_ROLES:
                raise BadRequest(f"'{where}.role' {role!r} is not supported: {_REFUSED_ROLES[role]} need tool "
                                 "calling, which wsserve's models do not do")
            raise BadRequest(f"'{where}.role' must be one of {', '.join(ROLES)}; got {role[:64]!r}")
        for key in _REFUSED_FIELDS:
            if msg.get(key) not in (None, [], {}):
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
        out.append(ChatMessage(role, content, name))
    return tuple(out)


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
