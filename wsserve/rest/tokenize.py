"""vLLM's tokenizer routes for generative models (``POST /tokenize``, ``POST /detokenize``), sans-I/O.

vLLM's OpenAI-compatible server answers them so that clients can count a prompt's tokens, check it
against the context, and map token ids to text; wsserve answers the same shapes:

- ``POST /tokenize`` takes ``{"model", "prompt"[, "add_special_tokens"][, "return_token_strs"]}``
  or the chat form ``{"model", "messages"[, "add_generation_prompt"][, "continue_final_message"]
  [, "add_special_tokens"][, "return_token_strs"]}`` and answers ``{"count", "max_model_len",
  "tokens", "token_strs"}`` (``token_strs`` null unless ``return_token_strs``).
- ``POST /detokenize`` takes ``{"model", "tokens": [ids]}`` and answers ``{"prompt": text}``.

What they mean for a wsserve model (:class:`~wsserve.generation.model.TokenModelAdapter`):

- ``tokens`` are the ids a generation gives the model for the prompt: ``encode()`` of the prompt's
  last ``prompt_chars`` characters (:meth:`~wsserve.generation.model.TokenModelAdapter.prompt_ids`),
  so ``count`` is the ``usage.prompt_tokens`` of ``/v1/completions`` for the same prompt, and a
  longer prompt is cut as a generation cuts it (the model never reads the rest).  That also bounds
  the work: ``encode()`` runs on the event loop, as it does when a generation is queued, on at
  most ``prompt_chars`` characters.  The chat form's prompt is the model's chat template of
  ``messages`` (``chat_prompt``), as ``/v1/chat/completions`` makes it, so its ``count`` is that
  route's ``usage.prompt_tokens``.
- ``token_strs``: each id's text in the model's ``vocabulary`` (vLLM gives the tokenizer's token
  strings; a wsserve vocabulary is text).
- ``max_model_len``: the model's ``context_len``, the number of tokens it reads at each step (a
  longer prompt or generation is not refused: the model reads its last ``context_len`` tokens).
- ``prompt`` of ``/detokenize``: the concatenation of the ids' vocabulary texts, so
  ``detokenize(tokenize(p))`` is the text the model reads of ``p`` (after whatever ``encode()``
  normalises or drops).  At most :data:`MAX_DETOKENIZE_TOKENS` ids, each an integer (a boolean is
  not) in ``[0, V)``; the refusal names the first bad one (``'tokens[3]'``).

Fields wsserve cannot honour are refused by name (``ParamError``, 400 with ``param``) rather than
ignored: ``add_special_tokens`` other than vLLM's default for the form (``true`` for a prompt,
``false`` for messages: a wsserve model has no special tokens to add or leave out, so the ids are
``encode()``'s, which is what those defaults give a generation), ``add_generation_prompt: false``
and ``continue_final_message: true`` (a model's ``chat_prompt`` makes only the prompt a reply
continues), ``chat_template``, ``tools`` and non-empty ``chat_template_kwargs`` or
``mm_processor_kwargs``, and token-id or list prompts.  ``model`` is required (as on
``/v1/completions``: a server serves several models).  Unknown fields are ignored, as on the
completions routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ..chat import ChatMessage, parse_messages
from ..errors import BadRequest
from ..jsontypes import described, json_type, shown
from .openai import ParamError, is_neutral, model_field

__all__ = ["MAX_DETOKENIZE_TOKENS", "Detokenize", "Tokenize", "detokenize", "parse_detokenize", "parse_tokenize",
           "tokenize"]

#: ``/detokenize`` takes at most this many ids (each checked, and its text copied, on the event loop).
MAX_DETOKENIZE_TOKENS = 65_536

#: Chat-form fields taken only with these values (vLLM's defaults, or "none"): name -> allowed values.
_CHAT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "add_generation_prompt": (True,),
    "continue_final_message": (False,),
    "add_special_tokens": (False,),
    "chat_template": (),
    "chat_template_kwargs": ({},),
    "mm_processor_kwargs": ({},),
    "tools": ([],),
}
_WHY = {
    "add_generation_prompt": "the model's chat_prompt() makes the prompt a reply continues, and only that",
    "continue_final_message": "the model's chat_prompt() makes the prompt a reply continues, and only that",
    "add_special_tokens": "wsserve's models have no special tokens to add or leave out; the ids are encode()'s, as "
                          "a generation gets them",
    "chat_template": "the model's own template applies",
    "chat_template_kwargs": "the model's own template applies",
    "mm_processor_kwargs": "wsserve's models take text only",
    "tools": "wsserve's models do not call tools",
}


class TokenizingModel(Protocol):
    """What the routes need of a served generative model (a ``TokenModelAdapter``)."""

    context_len: int
    vocab_size: int
    id_to_text: tuple[str, ...]

    def prompt_ids(self, prompt: str) -> Any:
        """``[n]`` int ids ``encode()`` gives for the prompt's last ``prompt_chars`` characters."""

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The model's chat template of ``messages``."""


