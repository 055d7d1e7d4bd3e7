"""The asyncio driver of continuous batching: :class:`GenerationEngine`.

One task runs the step loop: ``schedule -> step -> update_from_output ->
deliver``, where *step* (:func:`run_step`) computes the next token of every
running sequence in one vectorized numpy call.  Batches of more than
``inline_max_batch`` sequences run in a one-thread executor, pipelined: while
step N+1 computes there, the loop thread delivers step N's tokens to the sinks
(and serves sockets).  Smaller batches run inline, followed by ``sleep(0)`` so
I/O still runs between steps.  The default (64) comes from measurements on the
2-core development machine (``benchmarks/results/generate.md``): an executor
round trip costs ~40-90 us, the model step and sampling (:func:`run_step`) of
16 / 64 / 256 sequences ~30 / 65 / 235 us; in-process, inline steps won at
every size, so a step goes to the executor only when it would block the loop
for more than about two round trips.  With ``inline_max_flops`` (the server's
``--inline-max-flops``, as for predict batches) a step inline also costs at most
that many multiply-adds (the model's ``flops_per_row`` a token): a model that
does not say what a token costs, or a costly one, computes every step in the
executor, so a slow (or hung) ``logits()`` never holds up the event loop.

Per step, the Python work per sequence is one list element of token numbers and
one sink call per streamed token: the scheduler keeps the running set as
arrays and counters (:mod:`.running`), stop strings are matched only on the
rows that have them, and each step's other tokens arrive as one
:class:`~.sequence.TokenEvents` block delivered through bound ``on_token``
methods cached per layout (called from C: ``map(operator.call, ...)``).  With nothing
to do the task sleeps on an ``asyncio.Event`` (no polling).

Failures.  A step of several sequences whose ``logits()`` (or sampling) raises is
computed again row by row, where it ran (:func:`run_step_rows`): only the
sequences whose own row fails end with ``Internal``; the others get their token
as from any step (``isolated_steps``, and the observer's optional
``on_isolated(model)``, count such steps).  A failed step of one sequence ends it.

Structured outputs.  A ``guided_regex`` / ``guided_json`` pattern is compiled once per pattern
in a short-lived child process with hard memory and CPU limits and a timeout
(:func:`~.guide_sandbox.compile_in_child`: a hostile pattern kills only its child; at most two
at once per engine, a freed slot to the client with the fewest compiles running: its API key, else
its address, :mod:`.fairslots`), while its sequences wait in the scheduler as ``COMPILING``; compiled indexes
are kept in an LRU of ``max_guide_indexes``, the refusals of patterns that cannot compile (not
those that hit the wall-clock timeout) in an LRU of :data:`_MAX_GUIDE_REFUSALS`.  A compile no
request waits for any more (every held sequence cancelled or ended, every :meth:`prepare` future
cancelled) is cancelled, which kills its child; :meth:`close` kills those in flight.  A caller
that wants a refusal before it commits (the HTTP routes: a 400 before a stream starts) awaits
:meth:`GenerationEngine.prepare` first.

Sinks.  ``submit(params, sink)`` streams into ``sink``, an object with::

    on_token(seq: int, text: str)        # seq = 0, 1, 2, ... one per streamed token
    on_token_logprobs(seq, text, logprobs)   # instead, for a generation with ``logprobs``
                                         # (needed only by a sink that asks for them)
    on_done(reason: str, tokens: int, timing: dict)   # "length" | "stop" | "cancelled"
    on_error(exc: WsserveError)          # DeadlineExceeded, ShuttingDown, Internal

called on the event-loop thread; they must not block.  Exactly one of
``on_done``/``on_error`` is called per submission, and nothing after it.
``tokens`` in ``on_done`` is the number of ``on_token`` calls.  ``timing`` holds
``queue_ms``, ``ttft_ms`` (to the first generated token; ``None`` if there was
none) and ``total_ms``, measured from ``submit``.  A sink method that raises is
logged and the generation is ended with ``Internal`` (reported to the same sink,
best effort).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import compress
from typing import Any, Protocol

import numpy as np

from ..errors import BadRequest, Internal, Overloaded, ShuttingDown, WsserveError
from ..metrics import VersionStats
from ..stats import WorkerStatistics
from .fairslots import FairSlots, SlotStatistics
from .guide_sandbox import (
    CompileLimits,
    PatternTooComplex,
    compile_in_child,
    vocabulary_payload,
)
from .logprobs import (
    MAX_SCORED_VALUES,
    PromptScore,
    StepLogprobs,
    TokenLogprobs,
    step_logprobs,
)
from .model import UNKNOWN_FLOPS_PER_TOKEN
from .params import GenerationParams
from .running import checked_prompt_ids
from .sampling import apply_penalties, sample_rows
from .scheduler import Batch, Scheduler, Sequence, TokenModel
from .sequence import SeqState, TokenEvents
from .structured import GuidePattern, IndexCache, RegexIndex

__all__ = ["GenerationEngine", "StepObserver", "TokenSink", "run_step", "run_step_logprobs"]

log = logging.getLogger(__name__)

_LIST_ITERATOR = type(iter([]))
#: Patterns an engine compiles at once, each in its own child process (more wait their turn;
#: generations go on meanwhile).
_MAX_CONCURRENT_BUILDS = 2
#: Refusals of patterns that cannot be compiled an engine remembers (so a repeated hostile
#: pattern is refused without a child), least recently used dropped first.
_MAX_GUIDE_REFUSALS = 256


class _TokenCalls:
    """One unmasked token block as ``map(operator.call, on_token methods, numbers, texts)``:
    consuming it makes every sink call from C, with no per-token bytecode.  After a call
    raised, :meth:`failed` names its sequence (the map continues after it)."""

    __slots__ = ("_left", "_seqs", "calls")

    def __init__(self, calls: list[Any], block: TokenEvents) -> None:
        self._left = left = iter(calls)
        self._seqs = block.seqs
        self.calls = map(operator.call, left, block.numbers, block.texts)

    def failed(self) -> Sequence:
        """The sequence whose ``on_token`` raised last (call right after the exception)."""
        return self._seqs[len(self._seqs) - operator.length_hint(self._left) - 1]


class StepObserver(Protocol):
    """Optional hook for metrics: ``on_batch`` is called once per computed step; an observer may
    also define ``on_isolated(model)``, called once per failed step computed again row by row, and
    ``on_generation_done(model, prompt_tokens, ttft_s, tpot_s)``, called once per generation that
    took a batch slot, when it ends (see :meth:`~wsserve.metrics.Metrics.on_generation_done`), and
    ``on_prompt_scored(model, tokens)``, called once per prompt scored to its end (``echo`` with
    ``logprobs``), and ``on_guide_compile(model, result, seconds)``, called once per
    ``guided_regex`` / ``guided_json`` compile that ended (see
    :meth:`~wsserve.metrics.Metrics.on_guide_compile`)."""

    def on_batch(self, model: str, rows: int, compute_s: float) -> None: ...


class TokenSink(Protocol):
    def on_token(self, seq: int, text: str) -> None: ...

    def on_token_logprobs(self, seq: int, text: str, logprobs: TokenLogprobs) -> None: ...

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None: ...

    def on_error(self, exc: WsserveError) -> None: ...


def _sampled(logits: np.ndarray, batch: Batch) -> np.ndarray:
    """``[B]`` next-token ids from the model's raw ``logits [B, V]`` with ``batch``'s penalties,
    biases, bans, guided choices' masks and sampling applied."""
    return sample_rows(apply_penalties(logits, batch.penalties, batch.bias, batch.ban, batch.allow), batch.sampling,
                       batch.noise)


