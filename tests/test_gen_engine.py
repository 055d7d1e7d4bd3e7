"""GenerationEngine on a real asyncio loop, with recording sinks and the real charlm."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import numpy as np
import pytest

from tests.support import wait_until_async
from tests.test_gen_support import RecordingSink, charlm, params
from wsserve.errors import DeadlineExceeded, Internal, Overloaded, ShuttingDown
from wsserve.generation import GenerationEngine, GenerationParams
from wsserve.generation import engine as engine_mod

# The batch computes off the loop above this size; 0 forces the executor, 10**6 keeps it inline.
EXECUTOR, INLINE = 0, 10**6

WAIT_S = 10.0  # upper bound for anything to happen; tests normally take milliseconds
#: Poll an in-process condition every millisecond until it holds (AssertionError after WAIT_S).
until = partial(wait_until_async, timeout_s=WAIT_S, interval_s=0.001)


async def run_all(engine: GenerationEngine, items: list[GenerationParams]) -> list[RecordingSink]:
    sinks = [RecordingSink() for _ in items]
    for p, s in zip(items, sinks):
        engine.submit(p, s)
    await until(lambda: all(s.ended for s in sinks))
    assert all(not s.violations for s in sinks), [s.violations for s in sinks]
    return sinks


def test_public_api() -> None:
    import wsserve.generation as gen

    assert set(gen.__all__) == {
        "Batch", "StepObserver", "GenerationEngine", "GenerationParams", "MIN_TEMPERATURE",
        "Scheduler", "SchedulerStatistics", "SeqState", "Sequence", "StopMatcher", "TokenModel",
        "TokenModelAdapter", "TokenLogprobs", "TokenSink", "run_step", "run_step_logprobs", "sample",
    }
    assert set(engine_mod.__all__) == {"StepObserver", "GenerationEngine", "TokenSink", "run_step", "run_step_logprobs"}


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, 8, INLINE])
async def test_same_text_alone_and_among_32_concurrent(inline_max_batch: int) -> None:
    targets = [
        GenerationParams(prompt="The ", max_tokens=50),
        GenerationParams(prompt="The ", max_tokens=50, temperature=1.0, seed=42),
        GenerationParams(prompt="def ", max_tokens=30, temperature=0.7, top_k=8, seed=3, stop=("\n",)),
        GenerationParams(prompt="x = ", max_tokens=30, temperature=1.4, top_p=0.8, seed=4),
        GenerationParams(prompt="The ", max_tokens=40, presence_penalty=1.2, frequency_penalty=0.4),
    ]
    engine = GenerationEngine(charlm(), max_generate_batch=64, inline_max_batch=inline_max_batch)
    try:
        alone = [(s.text, s.done and s.done[0]) for s in await run_all(engine, targets)]
        others = [
            GenerationParams(prompt=("x", "import ", "A ")[i % 3], max_tokens=5 + 3 * i,
                             temperature=(0.0, 0.8, 1.5)[i % 3], top_p=(1.0, 0.9)[i % 2],
                             presence_penalty=(0.0, 0.0, 0.0, 1.0)[i % 4], seed=i)
            for i in range(32)
        ]
        crowd_sinks = [RecordingSink() for _ in others]
        for p, s in zip(others[:16], crowd_sinks[:16]):
            engine.submit(p, s)
        steps = engine.statistics().batches
        await until(lambda: engine.statistics().batches > steps + 3)  # the crowd is running
        together = [RecordingSink() for _ in targets]
        for p, s in zip(targets, together):
            engine.submit(p, s)
        await until(lambda: all(len(s.tokens) >= 3 or s.ended for s in together))
        for p, s in zip(others[16:], crowd_sinks[16:]):  # join while the targets run
            engine.submit(p, s)
        await until(lambda: all(s.ended for s in crowd_sinks + together))
        assert not any(s.violations for s in crowd_sinks + together)
        assert [(s.text, s.done and s.done[0]) for s in together] == alone
        assert all(s.done and s.done[0] == "length" for s in crowd_sinks)
    finally:
        await engine.close()


async def test_cancel_mid_stream_ends_at_once_and_nothing_follows() -> None:
    engine = GenerationEngine(charlm())
    try:
        sink, bystander = RecordingSink(), RecordingSink()
        handle = engine.submit(params(max_tokens=100_000), sink)
        engine.submit(params(max_tokens=200), bystander)
        await until(lambda: len(sink.tokens) >= 5)
        engine.cancel(handle)
        assert sink.done is not None and sink.done[0] == "cancelled"  # synchronously
        streamed = len(sink.tokens)
        assert sink.done[1] == streamed and streamed < 100_000
        assert sink.done[2]["ttft_ms"] is not None and sink.done[2]["total_ms"] > 0
        steps = engine.statistics().batches
        await until(lambda: engine.statistics().batches > steps + 5)
        engine.cancel(handle)  # a second cancel is a no-op
        assert len(sink.tokens) == streamed and not sink.violations
        await until(lambda: bystander.ended)
        assert bystander.done is not None and bystander.done[:2] == ("length", 200)
    finally:
        await engine.close()


async def test_cancel_while_queued() -> None:
    engine = GenerationEngine(charlm(), max_generate_batch=1)
    try:
        first, queued = RecordingSink(), RecordingSink()
        engine.submit(params(max_tokens=100_000), first)
        handle = engine.submit(params(max_tokens=5), queued)
        await until(lambda: len(first.tokens) > 3)
        engine.cancel(handle)
        assert queued.done is not None and queued.done[:2] == ("cancelled", 0)
        assert queued.done[2]["ttft_ms"] is None and queued.tokens == []
    finally:
        await engine.close()


async def test_deadline_exceeded_mid_stream() -> None:
    engine = GenerationEngine(charlm())
    try:
        sink = RecordingSink()
        engine.submit(params(max_tokens=100_000), sink, deadline=time.monotonic() + 0.05)
        await until(lambda: sink.ended)
        assert isinstance(sink.error, DeadlineExceeded) and sink.done is None
        assert 0 < len(sink.tokens) < 100_000
        n = len(sink.tokens)
        await asyncio.sleep(0.02)  # no token arrives after the end: absence over a window is the behaviour
        assert len(sink.tokens) == n and not sink.violations
        assert engine.statistics().running == 0
    finally:
        await engine.close()


async def test_queue_full_raises_overloaded_and_the_sink_is_never_called() -> None:
    engine = GenerationEngine(charlm(), max_generate_batch=2, max_generate_queue=2)
    try:
        sinks = [RecordingSink() for _ in range(4)]
        for s in sinks:
            engine.submit(params(max_tokens=20), s)
        refused = RecordingSink()
        with pytest.raises(Overloaded) as info:
            engine.submit(params(), refused)
        assert info.value.retry_after_ms and info.value.code == "overloaded"
        await until(lambda: all(s.ended for s in sinks))
        assert not refused.tokens and not refused.ended
        assert all(s.done and s.done[:2] == ("length", 20) for s in sinks)
    finally:
        await engine.close()


async def test_close_ends_unfinished_with_shutting_down_and_refuses_new_work() -> None:
    engine = GenerationEngine(charlm(), max_generate_batch=2, inline_max_batch=EXECUTOR)
    short, longs = RecordingSink(), [RecordingSink() for _ in range(3)]
    engine.submit(params(max_tokens=1), short)
    for s in longs:
        engine.submit(params(max_tokens=100_000), s)
    await until(lambda: short.ended and len(longs[0].tokens) > 2)
    await engine.close()
    assert short.done is not None and short.done[0] == "length"
    assert all(isinstance(s.error, ShuttingDown) and s.done is None for s in longs)
    assert not any(s.violations for s in [short, *longs])
    with pytest.raises(ShuttingDown):
        engine.submit(params(), RecordingSink())
    await engine.close()  # idempotent
    assert engine.statistics().running == engine.statistics().queued == 0


async def test_idle_engine_does_not_step_and_wakes_on_submit() -> None:
    engine = GenerationEngine(charlm())
    try:
        await run_all(engine, [params(max_tokens=3)])
        steps = engine.statistics().batches
        await asyncio.sleep(0.05)  # an idle engine takes no step: absence over a window is the behaviour
        assert engine.statistics().batches == steps
        (sink,) = await run_all(engine, [params(max_tokens=4)])
        assert sink.done is not None and sink.done[:2] == ("length", 4)
        assert engine.statistics().batches == steps + 4
    finally:
        await engine.close()


async def test_stop_string_through_the_engine() -> None:
    engine = GenerationEngine(charlm())
    try:
        (free,) = await run_all(engine, [params(max_tokens=40)])
        stop = free.text[10:13]
        (stopped,) = await run_all(engine, [params(max_tokens=40, stop=(stop,))])
        cut = free.text.find(stop)
        assert stopped.text == free.text[:cut]
        assert stopped.done is not None and stopped.done[:2] == ("stop", cut)
    finally:
        await engine.close()


async def test_new_requests_join_a_running_batch() -> None:
    engine = GenerationEngine(charlm())
    try:
        long, late = RecordingSink(), RecordingSink()
        engine.submit(params(max_tokens=100_000), long)
        await until(lambda: len(long.tokens) > 10)
        engine.submit(params(max_tokens=5), late)
        await until(lambda: late.ended)
        assert not long.ended and engine.statistics().running == 1  # the late one left at once
        assert late.done is not None and late.done[2]["queue_ms"] < 1000
    finally:
        await engine.close()


class ExplodingSink(RecordingSink):
    def on_token(self, seq: int, text: str) -> None:
        super().on_token(seq, text)
        if seq == 2:
            raise RuntimeError("sink bug")


async def test_a_failing_sink_ends_only_its_own_generation() -> None:
    engine = GenerationEngine(charlm())
    try:
        bad, good = ExplodingSink(), RecordingSink()
        engine.submit(params(max_tokens=50), bad)
        engine.submit(params(max_tokens=50), good)
        await until(lambda: bad.ended and good.ended)
        assert isinstance(bad.error, Internal) and "sink bug" in bad.error.message
        assert len(bad.tokens) == 3 and not bad.violations
        assert good.done is not None and good.done[:2] == ("length", 50)
    finally:
        await engine.close()


async def test_a_failing_sink_among_many_ends_only_its_own_generation() -> None:
    """A step's tokens go out in one pass over all rows: a sink raising in the middle of
    it ends its own generation, and the rows after it still get every token."""
    engine = GenerationEngine(charlm())
    try:
        sinks = [RecordingSink() for _ in range(5)]
        sinks[2] = ExplodingSink()
        for sink in sinks:
            engine.submit(params(max_tokens=20), sink)
        await until(lambda: all(s.ended for s in sinks))
        for i, sink in enumerate(sinks):
            assert not sink.violations, i
            if i == 2:
                assert isinstance(sink.error, Internal) and len(sink.tokens) == 3
            else:
                assert sink.error is None and sink.done is not None and sink.done[:2] == ("length", 20), i
                assert len(sink.tokens) == 20, i
    finally:
        await engine.close()


class GenerationsObserved:
    """A step observer recording the engine's ``on_generation_done`` calls."""

    def __init__(self) -> None:
        self.done: list[tuple[int, float | None, float | None]] = []

    def on_batch(self, model: str, rows: int, compute_s: float) -> None:
        pass

    def on_generation_done(self, model: str, prompt_tokens: int, ttft_s: float | None, tpot_s: float | None) -> None:
        self.done.append((prompt_tokens, ttft_s, tpot_s))


