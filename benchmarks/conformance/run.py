"""Run the Autobahn WebSocket test suite against wsserve's transport and a ``websockets`` echo.

Usage (from the repository root; ~40 min with every case, 12.x/13.x deflate being most of it;
~1 min with ``--quick``)::

    python benchmarks/conformance/run.py                 # every case, 4 servers, writes the report
    python benchmarks/conformance/run.py --quick         # without 9.* (performance) and 12.*/13.* (deflate)
    python benchmarks/conformance/run.py --cases '6.*,7.*' --out /tmp/c.md
    python benchmarks/conformance/run.py --summarise-only --reports /tmp/wsserve-autobahn/reports

What it does, reproducibly:

1. **Installs the suite** (``wstest`` from the Python 2 package ``autobahntestsuite``) into a
   throwaway Python 2.7 virtualenv under ``--workdir`` (default ``/tmp/wsserve-autobahn``):
   a Python 3 venv there gets ``virtualenv<20.22`` (the last release that creates Python 2
   environments), which creates ``py2/`` from Python 2.7 (``$PYTHON2``, else pyenv's
   ``~/.pyenv/versions/2.7.*``, else ``python2.7`` on PATH), then ``pip install -r
   benchmarks/conformance/requirements-py2.txt`` (the pinned, known-working set).  Reused
   when already there.  Nothing is installed into the project's Python.
2. **Starts the servers** (``--agents``, default all five) on free ports of 127.0.0.1 (each
   prints its URL): ``wsserve`` - wsserve's real transport (HttpProtocol -> WebSocketProtocol,
   fast path) with the echo application of ``benchmarks/conformance/echo_server.py``;
   ``wsserve-deflate`` - the same with permessage-deflate (the library path);
   ``wsserve-picows`` - the same echo on ``--transport picows`` (HttpProtocol -> picows's
   WSProtocol and wsserve's adapter; the ``fast`` extra, no compression); ``websockets`` and
   ``websockets-deflate`` - ``benchmarks/peers/echo_server.py --conformance [--compression]``.
3. **Runs** ``wstest -m fuzzingclient`` with a spec naming the servers (same run), the
   selected cases and exclusions; reports (HTML + JSON per case) go to ``--reports``.
4. **Summarises** ``index.json`` into ``--out`` (default ``benchmarks/results/conformance.md``):
   per group, counts of OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED / FAILED per server,
   and every case of a wsserve server whose behaviour or close behaviour is not OK, with the
   suite's reason and the explanation from :data:`EXPLAINED` (a case not explained there is
   marked "UNEXPLAINED" - look at it).

Not part of CI or ``scripts/test``: it needs Python 2.7 and the suite's old dependencies, and
the full run takes minutes.  Every server and the suite run on loopback only.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import fnmatch
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-py2.txt"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "conformance.md"
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
GROUPS = {
    "1": "Framing", "2": "Pings/Pongs", "3": "Reserved bits", "4": "Opcodes", "5": "Fragmentation",
    "6": "UTF-8 handling", "7": "Close handling", "9": "Limits/performance", "10": "Auto-fragmentation",
    "12": "permessage-deflate (payloads)", "13": "permessage-deflate (parameters)",
}
QUICK_EXCLUDE = ["9.*", "12.*", "13.*"]
_URL = re.compile(r"ws://127\.0\.0\.1:(\d+)")

#: Why a case of a wsserve server is not OK, and whether it is a real deviation from RFC 6455.
#: Keys are case-id patterns (fnmatch); the first match wins.  Checked against each run's
#: results: a case not OK and not listed here is reported as UNEXPLAINED.
EXPLAINED: dict[str, tuple[str, str]] = {
    "4.1.[345]": (
        "no",
        (
            "NON-STRICT on `wsserve-picows` only (OK on `wsserve`): a text message, then a frame with a reserved "
            "opcode (and, in 4.1.4/4.1.5, a ping), in one write. picows parses the next frame of a read before "
            "delivering the current one (picows.pyx, WSProtocol._process_new_data); the reserved opcode fails "
            "the connection with 1002 there, so the close frame is written before the message is handed to the "
            "application and its echo is dropped. The suite accepts that (the websockets echo does the same in "
            "4.1.3/4.1.4); only the order of the replies differs from wsserve's websockets transport."
        ),
    ),
    "4.2.[345]": ("no", "As 4.1.3-4.1.5, with the reserved control opcodes (picows only)."),
    "7.1.2": (
        "minor, picows's",
        (
            "FAILED / WRONG CODE on `wsserve-picows` only: two close frames in one write. picows's parser "
            "reads the second before the first is delivered (see 4.1.3) and fails the connection with 1002 "
            "'Received CLOSE for the second time' (its close-handshake state already holds the first), so "
            "the server answers 1002 instead of echoing 1000. The client was closing anyway and the "
            "connection still ends cleanly; fixing it needs a change in picows (its look-ahead parse), not in "
            "wsserve's adapter, which sees neither frame before picows has written its 1002."
        ),
    ),
    "6.4.*": (
        "no",
        (
            "NON-STRICT: the invalid UTF-8 of these cases is found when the message is complete, not at the "
            "first bad byte (the suite's 'fail fast'): in 6.4.1/6.4.2 it is in the 2nd of 3 fragments, in "
            "6.4.3/6.4.4 in one frame sent in chops (the transport parses a frame once it is whole). The "
            "connection is still failed with 1007 before anything is echoed, as RFC 6455 §8.1 asks, and the "
            "websockets library does the same. wsserve's core checks UTF-8 once, on the whole message (orjson); "
            "failing earlier would mean validating fragments incrementally as well."
        ),
    ),
    "7.1.5": (
        "minor, the library's",
        (
            "FAILED / WRONG CODE: a Close frame arriving between the fragments of a message is answered with "
            "1002 'incomplete fragmented message' instead of 1000. This is the websockets library's sans-I/O "
            "ServerProtocol (protocol.py raises ProtocolError when a close arrives with a message in progress), "
            "which wsserve uses for everything but whole data frames; a plain websockets server does the same. "
            "RFC 6455 §5.4 allows control frames between fragments, so the client did nothing wrong; the "
            "connection is still closed cleanly, only the code differs."
        ),
    ),
    "7.1.6": (
        "no",
        (
            "INFORMATIONAL: a 256 KiB message, 'Hello World!', a close and a ping sent back to back; the outcome is "
            "implementation-defined. wsserve echoes both messages, then answers the close (1000); the websockets "
            "echo answers the close without echoing (its handler had not run yet)."
        ),
    ),
    "7.13.*": (
        "no",
        (
            "INFORMATIONAL: a close with code 5000 / 65535 (not a valid close code); the behaviour is undefined "
            "by the spec; the server answers 1002 (protocol error), as the websockets library does."
        ),
    ),
    "9.3.[123]": (
        "no, a deliberate limit (the library's too)",
        (
            "FAILED, close 1009: a 4 MiB text message in fragments of 64 B / 256 B / 1 KiB (65,536 / 16,384 / "
            "4,096+ frames). wsserve fails a message of more than MAX_FRAGMENTS = 4096 frames with 1009 "
            "(wsserve/transport/websocket.py; issue #10 item 15: the fragment list must not grow without "
            "bound); websockets 17's asyncio server has the same cap (MAX_FRAGMENTS = 4096 in "
            "websockets/asyncio/messages.py, 'too many fragments'), so the websockets echo fails the same "
            "cases. RFC 6455 §10.4 lets an endpoint limit what it accepts; 1009 is the code for it. 9.3.4+ "
            "(4 KiB fragments and up) pass."
        ),
    ),
    "9.4.[123]": (
        "no, a deliberate limit (the library's too)",
        (
            "As 9.3.1-9.3.3, with a binary message: more than 4096 frames -> 1009, in wsserve and in websockets."
        ),
    ),
    "12.*": ("no", "UNIMPLEMENTED: the server declined permessage-deflate (compression off for this server)."),
    "13.*": ("no", "UNIMPLEMENTED: the server declined permessage-deflate (compression off for this server)."),
}


@dataclass(frozen=True)
class Agent:
    name: str
    what: str
    argv: tuple[str, ...]
    peer: str = ""  # the websockets echo it is compared with (default: its name with websockets for wsserve)


AGENTS = (
    Agent("wsserve", "wsserve transport, fast path (no compression)",
          ("-m", "benchmarks.conformance.echo_server")),
    Agent("wsserve-deflate", "wsserve transport, permessage-deflate (library path)",
          ("-m", "benchmarks.conformance.echo_server", "--compression")),
    Agent("wsserve-picows", "wsserve --transport picows (picows frames, wsserve's adapter; no compression)",
          ("-m", "benchmarks.conformance.echo_server", "--transport", "picows"), peer="websockets"),
    Agent("websockets", "websockets echo (peers/echo_server.py --conformance)",
          ("benchmarks/peers/echo_server.py", "--conformance")),
    Agent("websockets-deflate", "websockets echo, permessage-deflate",
          ("benchmarks/peers/echo_server.py", "--conformance", "--compression")),
)


# ---------------------------------------------------------------------------- install


def _python2() -> str:
    """Path of a Python 2.7 interpreter; raises SystemExit naming how to get one."""
    env = os.environ.get("PYTHON2")
    if env:
        return env
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.7*/bin/python")))
    if found:
        return found[-1]
    for name in ("python2.7", "python2"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Python 2.7 found: set PYTHON2=/path/to/python2.7 (e.g. `pyenv install 2.7.18`)")


def _run(cmd: list[str], **kwargs: Any) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def install(workdir: Path) -> Path:
    """The ``wstest`` of a Python 2.7 virtualenv under ``workdir`` (created on first use)."""
    py2 = workdir / "py2"
    wstest = py2 / "bin" / "wstest"
    stamp = py2 / ".requirements"
    wanted = REQUIREMENTS.read_text()
    if wstest.exists() and stamp.exists() and stamp.read_text() == wanted:
        return wstest
    tools = workdir / "tools"
    if not (tools / "bin" / "virtualenv").exists():
        _run([sys.executable, "-m", "venv", str(tools)])
        _run([str(tools / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "virtualenv<20.22"])
    shutil.rmtree(py2, ignore_errors=True)
    _run([str(tools / "bin" / "virtualenv"), "--quiet", "-p", _python2(), str(py2)])
    _run([str(py2 / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--no-python-version-warning", "-r", str(REQUIREMENTS)])
    stamp.write_text(wanted)
    return wstest


# ---------------------------------------------------------------------------- servers


@dataclass
class Server:
    agent: Agent
    proc: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """SIGTERM, then collect what it printed (wsserve's echo prints its frame counters)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output.extend(out.splitlines())


def start_server(agent: Agent, timeout_s: float = 60.0) -> Server:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *agent.argv, "--host", "127.0.0.1", "--port", "0"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        match = _URL.search(line)
        if match:
            return Server(agent, proc, f"ws://127.0.0.1:{match.group(1)}", lines)
    proc.kill()
    raise SystemExit(f"{agent.name} did not start: {' / '.join(lines)}")


# ---------------------------------------------------------------------------- summary


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(x) for x in case.split("."))


