"""The interface a generative model implements, and the adapter that checks it: :class:`TokenModelAdapter`.

Every generative model — the built-in ``charlm``, a repository ``model.py``
whose ``task`` is ``"generation"``, an object passed to ``Server(models=...)`` —
is served through this one adapter, so all get the same token streaming,
stop strings, sampling, cancellation, fair share and batching invariance.

The interface (batch-first; ``V`` is the vocabulary size)::

    class Model:
        task = "generation"
        vocabulary: Sequence[str]      # token id -> its text; 1 <= V <= 1_000_000
        context_len: int               # the model sees the last context_len tokens; 1..4096
        prompt_chars: int              # optional: encode() is given at most the prompt's last
                                       #   prompt_chars characters (default 16 * context_len)
        def encode(self, prompt: str) -> Sequence[int]      # prompt -> token ids in [0, V); how
                                       #   many ids is the prompt's token count (OpenAI's usage)
        def logits(self, contexts):    # [B, context_len] int64 -> [B, V] float next-token logits
            ...
        def chat_prompt(self, messages) -> str   # optional: a conversation ([{"role", "content"
                                       #   [, "name"]}]) as the prompt the reply continues

``contexts`` row ``i`` holds sequence ``i``'s last ``context_len`` token ids,
left-padded with the id ``V`` (PAD) while shorter.  ``logits`` must be
*row-pure* (row ``i`` depends only on ``contexts[i]``, bit for bit, whatever
``B`` is): that is what makes output independent of batching.  It may be
called from a worker thread and must be thread-safe for reads.  Sampling
(greedy, temperature, top-k, seeds) and stop strings are the engine's.

The adapter checks the interface when it is built (types, bounds, one
``encode`` and one ``logits`` call, and one ``chat_prompt`` call if the model
has one), then every ``encode`` result (ids in range), every ``chat_prompt``
result (a string) and every ``logits`` batch (type and shape), raising with a
message naming the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..chat import ChatMessage
from ..errors import BadRequest, Internal
from ..models.base import ModelInfo, call_model_code

__all__ = ["TokenModelAdapter", "MAX_VOCABULARY", "MAX_CONTEXT_LEN", "UNKNOWN_FLOPS_PER_TOKEN"]

MAX_VOCABULARY = 1_000_000
MAX_CONTEXT_LEN = 4096
#: The cost of a token of a model that does not say (no ``flops_per_row``): "unknown", so its
#: steps run in a thread, off the event loop (as a predictive model.py's batches do).
UNKNOWN_FLOPS_PER_TOKEN = 1_000_000_000


class TokenModelAdapter:
    """A generative model, checked, in the shape the scheduler needs (a ``TokenModel``)."""

    def __init__(self, model: Any, *, name: str, info: ModelInfo | None = None,
                 flops_per_token: int | None = None) -> None:
        """``flops_per_token``: what a token costs (config.toml's ``flops_per_row``), else the
        model's own ``flops_per_row``, else :data:`UNKNOWN_FLOPS_PER_TOKEN`.  Raises
        ``ValueError`` naming the problem if ``model`` does not follow the interface."""
        self.model = model
        self.name = name
        vocabulary = getattr(model, "vocabulary", None)
        if vocabulary is None or isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence):
            raise ValueError(f"generative model {name!r} needs a vocabulary: a sequence of token texts")
        if not 1 <= len(vocabulary) <= MAX_VOCABULARY or not all(type(t) is str for t in vocabulary):
            raise ValueError(f"generative model {name!r}: vocabulary must hold 1..{MAX_VOCABULARY} strings")
        for i, t in enumerate(vocabulary):  # token texts go out in JSON frames: UTF-8 only
            if not t.isascii():
                try:
                    t.encode()
                except UnicodeEncodeError:
                    raise ValueError(f"generative model {name!r}: vocabulary entry {i} ({t!r}) is not valid "
                                     "Unicode (a lone surrogate); token texts are sent as UTF-8") from None
        k = getattr(model, "context_len", None)
        if type(k) is not int or not 1 <= k <= MAX_CONTEXT_LEN:
            raise ValueError(f"generative model {name!r}: context_len must be an integer in 1..{MAX_CONTEXT_LEN}, got {k!r}")
        for method in ("encode", "logits"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"generative model {name!r} has no {method}() method")
        chars = getattr(model, "prompt_chars", None)
        if chars is None:
            chars = 16 * k
        if type(chars) is not int or chars < 1:
            raise ValueError(f"generative model {name!r}: prompt_chars must be a positive integer, got {chars!r}")
        self.context_len: int = k
        self.vocab_size: int = len(vocabulary)
        self.pad_id: int = self.vocab_size
        self.id_to_text: tuple[str, ...] = tuple(vocabulary)
        self.prompt_chars = chars
        self._encode = model.encode
        self._logits = model.logits
        chat = getattr(model, "chat_prompt", None)
        if chat is not None and not callable(chat):
            raise ValueError(f"generative model {name!r}: chat_prompt must be a method, got {type(chat).__name__}")
        self._chat = chat
        self.info: ModelInfo = info if info is not None else model.info
        self._flops = flops_per_token if flops_per_token is not None else _own_flops(model, name)
        # One call of each, so a broken model fails at load time, not on the first request.
        self.encode_prompt("")
        self.logits(np.full((2, k), self.pad_id, dtype=np.int64))
        if chat is not None:
            try:
                self.chat_prompt((ChatMessage("user", "Hello"),))
            except (BadRequest, Internal) as exc:
                raise ValueError(exc.message) from None

    @property
    def chats(self) -> bool:
        """Whether the model has a chat template (``chat_prompt``)."""
        return self._chat is not None

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt for a conversation: the model's ``chat_prompt`` of the messages as dicts.

        Raises ``BadRequest`` when the model has no ``chat_prompt``, or refuses the conversation
        by raising ``ValueError`` (its message is the answer's: "a system message must come
        first"); ``Internal`` naming the model when it raises anything else or returns
        something other than a string."""
        if self._chat is None:
            raise BadRequest(f"model {self.name!r} has no chat template (no chat_prompt()): send a prompt "
                             "instead (POST /v1/completions, or generate with 'prompt')")
        try:
            prompt = call_model_code(self._chat, [m.as_dict() for m in messages])
        except ValueError as exc:
            raise BadRequest(f"model {self.name!r} refused the conversation: {exc}") from None
        except Exception as exc:
            raise Internal(f"model {self.name!r}: chat_prompt() raised {type(exc).__name__}: {exc}") from None
        if type(prompt) is not str:
            raise Internal(f"model {self.name!r}: chat_prompt() must return a string, got {type(prompt).__name__}")
        return prompt

    def initial_context(self, prompt: str) -> np.ndarray:
        """``[k]`` int64: the last ``k`` token ids of the (tail of the) prompt, left-padded with PAD."""
        return self.encode_prompt(prompt)[0]

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """``[n]`` int64: every token id ``encode()`` gives for the prompt's last ``prompt_chars``
        characters, checked (raises as :meth:`encode_prompt`)."""
        ids = self._encoded(prompt)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise self._bad_ids()
        return ids

    def _encoded(self, prompt: str) -> np.ndarray:
        """``encode()`` of the prompt's last ``prompt_chars`` characters as a flat int64 array (its
        ids not yet range-checked); ``Internal`` naming the model when it raises or is not flat."""
        try:
            ids = np.asarray(call_model_code(self._encode, prompt[-self.prompt_chars:]), dtype=np.int64)
        except Exception as exc:
            raise Internal(f"model {self.name!r}: encode() raised {type(exc).__name__}: {exc}") from None
        if ids.ndim != 1:
            raise self._bad_ids()
        return ids

    def _bad_ids(self) -> Internal:
        return Internal(f"model {self.name!r}: encode() must return token ids in [0, {self.vocab_size})")

    def encode_prompt(self, prompt: str) -> tuple[np.ndarray, int]:
        """``(context, n)``: :meth:`initial_context`, and ``n``, the number of token ids
        ``encode()`` gave for the prompt's last ``prompt_chars`` characters (the prompt's
        tokens, as OpenAI's ``usage.prompt_tokens`` counts them).  One ``encode()`` call.
        Raises :class:`~wsserve.errors.Internal` naming the model when ``encode()`` raises
        or returns something other than a flat sequence of ids in ``[0, V)``."""
        k = self.context_len
        ids = self._encoded(prompt)
        tail = ids[-k:].tolist()  # at most k ints: checked and padded in Python (cheaper than numpy calls)
        if tail and (min(tail) < 0 or max(tail) >= self.vocab_size) or (
                len(ids) > k and (ids.min() < 0 or ids.max() >= self.vocab_size)):
            raise self._bad_ids()
        return np.array([self.pad_id] * (k - len(tail)) + tail, dtype=np.int64), len(ids)

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """``[B, k]`` -> ``[B, V]`` float64, checked.  Raises ``ValueError`` on a bad result."""
        out = call_model_code(self._logits, contexts)
        if not isinstance(out, np.ndarray) or out.dtype.kind not in "fiu":
            raise ValueError(f"model {self.name!r}: logits() returned {type(out).__name__}, not a numeric array")
        if out.shape != (contexts.shape[0], self.vocab_size):
            raise ValueError(f"model {self.name!r}: logits() returned shape {list(out.shape)}, "
                             f"expected [{contexts.shape[0]}, {self.vocab_size}]")
        if out.dtype != np.float64 or not out.flags.c_contiguous:
            out = np.ascontiguousarray(out, dtype=np.float64)
        return out  # non-finite logits are not checked per step: they give unspecified (valid) token ids

    def flops_per_row(self) -> int:
        """Multiply-adds per generated token (what decides whether a step runs on the event loop)."""
        return self._flops

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if callable(close):
            close()


def _own_flops(model: Any, name: str) -> int:
    """The model's ``flops_per_row`` (an attribute or a method), else :data:`UNKNOWN_FLOPS_PER_TOKEN`.
    Raises ``ValueError`` for one that is not a positive integer."""
    value = getattr(model, "flops_per_row", None)
    if callable(value):
        value = value()
    if value is None:
        return UNKNOWN_FLOPS_PER_TOKEN
    if type(value) is not int or value < 1:
        raise ValueError(f"generative model {name!r}: flops_per_row must be a positive integer, got {value!r}")
    return value