@pytest.mark.parametrize("stop", [(), ("\u00a7",)])  # the token block's path and the single events'
async def test_a_generation_ended_by_its_failing_sink_is_observed_once(stop: tuple[str, ...]) -> None:
    """The observer hears of every generation that took a slot, once, when it ends: one whose
    sink raised too (cancelled: its prompt and time to first token, no time per token)."""
    observed = GenerationsObserved()
    engine = GenerationEngine(charlm(), observer=observed)
    try:
        bad, good = ExplodingSink(), RecordingSink()
        engine.submit(params(max_tokens=50, stop=stop), bad)
        engine.submit(params(max_tokens=50, stop=stop), good)
        await until(lambda: bad.ended and good.ended)
        assert isinstance(bad.error, Internal) and good.done is not None
        assert len(observed.done) == 2, observed.done
        assert all(prompt == 4 and ttft is not None for prompt, ttft, _ in observed.done)
        assert sorted(tpot is None for _, _, tpot in observed.done) == [False, True]
    finally:
        await engine.close()


class CancellingSink(RecordingSink):
    engine: GenerationEngine
    handle: object = None

    def on_token(self, seq: int, text: str) -> None:
        super().on_token(seq, text)
        if seq == 1:
            self.engine.cancel(self.handle)  # type: ignore[arg-type]


