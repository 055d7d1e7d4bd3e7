"""The answer of a chat completion that makes tool calls (:mod:`wsserve.rest.tools`), in vLLM's
shapes, sans-I/O: :class:`ToolCallEncoder`.

- Not streamed: each choice's ``message`` is ``{"role": "assistant", "content": "",
  "tool_calls": [{"id": "chatcmpl-tool-<hex>", "type": "function", "function": {"name",
  "arguments"}}]}`` (``content`` ``""`` as vLLM's).  Named: one call whose ``arguments`` is the
  generated text (a prefix of the JSON when ``finish_reason`` is ``length``), ``finish_reason``
  as generated (``stop``: OpenAI's and vLLM's for a named choice).  ``"required"``: a call per
  complete element of the generated array, ``arguments`` its ``parameters`` as JSON text;
  ``finish_reason`` ``tool_calls`` when the array is complete (else as generated, ``length``:
  the element cut short is left out).
- Streamed: the role chunk, then ``delta.tool_calls`` chunks the openai SDK accumulates by
  ``index``: named, the call's first chunk carries ``index`` 0, ``id``, ``type``, ``function.name``
  and the first token as ``function.arguments``, each later token an ``arguments`` delta;
  ``"required"``, a whole call (``id``, ``type``, ``name``, ``arguments``) as soon as its element
  is complete, ``index`` counting the choice's calls.  A token that sends nothing (a
  ``"required"`` element not complete yet) sends its logprobs, when asked, with ``"delta": {}``.
  Then the ``finish_reason`` chunk, as above.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..generation.logprobs import TokenLogprobs
from .openai import ChatCompletionEncoder, Choice, CompletionEncoder, token_logprobs
from .tools import CallScanner, ToolChoice, tool_call_id

__all__ = ["ToolCallEncoder"]


class ToolCallEncoder(ChatCompletionEncoder):
    """:class:`~wsserve.rest.openai.ChatCompletionEncoder` for a request with a forced tool call
    (``choice``): the module docstring's shapes.  Keeps each streamed choice's progress."""

    __slots__ = ("_choice", "_started", "_scanners", "_sent")

    def __init__(self, completion_id: str, created: int, model: str, choice: ToolChoice) -> None:
        super().__init__(completion_id, created, model)
        self._choice = choice
        self._started: set[int] = set()  # named: the choices whose call's first chunk went out
        self._scanners: dict[int, CallScanner] = {}  # "required": each streamed choice's array so far
        self._sent: dict[int, int] = {}  # "required": calls sent per streamed choice

    def response(self, choices: list[Choice], prompt_tokens: int, tokens: int) -> bytes:
        """The whole (non-streamed) response, its choices in index order."""
        parts = []
        for index, (text, finish_reason, logged) in enumerate(choices):
            if self._choice.name is not None:
                calls = [(self._choice.name, text)]
            else:
                scanner = CallScanner()
                calls = scanner.feed(text)
                finish_reason = self._finish(finish_reason, scanner)
            message = {"role": "assistant", "content": "", "tool_calls": [
                {"id": tool_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}
                for name, arguments in calls]}
            logprobs = b"null" if logged is None else orjson.dumps({"content": token_logprobs(logged)})  # type: ignore[arg-type]
            parts.append(b'{"index":%d,"message":' % index + orjson.dumps(message) + b',"logprobs":' + logprobs
                         + b',"finish_reason":' + orjson.dumps(finish_reason) + b"}")
        return (self._head + b',"choices":[' + b",".join(parts) + b"],"
                + CompletionEncoder._usage(prompt_tokens, tokens) + b"}")

    def token_event(self, text: str, index: int = 0) -> bytes:
        """One streamed token of choice ``index``: its tool-call delta (maybe nothing: ``b""``)."""
        return self._delta(text, None, index)

    def token_event_logprobs(self, text: str, logprobs: TokenLogprobs, index: int = 0) -> bytes:
        """One streamed token of choice ``index`` with its ``logprobs``."""
        return self._delta(text, logprobs, index)

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> bytes:
        """The chunk carrying choice ``index``'s ``finish_reason`` (a named call that had no
        token yet gets its first chunk, with empty ``arguments``, before it)."""
        head = b""
        if self._choice.name is not None:
            if index not in self._started:
                head = self._delta("", None, index)
        else:
            finish_reason = self._finish(finish_reason, self._scanners.get(index) or CallScanner())
        return head + super().choice_end_event(finish_reason, index)

    @staticmethod
    def _finish(finish_reason: str, scanner: CallScanner) -> str:
        """A ``"required"`` choice's ``finish_reason``: ``tool_calls`` once its array is complete."""
        return "tool_calls" if finish_reason == "stop" and scanner.closed else finish_reason

    def _delta(self, text: str, logprobs: TokenLogprobs | None, index: int) -> bytes:
        """The chunk for ``text`` generated by choice ``index`` (``b""`` when it sends nothing)."""
        calls: list[dict[str, Any]]
        if self._choice.name is not None:
            if index in self._started:
                calls = [{"index": 0, "function": {"arguments": text}}]
            else:
                self._started.add(index)
                calls = [{"index": 0, "id": tool_call_id(), "type": "function",
                          "function": {"name": self._choice.name, "arguments": text}}]
        else:
            found = self._scanners.setdefault(index, CallScanner()).feed(text)
            sent = self._sent.get(index, 0)
            self._sent[index] = sent + len(found)
            calls = [{"index": sent + k, "id": tool_call_id(), "type": "function",
                      "function": {"name": name, "arguments": arguments}} for k, (name, arguments) in enumerate(found)]
        if not calls and logprobs is None:
            return b""
        delta = orjson.dumps({"tool_calls": calls} if calls else {})
        lp = b"null" if logprobs is None else orjson.dumps({"content": token_logprobs([(text, logprobs)])})
        return (self._token_prefix + b'%d,"delta":' % index + delta + b',"logprobs":' + lp
                + b',"finish_reason":null}]}\n\n')
