"""The pattern compiler of structured outputs, importable and runnable as a child process.

:func:`compile_tables` turns a regex (or a JSON Schema, through outlines-core's
``build_regex_from_schema``) and an outlines-core ``Vocabulary`` into :class:`GuideTables`: the
token-level DFA with an end mark, its dead states pruned, as flat int64 arrays.  A pattern it
refuses raises :class:`PatternRefused` (its message names the wire field).

outlines-core's build of a hostile pattern (``(a|b)*a(a|b){20}``: a DFA of 2**21 states) takes
unbounded time and memory before any count can be checked, so the server runs it here, in a
child process (:mod:`.guide_sandbox`)::

    python -P .../guide_compile.py MEMORY_BYTES CPU_S   (0: no such limit)

stdin: one JSON line ``{"kind", "text", "name", "max_transitions"}``, then the JSON list of the
model's token texts.  The child sets ``RLIMIT_AS`` / ``RLIMIT_CPU`` (and no core files) first.
stdout: one JSON line, ``{"refused": message}`` or ``{"initial": i}`` followed by four ``.npy``
arrays (``np.save``, never pickled): ``final`` (bool ``[S]``), ``offsets`` (int64 ``[S + 1]``),
``tokens`` and ``targets`` (int64 ``[T]``).  Exit status 0, or :data:`EXIT_OVER_LIMITS` when a
``MemoryError`` was caught (an allocation outlines-core cannot make aborts the child instead).

This module imports only the standard library, numpy and (when compiling) outlines-core: no
wsserve module, so the child starts in ~0.15 s.
"""

from __future__ import annotations

import io
import json
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["END_MARK", "EXIT_OVER_LIMITS", "MAX_GUIDE_TRANSITIONS", "MAX_PATTERN_SIZE", "GuideTables",
           "PatternRefused", "compile_tables", "dump_refusal", "dump_tables", "load_result", "main",
           "outlines_vocabulary", "pattern_size", "unopened_group"]

#: A built index holds at most this many (state, token) transitions; a larger one is refused.
MAX_GUIDE_TRANSITIONS = 1_000_000
#: A pattern whose counted repetitions would spell out more than this many atoms (nested counts
#: multiply: ``(a{100}){100}`` is 10,000) is refused before outlines-core sees it.
MAX_PATTERN_SIZE = 50_000
#: The child's exit status when it caught a ``MemoryError`` (over its memory limit).
EXIT_OVER_LIMITS = 3
#: The longest first line (the JSON header) :func:`load_result` reads.
_MAX_HEADER_BYTES = 65_536

#: The end marker: the pattern is compiled as ``(?:pattern)`` followed by this character, and the
#: vocabulary has one more token, this character (id ``V + 1``, never sampled), so a state is final
#: when that token leads to outlines-core's final state.  (outlines-core drops the transitions
#: from a state that already matches to one that does not, e.g. the "b" of ``a(bc)?`` after "a";
#: with the marker no state within the pattern matches, so every transition is kept.)
END_MARK = "\U0010FFFF"
_END_MARK_RE = r"\x{10FFFF}"


class PatternRefused(ValueError):
    """A pattern :func:`compile_tables` cannot use; the message names the field."""


@dataclass(frozen=True, slots=True)
class GuideTables:
    """A compiled pattern as arrays over local state numbers ``0..S-1``: ``initial``; ``final[s]``
    (the text matches at ``s``); ``tokens[offsets[s]:offsets[s+1]]`` the ids allowed at ``s``
    (ascending) and ``targets[...]`` the states they lead to (every state is live)."""

    initial: int
    final: np.ndarray  # [S] bool
    offsets: np.ndarray  # [S + 1] int64
    tokens: np.ndarray  # [T] int64
    targets: np.ndarray  # [T] int64


def outlines_vocabulary(id_to_text: Sequence[str]) -> Any:
    """outlines-core's ``Vocabulary`` of a model's token texts (empty ones, and any holding
    :data:`END_MARK`, left out: never allowed), with its end-of-sequence id ``V =
    len(id_to_text)`` and :data:`END_MARK` as token ``V + 1``: both outside the model's ids, so
    never sampled (wsserve's models have no end-of-sequence token)."""
    from outlines_core import Vocabulary

    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(id_to_text):
        if text and END_MARK not in text:
            by_text.setdefault(text, []).append(i)
    by_text[END_MARK] = [len(id_to_text) + 1]
    return Vocabulary(len(id_to_text), by_text)


