"""vLLM's ``guided_regex`` / ``guided_json``: the guide core (:mod:`wsserve.generation.structured`,
no model, no I/O), the scheduler with the real charlm (every generation that ends with ``stop``
fully matches; one that ends by ``length`` is a prefix of a match; the same alone and batched), and
the engine (patterns compiled in a thread while the event loop, and the engine's own steps, go on)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from typing import Any

import numpy as np
import orjson
import pytest

from tests.test_gen_support import (
    Collected,
    FakeClock,
    charlm,
    run_until_idle,
    step_once,
)
from wsserve.errors import BadRequest, DeadlineExceeded
from wsserve.generation import GenerationEngine, GenerationParams, Scheduler
from wsserve.generation import engine as engine_module
from wsserve.generation.fairslots import compile_client
from wsserve.generation.guide_compile import GuideTables, unopened_group
from wsserve.generation.model import TokenModelAdapter
from wsserve.generation.structured import (
    CONTINUE,
    END_AFTER,
    END_BEFORE,
    GuidePattern,
    IndexCache,
    RegexGuide,
    RegexIndex,
    build_index,
    outlines_vocabulary,
    pattern_size,
)
from wsserve.models.base import ModelInfo
from wsserve.protocol import MAX_GUIDED_PATTERN_CHARS, schema_text

pytest.importorskip("outlines_core")  # the structured extra

#: Tokens of several lengths, one empty, two sharing a text.
TOKENS = ("a", "b", "ab", "abc", "", "c", "ab")


def _index(tokens: tuple[str, ...], regex: str, **kw: object):
    return build_index(GuidePattern("regex", regex), outlines_vocabulary(tokens), **kw)  # type: ignore[arg-type]


# -- the core ----------------------------------------------------------------------------------

def test_allowed_tokens_keep_a_match_reachable_and_never_the_empty_one() -> None:
    index = _index(TOKENS, "abc|b")
    guide = RegexGuide(index)
    assert guide.allowed().tolist() == [0, 1, 2, 3, 6]  # not "c", never id 4 (empty text)
    assert guide.advance(2, "ab") == CONTINUE
    assert guide.allowed().tolist() == [5]
    assert guide.advance(5, "c") == END_AFTER  # "abc" matches and nothing extends it


def test_a_token_leading_to_a_dead_end_is_not_allowed() -> None:
    """``ab*c|b``: after "a" only "b"s can follow and "c" is no token: "a" never leads to a match."""
    assert RegexGuide(_index(("a", "b"), "ab*c|b")).allowed().tolist() == [1]
    with pytest.raises(BadRequest, match="no transitions"):  # outlines-core's own check: "a", then no "x"
        _index(("a", "ax", "b"), "ax|b")


def test_at_a_match_that_may_go_on_the_row_is_unmasked_and_the_models_choice_decides() -> None:
    """The end rule: at ``"a"`` (a match of ``a(bc)?``), a "b" goes on; any other token is the end."""
    index = _index(TOKENS, "a(bc)?")
    go_on = RegexGuide(index)
    assert go_on.advance(0, "a") == CONTINUE
    assert go_on.allowed() is None  # sampled over the whole vocabulary
    assert go_on.advance(1, "b") == CONTINUE and go_on.allowed().tolist() == [5]
    end = RegexGuide(index)
    end.advance(0, "a")
    state = end.state
    assert end.advance(0, "a") == END_BEFORE and end.state == state  # "aa" does not match: the end
    assert RegexGuide(index).advance(3, "abc") == END_AFTER


@pytest.mark.parametrize(("regex", "says"), [
    ("(", "outlines-core cannot use this pattern"),
    ("d+", "outlines-core cannot use this pattern"),  # a character no token writes
    (r"\bx", "outlines-core cannot use this pattern"),  # a Unicode word boundary: no DFA
    ("", "admits no token at the start"),  # only the empty text matches
    ("a)|(b", "unopened group"),  # not (?:a)|(b): the compiler's own group is not the pattern's to close
    ("a)|(?:b", "unopened group"),
    ("(?x)a )|( b", "unopened group"),
])
def test_a_pattern_outlines_core_refuses_or_no_token_can_begin_is_refused_naming_the_field(regex: str,
                                                                                            says: str) -> None:
    with pytest.raises(BadRequest, match=f"field 'guided_regex': .*{says}") as info:
        _index(TOKENS, regex)
    assert info.value.param == "guided_regex"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("regex", "at"), [
    ("a)|(b", 1), ("(?i)a)|(b", 5), ("((?x)a)#)", 8), ("(?x:a)#)", 7), ("(?-x)a#)|(b", 7), ("(?x)(?-x)#)|(b", 10),
    ("(?x)\\#)(", 6),
    ("(a)(b)", None), ("\\)", None), ("[]()]", None), ("[\\]()]", None), ("[a[(]]", None), ("[[:alpha:]]", None),
    ("(?x)a#)\n", None), ("(?x)[#)]", None), ("(?P<n>a)|b", None), ("(?x:(?-x:#))|(b)", None),
])
def test_unopened_group_finds_a_parenthesis_that_would_close_the_wrapper(regex: str, at: int | None) -> None:
    assert unopened_group(regex) == at


def test_a_json_schema_pattern_stays_inside_its_string() -> None:
    """outlines-core writes a string's pattern into its regex as ("pattern"): "a|b" matched the
    texts '"a' and 'b"' (not JSON), and "a)|(b" likewise.  The pattern is grouped first; one
    with a ')' that closes no group of its own is refused."""
    schema = json.dumps({"type": "object", "properties": {"k": {"type": "string", "pattern": "a)|(b"}}})
    with pytest.raises(BadRequest, match="field 'guided_json': .*pattern " + re.escape('"a)|(b" has an unopened group')):
        build_index(GuidePattern("json", schema), outlines_vocabulary(TOKENS))
    vocab = outlines_vocabulary((*TOKENS, '"'))
    for pattern in ("a|b", "(a)|(b)"):
        index = build_index(GuidePattern("json", json.dumps({"type": "string", "pattern": pattern})), vocab)
        assert index.allowed(index.initial).tolist() == [7]  # '"' first: a JSON string
    const = json.dumps({"const": {"pattern": "a|b"}})  # data, not a schema: unchanged
    index = build_index(GuidePattern("json", const), outlines_vocabulary(tuple('{}"apttern:|b ')))
    assert index.allowed(index.initial).tolist() == [0]


def test_a_bad_json_schema_is_refused_naming_its_field() -> None:
    with pytest.raises(BadRequest, match="field 'response_format': outlines-core cannot use this JSON Schema") as info:
        build_index(GuidePattern("json", '{"type": "frobnicate"}', "response_format"), outlines_vocabulary(TOKENS))
    assert info.value.param == "response_format"  # type: ignore[attr-defined]


def test_an_index_with_too_many_transitions_is_refused() -> None:
    _index(TOKENS, "[abc]{0,40}", max_transitions=10_000)
    with pytest.raises(BadRequest, match="token transitions .* at most 100"):
        _index(TOKENS, "[abc]{0,40}", max_transitions=100)


@pytest.mark.parametrize(("regex", "size"), [
    ("abc", 3), ("a|bc", 3), ("(a|bc)", 3), ("[0-9]{3}-[a-z]+", 5), ("(ab|cde){2,4}", 20), ("a{2,}", 3),
    ("(a{100}){100}", 10_000), (r"\x{41}{3}", 3), ("[{]{5}", 5),
])
def test_pattern_size_unrolls_counted_repetitions(regex: str, size: int) -> None:
    assert pattern_size(regex) == size


@pytest.mark.parametrize("regex", ["a{1000000}", "(a{300}){300}", "(x{1000}|y){51}"])
def test_a_pattern_whose_repetitions_unroll_too_far_is_refused_before_outlines_core_builds_it(regex: str) -> None:
    """``a{1000000}`` alone grows outlines-core's automaton until the process runs out of memory."""
    with pytest.raises(BadRequest, match="field 'guided_regex': the pattern's counted repetitions spell out"):
        _index(TOKENS, regex)


