"""Log-probabilities of generated tokens (OpenAI's ``logprobs``), sans-I/O.

A generation that asks for ``logprobs = k`` (0 <= k <= :data:`~wsserve.protocol.MAX_LOGPROBS`)
gets, with each streamed token, the natural log of the probability the model gave that token
and the ``k`` likeliest tokens with theirs.  The probabilities are the model's own: the softmax
of its raw logits for the step, before penalties, ``logit_bias``, temperature, min-p, top-k or
top-p (vLLM's default, ``raw_logprobs``), so they do not depend on how the token was chosen.

- :class:`LogprobRows` - which rows of a batch want them and the largest ``k`` (per layout);
- :func:`step_logprobs` - one step's values for those rows, vectorised (float64);
- :class:`TokenLogprobs` - one token's record, as the sinks receive it (with the token's rank,
  as vLLM reports it);
- :func:`prompt_logprobs` - the same records for a prompt's own tokens (OpenAI's ``echo``
  with ``logprobs``: how likely the model finds a given text), each given the tokens before
  it (at most the model's context), the first one given nothing (``None``).

The ``k`` alternatives are ordered by log-probability, highest first; equal values by token
id, lowest first; the chosen token may or may not be among them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["LogprobRows", "PromptScore", "StepLogprobs", "TokenLogprobs", "prompt_logprobs", "step_logprobs"]

#: Up to this many logits in a step's rows with logprobs, the top ``k`` come from one stable sort.
_FULL_SORT_MAX = 4096

#: A prompt's scoring holds at most this many values: positions x (k + 1) (its records, ~100 bytes
#: each, so ~100 MiB); a longer prompt (or larger ``k``) is refused before anything is computed.
MAX_SCORED_VALUES = 1 << 20

#: Prompt positions scored per ``logits()`` call (bounds the ``[rows, V]`` arrays of one call).
PROMPT_ROWS_PER_CALL = 256


class TokenLogprobs(NamedTuple):
    """One generated token's log-probability and the ``k`` likeliest alternatives.

    ``top`` holds ``(token id, token text, logprob)`` triples, likeliest first (empty for k = 0).
    ``rank`` is the token's rank in the step's distribution, as vLLM counts it: the number of
    tokens at least as likely, itself included (1 for the likeliest; meaningless for a row of
    non-finite logits, whose ``logprob`` is NaN); ``None`` unless the step was asked for ranks
    (:attr:`LogprobRows.ranks`).
    """

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...]
    rank: int | None = None


@dataclass(frozen=True, slots=True)
class LogprobRows:
    """The rows of a batch that want log-probabilities: ``rows [L]`` row indices, ``k`` the
    largest number of alternatives any of them asked for, ``ranks`` whether any of them wants its
    token's rank (a comparison over each row's logits: computed only then).  Built once per layout."""

    rows: np.ndarray
    k: int
    ranks: bool = False


@dataclass(frozen=True, slots=True)
class StepLogprobs:
    """One step's log-probabilities of the :class:`LogprobRows`' rows, in their order:
    ``chosen [L]`` of the token each row got, ``top_ids [L, k]`` and ``top [L, k]`` the ``k``
    likeliest tokens of each row and theirs, ``ranks [L]`` the chosen tokens' ranks
    (:attr:`TokenLogprobs.rank`; None unless the spec asked for them)."""

    chosen: np.ndarray
    top_ids: np.ndarray
    top: np.ndarray
    ranks: np.ndarray | None = None


def step_logprobs(logits: np.ndarray, tokens: np.ndarray, spec: LogprobRows) -> StepLogprobs:
    """Log-probabilities of ``spec``'s rows of ``logits [B, V]`` (a model's raw output) for the
    chosen ``tokens [B]``.  Pure; thread-safe.  A row of non-finite logits gives NaN (its
    token was chosen by the sampler all the same)."""
    rows = spec.rows
    z = logits if len(rows) == len(logits) else logits.take(rows, axis=0)  # (rows ascending, distinct)
    if z.dtype != np.float64:
        z = z.astype(np.float64)
    n = len(rows)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite rows: NaN
        m = z.max(axis=1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))  # [L] log of the softmax's denominator
        picked = z[np.arange(n), tokens.take(rows)]
        chosen = picked - lse
        ranks = (z >= picked[:, None]).sum(axis=1) if spec.ranks else None  # vLLM's: tokens at least as likely
    k = min(spec.k, z.shape[1])
    if k == 0:
        return StepLogprobs(chosen, np.zeros((n, 0), np.int64), np.zeros((n, 0)), ranks)
    v = z.shape[1]
    # Highest first, ties by lowest id.  Small arrays: one stable sort of each row (one call).
    # Larger: the k largest by argpartition, ordered by (value, id); valid when exactly k values
    # reach the k-th (argpartition keeps any of the ids tied at the boundary): else the full sort.
    # (Measured here, V = 96: a sort of 1 row 2 us, the partition path ~20 us; 64 rows 133 vs 70.)
    neg = -z
    ids = None
    if z.size > _FULL_SORT_MAX and k < v // 4:
        part = np.argpartition(neg, k - 1, axis=1)[:, :k]  # [L, k] the k largest, unordered
        vals = np.take_along_axis(neg, part, axis=1)
        if bool(((neg <= vals.max(axis=1, keepdims=True)).sum(axis=1) == k).all()):
            ids = np.take_along_axis(part, np.lexsort((part, vals), axis=1), axis=1)
    if ids is None:
        ids = np.argsort(neg, axis=1, kind="stable")[:, :k]  # (NaN rows sort last, harmlessly)
    with np.errstate(invalid="ignore"):
        return StepLogprobs(chosen, ids, np.take_along_axis(z, ids, axis=1) - lse[:, None], ranks)


class PromptScore:
    """The records of a prompt's own tokens, computed one slice of at most
    :data:`PROMPT_ROWS_PER_CALL` positions at a time (so a driver can interleave a long prompt
    with generation steps):
    :meth:`advance` until :attr:`done`, then :attr:`records` (see :func:`prompt_logprobs`)."""

    __slots__ = ("ids", "k", "records", "_id_to_text", "_next", "_windows")

    def __init__(self, ids: np.ndarray, *, context_len: int, pad_id: int, id_to_text: Sequence[str], k: int) -> None:
        self.ids = np.asarray(ids, np.int64)
        self.k = k
        self._id_to_text = id_to_text
        n = len(self.ids)
        padded = np.concatenate((np.full(context_len, pad_id, np.int64), self.ids))
        # window i (1 <= i < n) = padded[i : i + context_len] = the context_len ids before token i
        self._windows = np.lib.stride_tricks.sliding_window_view(padded, context_len)[1:max(n, 1)]
        self.records: list[TokenLogprobs | None] = [None] if n else []
        self._next = 0  # the next window

    @property
    def done(self) -> bool:
        return self._next >= len(self._windows)

    @property
    def next_rows(self) -> int:
        """Positions :meth:`advance` computes next."""
        return min(PROMPT_ROWS_PER_CALL, len(self._windows) - self._next)

    def advance(self, logits: Callable[[np.ndarray], np.ndarray]) -> None:
        """Compute the next slice with the model's ``logits`` (blocking; raises what it raises,
        and then nothing changed)."""
        start = self._next
        contexts = np.ascontiguousarray(self._windows[start:start + PROMPT_ROWS_PER_CALL])
        targets = self.ids[start + 1:start + 1 + len(contexts)]
        values = step_logprobs(logits(contexts), targets, LogprobRows(np.arange(len(contexts)), self.k))
        itos = self._id_to_text
        top_ids = values.top_ids.tolist()
        top = values.top.tolist()
        self.records.extend(
            TokenLogprobs(token, itos[token], lp, tuple((t, itos[t], v) for t, v in zip(top_ids[j], top[j])))
            for j, (token, lp) in enumerate(zip(targets.tolist(), values.chosen.tolist())))
        self._next = start + len(contexts)


def prompt_logprobs(logits: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, *, context_len: int, pad_id: int,
                    id_to_text: Sequence[str], k: int) -> list[TokenLogprobs | None]:
    """The record of each token of a prompt given as ``ids [n]``: ``None`` for the first (nothing
    comes before it), then token ``i``'s log-probability given the ``context_len`` ids before it
    (left-padded with ``pad_id``, as a generation's first context is) and the ``k`` likeliest
    alternatives.  ``logits`` is the model's ``[B, context_len] -> [B, V]``, called on at most
    :data:`PROMPT_ROWS_PER_CALL` rows at a time.  Blocking (a thread, or the loop for a cheap
    model); raises whatever ``logits`` raises."""
    score = PromptScore(ids, context_len=context_len, pad_id=pad_id, id_to_text=id_to_text, k=k)
    while not score.done:
        score.advance(logits)
    return score.records
