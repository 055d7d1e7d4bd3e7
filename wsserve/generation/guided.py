"""Guided choice (vLLM's ``guided_choice``): a generation constrained to be exactly one of a
few strings, sans-I/O.

- :class:`Vocabulary` - a model's token texts indexed once (per scheduler, at its first
  guided request): each non-empty text's ids, and every prefix of a token text.
- :class:`ChoiceSet` - one request's choices, compiled against a vocabulary: which position
  of each choice the model's tokens can still spell to its end (a choice they cannot spell
  at all is refused), and, memoized per state (the text generated so far), the token ids a
  sequence may generate next.  Shared by the request's sequences (``n``).
- :class:`ChoiceGuide` - one sequence's progress: its text so far, :meth:`~ChoiceGuide.allowed`
  ids for its next token, :meth:`~ChoiceGuide.advance` after each token.

The rule, at each step: a token may be generated only if its text is not empty and the text
generated so far followed by it is a prefix of a choice that the vocabulary can still complete
from there (so a sequence never reaches a dead end).  The end is the one
:mod:`.structured` gives a regular expression (``guided_choice`` is the alternation of its
choices, as vLLM compiles it): when the text equals a choice that no longer choice extends, the
generation ends (finish reason ``stop``); when it equals a choice that a longer one extends
(``["yes", "yes please"]`` at ``yes``), the step is unmasked and the model decides, as it would
with an end-of-sequence token: a token that goes on along a choice is generated, any other ends
the text there (that token is not generated).  Nothing here reads a clock or awaits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import BadRequest
from ..jsontypes import shown
from .structured import CONTINUE, END_AFTER, END_BEFORE

__all__ = ["ChoiceGuide", "ChoiceSet", "Vocabulary"]


class Vocabulary:
    """A vocabulary's token texts indexed for guided decoding (``id_to_text[i]`` is token ``i``'s
    text).  Tokens with empty text are left out: they are never allowed.  Memory: one set entry
    per prefix of a token text (the vocabulary's characters, at most)."""

    __slots__ = ("ids", "prefixes", "size")

    def __init__(self, id_to_text: Sequence[str]) -> None:
        by_text: dict[str, list[int]] = {}
        prefixes: set[str] = set()
        for i, text in enumerate(id_to_text):
            if text:
                by_text.setdefault(text, []).append(i)
                prefixes.update(text[:n] for n in range(1, len(text) + 1))
        #: non-empty token text -> its ids, ascending (several tokens may share a text)
        self.ids: dict[str, tuple[int, ...]] = {t: tuple(ids) for t, ids in by_text.items()}
        #: every non-empty prefix of a token text (a walk along a choice stops outside it)
        self.prefixes: frozenset[str] = frozenset(prefixes)
        self.size = len(id_to_text)

    def tokens_at(self, text: str, start: int) -> list[tuple[int, tuple[int, ...]]]:
        """``(length, ids)`` of every token whose text ``text`` holds at ``start``, shortest first."""
        out = []
        prefixes, ids = self.prefixes, self.ids
        end = start + 1
        while end <= len(text) and text[start:end] in prefixes:
            found = ids.get(text[start:end])
            if found is not None:
                out.append((end - start, found))
            end += 1
        return out


class ChoiceSet:
    """A request's choices compiled against ``vocab`` (see the module docstring).

    Raises :class:`~wsserve.errors.BadRequest` naming ``guided_choice`` when a choice cannot be
    written with the vocabulary's tokens (a character the model cannot generate).  Compiling
    (on the event loop, at admission) is one set lookup per distinct character of a choice when
    each of its characters is a token of its own (charlm's, and any vocabulary with single
    characters: 64 choices of 256 characters in ~0.3 ms), else a walk of each position along the
    token texts it begins (a few set lookups a character, ~20 ms at that size); :meth:`allowed`
    computes a state's ids once."""

    __slots__ = ("choices", "_ends", "_memo", "_spellable", "_vocab")

    def __init__(self, choices: tuple[str, ...], vocab: Vocabulary) -> None:
        self.choices = choices
        self._vocab = vocab
        self._ends = frozenset(choices)
        #: per choice: ok[i] is True when its text from position i can be spelled to its end
        self._spellable: dict[str, list[bool]] = {}
        singles = vocab.ids
        for choice in dict.fromkeys(choices):
            if all(c in singles for c in set(choice)):  # each character is a token: spellable from anywhere
                self._spellable[choice] = [True] * (len(choice) + 1)
                continue
            ok = [False] * len(choice) + [True]
            for i in range(len(choice) - 1, -1, -1):
                ok[i] = any(ok[i + n] for n, _ in vocab.tokens_at(choice, i))
            if not ok[0]:
                raise BadRequest(f"field 'guided_choice' holds {shown(choice, 60)}, which the model's tokens "
                                 "cannot write (a character outside its vocabulary)")
            self._spellable[choice] = ok
        self._memo: dict[str, np.ndarray | None] = {}

    def allowed(self, text: str) -> np.ndarray:
        """``[A]`` int64 ids (ascending, A >= 1) a sequence whose text so far is ``text`` (a
        reachable state: a prefix of a choice that can be completed, or a whole choice that a
        longer one extends) may generate next.  Raises ``ValueError`` at any other text."""
        ids = self.continuations(text)
        if ids is None:  # not a reachable state: the caller fed a token this set never allowed
            raise ValueError(f"no choice continues {text!r}")
        return ids

    def continuations(self, text: str) -> np.ndarray | None:
        """:meth:`allowed`'s ids, or None when no choice goes on past ``text`` (memoized)."""
        if text in self._memo:
            return self._memo[text]
        ids = self._memo[text] = self._compute(text)
        return ids

    def _compute(self, text: str) -> np.ndarray | None:
        pos = len(text)
        found: set[int] = set()
        for choice, ok in self._spellable.items():
            if len(choice) > pos and ok[pos] and choice.startswith(text):
                for n, ids in self._vocab.tokens_at(choice, pos):
                    if ok[pos + n]:
                        found.update(ids)
        return np.array(sorted(found), np.int64) if found else None

    def complete(self, text: str) -> bool:
        """True when ``text`` is one of the choices (the generation ends there)."""
        return text in self._ends


class ChoiceGuide:
    """One sequence's progress through a :class:`ChoiceSet` (the module docstring's rule, with
    :class:`~.structured.RegexGuide`'s interface).  Call order: :meth:`allowed` for the next
    step's mask, then :meth:`advance` with the token generated, until it returns
    :data:`~.structured.END_AFTER` or :data:`~.structured.END_BEFORE`."""

    __slots__ = ("choices", "text")

    def __init__(self, choices: ChoiceSet) -> None:
        self.choices = choices
        self.text = ""

    def allowed(self) -> np.ndarray | None:
        """The ids the next token may take (see :meth:`ChoiceSet.allowed`), or None when the text
        is a choice that a longer one extends: the step is unmasked and the model decides."""
        if self.choices.complete(self.text):
            return None
        return self.choices.allowed(self.text)

    def advance(self, token: int, token_text: str) -> int:
        """Apply the generated ``token`` (its text ``token_text``): :data:`~.structured.CONTINUE`;
        :data:`~.structured.END_AFTER` when the text now equals a choice that nothing extends;
        :data:`~.structured.END_BEFORE` when the text was a choice and the model chose a token
        that goes on along none (the end there; the text is unchanged).  Raises ``ValueError`` (the
        text unchanged) for a token the mask did not allow (a model whose logits left every allowed
        token -inf)."""
        choices = self.choices
        if choices.complete(self.text):
            ids = choices.continuations(self.text)
            if ids is None or token not in ids:
                return END_BEFORE
        text = self.text + token_text
        going_on = choices.continuations(text) is not None  # (memoized: the next allowed() reads it)
        if not token_text or (not going_on and not choices.complete(text)):
            raise ValueError(f"token {token} was not allowed after {self.text!r}")
        self.text = text
        return CONTINUE if going_on else END_AFTER