def test_index_cache_is_a_bounded_lru() -> None:
    cache = IndexCache(2)
    a, b, c = (_index(TOKENS, r) for r in ("a", "b", "c"))
    cache.put(("regex", "a"), a)
    cache.put(("regex", "b"), b)
    assert cache.get(("regex", "a")) is a  # now the most recently used
    cache.put(("regex", "c"), c)
    assert len(cache) == 2 and cache.get(("regex", "b")) is None and cache.get(("regex", "a")) is a


@pytest.mark.parametrize(("fields", "says"), [
    ({"guided_regex": "x" * (MAX_GUIDED_PATTERN_CHARS + 1)}, "'guided_regex' holds 16385 characters; at most 16384"),
    ({"guided_json": "{}" + " " * MAX_GUIDED_PATTERN_CHARS}, "'guided_json' holds 16386 characters"),
    ({"guided_regex": "a", "guided_json": "{}"}, "'guided_regex' and 'guided_json' cannot both be given"),
    ({"guided_choice": ("a",), "guided_regex": "a"}, "'guided_choice' and 'guided_regex' cannot both be given"),
    ({"guided_regex": "a", "min_tokens": 1}, "'guided_regex' cannot be combined with 'min_tokens'"),
    ({"guided_regex": 3}, "'guided_regex' must be a string"),
])
def test_generation_params_bound_the_patterns(fields: dict, says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        GenerationParams(prompt="", max_tokens=8, **fields)


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, orjson.loads('{"a":' * 1000 + "1" + "}" * 1000)])
def test_a_schema_nesting_too_deeply_is_refused_naming_the_field(value: object) -> None:
    """json recurses per level: a 16 KiB string of "[", or an object as deep as the frame's parser
    (orjson) takes, raised RecursionError (an internal error, 500 over HTTP)."""
    with pytest.raises(BadRequest, match="field 'guided_json' must be a JSON Schema.*nests too deeply"):
        schema_text(value, "guided_json")


