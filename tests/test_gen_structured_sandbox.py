"""A structured-outputs pattern is compiled in a child process with hard limits
(:mod:`wsserve.generation.guide_sandbox`): the same index as in-process, a hostile pattern refused
as too complex (its child killed, not the caller), garbage from the child refused (never
unpickled), the tables checked before use; the engine's children killed when nothing waits for
them any more and at close, and a repeated hostile pattern refused without a child."""

from __future__ import annotations

import asyncio
import os
import re
import types

import numpy as np
import pytest

from tests.support import wait_until_async
from tests.test_gen_structured import PATTERNS, _Sink, charlm
from wsserve.config import ServerConfig
from wsserve.errors import BadRequest, Internal
from wsserve.generation import GenerationEngine, GenerationParams, guide_sandbox
from wsserve.generation.guide_compile import GuideTables
from wsserve.generation.guide_sandbox import (
    CompileLimits,
    PatternTooComplex,
    compile_in_child,
    vocabulary_payload,
)
from wsserve.generation.structured import (
    GuidePattern,
    RegexIndex,
    build_index,
    outlines_vocabulary,
)
from wsserve.models.charlm import VOCAB
from wsserve.pool import ModelPool
from wsserve.registry import ModelRegistry
from wsserve.repository.config import parse_config

pytest.importorskip("outlines_core")  # the structured extra

#: A DFA of 2**21 states: outlines-core's build takes seconds and gigabytes.
HOSTILE = r"(a|b)*a(a|b){20}"
#: 2**25 states: a child compiling it lives far longer than any test waits.
ENDLESS = r"(a|b)*a(a|b){24}"
#: A child that dies of memory fast.
LOW = CompileLimits(memory_bytes=256 << 20, cpu_s=60, timeout_s=120)
#: Limits a compile of ENDLESS does not reach while a test runs.
HIGH = CompileLimits(memory_bytes=4 << 30, cpu_s=300, timeout_s=600)
VOCABULARY = vocabulary_payload(VOCAB)


def _same(a: RegexIndex, b: RegexIndex) -> None:
    """Both indexes accept the same token sequences (a walk over both from their initial states)."""
    todo, seen = [(a.initial, b.initial)], set()
    while todo:
        s, t = todo.pop()
        if (s, t) in seen:
            continue
        seen.add((s, t))
        assert (s in a.finals) == (t in b.finals)
        allowed = a.allowed(s)
        assert (allowed is None and b.allowed(t) is None) or np.array_equal(allowed, b.allowed(t))
        for token in () if allowed is None else allowed.tolist():
            todo.append((a.next_state(s, token), b.next_state(t, token)))


@pytest.mark.parametrize("regex", [p for p, _ in PATTERNS])
async def test_the_child_compiles_the_same_index_as_in_process(regex: str) -> None:
    pattern = GuidePattern("regex", regex)
    index = await compile_in_child(pattern, VOCABULARY, len(VOCAB))
    _same(index, build_index(pattern, outlines_vocabulary(VOCAB)))


async def test_a_refusal_in_the_child_is_the_in_process_message_naming_the_field() -> None:
    pattern = GuidePattern("json", '{"type": "frobnicate"}', "response_format")
    with pytest.raises(BadRequest) as in_process:
        build_index(pattern, outlines_vocabulary(VOCAB))
    with pytest.raises(BadRequest) as child:
        await compile_in_child(pattern, VOCABULARY, len(VOCAB))
    assert child.value.message == in_process.value.message and child.value.param == "response_format"
    assert not isinstance(child.value, PatternTooComplex)


@pytest.mark.parametrize(("limits", "timed_out"), [
    (LOW, False),  # over the memory limit
    (CompileLimits(memory_bytes=None, cpu_s=1, timeout_s=600), False),  # over the CPU limit
    (CompileLimits(memory_bytes=None, cpu_s=None, timeout_s=0.5), True),  # killed at the timeout
])
@pytest.mark.parametrize(("kind", "text", "field"), [
    ("regex", HOSTILE, "guided_regex"),
    ("json", '{"type": "string", "pattern": "%s"}' % HOSTILE, "response_format"),
])
async def test_a_hostile_pattern_is_too_complex_and_kills_only_its_child(
        limits: CompileLimits, timed_out: bool, kind: str, text: str, field: str) -> None:
    with pytest.raises(PatternTooComplex) as info:
        await compile_in_child(GuidePattern(kind, text, field), VOCABULARY, len(VOCAB), limits=limits)  # type: ignore[arg-type]
    assert info.value.param == field and info.value.timed_out is timed_out
    assert info.value.message.startswith(f"field {field!r}: the pattern is too complex to compile within the limits")


