"""Log-probabilities of generated tokens, sans-I/O and through the engine: the values (against a
direct log-softmax), the order and ties of the alternatives, the records' path through stop
strings, and the executor and row-isolation paths of the engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_gen_engine import EXECUTOR, INLINE, PoisonModel, run_all, until
from tests.test_gen_support import FakeClock, RecordingSink, charlm, params
from wsserve.errors import BadRequest, Internal, Overloaded, ShuttingDown
from wsserve.generation import (
    GenerationEngine,
    Scheduler,
    TokenLogprobs,
    run_step_logprobs,
)
from wsserve.generation.logprobs import (
    MAX_SCORED_VALUES,
    LogprobRows,
    prompt_logprobs,
    step_logprobs,
)
from wsserve.generation.scheduler import FINISHED
from wsserve.generation.sequence import LoggedText


def _log_softmax(row: np.ndarray) -> np.ndarray:
    m = row.max()
    return row - m - math.log(float(np.exp(row - m).sum()))


@pytest.mark.parametrize("v", [3, 50, 1000, 5000])
@pytest.mark.parametrize("k", [0, 1, 2, 7, 20])
@pytest.mark.parametrize("ties", [True, False])
def test_step_logprobs_match_a_direct_log_softmax_with_ties_by_lowest_id(v: int, k: int, ties: bool) -> None:
    """Small batches take one sort per row, larger ones (5000 logits a row) a partition, which
    falls back to the sort when the k-th value is tied: the same answer either way (and each
    chosen token's rank)."""
    rng = np.random.default_rng(v * 31 + k)
    logits = rng.normal(size=(5, v)) * 4
    if ties:
        logits[1] = 0.0  # all tied: the lowest ids win
        logits[3, : min(v, 6)] = logits[3].max() + 1  # ties at the top
        logits[4] = np.round(logits[4])  # ties everywhere, in the middle too
    tokens = rng.integers(0, v, 5)
    rows = np.array([0, 1, 3, 4])
    got = step_logprobs(logits, tokens, LogprobRows(rows, k, ranks=True))
    assert step_logprobs(logits, tokens, LogprobRows(rows, k)).ranks is None  # computed only when asked
    kk = min(k, v)
    assert got.top_ids.shape == got.top.shape == (4, kk)
    for j, i in enumerate(rows):
        want = _log_softmax(logits[i])
        assert math.isclose(got.chosen[j], want[tokens[i]], rel_tol=1e-12, abs_tol=1e-12)
        order = sorted(range(v), key=lambda t: (-want[t], t))[:kk]
        assert got.top_ids[j].tolist() == order
        assert np.allclose(got.top[j], want[order], rtol=0, atol=1e-12)
        # vLLM's rank: the tokens at least as likely as the chosen one, itself included
        assert got.ranks[j] == sum(1 for t in range(v) if logits[i, t] >= logits[i, tokens[i]])


def test_step_logprobs_of_a_non_finite_row_are_nan_and_the_others_unharmed() -> None:
    logits = np.array([[0.0, 1.0, 2.0], [np.nan, 0.0, 1.0], [np.inf, 0.0, 0.0]])
    got = step_logprobs(logits, np.array([2, 1, 0]), LogprobRows(np.array([0, 1, 2]), 2))
    assert math.isclose(got.chosen[0], _log_softmax(logits[0])[2])
    assert math.isnan(got.chosen[1]) and math.isnan(got.chosen[2])
    assert got.top_ids[0].tolist() == [2, 1]


def _events(sched: Scheduler, steps: int = 10_000) -> dict[int, list]:
    """Run to idle, the engine's way (``run_step_logprobs``); each sequence's token events."""
    clock, out = FakeClock(), {}
    for _ in range(steps):
        batch = sched.schedule(clock.now)
        for seq, n, text in sched.take_events():
            if n != FINISHED:
                out.setdefault(seq.id, []).append(text)
        if batch is None:
            if not sched.has_unfinished():
                return out
            continue
        tokens, lps = run_step_logprobs(sched.model, batch)
        sched.update_from_output(batch, tokens, clock.advance(0.001), lps)
    raise AssertionError("not idle")


def test_scheduler_events_carry_each_tokens_record_and_the_text_is_unchanged() -> None:
    model = charlm()
    sched = Scheduler(model, max_generate_batch=8)
    plain = sched.add_request(params(max_tokens=20, temperature=0.7, seed=3), 0.0)
    logged = sched.add_request(params(max_tokens=20, temperature=0.7, seed=3, logprobs=4), 0.0)
    stopped = sched.add_request(params(max_tokens=40, logprobs=1, stop=("e t",)), 0.0)
    out = _events(sched)
    assert all(type(t) is str for t in out[plain.id])
    assert [t.text for t in out[logged.id]] == out[plain.id]  # logprobs do not change the tokens
    ctx = model.initial_context("The ")
    for item in out[logged.id]:
        assert type(item) is LoggedText and type(item.logprobs) is TokenLogprobs
        want = _log_softmax(model.logits(ctx[None, :])[0])
        rec = item.logprobs
        assert model.id_to_text[rec.token_id] == rec.text == item.text
        assert math.isclose(rec.logprob, want[rec.token_id], rel_tol=1e-12)
        assert [t for t, _, _ in rec.top] == sorted(range(len(want)), key=lambda t: (-want[t], t))[:4]
        assert [model.id_to_text[t] for t, _, _ in rec.top] == [txt for _, txt, _ in rec.top]
        assert np.allclose([lp for _, _, lp in rec.top], [want[t] for t, _, _ in rec.top], rtol=1e-12, atol=0)
        ctx = np.append(ctx[1:], rec.token_id)
    free = sched.add_request(params(max_tokens=40, logprobs=1), 0.0)
    free_out = _events(sched)[free.id]
    text = "".join(t.text for t in free_out)
    cut = text.find("e t")
    assert cut > 0 and [(t.text, t.logprobs) for t in out[stopped.id]] == \
        [(t.text, t.logprobs) for t in free_out[:cut]]  # held text kept its records; the stop's tokens dropped


def test_ranks_go_to_the_requests_that_ask_for_them_and_steps_without_them_compute_none() -> None:
    """``logprob_ranks`` (Triton's ``return_logprobs``): the records of that request carry each
    token's rank; a request batched with it without the flag gets ``None``, as every request does
    when no running one asks (then the step computes no ranks)."""
    model = charlm()
    sched = Scheduler(model, max_generate_batch=8)
    ranked = sched.add_request(params(max_tokens=15, temperature=0.9, seed=2, logprobs=2, logprob_ranks=True), 0.0)
    unranked = sched.add_request(params(max_tokens=15, temperature=0.9, seed=2, logprobs=2), 0.0)
    out = _events(sched)
    assert [t.logprobs[:4] for t in out[ranked.id]] == [t.logprobs[:4] for t in out[unranked.id]]
    assert all(t.logprobs.rank is None for t in out[unranked.id])
    ctx = model.initial_context("The ")
    for item in out[ranked.id]:
        z = model.logits(ctx[None, :])[0]
        assert item.logprobs.rank == int((z >= z[item.logprobs.token_id]).sum())
        ctx = np.append(ctx[1:], item.logprobs.token_id)
    assert any(t.logprobs.rank > 1 for t in out[ranked.id])  # sampled: not always the likeliest


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, INLINE])
async def test_engine_streams_records_inline_and_from_the_executor(inline_max_batch: int) -> None:
    engine = GenerationEngine(charlm(), inline_max_batch=inline_max_batch)
    try:
        plain, logged, other = await run_all(engine, [params(max_tokens=15), params(max_tokens=15, logprobs=2),
                                                      params(prompt="x", max_tokens=9, logprobs=0)])
    finally:
        await engine.close()
    assert plain.logprobs == [None] * 15 and logged.tokens == plain.tokens
    assert all(r.text == t and len(r.top) == 2 and r.top[0][1] == t for r, t in zip(logged.logprobs, logged.tokens))
    assert all(r.top == () and r.logprob <= 0 for r in other.logprobs) and len(other.logprobs) == 9


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, INLINE])
async def test_a_step_computed_row_by_row_keeps_the_good_rows_records(inline_max_batch: int) -> None:
    good = [params(prompt="x", max_tokens=12, logprobs=3), params(prompt="A ", max_tokens=9, temperature=0.8, seed=7,
                                                                  logprobs=1)]
    engine = GenerationEngine(PoisonModel(), inline_max_batch=inline_max_batch)  # type: ignore[arg-type]
    try:
        reference = await run_all(engine, good)
        sinks = await run_all(engine, [good[0], params(prompt="a # b", max_tokens=12, logprobs=2), good[1]])
        assert engine.isolated_steps >= 1
    finally:
        await engine.close()
    assert sinks.pop(1).error is not None
    for got, want in zip(sinks, reference, strict=True):
        assert got.tokens == want.tokens and got.logprobs == want.logprobs and None not in got.logprobs


