"""Structured outputs (vLLM's ``guided_regex`` and ``guided_json``): a generation constrained to
match a regular expression, sans-I/O, on `outlines-core <https://pypi.org/project/outlines-core/>`_
(the ``wsserve[structured]`` extra).

- :class:`GuidePattern` - what a request asks for: a regex, or a JSON Schema (its JSON text),
  and the wire field it came from (named in refusals).  The cache key.
- :func:`build_index` - the pattern compiled against a model's token texts into a
  :class:`RegexIndex`: outlines-core's token-level DFA, with the states from which no match can
  be reached pruned.  Costly (milliseconds to seconds): the engine runs it in a thread.
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

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import BadRequest

__all__ = ["CONTINUE", "END_AFTER", "END_BEFORE", "MAX_GUIDE_TRANSITIONS", "MAX_PATTERN_SIZE", "GuidePattern", "IndexCache",
           "END_MARK", "RegexGuide", "RegexIndex", "build_index", "outlines_vocabulary"]

#: A built index holds at most this many (state, token) transitions; a larger one is refused.
MAX_GUIDE_TRANSITIONS = 1_000_000
#: A pattern whose counted repetitions would spell out more than this many atoms (nested counts
#: multiply: ``(a{100}){100}`` is 10,000) is refused before outlines-core sees it: its automaton
#: grows with that size, and nothing bounds its memory once the build starts.
MAX_PATTERN_SIZE = 50_000

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


#: The end marker: the pattern is compiled as ``(?:pattern)`` followed by this character, and the
#: vocabulary has one more token, this character (id ``V + 1``, never sampled), so a state is final
#: when that token leads to outlines-core's final state.  (outlines-core drops the transitions
#: from a state that already matches to one that does not, e.g. the "b" of ``a(bc)?`` after "a";
#: with the marker no state within the pattern matches, so every transition is kept.)
END_MARK = "\U0010FFFF"
_END_MARK_RE = r"\x{10FFFF}"


def outlines_vocabulary(id_to_text: Sequence[str]) -> Any:
    """outlines-core's ``Vocabulary`` of a model's token texts (empty ones, and any holding
    :data:`END_MARK`, left out: never allowed), with its end-of-sequence id ``V =
    len(id_to_text)`` and :data:`END_MARK` as token ``V + 1``: both outside the model's ids, so
    never sampled (wsserve's models have no end-of-sequence token)."""
    from outlines_core import Vocabulary

    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(id_to_text):
        if text and END_MARK not in text:
            by_text.setdefault(text, []).append(i)
    by_text[END_MARK] = [len(id_to_text) + 1]
    return Vocabulary(len(id_to_text), by_text)


class RegexIndex:
    """A pattern compiled against a vocabulary: per live state (one from which the text can still
    become a match), the ids that lead to a live state and where each leads; which states match.
    Immutable after :func:`build_index`; shared by every sequence that uses the pattern."""

    __slots__ = ("initial", "finals", "_allowed", "_next", "transitions")

    def __init__(self, initial: int, finals: frozenset[int], nexts: dict[int, dict[int, int]]) -> None:
        self.initial = initial
        self.finals = finals
        #: state -> {token id: next state}, live states and live targets only
        self._next = nexts
        #: state -> its allowed ids (ascending int64), or None at a final state no token extends
        self._allowed = {s: (np.array(sorted(t), np.int64) if t else None) for s, t in nexts.items()}
        self.transitions = sum(len(t) for t in nexts.values())

    def allowed(self, state: int) -> np.ndarray | None:
        """``[A]`` ids (ascending, A >= 1) that may follow ``state``; None when none may (a final state)."""
        return self._allowed[state]

    def next_state(self, state: int, token: int) -> int | None:
        """The state after ``token``, or None when ``token`` does not continue a match."""
        return self._next[state].get(token)


def build_index(pattern: GuidePattern, vocabulary: Any, *, max_transitions: int = MAX_GUIDE_TRANSITIONS
                ) -> RegexIndex:
    """Compile ``pattern`` (a JSON Schema through outlines-core's ``build_regex_from_schema``)
    against ``vocabulary`` (:func:`outlines_vocabulary`).  Raises
    :class:`~wsserve.errors.BadRequest` naming the pattern's field when outlines-core refuses it
    (its message quoted), when the index would hold more than ``max_transitions`` transitions,
    or when no token can begin a match (nor is the empty text one that a token extends); the
    error's ``param`` attribute is the field's name."""

    try:
        return _build(pattern, vocabulary, max_transitions)
    except BadRequest as exc:
        exc.param = pattern.name  # type: ignore[attr-defined]  # the field (OpenAI's error envelope shows it)
        raise


def _build(pattern: GuidePattern, vocabulary: Any, max_transitions: int) -> RegexIndex:
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    name = pattern.name
    regex = pattern.text
    if pattern.kind == "json":
        try:
            regex = build_regex_from_schema(pattern.text)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"field {name!r}: outlines-core cannot use this JSON Schema: {exc}") from None
    size = pattern_size(regex)
    if size > MAX_PATTERN_SIZE:
        raise BadRequest(f"field {name!r}: the pattern's counted repetitions spell out about {size} atoms; at most "
                         f"{MAX_PATTERN_SIZE} (smaller {{n,m}} counts)")
    wrapped = f"(?:{regex}){_END_MARK_RE}"
    try:
        index = Index(wrapped, vocabulary)
    except (ValueError, TypeError) as exc:
        message = str(exc).replace(wrapped, regex)
        raise BadRequest(f"field {name!r}: outlines-core cannot use this pattern: {_short(message)}") from None
    v = vocabulary.get_eos_token_id()  # the model's ids are below it; v + 1 is END_MARK
    raw: dict[int, dict[int, int]] = index.get_transitions()
    total = sum(len(t) for t in raw.values())
    if total > max_transitions:
        raise BadRequest(f"field {name!r}: the pattern compiles to {total} token transitions against this model's "
                         f"vocabulary; at most {max_transitions} (a simpler pattern)")
    accepted = frozenset(index.get_final_states())
    finals = frozenset(s for s, row in raw.items() if row.get(v + 1) in accepted)
    edges = {s: {t: n for t, n in row.items() if t < v} for s, row in raw.items()}
    live = _live_states(edges, finals)
    initial = index.get_initial_state()
    nexts = {s: {t: n for t, n in edges[s].items() if n in live} for s in live}
    if initial not in live or not nexts[initial]:
        raise BadRequest(f"field {name!r}: no text the model's tokens can write matches this pattern "
                         "(it admits no token at the start)")
    return RegexIndex(initial, finals, nexts)