def test_without_the_extra_a_pattern_is_refused_naming_the_field_and_the_install(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "outlines_core" else real(name, *a))
    with pytest.raises(BadRequest, match=r"field 'guided_json' needs structured outputs.*pip install 'wsserve\[structured\]'"):
        GenerationParams(prompt="", guided_json='{"type": "object"}')


# -- the scheduler with charlm -------------------------------------------------------------------

#: (regex, a regex every prefix of one of its matches fully matches)
PATTERNS = [
    (r"[0-9]{3}-[a-z]+", r"[0-9]{0,3}|[0-9]{3}-[a-z]*"),
    (r"(yes|no|maybe)!", r"|y|ye|yes|yes!|n|no|no!|m|ma|may|mayb|maybe|maybe!"),
    (r"The (cat|dog)( sat)?\.", r"T|Th|The|The |The (c|ca|cat|d|do|dog)( | s| sa| sat| sat\.|\.)?|The (cat|dog) sat\."),
]


def _run(sched: Scheduler, ps: list[GenerationParams]) -> list[tuple[str, str | None]]:
    """Each generation's text and finish reason, run to the end together (each pattern compiled)."""
    clock, out = FakeClock(), Collected()
    vocab = outlines_vocabulary(sched.model.id_to_text)
    indexes = {p.guided_regex or p.guided_json: build_index(GuidePattern.of(p), vocab) for p in ps
               if p.guided_regex or p.guided_json}
    seqs = [sched.add_request(p, clock.now, index=indexes.get(p.guided_regex or p.guided_json)) for p in ps]
    run_until_idle(sched, clock, out)
    return [("".join(t if type(t) is str else t.text for t in out.text.get(s.id, [])), s.finish_reason)
            for s in seqs]