def compile_tables(kind: str, text: str, name: str, vocabulary: Any,
                   max_transitions: int = MAX_GUIDE_TRANSITIONS) -> GuideTables:
    """Compile ``text`` (``kind`` ``"regex"``, or ``"json"``: a JSON Schema's text) against
    ``vocabulary`` (:func:`outlines_vocabulary`).  Raises :class:`PatternRefused` naming the field
    ``name`` when outlines-core refuses it (its message quoted), when its counted repetitions
    unroll past :data:`MAX_PATTERN_SIZE`, when the index would hold more than ``max_transitions``
    transitions, or when no token can begin a match.  Unbounded time and memory on a hostile
    pattern: run it in a child with limits."""
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    regex = text
    if kind == "json":
        text = _grouped_patterns(text, name)
        try:
            regex = build_regex_from_schema(text)
        except (ValueError, TypeError) as exc:
            raise PatternRefused(f"field {name!r}: outlines-core cannot use this JSON Schema: {exc}") from None
    closing = unopened_group(regex)
    if closing is not None:  # it would close compile_tables' own group: (?:a)|(b) is not the pattern a)|(b
        raise PatternRefused(f"field {name!r}: outlines-core cannot use this pattern: unopened group: the ')' at "
                             f"position {closing} closes no group")
    size = pattern_size(regex)
    if size > MAX_PATTERN_SIZE:
        raise PatternRefused(f"field {name!r}: the pattern's counted repetitions spell out about {size} atoms; at "
                             f"most {MAX_PATTERN_SIZE} (smaller {{n,m}} counts)")
    wrapped = f"(?:{regex}){_END_MARK_RE}"
    try:
        index = Index(wrapped, vocabulary)
    except (ValueError, TypeError) as exc:
        message = str(exc).replace(wrapped, regex)
        raise PatternRefused(f"field {name!r}: outlines-core cannot use this pattern: {_short(message)}") from None
    v = vocabulary.get_eos_token_id()  # the model's ids are below it; v + 1 is END_MARK
    raw: dict[int, dict[int, int]] = index.get_transitions()
    total = sum(len(t) for t in raw.values())
    if total > max_transitions:
        raise PatternRefused(f"field {name!r}: the pattern compiles to {total} token transitions against this "
                             f"model's vocabulary; at most {max_transitions} (a simpler pattern)")
    accepted = frozenset(index.get_final_states())
    finals = frozenset(s for s, row in raw.items() if row.get(v + 1) in accepted)
    edges = {s: {t: n for t, n in row.items() if t < v} for s, row in raw.items()}
    live = _live_states(edges, finals)
    initial = index.get_initial_state()
    if initial not in live or not any(n in live for n in edges[initial].values()):
        raise PatternRefused(f"field {name!r}: no text the model's tokens can write matches this pattern "
                             "(it admits no token at the start)")
    return _tables(initial, finals, edges, live)


def _tables(initial: int, finals: frozenset[int], edges: dict[int, dict[int, int]], live: set[int]) -> GuideTables:
    """The live part of ``edges`` as :class:`GuideTables`, states renumbered in ascending order."""
    states = sorted(live)
    local = {s: i for i, s in enumerate(states)}
    offsets = np.zeros(len(states) + 1, np.int64)
    tokens: list[int] = []
    targets: list[int] = []
    for i, s in enumerate(states):
        row = sorted((t, local[n]) for t, n in edges[s].items() if n in live)
        tokens.extend(t for t, _ in row)
        targets.extend(n for _, n in row)
        offsets[i + 1] = len(tokens)
    return GuideTables(local[initial], np.array([s in finals for s in states], np.bool_), offsets,
                       np.array(tokens, np.int64), np.array(targets, np.int64))


