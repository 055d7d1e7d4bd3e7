"""vLLM's ``guided_choice``: the constraint core (:mod:`wsserve.generation.guided`, no model) and
the scheduler with the real charlm and a model of multi-character tokens: every generation, greedy
or sampled, alone or among others, is exactly one of the choices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_gen_scheduler import _Words
from tests.test_gen_support import (
    Collected,
    FakeClock,
    charlm,
    run_until_idle,
    step_once,
)
from wsserve.errors import BadRequest
from wsserve.generation import GenerationParams, Scheduler
from wsserve.generation.guided import ChoiceGuide, ChoiceSet, Vocabulary
from wsserve.generation.model import TokenModelAdapter
from wsserve.generation.structured import CONTINUE, END_AFTER, END_BEFORE

# -- the core ----------------------------------------------------------------------------------

#: Tokens of several lengths, one empty, two sharing a text: "a", "b", "ab", "abc", "", "c", "ab".
TOKENS = ("a", "b", "ab", "abc", "", "c", "ab")


def reference_allowed(tokens: tuple[str, ...], choices: tuple[str, ...], text: str) -> set[int]:
    """Brute force: the ids whose text, appended, leaves a prefix of a choice some token sequence
    completes (a search over all spellings)."""
    def spellable(rest: str) -> bool:
        return rest == "" or any(t and rest.startswith(t) and spellable(rest[len(t):]) for t in tokens)
    return {i for i, t in enumerate(tokens)
            if t and any(c.startswith(text + t) and spellable(c[len(text + t):]) for c in choices)}


def test_allowed_tokens_keep_the_text_a_completable_prefix_of_a_choice() -> None:
    choices = ChoiceSet(("abc", "bc", "ca"), Vocabulary(TOKENS))
    assert choices.allowed("").tolist() == [0, 1, 2, 3, 5, 6]  # never id 4 (empty text)
    assert choices.allowed("a").tolist() == [1]  # "b", then "c"
    assert choices.allowed("ab").tolist() == [5]
    assert choices.allowed("b").tolist() == [5]
    assert choices.allowed("c").tolist() == [0]
    assert choices.complete("abc") and choices.complete("ca") and not choices.complete("ab")


def test_a_token_leading_to_a_dead_end_is_not_allowed() -> None:
    """``"ax"``: "a" then "x" is not spellable ("x" is no token), but the one token "ax" is."""
    choices = ChoiceSet(("ax",), Vocabulary(("a", "ax")))
    assert choices.allowed("").tolist() == [1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text("abc", min_size=1, max_size=5), min_size=1, max_size=4))
def test_allowed_ids_match_a_brute_force_search(raw: list[str]) -> None:
    choices = tuple(raw)
    compiled = ChoiceSet(choices, Vocabulary(TOKENS))
    states = {c[:i] for c in choices for i in range(len(c))}
    for text in states:
        expected = reference_allowed(TOKENS, choices, text)
        if expected:
            assert set(compiled.allowed(text).tolist()) == expected, text


@pytest.mark.parametrize("choice", ["abd", "", "d"])
def test_a_choice_the_tokens_cannot_write_is_refused_naming_guided_choice(choice: str) -> None:
    if choice == "":
        with pytest.raises(BadRequest, match="'guided_choice'"):
            GenerationParams(prompt="", guided_choice=("a", ""))
        return
    with pytest.raises(BadRequest, match="'guided_choice'.*cannot write"):
        ChoiceSet(("ab", choice), Vocabulary(TOKENS))


def test_the_guide_ends_at_a_choice_nothing_extends_and_lets_the_model_decide_at_one_that_is_extended() -> None:
    # As guided_regex's end rule ("ab|abc" is the same guide): at "ab", which "abc" extends, the
    # step is unmasked; a token along "abc" goes on, any other ends the text at "ab".
    def guide() -> ChoiceGuide:
        g = ChoiceGuide(ChoiceSet(("ab", "abc"), Vocabulary(TOKENS)))
        assert g.allowed().tolist() == [0, 2, 3, 6]
        assert g.advance(TOKENS.index("a"), "a") == CONTINUE
        assert g.advance(TOKENS.index("b"), "b") == CONTINUE  # "ab": a choice, but "abc" extends it
        assert g.allowed() is None  # unmasked: the model decides
        return g

    on = guide()
    assert on.advance(TOKENS.index("c"), "c") == END_AFTER and on.text == "abc"  # nothing extends "abc"
    off = guide()
    assert off.advance(TOKENS.index("a"), "a") == END_BEFORE and off.text == "ab"  # the end at "ab"
    jump = ChoiceGuide(ChoiceSet(("ab", "abc"), Vocabulary(TOKENS)))
    assert jump.advance(TOKENS.index("abc"), "abc") == END_AFTER  # one token past "ab": the longer choice
    alone = ChoiceGuide(ChoiceSet(("ab", "c"), Vocabulary(TOKENS)))
    alone.advance(TOKENS.index("a"), "a")
    assert alone.advance(TOKENS.index("b"), "b") == END_AFTER  # "ab", which nothing extends
    wrong = ChoiceGuide(ChoiceSet(("ab", "c"), Vocabulary(TOKENS)))
    with pytest.raises(ValueError):  # never allowed: refused at once, the text unchanged
        wrong.advance(TOKENS.index("b"), "b")
    assert wrong.text == "" and wrong.allowed().tolist() == [0, 2, 5, 6]


@pytest.mark.parametrize(("value", "message"), [
    ((), None),  # off
    (("yes",) * 64, None),
    (("yes",) * 65, "at most 64"),
    (("x" * 256,), None),
    (("x" * 257,), "256 characters"),
    (("a", 1), "strings"),
    (["a"], "list"),
])
def test_generation_params_bound_guided_choice(value: object, message: str | None) -> None:
    if message is None:
        assert GenerationParams(prompt="", guided_choice=value).guided_choice == value  # type: ignore[arg-type]
    else:
        with pytest.raises(BadRequest, match=f"'guided_choice'.*{message}"):
            GenerationParams(prompt="", guided_choice=value)  # type: ignore[arg-type]


def test_guided_choice_with_min_tokens_is_refused_naming_guided_choice() -> None:
    with pytest.raises(BadRequest, match="'guided_choice'.*'min_tokens'"):
        GenerationParams(prompt="", max_tokens=8, min_tokens=2, guided_choice=("a",))


# -- the scheduler -----------------------------------------------------------------------------

def _run(sched: Scheduler, ps: list[GenerationParams]) -> list[tuple[str, str | None]]:
    """Each generation's text and finish reason, run to the end together."""
    clock, out = FakeClock(), Collected()
    seqs = [sched.add_request(p, clock.now) for p in ps]
    run_until_idle(sched, clock, out)
    return [("".join(t if type(t) is str else t.text for t in out.text.get(s.id, [])), s.finish_reason)
            for s in seqs]