@dataclass(frozen=True, slots=True)
class Tokenize:
    """A checked ``/tokenize`` request: a ``prompt``, or (the chat form) ``messages``."""

    model: str
    prompt: str | None
    messages: tuple[ChatMessage, ...] | None
    return_token_strs: bool


@dataclass(frozen=True, slots=True)
class Detokenize:
    """A checked ``/detokenize`` request: ``tokens`` are integers (their range is the model's)."""

    model: str
    tokens: list[int]


def parse_tokenize(obj: Any) -> Tokenize:
    """Check a decoded ``/tokenize`` body; raises ``BadRequest`` (a :class:`ParamError` naming the
    field) for the first problem."""
    model = model_field(obj)
    strs = _bool(obj, "return_token_strs", False)
    messages = obj.get("messages")
    prompt = obj.get("prompt")
    if messages is not None:
        if prompt is not None:
            raise ParamError("prompt", "send either 'prompt' or 'messages' (the chat form), not both")
        try:
            parsed = parse_messages(messages)
        except BadRequest as exc:
            raise ParamError("messages", exc.message) from None
        for name, allowed in _CHAT_NEUTRAL.items():
            value = obj.get(name)
            if value is not None and not is_neutral(value, allowed):
                raise ParamError(name, f"'{name}' is not supported other than {_shown_allowed(allowed)} "
                                       f"({_WHY[name]}); got {shown(value, 80)}")
        return Tokenize(model, None, parsed, strs)
    if type(prompt) is not str:
        if type(prompt) is list:
            raise ParamError("prompt", "'prompt' must be a string (one prompt: token-id and list prompts are not "
                                       "tokenized)")
        raise ParamError("prompt", f"'prompt' must be a string (or send 'messages'), got {json_type(prompt)}")
    special = obj.get("add_special_tokens")
    if special is not None and special is not True:
        raise ParamError("add_special_tokens", "'add_special_tokens' is not supported other than true "
                                               f"({_WHY['add_special_tokens']}); got {shown(special, 80)}")
    return Tokenize(model, prompt, None, strs)


def parse_detokenize(obj: Any) -> Detokenize:
    """Check a decoded ``/detokenize`` body: ``tokens`` an array of at most
    :data:`MAX_DETOKENIZE_TOKENS` integers (not booleans); raises :class:`ParamError` naming the
    field (and the first bad element's index)."""
    model = model_field(obj)
    tokens = obj.get("tokens")
    if type(tokens) is not list:
        raise ParamError("tokens", f"'tokens' must be an array of token ids, got {json_type(tokens)}")
    if len(tokens) > MAX_DETOKENIZE_TOKENS:
        raise ParamError("tokens", f"'tokens' holds {len(tokens)} ids; at most {MAX_DETOKENIZE_TOKENS} per request")
    for i, t in enumerate(tokens):
        if type(t) is not int:
            raise ParamError("tokens", f"'tokens[{i}]' must be an integer token id, got {described(t)}")
    return Detokenize(model, tokens)


def tokenize(model: TokenizingModel, req: Tokenize) -> bytes:
    """The ``/tokenize`` answer for ``req`` by ``model``: the ids it is given for the prompt (or for
    its template of the messages).  Raises what the model's methods raise: ``BadRequest`` naming
    ``messages`` (no template, or a refused conversation), ``Internal`` naming the model (its
    ``encode()`` or ``chat_prompt()`` failed)."""
    if req.messages is None:
        prompt = req.prompt or ""
    else:
        try:
            prompt = model.chat_prompt(req.messages)
        except BadRequest as exc:
            raise ParamError("messages", exc.message) from None
    ids: list[int] = model.prompt_ids(prompt).tolist()
    texts = model.id_to_text
    return orjson.dumps({"count": len(ids), "max_model_len": model.context_len, "tokens": ids,
                         "token_strs": [texts[i] for i in ids] if req.return_token_strs else None})


def detokenize(model: TokenizingModel, req: Detokenize) -> bytes:
    """The ``/detokenize`` answer: the ids' vocabulary texts joined.  Raises :class:`ParamError`
    naming the first id outside ``[0, V)``."""
    v = model.vocab_size
    for i, t in enumerate(req.tokens):
        if not 0 <= t < v:
            raise ParamError("tokens", f"'tokens[{i}]' is {t}; model vocabulary has {v} tokens "
                                       f"(ids 0 to {v - 1})")
    texts = model.id_to_text
    return orjson.dumps({"prompt": "".join([texts[t] for t in req.tokens])})


def _bool(obj: dict[str, Any], name: str, default: bool) -> bool:
    value = obj.get(name)
    if value is None:
        return default
    if type(value) is not bool:
        raise ParamError(name, f"'{name}' must be a boolean, got {json_type(value)}")
    return value


def _shown_allowed(allowed: tuple[Any, ...]) -> str:
    """How the allowed values read in a refusal: ``true``, ``{}``, or ``null`` for none."""
    return " or ".join(orjson.dumps(v).decode() for v in allowed) if allowed else "null"