def test_prompt_logprobs_are_the_generations_for_the_same_text() -> None:
    """Scoring a text as a prompt gives each token the record its generation gave it: the same
    contexts (left-padded windows of the model's context length), another code path."""
    model = charlm()
    sched = Scheduler(model, max_generate_batch=2)
    seq = sched.add_request(params(prompt="Th", max_tokens=14, logprobs=3), 0.0)
    generated = _events(sched)[seq.id]
    text = "Th" + "".join(t.text for t in generated)
    ids = model.prompt_ids(text)
    assert len(ids) == len(text) == 16  # charlm reads 16 characters: all of it
    scored = prompt_logprobs(model.logits, ids, context_len=model.context_len, pad_id=model.pad_id,
                             id_to_text=model.id_to_text, k=3)
    assert scored[0] is None and len(scored) == 16
    assert scored[2:] == [t.logprobs for t in generated]
    first = _log_softmax(model.logits(model.initial_context("T")[None, :])[0])
    assert math.isclose(scored[1].logprob, first[model.id_to_text.index("h")], rel_tol=1e-12)


def test_prompt_logprobs_of_long_prompts_span_several_calls() -> None:
    model = charlm()
    calls = []

    def logits(contexts: np.ndarray) -> np.ndarray:
        calls.append(len(contexts))
        return model.logits(contexts)

    ids = np.array([model.id_to_text.index(c) for c in "abc " * 200], np.int64)
    got = prompt_logprobs(logits, ids, context_len=model.context_len, pad_id=model.pad_id,
                          id_to_text=model.id_to_text, k=1)
    assert calls == [256, 256, 256, 31] and len(got) == 800
    one = prompt_logprobs(model.logits, ids[300:310], context_len=model.context_len, pad_id=model.pad_id,
                          id_to_text=model.id_to_text, k=1)
    assert got[300 + model.context_len:310] == one[model.context_len:]  # only the last k ids count
    assert prompt_logprobs(logits, ids[:1], context_len=model.context_len, pad_id=model.pad_id,
                           id_to_text=model.id_to_text, k=1) == [None]


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, INLINE])
async def test_engine_scores_prompts_between_steps_and_a_failure_stays_in_its_request(inline_max_batch: int) -> None:
    engine = GenerationEngine(PoisonModel(), inline_max_batch=inline_max_batch)  # type: ignore[arg-type]
    try:
        (reference,) = await run_all(engine, [params(prompt="x", max_tokens=40)])
        sink = RecordingSink()
        engine.submit(params(prompt="x", max_tokens=40), sink)
        good = engine.score_prompt("The cat", 2)
        bad = engine.score_prompt("a # b", 2)  # the poisoned id: logits() raises
        scored = await good
        with pytest.raises(Internal, match="scoring the prompt failed: FloatingPointError: poisoned row"):
            await bad
        await until(lambda: sink.ended)
        assert sink.tokens == reference.tokens and sink.done[0] == "length"
        assert [t for t, _ in scored] == list("The cat") and scored[0][1] is None
        assert all(r.text == t and len(r.top) == 2 for t, r in scored[1:])
        pending = engine.score_prompt("abc", 1)
    finally:
        await engine.close()
    # queued before close: scored by the iteration close() waits for, or ended; never left pending
    assert pending.done() and (pending.exception() is None or isinstance(pending.exception(), ShuttingDown))
    with pytest.raises(ShuttingDown):
        engine.score_prompt("abc", 1)