@pytest.mark.parametrize("answer", [
    "sys.stdout.buffer.write(b'garbage')",
    "sys.stdout.buffer.write(b'{\"initial\": 0}\\n' + b'\\x93NUMPY')",
    # an object array: readable only by unpickling, which the parent never does
    "import io, numpy as np; b = io.BytesIO(); [np.save(b, np.array([{}], object), allow_pickle=True) "
    "for _ in range(4)]; sys.stdout.buffer.write(b'{\"initial\": 0}\\n' + b.getvalue())",
    # well-formed arrays, but token ids outside the vocabulary
    "import io, numpy as np; b = io.BytesIO(); [np.save(b, a) for a in (np.array([False, True]), "
    "np.array([0, 1, 1]), np.array([10**6]), np.array([1]))]; "
    "sys.stdout.buffer.write(b'{\"initial\": 0}\\n' + b.getvalue())",
    "sys.exit(7)",
    "import os; os.kill(os.getpid(), 9)",
])
async def test_garbage_from_the_child_is_refused_never_unpickled(tmp_path, monkeypatch, answer: str) -> None:
    script = tmp_path / "fake_child.py"
    script.write_text(f"import sys\nsys.stdin.buffer.read()\n{answer}\n")
    monkeypatch.setattr(guide_sandbox, "guide_compile", types.SimpleNamespace(__file__=str(script)))
    with pytest.raises((Internal, PatternTooComplex)) as info:
        await compile_in_child(GuidePattern("regex", "[a-z]+"), VOCABULARY, len(VOCAB))
    assert ("os.kill" in answer) == isinstance(info.value, PatternTooComplex)  # (killed by a signal: a limit)


def _tables(**changes: object) -> GuideTables:
    good = {"initial": 0, "final": np.array([False, True]), "offsets": np.array([0, 2, 2]),
            "tokens": np.array([3, 5]), "targets": np.array([1, 1])}
    return GuideTables(**{**good, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "says"), [
    ({"tokens": np.array([3.0, 5.0])}, "dtypes"),
    ({"final": np.array([[False, True]])}, "shapes"),
    ({"offsets": np.array([0, 3, 2])}, "partition"),
    ({"tokens": np.array([3, 96])}, "out of range"),
    ({"targets": np.array([1, 2])}, "out of range"),
    ({"tokens": np.array([5, 3])}, "ascending"),
    ({"initial": 1}, "initial"),
    ({"final": np.array([False, False])}, "admits no token"),
])
def test_tables_are_checked_before_use(changes: dict, says: str) -> None:
    assert RegexIndex.from_tables(_tables(), 96).allowed(0).tolist() == [3, 5]
    with pytest.raises(ValueError, match=says):
        RegexIndex.from_tables(_tables(**changes), 96)


# -- the engine's children ------------------------------------------------------------------------

