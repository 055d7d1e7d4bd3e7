"""vLLM's stop controls in the engine: ``stop_token_ids``, ``min_tokens`` and
``include_stop_str_in_output`` (StopMatcher against a brute-force reference; the scheduler with
the real charlm and a word-token model).  Expected texts are derived from generations without
the fields, cut or extended where the stop string or token is."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.test_gen_logprobs import _events
from tests.test_gen_scheduler import _Words, generate_alone
from tests.test_gen_support import (
    Collected,
    FakeClock,
    charlm,
    params,
    run_until_idle,
    step_once,
)
from wsserve.errors import BadRequest
from wsserve.generation import GenerationParams, Scheduler, StopMatcher
from wsserve.generation.model import TokenModelAdapter
from wsserve.generation.stops import STOPPED, STOPPED_ON_TOKEN
from wsserve.models.charlm import VOCAB

# -- StopMatcher -------------------------------------------------------------------------------

def reference(text: str, stops: tuple[str, ...], stop_chars: str, min_tokens: int,
              include: bool) -> tuple[list[str], str, bool]:
    """Brute force, one character a token: what is released after each; final output; stopped?"""
    released_after: list[str] = []
    for p in range(1, len(text) + 1):
        prefix = text[:p]
        if p > min_tokens:
            if prefix[-1] in stop_chars:
                out = prefix if include else prefix[:-1]
                released_after.append(out)
                return released_after, out, True
            hits = [s for s in stops if prefix.endswith(s)]
            if hits:
                out = prefix if include else prefix[: p - max(map(len, hits))]
                released_after.append(out)
                return released_after, out, True
        hold = 0 if include else max((n for s in stops for n in range(1, len(s)) if prefix.endswith(s[:n])), default=0)
        released_after.append(prefix[: p - hold])
    return released_after, text, False


def run(text: str, stops: tuple[str, ...], stop_chars: str, min_tokens: int,
        include: bool) -> tuple[list[str], str, bool]:
    m = StopMatcher(stops, token_ids=[ord(c) for c in stop_chars], min_tokens=min_tokens, include=include)
    out, released_after = "", []
    for ch in text:
        released, stopped = m.feed(ch, ord(ch))
        out += released
        released_after.append(out)
        if stopped:
            assert m.held == ""
            assert stopped == (STOPPED_ON_TOKEN if ch in stop_chars and not include else STOPPED)
            return released_after, out, True
    return released_after, out + m.flush(), False


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet="ab\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=5), max_size=3),
    stop_chars=st.sampled_from(["", "\n", "b"]),
    min_tokens=st.integers(0, 6),
    include=st.booleans(),
)
def test_matches_brute_force_reference(text: str, stops: list[str], stop_chars: str, min_tokens: int,
                                       include: bool) -> None:
    assume(stops or stop_chars)
    assert run(text, tuple(stops), stop_chars, min_tokens, include) == \
        reference(text, tuple(stops), stop_chars, min_tokens, include)


def test_include_releases_at_once_and_cuts_after_the_stop_string() -> None:
    m = StopMatcher(("STOP",), include=True)
    assert m.feed("goST") == ("goST", 0) and m.held == ""
    assert m.feed("OPafter") == ("OP", STOPPED)


def test_a_stop_token_releases_the_held_text_and_drops_its_own() -> None:
    m = StopMatcher(("abc",), token_ids=[7])
    assert m.feed("xab", 1) == ("x", 0)
    assert m.feed("c!", 7) == ("ab", STOPPED_ON_TOKEN)  # "abc" never completed: its "c" is the stop token's


def test_within_min_tokens_a_stop_is_text_and_a_stop_string_may_begin_there() -> None:
    m = StopMatcher(("ab",), token_ids=[5], min_tokens=2)
    assert m.feed("x", 5) == ("x", 0)  # token 1: the stop token is text
    assert m.feed("a", 2) == ("", 0)  # token 2: may begin "ab"
    assert m.feed("b", 3) == ("", STOPPED)  # token 3 ends it: a stop


def test_nothing_to_stop_on_is_refused() -> None:
    with pytest.raises(ValueError):
        StopMatcher(())
    with pytest.raises(ValueError):
        StopMatcher(("x",), min_tokens=-1)
    StopMatcher((), token_ids=[3])  # stop token ids alone are enough


# -- the scheduler with charlm -----------------------------------------------------------------

def _greedy(prompt: str, n: int, **kw: object) -> str:
    text, reason = generate_alone(GenerationParams(prompt=prompt, max_tokens=n, **kw))  # type: ignore[arg-type]
    assert reason == "length" and len(text) == n
    return text


def _run(p: GenerationParams) -> tuple[str, str, int]:
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(p, clock.now)
    run_until_idle(sched, clock, out)
    assert len(out.text.get(seq.id, [])) == seq.streamed  # one frame per streamed token
    return out.joined(seq), seq.finish_reason or "", seq.streamed


@pytest.mark.parametrize("include", [False, True])
def test_a_stop_token_ends_the_generation_with_or_without_its_text(include: bool) -> None:
    text = _greedy("The ", 60)
    at = min(text.index(c) for c in "st")  # the first "s" or "t"
    p = params("The ", max_tokens=60, stop_token_ids=(VOCAB.index("s"), VOCAB.index("t")),
               include_stop_str_in_output=include)
    cut = text[:at + 1] if include else text[:at]
    assert _run(p) == (cut, "stop", len(cut))


def test_min_tokens_skips_a_stop_string_that_ends_within_them_and_not_one_that_ends_after() -> None:
    text = _greedy("The ", 200)
    stop = next(text[i:i + 2] for i in range(len(text)) if text.find(text[i:i + 2], i + 1) > 0)
    first = text.index(stop)
    second = text.index(stop, first + 1)
    end = first + 2  # the first occurrence ends in token number `end`
    assert second + 2 > end
    assert _run(params("The ", max_tokens=200, stop=(stop,), min_tokens=end - 1)) == (text[:first], "stop", first)
    assert _run(params("The ", max_tokens=200, stop=(stop,), min_tokens=end)) == (text[:second], "stop", second)
    with_it = text[:second + 2]
    assert _run(params("The ", max_tokens=200, stop=(stop,), min_tokens=end, include_stop_str_in_output=True)) == \
        (with_it, "stop", len(with_it))


def test_min_tokens_keeps_the_stop_tokens_from_being_generated_until_then() -> None:
    """The first ``min_tokens`` tokens are what the model chooses with those tokens banned (a
    -100 logit bias, for greedy); the generation then goes on from there and ends at a stop token."""
    ids = (VOCAB.index(" "), VOCAB.index("e"))
    plain = _greedy("The ", 40)
    assert " " in plain[:20] and "e" in plain[:20]  # so the ban changes the text
    m = 20
    head = _greedy("The ", m, logit_bias=tuple((i, -100.0) for i in ids))
    assert not set(head) & {" ", "e"}
    tail = _greedy("The " + head, 60)  # charlm reads the last 8 characters: the same continuation
    at = min(tail.index(c) for c in " e")
    expected = head + tail[:at]
    assert _run(params("The ", max_tokens=m + 60, stop_token_ids=ids, min_tokens=m)) == \
        (expected, "stop", len(expected))


def test_a_preempted_sequence_resumes_its_stop_controls_as_if_it_never_paused() -> None:
    """Preempted while its stop tokens are banned and text is held back: the same text as alone."""
    opts = [dict(stop_token_ids=(VOCAB.index("e"),), min_tokens=40, stop=("the s", "ion")),
            dict(stop=("e",), min_tokens=25, include_stop_str_in_output=True, temperature=0.8, seed=5),
            dict(stop_token_ids=(0, VOCAB.index("."), VOCAB.index("a")), min_tokens=35, stop=("tr",),
                 temperature=0.9, seed=6)]
    alone = [_run(params("The ", max_tokens=120, **o))[:2] for o in opts]  # type: ignore[arg-type]
    sched = Scheduler(charlm(), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    hog = [sched.add_request(params("The ", max_tokens=120, **o), clock.now, group="A")  # type: ignore[arg-type]
           for o in opts]
    hog.append(sched.add_request(params(prompt="x", max_tokens=120), clock.now, group="A"))
    for _ in range(10):
        step_once(sched, clock, out)
    assert all(not s.finished for s in hog)
    late = [sched.add_request(params(prompt="It ", max_tokens=30), clock.now, group="B") for _ in range(3)]
    run_until_idle(sched, clock, out)
    assert sched.statistics().preempted >= 1
    assert [(out.joined(s), s.finish_reason) for s in hog[:3]] == alone
    assert all(s.finish_reason == "stop" for s in hog[:3]) and all(s.finish_reason == "length" for s in late)


def test_stop_token_ids_outside_the_vocabulary_are_refused_and_nothing_is_queued() -> None:
    sched = Scheduler(charlm(), max_generate_batch=2)
    with pytest.raises(BadRequest, match="'stop_token_ids' names token 96; the model's vocabulary has 96"):
        sched.add_request(params(stop_token_ids=(3, 96)), FakeClock().now)
    assert not sched.has_unfinished()


# -- multi-character tokens (hello -> world -> stop -> hello ...) ------------------------------

def _words(**kw: object) -> tuple[list[str], str, int]:
    sched = Scheduler(TokenModelAdapter(_Words(), name="words"), max_generate_batch=2)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(params("a", max_tokens=4, **kw), clock.now)  # type: ignore[arg-type]
    run_until_idle(sched, clock, out)
    return out.text.get(seq.id, []), seq.finish_reason or "", seq.streamed


@pytest.mark.parametrize(("kw", "frames"), [
    ({"stop_token_ids": (2,)}, ["world "]),
    ({"stop_token_ids": (2,), "include_stop_str_in_output": True}, ["world ", "stop"]),
    ({"stop": ("ld st",), "include_stop_str_in_output": True}, ["world ", "st"]),  # cut after the stop string
    ({"stop": ("stop hi",), "stop_token_ids": (0,)}, ["world ", "stop"]),  # held "stop" goes out whole
    ({"stop_token_ids": (2,), "min_tokens": 2}, ["world ", "hello ", "world "]),  # "stop" banned for 2 tokens
])
def test_word_tokens_keep_one_frame_per_token(kw: dict, frames: list[str]) -> None:
    assert _words(**kw) == (frames, "stop", len(frames))


@pytest.mark.parametrize(("kw", "completion_tokens"), [
    ({"stop_token_ids": (2,)}, 2),  # "world ", then "stop": not sent, counted
    ({"stop_token_ids": (2,), "include_stop_str_in_output": True}, 2),
    ({"stop": ("ld st",)}, 2),  # "wor" sent; both tokens of the stop string counted
    ({"stop": ("stop hi",), "stop_token_ids": (0,)}, 3),
    ({"stop_token_ids": (2,), "min_tokens": 2}, 4),
])
def test_completion_tokens_are_vllms_output_token_ids(kw: dict, completion_tokens: int) -> None:
    """Every token generated counts, as in vLLM's output token ids, whatever text of it is sent."""
    sched = Scheduler(TokenModelAdapter(_Words(), name="words"), max_generate_batch=2)
    clock, out = FakeClock(), Collected()
    seq = sched.add_request(params("a", max_tokens=6, **kw), clock.now)  # type: ignore[arg-type]
    run_until_idle(sched, clock, out)
    assert (seq.finish_reason, seq.completion_tokens) == ("stop", completion_tokens)


