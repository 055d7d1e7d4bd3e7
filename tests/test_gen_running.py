"""The vectorised per-step bookkeeping (:mod:`wsserve.generation.running`, ``sample_rows``,
token blocks) against the per-sequence semantics it replaced.

The reference is a generation stepping *alone*, one token at a time, with the
public :func:`~wsserve.generation.sample` on a ``[1, V]`` batch, its own
generator's Gumbel blocks, its own token counts for the presence/frequency
penalties, a :class:`StopMatcher` fed token by token and a ``max_tokens``
count: the old per-sequence path.  Random schedules (arrivals,
priorities, groups that force preemption, cancels, deadlines, stop strings)
must give every sequence exactly its reference output (or a prefix of it when
cancelled or expired), with consistent counts, and leave no bookkeeping behind.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_gen_support import (
    Collected,
    FakeClock,
    charlm,
    params,
    run_until_idle,
    step_once,
)
from wsserve.errors import DeadlineExceeded
from wsserve.generation import GenerationParams, Scheduler, StopMatcher, sample
from wsserve.generation.running import RunningSet
from wsserve.generation.sampling import (
    FLOAT32_NOISE_MAX_VOCAB,
    NOISE_BLOCK,
    SampledRows,
    gumbel_block,
    gumbel_blocks,
    new_generator,
    noise_block_rows,
    sample_rows,
)
from wsserve.generation.sequence import Sequence, TokenEvents

PROMPTS = ("The ", "def f(x):\n    ", "", "import ", "A")
STOPS = ("e", "th", "the", "\n", "  ", "ion", "zz", "self", "(")


@functools.cache
def alone(p: GenerationParams) -> tuple[tuple[str, ...], str, int]:
    """The per-sequence semantics: (streamed pieces, finish reason, tokens generated)."""
    model = charlm()
    v = model.vocab_size
    ctx = model.initial_context(p.prompt)
    rng = new_generator(p.seed) if p.temperature > 0 else None
    temp = np.array([p.temperature])
    top_k = np.array([p.top_k if 0 < p.top_k < v else 0])
    top_p = np.array([p.top_p])
    min_p = np.array([p.min_p])
    counts = np.zeros(v)  # tokens generated so far, for the penalties (OpenAI's formula)
    matcher = StopMatcher(p.stop) if p.stop else None
    pieces: list[str] = []
    block = np.zeros((NOISE_BLOCK, v))
    for t in range(p.max_tokens):
        noise = None
        if rng is not None:
            if t % NOISE_BLOCK == 0:
                block = gumbel_block(rng, v)
            noise = block[t % NOISE_BLOCK][None, :]
        logits = model.logits(ctx[None, :])
        logits[0] -= counts * p.frequency_penalty
        logits[0] -= (counts > 0) * p.presence_penalty
        for token, bias in p.logit_bias:
            logits[0, token] += bias
        tok = int(sample(logits, temp, top_k, noise, top_p=top_p, min_p=min_p)[0])
        counts[tok] += 1
        ctx = np.append(ctx[1:], tok)
        text = model.id_to_text[tok]
        if matcher is None:
            pieces.append(text)
            continue
        released, stopped = matcher.feed(text)
        if stopped:
            return (*pieces, *released), "stop", t + 1
        if t + 1 == p.max_tokens:
            released += matcher.flush()
        pieces.extend(released)
    return tuple(pieces), "length", p.max_tokens


request = st.builds(
    GenerationParams,
    prompt=st.sampled_from(PROMPTS),
    max_tokens=st.integers(1, 40),
    temperature=st.sampled_from([0.0, 0.0, 0.6, 1.0, 1.8]),
    top_k=st.sampled_from([0, 0, 1, 4, 200]),
    top_p=st.sampled_from([1.0, 1.0, 0.5, 0.9]),
    min_p=st.sampled_from([0.0, 0.0, 0.1]),
    presence_penalty=st.sampled_from([0.0, 0.0, 0.7, -0.5]),
    frequency_penalty=st.sampled_from([0.0, 0.0, 1.5, -2.0]),
    logit_bias=st.sampled_from([(), (), ((1, 5.0),), ((0, -100.0), (3, 2.5), (95, 7.0))]),
    seed=st.integers(0, 2**64),
    stop=st.lists(st.sampled_from(STOPS), max_size=2, unique=True).map(tuple),
    priority=st.sampled_from([0, 0, 1]),
)
#: One step of a schedule: requests that arrive (with a group and maybe a deadline
#: in steps), and indices (mod the sequences so far) of sequences cancelled.
step = st.tuples(
    st.lists(st.tuples(request, st.sampled_from(["A", "B", "C", None]), st.none() | st.integers(1, 30)), max_size=4),
    st.lists(st.integers(0, 10**6), max_size=1),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.sampled_from([1, 2, 3, 5, 8]), schedule=st.lists(step, min_size=1, max_size=25))
def test_random_schedules_match_the_per_sequence_semantics(batch: int, schedule: list) -> None:
    sched = Scheduler(charlm(), max_generate_batch=batch, max_generate_queue=None)
    clock, out = FakeClock(), Collected()
    seqs: list[tuple[Sequence, GenerationParams]] = []
    for arrivals, cancels in schedule:
        for p, group, deadline_steps in arrivals:
            deadline = None if deadline_steps is None else clock.now + deadline_steps * 0.001 - 0.0005
            seqs.append((sched.add_request(p, clock.now, group=group, deadline=deadline), p))
        for i in cancels:
            if seqs:
                sched.finish_requests([seqs[i % len(seqs)][0]], clock.now)
        step_once(sched, clock, out)  # Collected checks: seq numbers in order, one terminal, count
    run_until_idle(sched, clock, out)

    for seq, p in seqs:
        assert seq.finished and seq.id in out.finished
        pieces, reason, generated = alone(p)
        got = tuple(out.text.get(seq.id, []))
        assert seq.streamed == len(got)
        if seq.finish_reason in ("length", "stop"):
            assert (got, seq.finish_reason, seq.generated) == (pieces, reason, generated)
        else:  # cancelled or deadline: what was streamed is the start of the same output
            assert seq.finish_reason == "cancelled" or isinstance(seq.error, DeadlineExceeded)
            assert got == pieces[: len(got)] and seq.generated <= generated
    _assert_nothing_left(sched)


def _assert_nothing_left(sched: Scheduler) -> None:
    run = sched._run
    assert not sched.has_unfinished() and len(run) == 0 and run.free == run.capacity
    assert run._ends == {} and run._refills == {}, "calendars must not keep ended sequences"


# --------------------------------------------------------------------------- the pieces


def test_preemption_and_resume_keep_counts_context_and_noise() -> None:
    """One group holds every slot; another arrives: the paused sequences resume mid noise block."""
    sched = Scheduler(charlm(), max_generate_batch=4, max_generate_queue=None)
    clock, out = FakeClock(), Collected()
    asked = [params(PROMPTS[i], max_tokens=70, temperature=0.9, seed=i) for i in range(4)] + [params(max_tokens=9)] * 2
    hog = [sched.add_request(p, clock.now, group="A") for p in asked[:4]]
    for _ in range(NOISE_BLOCK + 5):  # inside the second noise block
        step_once(sched, clock, out)
    late = [sched.add_request(p, clock.now, group="B") for p in asked[4:]]
    step_once(sched, clock, out)
    paused = [s for s in hog if s.state.value == "waiting"]
    assert len(paused) == 2 and sched.statistics().preempted == 2
    assert all(s.generated == NOISE_BLOCK + 5 for s in paused)  # frozen while paused
    step_once(sched, clock, out)
    assert all(s.generated == NOISE_BLOCK + 5 for s in paused)
    run_until_idle(sched, clock, out)
    for s, p in zip(hog + late, asked):
        assert (tuple(out.text[s.id]), s.finish_reason, s.generated) == alone(p)
    _assert_nothing_left(sched)


def test_counters_follow_the_step_counter() -> None:
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    a = sched.add_request(params(max_tokens=10), clock.now)
    step_once(sched, clock, out)
    b = sched.add_request(params(max_tokens=10, stop=("\u00a7",)), clock.now)
    assert (a.generated, b.generated, b.streamed) == (1, 0, 0)
    for _ in range(3):
        step_once(sched, clock, out)
    assert (a.generated, a.streamed, b.generated, b.streamed) == (4, 4, 3, 3)
    sched.finish_requests([a], clock.now)
    step_once(sched, clock, out)
    assert (a.generated, b.generated) == (4, 4)  # a's count froze when it ended


def _layout_state(run: RunningSet) -> tuple:
    sp = run._sampling
    arrays = None if sp is None else tuple(None if a is None else a.tolist()
                                           for a in (sp.rows, sp.scale, sp.top_k_rows, sp.top_k))
    return (run._rows, run._contexts.tolist(), list(run._next), list(run.stop_rows), run.plain, run.n_plain,
            arrays, run._nidx.tolist(), [(s._row, s._srow) for s in run._rows])


def test_rows_appended_while_sequences_only_join_equal_a_full_layout() -> None:
    """Joining sequences are laid out by appending rows; the result must be what a
    rebuild from scratch gives (contexts, token numbers, stop rows, sampling, noise rows)."""
    model = charlm()
    sched = Scheduler(model, max_generate_batch=32)
    clock, out = FakeClock(), Collected()
    run = sched._run
    prompts: dict[int, str] = {}
    for wave in range(6):  # joins at different steps: different counts and noise offsets
        for i in range(wave % 3 + 1):
            j = 3 * wave + i
            seq = sched.add_request(params(PROMPTS[j % 5], max_tokens=100, temperature=(0.0, 0.7, 1.3)[j % 3],
                                           top_k=(0, 3, 0, 200)[j % 4], seed=j,
                                           stop=("zz",) if j % 4 == 1 else ()), clock.now)
            prompts[seq.id] = PROMPTS[j % 5]
        for _ in range(wave + 2):
            step_once(sched, clock, out)
        assert not run._left  # nobody left: every layout so far appended rows
        appended = _layout_state(run)
        for s in run._rows:  # each row's context is its own prompt and tokens (rows without held-back text)
            if s._stops is None:
                expected = model.initial_context(prompts[s.id] + "".join(out.text.get(s.id, [])))
                assert run._contexts[s._row].tolist() == expected.tolist()
        run._left = run._dirty = True  # force the rebuild path on the same running set
        run._layout()
        assert _layout_state(run) == appended


def test_a_sequence_cancelled_while_its_batch_computes_gets_no_token_and_leaves_the_next_layout() -> None:
    sched = Scheduler(charlm(), max_generate_batch=8)
    clock, out = FakeClock(), Collected()
    seqs = [sched.add_request(params(PROMPTS[i % 5], max_tokens=20, stop=("zz",) if i % 2 else ()), clock.now)
            for i in range(6)]
    step_once(sched, clock, out)
    batch = sched.schedule(clock.now)
    assert batch is not None
    tokens = charlm().logits(batch.contexts).argmax(axis=1)
    sched.finish_requests([seqs[1], seqs[2]], clock.now)
    sched.update_from_output(batch, tokens, clock.advance(0.001))
    out.take(sched)  # raises on a token after the terminal
    assert [len(out.text[s.id]) for s in seqs] == [2, 1, 1, 2, 2, 2]
    nxt = sched.schedule(clock.now)
    assert nxt is not None and nxt.seqs == (seqs[0], seqs[3], seqs[4], seqs[5])
    assert np.array_equal(nxt.contexts, np.concatenate((batch.contexts[:, 1:], tokens[:, None]), axis=1)[[0, 3, 4, 5]])


def test_each_batch_is_given_back_once() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2)
    sched.add_request(params(max_tokens=5), 0.0)
    batch = sched.schedule(0.0)
    assert batch is not None
    with pytest.raises(RuntimeError, match="given back"):
        sched.schedule(0.0)
    tokens = charlm().logits(batch.contexts).argmax(axis=1)
    sched.update_from_output(batch, tokens, 0.001)
    with pytest.raises(RuntimeError, match="once"):
        sched.update_from_output(batch, tokens, 0.002)
    assert sched.schedule(0.002) is not None


def test_a_bad_token_id_changes_nothing() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2)
    seq = sched.add_request(params(max_tokens=5), 0.0)
    batch = sched.schedule(0.0)
    assert batch is not None
    with pytest.raises(IndexError):
        sched.update_from_output(batch, np.array([charlm().vocab_size]), 0.001)
    assert seq.generated == 0 and sched.take_events() == []


def test_calendars_do_not_grow_with_cancelled_and_paused_sequences() -> None:
    sched = Scheduler(charlm(), max_generate_batch=4, max_generate_queue=None)
    clock, out = FakeClock(), Collected()
    for round_ in range(200):
        seqs = [sched.add_request(params(max_tokens=100_000, temperature=1.0, seed=i), clock.now, group=i % 3)
                for i in range(3)]
        step_once(sched, clock, out)
        sched.finish_requests(seqs[:2], clock.now)
        run = sched._run
        assert len(run._ends) <= len(run) and len(run._refills) <= len(run)
    sched.abort_all(DeadlineExceeded("end"), clock.now)
    out.take(sched)
    _assert_nothing_left(sched)


def test_take_events_expands_token_blocks_in_order() -> None:
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock = FakeClock()
    a = sched.add_request(params(max_tokens=1), clock.now)
    b = sched.add_request(params(max_tokens=3, stop=("\u00a7",)), clock.now)
    c = sched.add_request(params(max_tokens=3), clock.now)
    batch = sched.schedule(clock.now)
    assert batch is not None
    sched.update_from_output(batch, np.array([1, 2, 3]), clock.advance(0.001))
    raw = sched._out[:]
    assert type(raw[0]) is TokenEvents and raw[0].mask == [True, False, True]
    text = charlm().id_to_text
    assert sched.take_events() == [(a, 0, text[1]), (c, 0, text[3]), (b, 0, text[2]), (a, -1, "")]


# --------------------------------------------------------------------------- sampling pieces


@settings(max_examples=200, deadline=None)
@given(
    b=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    v=st.integers(2, 30),
    full_scale=st.booleans(),
)
def test_sample_rows_equals_sample(b: int, seed: int, v: int, full_scale: bool) -> None:
    """Bitwise the same tokens, with the temperatures laid out as [S, 1] or [S, V]."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (b, v))
    temp = rng.choice([0.0, 0.0, 1e-300, 0.5, 1.0, 3.0], b)
    top_k = rng.choice([0, 1, 2, v - 1, v, v + 5], b).astype(np.int64)
    top_k = np.where((top_k > 0) & (top_k < v), top_k, 0)  # the scheduler's normalisation
    top_p = rng.choice([1.0, 1.0, 0.3, 0.8, 0.999], b)
    min_p = rng.choice([0.0, 0.0, 0.05, 0.5], b)
    rows = np.flatnonzero(temp > 0)
    noise = np.zeros((b, v))
    noise[rows] = rng.gumbel(size=(len(rows), v))
    expected = sample(logits, temp, top_k, noise if len(rows) else None, top_p=top_p, min_p=min_p)
    spec = None
    if len(rows):
        k_rows = np.flatnonzero(top_k[rows] > 0)
        column = np.maximum(temp[rows], 1e-6)[:, None]
        spec = SampledRows(
            rows=None if len(rows) == b else rows,
            scale=np.repeat(column, v, axis=1) if full_scale else column,
            top_k_rows=k_rows if len(k_rows) else None,
            top_k=top_k[rows][k_rows] if len(k_rows) else None,
            top_p_rows=np.flatnonzero(top_p[rows] < 1) if (top_p[rows] < 1).any() else None,
            top_p=top_p[rows][top_p[rows] < 1] if (top_p[rows] < 1).any() else None,
            min_p_rows=np.flatnonzero(min_p[rows] > 0) if (min_p[rows] > 0).any() else None,
            log_min_p=np.log(min_p[rows][min_p[rows] > 0]) if (min_p[rows] > 0).any() else None,
        )
    got = sample_rows(logits, spec, noise[rows] if len(rows) else None)
    assert got.tolist() == expected.tolist()