CHOICES = ("yes", "no", "maybe so", "the cat sat", "\n")


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.5])
def test_charlm_generations_are_always_one_of_the_choices(temperature: float) -> None:
    model = charlm()
    ps = [GenerationParams(prompt=prompt, max_tokens=32, temperature=temperature, seed=seed, guided_choice=CHOICES)
          for prompt, seed in itertools.product(("The ", "Is it? ", ""), range(6))]
    results = _run(Scheduler(model, max_generate_batch=7), ps)
    for text, reason in results:
        assert (text, reason) in {(c, "stop") for c in CHOICES}
    if temperature:
        assert len({text for text, _ in results}) > 1  # sampled: not always the same choice


def test_a_guided_generation_is_the_same_alone_and_among_unguided_ones() -> None:
    model = charlm()
    guided = [GenerationParams(prompt="The ", max_tokens=32, temperature=1.0, seed=s, guided_choice=CHOICES)
              for s in range(4)]
    others = [GenerationParams(prompt="A ", max_tokens=20, temperature=t, seed=9) for t in (0.0, 0.8)]
    alone = [_run(Scheduler(model), [p])[0] for p in guided + others]
    mixed = _run(Scheduler(model, max_generate_batch=3), [x for pair in zip(guided, others * 2) for x in pair])
    assert mixed == [x for pair in zip(alone[:4], alone[4:] * 2) for x in pair]


def test_max_tokens_still_caps_a_guided_generation() -> None:
    text, reason = _run(Scheduler(charlm()), [GenerationParams(prompt="", max_tokens=4,
                                                               guided_choice=("the cat sat",))])[0]
    assert (text, reason) == ("the ", "length")


