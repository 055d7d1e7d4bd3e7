"""Shared helpers for the charlm / generation tests (plus tests of the helpers themselves).

- :func:`charlm` trains the real model once per test process (no cache).
- :class:`FakeClock` and :func:`run_until_idle` drive the sans-I/O scheduler.
- :class:`RecordingSink` records what an engine streams and flags any
  violation of the sink contract (order, one terminal, nothing after it).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from wsserve.errors import WsserveError
from wsserve.generation import GenerationParams, Scheduler, Sequence, run_step
from wsserve.generation.scheduler import FINISHED
from wsserve.models.charlm import CharLM, train_charlm


@functools.lru_cache(maxsize=1)
def charlm() -> CharLM:
    return train_charlm(seed=0)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Collected:
    """What a sans-I/O run produced for each sequence."""

    def __init__(self) -> None:
        self.text: dict[int, list[str]] = {}
        self.finished: dict[int, Sequence] = {}
        self.batch_sizes: list[int] = []

    def take(self, sched: Scheduler) -> None:
        for seq, n, text in sched.take_events():
            if n == FINISHED:
                assert seq.id not in self.finished, f"seq {seq.id}: finished twice"
                assert seq.streamed == len(self.text.get(seq.id, [])), f"seq {seq.id}: count"
                self.finished[seq.id] = seq
                continue
            got = self.text.setdefault(seq.id, [])
            assert n == len(got), f"seq {seq.id}: token #{n} after {len(got)}"
            assert seq.id not in self.finished, f"seq {seq.id}: token after finish"
            got.append(text)

    def joined(self, seq: Sequence) -> str:
        return "".join(self.text.get(seq.id, []))


def step_once(sched: Scheduler, clock: FakeClock, out: Collected, *, dt: float = 0.001) -> bool:
    """One schedule/step/update round; returns False when there was nothing to run."""
    batch = sched.schedule(clock.now)
    out.take(sched)
    if batch is None:
        return False
    out.batch_sizes.append(batch.size)
    tokens = run_step(sched.model, batch)
    sched.update_from_output(batch, tokens, clock.advance(dt))
    out.take(sched)
    return True


def run_until_idle(sched: Scheduler, clock: FakeClock, out: Collected, *, max_steps: int = 100_000) -> None:
    for _ in range(max_steps):
        if not step_once(sched, clock, out) and not sched.has_unfinished():
            return
    raise AssertionError("scheduler did not become idle")


class RecordingSink:
    """An engine sink that records everything and notes contract violations."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.logprobs: list[Any] = []  # each token's TokenLogprobs, or None
        self.done: tuple[str, int, dict[str, Any]] | None = None
        self.error: WsserveError | None = None
        self.violations: list[str] = []

    @property
    def ended(self) -> bool:
        return self.done is not None or self.error is not None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def on_token_logprobs(self, seq: int, text: str, logprobs: Any) -> None:
        self.on_token(seq, text, logprobs)

    def on_token(self, seq: int, text: str, logprobs: Any = None) -> None:
        if self.ended:
            self.violations.append(f"token {seq} after the terminal callback")
        if seq != len(self.tokens):
            self.violations.append(f"token seq {seq}, expected {len(self.tokens)}")
        self.tokens.append(text)
        self.logprobs.append(logprobs)

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        if self.ended:
            self.violations.append(f"second terminal: done {reason}")
        if tokens != len(self.tokens):
            self.violations.append(f"done says {tokens} tokens, {len(self.tokens)} streamed")
        self.done = (reason, tokens, timing)

    def on_error(self, exc: WsserveError) -> None:
        if self.ended:
            self.violations.append(f"second terminal: error {exc!r}")
        self.error = exc


def params(prompt: str = "The ", **kw: Any) -> GenerationParams:
    return GenerationParams(prompt=prompt, **kw)


def test_recording_sink_flags_contract_violations() -> None:
    sink = RecordingSink()
    sink.on_token(0, "a")
    sink.on_token(2, "b")
    sink.on_done("length", 3, {})
    sink.on_token(3, "c")
    sink.on_error(WsserveError("x"))
    assert sink.violations == [
        "token seq 2, expected 1",
        "done says 3 tokens, 2 streamed",
        "token 3 after the terminal callback",
        "token seq 3, expected 2",
        "second terminal: error WsserveError('x')",
    ]


def test_collected_rejects_tokens_after_finish() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(params(max_tokens=2), clock.now)
    run_until_idle(sched, clock, out)
    assert out.joined(seq) and seq.finished
    sched._out.append((seq, 2, "x"))  # forge a late token event
    with pytest.raises(AssertionError, match="after finish"):
        out.take(sched)