def test_noise_blocks_transformed_together_equal_one_by_one() -> None:
    together = gumbel_blocks([new_generator(s) for s in range(7)], 33)
    one_by_one = np.concatenate([gumbel_block(new_generator(s), 33) for s in range(7)])
    assert np.array_equal(together, one_by_one)


class _BigVocabulary:
    """What a RunningSet reads of a model, with a vocabulary past the float32-noise limit."""

    context_len, vocab_size = 4, FLOAT32_NOISE_MAX_VOCAB + 3
    id_to_text = tuple(str(i) for i in range(FLOAT32_NOISE_MAX_VOCAB + 3))

    def initial_context(self, prompt: str) -> np.ndarray:
        return np.full(self.context_len, self.vocab_size, np.int64)


@pytest.mark.parametrize("big", [False, True], ids=["charlm-float32-noise", "big-vocabulary-float64-noise"])
def test_refills_due_at_the_same_step_give_each_sequence_its_own_noise(big: bool) -> None:
    """Many sampled sequences start together (their refills coincide): each one's noise rows
    are its own generator's blocks, in order, whatever the batch."""
    model = _BigVocabulary() if big else charlm()
    run = RunningSet(model, 8)
    seqs = []
    for i in range(5):
        seq = Sequence(i, params(temperature=1.0, seed=100 + i, max_tokens=10**6), None, 0.0, tick=run.tick)
        seq._rng = new_generator(100 + i)
        run.add(seq, model.initial_context("The "))
        seqs.append(seq)
    gens = [new_generator(100 + i) for i in range(5)]
    nb = noise_block_rows(model.vocab_size)  # rows per block (fewer for a big vocabulary)
    expected = [np.concatenate([gumbel_block(g, model.vocab_size) for _ in range(-(-3 * NOISE_BLOCK // nb))])
                for g in gens]
    for t in range(3 * NOISE_BLOCK):
        rows, contexts, sampling, noise = run.batch()
        assert rows == tuple(seqs) and sampling is not None and sampling.rows is None
        for i in range(5):
            assert np.array_equal(noise[i], expected[i][t])
        run.advance(contexts, np.zeros(5, np.int64), 0.0)