def run_step(model: TokenModel, batch: Batch) -> np.ndarray:
    """One model step for ``batch``: ``[B]`` int64 next-token ids.  Pure; thread-safe."""
    return _sampled(model.logits(batch.contexts), batch)  # [B, k] -> [B, V] -> [B]


def run_step_logprobs(model: TokenModel, batch: Batch) -> tuple[np.ndarray, StepLogprobs | None]:
    """:func:`run_step`, and the log-probabilities of ``batch.logprobs``'s rows from the model's
    raw logits (None when no row wants them).  Pure; thread-safe."""
    if batch.logprobs is None:
        return run_step(model, batch), None
    raw = model.logits(batch.contexts)  # [B, V]
    tokens = _sampled(raw, batch)
    return tokens, step_logprobs(raw, tokens, batch.logprobs)


def run_step_rows(model: TokenModel, batch: Batch
                  ) -> tuple[np.ndarray | None, dict[int, Exception], StepLogprobs | None]:
    """:func:`run_step_logprobs` with each row's logits computed alone (after the whole step
    failed): ``(tokens [B], failed, logprobs)`` where ``failed`` maps the rows whose ``logits()``
    raised to their exception (their tokens are meaningless); ``tokens`` is None when every row failed.
    Sampling runs once over the stacked rows, so each good row gets the token it gets in any
    batch (a row-pure model).  Pure; thread-safe."""
    contexts = batch.contexts
    rows: list[np.ndarray | None] = []
    failed: dict[int, Exception] = {}
    for i in range(len(contexts)):
        try:
            rows.append(model.logits(contexts[i : i + 1]))
        except Exception as exc:  # noqa: BLE001 - this row's own failure
            rows.append(None)
            failed[i] = exc
    good = next((r for r in rows if r is not None), None)
    if good is None:
        return None, failed, None
    logits = np.zeros((len(rows), good.shape[1]), dtype=good.dtype)
    for i, r in enumerate(rows):
        if r is not None:
            logits[i] = r[0]
    tokens = _sampled(logits, batch)
    return tokens, failed, None if batch.logprobs is None else step_logprobs(logits, tokens, batch.logprobs)