@pytest.mark.parametrize("temperature", [0.0, 0.8, 1.5])
def test_charlm_generations_match_the_regex_or_are_a_prefix_of_a_match(temperature: float) -> None:
    ps = [GenerationParams(prompt=prompt, max_tokens=12, temperature=temperature, seed=seed, guided_regex=regex)
          for (regex, _), prompt, seed in itertools.product(PATTERNS, ("The ", ""), range(4))]
    results = _run(Scheduler(charlm(), max_generate_batch=5), ps)
    reasons = set()
    for p, (text, reason) in zip(ps, results):
        prefix = dict(PATTERNS)[p.guided_regex]
        reasons.add(reason)
        if reason == "stop":
            assert re.fullmatch(p.guided_regex, text), (p.guided_regex, text)
        else:
            assert reason == "length" and len(text) == 12 and re.fullmatch(prefix, text), (p.guided_regex, text)
    assert "stop" in reasons


def test_a_structured_generation_is_the_same_alone_and_among_others() -> None:
    model = charlm()
    guided = [GenerationParams(prompt="The ", max_tokens=16, temperature=1.0, seed=s, guided_regex=PATTERNS[s % 3][0])
              for s in range(6)]
    others = [GenerationParams(prompt="A ", max_tokens=10, temperature=t, seed=9) for t in (0.0, 0.8)]
    alone = [_run(Scheduler(model), [p])[0] for p in guided + others]
    mixed = _run(Scheduler(model, max_generate_batch=3), [x for pair in zip(guided, others * 3) for x in pair])
    assert mixed == [x for pair in zip(alone[:6], alone[6:] * 3) for x in pair]


def test_a_json_schema_gives_json_that_follows_it() -> None:
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}}, "required": ["a"]}
    ps = [GenerationParams(prompt="{", max_tokens=40, temperature=t, seed=s, guided_json=json.dumps(schema))
          for t, s in ((0.0, 0), (1.0, 1), (1.0, 2), (1.3, 3))]
    for text, reason in _run(Scheduler(charlm()), ps):
        assert reason == "stop", text
        assert json.loads(text)["a"] in ("x", "yy") and set(json.loads(text)) == {"a"}


class _Favour:
    """A model of the tokens "a", "b", "x" whose likeliest next token is always ``favour``."""

    task = "generation"
    vocabulary = ("a", "b", "x")
    context_len = 1

    def __init__(self, favour: int) -> None:
        self.favour = favour
        self.info = ModelInfo(name="favour", version="1", task="generation", input_shape=(1,), output_shape=(3,),
                              parameters=0)

    def encode(self, prompt: str) -> list[int]:
        return [0] if prompt else []

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        out = np.zeros((len(contexts), 3))
        out[:, self.favour] = 1.0
        return out


def test_the_end_is_the_models_choice_at_a_match_that_may_go_on() -> None:
    """A model of words whose likeliest next token is fixed: ``ab*`` with "b" likeliest goes on to
    ``max_tokens``; with "x" likeliest it ends at once after "a" (the "x" is not generated)."""
    for likeliest, expected in (("b", ("abbb", "length")), ("x", ("a", "stop"))):
        model = TokenModelAdapter(_Favour(_Favour.vocabulary.index(likeliest)), name="favour")
        assert _run(Scheduler(model), [GenerationParams(prompt="", max_tokens=4, guided_regex="ab*")])[0] == expected


