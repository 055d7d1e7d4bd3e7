"""Structured outputs (vLLM's ``guided_regex`` and ``guided_json``): a generation constrained to
match a regular expression, sans-I/O, on `outlines-core <https://pypi.org/project/outlines-core/>`_
(the ``wsserve[structured]`` extra).

- :class:`GuidePattern` - what a request asks for: a regex, or a JSON Schema (its JSON text),
  and the wire field it came from (named in refusals).  The cache key.
- :func:`build_index` - the pattern compiled against a model's token texts into a
  :class:`RegexIndex`: outlines-core's token-level DFA, with the states from which no match can
  be reached pruned (:mod:`.guide_compile`).  Costly, unboundedly so for a hostile pattern: the
  engine compiles in a child process with hard limits (:mod:`.guide_sandbox`) and makes the index
  with :meth:`RegexIndex.from_tables`, which checks what the child sent.
- :class:`RegexGuide` - one sequence's DFA state: :meth:`~RegexGuide.allowed` ids for its
  next token, :meth:`~RegexGuide.advance` after each token.
- :class:`IndexCache` - a bounded LRU of built indexes (one per engine, so per model).

The end rule.  wsserve's models have no end-of-sequence token, so the guide decides where a
generation ends, the way the model would choose to:

- at a state where the text does not match yet, the next token is chosen among the tokens that
  keep a match reachable (every other logit is ``-inf``);
- at a state where the text matches and no token can extend it, the generation ends (``stop``)
  right after the token that got there;
- at a state where the text matches and tokens may extend it, the row is sampled (or argmaxed)
  over the whole vocabulary, unmasked, with the same noise it would get anyway: if the model's
  choice is a token that extends the match, it is generated; if it is any other token, the
  generation ends there with ``stop`` (that token is not generated: all the mass the mask would
  have cut is the "end").

Each row's choice depends only on its own logits and noise, so the rule is deterministic and
the same alone or batched.  ``max_tokens`` still ends a generation with ``length`` (its text is
then a prefix of a match).  Nothing here reads a clock or awaits.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import BadRequest
from .guide_compile import (
    END_MARK,
    MAX_GUIDE_TRANSITIONS,
    MAX_PATTERN_SIZE,
    GuideTables,
    PatternRefused,
    compile_tables,
    outlines_vocabulary,
    pattern_size,
)

__all__ = ["CONTINUE", "END_AFTER", "END_BEFORE", "MAX_GUIDE_TRANSITIONS", "MAX_PATTERN_SIZE", "GuidePattern",
           "IndexCache", "END_MARK", "RegexGuide", "RegexIndex", "build_index", "outlines_vocabulary",
           "pattern_size"]

#: :meth:`RegexGuide.advance` outcomes: go on; end (``stop``) after this token; end (``stop``)
#: instead of this token (it is not generated).
CONTINUE, END_AFTER, END_BEFORE = 0, 1, 2

@dataclass(frozen=True, slots=True)
class GuidePattern:
    """A request's constraint: ``kind`` ``"regex"`` (``text`` is the regex) or ``"json"``
    (``text`` is a JSON Schema's JSON text); ``field`` is the wire field it came from."""

    kind: Literal["regex", "json"]
    text: str
    field: str = ""

    @classmethod
    def of(cls, params: Any) -> GuidePattern | None:
        """The pattern a :class:`~wsserve.protocol.GenerationParams` asks for, or None."""
        if params.guided_regex:
            return cls("regex", params.guided_regex, params.guided_field)
        if params.guided_json:
            return cls("json", params.guided_json, params.guided_field)
        return None

    @property
    def key(self) -> tuple[str, str]:
        """The cache key (the field is only for messages)."""
        return (self.kind, self.text)

    @property
    def name(self) -> str:
        return self.field or ("guided_regex" if self.kind == "regex" else "guided_json")

    def refusal(self, message: str) -> BadRequest:
        """A ``BadRequest`` with ``message`` whose ``param`` attribute is the field's name (OpenAI's
        error envelope shows it)."""
        exc = BadRequest(message)
        exc.param = self.name  # type: ignore[attr-defined]
        return exc


class RegexIndex:
    """A pattern compiled against a vocabulary: per live state (one from which the text can still
    become a match), the ids that lead to a live state and where each leads; which states match.
    Immutable once made (:meth:`from_tables`); shared by every sequence that uses the pattern."""

    __slots__ = ("initial", "finals", "_offsets", "_tokens", "_targets", "transitions")

    @classmethod
    def from_tables(cls, tables: GuideTables, vocab_size: int, *,
                    max_transitions: int = MAX_GUIDE_TRANSITIONS) -> RegexIndex:
        """The index of ``tables`` (:func:`~.guide_compile.compile_tables`, maybe from a child
        process), checked first: raises ``ValueError`` unless the arrays have the documented
        dtypes and shapes, at most ``max_transitions`` transitions, ids in ``[0, vocab_size)``
        ascending per state, targets and ``initial`` among the states, and an allowed id at every
        state that does not match (and at the initial state).  The index keeps the arrays
        themselves (16 bytes a transition: an engine's cache of 64 indexes of 1,000,000
        transitions holds ~1 GiB; Python dicts of them held ~90 bytes a transition)."""
        final, offsets, tokens, targets = tables.final, tables.offsets, tables.tokens, tables.targets
        if not all(type(a) is np.ndarray for a in (final, offsets, tokens, targets)):
            raise ValueError("the tables are not arrays")
        if final.dtype != np.bool_ or any(a.dtype != np.int64 for a in (offsets, tokens, targets)):
            raise ValueError("the tables' dtypes are wrong")
        s, t = final.shape[0] if final.ndim == 1 else -1, tokens.shape[0] if tokens.ndim == 1 else -1
        if s < 1 or offsets.shape != (s + 1,) or t < 0 or targets.shape != (t,) or t > max_transitions:
            raise ValueError("the tables' shapes are wrong")
        counts = np.diff(offsets)
        if offsets[0] != 0 or offsets[-1] != t or (counts < 0).any():
            raise ValueError("the offsets are not a partition of the transitions")
        if t and (tokens.min() < 0 or tokens.max() >= vocab_size or targets.min() < 0 or targets.max() >= s):
            raise ValueError("a token id or a target state is out of range")
        ascending = np.diff(tokens) > 0
        ascending[offsets[1:-1][(offsets[1:-1] > 0) & (offsets[1:-1] < t)] - 1] = True  # state boundaries
        if not ascending.all():
            raise ValueError("a state's token ids are not strictly ascending")
        if type(tables.initial) is not int or not 0 <= tables.initial < s or counts[tables.initial] == 0:
            raise ValueError("the initial state is out of range or admits no token")
        if (counts[~final] == 0).any():
            raise ValueError("a state that does not match admits no token")
        self = cls.__new__(cls)
        self.initial = tables.initial
        self.finals = frozenset(np.flatnonzero(final).tolist())
        #: state s allows tokens[offsets[s]:offsets[s + 1]] (ascending), leading to targets[...] (live states only)
        self._offsets, self._tokens, self._targets = (np.array(a) for a in (offsets, tokens, targets))  # own copies
        for a in (self._offsets, self._tokens, self._targets):
            a.flags.writeable = False
        self.transitions = t
        return self

    def allowed(self, state: int) -> np.ndarray | None:
        """``[A]`` ids (ascending, A >= 1) that may follow ``state``; None when none may (a final state)."""
        a, b = self._offsets[state:state + 2].tolist()
        return self._tokens[a:b] if b > a else None

    def next_state(self, state: int, token: int) -> int | None:
        """The state after ``token``, or None when ``token`` does not continue a match."""
        a, b = self._offsets[state:state + 2].tolist()
        k = a + int(np.searchsorted(self._tokens[a:b], token))
        return int(self._targets[k]) if k < b and self._tokens[k] == token else None


def build_index(pattern: GuidePattern, vocabulary: Any, *, max_transitions: int = MAX_GUIDE_TRANSITIONS
                ) -> RegexIndex:
    """Compile ``pattern`` against ``vocabulary`` (:func:`outlines_vocabulary`) in this process
    (:func:`~.guide_compile.compile_tables`: unbounded time and memory on a hostile pattern; the
    server compiles in a child process instead, :mod:`.guide_sandbox`).  Raises
    :class:`~wsserve.errors.BadRequest` naming the pattern's field when it is refused; the
    error's ``param`` attribute is the field's name."""
    try:
        tables = compile_tables(pattern.kind, pattern.text, pattern.name, vocabulary, max_transitions)
    except PatternRefused as exc:
        raise pattern.refusal(str(exc)) from None
    return RegexIndex.from_tables(tables, vocabulary.get_eos_token_id(), max_transitions=max_transitions)


class RegexGuide:
    """One sequence's progress through a :class:`RegexIndex` (the module docstring's end rule).
    Call order: :meth:`allowed` for the next step's mask, then :meth:`advance` with the token
    generated, until it returns :data:`END_AFTER` or :data:`END_BEFORE`."""

    __slots__ = ("index", "state")

    def __init__(self, index: RegexIndex) -> None:
        self.index = index
        self.state = index.initial

    def allowed(self) -> np.ndarray | None:
        """The ids the next token may take, or None when the row is sampled unmasked (the text
        matches and may go on: a token outside the allowed ones ends it)."""
        if self.state in self.index.finals:
            return None
        return self.index.allowed(self.state)

    def advance(self, token: int, text: str) -> int:
        """Apply the generated ``token``: :data:`CONTINUE`, :data:`END_AFTER` (the text now
        matches and nothing may extend it) or :data:`END_BEFORE` (the text matched and the model
        chose a token that does not extend it: the end; the state is unchanged)."""
        nxt = self.index.next_state(self.state, token)
        if nxt is None:
            if self.state in self.index.finals:
                return END_BEFORE
            raise ValueError(f"token {token} was not allowed at state {self.state}")
        self.state = nxt
        if nxt in self.index.finals and self.index.allowed(nxt) is None:
            return END_AFTER
        return CONTINUE


class IndexCache:
    """A bounded LRU of built :class:`RegexIndex` es keyed by :attr:`GuidePattern.key`
    (``max_entries`` None: unbounded, 0: nothing kept)."""

    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int | None = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], RegexIndex] = OrderedDict()

    def get(self, key: tuple[str, str]) -> RegexIndex | None:
        index = self._entries.get(key)
        if index is not None:
            self._entries.move_to_end(key)
        return index

    def put(self, key: tuple[str, str], index: RegexIndex) -> None:
        self._entries[key] = index
        self._entries.move_to_end(key)
        while self.max_entries is not None and len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