def pattern_size(regex: str) -> int:
    """An upper estimate of the atoms ``regex`` spells out once its counted repetitions are
    unrolled: each atom (a character, an escape, a class ``[...]``) is 1, a group the sum of its
    branches' sizes, ``x{n}`` / ``x{n,m}`` / ``x{n,}`` multiply ``x`` by ``max(n, m)`` (``n + 1``).
    A cheap scan of the text (no parse); malformed patterns are outlines-core's to refuse."""
    stack: list[tuple[int, int]] = []  # per open group: (size before it, size of its earlier branches)
    total = 0  # the current group's size so far
    last = 0  # the size of the last atom or group (what a count multiplies)
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
            if regex[i - 1:i] in ("x", "p", "P", "u") and regex[i:i + 1] == "{":
                i = regex.find("}", i) + 1 or n
            last = 1
            total += 1
            continue
        if c == "[":
            j = i + 1
            if regex[j:j + 1] == "^":
                j += 1
            if regex[j:j + 1] == "]":
                j += 1
            while j < n and regex[j] != "]":
                j += 2 if regex[j] == "\\" else 1
            i = j + 1
            last = 1
            total += 1
            continue
        if c == "(":
            stack.append((total, 0))
            total = 0
        elif c == "|" and stack:  # (at the top level the branches simply add up)
            before, branches = stack[-1]
            stack[-1] = (before, branches + total)
            total = 0
        elif c == ")" and stack:
            before, branches = stack.pop()
            last = branches + total
            total = before + last
        elif c == "{":
            j = regex.find("}", i)
            counts = regex[i + 1:j].split(",") if j > 0 else []
            if counts and all(x.strip().isdigit() or x.strip() == "" for x in counts) and counts[0].strip():
                low = int(counts[0])
                high = int(counts[1]) if len(counts) > 1 and counts[1].strip() else low + (len(counts) > 1)
                factor = max(low, high, 1)
                total += last * (factor - 1)
                last *= factor
                i = j + 1
                continue
            last = 1
            total += 1
        elif c not in "*+?)|":
            last = 1
            total += 1
        i += 1
    while stack:
        before, branches = stack.pop()
        total = before + branches + total
    return total


def _live_states(raw: dict[int, dict[int, int]], finals: frozenset[int]) -> set[int]:
    """The states from which a final state can be reached (a reverse walk from the finals)."""
    back: dict[int, list[int]] = {}
    for s, row in raw.items():
        for n in row.values():
            back.setdefault(n, []).append(s)
    live = set(finals)
    todo = deque(finals)
    while todo:
        for s in back.get(todo.popleft(), ()):
            if s not in live:
                live.add(s)
                todo.append(s)
    return live


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


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