def test_the_token_a_guide_ends_before_is_not_in_completion_tokens() -> None:
    """With "x" likeliest after "a" (``ab*``), the model's "x" ends the text and is not generated:
    the output is one token, though the model ran two steps."""
    model = TokenModelAdapter(_Favour(_Favour.vocabulary.index("x")), name="favour")
    sched = Scheduler(model)
    p = GenerationParams(prompt="", max_tokens=4, guided_regex="ab*")
    index = build_index(GuidePattern.of(p), outlines_vocabulary(sched.model.id_to_text))
    clock = FakeClock()
    seq = sched.add_request(p, clock.now, index=index)
    run_until_idle(sched, clock, Collected())
    assert (seq.finish_reason, seq.streamed, seq.generated, seq.completion_tokens) == ("stop", 1, 2, 1)


# -- the engine ------------------------------------------------------------------------------------

class _Sink:
    def __init__(self) -> None:
        self.text = ""
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_token(self, seq: int, text: str) -> None:
        self.text += text

    def on_done(self, reason: str, tokens: int, timing: dict) -> None:
        self.done.set_result(reason)

    def on_error(self, exc: Exception) -> None:
        self.done.set_result(exc)


async def test_the_index_is_built_off_the_loop_while_other_generations_go_on(monkeypatch) -> None:
    """The compile (in its child process) is held on an ``asyncio.Event``: while it waits, an
    unguided generation on the same engine runs to its end; released, the guided one ends, and
    the pattern is kept (a second request is queued at once, with no build)."""
    started, release = asyncio.Event(), asyncio.Event()
    builds = []
    real = engine_module.compile_in_child

    async def held_build(pattern, *args, **kwargs):
        builds.append(pattern)
        started.set()
        await release.wait()
        return await real(pattern, *args, **kwargs)

    monkeypatch.setattr(engine_module, "compile_in_child", held_build)
    engine = GenerationEngine(charlm())
    guided = _Sink()
    engine.submit(GenerationParams(prompt="The ", max_tokens=20, guided_regex=PATTERNS[1][0]), guided)
    await started.wait()
    plain = _Sink()
    engine.submit(GenerationParams(prompt="The ", max_tokens=8), plain)
    assert await plain.done == "length" and not guided.done.done()  # the loop and the engine went on
    release.set()
    assert await guided.done == "stop" and re.fullmatch(PATTERNS[1][0], guided.text)
    again = _Sink()
    engine.submit(GenerationParams(prompt="A ", max_tokens=20, guided_regex=PATTERNS[1][0]), again)
    assert engine.prepare(GenerationParams(prompt="", guided_regex=PATTERNS[1][0])) is None  # cached
    assert await again.done == "stop" and len(builds) == 1
    await engine.close()


