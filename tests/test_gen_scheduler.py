"""The sans-I/O continuous-batching scheduler, driven with a fake clock and the real charlm."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_gen_support import (
    Collected,
    FakeClock,
    charlm,
    params,
    run_until_idle,
    step_once,
)
from wsserve.errors import (
    BadRequest,
    DeadlineExceeded,
    Internal,
    Overloaded,
    ShuttingDown,
)
from wsserve.generation import GenerationParams, Scheduler, SeqState, run_step
from wsserve.generation.model import TokenModelAdapter
from wsserve.models.base import ModelInfo

PROMPTS = ["The ", "def f(x):\n    ", "import ", "A", "", "class ", "Note: ", "for i in range(10):"]


def generate_alone(p: GenerationParams) -> tuple[str, str]:
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(p, clock.now)
    run_until_idle(sched, clock, out)
    return out.joined(seq), seq.finish_reason or ""


@pytest.mark.parametrize(
    "target",
    [
        GenerationParams(prompt="The ", max_tokens=60),
        GenerationParams(prompt="The ", max_tokens=60, temperature=0.9, seed=7),
        GenerationParams(prompt="x = ", max_tokens=45, temperature=1.3, top_k=10, seed=2**70 + 3),
        GenerationParams(prompt="The ", max_tokens=80, temperature=0.8, seed=1, stop=("ion", "\n\n")),
        GenerationParams(prompt="x = ", max_tokens=45, temperature=1.5, top_p=0.7, seed=11),
        GenerationParams(prompt="The ", max_tokens=45, temperature=1.2, top_k=20, top_p=0.9, seed=12),
        GenerationParams(prompt="The ", max_tokens=60, frequency_penalty=1.0, presence_penalty=0.5),
        GenerationParams(prompt="x = ", max_tokens=45, temperature=0.9, frequency_penalty=-0.8, seed=13),
        GenerationParams(prompt="def ", max_tokens=45, temperature=1.6, min_p=0.05, top_p=0.95, seed=14),
        GenerationParams(prompt="The ", max_tokens=45, temperature=0.7, logit_bias=((5, 3.0), (40, -100.0)), seed=15),
        GenerationParams(prompt="The ", max_tokens=90, temperature=0.9, seed=16, stop_token_ids=(0, 69, 74),
                         min_tokens=30),
        GenerationParams(prompt="x = ", max_tokens=90, temperature=1.1, seed=17, stop=("e", "\n\n"), min_tokens=12,
                         include_stop_str_in_output=True),
        GenerationParams(prompt="The ", max_tokens=90, stop=("ion",), stop_token_ids=(70, 82), min_tokens=20,
                         include_stop_str_in_output=True),
    ],
    ids=["greedy", "sampled", "sampled-top-k", "sampled-stop", "sampled-top-p", "sampled-top-k-top-p",
         "greedy-penalties", "sampled-penalty", "sampled-min-p", "sampled-logit-bias", "sampled-stop-token-ids-min",
         "sampled-stop-min-include", "greedy-stop-ids-include"],
)
def test_same_output_alone_and_among_32_concurrent_generations(target: GenerationParams) -> None:
    alone = generate_alone(target)
    sched = Scheduler(charlm(), max_generate_batch=64)
    clock, out = FakeClock(), Collected()
    others = []

    def add_others(n: int, base: int) -> None:
        for i in range(n):
            j = base + i
            others.append(sched.add_request(GenerationParams(
                prompt=PROMPTS[j % len(PROMPTS)], max_tokens=3 + 7 * j % 90,
                temperature=(0.0, 0.5, 1.0, 2.0)[j % 4], top_k=(0, 0, 5)[j % 3], top_p=(1.0, 0.8)[j % 2],
                frequency_penalty=(0.0, 0.0, 0.6)[j % 3], logit_bias=((), ((7, 4.0),))[j % 2], seed=j), clock.now))

    add_others(12, 0)
    step_once(sched, clock, out)
    step_once(sched, clock, out)
    seq = sched.add_request(target, clock.now)  # joins a running batch mid-way
    step_once(sched, clock, out)
    add_others(20, 12)  # more join while it runs, others leave at their own lengths
    run_until_idle(sched, clock, out)
    assert len(others) == 32 and all(o.finished for o in others)
    assert len(set(out.batch_sizes)) > 5  # the batch really changed size under the target
    assert (out.joined(seq), seq.finish_reason) == alone


def test_sequences_join_at_the_next_step_and_leave_at_once() -> None:
    sched = Scheduler(charlm(), max_generate_batch=8)
    clock, out = FakeClock(), Collected()
    a = sched.add_request(params(max_tokens=3), clock.now)
    b = sched.add_request(params(max_tokens=5), clock.now)
    step_once(sched, clock, out)
    c = sched.add_request(params(max_tokens=2), clock.now)
    assert c.state is SeqState.WAITING
    step_once(sched, clock, out)
    assert c.state is SeqState.RUNNING and c.generated == 1
    step_once(sched, clock, out)
    assert a.finished and c.finished and not b.finished  # left in the step that ended them
    assert set(out.finished) == {a.id, c.id}
    run_until_idle(sched, clock, out)
    assert out.batch_sizes == [2, 3, 3, 1, 1]
    assert [len(out.joined(s)) for s in (a, b, c)] == [3, 5, 2]
    assert all(s.finish_reason == "length" and s.streamed == s.params.max_tokens for s in (a, b, c))


def test_a_freed_slot_is_taken_by_a_waiting_sequence_at_the_next_step() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2)
    clock, out = FakeClock(), Collected()
    a = sched.add_request(params(max_tokens=1), clock.now)
    b = sched.add_request(params(max_tokens=4), clock.now)
    c = sched.add_request(params(max_tokens=2), clock.now)
    step_once(sched, clock, out)
    assert a.finished and c.state is SeqState.WAITING
    step_once(sched, clock, out)
    assert c.state is SeqState.RUNNING and c.admitted_at is not None
    run_until_idle(sched, clock, out)
    assert out.batch_sizes == [2, 2, 2, 1]
    assert b.timing()["queue_ms"] == 0 and c.timing()["queue_ms"] == pytest.approx(1.0)


def test_high_priority_is_admitted_first_fifo_within_a_priority() -> None:
    sched = Scheduler(charlm(), max_generate_batch=1)
    clock, out = FakeClock(), Collected()
    first = sched.add_request(params(max_tokens=2), clock.now)
    step_once(sched, clock, out)
    low1 = sched.add_request(params(max_tokens=1), clock.now)
    high1 = sched.add_request(params(max_tokens=1, priority=1), clock.now)
    low2 = sched.add_request(params(max_tokens=1), clock.now)
    high2 = sched.add_request(params(max_tokens=1, priority=1), clock.now)
    run_until_idle(sched, clock, out)
    order = sorted([first, low1, high1, low2, high2], key=lambda s: s.admitted_at)
    assert order == [first, high1, high2, low1, low2]


def test_queue_bound_refuses_with_overloaded_and_retry_after() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2, max_generate_queue=3)
    clock, out = FakeClock(), Collected()
    accepted = [sched.add_request(params(max_tokens=50), clock.now) for _ in range(5)]  # 2 slots + 3
    with pytest.raises(Overloaded) as info:
        sched.add_request(params(), clock.now)
    assert info.value.retry_after_ms is not None and info.value.retry_after_ms >= 1
    assert "max_generate_queue=3" in info.value.message
    step_once(sched, clock, out)
    assert sched.statistics().running == 2 and sched.statistics().waiting == 3
    with pytest.raises(Overloaded) as info:
        sched.add_request(params(), clock.now)
    # two running sequences have 49 tokens to go at ~1 ms per step
    assert 10 <= info.value.retry_after_ms <= 1000
    sched.finish_requests([accepted[4]], clock.now)  # a waiting one is cancelled: room again
    sched.add_request(params(max_tokens=1), clock.now)
    assert not any(s.error for s in accepted)


def test_unbounded_queue_with_none() -> None:
    sched = Scheduler(charlm(), max_generate_batch=1, max_generate_queue=None)
    for _ in range(2000):
        sched.add_request(params(), 0.0)
    assert sched.statistics().waiting == 2000


def test_cancel_mid_stream_while_the_batch_computes() -> None:
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    victim = sched.add_request(params(max_tokens=100), clock.now)
    other = sched.add_request(params(max_tokens=10), clock.now)
    for _ in range(4):
        step_once(sched, clock, out)
    batch = sched.schedule(clock.now)
    assert batch is not None and victim in batch.seqs
    tokens = run_step(sched.model, batch)
    sched.finish_requests([victim], clock.advance(0.0005))  # arrives during the step
    out.take(sched)
    assert out.finished[victim.id].finish_reason == "cancelled"
    sched.update_from_output(batch, tokens, clock.advance(0.0005))
    out.take(sched)  # raises if the victim got a token after its finish
    run_until_idle(sched, clock, out)
    assert len(out.joined(victim)) == victim.streamed == 4
    assert victim.timing()["total_ms"] == pytest.approx(4.5)
    assert other.finish_reason == "length" and len(out.joined(other)) == 10
    sched.finish_requests([victim, other], clock.now)  # finished ones are ignored
    assert sched.take_events() == []


def test_deadline_while_queued_and_while_running() -> None:
    sched = Scheduler(charlm(), max_generate_batch=1)
    clock, out = FakeClock(), Collected()
    running = sched.add_request(params(max_tokens=1000), clock.now, deadline=clock.now + 0.0105)
    queued = sched.add_request(params(max_tokens=5), clock.now, deadline=clock.now + 0.005)
    after = sched.add_request(params(max_tokens=3), clock.now)
    for _ in range(12):
        step_once(sched, clock, out)
    assert isinstance(queued.error, DeadlineExceeded) and queued.streamed == 0
    # steps end at +1, +2, ... ms: the 11th token comes back at +11 ms, past the deadline
    assert isinstance(running.error, DeadlineExceeded) and "10 tokens streamed" in running.error.message
    assert running.finish_reason is None and len(out.joined(running)) == 10
    assert after.state is SeqState.RUNNING  # took the freed slot at once
    run_until_idle(sched, clock, out)
    assert after.finish_reason == "length"


def _greedy_text(prompt: str, n: int) -> str:
    text, reason = generate_alone(GenerationParams(prompt=prompt, max_tokens=n))
    assert reason == "length" and len(text) == n
    return text


def test_stop_string_split_across_tokens_is_not_streamed() -> None:
    prompt = "The "
    text = _greedy_text(prompt, 60)
    stop = text[20:24]
    cut = text.find(stop)
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(GenerationParams(prompt=prompt, max_tokens=60, stop=(stop, "never")), clock.now)
    streamed_per_step = []
    while step_once(sched, clock, out):
        streamed_per_step.append(len(out.joined(seq)))
    assert (out.joined(seq), seq.finish_reason) == (text[:cut], "stop")
    assert seq.streamed == cut and seq.generated == cut + len(stop)
    # while the stop string was arriving (steps cut+1 .. cut+3) nothing of it was shown
    assert streamed_per_step[cut:] == [cut] * len(stop)


def test_held_back_text_is_flushed_when_the_length_ends_it() -> None:
    text = _greedy_text("The ", 40)
    stop = text[-3:] + "\u00a7"  # starts like the tail, but "§" is never generated
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(GenerationParams(prompt="The ", max_tokens=40, stop=(stop,)), clock.now)
    for _ in range(39):
        step_once(sched, clock, out)
    assert out.joined(seq) == text[:37]  # the last two chars are held back
    step_once(sched, clock, out)
    assert (out.joined(seq), seq.finish_reason, seq.streamed) == (text, "length", 40)


def test_stop_on_the_first_token_streams_nothing() -> None:
    first = _greedy_text("The ", 1)
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(GenerationParams(prompt="The ", stop=(first,)), clock.now)
    run_until_idle(sched, clock, out)
    assert (seq.finish_reason, seq.streamed, out.joined(seq)) == ("stop", 0, "")
    assert seq.timing()["ttft_ms"] is not None


def test_fail_batch_and_abort_all_end_everything_with_the_error() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2)
    clock, out = FakeClock(), Collected()
    seqs = [sched.add_request(params(max_tokens=9), clock.now) for _ in range(3)]
    batch = sched.schedule(clock.now)
    assert batch is not None
    sched.fail_batch(batch, Internal("boom"), clock.now)
    out.take(sched)
    assert [type(s.error) for s in seqs[:2]] == [Internal, Internal] and not seqs[2].finished
    sched.abort_all(ShuttingDown("bye"), clock.now)
    out.take(sched)
    assert isinstance(seqs[2].error, ShuttingDown) and not sched.has_unfinished()
    assert sched.schedule(clock.now) is None


def test_statistics_snapshot() -> None:
    sched = Scheduler(charlm(), max_generate_batch=3, max_generate_queue=10)
    clock, out = FakeClock(), Collected()
    for n in (2, 4, 4, 4):
        sched.add_request(params(max_tokens=n), clock.now)
    s0 = sched.statistics()
    assert (s0.running, s0.waiting, s0.steps, s0.max_generate_batch, s0.max_generate_queue) == (0, 4, 0, 3, 10)
    step_once(sched, clock, out)
    s1 = sched.statistics()
    assert (s1.running, s1.waiting, s1.steps, s1.tokens, s1.last_batch_size) == (3, 1, 1, 3, 3)
    assert s1.step_ms == pytest.approx(1.0)  # moving average starts at the first step
    run_until_idle(sched, clock, out)
    s2 = sched.statistics()
    assert (s2.running, s2.waiting, s2.tokens, s2.generated, s2.finished) == (0, 0, 14, 14, 4)
    with pytest.raises(AttributeError):
        s2.steps = 0  # type: ignore[misc]


# --------------------------------------------------------------------------- robustness (issue: top_k freeze)


@pytest.mark.parametrize("top_k", [96, 97, 2**31 - 1])
def test_top_k_at_or_above_the_vocabulary_samples_from_every_token(top_k: int) -> None:
    """Any top_k >= V behaves as top_k = 0 (off); the codec bounds it below 2**31 (test_protocol)."""
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    big = sched.add_request(GenerationParams(prompt="The ", max_tokens=30, temperature=0.9, seed=5, top_k=top_k), clock.now)
    off = sched.add_request(GenerationParams(prompt="The ", max_tokens=30, temperature=0.9, seed=5), clock.now)
    run_until_idle(sched, clock, out)
    assert big.error is None and big.finish_reason == "length"
    assert out.joined(big) == out.joined(off)
    assert not sched.has_unfinished() and sched.statistics().running == 0


class _BrokenContext:
    """charlm, except that one prompt gives a context of the wrong shape (a faulty custom model)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.context_len, self.vocab_size, self.id_to_text = inner.context_len, inner.vocab_size, inner.id_to_text

    def encode_prompt(self, prompt: str):
        ctx, n = self._inner.encode_prompt(prompt)
        return (ctx[:3], n) if prompt == "bad" else (ctx, n)

    def logits(self, contexts):
        return self._inner.logits(contexts)