async def test_cancel_from_inside_a_sink_callback() -> None:
    engine = GenerationEngine(charlm())
    try:
        sink = CancellingSink()
        sink.engine = engine
        sink.handle = engine.submit(params(max_tokens=50), sink)
        await until(lambda: sink.ended)
        await asyncio.sleep(0.01)  # nothing (no second end, no token) follows: absence is the behaviour
        assert sink.done is not None and sink.done[:2] == ("cancelled", 2) and not sink.violations
    finally:
        await engine.close()


class CancelOtherSink(RecordingSink):
    engine: GenerationEngine
    victim: object = None

    def on_token(self, seq: int, text: str) -> None:
        super().on_token(seq, text)
        if seq == 3:
            self.engine.cancel(self.victim)  # type: ignore[arg-type]


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, INLINE])
async def test_cancel_from_another_sink_keeps_order_and_counts(inline_max_batch: int) -> None:
    """The victim's token of the same step is still pending when it is cancelled: it must
    be delivered before the ``done``, and counted in it."""
    engine = GenerationEngine(charlm(), inline_max_batch=inline_max_batch)
    try:
        canceller, victim = CancelOtherSink(), RecordingSink()
        canceller.engine = engine
        engine.submit(params(max_tokens=20), canceller)  # admitted first: its events come first
        canceller.victim = engine.submit(params(max_tokens=20), victim)
        await until(lambda: canceller.ended and victim.ended)
        assert victim.done is not None and victim.done[:2] == ("cancelled", 4)
        assert len(victim.tokens) == 4 and not victim.violations and not canceller.violations
        assert canceller.done is not None and canceller.done[:2] == ("length", 20)
    finally:
        await engine.close()