def _never_done_compiles(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Compiles that never end by themselves: ``(started, cancelled)``, set when one starts and
    when it is cancelled (its child killed)."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def never_done(pattern: Any, *args: Any, **kwargs: Any) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    monkeypatch.setattr(engine_module, "compile_in_child", never_done)
    return started, cancelled


async def test_a_deadline_passing_while_the_pattern_compiles_ends_the_request_and_stops_the_compile(monkeypatch) -> None:
    """PROTOCOL.md: while a request waits for its pattern, its timeout_ms applies.  With nothing
    else running the engine slept until the compile ended (up to its 15 s, or longer queued
    behind two others), so the deadline was only noticed then."""
    started, cancelled = _never_done_compiles(monkeypatch)
    engine = GenerationEngine(charlm())
    sink = _Sink()
    engine.submit(GenerationParams(prompt="", guided_regex="[a-z]{3,9}"), sink, deadline=time.monotonic() + 0.05)
    await started.wait()
    exc = await asyncio.wait_for(sink.done, 60)  # (a hang guard: the compile never ends by itself)
    assert isinstance(exc, DeadlineExceeded) and sink.text == "", exc
    await asyncio.wait_for(cancelled.wait(), 60)  # nothing else waits for the pattern: its child is killed
    await engine.close()


class _Compiles:
    """An observer recording each compile's ``result`` (the ``wsserve_guide_compiles_total`` label)."""

    def __init__(self) -> None:
        self.results: list[str] = []

    def on_batch(self, model: str, rows: int, compute_s: float) -> None:
        pass

    def on_guide_compile(self, model: str, result: str, seconds: float | None) -> None:
        self.results.append(result)


async def test_a_deadline_passing_while_other_generations_run_stops_the_compile_as_abandoned(monkeypatch) -> None:
    """The compile no request waits for any more is stopped (its child killed, its slot freed)
    also while other generations are stepping: only the idle path checked it, so with a
    generation running the child went on to its limits after its last request ended.  It is
    counted as ``abandoned`` (``cancelled`` is for close())."""
    started, cancelled = _never_done_compiles(monkeypatch)
    observer = _Compiles()
    engine = GenerationEngine(charlm(), observer=observer)
    plain = _Sink()
    running = engine.submit(GenerationParams(prompt="The ", max_tokens=100_000), plain)
    sink = _Sink()
    engine.submit(GenerationParams(prompt="", guided_regex="[a-z]{3,9}"), sink, deadline=time.monotonic() + 0.05)
    await started.wait()
    exc = await asyncio.wait_for(sink.done, 60)
    assert isinstance(exc, DeadlineExceeded), exc
    await asyncio.wait_for(cancelled.wait(), 60)  # (a hang guard: before, nothing stopped it)
    assert not plain.done.done() and observer.results == ["abandoned"]
    assert engine._build_slots.statistics().running == 0  # its slot is free
    engine.cancel(running)
    waiter = engine.prepare(GenerationParams(prompt="", guided_regex="[a-z]{2}"))  # close() cancels: "cancelled"
    await asyncio.sleep(0)
    await engine.close()
    assert isinstance(waiter.exception(), Exception) and observer.results == ["abandoned", "cancelled"]


async def test_a_compile_abandoned_before_its_task_ran_is_counted_abandoned(monkeypatch) -> None:
    """A request cancelled in the same loop iteration as it was submitted (a ``generate`` and
    its ``cancel`` read from one TCP segment) abandons a compile whose task never ran: the
    task's own ``except CancelledError`` never ran either, so the compile was not counted at all
    (``wsserve_guide_compiles_total`` missed every such ``abandoned``)."""
    async def unreachable(pattern, *args, **kwargs):
        raise AssertionError("the compile of an abandoned pattern started")

    monkeypatch.setattr(engine_module, "compile_in_child", unreachable)
    observer = _Compiles()
    engine = GenerationEngine(charlm(), observer=observer)
    sink = _Sink()
    handle = engine.submit(GenerationParams(prompt="", guided_regex="[a-z]{3,9}"), sink)
    engine.cancel(handle)  # before the compile's task has had a step
    assert await asyncio.wait_for(sink.done, 60) == "cancelled"
    await asyncio.gather(*engine._build_tasks, return_exceptions=True)  # the cancelled compile ended
    assert observer.results == ["abandoned"]
    await engine.close()


class _HeldCompiles:
    """Compiles that start (their pattern's text appended to ``started``) and then wait until the test
    sets ``release[text]``; each ends refused.  ``await starts(n)``: until n have started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        monkeypatch.setattr(engine_module, "compile_in_child", self._held)

    async def _held(self, pattern: Any, *args: Any, **kwargs: Any) -> Any:
        self.started.append(pattern.text)
        self._changed.set()
        await self.release.setdefault(pattern.text, asyncio.Event()).wait()
        raise pattern.refusal(f"field {pattern.name!r}: refused for the test")

    async def starts(self, n: int) -> None:
        while len(self.started) < n:
            self._changed.clear()
            await self._changed.wait()


async def test_a_freed_compile_slot_goes_to_the_client_with_the_fewest_compiles_running(monkeypatch) -> None:
    """Two patterns compile at once per engine.  A client that queued many distinct (maybe
    hostile: up to 10 s of CPU each) patterns took every slot in turn, first come first served:
    another client's pattern waited for all of them.  A freed slot now goes to the waiting
    pattern whose client has the fewest compiles running (the oldest among equals)."""
    held = _HeldCompiles(monkeypatch)
    started, release, starts = held.started, held.release, held.starts
    engine = GenerationEngine(charlm())
    hog, other = object(), object()
    sinks = [_Sink() for _ in range(5)]
    for i in range(4):
        engine.submit(GenerationParams(prompt="", guided_regex=f"a{i}"), sinks[i], group=hog)
    await starts(2)
    engine.submit(GenerationParams(prompt="", guided_regex="b"), sinks[4], group=other)
    prepared = engine.prepare(GenerationParams(prompt="", guided_regex="a9"), group=hog)
    release.setdefault("a0", asyncio.Event()).set()
    await starts(3)
    assert started == ["a0", "a1", "b"]
    release.setdefault("a1", asyncio.Event()).set()
    await starts(4)
    assert started[3] == "a2"
    for text in ("b", "a2", "a3", "a9"):
        release.setdefault(text, asyncio.Event()).set()
    await starts(6)
    assert started[4:] == ["a3", "a9"]
    results = [await s.done for s in sinks]
    assert all(isinstance(r, BadRequest) for r in results), results
    with pytest.raises(BadRequest):
        await prepared
    await engine.close()


async def test_compile_slots_are_shared_by_client_not_by_connection(monkeypatch) -> None:
    """A client that opens a connection per pattern held every slot in turn (each connection had
    the fewest running): the slots are shared by ``client`` (its API key, else its address), so
    its patterns from four connections count as one client's."""
    held = _HeldCompiles(monkeypatch)
    started, release, starts = held.started, held.release, held.starts
    engine = GenerationEngine(charlm())
    hog, other = compile_client("k-hog", "10.0.0.1"), compile_client(None, "10.0.0.2")
    sinks = [_Sink() for _ in range(3)]
    for i in range(3):  # each from a connection of its own
        engine.submit(GenerationParams(prompt="", guided_regex=f"a{i}"), sinks[i], group=object(), client=hog)
    await starts(2)
    prepared = engine.prepare(GenerationParams(prompt="", guided_regex="b"), group=object(), client=other)
    release.setdefault("a0", asyncio.Event()).set()
    await starts(3)
    assert started == ["a0", "a1", "b"]  # (per connection, a2's, older, had it)
    for text in ("a1", "b", "a2"):
        release.setdefault(text, asyncio.Event()).set()
    with pytest.raises(BadRequest):
        await prepared
    results = [await s.done for s in sinks]
    assert all(isinstance(r, BadRequest) for r in results), results
    await engine.close()


async def test_a_refused_pattern_ends_its_generations_with_bad_request_and_cancel_works_while_held() -> None:
    engine = GenerationEngine(charlm())
    a, b = _Sink(), _Sink()
    engine.submit(GenerationParams(prompt="", guided_regex="("), a)
    engine.submit(GenerationParams(prompt="", guided_regex="("), b)
    for sink in (a, b):
        exc = await sink.done
        assert isinstance(exc, BadRequest) and "field 'guided_regex'" in exc.message and sink.text == ""
    c = _Sink()
    handle = engine.submit(GenerationParams(prompt="", guided_regex="[a-z]{3,9}"), c)
    engine.cancel(handle)
    assert await c.done == "cancelled"
    await engine.wait_idle()
    await engine.close()


def test_allowed_masks_are_applied_only_where_the_guide_masks() -> None:
    """Unguided rows and rows at a match that may go on keep every logit (the TokenAllow has only
    the masked rows)."""
    model = charlm()
    sched = Scheduler(model)
    vocab = outlines_vocabulary(model.id_to_text)
    clock = FakeClock()
    p = GenerationParams(prompt="", max_tokens=4, guided_regex="x*")  # the start is a match that may go on
    sched.add_request(p, clock.now, index=build_index(GuidePattern.of(p), vocab))
    sched.add_request(GenerationParams(prompt="", max_tokens=4, guided_regex="xy"), clock.now,
                      index=build_index(GuidePattern("regex", "xy"), vocab))
    batch = sched.schedule(clock.now)
    assert batch is not None and batch.allow is not None and batch.allow.rows.tolist() == [1]
    assert np.unique(batch.allow.ids).tolist() == [model.id_to_text.index("x")]


def test_a_preempted_structured_sequence_resumes_where_it_stopped() -> None:
    """Preemption keeps a guide's state: the sequence gives the text it gives alone."""
    regex = r"[a-z]+( [a-z]+){3,6}\."
    opts = [GenerationParams(prompt="The ", max_tokens=60, temperature=t, seed=s, guided_regex=regex)
            for t, s in [(0.0, 0), (1.0, 1), (1.0, 2)]]
    alone = [_run(Scheduler(charlm()), [p])[0] for p in opts]
    sched = Scheduler(charlm(), max_generate_batch=3)
    index = build_index(GuidePattern("regex", regex), outlines_vocabulary(sched.model.id_to_text))
    clock, out = FakeClock(), Collected()
    hog = [sched.add_request(p, clock.now, group="A", index=index) for p in opts]
    for _ in range(5):
        step_once(sched, clock, out)
    late = [sched.add_request(GenerationParams(prompt="It ", max_tokens=10), clock.now, group="B") for _ in range(2)]
    run_until_idle(sched, clock, out)
    assert sched.statistics().preempted >= 1
    assert [(out.joined(s), s.finish_reason) for s in hog] == alone
    assert all(s.finish_reason == "length" for s in late)


def test_a_regex_row_given_a_token_its_mask_did_not_keep_fails_alone() -> None:
    """As guided_choice's (tests/test_gen_guided.py): the model gave every allowed token -inf."""
    from tests.test_gen_guided import _Stubborn

    model = TokenModelAdapter(_Stubborn(), name="stubborn")
    sched = Scheduler(model, max_generate_batch=4)
    clock, out = FakeClock(), Collected()
    p = GenerationParams(prompt="x", max_tokens=4, guided_regex="(world )+stop")
    guided = sched.add_request(p, clock.now, index=build_index(GuidePattern.of(p), outlines_vocabulary(model.id_to_text)))
    plain = sched.add_request(GenerationParams(prompt="x", max_tokens=4), clock.now)
    run_until_idle(sched, clock, out)
    assert (out.joined(plain), plain.finish_reason) == ("hello " * 4, "length")
    assert guided.error is not None and guided.error.code == "internal" and "guide" in guided.error.message
    assert out.joined(guided) == ""


def test_an_index_holds_its_tables_as_arrays_not_per_transition_objects() -> None:
    """An engine keeps up to 64 indexes of up to 1,000,000 transitions each: held as Python
    dicts (~90 bytes a transition) a client's 64 distinct patterns pinned ~5 GiB."""
    import tracemalloc

    states, per_state, vocab = 10_000, 100, 1_000
    tokens = np.tile(np.arange(0, vocab, vocab // per_state, dtype=np.int64), states)
    targets = np.repeat(np.minimum(np.arange(states, dtype=np.int64) + 1, states - 1), per_state)
    final = np.zeros(states, np.bool_)
    final[-1] = True
    tables = GuideTables(0, final, np.arange(0, states * per_state + 1, per_state, dtype=np.int64), tokens, targets)
    tracemalloc.start()
    try:
        index = RegexIndex.from_tables(tables, vocab)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.transitions == 1_000_000 and held < 24 * index.transitions, held
    guide = RegexGuide(index)
    assert guide.allowed().tolist() == list(range(0, vocab, 10))
    assert index.next_state(0, 10) == 1 and index.next_state(0, 11) is None and index.next_state(states - 1, 990) == states - 1
    assert guide.advance(20, "") == 0 and guide.state == 1