def test_a_sequence_that_cannot_start_fails_alone_and_the_counts_stay_exact() -> None:
    sched = Scheduler(_BrokenContext(charlm()), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    good = [sched.add_request(params(prompt="The ", max_tokens=5), clock.now) for _ in range(2)]
    bad = sched.add_request(params(prompt="bad", max_tokens=5), clock.now)
    run_until_idle(sched, clock, out)
    assert isinstance(bad.error, Internal) and "could not start" in bad.error.message
    assert all(g.finish_reason == "length" and len(out.joined(g)) == 5 for g in good)
    sched.finish_requests([bad, *good], clock.now)  # cancelling finished ones changes nothing
    stats = sched.statistics()
    assert (stats.running, stats.waiting) == (0, 0) and not sched.has_unfinished()
    assert sched.schedule(clock.now) is None


# --------------------------------------------------------------------------- fair share between connections


def test_a_connection_holding_every_slot_yields_its_fair_share_to_a_waiting_one() -> None:
    sched = Scheduler(charlm(), max_generate_batch=8)
    clock, out = FakeClock(), Collected()
    hog = [sched.add_request(params(prompt=PROMPTS[i % 8], max_tokens=400, temperature=0.7, seed=i), clock.now,
                             group="A") for i in range(8)]
    step_once(sched, clock, out)
    assert all(s.state is SeqState.RUNNING for s in hog)
    late = [sched.add_request(params(prompt="The ", max_tokens=20), clock.now, group="B") for _ in range(6)]
    step_once(sched, clock, out)
    # 2 groups, 8 slots: B gets its share of 4 at the next step, A keeps 4.
    assert sum(s.state is SeqState.RUNNING for s in late) == 4
    assert sum(s.state is SeqState.RUNNING for s in hog) == 4
    assert sched.statistics().preempted == 4
    run_until_idle(sched, clock, out)
    assert all(s.finish_reason == "length" for s in hog + late)
    # Preempted sequences resumed where they stopped: the same text as alone.
    for i in (4, 5, 6, 7):
        alone = generate_alone(params(prompt=PROMPTS[i % 8], max_tokens=400, temperature=0.7, seed=i))
        assert (out.joined(hog[i]), hog[i].finish_reason) == alone


def test_waiting_groups_are_served_round_robin() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2)
    clock, out = FakeClock(), Collected()
    a = [sched.add_request(params(max_tokens=1), clock.now, group="A") for _ in range(6)]
    b = [sched.add_request(params(max_tokens=1), clock.now, group="B") for _ in range(2)]
    step_once(sched, clock, out)
    # One of each group in the first batch, not A's first two.
    assert a[0].finished and b[0].finished and not a[1].finished
    run_until_idle(sched, clock, out)
    assert all(s.finished for s in a + b)


