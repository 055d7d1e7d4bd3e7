"""Choosing the next token for a whole batch in one vectorized call (pure numpy).

Sampling uses the Gumbel-max trick: ``argmax(logits / T + G)`` with ``G`` i.i.d.
standard Gumbel noise is a sample from ``softmax(logits / T)`` (exact with exact
noise; the float32 noise of small vocabularies, :func:`gumbel_blocks`, is within
about 1e-7 of it).  The noise comes from each request's own generator, drawn in
fixed blocks, so a request's tokens depend only on its seed and its logits -
never on batch size or neighbours.  Every batch operation here is elementwise or
per row (division, sort, argmax), so a row's result is bitwise independent of
the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from .params import MIN_TEMPERATURE

__all__ = [
    "FLOAT32_NOISE_MAX_VOCAB",
    "NOISE_BLOCK",
    "NOISE_BLOCK_VALUES",
    "LogitBias",
    "Penalties",
    "SampledRows",
    "SplitMixSeed",
    "TokenAllow",
    "TokenBan",
    "apply_penalties",
    "gumbel_block",
    "gumbel_blocks",
    "gumbel_from_bits",
    "min_p_rows",
    "new_generator",
    "noise_block_rows",
    "nucleus_rows",
    "sample",
    "sample_rows",
]

#: Rows of noise drawn per refill of a sampled request (amortises generator calls), for a
#: vocabulary of up to FLOAT32_NOISE_MAX_VOCAB tokens; see :func:`noise_block_rows`.
NOISE_BLOCK = 16

#: Values of noise a slot holds at most when the vocabulary is bigger (float64: 512 KiB): the
#: running set keeps a block per slot, so rows x vocabulary x slots must stay bounded.
NOISE_BLOCK_VALUES = 65_536


def noise_block_rows(vocab_size: int) -> int:
    """Rows of a noise block for ``vocab_size`` tokens: :data:`NOISE_BLOCK` up to
    :data:`FLOAT32_NOISE_MAX_VOCAB`, else as many as fit :data:`NOISE_BLOCK_VALUES` (at least
    one).  A 50,257-token vocabulary gets one row a block: 400 KiB per slot instead of 6.4 MiB.
    Bigger vocabularies draw float64 uniforms in order, so the rows per block never change a
    request's noise."""
    if vocab_size <= FLOAT32_NOISE_MAX_VOCAB:
        return NOISE_BLOCK
    return max(1, min(NOISE_BLOCK, NOISE_BLOCK_VALUES // vocab_size))


def new_generator(seed: int | None) -> np.random.Generator:
    """A request's private generator: PCG64 whose state is :class:`SplitMixSeed` of ``seed mod
    2**64`` (fresh from the OS if None)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.Generator(np.random.PCG64(SplitMixSeed(seed & _U64)))


_U64 = 0xFFFF_FFFF_FFFF_FFFF


class SplitMixSeed(ISeedSequence):
    """A 64-bit seed's words for a bit generator: the splitmix64 sequence from it (a
    bijective mix per word, so different seeds start different states).

    Seeds each request's PCG64 in ~1 us of Python where ``SeedSequence`` hashing
    takes ~5 us (a sampled request pays it once, which counts at 200 tokens).
    """

    __slots__ = ("_seed",)

    def __init__(self, seed: int) -> None:
        """``seed`` in ``[0, 2**64)``; raises ``ValueError`` otherwise."""
        if not 0 <= seed <= _U64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self._seed = seed

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        """``n_words`` words of ``dtype`` (uint32: the 64-bit words' low halves first)."""
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise ValueError(f"dtype must be uint32 or uint64, got {dt}")
        n64 = n_words if dt == np.uint64 else (n_words + 1) // 2
        x, words = self._seed, []
        for _ in range(n64):
            x = (x + 0x9E37_79B9_7F4A_7C15) & _U64
            z = ((x ^ (x >> 30)) * 0xBF58_476D_1CE4_E5B9) & _U64
            z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & _U64
            words.append(z ^ (z >> 31))
        out = np.array(words, np.uint64)
        if dt == np.uint64:
            return out
        return out.astype("<u8").view("<u4")[:n_words].astype(np.uint32)


#: Vocabularies up to this size get float32 noise (:func:`gumbel_blocks`); bigger ones float64.
FLOAT32_NOISE_MAX_VOCAB = 4096


def gumbel_blocks(rngs: Sequence[np.random.Generator], vocab_size: int) -> np.ndarray:
    """``[n * NB, V]`` standard Gumbel noise for ``n >= 1`` generators, ``NB`` =
    :func:`noise_block_rows` (V): rows ``j*NB .. j*NB+NB-1`` are the next ``NB`` rows of request ``j``'s noise,
    from its generator ``rngs[j]`` alone (consumed in order), so they do not depend
    on the other requests: the same values as ``n`` separate calls
    (``tests/test_gen_sampling.py`` checks it).

    Up to :data:`FLOAT32_NOISE_MAX_VOCAB` tokens the noise is float32, from 32-bit
    words (two per raw 64-bit draw, half the draws of float64 uniforms, and twice
    the SIMD width): uniforms ``(2m + 1) / 2**24`` for 23-bit ``m`` (never 0 or 1),
    so the noise lies in [-2.81, 16.64].  A token is then out of reach only when
    another one is more than ``e**19.45`` (2.8e8) times as likely, which bounds the
    probability mass lost to ``V * 3.6e-9`` of the likeliest token's (3.5e-7 for
    charlm's 96).  Over its 2**23 levels the noise's distribution function is
    within 1.4e-7 of the Gumbel one, and the odds of one token against another
    move by less than 1e-7 (``tests/test_gen_sampling.py`` checks both, over every
    level).  Bigger vocabularies get float64 uniforms and ``-log(-log(u))`` in
    float64 (a lost mass of ``V * 3e-18``).  The result is float32 or float64 accordingly.
    """
    n, v = len(rngs), vocab_size
    if v > FLOAT32_NOISE_MAX_VOCAB:
        nb = noise_block_rows(v)
        u = np.empty((n * nb, v))  # [n * NB, V]
        for j, rng in enumerate(rngs):
            rng.random(out=u[j * nb:(j + 1) * nb])
        np.log(u, out=u)
        np.negative(u, out=u)
        np.log(u, out=u)
        return np.negative(u, out=u)
    words = (NOISE_BLOCK * v + 1) // 2  # 64-bit draws per block
    raw = np.concatenate([rng.bit_generator.random_raw(words) for rng in rngs]) if n > 1 else \
        rngs[0].bit_generator.random_raw(words)  # [n * words] uint64
    # Low half first, whatever the byte order: the same 32-bit words on every machine.
    bits = raw.astype("<u8", copy=False).view("<u4").reshape(n, 2 * words)[:, :NOISE_BLOCK * v]
    return gumbel_from_bits(bits).reshape(n * NOISE_BLOCK, v)


def gumbel_from_bits(bits: np.ndarray) -> np.ndarray:
    """Random 32-bit words (uint32) -> float32 standard Gumbel noise of the same shape (a new
    C-contiguous array): ``-log(-log(u))`` with ``u = (2m + 1) / 2**24`` for ``m`` the top 23
    bits.  Elementwise."""
    m = np.right_shift(bits, _SHIFT)  # uint32: 23 bits
    np.bitwise_or(m, _ONE_BITS, out=m)  # the float32 1 + m / 2**23, in [1, 2)
    u = m.view(np.float32)
    np.subtract(u, _ONE_MINUS_HALF_ULP, out=u)  # (2m + 1) / 2**24, exact
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)
    return np.negative(u, out=u)


_SHIFT = np.uint32(9)
_ONE_BITS = np.uint32(0x3F80_0000)  # float32 1.0
_ONE_MINUS_HALF_ULP = np.float32(1.0 - 2.0**-24)


def gumbel_block(rng: np.random.Generator, vocab_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """``[NB, V]`` float64 standard Gumbel noise (``NB`` = :func:`noise_block_rows` (V)), row t
    for the request's t-th next token: :func:`gumbel_blocks` of one request.  With ``out`` (a
    float64 ``[NB, V]`` array, e.g. a view of the scheduler's noise buffer) the block is written
    there, with the same values.
    """
    g = gumbel_blocks([rng], vocab_size)
    if out is None:
        return g.astype(np.float64, copy=False)
    out[...] = g
    return out


def nucleus_rows(z: np.ndarray, rows: np.ndarray, top_p: np.ndarray) -> None:
    """Top-p (nucleus) filtering of rows ``rows [R]`` of ``z [S, V]``, in place: row ``rows[i]``
    (float64, already divided by its temperature and top-k masked) keeps the fewest most likely
    tokens whose probability under ``softmax`` of the row sums to at least ``top_p[i]`` (in
    ``(0, 1)``); every other entry becomes ``-inf``.  Among tokens of equal value at the edge of
    the nucleus the lowest token ids are kept, so the kept set is a function of the row alone; at
    least one token is always kept.

    How: the row's values sorted (descending), their unnormalised probabilities and running sum
    give how many tokens to keep, hence the smallest kept value; values below it are masked, and
    ties at it only where more of them remain than may be kept (rare: one row at a time).

    Row purity: sorting values, ``cumsum`` along a row (sequential adds), subtraction,
    multiplication and comparisons are exact or per row whatever the batch.  ``exp`` is not
    exactly rounded, but it is elementwise: numpy computes an element the same way wherever it
    falls in the array (SIMD lanes run the same instructions and a last partial block is masked,
    not computed another way; without SIMD for float64, as on AVX2, it is libm's ``exp`` per
    element).  A request's tokens thus stay independent of its neighbours:
    ``tests/test_gen_sampling.py`` checks it on rows that start off any vector boundary, and
    ``tests/test_gen_running.py`` against each request stepping alone.  (Calling ``exp`` one
    row at a time instead cost 1.5 us a row: most of a step's sampling at 64 streams.)"""
    sub = z[rows]  # [R, V] a copy
    ranked = np.sort(sub, axis=1)[:, ::-1]  # [R, V] most likely first (a view)
    probs = np.exp(ranked - ranked[:, :1])  # [R, V] unnormalised, <= 1; -inf (masked) -> 0
    cum = np.cumsum(probs, axis=1)
    keep = (cum < (top_p * cum[:, -1])[:, None]).sum(axis=1) + 1  # [R] tokens kept, >= 1
    edge = ranked[np.arange(len(rows)), keep - 1][:, None]  # [R, 1] the smallest kept value
    above = sub > edge
    sub[sub < edge] = -np.inf
    tied = keep - above.sum(axis=1)  # [R] how many of the values equal to the edge stay
    for i in np.flatnonzero((sub == edge).sum(axis=1) > tied):
        sub[i, np.flatnonzero(sub[i] == edge[i, 0])[tied[i]:]] = -np.inf
    z[rows] = sub


def min_p_rows(z: np.ndarray, rows: np.ndarray, log_min_p: np.ndarray) -> None:
    """Min-p filtering (vLLM's ``min_p``) of rows ``rows [R]`` of ``z [S, V]``, in place: row
    ``rows[i]`` (float64, divided by its temperature) keeps the tokens whose probability is at
    least ``min_p`` times the likeliest token's, i.e. ``z - max(z) >= log(min_p)`` (``log_min_p
    [R]``, ``min_p`` in ``(0, 1]``); the others become ``-inf``.  The likeliest token always
    stays.  A maximum, a difference and a comparison per element: exact, so a row's result does
    not depend on the batch."""
    sub = z[rows]  # [R, V] a copy
    sub[sub - sub.max(axis=1, keepdims=True) < log_min_p[:, None]] = -np.inf
    z[rows] = sub


def sample(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_k: np.ndarray,
    noise: np.ndarray | None,
    top_p: np.ndarray | None = None,
    min_p: np.ndarray | None = None,
) -> np.ndarray:
    """Pick one token per row.

    ``logits [B, V]`` float64; ``temperature [B]`` (0 = greedy); ``top_k [B]`` int
    (0 = off); ``noise [B, V]`` Gumbel noise (zero rows for greedy requests), or
    ``None`` when every row is greedy; ``min_p [B]`` (0 = off, or ``None``: off for every row),
    applied first (:func:`min_p_rows`); ``top_p [B]`` (1 = off, or ``None``: off for every
    row), applied after top-k (:func:`nucleus_rows`).  Returns ``[B]`` int64 token ids.
    Greedy rows take the argmax (first index on ties); they ignore min-p, top-k and top-p.
    """
    if noise is None:
        return logits.argmax(axis=1)  # [B]
    vocab = logits.shape[1]
    scale = np.where(temperature > 0, np.maximum(temperature, MIN_TEMPERATURE), 1.0)  # [B]
    z = logits / scale[:, None]  # [B, V]
    if min_p is not None:
        m_rows = np.flatnonzero((min_p > 0) & (temperature > 0))
        if len(m_rows):
            min_p_rows(z, m_rows, np.log(min_p[m_rows]))
    rows = np.flatnonzero((top_k > 0) & (top_k < vocab) & (temperature > 0))
    if len(rows):
        sub = z[rows]  # [R, V]
        kth = np.sort(sub, axis=1)[np.arange(len(rows)), vocab - top_k[rows]]  # [R] k-th largest
        sub[sub < kth[:, None]] = -np.inf
        z[rows] = sub
    if top_p is not None:
        p_rows = np.flatnonzero((top_p < 1) & (temperature > 0))
        if len(p_rows):
            nucleus_rows(z, p_rows, top_p[p_rows])
    z += noise
    return z.argmax(axis=1)  # [B]


@dataclass(frozen=True, slots=True)
class Penalties:
    """OpenAI's presence and frequency penalties and vLLM's repetition penalty of some rows of a
    batch (vLLM's semantics: presence and frequency on the tokens the request generated, not its
    prompt; repetition on those and the prompt's).

    ``rows [P]`` batch row indices; ``presence [P, 1]`` and ``frequency [P, 1]`` their
    penalties; ``counts [P, V]`` how many times each token was generated so far by each of
    those rows (a copy, taken when the batch is made); ``repetition [P, 1]`` their repetition
    penalties (1: off) and ``prompt [P, V]`` (bool) which tokens their prompts hold, both None
    when no row has one.  See :func:`apply_penalties`."""

    rows: np.ndarray
    presence: np.ndarray
    frequency: np.ndarray
    counts: np.ndarray
    repetition: np.ndarray | None = None
    prompt: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class LogitBias:
    """OpenAI's ``logit_bias`` of some rows of a batch, flat: ``logit[rows[i], ids[i]] +=
    biases[i]`` (each ``(row, id)`` pair once).  Built once per layout of the running set."""

    rows: np.ndarray
    ids: np.ndarray
    biases: np.ndarray


@dataclass(frozen=True, slots=True)
class TokenBan:
    """Tokens some rows of a batch may not generate, flat: ``logit[rows[i], ids[i]] = -inf``
    (vLLM's ``min_tokens``: a request's ``stop_token_ids`` while it generated fewer than
    ``min_tokens`` tokens).  A row never has every token banned (the scheduler refuses it)."""

    rows: np.ndarray
    ids: np.ndarray


@dataclass(frozen=True, slots=True)
class TokenAllow:
    """Rows of a batch that may generate only some tokens (guided decoding: ``guided_choice``,
    ``guided_regex``, ``guided_json``), flat: row
    ``rows[i]`` keeps the logits of the ids ``ids[j]`` with ``index[j] == i``, every other one
    becomes ``-inf``.  Each row keeps at least one token.  Built per step, for those rows only."""

    rows: np.ndarray
    index: np.ndarray
    ids: np.ndarray


def apply_penalties(logits: np.ndarray, pen: Penalties | None, bias: LogitBias | None = None,
                    ban: TokenBan | None = None, allow: TokenAllow | None = None) -> np.ndarray:
    """``logits [B, V]`` with the penalties of ``pen``'s rows, then ``bias``, then ``ban``, then
    ``allow``, applied (a new array; ``logits`` itself, unchanged, when all are None): first vLLM's repetition penalty
    ``r`` on every token ``j`` in the prompt or generated (``logit[j] / r`` if positive, else
    ``logit[j] * r``), then OpenAI's ``- count[j] * frequency - (count[j] > 0) * presence +
    bias[j]``, then ``-inf`` for the banned tokens and for the tokens an ``allow`` row does not
    keep, before temperature, min-p, top-k, top-p or greedy choice.  Elementwise products, quotients, sums and differences, each exactly rounded:
    a row's result does not depend on the rest of the batch."""
    if pen is None and bias is None and ban is None and allow is None:
        return logits
    out = logits.copy()
    if pen is not None:
        counts = pen.counts.astype(np.float64)  # [P, V]
        sub = logits[pen.rows]  # [P, V] a copy
        if pen.repetition is not None:
            seen = (pen.counts > 0) | pen.prompt  # type: ignore[operator]
            rep = pen.repetition
            sub = np.where(seen, np.where(sub > 0, sub / rep, sub * rep), sub)
        sub -= counts * pen.frequency
        sub -= (counts > 0) * pen.presence
        out[pen.rows] = sub
    if bias is not None:
        out[bias.rows, bias.ids] += bias.biases
    if ban is not None:
        out[ban.rows, ban.ids] = -np.inf
    if allow is not None:
        kept = np.full((len(allow.rows), out.shape[1]), -np.inf)  # [G, V]
        kept[allow.index, allow.ids] = out[allow.rows[allow.index], allow.ids]
        out[allow.rows] = kept
    return out


@dataclass(frozen=True, slots=True)
class SampledRows:
    """Which rows of a batch sample, and how; every other row is greedy.

    ``rows [S]`` row indices, or ``None`` when every row samples; ``scale`` their
    temperatures (``>= MIN_TEMPERATURE``), ``[S, 1]`` or repeated across the
    vocabulary as ``[S, V]`` (the same divisions; contiguous operands divide
    about twice as fast, so small vocabularies get that); ``top_k_rows [R]`` indices *into
    the S sampled rows* whose ``top_k [R]`` is active (``0 < k < V``), or ``None``;
    ``top_p_rows [P]`` indices into the S sampled rows whose ``top_p [P]`` is active
    (``p < 1``), or ``None``; ``min_p_rows [M]`` the same for ``min_p > 0``, with
    ``log_min_p [M]`` = ``log(min_p)``.  Built once per change of the running set, not per step.
    """

    rows: np.ndarray | None
    scale: np.ndarray
    top_k_rows: np.ndarray | None
    top_k: np.ndarray | None
    top_p_rows: np.ndarray | None = None
    top_p: np.ndarray | None = None
    min_p_rows: np.ndarray | None = None
    log_min_p: np.ndarray | None = None


def sample_rows(logits: np.ndarray, spec: SampledRows | None, noise: np.ndarray | None) -> np.ndarray:
    """:func:`sample` with the sampling laid out once: the same tokens, fewer operations.

    ``logits [B, V]``; ``spec`` (None: every row greedy); ``noise [S, V]`` Gumbel
    noise of the sampled rows only.  Returns ``[B]`` int64 token ids.  Each row
    goes through exactly the operations :func:`sample` applies to it (divide by
    its temperature, min-p mask, top-k mask, top-p mask, add its noise, argmax), so the result is bitwise
    the same as ``sample`` on the full arrays, and independent of the batch.
    """
    if spec is None:
        return logits.argmax(axis=1)  # [B]
    rows = spec.rows
    z = logits / spec.scale if rows is None else logits.take(rows, axis=0)  # [S, V] (a copy either way)
    if rows is not None:
        z /= spec.scale
    if spec.min_p_rows is not None:
        min_p_rows(z, spec.min_p_rows, spec.log_min_p)  # type: ignore[arg-type]
    k_rows = spec.top_k_rows
    if k_rows is not None:
        vocab = logits.shape[1]
        sub = z[k_rows]  # [R, V]
        kth = np.sort(sub, axis=1)[np.arange(len(k_rows)), vocab - spec.top_k]  # [R] k-th largest
        sub[sub < kth[:, None]] = -np.inf
        z[k_rows] = sub
    if spec.top_p_rows is not None:
        nucleus_rows(z, spec.top_p_rows, spec.top_p)  # type: ignore[arg-type]
    z += noise
    picks = z.argmax(axis=1)  # [S]
    if rows is None:
        return picks
    out = logits.argmax(axis=1)  # [B]; the sampled rows are overwritten
    out[rows] = picks
    return out