def test_a_stop_string_within_min_tokens_is_text() -> None:
    """"op" ends in token 2 ("stop"), within min_tokens 2: the text goes on (and no later token ends it)."""
    assert _words(stop=("op",), min_tokens=2) == (["world ", "stop", "hello ", "world "], "length", 4)
    assert _words(stop=("op",), min_tokens=1) == (["world ", "st"], "stop", 2)


def test_min_tokens_with_every_token_a_stop_token_is_refused() -> None:
    sched = Scheduler(TokenModelAdapter(_Words(), name="words"), max_generate_batch=2)
    with pytest.raises(BadRequest, match="'stop_token_ids' names every token"):
        sched.add_request(params("a", max_tokens=4, stop_token_ids=(0, 1, 2, 1), min_tokens=1), FakeClock().now)
    assert not sched.has_unfinished()
    sched.add_request(params("a", max_tokens=4, stop_token_ids=(0, 1, 2)), FakeClock().now)  # no min_tokens: fine


@pytest.mark.parametrize("include", [False, True])
def test_logprobs_records_stay_with_their_tokens_through_a_stop_token(include: bool) -> None:
    """Text held back (a possible stop string) when the stop token comes goes out with its own
    records; the stop token's record goes with it only when its text does."""
    sched = Scheduler(charlm(), max_generate_batch=4)
    free = sched.add_request(params(max_tokens=60, logprobs=2), 0.0)
    free_out = _events(sched)[free.id]
    text = "".join(t.text for t in free_out)
    at = text.index("t")
    assert at >= 2
    held = text[at - 2:at] + "\u00a7"  # its first two characters are held when the "t" comes; never completed
    seq = sched.add_request(params(max_tokens=60, logprobs=2, stop=(held,), stop_token_ids=(VOCAB.index("t"),),
                                   include_stop_str_in_output=include), 0.0)
    got = _events(sched)[seq.id]
    n = at + 1 if include else at
    assert [(t.text, t.logprobs) for t in got] == [(t.text, t.logprobs) for t in free_out[:n]]
    assert seq.finish_reason == "stop" and seq.streamed == n