def test_a_group_within_its_share_is_not_preempted() -> None:
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    a = [sched.add_request(params(max_tokens=50), clock.now, group="A") for _ in range(2)]
    b = [sched.add_request(params(max_tokens=50), clock.now, group="B") for _ in range(2)]
    step_once(sched, clock, out)
    c = sched.add_request(params(max_tokens=5), clock.now, group="B")
    step_once(sched, clock, out)
    # share = ceil(4 / 2) = 2: nobody is over it, so B's third waits for a free slot.
    assert c.state is SeqState.WAITING and sched.statistics().preempted == 0
    run_until_idle(sched, clock, out)
    assert c.finish_reason == "length" and all(s.finish_reason == "length" for s in a + b)


class _Words:
    """A model whose tokens are words: hello -> world -> stop -> hello ..."""

    task = "generation"
    vocabulary = ("hello ", "world ", "stop")
    context_len = 1
    info = ModelInfo(name="words", version="1", task="generation", input_shape=(1,), output_shape=(3,),
                     parameters=0)

    def encode(self, prompt: str) -> list[int]:
        return [0] if prompt else []

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        out = np.zeros((len(contexts), 3))
        out[np.arange(len(contexts)), (contexts[:, -1] + 1) % 3] = 1.0
        return out


@pytest.mark.parametrize(("stop", "frames", "reason"), [
    ((), ["world ", "stop", "hello ", "world "], "length"),
    (("xyz",), ["world ", "stop", "hello ", "world "], "length"),  # a stop that never matches changes nothing
    (("wor",), [], "stop"),
    (("phe",), ["world ", "sto"], "stop"),  # the stop begins inside a held token: its text before it
    (("o w", "zz"), ["world ", "stop", "hell"], "stop"),
    (("ld stop",), ["wor"], "stop"),  # spans three tokens
    (("world hello",), ["world ", "stop", "hello ", "world "], "length"),  # held tokens flushed whole
])
def test_stop_strings_keep_one_token_frame_per_multi_character_token(
        stop: tuple[str, ...], frames: list[str], reason: str) -> None:
    """Token frames carry whole vocabulary entries with stop strings too, so ``tokens`` (and the
    OpenAI ``completion_tokens``) count tokens, never more than ``max_tokens``."""
    sched = Scheduler(TokenModelAdapter(_Words(), name="words"), max_generate_batch=2)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(params("a", max_tokens=4, stop=stop), clock.now)
    run_until_idle(sched, clock, out)
    assert (out.text.get(seq.id, []), seq.finish_reason, seq.streamed) == (frames, reason, len(frames))