class BrokenModel:
    """A model whose step fails: a true boundary for testing the engine's error path."""

    def __init__(self) -> None:
        real = charlm()
        self.context_len, self.vocab_size, self.id_to_text = real.context_len, real.vocab_size, real.id_to_text
        self.encode_prompt, self.prompt_ids, self.pad_id = real.encode_prompt, real.prompt_ids, real.pad_id

    def logits(self, contexts: object) -> object:
        raise FloatingPointError("numerical trouble")


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, INLINE])
async def test_a_failing_model_step_errors_its_batch_and_the_engine_lives_on(inline_max_batch: int) -> None:
    engine = GenerationEngine(BrokenModel(), inline_max_batch=inline_max_batch)  # type: ignore[arg-type]
    try:
        sinks = await run_all(engine, [params(), params()])
        assert all(isinstance(s.error, Internal) and "numerical trouble" in s.error.message for s in sinks)
        (again,) = await run_all(engine, [params()])
        assert isinstance(again.error, Internal)
    finally:
        await engine.close()


class NoVocabularyModel(BrokenModel):
    """Steps fine but cannot turn ids into text: the scheduler's update fails (a bug path)."""

    def __init__(self) -> None:
        super().__init__()
        self.id_to_text = ()
        self.logits = charlm().logits  # type: ignore[method-assign]


async def test_an_engine_failure_ends_what_is_in_flight_and_the_engine_keeps_serving() -> None:
    engine = GenerationEngine(NoVocabularyModel())  # type: ignore[arg-type]
    try:
        sinks = await run_all(engine, [params(), params(max_tokens=3)])
        assert all(isinstance(s.error, Internal) and "engine failure" in s.error.message for s in sinks)
        (again,) = await run_all(engine, [params()])
        assert isinstance(again.error, Internal)
    finally:
        await engine.close()


async def test_concurrent_closes_both_return_and_end_everything_once() -> None:
    engine = GenerationEngine(charlm(), inline_max_batch=EXECUTOR)
    sinks = [RecordingSink() for _ in range(4)]
    for s in sinks:
        engine.submit(params(max_tokens=100_000), s)
    await until(lambda: all(s.tokens for s in sinks))
    await asyncio.gather(engine.close(), engine.close())
    assert all(isinstance(s.error, ShuttingDown) and not s.violations for s in sinks)