class _CompileSlots:
    """The asyncio shell of :class:`~.fairslots.FairSlots`: at most ``size`` compiles at once, a
    freed slot to the waiting compile whose client (:func:`~.fairslots.compile_client`: the
    request's API key, else its address) holds the fewest, the oldest among equals: a client
    that queued many patterns (each up to the child's CPU limit), from however many
    connections, does not hold every slot in turn while another client's pattern waits."""

    __slots__ = ("_core",)

    def __init__(self, size: int) -> None:
        self._core: FairSlots[asyncio.Future[None]] = FairSlots(size)

    async def acquire(self, client: Any) -> None:
        """Wait for a slot for ``client``; the caller :meth:`release` s it once done (cancelled
        while waiting: no slot is held)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._core.request(client, future):
            return
        try:
            await future
        except asyncio.CancelledError:
            if not self._core.withdraw(future) and not future.cancelled():  # handed a slot as it was cancelled
                self.release(client)
            raise

    def release(self, client: Any) -> None:
        """Give back ``client``'s slot; the next waiting compile (the class docstring) takes it."""
        for taker, future in self._core.release(client):
            if future.done():  # cancelled before it could take it: pass it on
                self.release(taker)
            else:
                future.set_result(None)

    def statistics(self) -> SlotStatistics:
        return self._core.statistics()


class _Compiling:
    """A pattern being compiled: the sequences held for it, the futures of
    :meth:`GenerationEngine.prepare`, the task compiling it, and the client of the request that
    started it (whose fair share of the compile slots it takes: :class:`_CompileSlots`)."""

    __slots__ = ("key", "seqs", "waiters", "task", "client", "abandoned")

    def __init__(self, key: tuple[str, str], client: Any = None) -> None:
        self.key = key
        self.client = client
        self.seqs: list[Sequence] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None
        #: cancelled because no request waits for it any more (not by close())
        self.abandoned = False

    def wanted(self) -> bool:
        """Whether a held sequence or a ``prepare`` future still waits for it."""
        return any(seq.state is SeqState.COMPILING for seq in self.seqs) or any(
            not f.done() for f in self.waiters)


