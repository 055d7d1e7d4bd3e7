"""Property tests of the generation core with every per-request control mixed: stop strings,
``stop_token_ids``, ``min_tokens``, ``include_stop_str_in_output``, logprobs (with and without
ranks), penalties, ``logit_bias``, token-id prompts and seeded sampling, run in a crowded
scheduler with a small ``max_generate_batch`` (fair-share preemption between groups), cancels
and deadlines, against each request run alone (the real charlm, a fake clock).

Checked per sequence: the same token frames (text and logprobs record) as alone, or a prefix
of them when cancelled or past its deadline; ``seq`` numbers contiguous from 0; exactly one
terminal event, whose count is the frames sent; plain rows (no stops, no logprobs) on the
vectorised path.  And with multi-character tokens, in a crowded scheduler, the frames the stop
rules give by brute force over the greedy token ids (each logprobs record with its token)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_gen_engine import until
from tests.test_gen_support import FakeClock, RecordingSink, charlm
from wsserve.generation import (
    GenerationEngine,
    GenerationParams,
    Scheduler,
    run_step_logprobs,
)
from wsserve.generation.model import TokenModelAdapter
from wsserve.generation.scheduler import FINISHED
from wsserve.generation.sequence import LoggedText
from wsserve.models.charlm import VOCAB

PROMPTS = ["The ", "def f(x):\n    ", "import ", "A", "", "It was the "]
#: frequent characters of charlm's output: stops made of them do stop
FREQUENT = " etaoinshr\n"
FREQUENT_IDS = [VOCAB.index(c) for c in FREQUENT]


@st.composite
def requests(draw: Any) -> GenerationParams:
    max_tokens = draw(st.integers(1, 40))
    if draw(st.booleans()):
        prompt, prompt_ids = draw(st.sampled_from(PROMPTS)), None
    else:
        prompt, prompt_ids = "", tuple(draw(st.lists(st.integers(0, len(VOCAB) - 1), max_size=16)))  # charlm's prompt_chars
    sampled = draw(st.booleans())
    logprobs = draw(st.sampled_from([None, None, 0, 2]))
    return GenerationParams(
        prompt=prompt, prompt_ids=prompt_ids, max_tokens=max_tokens,
        temperature=draw(st.sampled_from([0.7, 1.3])) if sampled else 0.0,
        seed=draw(st.integers(0, 2**32)) if sampled else None,
        top_k=draw(st.sampled_from([0, 5])) if sampled else 0,
        stop=tuple(draw(st.lists(st.text(alphabet=FREQUENT, min_size=1, max_size=3), max_size=2))),
        stop_token_ids=tuple(draw(st.lists(st.sampled_from(FREQUENT_IDS), max_size=3))),
        min_tokens=draw(st.integers(0, max_tokens)) if draw(st.booleans()) else 0,
        include_stop_str_in_output=draw(st.booleans()),
        logprobs=logprobs,
        logprob_ranks=logprobs is not None and draw(st.booleans()),
        frequency_penalty=draw(st.sampled_from([0.0, 0.0, 0.6])),
        presence_penalty=draw(st.sampled_from([0.0, 0.0, -0.4])),
        repetition_penalty=draw(st.sampled_from([1.0, 1.0, 1.3])),
        logit_bias=draw(st.sampled_from([(), ((VOCAB.index("e"), -5.0),), ((VOCAB.index(" "), 3.0),)])),
    )


@dataclass
class Run:
    """One sequence's events: its frames ``(text, record)`` and its terminal."""

    frames: list[tuple[str, Any]]
    reason: str | None = None
    error: str | None = None
    terminals: int = 0


def _frame(text: Any) -> tuple[str, Any]:
    return (text.text, text.logprobs) if type(text) is LoggedText else (text, None)


def drive(sched: Scheduler, clock: FakeClock, seqs: dict[int, Run], *,
          before_step: Any = None, max_steps: int = 20_000) -> None:
    """Run to idle (and until ``before_step(step)``, called before each step, returns false) the engine's way (``run_step_logprobs``), checking each event as it comes:
    contiguous numbers from 0, nothing after the terminal, the terminal's count = frames."""

    def take() -> None:
        for seq, n, text in sched.take_events():
            run = seqs.setdefault(seq.id, Run([]))
            assert run.terminals == 0, f"seq {seq.id}: event after its terminal"
            if n == FINISHED:
                run.terminals += 1
                run.reason = seq.finish_reason
                run.error = type(seq.error).__name__ if seq.error is not None else None
                assert seq.streamed == len(run.frames), f"seq {seq.id}: done says {seq.streamed}"
                continue
            assert n == len(run.frames), f"seq {seq.id}: token #{n} after {len(run.frames)}"
            run.frames.append(_frame(text))

    for step in range(max_steps):
        more = before_step is not None and before_step(step)
        batch = sched.schedule(clock.now)
        take()
        if batch is None:
            if not more and not sched.has_unfinished():
                return
            clock.advance(0.001)
            continue
        tokens, lps = run_step_logprobs(sched.model, batch)
        sched.update_from_output(batch, tokens, clock.advance(0.001), lps)
        take()
    raise AssertionError("not idle")


