"""One generation as the scheduler tracks it: :class:`Sequence`, its events and its state.

A running sequence does no per-step bookkeeping of its own: every running
sequence gets exactly one token per step, so its token count is derived from
the scheduler's step counter (:class:`Tick`) and the step at which it started
(``generated = tick - base``).  Only sequences with stop strings keep a
separate count of the tokens they streamed (text may be held back); so do sequences with
stop token ids (a stop token whose text is not output is not streamed).  What a generation's
usage reports is :attr:`Sequence.completion_tokens`: vLLM's count of its output token ids.

The text of a token event is a ``str``, or a :class:`LoggedText` for a generation that
asked for ``logprobs`` (its text and its :class:`~.logprobs.TokenLogprobs`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from itertools import compress
from typing import Any, NamedTuple

import numpy as np

from ..errors import WsserveError
from .guided import ChoiceGuide
from .logprobs import TokenLogprobs
from .params import GenerationParams
from .stops import StopMatcher
from .structured import RegexGuide

__all__ = ["FINISHED", "Event", "LoggedText", "SeqState", "Sequence", "Tick", "TokenEvents"]

#: ``n`` of a sequence's terminal event.
FINISHED = -1


class SeqState(enum.Enum):
    WAITING = "waiting"
    COMPILING = "compiling"  # held until its guided_regex / guided_json is compiled (not queued yet)
    RUNNING = "running"
    FINISHED = "finished"


class Tick:
    """A scheduler's step counter (model steps applied), shared with its sequences."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Sequence:
    """One generation; also the handle the engine hands out.  Read-only outside the scheduler.

    ``finish_reason`` is ``"length" | "stop" | "cancelled"`` for a normal end, or
    ``None`` with ``error`` set.  ``owner`` is the caller's (the engine keeps the sink there).
    ``generated`` counts the tokens the model produced for it (held-back and stop
    text included), ``streamed`` its token events (the ``tokens`` of ``done``),
    ``completion_tokens`` the tokens of its output as vLLM counts them (OpenAI's
    ``usage.completion_tokens``).
    ``prompt_tokens`` is the number of token ids the model was given for the prompt
    (set when the request is added; OpenAI's ``usage.prompt_tokens``).
    """

    __slots__ = (
        "_base",
        "_context",
        "_counts",
        "_end",
        "_gen",
        "_guide",
        "_logged",
        "_lrow",
        "_noise",
        "_pieces",
        "_prompt_ids",
        "_plain",
        "_refill",
        "_refused",
        "_rng",
        "_row",
        "_safe",
        "_srow",
        "_stops",
        "_streamed",
        "_tick",
        "admitted_at",
        "arrival",
        "error",
        "finish_reason",
        "finished_at",
        "first_token_at",
        "group",
        "id",
        "owner",
        "params",
        "prompt_tokens",
        "slot",
        "state",
    )

    def __init__(
        self, seq_id: int, params: GenerationParams, owner: Any, now: float, group: Any = None, tick: Tick | None = None
    ) -> None:
        self.id = seq_id
        self.params = params
        self.prompt_tokens = 0
        self.owner = owner
        self.group = group  # fairness key (the connection); None: a group of its own
        self.state = SeqState.WAITING
        self.slot = -1
        self.arrival = now
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.error: WsserveError | None = None
        self._tick = tick if tick is not None else Tick()
        self._gen = 0  # tokens generated, while not running
        self._base = 0  # while running: generated = tick - base
        self._streamed = 0  # token events emitted (kept only with stop strings or a guide; else = generated)
        self._refused = 0  # 1 once a guide ended it before its last step's token (that token is not generated)
        self._stops = StopMatcher(params.stop, token_ids=params.stop_token_ids, min_tokens=params.min_tokens,
                                  include=params.include_stop_str_in_output) \
            if params.stop or params.stop_token_ids else None
        # With stop strings or stop token ids: the tokens generated but not streamed yet (some of their text is
        # held back), and how many of their characters the matcher has released.
        self._pieces: list[str] = []
        self._safe = 0
        # With logprobs: the records of the held tokens (as _pieces), and the row among the
        # layout's logprob rows.  A plain sequence (no stop strings, no stop token ids, no
        # logprobs, no guided choice) streams each token as is, in the step's one block of events.
        self._logged: list[TokenLogprobs] = []
        self._lrow = -1
        self._plain = self._stops is None and params.logprobs is None and not params.guided
        #: With ``guided_choice``: its progress (:class:`~.guided.ChoiceGuide`), set when queued;
        #: with ``guided_regex`` / ``guided_json``: :class:`~.structured.RegexGuide`, once compiled.
        self._guide: ChoiceGuide | RegexGuide | None = None
        self._rng: np.random.Generator | None = None
        self._context: np.ndarray | None = None  # [k] while not laid out (arrival, admission, preemption)
        self._noise: np.ndarray | None = None  # the current noise block, saved on preemption mid-block
        self._counts: np.ndarray | None = None  # [V] tokens generated so far (penalties), saved on preemption
        self._prompt_ids: np.ndarray | None = None  # the prompt's distinct token ids (repetition penalty)
        self._row = -1  # row in the running layout
        self._srow = -1  # row among the layout's sampled rows
        self._end = -1  # tick at which it ends by length (no stop strings or ids), while running
        self._refill = -1  # tick at which it needs a new noise block (sampled), while running

    @property
    def finished(self) -> bool:
        return self.state is SeqState.FINISHED

    @property
    def generated(self) -> int:
        """Tokens the model produced for this sequence (held-back and stop text included)."""
        if self.state is SeqState.RUNNING:
            return self._tick.value - self._base
        return self._gen

    @property
    def streamed(self) -> int:
        """Token events emitted (``tokens`` of ``done``)."""
        return self.generated if self._stops is None and self._guide is None else self._streamed

    @property
    def completion_tokens(self) -> int:
        """The tokens of its output as vLLM counts them (the length of its output token ids, OpenAI's
        ``usage.completion_tokens``): every token generated, the tokens of a stop string and a stop
        token (``stop_token_ids``) included, whether or not their text is sent; not the token at
        which a guide ended it (:mod:`.structured`: that token is not generated)."""
        return self.generated - self._refused

    def timing(self) -> dict[str, float | None]:
        """``queue_ms`` (arrival -> slot), ``ttft_ms`` (arrival -> first generated token,
        None if none), ``total_ms`` (arrival -> finish, or so far)."""
        end = self.finished_at if self.finished_at is not None else self.arrival
        admitted = self.admitted_at if self.admitted_at is not None else end
        first = self.first_token_at
        return {
            "queue_ms": round((admitted - self.arrival) * 1e3, 3),
            "ttft_ms": None if first is None else round((first - self.arrival) * 1e3, 3),
            "total_ms": round((end - self.arrival) * 1e3, 3),
        }

    def __repr__(self) -> str:
        return f"<Sequence {self.id} {self.state.value} generated={self.generated}>"