async def test_statistics_count_tokens_and_executor_steps() -> None:
    engine = GenerationEngine(charlm(), inline_max_batch=3)
    try:
        await run_all(engine, [params(max_tokens=10) for _ in range(5)])
        s = engine.statistics()
        assert (s.kind, s.running, s.queued, s.computed, s.batches, s.last_batch_size) == ("generate", 0, 0, 50, 10, 5)
        assert s.executor_batches == 10 and (s.queued_rows, s.queued_bytes) == (0, 0)
        await run_all(engine, [params(max_tokens=10)])
        assert engine.statistics().executor_batches == 10  # a batch of one ran inline
    finally:
        await engine.close()


class OneBadPromptModel(BrokenModel):
    """charlm, except that the prompt "bad" gives a context the engine cannot use."""

    def __init__(self) -> None:
        super().__init__()
        real = charlm()
        self.logits = real.logits  # type: ignore[method-assign]
        self.encode_prompt = lambda prompt: ((real.initial_context(prompt)[:2], 3) if prompt == "bad"
                                             else real.encode_prompt(prompt))


async def test_a_sequence_that_cannot_start_fails_alone_cancel_after_it_is_harmless() -> None:
    engine = GenerationEngine(OneBadPromptModel())  # type: ignore[arg-type]
    try:
        bad_sink, good_sink = RecordingSink(), RecordingSink()
        bad = engine.submit(params(prompt="bad", temperature=1.0, top_k=2**31 - 1), bad_sink)
        engine.submit(params(max_tokens=6), good_sink)
        await until(lambda: bad_sink.ended and good_sink.ended)
        assert isinstance(bad_sink.error, Internal) and "could not start" in bad_sink.error.message
        assert good_sink.done is not None and good_sink.done[:2] == ("length", 6)
        engine.cancel(bad)  # the report's second message: must not corrupt the counts
        stats = engine.statistics()
        assert (stats.running, stats.queued) == (0, 0)
        (again,) = await run_all(engine, [params(max_tokens=5)])  # the engine still steps...
        assert again.done is not None and again.done[:2] == ("length", 5)
        steps = engine.statistics().batches
        await asyncio.sleep(0.05)  # ... and sleeps when idle instead of iterating
        assert engine.statistics().batches == steps and engine.statistics().running == 0
    finally:
        await engine.close()


class PoisonModel(BrokenModel):
    """charlm whose step raises when any row's context holds one chosen id, which it never
    generates itself: the prompt holding that character poisons every step it is in."""

    def __init__(self) -> None:
        super().__init__()
        self._real = charlm()
        self.poison = self._real.id_to_text.index("#")

    def logits(self, contexts: np.ndarray) -> np.ndarray:  # type: ignore[override]
        if (contexts == self.poison).any():
            raise FloatingPointError("poisoned row")
        out = self._real.logits(contexts).copy()
        out[:, self.poison] = -np.inf
        return out


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, INLINE])
async def test_a_step_failing_on_one_sequence_ends_only_that_sequence(inline_max_batch: int) -> None:
    """A step whose logits() raised ended every sequence of the batch with internal; now the
    rows are computed alone and only the sequence whose own row fails ends, the others
    stream exactly what they stream without it (greedy and seeded sampling)."""
    good = [params(prompt="x", max_tokens=12), params(prompt="import ", max_tokens=9),
            params(prompt="A ", max_tokens=15, temperature=0.8, seed=7)]
    engine = GenerationEngine(PoisonModel(), inline_max_batch=inline_max_batch)  # type: ignore[arg-type]
    try:
        reference = await run_all(engine, good)
        assert engine.isolated_steps == 0
        sinks = await run_all(engine, [good[0], params(prompt="a # b", max_tokens=12), good[1], good[2]])
        assert engine.isolated_steps >= 1 and engine.statistics().isolated_batches == engine.isolated_steps
    finally:
        await engine.close()
    poisoned = sinks.pop(1)
    assert isinstance(poisoned.error, Internal) and "poisoned row" in poisoned.error.message
    for got, want in zip(sinks, reference, strict=True):
        assert got.error is None and got.tokens == want.tokens and got.done[:2] == want.done[:2]
