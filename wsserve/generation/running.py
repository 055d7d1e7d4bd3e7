"""The running sequences of a scheduler, laid out as arrays: :class:`RunningSet` (sans-I/O).

Per step, the scheduler needs the batch (contexts, sampling, noise) and, after
the model step, each row's token number, text and whether it ends by length.
Doing that with Python work per sequence is what bounds continuous batching of
a small model, so the running set keeps it in arrays and counters:

- **Layout** (changed only when the running set changes): the sequences in
  admission order, their contexts ``[B, k]`` (rolled by one numpy call per
  step), the next token number of every row (a list, incremented per step), the
  rows that are not plain (stop strings, stop token ids or logprobs: their events are made
  one by one),
  the rows with logprobs (:class:`~.logprobs.LogprobRows`) and the sampling spec
  (:class:`~.sampling.SampledRows`).
  Sequences that join get rows appended after the current ones (Python work for
  the joiners only); after one left, the layout is rebuilt (O(B)).
- **Counters**: a running sequence's token count is ``tick - base``; nothing is
  incremented per sequence.
- **Calendars** (tick -> sequences): when a sequence ends by ``max_tokens``
  (sequences without stop strings) and when a sampled one needs its next block
  of noise; a step looks up its own tick, nothing else.
- **Noise**: one buffer of ``capacity * NB`` rows (a block per slot, NB = ``noise_block_rows(V)``),
  read per step with one ``take`` of the sampled rows' positions.
- **Logit biases**: the biased rows' ``(row, token, bias)`` triples as three flat arrays,
  made per layout and added with one fancy-indexed add per step.
- **Token bans** (``min_tokens`` with ``stop_token_ids``): the ``(row, token)`` pairs of the rows
  that generated fewer than ``min_tokens`` tokens (:class:`~.sampling.TokenBan`), remade when
  the layout changes or a row reaches its ``min_tokens`` (the tick is kept), not per step.
- **Guided generations** (``guided_choice``, ``guided_regex``, ``guided_json``): the guided rows
  are listed per layout; only when there are any, :meth:`RunningSet.batch` gathers each one's
  allowed ids (memoized per state by its :class:`~.guided.ChoiceSet` or
  :class:`~.structured.RegexIndex`) into a :class:`~.sampling.TokenAllow`: unguided steps pay one test.
- **Token counts** (presence/frequency penalties): a ``[capacity, V]`` int32 buffer, made
  at the first sequence with a penalty, a row per slot; the rows with penalties are read
  per step with one ``take`` and incremented with one fancy-indexed add.

Call order (the scheduler's): ``add``/``remove`` between steps; ``batch`` once
per step, then ``advance`` with that batch's tokens.  Not thread-safe.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..errors import BadRequest
from .logprobs import LogprobRows
from .params import MIN_TEMPERATURE
from .sampling import (
    LogitBias,
    Penalties,
    SampledRows,
    TokenAllow,
    TokenBan,
    gumbel_blocks,
    noise_block_rows,
)
from .sequence import SeqState, Sequence, Tick

__all__ = ["RunningSet", "TokenModel", "checked_prompt_ids", "context_of"]

_RUNNING = SeqState.RUNNING


class TokenModel(Protocol):
    """What the scheduler and the engine need from a generative model (e.g. ``CharLM``)."""

    context_len: int
    vocab_size: int
    id_to_text: tuple[str, ...]

    def encode_prompt(self, prompt: str) -> tuple[np.ndarray, int]:
        """``([k] int ids, n)``: the prompt's context, and ``n``, how many token ids the model
        was given for the prompt (its ``prompt_tokens``; the context holds the last ``k``)."""

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """``[n]`` int ids: all the token ids the model is given for the prompt (scoring a
        prompt, ``echo``)."""

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """``[B, k]`` int -> ``[B, V]`` float64, row-pure and batching-invariant."""


def checked_prompt_ids(model: TokenModel, ids: Any) -> np.ndarray:
    """A token-id prompt (a sequence of ints) as ``[n]`` int64, checked against ``model``: at most
    its ``prompt_chars`` ids (the most characters, hence ids, a text prompt gives it; else the
    adapter's default, ``16 * context_len``), each in ``[0, V)`` (an int of any size: one past
    int64 is refused too).  Raises ``BadRequest`` naming ``prompt``."""
    limit = int(getattr(model, "prompt_chars", 16 * model.context_len))
    if len(ids) > limit:
        raise BadRequest(f"field 'prompt' holds {len(ids)} token ids; this model reads at most {limit} "
                         "(its prompt_chars)")
    v = model.vocab_size
    array: np.ndarray | None
    try:
        array = np.asarray(ids, dtype=np.int64) if len(ids) else np.zeros(0, np.int64)
    except OverflowError:  # an id past int64 (JSON reads integers up to 2**64 - 1): past any vocabulary
        array = None
    if array is None or len(array) and (array.min() < 0 or array.max() >= v):
        bad = next(int(i) for i in ids if not 0 <= i < v)
        raise BadRequest(f"field 'prompt' holds token id {bad}; the model's vocabulary has {v} tokens "
                         f"(ids 0 to {v - 1})")
    return array


def context_of(model: TokenModel, ids: np.ndarray) -> np.ndarray:
    """``[k]`` int64: the last ``k = context_len`` of ``ids`` (checked), left-padded with PAD."""
    k = model.context_len
    ctx = np.full(k, getattr(model, "pad_id", model.vocab_size), dtype=np.int64)
    tail = ids[-k:]
    if len(tail):
        ctx[k - len(tail):] = tail
    return ctx


#: Up to this many elements, the sampled rows' temperatures are laid out as ``[S, V]``
#: (see :class:`~.sampling.SampledRows`); beyond it (big vocabularies) as ``[S, 1]``.
_FULL_SCALE_MAX = 1 << 16


def _scale_rows(scales: list[float], v: int) -> np.ndarray:
    """The ``scale`` of :class:`~.sampling.SampledRows` for temperatures ``scales`` and ``V = v``."""
    column = np.array(scales)[:, None]  # [S, 1]
    return np.repeat(column, v, axis=1) if len(scales) * v <= _FULL_SCALE_MAX else column


def _book(calendar: dict[int, dict[Sequence, None]], tick: int, seq: Sequence) -> None:
    day = calendar.get(tick)
    if day is None:
        calendar[tick] = {seq: None}
    else:
        day[seq] = None


def _unbook(calendar: dict[int, dict[Sequence, None]], tick: int, seq: Sequence) -> None:
    day = calendar.get(tick)
    if day is not None:
        day.pop(seq, None)
        if not day:
            del calendar[tick]


class RunningSet:
    """Up to ``capacity`` running sequences and the arrays of their next step."""

    def __init__(self, model: TokenModel, capacity: int) -> None:
        self.capacity = capacity
        self.tick = Tick()
        self._k, self._v = model.context_len, model.vocab_size
        self._itos = np.array(model.id_to_text, dtype=object)  # [V] token texts, taken per step
        self._free = list(range(capacity - 1, -1, -1))  # stack of free slots
        self._seqs: list[Sequence] = []  # admission order (may hold ended ones until the next layout)
        self._nb = nb = noise_block_rows(self._v)  # rows of a noise block
        self._noise = np.zeros((capacity * nb, self._v))  # slot s: rows s*NB .. s*NB+NB-1
        self._ends: dict[int, dict[Sequence, None]] = {}
        self._refills: dict[int, dict[Sequence, None]] = {}
        self._fresh: list[Sequence] = []  # admitted before their first token
        self._dirty = False
        self._joined: list[Sequence] = []  # added since the last layout, in order
        self._left = False  # a sequence was removed since the last layout
        # The layout.
        self._rows: tuple[Sequence, ...] = ()
        self._contexts = np.zeros((0, self._k), np.int64)  # [B, k], row order of _rows
        self._next: list[int] = []  # token number of each row's next token
        self._stop_rows: list[int] = []  # rows that are not plain (stop strings or ids, logprobs)
        self._plain: list[bool] | None = None  # per row: plain, no stop strings or ids, no logprobs (None: every row)
        self._n_plain = 0
        self._lp: list[tuple[int, int, bool]] = []  # (row, k, ranks) of the rows with logprobs
        #: the layout's rows with logprobs (:class:`~.logprobs.LogprobRows`), None when none
        self.logprob_rows: LogprobRows | None = None
        self._sampling: SampledRows | None = None
        self._nidx = np.zeros(0, np.int64)  # [S] noise buffer row of each sampled row's next token
        self._sampled: list[int] = []  # rows that sample, and per sampled row its scale and top-k
        self._scales: list[float] = []
        self._top_ks: list[tuple[int, int]] = []  # (index among the sampled rows, k) with 0 < k < V
        self._top_ps: list[tuple[int, float]] = []  # (index among the sampled rows, p) with p < 1
        self._min_ps: list[tuple[int, float]] = []  # (index among the sampled rows, min_p) with min_p > 0
        self._counts: np.ndarray | None = None  # [capacity, V] int32 tokens generated (penalties)
        self._prompt: np.ndarray | None = None  # [capacity, V] bool tokens of the prompt (repetition penalty)
        self._pen: list[tuple[int, int, float, float, float]] = []  # (row, slot, presence, frequency, repetition)
        #: the layout's penalised rows: (rows, slots, presence [P, 1], frequency [P, 1]), None when none
        self._pen_spec: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._pen_prompt: np.ndarray | None = None  # [P, V] the penalised rows' prompt tokens (repetition)
        self._biased: list[tuple[int, tuple[tuple[int, float], ...]]] = []  # (row, logit_bias) of biased rows
        #: the layout's logit biases (:class:`~.sampling.LogitBias`), None when no row has one
        self.logit_bias: LogitBias | None = None
        self._banned: list[tuple[int, Sequence]] = []  # (row, seq) of the rows under min_tokens with stop ids
        self._ban_next = 0  # tick at which the first of them reaches its min_tokens
        #: the next step's token bans (:class:`~.sampling.TokenBan`), None when no row has one
        self.ban: TokenBan | None = None
        self._guided: list[tuple[int, Sequence]] = []  # (row, seq) of the guided rows
        #: the next step's allowed tokens of the guided rows (:class:`~.sampling.TokenAllow`), None when none
        self.allow: TokenAllow | None = None

    # -- membership ----------------------------------------------------------------
    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def sequences(self) -> list[Sequence]:
        """The running sequences, oldest admission first."""
        if self._left:
            self._seqs = [s for s in self._seqs if s.state is _RUNNING]
        return self._seqs

    def __len__(self) -> int:
        return self.capacity - len(self._free)

    def add(self, seq: Sequence, context: np.ndarray) -> None:
        """Start running ``seq`` (a free slot must exist) from ``context [k]``, resuming its
        count and noise block if it ran before.  Its first token is at the next step."""
        slot = self._free.pop()
        tick = self.tick.value
        g = seq._gen
        seq.state, seq.slot = _RUNNING, slot
        seq._base = tick - g
        seq._context = context
        p = seq.params
        if seq._stops is None:
            seq._end = seq._base + p.max_tokens
            _book(self._ends, seq._end, seq)
        if p.temperature > 0:
            into = g % self._nb
            if into:  # resuming inside a noise block: the same noise, in order
                self._noise[slot * self._nb:(slot + 1) * self._nb] = seq._noise
                seq._refill = tick + self._nb - into
            else:
                seq._refill = tick
            _book(self._refills, seq._refill, seq)
        seq._noise = None
        if p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1:
            if self._counts is None:
                self._counts = np.zeros((self.capacity, self._v), np.int32)
            self._counts[slot] = 0 if seq._counts is None else seq._counts  # resumed: its counts so far
            seq._counts = None
            if p.repetition_penalty != 1:
                if self._prompt is None:
                    self._prompt = np.zeros((self.capacity, self._v), bool)
                self._prompt[slot] = False
                if seq._prompt_ids is not None:
                    self._prompt[slot, seq._prompt_ids] = True
        if seq.first_token_at is None:
            self._fresh.append(seq)
        self._seqs.append(seq)
        self._joined.append(seq)
        self._dirty = True

    def remove(self, seq: Sequence, *, keep: bool = False) -> None:
        """Stop running ``seq`` (the caller then changes its state).  Its token count is
        frozen; with ``keep`` (preemption) its context and noise block are saved on it."""
        g = self.tick.value - seq._base
        seq._gen = g
        slot = seq.slot
        if keep:
            if seq._context is None:
                seq._context = self._contexts[seq._row].copy()
            if seq.params.temperature > 0 and g % self._nb:
                seq._noise = self._noise[slot * self._nb:(slot + 1) * self._nb].copy()
            p = seq.params
            if self._counts is not None and (p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1):
                seq._counts = self._counts[slot].copy()
        else:
            seq._context = None
        if seq._end >= 0:
            _unbook(self._ends, seq._end, seq)
            seq._end = -1
        if seq._refill >= 0:
            _unbook(self._refills, seq._refill, seq)
            seq._refill = -1
        self._free.append(slot)
        seq.slot = -1
        self._dirty = self._left = True

    # -- the step --------------------------------------------------------------------
    def batch(self) -> tuple[tuple[Sequence, ...], np.ndarray, SampledRows | None, np.ndarray | None]:
        """The next step's ``(seqs, contexts [B, k], sampling, noise [S, V])``; B may be 0.

        Draws the noise blocks that are due (so call it once per step)."""
        if self._dirty:
            self._layout()
        if self._banned and self.tick.value >= self._ban_next:
            self._refresh_ban()
        if self._guided:
            self.allow = self._allowed()
        noise = None
        if self._sampling is not None:
            due = self._refills.pop(self.tick.value, None)
            if due:
                self._refill(due)
            noise = self._noise.take(self._nidx, axis=0)  # [S, V]
            self._nidx += 1
        return self._rows, self._contexts, self._sampling, noise

    def penalties(self) -> Penalties | None:
        """The penalties of the current layout's rows with any, their token counts copied now
        (call after :meth:`batch`); None when no row has a penalty."""
        spec = self._pen_spec
        if spec is None:
            return None
        rows, slots, presence, frequency, repetition = spec
        counts = self._counts.take(slots, axis=0)  # type: ignore[union-attr]
        if repetition is None:
            return Penalties(rows, presence, frequency, counts)
        return Penalties(rows, presence, frequency, counts, repetition, self._pen_prompt)

    def texts(self, tokens: np.ndarray) -> list[Any]:
        """Token ids (any shape) -> their texts, as (nested) lists (raises ``IndexError`` on an id
        outside the vocabulary; changes nothing)."""
        return self._itos.take(tokens).tolist()

    def advance(self, contexts: np.ndarray, tokens: np.ndarray, now: float) -> tuple[list[int], dict[Sequence, None] | None]:
        """Apply one token per row (``contexts`` are the batch's): returns each row's token
        number and the sequences that reach ``max_tokens`` now (those without stop strings).

        Rows of sequences that ended during the step are not looked at (the next
        layout drops them)."""
        self.tick.value += 1
        self._contexts = np.concatenate((contexts[:, 1:], tokens[:, None]), axis=1)  # [B, k]
        if self._fresh:
            for seq in self._fresh:
                if seq.state is _RUNNING and seq.first_token_at is None:
                    seq.first_token_at = now
            self._fresh = []
        if self._pen_spec is not None:
            rows, slots = self._pen_spec[:2]
            # A row whose sequence left during the step counts into the slot it freed, which is
            # harmless: add() sets a slot's counts whenever a sequence takes it (and a preempted
            # sequence saved its counts when it left, without this step's token, which it drops).
            self._counts[slots, tokens[rows]] += 1  # type: ignore[index]  # a slot per row
        numbers = self._next
        self._next = [n + 1 for n in numbers]
        return numbers, self._ends.pop(self.tick.value, None)

    @property
    def changed(self) -> bool:
        """True when a sequence left or joined since the last layout."""
        return self._dirty

    @property
    def stop_rows(self) -> list[int]:
        """The rows that are not plain: their token events are made one by one (stop strings,
        stop token ids, logprobs)."""
        return self._stop_rows

    @property
    def plain(self) -> list[bool] | None:
        """Per row: True if it is plain, without stop strings, stop token ids or logprobs (None: every row is)."""
        return self._plain

    @property
    def n_plain(self) -> int:
        """Plain rows (without stop strings, stop token ids or logprobs)."""
        return self._n_plain

    # -- internals -------------------------------------------------------------------
    def _layout(self) -> None:
        """Lay out the running set after a change: appended rows when sequences only
        joined (O(joined) Python work, the common case while requests arrive), else a
        rebuild (O(B))."""
        if self._left:
            self._seqs = [s for s in self._seqs if s.state is _RUNNING]
            self._rebuild()
        else:
            self._append(self._joined)
        self._joined = []
        self._left = self._dirty = False

    def _rebuild(self) -> None:
        seqs = self._seqs
        old = self._contexts
        keep: list[int] = []
        fresh: list[np.ndarray] = []
        for s in seqs:  # laid-out sequences come first (admission order), new ones after
            if s._context is None:
                keep.append(s._row)
            else:
                fresh.append(s._context)
                s._context = None
        parts = []
        if keep:
            parts.append(old if len(keep) == len(old) else old[keep])
        if fresh:
            parts.append(np.stack(fresh))
        self._contexts = (np.concatenate(parts) if len(parts) > 1 else parts[0]) if parts else \
            np.zeros((0, self._k), np.int64)
        self._rows = ()
        self._next, self._stop_rows, self._plain, self._n_plain = [], [], None, 0
        self._lp = []
        self._sampled, self._scales, self._top_ks, self._top_ps, self._min_ps = [], [], [], [], []
        self._pen = []
        self._biased = []
        self._banned = []
        self._guided = []
        self.allow = None
        self._nidx = np.zeros(0, np.int64)
        self._extend(seqs)

    def _append(self, joined: list[Sequence]) -> None:
        """Rows for ``joined`` (added since the last layout, none removed) after the current ones."""
        self._contexts = np.concatenate((self._contexts, np.stack([s._context for s in joined])))  # type: ignore[misc]
        for s in joined:
            s._context = None
        self._extend(joined)

    def _extend(self, seqs: list[Sequence]) -> None:
        """Append the per-row bookkeeping of ``seqs`` (their contexts are already in place)."""
        first = len(self._rows)
        self._rows = rows = self._rows + tuple(seqs)
        tick, v, nb = self.tick.value, self._v, self._nb
        nxt, stop_rows, sampled = self._next, self._stop_rows, self._sampled
        scales, top_ks, top_ps, min_ps, pen = self._scales, self._top_ks, self._top_ps, self._min_ps, self._pen
        nidx: list[int] = []
        for i, s in enumerate(seqs, first):
            s._row = i
            g = tick - s._base
            nxt.append(g)
            if not s._plain:
                stop_rows.append(i)
                if s.params.logprobs is not None:
                    s._lrow = len(self._lp)
                    self._lp.append((i, s.params.logprobs, s.params.logprob_ranks))
            p = s.params
            if p.temperature > 0:
                s._srow = j = len(sampled)
                sampled.append(i)
                scales.append(max(p.temperature, MIN_TEMPERATURE))
                if 0 < p.top_k < v:
                    top_ks.append((j, p.top_k))
                if p.top_p < 1:
                    top_ps.append((j, p.top_p))
                if p.min_p > 0:
                    min_ps.append((j, p.min_p))
                nidx.append(s.slot * nb + g % nb)
            if p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1:
                pen.append((i, s.slot, p.presence_penalty, p.frequency_penalty, p.repetition_penalty))
            if p.logit_bias:
                self._biased.append((i, p.logit_bias))
            if p.stop_token_ids and g < p.min_tokens:
                self._banned.append((i, s))
            if s._guide is not None:
                self._guided.append((i, s))
        if stop_rows:
            old = self._plain if self._plain is not None else [True] * first
            self._plain = old + [s._plain for s in seqs]  # a new list: blocks keep theirs
        self._n_plain = len(rows) - len(stop_rows)
        if nidx:
            self._nidx = np.concatenate((self._nidx, np.array(nidx, np.int64)))
        self.logprob_rows = LogprobRows(np.array([r for r, _, _ in self._lp], np.int64),
                                        max(k for _, k, _ in self._lp),
                                        any(ranks for _, _, ranks in self._lp)) if self._lp else None
        if self._biased:
            pairs = [(r, t, b) for r, bias in self._biased for t, b in bias]
            self.logit_bias = LogitBias(np.array([r for r, _, _ in pairs], np.int64),
                                        np.array([t for _, t, _ in pairs], np.int64),
                                        np.array([b for _, _, b in pairs], np.float64))
        else:
            self.logit_bias = None
        self._refresh_ban()
        self._pen_spec = None if not pen else (
            np.array([r for r, *_ in pen], np.int64), np.array([slot for _, slot, *_ in pen], np.int64),
            np.array([q for _, _, q, _, _ in pen])[:, None], np.array([f for _, _, _, f, _ in pen])[:, None],
            np.array([r for *_, r in pen])[:, None] if any(r != 1 for *_, r in pen) else None)
        # the penalised rows' prompt tokens: a slot's row changes only in add(), which forces a layout
        self._pen_prompt = None if self._pen_spec is None or self._pen_spec[4] is None else \
            self._prompt.take(self._pen_spec[1], axis=0)  # type: ignore[union-attr]
        self._sampling = None if not sampled else SampledRows(
            rows=None if len(sampled) == len(rows) else np.array(sampled, np.int64),
            scale=_scale_rows(scales, v),
            top_k_rows=np.array([j for j, _ in top_ks], np.int64) if top_ks else None,
            top_k=np.array([k for _, k in top_ks], np.int64) if top_ks else None,
            top_p_rows=np.array([j for j, _ in top_ps], np.int64) if top_ps else None,
            top_p=np.array([q for _, q in top_ps]) if top_ps else None,
            min_p_rows=np.array([j for j, _ in min_ps], np.int64) if min_ps else None,
            log_min_p=np.log([q for _, q in min_ps]) if min_ps else None,
        )

    def _refresh_ban(self) -> None:
        """Drop the banned rows that reached their ``min_tokens``; lay out the others' bans."""
        tick = self.tick.value
        banned = self._banned = [(r, s) for r, s in self._banned if tick - s._base < s.params.min_tokens]
        if not banned:
            self.ban = None
            return
        pairs = [(r, t) for r, s in banned for t in s.params.stop_token_ids]  # (a repeated id: -inf twice)
        self.ban = TokenBan(np.array([r for r, _ in pairs], np.int64), np.array([t for _, t in pairs], np.int64))
        self._ban_next = min(s._base + s.params.min_tokens for _, s in banned)

    def _allowed(self) -> TokenAllow | None:
        """The guided rows' allowed ids for the next token, from each one's state; a row whose
        guide returns None (a regex already matched that may go on) is left unmasked; None when
        every guided row is."""
        rows, ids = [], []
        for r, s in self._guided:
            a = s._guide.allowed()  # type: ignore[union-attr]
            if a is not None:
                rows.append(r)
                ids.append(a)
        if not rows:
            return None
        return TokenAllow(np.array(rows, np.int64), np.repeat(np.arange(len(ids)), [len(a) for a in ids]),
                          np.concatenate(ids))

    def _refill(self, due: dict[Sequence, None]) -> None:
        """Draw the next noise block of each sequence in ``due`` (from its own generator);
        several at once share the log transforms (elementwise: the same values)."""
        tick, v, buf, nidx = self.tick.value, self._v, self._noise, self._nidx
        seqs = list(due)
        noise = gumbel_blocks([s._rng for s in seqs], v)  # type: ignore[misc]  # [n * NB, V]
        if len(seqs) == 1:
            start = seqs[0].slot * self._nb
            buf[start:start + self._nb] = noise
        else:
            rows = buf.reshape(self.capacity, self._nb * v)
            rows[[s.slot for s in seqs]] = noise.reshape(len(seqs), self._nb * v)
        for seq in seqs:
            nidx[seq._srow] = seq.slot * self._nb
            seq._refill = tick + self._nb
            _book(self._refills, seq._refill, seq)