@pytest.mark.parametrize(("prompt", "expected"), [
    ("", 0), ("The ", 4), ("a\r\nb\u2026", 6),  # normalised "a\nb...": 6 ids for 5 characters
    ("x" * 30 + "\u2026", 18),  # charlm's encode gets the last 16 characters: 15 x and "..."
])
def test_a_sequence_counts_the_prompt_ids_charlm_was_given(prompt: str, expected: int) -> None:
    model = charlm()
    sched = Scheduler(TokenModelAdapter(model, name="charlm"), max_generate_batch=2)
    seq = sched.add_request(params(prompt, max_tokens=1), FakeClock().now)
    assert model.prompt_chars == 16 and seq.prompt_tokens == expected
    assert expected == len(model.encode(prompt[-16:]))


def test_a_sequence_counts_multi_character_prompt_tokens() -> None:
    """_Words encodes any non-empty prompt as one token, whatever its length."""
    sched = Scheduler(TokenModelAdapter(_Words(), name="words"), max_generate_batch=2)
    clock = FakeClock()
    assert [sched.add_request(params(p, max_tokens=1), clock.now).prompt_tokens for p in ("", "hello world")] == [0, 1]


def test_a_preempted_sequence_resumes_its_penalties_as_if_it_never_paused() -> None:
    """Preemption saves a sequence's generated-token counts and keeps its prompt's tokens: the
    repetition, presence and frequency penalties give the text it gives alone."""
    opts = [dict(repetition_penalty=1.4), dict(repetition_penalty=0.8, frequency_penalty=0.5),
            dict(presence_penalty=0.7, repetition_penalty=1.2, temperature=0.9, seed=3)]
    alone = []
    for o in opts:
        sched = Scheduler(charlm(), max_generate_batch=8)
        clock, out = FakeClock(), Collected()
        seq = sched.add_request(params(prompt="The ", max_tokens=120, **o), clock.now, group="A")
        run_until_idle(sched, clock, out)
        alone.append(out.joined(seq))
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    hog = [sched.add_request(params(prompt="The ", max_tokens=120, **o), clock.now, group="A") for o in opts]
    hog.append(sched.add_request(params(prompt="x", max_tokens=120), clock.now, group="A"))
    for _ in range(10):
        step_once(sched, clock, out)
    late = [sched.add_request(params(prompt="It ", max_tokens=30, repetition_penalty=1.1), clock.now, group="B")
            for _ in range(3)]
    run_until_idle(sched, clock, out)
    assert sched.statistics().preempted >= 1
    assert [out.joined(s) for s in hog[:3]] == alone
    assert all(s.finish_reason == "length" for s in hog + late)


