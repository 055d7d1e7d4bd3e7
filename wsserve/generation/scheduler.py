"""Continuous (iteration-level) batching of generations - sans-I/O.

The shape of vLLM's scheduler interface: a driver calls, once per model step::

    batch = scheduler.schedule(now)            # expire, admit, build the batch
    tokens = step(model, batch)                # anywhere (e.g. a worker thread)
    scheduler.update_from_output(batch, tokens, now)
    events = scheduler.take_events()            # deliver them, in order

(each batch is given back exactly once, to ``update_from_output`` or, when the
step failed, ``fail_batch``, before the next ``schedule``), and, at any time
between those calls, :meth:`Scheduler.add_request` and
:meth:`Scheduler.finish_requests` (cancel).  Nothing here awaits, sleeps or reads
a clock: every call takes ``now`` (``time.monotonic()`` seconds), so tests drive
it with a fake clock.  Not thread-safe: call it from one thread (the event loop).

Semantics:

- At most ``max_generate_batch`` sequences run; each :meth:`schedule` admits waiting
  ones into free slots, high priority first, and within a priority round-robin
  between groups (a group is a client connection), FIFO within a group.
  ``add_request`` raises :class:`~wsserve.errors.Overloaded` when ``max_generate_queue``
  requests already wait beyond the free slots (``None``: unbounded).
- Fair share: when sequences wait and no slot is free, a group that has waiting
  sequences and runs fewer than ``ceil(max_generate_batch / G)`` (G = groups with
  running or waiting sequences) takes a slot from the group running the most, if
  that one runs more than the share: its most recently admitted sequence is
  *preempted* - it goes back to the front of its group's queue with its context
  and sampling state, and later resumes exactly where it stopped (its output is
  the same as if it had never paused).  So one connection cannot hold every slot
  for long generations while others wait.
- Every running sequence gets exactly one token per step.  A sequence leaves the
  batch the moment it finishes: ``length`` (``max_tokens`` generated), ``stop``
  (a stop string completed or a stop token was generated, after the first ``min_tokens``
  tokens; see :mod:`.stops`), ``cancelled`` (:meth:`finish_requests`), or an
  error: :class:`~wsserve.errors.DeadlineExceeded` (checked in every
  :meth:`schedule` and :meth:`update_from_output`, so a token computed past
  the deadline is not delivered), or whatever :meth:`fail_batch` /
  :meth:`abort_all` pass.
- Events are ``(seq, n, text)`` tuples in one ordered list: a token event per
  streamed token with ``n`` = 0, 1, 2, ..., then exactly one terminal event
  with ``n == FINISHED`` (-1) and ``text == ""`` (``seq.finish_reason`` or
  ``seq.error`` says how it ended).  Text that may begin a stop string is held
  back (:mod:`.stops`); on a ``length`` finish it is released first; on cancel
  or error it is dropped.  ``seq.streamed`` (the number of token events) is the
  ``tokens`` of ``done``; ``seq.completion_tokens`` (every token generated, a stop string's
  and a stop token's included, as vLLM's output token ids) its usage.  For a generation with ``logprobs``, a token event's text is a
  :class:`~.sequence.LoggedText` (the text and its :class:`~.logprobs.TokenLogprobs`,
  from the ``logprobs`` given to :meth:`update_from_output`); held-back text keeps its
  token's record, and a token cut by a stop string carries its record with its text
  before the stop (with ``include_stop_str_in_output``, through its end).  A stop token
  whose text is not output has no event (nor record).
- A sequence finished while its batch was computing (cancel, deadline) simply
  ignores its row in :meth:`update_from_output`: nothing follows its finish.
- A generation with ``guided_choice`` generates only tokens that keep its text a prefix of a
  choice (:mod:`.guided`); one with ``guided_regex`` / ``guided_json`` (given its compiled
  index, or held as ``COMPILING`` until :meth:`Scheduler.release`) a match.  Both follow
  :mod:`.structured`'s end rule (``stop`` after a token that
  completes the match, or instead of a token that would not extend it).  Their stop strings and
  stop token ids still apply.
- Within one step, the token events of the plain rows (no stop strings or stop token
  ids, no logprobs, no guided choice) come first, then the other rows (each followed by its terminal event
  if it ended by a stop string or token), then the terminal events of ``length`` finishes.  A sequence's
  own events are always in order; only the interleaving between sequences
  differs from a row-by-row walk (the protocol does not fix it).

Cost per step: the bookkeeping is array- and counter-based
(:mod:`.running`): no per-sequence attribute work, stop matching only on the
rows with stop strings or stop token ids, and the token events of all other rows kept as one
:class:`~.sequence.TokenEvents` block (columns, no per-event object);
:meth:`Scheduler.take_events` expands it into the tuples above,
:meth:`Scheduler.take_output` (the engine's) leaves it whole.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadRequest, DeadlineExceeded, Internal, Overloaded, WsserveError
from .guided import ChoiceGuide, ChoiceSet, Vocabulary
from .logprobs import LogprobRows, StepLogprobs, TokenLogprobs
from .params import GenerationParams
from .running import RunningSet, TokenModel, checked_prompt_ids, context_of
from .sampling import (
    LogitBias,
    Penalties,
    SampledRows,
    TokenAllow,
    TokenBan,
    new_generator,
)
from .sequence import FINISHED, Event, LoggedText, SeqState, Sequence, TokenEvents
from .stops import STOPPED_ON_TOKEN
from .structured import CONTINUE, END_AFTER, END_BEFORE, RegexGuide, RegexIndex
from .waitqueue import WaitQueue

__all__ = ["FINISHED", "Batch", "Event", "Scheduler", "SchedulerStatistics", "SeqState", "Sequence", "TokenModel",
           "check_token_ids"]

#: A sequence's params keep a prompt of at most this many characters (or token ids); a longer one is
#: dropped once encoded (only its context is used from then on), so a queue of long prompts holds no
#: more than this of each.  Short prompts are kept: copying the params costs more than they weigh.
HELD_PROMPT_CHARS = 256

_RUNNING = SeqState.RUNNING


def check_token_ids(params: GenerationParams, v: int) -> None:
    """The token ids ``params`` names (``logit_bias``, ``stop_token_ids``) within a vocabulary of
    ``v`` tokens, and ``stop_token_ids`` leaving a token to generate under ``min_tokens``; raises
    :class:`~wsserve.errors.BadRequest` naming the field (what :meth:`Scheduler.add_request` checks;
    a request that queues no generation checks it itself)."""
    if params.logit_bias and params.logit_bias[-1][0] >= v:
        raise BadRequest(f"field 'logit_bias' names token {params.logit_bias[-1][0]}; the model's vocabulary "
                         f"has {v} tokens (ids 0 to {v - 1})")
    if params.stop_token_ids:
        if max(params.stop_token_ids) >= v:
            raise BadRequest(f"field 'stop_token_ids' names token {max(params.stop_token_ids)}; the model's "
                             f"vocabulary has {v} tokens (ids 0 to {v - 1})")
        if params.min_tokens and len(set(params.stop_token_ids)) >= v:
            raise BadRequest("field 'stop_token_ids' names every token of the model's vocabulary: with "
                             "'min_tokens' no token could be generated")

@dataclass(frozen=True, slots=True)
class Batch:
    """Inputs of one model step; row i belongs to ``seqs[i]``.

    ``contexts [B, k]`` int64; ``sampling`` says which rows sample and how
    (``None``: every row is greedy) and ``noise [S, V]`` holds their Gumbel
    noise; ``penalties`` the presence/frequency penalties of the rows that have
    them and ``bias`` their logit biases (``None``: no row has); ``logprobs`` the rows that want
    log-probabilities (``None``: no row does); ``ban`` the tokens rows may not generate this step
    (``min_tokens`` with ``stop_token_ids``; ``None``: no row has); ``allow`` the only tokens the
    guided rows may generate this step (guided decoding; ``None``: no row is masked).  Arrays are
    never written after the batch is made: safe to read from another thread.
    """

    seqs: tuple[Sequence, ...]
    contexts: np.ndarray
    sampling: SampledRows | None
    noise: np.ndarray | None
    scheduled_at: float
    penalties: Penalties | None = None
    bias: LogitBias | None = None
    logprobs: LogprobRows | None = None
    ban: TokenBan | None = None
    allow: TokenAllow | None = None

    @property
    def size(self) -> int:
        return len(self.seqs)


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    running: int
    waiting: int
    max_generate_batch: int
    max_generate_queue: int | None
    steps: int
    tokens: int  # token events emitted (streamed), all time
    generated: int  # tokens the model produced, all time
    finished: int
    last_batch_size: int
    step_ms: float  # moving average of schedule -> update_from_output
    preempted: int = 0  # sequences paused to give another group its fair share, all time
    oldest_wait_s: float = 0.0  # how long the oldest waiting sequence has waited (at the last step)


class Scheduler:
    """See the module docstring.  ``model`` is a :class:`TokenModel`."""

    def __init__(self, model: TokenModel, *, max_generate_batch: int = 256, max_generate_queue: int | None = 4096) -> None:
        if max_generate_batch < 1:
            raise ValueError(f"max_generate_batch must be >= 1, got {max_generate_batch}")
        if max_generate_queue is not None and max_generate_queue < 0:
            raise ValueError(f"max_generate_queue must be >= 0 or None, got {max_generate_queue}")
        self.model = model
        self.max_generate_batch = max_generate_batch
        self.max_generate_queue = max_generate_queue
        self._ids = itertools.count()
        self._waiting: tuple[WaitQueue, WaitQueue] = (WaitQueue(), WaitQueue())  # by priority
        self._run = RunningSet(model, max_generate_batch)
        self._group_running: dict[Any, int] = {}  # running sequences per group (fair share)
        self._preempted = 0
        self._deadlines: list[tuple[float, int, Sequence]] = []
        self._batch: Batch | None = None  # scheduled, not yet given back
        self._out: list[Event | TokenEvents] = []
        self._blocks = 0  # TokenEvents in _out
        self._steps = self._tokens = self._generated = self._finished = self._last_batch = 0
        self._step_s = 0.0
        self._last_now = 0.0  # the latest ``now`` seen (statistics take no clock)
        self._vocab: Vocabulary | None = None  # the model's tokens indexed, at the first guided request
        self._choices: ChoiceSet | None = None  # the last guided request's (its n sequences share it)
        #: sequences held until their guided_regex / guided_json is compiled (:meth:`release`)
        self._held: dict[Sequence, None] = {}
        #: held sequences that ended while held (cancelled, past their deadline, failed): a count
        #: that changes when a pattern being compiled may have lost its last waiting request
        self.held_ended = 0

    # -- requests ------------------------------------------------------------------
    def add_request(
        self, params: GenerationParams, now: float, *, owner: Any = None, group: Any = None,
        deadline: float | None = None, index: RegexIndex | None = None, hold: bool = False, bounded: bool = True,
    ) -> Sequence:
        """Queue a generation; it joins the batch at the next :meth:`schedule`.

        A ``guided_regex`` / ``guided_json`` generation comes with its compiled ``index``, or with
        ``hold``: it is then held (state ``COMPILING``, not counted as unfinished) until
        :meth:`release` gives it its index (or :meth:`fail_requests` ends it); deadlines and
        cancels apply while it is held.

        ``group`` is the fairness key (the client connection): while others wait,
        a group holds at most a fair share of the running slots (module docstring).
        ``deadline`` (same clock as ``now``): past it the sequence ends with
        ``deadline_exceeded``, waiting or running.
        Raises :class:`~wsserve.errors.Overloaded` (with ``retry_after_ms``) when
        the queue is full, and :class:`~wsserve.errors.BadRequest` for a ``logit_bias`` or
        ``stop_token_ids`` token id outside the model's vocabulary (or ``stop_token_ids`` naming
        all of it, with ``min_tokens``), a ``guided_choice`` string the model's tokens cannot write
        (:class:`~.guided.ChoiceSet`), or a token-id prompt (``params.prompt_ids``) outside
        the model's bounds (:func:`~.running.checked_prompt_ids`); nothing is queued then.
        The prompt is encoded once (with ``repetition_penalty``, its ids give the context).
        ``bounded`` false: the queue bound is not checked (a later choice of a request whose first
        one passed it: a request's choices are admitted together, so one alone is always accepted).
        """
        waiting = len(self._waiting[0]) + len(self._waiting[1]) + len(self._held)
        if bounded and self.max_generate_queue is not None and waiting - self._run.free >= self.max_generate_queue:
            raise Overloaded(
                f"generation queue is full ({waiting} waiting for {self.max_generate_batch} slots, "
                f"max_generate_queue={self.max_generate_queue})",
                retry_after_ms=self._retry_after_ms(),
            )
        check_token_ids(params, self.model.vocab_size)
        choices = self._choice_set(params.guided_choice) if params.guided_choice else None
        ids = None  # all the prompt's token ids, when needed (may raise: nothing is queued then)
        if params.prompt_ids is not None:
            ids = checked_prompt_ids(self.model, params.prompt_ids)
        elif params.repetition_penalty != 1:  # it applies to the prompt's tokens too
            ids = np.asarray(self.model.prompt_ids(params.prompt), np.int64)
        if ids is None:
            context, prompt_tokens = self.model.encode_prompt(params.prompt)
        else:  # one encode() (or none): the context is the ids' tail
            context, prompt_tokens = context_of(self.model, ids), len(ids)
        prompt_ids = np.unique(ids) if params.repetition_penalty != 1 else None
        if len(params.prompt) > HELD_PROMPT_CHARS or len(params.prompt_ids or ()) > HELD_PROMPT_CHARS:
            params = dataclasses.replace(params, prompt="", prompt_ids=None)  # only the context is used from here on
        seq = Sequence(next(self._ids), params, owner, now, group, self._run.tick)
        seq._context = context
        seq._prompt_ids = prompt_ids
        seq.prompt_tokens = prompt_tokens
        if choices is not None:
            seq._guide = ChoiceGuide(choices)
        elif index is not None:
            seq._guide = RegexGuide(index)
        if hold and index is None:
            seq.state = SeqState.COMPILING
            self._held[seq] = None
        else:
            self._waiting[params.priority].push(seq)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, seq.id, seq))
            if len(self._deadlines) > 64 + 2 * (waiting + len(self._run)):
                self._deadlines = [e for e in self._deadlines if e[2].state is not SeqState.FINISHED]
                heapq.heapify(self._deadlines)
        return seq

    def release(self, seq: Sequence, index: RegexIndex) -> None:
        """Queue held ``seq`` (:meth:`add_request` with ``hold``) with its compiled ``index``; a
        sequence no longer held (ended meanwhile) is ignored."""
        if seq.state is SeqState.COMPILING:
            del self._held[seq]
            seq._guide = RegexGuide(index)
            seq.state = SeqState.WAITING
            self._waiting[seq.params.priority].push(seq)

    def _choice_set(self, choices: tuple[str, ...]) -> ChoiceSet:
        """``choices`` compiled against the model's tokens (raises ``BadRequest`` naming
        ``guided_choice`` for one they cannot write); the last request's set is reused, so the
        ``n`` sequences of one request (queued one after another) compile it once."""
        if self._choices is not None and self._choices.choices == choices:
            return self._choices
        if self._vocab is None:
            self._vocab = Vocabulary(self.model.id_to_text)
        self._choices = ChoiceSet(choices, self._vocab)
        return self._choices

    def finish_requests(self, seqs: Any, now: float, *, reason: str = "cancelled") -> None:
        """End unfinished ``seqs`` now with ``reason`` (finished ones are ignored)."""
        for seq in seqs:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, now, reason=reason)

    def fail_requests(self, seqs: Any, error: WsserveError, now: float) -> None:
        """End unfinished ``seqs`` now with ``error`` (finished ones are ignored); a step in
        progress keeps its batch, as for a cancel (:meth:`update_from_output` skips them)."""
        for seq in seqs:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, now, error=error)

    def fail_batch(self, batch: Batch, error: WsserveError, now: float) -> None:
        """End every unfinished sequence of ``batch`` with ``error`` (a failed model step)."""
        if batch is self._batch:
            self._batch = None
        for seq in batch.seqs:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, now, error=error)

    def abort_all(self, error: WsserveError, now: float) -> None:
        """End every running and waiting sequence with ``error`` (shutdown)."""
        self._batch = None
        for seq in [*self._run.sequences, *self._waiting[1], *self._waiting[0], *self._held]:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, now, error=error)

    def next_deadline(self) -> float | None:
        """The earliest deadline of an unfinished sequence (one held for its pattern included), or None."""
        heap = self._deadlines
        while heap and heap[0][2].state is SeqState.FINISHED:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> None:
        """End the sequences whose deadline has passed with ``DeadlineExceeded`` (as
        :meth:`schedule` does; for sequences held for their pattern while nothing is scheduled)."""
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)

    def has_unfinished(self) -> bool:
        return len(self._run) > 0 or self._waiting[0].n > 0 or self._waiting[1].n > 0

    def take_events(self) -> list[Event]:
        """The events since the last call, in order (see the module docstring)."""
        out, self._out = self._out, []
        if not self._blocks:
            return out  # type: ignore[return-value]
        self._blocks = 0
        events: list[Event] = []
        for item in out:
            if type(item) is TokenEvents:
                events.extend(item.events())
            else:
                events.append(item)  # type: ignore[arg-type]
        return events

    def take_output(self) -> list[Event | TokenEvents]:
        """:meth:`take_events` with each step's plain token events left as one
        :class:`~.sequence.TokenEvents` block (what the engine delivers from)."""
        out, self._out = self._out, []
        self._blocks = 0
        return out

    # -- the step --------------------------------------------------------------------
    def schedule(self, now: float) -> Batch | None:
        """Expire deadlines, admit waiting sequences, and return the next batch (or None).

        Raises ``RuntimeError`` if the previous batch was not given back
        (:meth:`update_from_output` or :meth:`fail_batch`)."""
        if self._batch is not None:
            raise RuntimeError("schedule() called before the previous batch was given back "
                               "(update_from_output or fail_batch)")
        self._last_now = now
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)
        waiting, run = self._waiting, self._run
        if waiting[0].n or waiting[1].n:
            for queue in (waiting[1], waiting[0]):
                while queue.n and run.free:
                    self._admit(queue.pop(), now)
            if not run.free and (waiting[0].n or waiting[1].n):
                self._rebalance(now)
        seqs, contexts, sampling, noise = run.batch()
        if not seqs:
            return None
        batch = self._batch = Batch(seqs, contexts, sampling, noise, now, run.penalties(), run.logit_bias,
                                    run.logprob_rows, run.ban, run.allow)
        return batch

    def update_from_output(self, batch: Batch, tokens: np.ndarray, now: float,
                           logprobs: StepLogprobs | None = None) -> None:
        """Apply one token per row of ``batch`` (``tokens [B]`` int ids); finish what ends.
        ``logprobs``: the step's log-probabilities of ``batch.logprobs``'s rows
        (:func:`~.logprobs.step_logprobs`); without them those rows' events carry text only.

        Deadlines are checked first: a sequence whose deadline passed during the
        step gets its error, not the token.  Raises ``RuntimeError`` if ``batch``
        is not the one the last :meth:`schedule` returned (or was given back
        already), and ``IndexError`` for a token id outside the vocabulary
        (nothing is applied then).
        """
        if batch is not self._batch:
            raise RuntimeError("update_from_output() needs the batch of the last schedule(), once")
        run = self._run
        texts = run.texts(tokens)  # may raise: nothing changed yet
        self._batch = None
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)
        self._steps += 1
        self._last_batch = size = batch.size
        elapsed = now - batch.scheduled_at
        self._step_s = elapsed if self._steps == 1 else self._step_s + 0.2 * (elapsed - self._step_s)
        numbers, ending = run.advance(batch.contexts, tokens, now)
        seqs = batch.seqs
        if run.changed:  # a row ended during the step: it streams nothing more
            mask: list[bool] | None = [s.state is _RUNNING and s._plain for s in seqs]
            emitted = sum(mask)  # type: ignore[arg-type]
        else:
            mask, emitted = run.plain, run.n_plain
        if emitted:  # the plain rows stream their token as is: one block
            self._out.append(TokenEvents(seqs, numbers, texts, mask))
            self._blocks += 1
        if run.stop_rows:
            logged = None
            if logprobs is not None and batch.logprobs is not None:
                logged = self._records(seqs, batch.logprobs, logprobs, tokens, texts)
            emitted += self._emit_stops(seqs, texts, numbers, tokens, run.stop_rows, logged, now)
        if ending:
            for seq in list(ending):
                if seq.state is _RUNNING:  # a guided one may have ended with its choice (stop) above
                    self._finish(seq, now, reason="length")
        self._generated += size
        self._tokens += emitted

    def _records(self, seqs: tuple[Sequence, ...], spec: LogprobRows, values: StepLogprobs, tokens: np.ndarray,
                 texts: list[str]) -> list[TokenLogprobs]:
        """The :class:`~.logprobs.TokenLogprobs` of each of ``spec``'s rows (in its order), each
        with the ``k`` alternatives its own request asked for."""
        rows = spec.rows.tolist()
        chosen = values.chosen.tolist()
        top_ids = values.top_ids.tolist()
        top_texts = self._run.texts(values.top_ids)
        top = values.top.tolist()
        ranks = values.ranks.tolist() if values.ranks is not None else None
        records = []
        for j, i in enumerate(rows):
            p = seqs[i].params
            k = p.logprobs or 0
            records.append(TokenLogprobs(int(tokens[i]), texts[i], chosen[j],
                                         tuple(zip(top_ids[j][:k], top_texts[j][:k], top[j][:k])),
                                         ranks[j] if ranks is not None and p.logprob_ranks else None))
        return records

    def _emit_stops(self, seqs: tuple[Sequence, ...], texts: list[str], numbers: list[int], tokens: np.ndarray,
                    rows: list[int], logged: list[TokenLogprobs] | None, now: float) -> int:
        """Token events of the running rows that are not plain (held-back text released,
        a completed stop string or a stop token ends the sequence; log-probabilities with the
        text of the tokens they belong to); returns how many."""
        out, emitted, tick = self._out, 0, self._run.tick.value
        for i in rows:
            seq = seqs[i]
            if seq.state is not _RUNNING:
                continue
            text = texts[i]
            record = logged[seq._lrow] if logged is not None and seq._lrow >= 0 else None
            guide = seq._guide
            # END_AFTER: the text is a choice (or a match nothing extends); END_BEFORE: the text
            # matched and the model chose to end there (this token is not generated)
            try:
                outcome = CONTINUE if guide is None else guide.advance(int(tokens[i]), text)
            except ValueError:  # the model gave every allowed token -inf (or NaN): this row only
                self._finish(seq, now, error=Internal(
                    f"the model gave token {int(tokens[i])}, which the guide did not allow: its logits left no "
                    "allowed token a finite value"))
                continue
            chosen = outcome == END_AFTER
            matcher = seq._stops
            if outcome == END_BEFORE:
                seq._refused = 1  # not generated: no part of its output (completion_tokens)
            if matcher is None:  # logprobs or a guide: the token goes out whole (it ends by length elsewhere)
                if outcome != END_BEFORE:
                    out.append((seq, numbers[i], _logged(text, record)))
                    emitted += 1
                    seq._streamed += 1
                if outcome:
                    self._finish(seq, now, reason="stop")
                continue
            if outcome == END_BEFORE:  # as a stop token: not streamed, the held tokens go out whole
                released, stopped = "", STOPPED_ON_TOKEN
            else:
                released, stopped = matcher.feed(text, int(tokens[i]))
            length = tick - seq._base >= seq.params.max_tokens
            if not stopped and (length or chosen):
                released += matcher.flush()
            n = seq._streamed
            pieces = seq._pieces
            if stopped == STOPPED_ON_TOKEN:  # not streamed; the tokens held before it go out whole
                held = seq._logged
                for piece in pieces:
                    out.append((seq, n, _logged(piece, held.pop(0) if held else None)))
                    n += 1
                pieces.clear()
            elif not pieces and released == text:  # nothing held: the token goes out whole
                out.append((seq, n, _logged(text, record)))
                n += 1
            else:  # a token goes out whole once all its text is released (one frame per token)
                pieces.append(text)
                held = seq._logged  # with logprobs: one record (or None) per held piece
                if seq.params.logprobs is not None:
                    held.append(record)  # type: ignore[arg-type]
                safe = seq._safe + len(released)
                while pieces and len(pieces[0]) <= safe:
                    piece = pieces.pop(0)
                    safe -= len(piece)
                    out.append((seq, n, _logged(piece, held.pop(0) if held else None)))
                    n += 1
                if stopped and safe:  # the stop string begins inside a held token: its text before it
                    out.append((seq, n, _logged(pieces[0][:safe], held[0] if held else None)))
                    n += 1
                seq._safe = safe
            emitted += n - seq._streamed
            seq._streamed = n
            if stopped or chosen:
                self._finish(seq, now, reason="stop")
            elif length:
                self._finish(seq, now, reason="length")
        return emitted

    # -- introspection ---------------------------------------------------------------
    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            running=len(self._run),
            waiting=len(self._waiting[0]) + len(self._waiting[1]),
            max_generate_batch=self.max_generate_batch,
            max_generate_queue=self.max_generate_queue,
            steps=self._steps,
            tokens=self._tokens,
            generated=self._generated,
            finished=self._finished,
            last_batch_size=self._last_batch,
            step_ms=round(self._step_s * 1e3, 4),
            preempted=self._preempted,
            oldest_wait_s=max(0.0, self._last_now - min(
                (s.arrival for q in self._waiting for s in q), default=self._last_now)),
        )

    # -- internals -------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, seq = heapq.heappop(heap)
            if seq.state is not SeqState.FINISHED:
                waited = (now - seq.arrival) * 1e3
                self._finish(seq, now, error=DeadlineExceeded(
                    f"deadline exceeded after {waited:.1f} ms "
                    f"({seq.streamed} tokens streamed, {seq.state.value})"))

    def _admit(self, seq: Sequence, now: float) -> None:
        """Give ``seq`` a free slot.  Whatever can fail runs before any state changes;
        a failure ends this sequence only (``Internal``), never the scheduler."""
        p = seq.params
        try:
            context = seq._context
            if context is None or context.shape != (self.model.context_len,):
                raise ValueError(f"context of shape {getattr(context, 'shape', None)}")
            rng = seq._rng
            if p.temperature > 0 and rng is None:
                rng = new_generator(p.seed)
        except Exception as exc:  # noqa: BLE001 - one sequence's failure stays in it
            # Already out of its wait queue: end it without touching the queues.
            self._ended(seq, now, None, Internal(f"could not start the generation: {type(exc).__name__}: {exc}"))
            return
        if seq.admitted_at is None:
            seq.admitted_at = now
        seq._rng = rng
        self._run.add(seq, context)
        key = seq.group if seq.group is not None else seq
        self._group_running[key] = self._group_running.get(key, 0) + 1

    def _rebalance(self, now: float) -> None:
        """Fair share: while a waiting group runs fewer than ``ceil(max_generate_batch /
        groups)`` sequences and another runs more, pause the latter's most recently
        admitted sequence (it keeps its state and resumes first) and admit the former's."""
        running = self._group_running
        groups = set(running)
        for queue in self._waiting:
            groups.update(queue.groups())
        share = -(-self.max_generate_batch // len(groups))
        while True:
            found = None
            for priority in (1, 0):
                queue = self._waiting[priority]
                found = next((g for g in queue.groups() if running.get(g, 0) < share), None)
                if found is not None:
                    break
            if found is None:
                return
            victim_group = max(running, key=running.__getitem__)
            if running[victim_group] <= share:
                return
            victim = next(s for s in reversed(self._run.sequences)
                          if s.state is _RUNNING and (s.group if s.group is not None else s) == victim_group)
            self._preempt(victim)
            self._admit(self._waiting[priority].pop_group(found), now)

    def _preempt(self, seq: Sequence) -> None:
        """Move running ``seq`` back to the front of its group's wait queue, with its state."""
        self._release(seq, keep=True)
        seq.state = SeqState.WAITING
        self._waiting[seq.params.priority].push(seq, front=True)
        self._preempted += 1

    def _release(self, seq: Sequence, *, keep: bool = False) -> None:
        """Free a running sequence's slot and count."""
        self._run.remove(seq, keep=keep)
        key = seq.group if seq.group is not None else seq
        left = self._group_running[key] - 1
        if left > 0:
            self._group_running[key] = left
        else:
            del self._group_running[key]

    def _finish(self, seq: Sequence, now: float, *, reason: str | None = None,
                error: WsserveError | None = None) -> None:
        if seq.state is SeqState.WAITING:
            self._waiting[seq.params.priority].remove(seq)
        elif seq.state is SeqState.COMPILING:
            del self._held[seq]
            self.held_ended += 1
        elif seq.state is _RUNNING:
            self._release(seq)
        self._ended(seq, now, reason, error)

    def _ended(self, seq: Sequence, now: float, reason: str | None, error: WsserveError | None) -> None:
        """Mark ``seq`` finished (it holds no slot and no queue place) and emit its terminal event."""
        seq.state = SeqState.FINISHED
        seq.finish_reason, seq.error, seq.finished_at = reason, error, now
        seq._rng = seq._context = seq._noise = None
        self._finished += 1
        self._out.append((seq, FINISHED, ""))

    def _retry_after_ms(self) -> int:
        running = [s for s in self._run.sequences if s.state is _RUNNING]
        if not running:
            return 100
        soonest = min(s.params.max_tokens - s.generated for s in running)
        return int(min(10_000, max(1, soonest * max(self._step_s, 1e-4) * 1e3)))


def _logged(text: str, record: TokenLogprobs | None) -> str | LoggedText:
    """A token event's text: with its record when the generation asked for logprobs."""
    return text if record is None else LoggedText(text, record)