class LongPromptModel(PoisonModel):
    """charlm reading long prompts (every character, not the last 16), recording each ``logits()``
    call's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        real = charlm()
        self.prompt_ids = lambda prompt: np.array([real.id_to_text.index(c) for c in prompt], np.int64)

    def logits(self, contexts: np.ndarray) -> np.ndarray:  # type: ignore[override]
        self.calls.append(len(contexts))
        return charlm().logits(contexts)


@pytest.mark.parametrize("inline_max_batch", [EXECUTOR, INLINE])
async def test_a_long_prompt_is_scored_in_slices_between_generation_steps(inline_max_batch: int) -> None:
    model = LongPromptModel()
    engine = GenerationEngine(model, inline_max_batch=inline_max_batch)  # type: ignore[arg-type]
    try:
        sink = RecordingSink()
        engine.submit(params(prompt="x", max_tokens=50), sink)
        scored = await engine.score_prompt("abc " * 300, 1)  # 1200 tokens: 1199 positions, 5 slices
        await until(lambda: sink.ended)
    finally:
        await engine.close()
    slices = [i for i, rows in enumerate(model.calls) if rows > 1]
    assert [model.calls[i] for i in slices] == [256, 256, 256, 256, 175]
    assert all(b - a > 1 for a, b in zip(slices, slices[1:]))  # a generation step between two slices
    assert len(scored) == 1200 and scored[0][1] is None
    alone = prompt_logprobs(charlm().logits, model.prompt_ids("abc " * 300), context_len=model.context_len,
                            pad_id=model.pad_id, id_to_text=model.id_to_text, k=1)
    assert [r for _, r in scored] == alone


async def test_prompt_scoring_is_bounded_in_queued_prompts_and_values() -> None:
    """Scoring holds what the client asked for: at most ``max_generate_queue`` prompts wait, and a
    prompt's positions x (k + 1) at most MAX_SCORED_VALUES (refused before anything is computed)."""
    model = LongPromptModel()
    engine = GenerationEngine(model, max_generate_queue=2)  # type: ignore[arg-type]
    try:
        first, second = engine.score_prompt("ab", 1), engine.score_prompt("cd", 1)
        with pytest.raises(Overloaded, match=r"2 prompts wait to be scored \(max_generate_queue=2\)"):
            engine.score_prompt("ef", 1)
        assert len(await first) == 2 and len(await second) == 2
        assert len(await engine.score_prompt("ef", 1)) == 2  # room again
        calls = len(model.calls)
        too_long = "a" * (MAX_SCORED_VALUES // 21 + 1)
        with pytest.raises(BadRequest, match=r"at most 1048576 \(a shorter prompt or a smaller 'logprobs'\)"):
            engine.score_prompt(too_long, 20)
        assert len(model.calls) == calls  # nothing computed
        assert len(await engine.score_prompt(too_long[:1000], 20)) == 1000
    finally:
        await engine.close()


async def test_wait_idle_waits_for_the_prompts_being_scored() -> None:
    """A retired version is closed once ``wait_idle`` returns: a prompt still being scored
    (``echo`` with ``logprobs``) is finished first, not failed by the close."""
    engine = GenerationEngine(charlm())
    try:
        future = engine.score_prompt("It was the best", 2)
        await engine.wait_idle()
        assert future.done() and not future.cancelled() and future.exception() is None
        assert len(future.result()) == len("It was the best")
    finally:
        await engine.close()