class _Counting:
    """charlm counting its ``encode()`` calls (a model served through the adapter)."""

    def __init__(self, inner) -> None:
        self._inner, self.encodes = inner, 0
        self.vocabulary, self.context_len, self.prompt_chars = inner.vocabulary, inner.context_len, inner.prompt_chars
        self.info = inner.info

    def encode(self, text: str):
        self.encodes += 1
        return self._inner.encode(text)

    def logits(self, contexts):
        return self._inner.logits(contexts)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_a_prompt_is_encoded_once_when_queued(penalty: float) -> None:
    """With ``repetition_penalty`` the prompt's ids (its token set) also give its context: one
    ``encode()``, not one for each."""
    model = _Counting(charlm())
    sched = Scheduler(TokenModelAdapter(model, name="c"), max_generate_batch=2)
    before = model.encodes
    seq = sched.add_request(params("the the ", max_tokens=3, repetition_penalty=penalty), FakeClock().now)
    assert model.encodes - before == 1 and seq.prompt_tokens == 8


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.5, "temperature": 0.9, "seed": 4}])
def test_a_token_id_prompt_generates_what_its_text_does(extra: dict) -> None:
    model = charlm()
    text = "It was the the "
    ids = tuple(int(i) for i in model.encode(text))
    by_text = generate_alone(GenerationParams(prompt=text, max_tokens=30, **extra))
    by_ids = generate_alone(GenerationParams(prompt="", prompt_ids=ids, max_tokens=30, **extra))
    assert by_ids == by_text and by_text[0]
    sched = Scheduler(model, max_generate_batch=2)
    seq = sched.add_request(GenerationParams(prompt="", prompt_ids=ids, max_tokens=1), FakeClock().now)
    assert seq.prompt_tokens == len(ids)