def alone(p: GenerationParams, model: Any = None) -> Run:
    sched = Scheduler(charlm() if model is None else model, max_generate_batch=4)
    clock, seqs = FakeClock(), {}
    seq = sched.add_request(p, clock.now)
    drive(sched, clock, seqs)
    return seqs[seq.id]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    reqs=st.lists(st.tuples(requests(), st.integers(0, 2), st.integers(0, 6),
                            st.sampled_from([None, None, None, "cancel", "deadline"]), st.integers(1, 25)),
                  min_size=2, max_size=9),
    batch=st.integers(1, 4),
    pairs=st.booleans(),
)
def test_each_sequence_crowded_and_preempted_streams_what_it_streams_alone(reqs: list, batch: int,
                                                                          pairs: bool) -> None:
    """(``pairs``: the multi-character vocabulary of :class:`_Pairs` over charlm's logits.)"""
    model = _pairs() if pairs else charlm()
    sched = Scheduler(model, max_generate_batch=batch)
    clock, seqs = FakeClock(), {}
    added: list[tuple[Any, GenerationParams, str | None]] = []
    cancels: dict[int, list[Any]] = {}

    def before_step(step: int) -> bool:
        for p, group, at, end, when in reqs:
            if at == step:
                deadline = clock.now + when * 0.001 + 0.0005 if end == "deadline" else None
                seq = sched.add_request(p, clock.now, group=group, deadline=deadline)
                assert seq._plain == (not p.stop and not p.stop_token_ids and p.logprobs is None)
                added.append((seq, p, end))
                if end == "cancel":
                    cancels.setdefault(step + when, []).append(seq)
        if step in cancels:
            sched.finish_requests(cancels.pop(step), clock.now)
        return len(added) < len(reqs) or bool(cancels)

    drive(sched, clock, seqs, before_step=before_step)
    assert len(added) == len(reqs)
    for seq, p, end in added:
        got, want = seqs[seq.id], alone(p, model)
        assert got.terminals == 1 and want.terminals == 1
        if got.reason == "cancelled" or got.error == "DeadlineExceeded":
            assert end is not None
            assert got.frames == want.frames[:len(got.frames)], p
        else:
            assert (got.frames, got.reason, got.error) == (want.frames, want.reason, want.error), p


# -- multi-character tokens against a brute-force reference -----------------------------------

class _Pairs:
    """charlm's logits over a vocabulary whose even ids are two characters (the character then
    a frequent one), so stop strings begin, end and are cut inside tokens."""

    task = "generation"

    def __init__(self) -> None:
        inner = charlm()
        self._inner = inner
        self.vocabulary = tuple(c + ("" if i % 2 else FREQUENT[i % len(FREQUENT)]) for i, c in enumerate(VOCAB))
        self.context_len, self.prompt_chars, self.info = inner.context_len, inner.prompt_chars, inner.info

    def encode(self, prompt: str) -> Any:
        return self._inner.encode(prompt)

    def logits(self, contexts: Any) -> Any:
        return self._inner.logits(contexts)


def _pairs() -> TokenModelAdapter:
    return TokenModelAdapter(_Pairs(), name="pairs")


