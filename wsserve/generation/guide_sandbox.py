"""Compiling a structured-outputs pattern in a short-lived child process with hard limits.

outlines-core's build of a hostile pattern (``(a|b)*a(a|b){20}``, or a JSON Schema holding one)
takes unbounded time and memory before any count of the result can be checked.  So each compile
runs ``python -P .../guide_compile.py`` (:mod:`.guide_compile`) as a child process that limits its
own address space (``RLIMIT_AS``) and CPU time (``RLIMIT_CPU``), and the parent kills it after a
wall-clock timeout: a hostile pattern costs at most :data:`GUIDE_COMPILE_MEMORY_BYTES` and
:data:`GUIDE_COMPILE_CPU_S`, and kills only the child.  Data in: the pattern and the model's
token texts as JSON on stdin; data out: ``.npy`` arrays (``allow_pickle=False`` both ways),
checked by :meth:`~.structured.RegexIndex.from_tables` before use.

Outcomes of :func:`compile_in_child`: the index; the library's refusal (``BadRequest``, the same
message as in-process); :class:`PatternTooComplex` (a ``BadRequest``) when the child was killed by
a limit (a signal: ``SIGXCPU``/``SIGKILL`` past the CPU limit, ``SIGABRT`` when an allocation
failed past the memory limit) or by the timeout; ``Internal`` for anything else (a non-zero exit,
garbage output).  Cancelling the awaiting task kills the child (and reaps it) before the
``CancelledError`` propagates.  asyncio only at this edge; the engine bounds how many run at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import GUIDE_COMPILE_LIMITS
from ..errors import BadRequest, Internal
from . import guide_compile
from .guide_compile import EXIT_OVER_LIMITS, MAX_GUIDE_TRANSITIONS, load_result
from .structured import GuidePattern, RegexIndex

__all__ = ["GUIDE_COMPILE_CPU_S", "GUIDE_COMPILE_MEMORY_BYTES", "GUIDE_COMPILE_TIMEOUT_S", "CompileLimits",
           "PatternTooComplex", "compile_in_child", "vocabulary_payload"]

log = logging.getLogger(__name__)

# Limits (the defaults of the server's settings of the same names: wsserve.config.GUIDE_COMPILE_LIMITS)
#: The address space a compiling child may map (``RLIMIT_AS``): 1 GiB.
GUIDE_COMPILE_MEMORY_BYTES = int(GUIDE_COMPILE_LIMITS["guide_compile_memory_bytes"][0])
#: The CPU time a compiling child may use (``RLIMIT_CPU``, seconds): 10.
GUIDE_COMPILE_CPU_S = int(GUIDE_COMPILE_LIMITS["guide_compile_cpu_s"][0])
#: The wall-clock time after which the parent kills a compiling child (seconds): 15.
GUIDE_COMPILE_TIMEOUT_S = float(GUIDE_COMPILE_LIMITS["guide_compile_timeout_s"][0])
#: The most a child may write on stdout (1M transitions are ~16 MB of arrays) and stderr.
_MAX_STDOUT_BYTES = 64 << 20
_MAX_STDERR_BYTES = 16 << 10


@dataclass(frozen=True, slots=True)
class CompileLimits:
    """The hard limits of one compiling child (None: no such limit; the server's settings,
    ``--guide-compile-memory-bytes``, ``--guide-compile-cpu-s`` and ``--guide-compile-timeout-s``,
    never turn one off)."""

    memory_bytes: int | None = GUIDE_COMPILE_MEMORY_BYTES
    cpu_s: int | None = GUIDE_COMPILE_CPU_S
    timeout_s: float | None = GUIDE_COMPILE_TIMEOUT_S

    def describe(self) -> str:
        """The limits as a refusal states them."""
        parts = [f"{self.memory_bytes / (1 << 20):g} MiB of memory" if self.memory_bytes else "",
                 f"{self.cpu_s} s of CPU time" if self.cpu_s else "",
                 f"{self.timeout_s:g} s of wall-clock time" if self.timeout_s else ""]
        return ", ".join(p for p in parts if p) or "no limits"


class PatternTooComplex(BadRequest):
    """A compiling child was killed by its memory or CPU limit (``timed_out`` False: the same
    pattern would be again, worth remembering) or by the wall-clock timeout (maybe load)."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def vocabulary_payload(id_to_text: Sequence[str]) -> bytes:
    """The model's token texts as the child reads them (made once per engine)."""
    return json.dumps(list(id_to_text)).encode()