def test_a_long_prompt_is_not_held_by_its_sequence_and_a_short_one_costs_no_copy() -> None:
    """Only the context is used once a prompt is encoded: past HELD_PROMPT_CHARS the sequence's
    params drop it (a queue of long prompts does not hold them); a short one is kept as given."""
    from wsserve.generation.scheduler import HELD_PROMPT_CHARS

    sched = Scheduler(charlm(), max_generate_batch=2)
    long_text = "It was the best of times. " * 40
    assert len(long_text) > HELD_PROMPT_CHARS
    seq = sched.add_request(GenerationParams(prompt=long_text, max_tokens=1), FakeClock().now)
    assert seq.params.prompt == "" and seq.prompt_tokens == charlm().prompt_chars
    short = GenerationParams(prompt="It was ", max_tokens=1)
    assert sched.add_request(short, FakeClock().now).params is short


def test_token_id_prompts_outside_the_model_are_refused_and_nothing_is_queued() -> None:
    model = charlm()
    sched = Scheduler(model, max_generate_batch=2)
    now = FakeClock().now
    with pytest.raises(BadRequest, match=f"token id {model.vocab_size};"):
        sched.add_request(GenerationParams(prompt="", prompt_ids=(1, model.vocab_size)), now)
    with pytest.raises(BadRequest, match=f"holds {model.prompt_chars + 1} token ids; this model reads at most"):
        sched.add_request(GenerationParams(prompt="", prompt_ids=(1,) * (model.prompt_chars + 1)), now)
    assert sched.statistics().waiting == 0
    with pytest.raises(BadRequest, match="list of token ids"):
        GenerationParams(prompt="", prompt_ids=(1, -1))
    with pytest.raises(BadRequest, match="list of token ids"):
        GenerationParams(prompt="", prompt_ids=(1, True))