def expected_frames(model: Any, p: GenerationParams) -> tuple[list[str], str]:
    """Greedy, brute force: the token ids (the stop ids banned within the first ``min_tokens``),
    then the frames the stop rules give (one per token, whole, but for a token cut by the stop)."""
    ctx = model.initial_context(p.prompt)
    texts: list[str] = []
    for n in range(p.max_tokens):
        logits = model.logits(ctx[None, :])[0].copy()
        if n < p.min_tokens and p.stop_token_ids:
            logits[list(p.stop_token_ids)] = -np.inf
        t = int(logits.argmax())
        ctx = np.concatenate((ctx[1:], [t]))
        text = model.id_to_text[t]
        before = "".join(texts)
        texts.append(text)
        if n < p.min_tokens:
            continue
        if t in p.stop_token_ids and not p.include_stop_str_in_output:
            return texts[:-1], "stop"
        full = before + text
        ends = [(e, max(len(s) for s in p.stop if full[:e].endswith(s)))
                for e in range(len(before) + 1, len(full) + 1) if any(full[:e].endswith(s) for s in p.stop)]
        if ends or t in p.stop_token_ids:
            e, length = ends[0] if ends else (len(full), 0)
            out = full[:e] if p.include_stop_str_in_output else full[:e - length]
            frames, used = [], 0
            for piece in texts:
                if used + len(piece) <= len(out):
                    frames.append(piece)
                    used += len(piece)
                else:
                    if used < len(out):
                        frames.append(out[used:])
                    break
            return frames, "stop"
    return texts, "length"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=st.lists(st.tuples(
        st.sampled_from(PROMPTS), st.integers(1, 30),
        st.lists(st.text(alphabet=FREQUENT, min_size=1, max_size=4), max_size=3),
        st.lists(st.sampled_from(FREQUENT_IDS + [2 * i for i in range(10)]), max_size=3),
        st.integers(0, 30), st.booleans(), st.sampled_from([None, 1]), st.integers(0, 2)), min_size=1, max_size=6),
    batch=st.integers(1, 3),
)
def test_multi_character_tokens_stream_what_the_stop_rules_give(reqs: list, batch: int) -> None:
    model = _pairs()
    sched = Scheduler(model, max_generate_batch=batch)
    clock, seqs = FakeClock(), {}
    added = []
    for prompt, max_tokens, stop, ids, min_tokens, include, logprobs, group in reqs:
        p = GenerationParams(prompt=prompt, max_tokens=max_tokens, stop=tuple(stop), stop_token_ids=tuple(ids),
                             min_tokens=min(min_tokens, max_tokens), include_stop_str_in_output=include,
                             logprobs=logprobs)
        added.append((sched.add_request(p, clock.now, group=group), p))
    drive(sched, clock, seqs)
    for seq, p in added:
        got = seqs[seq.id]
        assert got.terminals == 1
        assert ([t for t, _ in got.frames], got.reason) == expected_frames(model, p), p
        if p.logprobs is not None:  # each record is its own token's (a cut token keeps its record)
            assert all(r is not None and model.id_to_text[r.token_id].startswith(t) for t, r in got.frames)


# -- through the engine: its sinks, its observer ------------------------------------------------

class _Sink(RecordingSink):
    """Records what the engine streams; at token ``at`` (if any) cancels its generation from
    inside the callback, or raises (a faulty sink)."""

    def __init__(self, engine: GenerationEngine, action: str | None, at: int) -> None:
        super().__init__()
        self.engine, self.action, self.at, self.handle = engine, action, at, None

    def on_token(self, seq: int, text: str, logprobs: Any = None) -> None:
        super().on_token(seq, text, logprobs)
        if seq == self.at and self.action == "cancel":
            self.engine.cancel(self.handle)  # type: ignore[arg-type]
        elif seq == self.at and self.action == "raise":
            raise RuntimeError("sink bug")


class _Observed:
    def __init__(self) -> None:
        self.done: list[int] = []

    def on_batch(self, model: str, rows: int, compute_s: float) -> None:
        pass

    def on_generation_done(self, model: str, prompt_tokens: int, ttft_s: float | None, tpot_s: float | None) -> None:
        self.done.append(prompt_tokens)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    reqs=st.lists(st.tuples(requests(), st.integers(0, 2), st.sampled_from([None, None, "cancel", "raise"]),
                            st.integers(0, 10)), min_size=1, max_size=8),
    batch=st.integers(1, 4),
    inline=st.sampled_from([0, 10**6]),
)
def test_the_engine_streams_to_each_sink_what_the_scheduler_gives_alone(reqs: list, batch: int, inline: int) -> None:
    """Through the engine's delivery (token blocks, single events; inline or in its thread):
    each sink gets its generation's frames as alone (a prefix when it cancels or raises), in
    order, then one terminal; the observer hears of each generation once."""

    async def main() -> tuple[list[_Sink], list[int]]:
        observed = _Observed()
        engine = GenerationEngine(charlm(), max_generate_batch=batch, inline_max_batch=inline, observer=observed)
        try:
            sinks = []
            for p, group, action, at in reqs:
                sink = _Sink(engine, action, at)
                sink.handle = engine.submit(p, sink, group=group)
                sinks.append(sink)
            await until(lambda: all(s.ended for s in sinks))
            return sinks, observed.done
        finally:
            await engine.close()

    sinks, done = asyncio.run(main())
    assert sorted(done) == sorted(s.handle.prompt_tokens for s in sinks)  # type: ignore[attr-defined]
    for (p, _, action, _), sink in zip(reqs, sinks):
        assert not sink.violations, sink.violations
        want = alone(p)
        got = list(zip(sink.tokens, sink.logprobs))
        if sink.error is not None or sink.done[0] == "cancelled":  # type: ignore[index]
            assert action is not None and got == want.frames[:len(got)]
        else:
            assert (got, sink.done[0]) == (want.frames, want.reason)  # type: ignore[index]