class GenerationEngine:
    """Continuous batching over one :class:`TokenModel` on the running event loop.

    Call order: ``start()`` (optional; ``submit`` starts it) from the event loop,
    ``submit``/``cancel`` from the loop thread at any time, ``await close()`` once
    at the end (idempotent).
    """

    def __init__(
        self,
        model: TokenModel,
        *,
        name: str = "",
        # Limits
        max_generate_batch: int = 256,
        max_generate_queue: int | None = 4096,
        max_guide_indexes: int | None = 64,
        guide_compile_limits: CompileLimits | None = None,
        # Compute
        inline_max_batch: int = 64,
        inline_max_flops: int | None = None,
        observer: StepObserver | None = None,
        after_delivery: Callable[[], None] | None = None,
    ) -> None:
        """``inline_max_flops``: see the module docstring (None: only ``inline_max_batch`` decides).
        ``observer.on_batch(name, sequences, seconds)`` is called once per step (metrics);
        ``after_delivery`` after each step's tokens were handed to their sinks (the
        server writes the frames then, rather than one loop iteration later).
        ``max_guide_indexes``: how many compiled ``guided_regex`` / ``guided_json`` patterns
        (:class:`~.structured.RegexIndex`) the engine keeps, least recently used dropped first.
        ``guide_compile_limits``: the hard limits of each compiling child process (None: the
        documented defaults, :class:`~.guide_sandbox.CompileLimits`; the server passes its
        ``guide_compile_*`` settings, or a model's config.toml's)."""
        if inline_max_batch < 0:
            raise ValueError(f"inline_max_batch must be >= 0, got {inline_max_batch}")
        self.model = model
        self.name = name
        self._observer = observer
        self._on_generation_done = getattr(observer, "on_generation_done", None)
        self._on_prompt_scored = getattr(observer, "on_prompt_scored", None)
        self._on_guide_compile = getattr(observer, "on_guide_compile", None)
        #: This version's :class:`~wsserve.metrics.VersionStats` (set by the pool; None: not
        #: counted): each step is recorded there as one execution of its sequences.
        self.stats: VersionStats | None = None
        self._after_delivery = after_delivery
        self._sched = Scheduler(model, max_generate_batch=max_generate_batch, max_generate_queue=max_generate_queue)
        if inline_max_flops is not None:  # and no step costing more than that (a model that does not
            # say what a token costs is "unknown": every step in the thread)
            cost = getattr(model, "flops_per_row", None)
            per_token = cost() if callable(cost) else UNKNOWN_FLOPS_PER_TOKEN
            inline_max_batch = min(inline_max_batch, inline_max_flops // max(1, per_token))
        self._inline_max_batch = inline_max_batch
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._executor_steps = 0
        #: Steps of several sequences that failed and whose rows were computed alone.
        self.isolated_steps = 0
        self._pending: deque[Iterator[Any]] = deque()  # event lists (and a token block) being delivered
        self._calls_for: tuple[Sequence, ...] | None = None  # the layout _calls belongs to
        self._calls: list[Any] = []
        self._exhaust = deque(maxlen=0).extend  # runs an iterator to its end in C
        self._idle = asyncio.Event()  # set while nothing is unfinished
        self._idle.set()
        #: prompts to score (``score_prompt``), each with the future of its records
        self._scores: deque[tuple[PromptScore, asyncio.Future[Any]]] = deque()
        #: compiled guided_regex / guided_json patterns, and the sequences held per pattern being compiled
        self._indexes = IndexCache(max_guide_indexes)
        self._building: dict[tuple[str, str], _Compiling] = {}
        self._build_tasks: set[asyncio.Task[None]] = set()
        #: refusals of patterns that cannot compile (their messages after "field '...': "; another
        #: request may name another field), so a repeated one costs no child
        self._refusals: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._vocabulary: bytes | None = None  # the model's token texts as a compiling child reads them
        #: at most this many patterns compile at once (each holds a child process and a core
        #: meanwhile), a freed slot to the client with the fewest running
        self._build_slots = _CompileSlots(_MAX_CONCURRENT_BUILDS)
        self._compile_limits = guide_compile_limits or CompileLimits()
        self._held_ended = 0  # the scheduler's held_ended when the compiles were last checked

    # -- public API ------------------------------------------------------------------
    def start(self) -> None:
        """Start the step loop on the running loop (idempotent).  Raises ``RuntimeError`` if closed."""
        if self._closed:
            raise RuntimeError("generation engine is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="wsserve-generate")

    def submit(
        self, params: GenerationParams, sink: TokenSink, *, group: Any = None, deadline: float | None = None,
        client: Any = None, bounded: bool = True,
    ) -> Sequence:
        """Queue a generation streaming into ``sink``; return its handle (its ``prompt_tokens``,
        the token ids the model was given for the prompt, is set before this returns).

        ``group`` is the fairness key of the batch slots (the client connection, see
        :class:`~wsserve.generation.scheduler.Scheduler`); ``client`` that of the compile slots
        (:func:`~.fairslots.compile_client`; None: ``group``); ``deadline`` is in
        ``time.monotonic()`` seconds.  Raises :class:`~wsserve.errors.Overloaded`
        (queue full, with ``retry_after_ms``) or :class:`~wsserve.errors.ShuttingDown`
        (closed); the sink is then never called.  ``bounded`` false: not refused for a full queue
        (a later choice of a request whose first choice was queued; :meth:`~.scheduler.Scheduler.add_request`).
        """
        if self._closed:
            raise ShuttingDown("generation engine is shutting down")
        self.start()
        pattern = GuidePattern.of(params) if params.guided_regex or params.guided_json else None
        if pattern is None:
            seq = self._sched.add_request(params, time.monotonic(), owner=sink, group=group, deadline=deadline,
                                          bounded=bounded)
        else:  # compiled once per pattern, in a child process: the sequence is held until then
            index = self._indexes.get(pattern.key)
            seq = self._sched.add_request(params, time.monotonic(), owner=sink, group=group, deadline=deadline,
                                          index=index, hold=index is None, bounded=bounded)
            if index is None:
                self._compile(pattern, group if client is None else client).seqs.append(seq)
        self._idle.clear()
        self._wakeup.set()
        return seq

    def prepare(self, params: GenerationParams, *, group: Any = None, client: Any = None
                ) -> asyncio.Future[None] | None:
        """For a ``guided_regex`` / ``guided_json`` whose pattern is not compiled yet: start
        compiling it (or join the compilation in progress) and return a future that is done once
        it is (its exception: the ``BadRequest`` naming the field, or ``ShuttingDown``); None when
        there is nothing to compile.  A caller that awaits it before :meth:`submit` can still answer
        a refusal as its own (an HTTP 400 before a stream starts); :meth:`submit` does not need it.
        ``group``, ``client``: as :meth:`submit`'s (the compile slots are shared fairly by
        ``client``, else ``group``)."""
        pattern = GuidePattern.of(params) if params.guided_regex or params.guided_json else None
        if pattern is None or self._indexes.get(pattern.key) is not None:
            return None
        if self._closed:
            raise ShuttingDown("generation engine is shutting down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self._compile(pattern, group if client is None else client)
        pending.waiters.append(future)
        future.add_done_callback(functools.partial(self._waiter_done, pending))
        return future

    def _waiter_done(self, pending: _Compiling, future: asyncio.Future[None]) -> None:
        """A :meth:`prepare` future is done: if it was cancelled (the client left), maybe the compile is unwanted."""
        if future.cancelled():
            self._abandon_if_unwanted(pending)

    def _compile(self, pattern: GuidePattern, client: Any) -> _Compiling:
        """The compilation of ``pattern`` in progress; started now (for ``client``) if there is none."""
        pending = self._building.get(pattern.key)
        if pending is None:
            pending = self._building[pattern.key] = _Compiling(pattern.key, client)
            task = asyncio.get_running_loop().create_task(self._build(pattern, pending), name="wsserve-guide-compile")
            pending.task = task
            self._build_tasks.add(task)
            task.add_done_callback(self._build_tasks.discard)
            task.add_done_callback(functools.partial(self._build_cancelled, pending))
        return pending

    def _build_cancelled(self, pending: _Compiling, task: asyncio.Task[None]) -> None:
        """The end of ``pending``'s compile task when it was cancelled (unwanted, or by
        ``close()``): forgotten, its :meth:`prepare` futures failed with ``ShuttingDown``, counted
        ``abandoned`` or ``cancelled``.  A done callback, not an ``except`` in :meth:`_build`: a
        task cancelled before its first step (a request cancelled in the loop iteration that
        submitted it) never runs its coroutine's handlers."""
        if not task.cancelled():
            return
        if self._building.get(pending.key) is pending:
            del self._building[pending.key]
        for future in pending.waiters:
            if not future.done():
                future.set_exception(ShuttingDown("server is shutting down"))
        self._compiled(result="abandoned" if pending.abandoned else "cancelled", started=None)

    def _abandon_if_unwanted(self, pending: _Compiling) -> None:
        """Cancel ``pending``'s compile (killing its child, freeing its slot) when nothing waits
        for it any more: every held request cancelled, past its deadline or ended with its
        connection, every :meth:`prepare` future cancelled.  It ends as ``abandoned`` (metrics),
        neither kept nor remembered as a refusal; a later request for the same pattern starts a
        new one.

        Why not let it finish and keep the index, as vLLM-style servers cache compiled grammars?
        A compile nobody waits for would then cost the server up to the child's limits for free:
        a client could send pattern after pattern with a ``timeout_ms`` of 1 (or hang up at once)
        and hold both compile slots, and the CPU, while holding no request and no fair share.
        Killing it makes every compile cost its requester a waiting request, so the slots'
        fairness and ``max_inflight`` bound it.  The price: a pattern whose compile takes longer
        than its requests' deadlines never compiles (give it a longer ``timeout_ms``)."""
        if pending.wanted() or pending.task is None or pending.task.done():
            return
        if self._building.get(pending.key) is pending:
            del self._building[pending.key]
        pending.abandoned = True
        pending.task.cancel()

    async def _build(self, pattern: GuidePattern, pending: _Compiling) -> None:
        """Compile ``pattern`` in a child process (:func:`~.guide_sandbox.compile_in_child`:
        steps go on meanwhile), keep it, and queue the sequences held for it; if it cannot be
        compiled, they end with its ``BadRequest`` (naming the field), remembered unless the
        child only timed out.  Cancelled (``close()``: the held sequences end with
        ``ShuttingDown`` there; or unwanted), it ends in :meth:`_build_cancelled`."""
        error: WsserveError | None = None
        index: RegexIndex | None = None
        key = pattern.key
        result, started = "compiled", None
        try:
            refused = self._refusals.get(key)
            if refused is not None:
                self._refusals.move_to_end(key)
                error = pattern.refusal(f"field {pattern.name!r}: {refused}")  # (this request's field)
                result = "remembered"
            else:
                await self._build_slots.acquire(pending.client)
                try:
                    if self._vocabulary is None:
                        self._vocabulary = await asyncio.to_thread(vocabulary_payload, self.model.id_to_text)
                    started = time.monotonic()
                    index = await compile_in_child(pattern, self._vocabulary, len(self.model.id_to_text),
                                                   limits=self._compile_limits)
                finally:
                    self._build_slots.release(pending.client)
        except BadRequest as exc:  # refused (by the library, a bound, or the child's limits)
            error = exc
            result = "refused"
            if isinstance(exc, PatternTooComplex) and exc.timed_out:
                result = "timed_out"
            else:
                self._refusals[key] = exc.message.removeprefix(f"field {pattern.name!r}: ")
                while len(self._refusals) > _MAX_GUIDE_REFUSALS:
                    self._refusals.popitem(last=False)
        except WsserveError as exc:
            error, result = exc, "failed"
        except Exception as exc:  # noqa: BLE001 - the compile failing: this pattern's requests only
            log.error("compiling a %s pattern for model %s failed", pattern.kind, self.name, exc_info=exc)
            error = Internal(f"compiling {pattern.name!r} failed: {type(exc).__name__}: {exc}")
            result = "failed"
        self._compiled(result=result, started=started)
        if self._building.get(key) is pending:
            del self._building[key]
        now = time.monotonic()
        if index is None:
            self._sched.fail_requests(pending.seqs, error or Internal("no index"), now)
        else:
            self._indexes.put(pattern.key, index)
            for seq in pending.seqs:
                self._sched.release(seq, index)
        for future in pending.waiters:
            if not future.done():
                if index is None:
                    future.set_exception(error or Internal("no index"))
                else:
                    future.set_result(None)
        self._idle.clear()
        self._wakeup.set()
        self._deliver()  # the refusals' terminal callbacks

    def _compiled(self, *, result: str, started: float | None) -> None:
        """Tell the observer (metrics) how a pattern's compile ended: ``result`` (see
        :meth:`~wsserve.metrics.Metrics.on_guide_compile`), and its wall time when a child ran.
        An observer's failure is logged, never raised."""
        if self._on_guide_compile is None:
            return
        try:
            seconds = None if started is None else time.monotonic() - started
            self._on_guide_compile(self.name, result, seconds)
        except Exception:  # noqa: BLE001 - metrics never fail a request
            log.exception("the observer's on_guide_compile failed")

    def score_prompt(self, prompt: str | tuple[int, ...], k: int
                     ) -> asyncio.Future[list[tuple[str, TokenLogprobs | None]]]:
        """Queue the scoring of ``prompt``'s own tokens (OpenAI's ``echo`` with ``logprobs``): a
        future of ``(text, record)`` per token the model is given for the prompt (its last
        ``prompt_chars`` characters; a token-id prompt's ids, checked as
        :func:`~.running.checked_prompt_ids` does), the record ``None`` for the first
        (:func:`~.logprobs.prompt_logprobs`).

        It runs between two steps, where steps run (inline when it costs no more than a step may,
        else in the engine's thread): never beside a step, so a model's ``logits()`` is not called
        from two threads; a slice of at most 256 positions between two steps, so a long prompt
        does not hold up the generations.  Cancelling the future abandons it.  Raises
        :class:`~wsserve.errors.ShuttingDown` (closed), ``Overloaded`` when ``max_generate_queue``
        prompts already wait to be scored, ``BadRequest`` when the prompt's tokens x (k + 1) exceed
        :data:`~.logprobs.MAX_SCORED_VALUES`, or ``Internal`` for a model whose ``encode()`` fails;
        the future fails with ``Internal`` when ``logits()`` does, and with ``ShuttingDown`` on
        :meth:`close`."""
        if self._closed:
            raise ShuttingDown("generation engine is shutting down")
        bound = self._sched.max_generate_queue
        if bound is not None and len(self._scores) >= bound:
            raise Overloaded(f"{len(self._scores)} prompts wait to be scored (max_generate_queue={bound})",
                             retry_after_ms=100)
        model = self.model
        ids = model.prompt_ids(prompt) if type(prompt) is str else checked_prompt_ids(model, prompt)
        if len(ids) * (k + 1) > MAX_SCORED_VALUES:
            raise BadRequest(f"scoring this prompt's {len(ids)} tokens with {k} alternatives each would hold "
                             f"{len(ids) * (k + 1)} values; at most {MAX_SCORED_VALUES} (a shorter prompt or a "
                             "smaller 'logprobs')")
        self.start()
        score = PromptScore(ids, context_len=model.context_len,
                            pad_id=getattr(model, "pad_id", model.vocab_size), id_to_text=model.id_to_text, k=k)
        future: asyncio.Future[list[tuple[str, TokenLogprobs | None]]] = asyncio.get_running_loop().create_future()
        self._scores.append((score, future))
        self._idle.clear()
        self._wakeup.set()
        return future

    def cancel(self, handle: Sequence) -> None:
        """End ``handle`` with ``on_done("cancelled", ...)`` before returning.

        If it has already finished (its ``on_done``/``on_error`` maybe still
        pending), that terminal callback is delivered now instead; if it was
        delivered already, this is a no-op.
        """
        if handle.owner is None:
            return
        self._sched.finish_requests((handle,), time.monotonic())  # no-op if it just finished
        self._deliver()  # its terminal callback (whatever the reason) happens now; an unwanted compile stopped

    def statistics(self) -> WorkerStatistics:
        s = self._sched.statistics()
        return WorkerStatistics(
            kind="generate", queued=s.waiting, queued_rows=0, queued_bytes=0, running=s.running,
            oldest_age_s=s.oldest_wait_s, batches=s.steps, computed=s.generated,
            executor_batches=self._executor_steps, last_batch_size=s.last_batch_size,
            isolated_batches=self.isolated_steps,
        )

    async def wait_idle(self) -> None:
        """Return once no generation is unfinished and no prompt waits to be scored (a retired
        version finishing its work)."""
        while self._sched.has_unfinished() or self._scores or self._building:
            self._idle.clear()
            self._wakeup.set()  # let the loop notice when it is done
            await self._idle.wait()

    async def close(self) -> None:
        """Stop stepping (after the current step) and end every unfinished generation
        with :class:`~wsserve.errors.ShuttingDown`.  Idempotent."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._closed = True
        self._wakeup.set()
        builds = list(self._build_tasks)
        for task in builds:
            task.cancel()
        await asyncio.gather(*builds, return_exceptions=True)  # their children killed and reaped
        if self._task is not None:
            await self._task  # finishes the step in progress and delivers its events
        self._sched.abort_all(ShuttingDown("server is shutting down"), time.monotonic())
        self._deliver()
        while self._scores:
            future = self._scores.popleft()[1]
            if not future.done():
                future.set_exception(ShuttingDown("server is shutting down"))
        self._idle.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- the loop --------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self._closed:
                try:
                    await self._iteration()
                except Exception as exc:  # a bug: fail what is in flight, keep serving
                    log.exception("generation engine iteration failed")
                    self._sched.abort_all(Internal(f"generation engine failure: {type(exc).__name__}: {exc}"),
                                          time.monotonic())
                    await asyncio.sleep(0)  # never loop without awaiting
        finally:
            self._deliver()

    async def _iteration(self) -> None:
        """One step: schedule, compute (inline or in the executor), update, deliver.

        Every path awaits: with nothing to run it sleeps until ``submit`` wakes it,
        so the loop can never spin."""
        sched, model = self._sched, self.model
        if self._scores:
            await self._score_prompt()
        batch = sched.schedule(time.monotonic()) if sched.has_unfinished() else None
        if batch is None:  # nothing running (anything waiting was admitted or has ended)
            self._deliver()
            self._wakeup.clear()
            if self._scores or self._closed:  # (close() may have come while a prompt was scored)
                await asyncio.sleep(0)
            elif not sched.has_unfinished():
                if not self._building:  # (held sequences are not idle: their compile wakes the loop)
                    self._idle.set()
                    await self._wakeup.wait()
                else:
                    await self._wait_held()
            else:  # pragma: no cover - defensive: never busy-wait, whatever the state
                await asyncio.sleep(0.001)
            return
        inline = batch.size <= self._inline_max_batch
        try:
            if inline:
                self._deliver()
                tokens, logprobs = run_step_logprobs(model, batch)
            else:
                self._executor_steps += 1
                future = asyncio.get_running_loop().run_in_executor(self._thread(), run_step_logprobs, model, batch)
                # Pipelining: the previous step's tokens go out while this one computes.
                self._deliver()
                tokens, logprobs = await future
        except Exception as exc:  # a model failure ends its own sequences, not the engine
            if batch.size < 2:
                log.exception("generation step of model %s failed (batch of %d)", self.name, batch.size)
                sched.fail_batch(batch, Internal(f"generation step failed: {type(exc).__name__}: {exc}"),
                                 time.monotonic())
            else:
                await self._isolate(batch, exc, inline)
        else:
            self._stepped(batch, tokens, logprobs)
        if inline:
            self._deliver()
            await asyncio.sleep(0)  # let I/O and submissions in between steps

    async def _wait_held(self) -> None:
        """Nothing runs, sequences are held for their patterns: sleep until woken or until the
        earliest deadline, then end the sequences whose deadline passed and stop the compiles no
        request waits for any more (their children killed)."""
        deadline = self._sched.next_deadline()
        if deadline is None:
            await self._wakeup.wait()
            return
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._wakeup.wait()
        except TimeoutError:
            pass
        self._sched.expire(time.monotonic())
        self._deliver()  # (and the compiles no request waits for any more are stopped)

    async def _score_prompt(self) -> None:
        """Score the next slice of the oldest queued prompt (:meth:`score_prompt`; at most
        :data:`~.logprobs.PROMPT_ROWS_PER_CALL` positions, so a long prompt is interleaved with
        the generation steps), inline when it is no more rows than an inline step may have,
        else in the engine's thread; answer its future once all of it is scored."""
        score, future = self._scores[0]
        if future.done():  # abandoned
            self._scores.popleft()
            return
        model = self.model
        try:
            if score.next_rows <= self._inline_max_batch:
                score.advance(model.logits)
            else:
                pending = asyncio.get_running_loop().run_in_executor(self._thread(), score.advance, model.logits)
                self._deliver()
                await pending
        except Exception as exc:  # noqa: BLE001 - the model's failure ends this request only
            self._scores.popleft()
            log.error("scoring a prompt of %d tokens on model %s failed", len(score.ids), self.name, exc_info=exc)
            if not future.done():
                future.set_exception(Internal(f"scoring the prompt failed: {type(exc).__name__}: {exc}"))
            return
        if score.done:
            self._scores.popleft()
            if self._on_prompt_scored is not None:
                try:
                    self._on_prompt_scored(self.name, len(score.ids))
                except Exception:
                    log.exception("generation observer failed")
            if not future.done():
                future.set_result(list(zip([model.id_to_text[i] for i in score.ids.tolist()], score.records)))

    def _thread(self) -> ThreadPoolExecutor:
        """The engine's one thread for steps (and prompt scoring) too costly for the loop, made at first use."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="wsserve-generate")
        return self._executor

    def _stepped(self, batch: Batch, tokens: np.ndarray, logprobs: StepLogprobs | None = None) -> None:
        """Apply a step's tokens (and log-probabilities) and count the step."""
        now = time.monotonic()
        self._sched.update_from_output(batch, tokens, now, logprobs)
        if self._observer is not None:
            self._observer.on_batch(self.name, batch.size, now - batch.scheduled_at)
        if self.stats is not None:
            self.stats.on_batch(batch.size, batch.size, now - batch.scheduled_at, now)

    async def _isolate(self, batch: Batch, exc: Exception, inline: bool) -> None:
        """A step of several sequences failed: compute each row's logits alone, where the step ran
        (:func:`run_step_rows`); the sequences whose own row fails end with ``Internal``, the others
        get their token as from any step."""
        sched = self._sched
        self.isolated_steps += 1
        log.warning("generation step of model %s failed on %d sequences (%s: %s); computing each alone",
                    self.name, batch.size, type(exc).__name__, exc)
        hook = getattr(self._observer, "on_isolated", None)
        if hook is not None:
            hook(self.name)
        try:
            if inline:
                tokens, failed, logprobs = run_step_rows(self.model, batch)
            else:
                assert self._executor is not None
                tokens, failed, logprobs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, run_step_rows, self.model, batch)
        except Exception as again:  # noqa: BLE001 - sampling the stacked rows failed: end the step
            log.exception("generation step of model %s failed again, row by row", self.name)
            sched.fail_batch(batch, Internal(f"generation step failed: {type(again).__name__}: {again}"),
                             time.monotonic())
            return
        now = time.monotonic()
        for i, row_exc in failed.items():
            log.error("generation step of model %s failed on one sequence computed alone", self.name,
                      exc_info=row_exc)
            sched.fail_requests((batch.seqs[i],), Internal(
                f"generation step failed: {type(row_exc).__name__}: {row_exc}"), now)
        if tokens is None:  # every row failed: nothing to apply
            sched.fail_batch(batch, Internal("generation step failed"), now)
        else:
            self._stepped(batch, tokens, logprobs)

    def _deliver(self) -> None:
        """Hand pending events to their sinks, in order, then call ``after_delivery``.

        Re-entrant: a sink callback that cancels (and so calls this again) drains
        the same queue, so events keep their order and a cancelled sequence's
        ``on_done`` still comes after every token it counts.  The queue holds
        iterators, in order: over each step's token block (one bound-method call
        per token, no per-event checks) and over runs of single events (stop-string
        tokens, terminals); a nested call continues the very iterator the outer
        call is walking.
        """
        if self._building and self._sched.held_ended != self._held_ended:  # a held request ended
            self._held_ended = self._sched.held_ended
            for pending in list(self._building.values()):
                self._abandon_if_unwanted(pending)
        items = self._sched.take_output()
        queue = self._pending
        if items:  # token blocks and runs of single events, in order
            run: list[Any] | None = None
            for item in items:
                if type(item) is TokenEvents:
                    if run:
                        queue.append(iter(run))
                        run = None
                    queue.append(self._token_calls(item))
                elif run is None:
                    run = [item]
                else:
                    run.append(item)
            if run:
                queue.append(iter(run))
        elif not queue:
            return
        while queue:
            it = queue[0]
            seq = None
            try:
                if type(it) is _TokenCalls:  # a whole step's tokens: every sink call made from C
                    self._exhaust(it.calls)
                elif type(it) is _LIST_ITERATOR:  # (seq, n, text) events
                    for seq, n, text in it:
                        sink = seq.owner
                        if sink is None:  # already terminated (cancelled from a callback, failed sink)
                            continue
                        if n < 0:
                            self._terminal(seq, sink)
                        elif type(text) is str:
                            sink.on_token(n, text)
                        else:  # a LoggedText: the token's text and its logprobs
                            sink.on_token_logprobs(n, text.text, text.logprobs)
                else:  # a token block: (on_token, n, text, seq) rows
                    for on_token, n, text, seq in it:
                        on_token(n, text)
            except Exception as exc:  # noqa: BLE001 - a faulty sink must not stop the others
                if type(it) is _TokenCalls:
                    seq = it.failed()
                self._sink_failed(seq, "on_token", exc)  # type: ignore[arg-type]
                continue  # the rest of the same iterator
            if queue and queue[0] is it:  # (a nested call may have finished it and moved on)
                queue.popleft()
        if self._after_delivery is not None:
            self._after_delivery()

    def _token_calls(self, block: TokenEvents) -> Iterator[tuple[Any, int, str, Sequence]] | _TokenCalls:
        """The sink calls of ``block``: a :class:`_TokenCalls` when every row streams (the
        common case), else ``(sink.on_token, n, text, seq)`` per event.  The bound methods
        are made once per running-set layout; a row in the block runs, so its sink is
        set and ends (terminal event) only after the block (rows whose sequence
        ended are masked out, so their missing sink is never called)."""
        seqs = block.seqs
        if seqs is not self._calls_for:
            self._calls_for = seqs
            self._calls = [None if s.owner is None else s.owner.on_token for s in seqs]
        if block.mask is None:
            return _TokenCalls(self._calls, block)
        return compress(zip(self._calls, block.numbers, block.texts, seqs), block.mask)

    def _terminal(self, seq: Sequence, sink: TokenSink) -> None:
        seq.owner = None
        self._observe_done(seq)
        try:
            if seq.error is not None:
                sink.on_error(seq.error)
            else:
                sink.on_done(seq.finish_reason, seq.streamed, seq.timing())  # type: ignore[arg-type]
        except Exception:
            log.exception("generation sink failed in its terminal callback")

    def _observe_done(self, seq: Sequence) -> None:
        """Tell the observer about a generation that took a slot and ended: its prompt tokens,
        time to first token and (ended by length or stop, two tokens or more) mean time per
        token after the first (nothing without an observer, or for one that never took a slot)."""
        if self._on_generation_done is None or seq.admitted_at is None:
            return
        first = seq.first_token_at
        ttft = tpot = None
        if first is not None:
            ttft = first - seq.arrival
            n = seq.generated
            if n > 1 and seq.error is None and seq.finish_reason in ("length", "stop") and seq.finished_at is not None:
                tpot = (seq.finished_at - first) / (n - 1)
        try:
            self._on_generation_done(self.name, seq.prompt_tokens, ttft, tpot)  # type: ignore[misc]
        except Exception:
            log.exception("generation observer failed")

    def _sink_failed(self, seq: Sequence, method: str, exc: Exception) -> None:
        log.error("generation sink %s raised; ending the generation", method, exc_info=exc)
        sink, seq.owner = seq.owner, None  # its own terminal event, if any, is now skipped
        self._sched.finish_requests((seq,), time.monotonic())
        if sink is not None:  # not terminated before: observed here, as _terminal would
            self._observe_done(seq)
            try:
                sink.on_error(Internal(f"token sink failed in {method}: {type(exc).__name__}: {exc}"))
            except Exception:
                log.exception("generation sink failed in on_error")