def pattern_size(regex: str) -> int:
    """An upper estimate of the atoms ``regex`` spells out once its counted repetitions are
    unrolled: each atom (a character, an escape, a class ``[...]``) is 1, a group the sum of its
    branches' sizes, ``x{n}`` / ``x{n,m}`` / ``x{n,}`` multiply ``x`` by ``max(n, m)`` (``n + 1``).
    A cheap scan of the text (no parse); malformed patterns are outlines-core's to refuse."""
    stack: list[tuple[int, int]] = []  # per open group: (size before it, size of its earlier branches)
    total = 0  # the current group's size so far
    last = 0  # the size of the last atom or group (what a count multiplies)
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
            if regex[i - 1:i] in ("x", "p", "P", "u") and regex[i:i + 1] == "{":
                i = regex.find("}", i) + 1 or n
            last = 1
            total += 1
            continue
        if c == "[":
            j = i + 1
            if regex[j:j + 1] == "^":
                j += 1
            if regex[j:j + 1] == "]":
                j += 1
            while j < n and regex[j] != "]":
                j += 2 if regex[j] == "\\" else 1
            i = j + 1
            last = 1
            total += 1
            continue
        if c == "(":
            stack.append((total, 0))
            total = 0
        elif c == "|" and stack:  # (at the top level the branches simply add up)
            before, branches = stack[-1]
            stack[-1] = (before, branches + total)
            total = 0
        elif c == ")" and stack:
            before, branches = stack.pop()
            last = branches + total
            total = before + last
        elif c == "{":
            j = regex.find("}", i)
            counts = regex[i + 1:j].split(",") if j > 0 else []
            if counts and all(x.strip().isdigit() or x.strip() == "" for x in counts) and counts[0].strip():
                low = int(counts[0])
                high = int(counts[1]) if len(counts) > 1 and counts[1].strip() else low + (len(counts) > 1)
                factor = max(low, high, 1)
                total += last * (factor - 1)
                last *= factor
                i = j + 1
                continue
            last = 1
            total += 1
        elif c not in "*+?)|":
            last = 1
            total += 1
        i += 1
    while stack:
        before, branches = stack.pop()
        total = before + branches + total
    return total


#: Keys whose values are JSON data, not schemas (a "pattern" key in them is data).
_DATA_KEYS = frozenset(("const", "enum", "default", "examples"))


def _grouped_patterns(text: str, name: str) -> str:
    """The JSON Schema text ``text`` with each string's ``pattern`` wrapped in ``(?:...)``:
    outlines-core writes it into its regex as ``("pattern")``, so a pattern's top-level
    alternation (``a|b``: ``("a|b")`` matches '"a' and 'b"') or a ``)`` closing no group of its
    own escaped the string's quotes.  Raises :class:`PatternRefused` for a pattern with such a
    ``)``; ``text`` unchanged when it has no pattern or is not JSON (outlines-core refuses it then)."""
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError):
        return text
    todo, changed = [schema], False
    while todo:  # (no recursion: the text may nest deeply)
        value = todo.pop()
        if type(value) is dict:
            pattern = value.get("pattern")
            if type(pattern) is str:
                closing = unopened_group(pattern)
                if closing is not None:
                    raise PatternRefused(f"field {name!r}: outlines-core cannot use this JSON Schema: its pattern "
                                         f"{_short(json.dumps(pattern), 80)} has an unopened group (the ')' at "
                                         f"position {closing} closes no group)")
                value["pattern"] = f"(?:{pattern})"
                changed = True
            todo.extend(v for k, v in value.items() if k not in _DATA_KEYS)
        elif type(value) is list:
            todo.extend(value)
    return json.dumps(schema) if changed else text


def unopened_group(regex: str) -> int | None:
    """The position of the first ``)`` in ``regex`` that closes no group it opened (None when
    every one does): wrapped as ``(?:regex)`` it would close the wrapper instead, and the
    wrapper's ``(`` would be closed by the pattern's own last ``)``.  A scan of the text in
    regex-syntax's rules: escapes, classes (nested, ``]`` first is literal) and, where the ``x``
    flag is on (``(?x)``, scoped to its group), ``#`` comments to the end of the line."""
    stack: list[bool] = []  # per open group: the x flag outside it (restored at its ")")
    verbose = False
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if verbose and c == "#":
            end = regex.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "[":
            i = _class_end(regex, i, verbose)
            continue
        if c == "(":
            stack.append(verbose)
            if regex.startswith("(?", i):
                j = i + 2
                while j < n and regex[j] not in ":)":
                    j += 1
                flags = regex[i + 2:j]
                if "<" not in flags and "P" not in flags and "=" not in flags and "!" not in flags:
                    on = flags.split("-")[0]
                    turned = True if "x" in on else False if "x" in flags else None
                    if turned is not None:
                        if regex[j:j + 1] == ")":  # (?x): for the rest of the enclosing group
                            stack.pop()
                            verbose = turned
                            i = j + 1
                            continue
                        verbose = turned  # (?x:...): inside this group only
                i = j + 1 if regex[j:j + 1] == ":" else i + 1
                continue
        elif c == ")":
            if not stack:
                return i
            verbose = stack.pop()
        i += 1
    return None