async def compile_in_child(pattern: GuidePattern, vocabulary: bytes, vocab_size: int, *,
                           limits: CompileLimits = CompileLimits(),
                           max_transitions: int = MAX_GUIDE_TRANSITIONS) -> RegexIndex:
    """Compile ``pattern`` against ``vocabulary`` (:func:`vocabulary_payload` of ``vocab_size``
    texts) in a child process under ``limits`` (the module docstring).  Raises ``BadRequest``
    (its ``param`` the field) for a refused pattern, :class:`PatternTooComplex` for one over the
    limits, ``Internal`` when the child failed otherwise; cancelled, it kills the child first."""
    request = json.dumps({"kind": pattern.kind, "text": pattern.text, "name": pattern.name,
                          "max_transitions": max_transitions}).encode()
    try:
        status, out, err = await _run_child(request + b"\n" + vocabulary, limits)
    except ValueError as exc:  # it wrote too much
        log.error("compiling a %s pattern failed in the child: %s", pattern.kind, exc)
        raise Internal(f"compiling {pattern.name!r} failed: {exc}") from None
    if status is None or status < 0 or status == EXIT_OVER_LIMITS:
        how = ("timed out" if status is None else "ran out of memory" if status == EXIT_OVER_LIMITS
               else f"was killed by {_signal_name(-status)}")
        log.warning("compiling a %s pattern of %d characters %s (limits: %s)", pattern.kind, len(pattern.text),
                    how, limits.describe())
        exc = PatternTooComplex(f"field {pattern.name!r}: the pattern is too complex to compile within the "
                                f"limits ({limits.describe()})", timed_out=status is None)
        exc.param = pattern.name  # type: ignore[attr-defined]
        raise exc
    try:
        if status != 0:
            raise ValueError(f"exit status {status}")
        result = load_result(out)
        if type(result) is str:
            raise pattern.refusal(result)
        return await asyncio.to_thread(RegexIndex.from_tables, result, vocab_size, max_transitions=max_transitions)
    except (ValueError, OSError, EOFError) as exc:  # its output is not what guide_compile writes
        log.error("compiling a %s pattern failed in the child: %s; stderr: %s", pattern.kind, exc,
                  err.decode(errors="replace")[-2000:])
        raise Internal(f"compiling {pattern.name!r} failed: {exc}") from None


async def _run_child(stdin: bytes, limits: CompileLimits) -> tuple[int | None, bytes, bytes]:
    """Run the compiler child on ``stdin``: its exit status (None: killed at the timeout; a
    negative one: killed by that signal), stdout and stderr.  The child is killed and reaped
    before this returns or raises (``CancelledError`` included)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", str(Path(guide_compile.__file__)), str(limits.memory_bytes or 0), str(limits.cpu_s or 0),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        async with asyncio.timeout(limits.timeout_s):
            _, out, err, status = await asyncio.gather(_feed(proc.stdin, stdin), _read(proc.stdout, _MAX_STDOUT_BYTES),
                                                       _read(proc.stderr, _MAX_STDERR_BYTES), proc.wait())
            return status, out, err
    except TimeoutError:
        return None, b"", b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _feed(pipe: asyncio.StreamWriter | None, data: bytes) -> None:
    """Write ``data`` to the child's stdin and close it (a child that died first: ignored)."""
    assert pipe is not None
    try:
        pipe.write(data)
        await pipe.drain()
        pipe.close()
    except (BrokenPipeError, ConnectionResetError):
        pass


async def _read(pipe: asyncio.StreamReader | None, cap: int) -> bytes:
    """All of a child's output stream, at most ``cap`` bytes (more: ``ValueError`` kills it)."""
    assert pipe is not None
    chunks: list[bytes] = []
    size = 0
    while chunk := await pipe.read(1 << 16):
        size += len(chunk)
        if size > cap:
            raise ValueError(f"the compiler wrote more than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