@pytest.fixture
def children(monkeypatch) -> list[asyncio.subprocess.Process]:
    """Every compiling child the engine starts."""
    started: list[asyncio.subprocess.Process] = []
    real = asyncio.create_subprocess_exec

    async def spawn(*args, **kwargs):
        proc = await real(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(guide_sandbox.asyncio, "create_subprocess_exec", spawn)
    return started


def _gone(proc: asyncio.subprocess.Process) -> bool:
    """The child has exited and was reaped (no /proc entry left)."""
    return proc.returncode is not None and not os.path.exists(f"/proc/{proc.pid}")


async def test_a_hostile_pattern_is_refused_while_other_generations_go_on_and_remembered(children) -> None:
    engine = GenerationEngine(charlm(), guide_compile_limits=LOW)
    hostile, plain, regular = _Sink(), _Sink(), _Sink()
    engine.submit(GenerationParams(prompt="a", max_tokens=8, guided_regex=HOSTILE), hostile)
    engine.submit(GenerationParams(prompt="The ", max_tokens=8), plain)
    engine.submit(GenerationParams(prompt="The ", max_tokens=20, guided_regex=PATTERNS[1][0]), regular)
    assert await plain.done == "length"
    exc = await hostile.done
    assert isinstance(exc, BadRequest) and "field 'guided_regex': the pattern is too complex" in exc.message
    assert await regular.done == "stop" and re.fullmatch(PATTERNS[1][0], regular.text)
    assert len(children) == 2 and all(p.returncode is not None for p in children)
    again = _Sink()  # refused again, under another field's name, with no child
    engine.submit(GenerationParams(prompt="a", max_tokens=8, guided_regex=HOSTILE, guided_field="structured_outputs"),
                  again)
    exc = await again.done
    assert "field 'structured_outputs': the pattern is too complex" in exc.message and len(children) == 2
    with pytest.raises(BadRequest, match="too complex"):
        await engine.prepare(GenerationParams(prompt="", guided_regex=HOSTILE))  # type: ignore[misc]
    assert len(children) == 2
    await engine.close()


async def test_the_last_cancelled_request_kills_its_compiling_child(children) -> None:
    engine = GenerationEngine(charlm(), guide_compile_limits=HIGH)
    a, b = _Sink(), _Sink()
    first = engine.submit(GenerationParams(prompt="a", max_tokens=8, guided_regex=ENDLESS), a)
    second = engine.submit(GenerationParams(prompt="b", max_tokens=8, guided_regex=ENDLESS), b)
    waiter = engine.prepare(GenerationParams(prompt="", guided_regex=ENDLESS))
    await wait_until_async(lambda: children, 60, what="the compiling child started")
    engine.cancel(first)
    waiter.cancel()  # (an HTTP client that left)
    assert await a.done == "cancelled"
    await asyncio.sleep(0)
    assert [t.cancelling() for t in engine._build_tasks] == [0]  # the second request still waits for it
    engine.cancel(second)
    assert await b.done == "cancelled"
    await wait_until_async(lambda: _gone(children[0]), 60, what="the child killed")
    ok = _Sink()  # a new request for it starts a new compile
    engine.submit(GenerationParams(prompt="a", max_tokens=8, guided_regex=ENDLESS), ok)
    await wait_until_async(lambda: len(children) == 2, 60, what="a second child started")
    await engine.close()  # kills it
    assert isinstance(await ok.done, Exception) and _gone(children[1])


async def test_a_cancelled_prepare_alone_kills_its_child(children) -> None:
    engine = GenerationEngine(charlm(), guide_compile_limits=HIGH)
    waiter = engine.prepare(GenerationParams(prompt="", guided_regex=ENDLESS))
    await wait_until_async(lambda: children, 60, what="the compiling child started")
    waiter.cancel()
    await wait_until_async(lambda: _gone(children[0]), 60, what="the child killed")
    await engine.close()


async def test_an_engine_takes_the_servers_limits_or_its_models_own() -> None:
    """The limits are settings (``--guide-compile-*``, a model's config.toml keys of the same
    names), not environment variables."""
    cfg = ServerConfig(guide_compile_memory_bytes=128 << 20, guide_compile_cpu_s=7, guide_compile_timeout_s=9.5)
    pool = ModelPool(cfg)
    engine = pool.make_worker("charlm", charlm())
    assert engine._compile_limits == CompileLimits(memory_bytes=128 << 20, cpu_s=7, timeout_s=9.5)
    own = pool.make_worker("charlm", charlm(), guide_compile_cpu_s=2, guide_compile_timeout_s=3.0)
    assert own._compile_limits == CompileLimits(memory_bytes=128 << 20, cpu_s=2, timeout_s=3.0)
    assert ModelPool(ServerConfig()).make_worker("charlm", charlm())._compile_limits == CompileLimits(
        memory_bytes=1 << 30, cpu_s=10, timeout_s=15.0)
    from_toml = ModelRegistry(pool)._worker("charlm", charlm(), parse_config("guide_compile_memory_bytes = 268435456"))
    assert from_toml._compile_limits == CompileLimits(memory_bytes=256 << 20, cpu_s=7, timeout_s=9.5)
    await from_toml.close()
    await engine.close()
    await own.close()