def test_stop_strings_and_stop_token_ids_compose_with_guided_choice() -> None:
    model = charlm()
    (a, ra), (b, rb), (c, rc) = _run(Scheduler(model), [
        GenerationParams(prompt="", max_tokens=32, guided_choice=("the cat sat",), stop=("cat",)),
        GenerationParams(prompt="", max_tokens=32, guided_choice=("the cat sat",), stop_token_ids=(ord("c") - 31,)),
        GenerationParams(prompt="", max_tokens=32, guided_choice=("the cat sat",), logprobs=2),
    ])
    assert (a, ra) == ("the ", "stop") and (b, rb) == ("the ", "stop") and (c, rc) == ("the cat sat", "stop")


def test_words_model_guided_by_multi_character_tokens() -> None:
    """Tokens of several characters: a choice spelled by them, and one that no spelling reaches."""
    model = TokenModelAdapter(_Words(), name="words")
    results = _run(Scheduler(model), [
        GenerationParams(prompt="x", max_tokens=8, temperature=t, seed=s, guided_choice=("stop", "hello stop"))
        for t, s in [(0.0, 0), (1.0, 1), (1.0, 2), (1.0, 3)]])
    assert all(r in {("stop", "stop"), ("hello stop", "stop")} for r in results)
    with pytest.raises(BadRequest, match="'guided_choice'"):
        Scheduler(model).add_request(GenerationParams(prompt="", guided_choice=("hell",)), 0.0)


def test_a_guided_row_costs_nothing_to_the_unguided_batch() -> None:
    """The unguided batch carries no mask (apply_penalties returns the logits themselves)."""
    sched = Scheduler(charlm())
    sched.add_request(GenerationParams(prompt="a"), 0.0)
    batch = sched.schedule(0.0)
    assert batch is not None and batch.allow is None
    sched.update_from_output(batch, np.zeros(1, np.int64), 0.0)
    sched.add_request(GenerationParams(prompt="a", guided_choice=("no",)), 0.0)
    batch = sched.schedule(0.0)
    assert batch is not None and batch.allow is not None and batch.allow.rows.tolist() == [1]


def test_a_preempted_guided_sequence_resumes_where_it_stopped() -> None:
    """Preemption keeps a guided sequence's progress: it gives the choice it gives alone."""
    long = ("the cat sat on the mat and then it sat on the hat", "the cat ran off the mat and up a tree")
    opts = [GenerationParams(prompt="The ", max_tokens=80, temperature=t, seed=s, guided_choice=long)
            for t, s in [(0.0, 0), (1.0, 1), (1.0, 2)]]
    alone = [_run(Scheduler(charlm()), [p])[0] for p in opts]
    sched = Scheduler(charlm(), max_generate_batch=3)
    clock, out = FakeClock(), Collected()
    hog = [sched.add_request(p, clock.now, group="A") for p in opts]
    for _ in range(5):
        step_once(sched, clock, out)
    late = [sched.add_request(GenerationParams(prompt="It ", max_tokens=10), clock.now, group="B") for _ in range(2)]
    run_until_idle(sched, clock, out)
    assert sched.statistics().preempted >= 1
    assert [(out.joined(s), s.finish_reason) for s in hog] == alone
    assert all(s.finish_reason == "length" for s in late)


class _Stubborn(_Words):
    """_Words whose logits are -inf for every token but "hello ": a guided row whose allowed
    tokens all have -inf logits gets a token its mask did not keep (argmax of an all -inf row)."""

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        out = np.full((len(contexts), 3), -np.inf)
        out[:, 0] = 0.0
        return out


def test_a_guided_row_given_a_token_its_mask_did_not_keep_fails_alone() -> None:
    """The model gave every allowed token -inf: that generation ends with an error naming it,
    the others in the batch go on (it raised out of the scheduler, failing the whole engine)."""
    sched = Scheduler(TokenModelAdapter(_Stubborn(), name="stubborn"), max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    guided = sched.add_request(GenerationParams(prompt="x", max_tokens=4, guided_choice=("world stop",)), clock.now)
    plain = sched.add_request(GenerationParams(prompt="x", max_tokens=4), clock.now)
    run_until_idle(sched, clock, out)
    assert (out.joined(plain), plain.finish_reason) == ("hello " * 4, "length")
    assert guided.error is not None and guided.error.code == "internal" and "guide" in guided.error.message
    assert out.joined(guided) == ""
