"""Log-probabilities of generated tokens (OpenAI's ``logprobs``), sans-I/O.

A generation that asks for ``logprobs = k`` (0 <= k <= :data:`~wsserve.protocol.MAX_LOGPROBS`)
gets, with each streamed token, the natural log of the probability the model gave that token
and the ``k`` likeliest tokens with theirs.  The probabilities are the model's own: the softmax
of its raw logits for the step, before penalties, ``logit_bias``, temperature, min-p, top-k or
top-p (vLLM's default, ``raw_logprobs``), so they do not depend on how the token was chosen.

- :class:`LogprobRows` - which rows of a batch want them and the largest ``k`` (per layout);
- :func:`step_logprobs` - one step's values for those rows, vectorised (float64);
- :class:`TokenLogprobs` - one token's record, as the sinks receive it.

The ``k`` alternatives are ordered by log-probability, highest first; equal values by token
id, lowest first; the chosen token may or may not be among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["LogprobRows", "StepLogprobs", "TokenLogprobs", "step_logprobs"]


class TokenLogprobs(NamedTuple):
    """One generated token's log-probability and the ``k`` likeliest alternatives.

    ``top`` holds ``(token id, token text, logprob)`` triples, likeliest first (empty for k = 0).
    """

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...]


@dataclass(frozen=True, slots=True)
class LogprobRows:
    """The rows of a batch that want log-probabilities: ``rows [L]`` row indices, ``k`` the
    largest number of alternatives any of them asked for.  Built once per layout."""

    rows: np.ndarray
    k: int


@dataclass(frozen=True, slots=True)
class StepLogprobs:
    """One step's log-probabilities of the :class:`LogprobRows`' rows, in their order:
    ``chosen [L]`` of the token each row got, ``top_ids [L, k]`` and ``top [L, k]`` the ``k``
    likeliest tokens of each row and theirs."""

    chosen: np.ndarray
    top_ids: np.ndarray
    top: np.ndarray


def step_logprobs(logits: np.ndarray, tokens: np.ndarray, spec: LogprobRows) -> StepLogprobs:
    """Log-probabilities of ``spec``'s rows of ``logits [B, V]`` (a model's raw output) for the
    chosen ``tokens [B]``.  Pure; thread-safe.  A row of non-finite logits gives NaN (its
    token was chosen by the sampler all the same)."""
    rows = spec.rows
    z = logits.take(rows, axis=0).astype(np.float64, copy=False)  # [L, V] (take copies)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite rows: NaN
        z = z - z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))  # log-softmax
    chosen = z[np.arange(len(rows)), tokens.take(rows)]
    k = spec.k
    if k == 0:
        empty = np.zeros((len(rows), 0))
        return StepLogprobs(chosen, empty.astype(np.int64), empty)
    v = z.shape[1]
    k = min(k, v)
    # Highest first, ties by lowest id.  The k largest by argpartition, then ordered; if the
    # k-th value is tied, argpartition may have kept any of the tied ids: a stable full sort then.
    if k < v // 4:
        part = np.argpartition(-z, k - 1, axis=1)[:, :k]  # [L, k] the k largest, unordered
        vals = np.take_along_axis(z, part, axis=1)
        kth = vals.min(axis=1, keepdims=True)
        if int((z == kth).sum(axis=1).max()) <= 1:
            ids = np.take_along_axis(part, np.lexsort((part, -vals), axis=1), axis=1)
            return StepLogprobs(chosen, ids, np.take_along_axis(z, ids, axis=1))
    ids = np.argsort(-z, axis=1, kind="stable")[:, :k]  # (NaN rows sort last, harmlessly)
    return StepLogprobs(chosen, ids, np.take_along_axis(z, ids, axis=1))