def explain(case: str) -> tuple[str, str]:
    for pattern, value in EXPLAINED.items():
        if fnmatch.fnmatchcase(case, pattern):
            return value
    return ("?", "UNEXPLAINED: look at the case report")


def summarise(reports: Path, *, command: str, excluded: list[str], notes: list[str]) -> str:
    index: dict[str, dict[str, dict[str, Any]]] = json.loads((reports / "index.json").read_text())
    agents = [a.name for a in AGENTS if a.name in index] + sorted(set(index) - {a.name for a in AGENTS})
    whats = {a.name: a.what for a in AGENTS}
    counts: dict[str, dict[str, collections.Counter[str]]] = {a: collections.defaultdict(collections.Counter)
                                                              for a in agents}
    seconds: dict[str, collections.Counter[str]] = {a: collections.Counter() for a in agents}
    groups: set[str] = set()
    for agent in agents:
        for case, res in index[agent].items():
            group = case.split(".")[0]
            groups.add(group)
            counts[agent][group][res["behavior"]] += 1
            seconds[agent][group] += res.get("duration", 0) / 1000
    ordered = sorted(groups, key=int)

    out = ["## Conformance: the Autobahn WebSocket test suite", ""]
    out.append(f"Command: `{command}` ({dt.date.today().isoformat()}). The suite's `fuzzingclient` "
               "(Python 2.7, `autobahntestsuite` and pinned dependencies in a throwaway virtualenv) ran every "
               f"selected case against {len(agents)} echo servers on 127.0.0.1 in the same run:")
    out.append("")
    for agent in agents:
        out.append(f"- `{agent}`: {whats.get(agent, agent)}")
    out.append("")
    out.append("wsserve's servers are its real transport (`HttpProtocol` -> `WebSocketProtocol`, or picows's "
               "`WSProtocol` behind wsserve's adapter for `wsserve-picows`) with an echo "
               "application (`benchmarks/conformance/echo_server.py`): text echoed as text after a UTF-8 "
               "check (invalid: close 1007, as wsserve's JSON path does), binary as binary. The suite's client "
               "offers permessage-deflate only in groups 12 and 13, so in groups 1-10 the `-deflate` servers "
               "run without an extension too (for wsserve: the fast path); groups 12 and 13 are the library "
               "path, and UNIMPLEMENTED on servers without compression.")
    if excluded:
        out.append(f"Excluded cases: {', '.join('`' + e + '`' for e in excluded)}.")
    out.extend(notes)
    out.append("")
    out.append("Counts per group: OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED / FAILED "
               "(NON-STRICT and INFORMATIONAL are passes in the suite's terms).")
    out.append("")
    out.append("| group | cases | " + " | ".join(f"`{a}`" for a in agents) + " |")
    out.append("|---|---:|" + "---|" * len(agents))
    totals = {a: collections.Counter() for a in agents}
    for group in ordered:
        n = max(sum(counts[a][group].values()) for a in agents)
        cells = []
        for agent in agents:
            c = counts[agent][group]
            totals[agent].update(c)
            cells.append(" / ".join(str(c[b]) for b in BEHAVIOURS))
        out.append(f"| {group}.x {GROUPS.get(group, '')} | {n} | " + " | ".join(cells) + " |")
    n = max(sum(totals[a].values()) for a in agents)
    out.append(f"| **all** | {n} | " + " | ".join("**" + " / ".join(str(totals[a][b]) for b in BEHAVIOURS) + "**"
                                               for a in agents) + " |")
    out.append("")
    out.append("Seconds the suite spent per group (its own clock; the Python 2 client is the bottleneck, "
               "so these are not server benchmarks):")
    out.append("")
    out.append("| group | " + " | ".join(f"`{a}`" for a in agents) + " |")
    out.append("|---|" + "---:|" * len(agents))
    for group in ordered:
        out.append(f"| {group}.x | " + " | ".join(f"{seconds[a][group]:.1f}" for a in agents) + " |")
    out.append("")

    out.append("### Every case of a wsserve server that is not OK")
    out.append("")
    out.append("Behaviour / close behaviour (close code the server sent) as the suite reports them, for every "
               "server; 'real deviation' is our reading of RFC 6455; the notes follow the table.")
    out.append("")
    out.append("| case | " + " | ".join(f"`{a}`" for a in agents) + " | real deviation | note |")
    out.append("|---|" + "---|" * len(agents) + "---|---|")
    wsserve_agents = [a for a in agents if a.startswith("wsserve")]
    def declined(agent: str, case: str) -> bool:  # deflate case on a server without compression
        res = index[agent][case]
        return (case.split(".")[0] in ("12", "13") and res["behavior"] == "UNIMPLEMENTED"
                and res["behaviorClose"] == "OK" and "deflate" not in agent)

    not_ok = {(a, c) for a in wsserve_agents for c, r in index[a].items()
              if r["behavior"] != "OK" or r["behaviorClose"] != "OK"}
    skipped = sorted({a for a, c in not_ok if declined(a, c)})
    cases = sorted({c for a, c in not_ok if not declined(a, c)}, key=_case_key)
    notes_used: dict[str, int] = {}
    unexplained: list[str] = []
    for case in cases:
        cells = []
        for agent in agents:
            res = index[agent].get(case)
            cells.append("-" if res is None else f"{res['behavior']} / {res['behaviorClose']} ({res.get('remoteCloseCode')})")
        real, why = explain(case)
        if real == "?":
            agent = next(a for a in wsserve_agents if case in index[a])
            detail = json.loads((reports / index[agent][case]["reportfile"].replace(".html", ".json")).read_text())
            why = f"UNEXPLAINED: {detail.get('result', '')} / {detail.get('resultClose', '')}"
            unexplained.append(case)
        ref = notes_used.setdefault(why, len(notes_used) + 1)
        out.append(f"| {case} | " + " | ".join(cells) + f" | {real} | [{ref}] |")
    out.append("")
    for why, ref in notes_used.items():
        out.append(f"{ref}. {why}")
    for agent in skipped:
        n = sum(1 for a, c in not_ok if a == agent and declined(a, c))
        out.append(f"\nNot listed: the {n} cases of groups 12 and 13 on `{agent}`, all UNIMPLEMENTED with a clean close: "
                   "the suite's client asks for permessage-deflate and this server (compression off) declines it, "
                   "as intended.")
    out.append("")
    out.append("Differences from the websockets echo with the same compression setting (behaviour / close "
               "behaviour):")
    out.append("")
    rank = {b: i for i, b in enumerate(BEHAVIOURS)}
    any_diff = False
    for agent in wsserve_agents:
        peer = next((x.peer for x in AGENTS if x.name == agent and x.peer), agent.replace("wsserve", "websockets"))
        diffs = []
        for case in sorted(index[agent], key=_case_key):
            res, lib = index[agent][case], index.get(peer, {}).get(case)
            if lib is None or (res["behavior"], res["behaviorClose"]) == (lib["behavior"], lib["behaviorClose"]):
                continue
            verdict = "better" if rank[res["behavior"]] < rank[lib["behavior"]] else (
                "worse" if rank[res["behavior"]] > rank[lib["behavior"]] else "differs")
            diffs.append(f"{case} {verdict} ({res['behavior']} / {res['behaviorClose']} vs "
                         f"{lib['behavior']} / {lib['behaviorClose']})")
        if diffs:
            any_diff = True
            out.append(f"- `{agent}` vs `{peer}`: " + "; ".join(diffs) + ".")
    if not any_diff:
        out.append("- none.")
    else:
        out.append("")
        out.append("Where wsserve is better, a message and a frame that fails the connection (reserved bits or "
                   "opcode, a stray continuation) arrive in one read: wsserve echoes the message, then sends its "
                   "close frame (the transport writes replies queued on its fast path before anything the library "
                   "writes); the websockets echo fails the connection before its handler has run, so the echo "
                   "is never sent (the suite accepts both).")
    out.append("")
    if unexplained:
        out.append(f"\n**{len(unexplained)} case(s) UNEXPLAINED** ({', '.join(unexplained)}) - see the reports "
                   f"in `{reports}`.")
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/wsserve-autobahn"))
    ap.add_argument("--reports", type=Path, default=None, help="default: WORKDIR/reports")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cases", default="*", help="comma-separated case patterns (default: every case)")
    ap.add_argument("--exclude", default="", help="comma-separated case patterns to skip")
    ap.add_argument("--quick", action="store_true", help=f"also exclude {', '.join(QUICK_EXCLUDE)}")
    ap.add_argument("--agents", default=",".join(a.name for a in AGENTS), help="which servers")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole suite run")
    ap.add_argument("--summarise-only", action="store_true", help="only rewrite --out from --reports")
    a = ap.parse_args(argv)
    reports = a.reports or a.workdir / "reports"
    excluded = [c for c in a.exclude.split(",") if c] + (QUICK_EXCLUDE if a.quick else [])
    command = "python benchmarks/conformance/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                        if (argv if argv is not None else sys.argv[1:]) else "")
    notes: list[str] = []
    if not a.summarise_only:
        a.workdir.mkdir(parents=True, exist_ok=True)
        wstest = install(a.workdir)
        version = subprocess.run([str(wstest), "-a"], capture_output=True, text=True, check=False).stdout.strip()
        import websockets

        notes.append(f"Versions: {' '.join(version.split())}; websockets {websockets.__version__}; "
                     f"Python {platform.python_version()} for the servers.")
        names = a.agents.split(",")
        servers: list[Server] = []
        try:
            for agent in AGENTS:
                if agent.name in names:
                    servers.append(start_server(agent))
                    print(f"{agent.name}: {servers[-1].url}", flush=True)
            shutil.rmtree(reports, ignore_errors=True)
            spec = {
                "outdir": str(reports),
                "servers": [{"agent": s.agent.name, "url": s.url} for s in servers],
                "cases": [c for c in a.cases.split(",") if c],
                "exclude-cases": excluded,
                "exclude-agent-cases": {},
            }
            spec_path = a.workdir / "fuzzingclient.json"
            spec_path.write_text(json.dumps(spec, indent=2))
            log_path = a.workdir / "wstest.log"
            started = time.monotonic()
            with log_path.open("w") as log:
                proc = subprocess.Popen([str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)],
                                        cwd=a.workdir, stdout=log, stderr=subprocess.STDOUT)
                try:
                    rc = proc.wait(timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise SystemExit(f"the suite did not finish in {a.timeout:.0f} s; see {log_path}") from None
            elapsed = time.monotonic() - started
            if rc != 0 or not (reports / "index.json").exists():
                raise SystemExit(f"wstest failed (exit {rc}); see {log_path}")
            notes.append(f"The suite took {elapsed / 60:.1f} min for all servers.")
        finally:
            for server in servers:
                server.stop()
        for server in servers:
            counters = [line for line in server.output if line.startswith("frames:")]
            if counters:
                notes.append(f"`{server.agent.name}` {counters[-1]} (frames parsed by wsserve's fast path / "
                             "by the library).")
    meta_path = reports / "wsserve-run.json"
    if a.summarise_only and meta_path.exists():  # what the run that wrote these reports recorded
        meta = json.loads(meta_path.read_text())
        command = f"{meta['command']}` (summarised again with `{command}"
        excluded, notes = meta["excluded"], meta["notes"]
    elif not a.summarise_only:
        meta_path.write_text(json.dumps({"command": command, "excluded": excluded, "notes": notes}, indent=1))
    text = summarise(reports, command=command, excluded=excluded, notes=notes)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    print(f"wrote {a.out}; case reports in {reports}/index.html", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