class LoggedText(NamedTuple):
    """The text of a token event of a generation that asked for ``logprobs``, with its record."""

    text: str
    logprobs: TokenLogprobs


#: ``(seq, n, text)``: token ``n`` of ``seq``, or its terminal event when ``n == FINISHED``;
#: ``text`` is a :class:`LoggedText` for a generation with ``logprobs``.
Event = tuple[Sequence, int, "str | LoggedText"]


class TokenEvents:
    """One step's token events of the rows that stream their token as is, kept as columns:
    token ``numbers[i]`` of ``seqs[i]`` is ``texts[i]``, for every row where ``mask[i]``
    (``mask`` None: every row).  ``seqs`` is the layout's tuple, the same object from
    step to step until the running set changes (consumers may cache per-row values by it).
    """

    __slots__ = ("mask", "numbers", "seqs", "texts")

    def __init__(self, seqs: tuple[Sequence, ...], numbers: list[int], texts: list[str], mask: list[bool] | None) -> None:
        self.seqs, self.numbers, self.texts, self.mask = seqs, numbers, texts, mask

    def events(self) -> Iterator[Event]:
        """The same events as ``(seq, n, text)`` tuples, in row order."""
        rows = zip(self.seqs, self.numbers, self.texts)
        return rows if self.mask is None else compress(rows, self.mask)