def _class_end(regex: str, i: int, verbose: bool) -> int:
    """The position after the class ``[...]`` that opens at ``i`` (nested classes too)."""
    depth, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "[":
            depth += 1
            i += 1
            if regex[i:i + 1] == "^":
                i += 1
            if regex[i:i + 1] == "]":  # a literal ']' first
                i += 1
            continue
        if c == "\\":
            i += 2
            continue
        if verbose and c == "#":
            end = regex.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        i += 1
        if c == "]":
            depth -= 1
            if depth == 0:
                return i
    return n


def _live_states(raw: dict[int, dict[int, int]], finals: frozenset[int]) -> set[int]:
    """The states from which a final state can be reached (a reverse walk from the finals)."""
    back: dict[int, list[int]] = {}
    for s, row in raw.items():
        for n in row.values():
            back.setdefault(n, []).append(s)
    live = set(finals)
    todo = deque(finals)
    while todo:
        for s in back.get(todo.popleft(), ()):
            if s not in live:
                live.add(s)
                todo.append(s)
    return live


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


# -- the child's wire format -------------------------------------------------------------------

def dump_tables(tables: GuideTables) -> bytes:
    """The child's answer for a compiled pattern (the module docstring's format)."""
    out = io.BytesIO()
    out.write(json.dumps({"initial": int(tables.initial)}).encode() + b"\n")
    for array in (tables.final, tables.offsets, tables.tokens, tables.targets):
        np.save(out, array, allow_pickle=False)
    return out.getvalue()


def dump_refusal(message: str) -> bytes:
    """The child's answer for a refused pattern."""
    return json.dumps({"refused": message}).encode() + b"\n"


def load_result(data: bytes) -> GuideTables | str:
    """Parse a child's stdout: its tables (shapes and dtypes not checked yet: see
    :meth:`~.structured.RegexIndex.from_tables`) or a refusal's message.  Raises ``ValueError``
    on anything else (never unpickles)."""
    head, newline, rest = data[:_MAX_HEADER_BYTES].partition(b"\n")
    if not newline:
        raise ValueError(f"no header line in {len(data)} bytes of output")
    header = json.loads(head)
    if type(header) is not dict:
        raise ValueError("the header is not a JSON object")
    if "refused" in header:
        message = header["refused"]
        if type(message) is not str or len(data) != len(head) + 1:
            raise ValueError("a malformed refusal")
        return _short(message, 2000)
    initial = header.get("initial")
    if type(initial) is not int:
        raise ValueError("the header has no initial state")
    stream = io.BytesIO(data[len(head) + 1:])
    final, offsets, tokens, targets = (np.load(stream, allow_pickle=False) for _ in range(4))
    if stream.tell() != len(stream.getbuffer()):
        raise ValueError("trailing bytes after the arrays")
    return GuideTables(initial, final, offsets, tokens, targets)


def _set_limits(memory_bytes: int, cpu_s: int) -> None:
    """This process's address space and CPU time (0: unlimited), and no core files (SIGXCPU and
    an aborted allocation would write one); on Linux, SIGKILL when the server dies (so a server
    killed outright leaves no compile behind).  Where ``RLIMIT_AS`` cannot be set (macOS), the
    data segment is limited instead.  The child also runs at a lower CPU priority (nice 10):
    on a machine whose cores the server uses, a costly compile takes what the server leaves."""
    import os
    import resource

    try:
        os.nice(10)
    except OSError:  # not allowed here: the limits still bound it
        pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes > 0:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    if cpu_s > 0:  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    if sys.platform == "linux":
        import ctypes
        import signal

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before that
            os._exit(1)


def main(argv: Sequence[str]) -> int:
    """The child: ``argv`` is ``[MEMORY_BYTES, CPU_S]``; the request on stdin, the answer on
    stdout (the module docstring).  Returns the exit status."""
    _set_limits(int(argv[0]), int(argv[1]))
    try:
        head, _, vocabulary = sys.stdin.buffer.read().partition(b"\n")
        request = json.loads(head)
        try:
            tables = compile_tables(request["kind"], request["text"], request["name"],
                                    outlines_vocabulary(json.loads(vocabulary)), int(request["max_transitions"]))
            answer = dump_tables(tables)
        except PatternRefused as exc:
            answer = dump_refusal(str(exc))
    except MemoryError:
        return EXIT_OVER_LIMITS
    sys.stdout.buffer.write(answer)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
