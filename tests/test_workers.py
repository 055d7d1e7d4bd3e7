"""``wsserve serve --workers N``: a supervisor, N processes on one port (SO_REUSEPORT).

Real processes on 127.0.0.1: the models are trained once (by the supervisor), new
connections spread over the workers, ``/metrics`` on any worker reports totals over
all of them with gauges labelled ``worker``, a worker that dies is restarted, SIGTERM
drains every worker and the supervisor exits 0, and a hot reload reaches every worker.
The shared two-worker server and the drain run on each WebSocket transport (``--transport
picows`` listens through the same SO_REUSEPORT HTTP front).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    TRANSPORTS,
    Conn,
    Metrics,
    RawHttp,
    ServerProcess,
    http_get,
    wait_until,
    wait_until_async,
)
from tests.support.process import ROOT, child_env

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only (SO_REUSEPORT)")

P = {"type": "predict", "model": "linear", "inputs": [[0.5]]}


def _worker_pids(server: ServerProcess) -> dict[str, int]:
    """``worker index -> pid``, from the supervisor's "worker N started (pid P)" lines (latest wins)."""
    return _worker_pids_in(server.stderr_text())


def _worker_pids_in(log: str) -> dict[str, int]:
    """``worker index -> pid`` from a supervisor's log (latest wins)."""
    return {i: int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log)}


def _workers_seen(server: ServerProcess) -> set[str]:
    """Workers that report themselves ready in ``/metrics``."""
    m = server.metrics()
    return {dict(labels)["worker"] for (name, labels), v in m.samples.items() if name == "wsserve_ready" and v == 1}


@pytest.fixture(scope="module", params=TRANSPORTS)
def two_workers(request: pytest.FixtureRequest, model_cache: Path):
    proc = ServerProcess("--workers", "2", cache_dir=model_cache, transport=request.param)
    yield proc
    proc.stop()


def test_the_models_are_trained_once_and_both_workers_serve(two_workers: ServerProcess) -> None:
    assert "(2 workers)" in two_workers.stdout_text()
    log = two_workers.stderr_text()
    # The trainer runs in the supervisor only; each worker loads the built-in repository.
    assert re.search(r"wsserve\.trainer: (loaded|trained) linear", log)
    assert not re.search(r"\[worker \d\] wsserve\.trainer", log)
    # each worker logs its own line (forwarded by the supervisor, possibly after the ready line)
    wait_until(lambda: two_workers.stderr_text().count("serving model 'linear' version 1") == 2, 20,
               what="both workers serving linear")
    wait_until(lambda: _workers_seen(two_workers) == {"0", "1"}, 20, what="both workers in /metrics")
    # Open HTTP connections are a gauge per worker like the others (the scrape's own connection is one).
    m = two_workers.metrics()
    assert {dict(labels)["worker"] for (name, labels) in m.samples if name == "wsserve_http_connections"} == {"0", "1"}
    assert m.sum("wsserve_http_connections") >= 1


async def test_connections_spread_over_the_workers_and_metrics_sum_over_them(two_workers: ServerProcess) -> None:
    before = two_workers.metrics().get("wsserve_requests_total", model="linear", type="predict", code="ok")
    conns = [await Conn.open(two_workers.url) for _ in range(24)]
    try:
        for i, c in enumerate(conns):
            assert (await c.request({**P, "id": i}))["type"] == "result"

        def spread() -> bool:
            m = two_workers.metrics()
            per = [m.get("wsserve_connections", worker=w) for w in ("0", "1")]
            return all(n > 0 for n in per) and sum(per) == 24

        await wait_until_async(spread, 20, what="24 connections over both workers", in_thread=True)

        def total() -> float:
            return two_workers.metrics().get("wsserve_requests_total", model="linear", type="predict", code="ok")

        await wait_until_async(lambda: total() - before == 24, 20, what="the total over both workers", in_thread=True)
    finally:
        for c in conns:
            await c.close()


async def test_triton_statistics_sum_over_the_workers(model_cache: Path, transport_name: str) -> None:
    """``GET /v2/models/linear/versions/1/stats`` on any worker: requests served by both workers.
    A server of its own: on the module's server, other tests' requests could still be on their way
    into a worker's snapshot (written twice a second) when ``before`` is read, and the exact
    difference below would never be reached."""
    two_workers = ServerProcess("--workers", "2", "--models", "linear", cache_dir=model_cache,
                                transport=transport_name)
    try:
        await _statistics_sum_over_the_workers(two_workers)
    finally:
        two_workers.stop()


async def _statistics_sum_over_the_workers(two_workers: ServerProcess) -> None:
    def stats() -> dict:
        status, _, body = http_get(f"http://127.0.0.1:{two_workers.port}/v2/models/linear/versions/1/stats")
        assert status == 200, body
        (stat,) = json.loads(body)["model_stats"]
        return stat

    before = stats()
    conns = [await Conn.open(two_workers.url) for _ in range(24)]
    try:
        for i, c in enumerate(conns):
            assert (await c.request({**P, "inputs": [[0.5], [1.5]], "id": i}))["type"] == "result"

        def counted() -> bool:
            after = stats()
            return (after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 24
                    and after["inference_count"] - before["inference_count"] == 48)

        def spread() -> bool:  # the 24 connections, still open, are on both workers
            m = two_workers.metrics()
            per = [m.get("wsserve_connections", worker=w) for w in ("0", "1")]
            return all(n > 0 for n in per) and sum(per) == 24

        await wait_until_async(spread, 20, what="24 connections over both workers", in_thread=True)
        await wait_until_async(counted, 20, what="24 requests of 2 rows in the merged statistics", in_thread=True)
    finally:
        for c in conns:
            await c.close()


async def test_picows_workers_serve_through_picows(model_cache: Path) -> None:
    """--workers 2 --transport picows: each worker's connections are picows's (its debug line
    for a new connection comes from both worker processes), and both serve."""
    server = ServerProcess("--workers", "2", "--transport", "picows", "--log-level", "debug", "--models", "linear",
                           cache_dir=model_cache)
    try:
        conns = [await Conn.open(server.url) for _ in range(16)]
        for i, c in enumerate(conns):
            assert (await c.request({**P, "id": i}))["type"] == "result"

        def picows_pids() -> set[str]:
            return set(re.findall(r"\[worker (\d)\][^\n]*wsserve\.picows\.library[^\n]*New connection accepted",
                                  server.stderr_text()))

        await wait_until_async(lambda: picows_pids() == {"0", "1"}, 20, what="picows connections in both workers")
        for c in conns:
            await c.close()
    finally:
        assert server.stop() == 0


async def test_admin_operations_are_refused_with_workers_and_say_why(two_workers: ServerProcess) -> None:
    """An unload on one connection would change one worker only: refused, and the model stays."""
    conn = await Conn.open(two_workers.url)
    try:
        for op in ("unload", "load", "reload"):
            reply = await conn.request({"type": op, "id": op, "model": "linear"})
            assert reply["type"] == "error" and reply["code"] == "forbidden", reply
            assert "--workers" in reply["message"] and "repository" in reply["message"]
            if op != "reload":  # the OIP repository extension: the same refusal, 403 with the same message
                with RawHttp(two_workers.port) as c:
                    answer = c.request("POST", f"/v2/repository/models/linear/{op}")
                assert (answer.status, json.loads(answer.body)) == (403, {"error": reply["message"]})
        assert (await conn.request({**P, "id": "still"}))["type"] == "result"
    finally:
        await conn.close()


async def test_a_worker_that_dies_is_restarted_and_its_counts_stay(model_cache: Path) -> None:
    server = ServerProcess("--workers", "2", cache_dir=model_cache)
    try:
        conns = [await Conn.open(server.url) for _ in range(8)]
        for i, c in enumerate(conns):
            assert (await c.request({**P, "id": i}))["type"] == "result"
        for c in conns:
            await c.close()

        def counted() -> float:
            return server.metrics().get("wsserve_requests_total", model="linear", type="predict", code="ok")

        def all_8_seen_by() -> str | None:
            """The worker whose scrape counts all 8: its own live values plus the other worker's
            last snapshot, so that snapshot is complete (a killed worker keeps what it last wrote)."""
            status, headers, body = http_get(server.http + "/metrics")
            assert status == 200
            n = Metrics.parse(body.decode()).get("wsserve_requests_total", model="linear", type="predict", code="ok")
            return headers.get("Wsserve-Worker") if n == 8 else None

        witness = await wait_until_async(all_8_seen_by, 20, what="8 requests counted", in_thread=True)
        pids = _worker_pids(server)
        assert set(pids) == {"0", "1"} and witness in pids
        index = "1" if witness == "0" else "0"
        victim = pids[index]
        os.kill(victim, signal.SIGKILL)
        await wait_until_async(lambda: "restarting it" in server.stderr_text(), 30, what="the restart log line")
        await wait_until_async(lambda: _worker_pids(server)[index] != victim, 30, what="a new worker")
        await wait_until_async(lambda: _workers_seen(server) == {"0", "1"}, 30, what="both workers ready", in_thread=True)
        conn = await Conn.open(server.url)
        assert (await conn.request({**P, "id": "after"}))["type"] == "result"
        await conn.close()
        # The dead worker's requests still count in the total.
        await wait_until_async(lambda: counted() >= 9, 20, what="the total kept the dead worker's counts", in_thread=True)
    finally:
        assert server.stop() == 0


def _restarts(server: ServerProcess) -> dict[str, float]:
    """``worker index -> wsserve_worker_restarts_total`` in one scrape (of whichever worker answers)."""
    m = server.metrics()
    return {dict(labels)["worker"]: v for (name, labels), v in m.samples.items() if name == "wsserve_worker_restarts_total"}


async def test_restarts_are_counted_per_worker_in_metrics(model_cache: Path) -> None:
    """The supervisor's restarts are on ``/metrics`` (any worker's), as Kubernetes'
    ``kube_pod_container_status_restarts_total``: 0 for each worker from the start, then 1
    for the worker that was killed and restarted, still 0 for the other; no restart pending."""
    server = ServerProcess("--workers", "2", "--models", "linear", cache_dir=model_cache)
    try:
        assert _restarts(server) == {"0": 0, "1": 0}
        pids = _worker_pids(server)
        os.kill(pids["1"], signal.SIGKILL)
        # Scrape only once the supervisor saw the death: until the kernel has torn the killed
        # worker down, a connection can still land in its listening socket and be reset.
        await wait_until_async(lambda: "restarting it" in server.stderr_text(), 30, what="the restart log line")
        await wait_until_async(lambda: _restarts(server) == {"0": 0, "1": 1}, 30,
                               what="one restart of worker 1 and none of worker 0", in_thread=True)
        await wait_until_async(lambda: _workers_seen(server) == {"0", "1"}, 30, what="both workers ready", in_thread=True)
        assert _worker_pids(server)["0"] == pids["0"]
        for _ in range(4):  # each scrape, whichever worker answers, merges the supervisor's figures
            m = await server.ametrics()
            assert m.value("wsserve_worker_restarts_total", worker="0") == 0
            assert m.value("wsserve_worker_restarts_total", worker="1") == 1
            assert m.value("wsserve_worker_restart_backoff_seconds", worker="0") == 0
            assert m.value("wsserve_worker_restart_backoff_seconds", worker="1") == 0
        for i in range(4):  # and the server still answers predicts, on new connections
            conn = await Conn.open(server.url)
            try:
                assert (await conn.request({**P, "id": i}))["type"] == "result"
            finally:
                await conn.close()
    finally:
        assert server.stop() == 0


def test_restart_delays_double_for_a_worker_that_keeps_dying() -> None:
    from wsserve.supervisor import RESTART_MAX_S, restart_delay

    assert [restart_delay(k) for k in range(1, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert restart_delay(0) == 0.0 and restart_delay(40) == RESTART_MAX_S


def test_the_restart_policy_gives_up_on_a_worker_that_never_boots() -> None:
    """The supervisor's decisions without processes or a clock: a worker that exits before its
    ready message MAX_BOOT_FAILURES times in a row makes it give up; until then it is restarted
    with the doubling delay; one ready start resets the count, and a death after ready is no
    boot failure however quick."""
    from wsserve.supervisor import MAX_BOOT_FAILURES, GiveUp, Restart, RestartPolicy

    assert MAX_BOOT_FAILURES == 5
    policy = RestartPolicy(max_boot_failures=3, stable_s=30.0)
    policy.started(0, now=0.0)
    policy.started(1, now=0.0)
    assert not policy.is_ready(1)
    policy.ready(1)
    assert policy.is_ready(1)
    assert policy.exited(1, now=5.0) == Restart(delay_s=0.0, boot_failures=0)  # crashed after ready
    policy.started(1, now=5.0)
    assert not policy.is_ready(1)
    assert policy.exited(1, now=6.0) == Restart(delay_s=0.5, boot_failures=1)
    policy.started(1, now=6.5)
    assert policy.exited(1, now=7.0) == Restart(delay_s=1.0, boot_failures=2)
    policy.started(1, now=8.0)
    policy.ready(1)  # it booted this time: the count starts again
    assert policy.exited(1, now=100.0) == Restart(delay_s=0.0, boot_failures=0)  # 92 s up: not quick
    policy.started(1, now=100.0)
    assert policy.exited(1, now=101.0) == Restart(delay_s=0.0, boot_failures=1)
    policy.started(1, now=101.0)
    assert policy.exited(1, now=102.0) == Restart(delay_s=0.5, boot_failures=2)
    policy.started(1, now=110.0)
    assert policy.exited(1, now=200.0) == GiveUp(boot_failures=3)  # slow boot failures count too
    # worker 0's count is its own: its first failure is its first
    assert policy.exited(0, now=1.0) == Restart(delay_s=0.0, boot_failures=1)
    with pytest.raises(ValueError, match="max_boot_failures"):
        RestartPolicy(max_boot_failures=0)


def test_the_restart_policy_stops_a_worker_that_does_not_boot_in_time() -> None:
    """The boot timeout, decided without processes or a clock: a start not ready ``boot_timeout_s``
    after it began gets Terminate, then Kill ``kill_grace_s`` later, each once; its death is a boot
    failure (however it ended) and MAX_BOOT_FAILURES of them in a row give up; a ready message after
    the timeout does not rescue the start; a ready worker, and a policy without a timeout, never
    time out.  The old policy had no boot timeout: a hung worker was waited for forever."""
    from wsserve.supervisor import GiveUp, Kill, Restart, RestartPolicy, Terminate

    policy = RestartPolicy(max_boot_failures=3, stable_s=30.0, boot_timeout_s=10.0, kill_grace_s=2.0)
    policy.started(0, now=100.0)
    assert policy.boot_deadline(0) == 110.0
    assert policy.boot_overdue(0, now=109.9) is None
    assert policy.boot_overdue(0, now=110.0) == Terminate(index=0, timeout_s=10.0)
    assert policy.boot_timed_out(0) and policy.boot_deadline(0) == 112.0
    assert policy.boot_overdue(0, now=111.0) is None  # answered once; the grace runs
    policy.ready(0)  # too late: it is being stopped
    assert not policy.is_ready(0)
    assert policy.boot_overdue(0, now=112.0) == Kill(index=0, grace_s=2.0)
    assert policy.boot_overdue(0, now=500.0) is None and policy.boot_deadline(0) is None
    assert policy.exited(0, now=112.5) == Restart(delay_s=0.0, boot_failures=1, boot_timed_out=True)
    # the next start is timed from its own start; one that exits after its SIGTERM is no different
    policy.started(0, now=113.0)
    assert not policy.boot_timed_out(0)
    assert policy.boot_overdue(0, now=122.0) is None
    assert policy.boot_overdue(0, now=123.5) == Terminate(index=0, timeout_s=10.0)
    assert policy.exited(0, now=124.0) == Restart(delay_s=0.5, boot_failures=2, boot_timed_out=True)
    policy.started(0, now=125.0)
    assert policy.boot_overdue(0, now=135.0) == Terminate(index=0, timeout_s=10.0)
    assert policy.boot_overdue(0, now=137.0) == Kill(index=0, grace_s=2.0)
    assert policy.exited(0, now=137.1) == GiveUp(boot_failures=3, boot_timed_out=True)
    # a worker ready in time never times out, however long it then runs
    policy.started(1, now=0.0)
    policy.ready(1)
    assert policy.boot_overdue(1, now=10_000.0) is None and policy.boot_deadline(1) is None
    # a timed-out start counts with the crashes before it; a start ready in time resets the count
    policy.started(2, now=0.0)
    assert policy.exited(2, now=1.0) == Restart(delay_s=0.0, boot_failures=1)
    policy.started(2, now=1.0)
    assert policy.boot_overdue(2, now=11.0) == Terminate(index=2, timeout_s=10.0)
    assert policy.exited(2, now=11.0) == Restart(delay_s=0.5, boot_failures=2, boot_timed_out=True)
    policy.started(2, now=12.0)
    policy.ready(2)
    assert policy.exited(2, now=13.0) == Restart(delay_s=1.0, boot_failures=0)
    # no boot timeout (--worker-boot-timeout-s off): never overdue
    off = RestartPolicy()
    off.started(0, now=0.0)
    assert off.boot_overdue(0, now=1e9) is None and off.boot_deadline(0) is None
    for bad in ({"boot_timeout_s": 0.0}, {"boot_timeout_s": -1.0}, {"kill_grace_s": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RestartPolicy(**bad)


class _FakeProc:
    """A worker process as the supervisor sees it; ``on_is_alive`` runs at the next ``is_alive``
    check (what the process does just before the supervisor looks)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.alive, self.exitcode = pid, True, None
        self.on_is_alive: Any = None

    def is_alive(self) -> bool:
        hook, self.on_is_alive = self.on_is_alive, None
        if hook is not None:
            hook()
        return self.alive

    def die(self, status: int) -> None:
        self.alive, self.exitcode = False, status

    def join(self, timeout: float | None = None) -> None:
        pass

    def kill(self) -> None:
        self.die(-9)


class _FakePipe:
    """The supervisor's end of a worker's ready pipe."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def poll(self) -> bool:
        return bool(self.messages)

    def recv(self) -> Any:
        return self.messages.pop(0)

    def close(self) -> None:
        pass


async def _supervise_fakes(monkeypatch: Any, caplog: Any, script: Any, **policy: Any) -> tuple[int, list[int], str]:
    """Run the supervisor of 2 workers (``max_boot_failures=1``, and ``policy``'s other
    :class:`RestartPolicy` settings) over fake processes, each start scripted by ``script(index,
    nth start of that index, proc, pipe)``; return its exit status, the indexes started in order and
    its log.  A signal the supervisor sends one worker runs that fake's ``on_signal(sig)`` if it
    has one (else the signal kills it)."""
    from wsserve import supervisor
    from wsserve.config import ServerConfig

    starts: list[int] = []

    class Workers(supervisor._Workers):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.policy = supervisor.RestartPolicy(max_boot_failures=1, **policy)

        def start(self, index: int) -> None:  # the real one spawns a process
            starts.append(index)
            proc, pipe = _FakeProc(10_000 + len(starts)), _FakePipe()
            self.policy.started(index, asyncio.get_running_loop().time())
            self.procs[index], self.pipes[index] = proc, pipe
            script(index, starts.count(index), proc, pipe)

        def signal_all(self, sig: int) -> None:
            for proc in self.procs.values():
                if proc.alive:
                    proc.die(-sig)

        def signal(self, index: int, sig: int) -> None:  # the real one calls os.kill
            proc = self.procs[index]
            if proc.alive:
                handler = getattr(proc, "on_signal", None)
                handler(sig) if handler is not None else proc.die(-sig)

    monkeypatch.setattr(supervisor, "_Workers", Workers)
    with caplog.at_level("INFO", logger="wsserve.supervisor"):
        status = await supervisor._supervise(ServerConfig(host="127.0.0.1", port=0, workers=2), None, 20, frozenset())
    return status, starts, "\n".join(r.getMessage() for r in caplog.records) + "\n"


def _ready_then_dead(proc: _FakeProc, pipe: _FakePipe, index: int) -> None:
    """The race: the worker sends its ready message and dies after the supervisor read its (empty)
    pipe, before it checks that the worker is alive."""
    proc.on_is_alive = lambda: (pipe.messages.append(("ready", index, proc.pid)), proc.die(3))


async def test_a_ready_message_sent_just_before_the_death_is_no_boot_failure(monkeypatch, caplog) -> None:
    """The supervisor's watch loop with fake processes (the race cannot be forced with real ones):
    a restarted worker 1 sends its ready message and dies between the supervisor's read of its pipe
    and its liveness check.  It was ready: its death is restarted as any ready worker's, not counted
    as a boot failure (here the first would stop the server: max_boot_failures=1).  Its third start
    dies before it is ready: that one stops the server.  The race's death was a boot failure."""

    def script(index: int, nth: int, proc: _FakeProc, pipe: _FakePipe) -> None:
        if index == 0 or nth == 1:  # ready at once; worker 1's first start is then killed (status -9)
            pipe.messages.append(("ready", index, proc.pid))
            if index == 1:
                proc.on_is_alive = lambda: proc.die(-9)
        elif nth == 2:
            _ready_then_dead(proc, pipe, index)
        else:  # dies before it is ready
            proc.on_is_alive = lambda: proc.die(3)

    status, starts, log = await _supervise_fakes(monkeypatch, caplog, script)
    assert status == 1 and starts.count(1) == 3, log
    assert re.search(r"worker 1 \(pid \d+\) exited with status 3: restarting it in 0.5 s\n", log), log
    assert re.search(r"worker 1 \(pid \d+\) failed to boot 1 times in a row \(last exit: status 3\)", log), log


async def test_a_ready_message_sent_just_before_the_death_does_not_fail_the_start(monkeypatch, caplog) -> None:
    """The same race while the server starts: worker 1 was ready, so the start goes on (the ready
    line) and its death is restarted; its second start dies before it is ready and stops the
    server.  It failed the start ("exited with status 3 while starting")."""

    def script(index: int, nth: int, proc: _FakeProc, pipe: _FakePipe) -> None:
        if index == 0:
            pipe.messages.append(("ready", index, proc.pid))
        elif nth == 1:
            _ready_then_dead(proc, pipe, index)
        else:
            proc.on_is_alive = lambda: proc.die(3)

    status, starts, log = await _supervise_fakes(monkeypatch, caplog, script)
    assert status == 1 and starts.count(1) == 2 and "while starting" not in log, log
    assert re.search(r"worker 1 \(pid \d+\) exited with status 3: restarting it now\n", log), log


async def test_a_ready_message_after_the_boot_timeout_does_not_save_the_start(monkeypatch, caplog, capsys) -> None:
    """Fake processes, a real clock (tiny timeouts): worker 1 never says it is ready until its boot
    timeout's SIGTERM, then sends its ready message late and does not exit.  The supervisor does not
    take it as ready (no ready line): it kills it after the grace, and its death fails the start,
    naming the timeout.  The old supervisor had no boot timeout and waited for it forever."""
    signals: list[int] = []  # what worker 1 was sent

    def script(index: int, nth: int, proc: _FakeProc, pipe: _FakePipe) -> None:
        if index == 0:
            pipe.messages.append(("ready", index, proc.pid))
            return
        def on_signal(sig: int) -> None:
            signals.append(sig)
            if sig == signal.SIGTERM:
                pipe.messages.append(("ready", index, proc.pid))  # too late
            else:
                proc.die(-sig)

        proc.on_signal = on_signal  # type: ignore[attr-defined]

    async with asyncio.timeout(60):  # a guard against the old endless wait, not a timing bound
        status, starts, log = await _supervise_fakes(monkeypatch, caplog, script, boot_timeout_s=0.05,
                                                     kill_grace_s=0.05)
    assert status == 1 and starts == [0, 1], log
    assert re.search(r"worker 1 \(pid \d+\) was not ready within 0.05 s of its start \(--worker-boot-timeout-s\): "
                     r"stopping it \(SIGTERM, SIGKILL in 0.05 s\)\n", log), log
    assert re.search(r"worker 1 \(pid \d+\) still running 0.05 s after its SIGTERM \(boot timeout\): killing it\n",
                     log), log
    assert "worker 1 exited with status -9 while starting (it was not ready within 0.05 s: --worker-boot-timeout-s)" \
        in log, log
    assert signals == [signal.SIGTERM, signal.SIGKILL]
    assert "ready on" not in capsys.readouterr().out


async def test_a_worker_that_keeps_dying_is_restarted_with_backoff(model_cache: Path) -> None:
    """A worker that dies again soon after each restart (a crash loop) is not restarted in a
    tight loop: the supervisor waits longer each time (its log line says how long)."""
    server = ServerProcess("--workers", "2", cache_dir=model_cache)
    try:
        for _ in range(3):
            victim = _worker_pids(server)["1"]
            os.kill(victim, signal.SIGKILL)
            await wait_until_async(lambda v=victim: _worker_pids(server)["1"] != v, 30, what="worker 1 restarted")
        delays = re.findall(r"worker 1 \(pid \d+\) exited with status -9: restarting it (now|in [\d.]+ s)",
                            server.stderr_text())
        assert delays == ["now", "in 0.5 s", "in 1.0 s"], server.stderr_text()[-2000:]
        await wait_until_async(lambda: _workers_seen(server) == {"0", "1"}, 30, what="both workers ready", in_thread=True)
        # each restart counted, whatever its delay; none pending now
        await wait_until_async(lambda: _restarts(server) == {"0": 0, "1": 3}, 30, what="3 restarts of worker 1",
                               in_thread=True)
        assert server.metrics().value("wsserve_worker_restart_backoff_seconds", worker="1") == 0
    finally:
        assert server.stop() == 0


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


def test_workers_do_not_outlive_a_killed_supervisor(model_cache: Path) -> None:
    """A supervisor killed outright (SIGKILL, the OOM killer) cannot signal its workers; they must
    not stay behind as orphans serving the port (a new supervisor would share it with them)."""
    server = ServerProcess("--workers", "2", cache_dir=model_cache)
    pids = list(_worker_pids(server).values())
    try:
        assert len(pids) == 2 and all(_running(p) for p in pids)
        server.kill()
        wait_until(lambda: not any(_running(p) for p in pids), 30, what="the orphaned workers to exit")
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_zero(model_cache: Path, transport_name: str) -> None:
    server = ServerProcess("--workers", "2", "--drain-timeout-s", "20", cache_dir=model_cache, transport=transport_name)
    conns = [await Conn.open(server.url) for _ in range(6)]
    for i, c in enumerate(conns):  # a long generation on each: some land on each worker
        await c.send({"type": "generate", "id": i, "model": "charlm", "prompt": "The ", "max_tokens": 3000})
    for c in conns:
        await c.recv()  # streaming
    server.signal(signal.SIGTERM)
    for i, c in enumerate(conns):
        frames, end = await c.until_terminal(i, timeout=60)
        assert any(f.get("type") == "draining" for f in c.frames), "the worker said it is draining"
        assert end["type"] == "done" and end["reason"] == "length" and end["tokens"] == 3000, end
    assert await asyncio.to_thread(server.wait, 60) == 0
    assert "stopped" in server.stderr_text()


@pytest.mark.parametrize("value", ["0", "-1", "65", "two"])
def test_bad_worker_counts_are_clear_errors(value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "wsserve", "serve", "--workers", value], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--workers" in proc.stderr and "ws://" not in proc.stdout


def test_a_port_another_server_listens_on_is_refused(two_workers: ServerProcess, model_cache: Path) -> None:
    """A second ``--workers`` server on a port the first listens on (both SO_REUSEPORT, same user)
    started and shared the port, splitting new connections between two servers; it must fail
    as a single process does, naming the address, with no worker started."""
    proc = subprocess.run([sys.executable, "-m", "wsserve", "serve", "--workers", "2", "--models", "linear",
                           "--port", str(two_workers.port), "--cache-dir", str(model_cache)], cwd=ROOT,
                          env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{two_workers.port}" in proc.stderr
    assert "ready" not in proc.stdout and "worker 0 started" not in proc.stderr


async def test_hot_reload_reaches_every_worker(model_cache: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model = repo / "double"
    (model / "1").mkdir(parents=True)
    (model / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    code = "import numpy as np\nclass Model:\n    def __init__(self, d):\n        self.k = {k}\n    def predict(self, x):\n        return x * self.k\n"
    (model / "1" / "model.py").write_text(code.format(k=2.0))
    server = ServerProcess("--workers", "2", "--reload", "--model-repository", str(repo), "--models", "linear",
                           cache_dir=model_cache)
    try:
        staging = model / ".2.tmp"
        staging.mkdir()
        (staging / "model.py").write_text(code.format(k=3.0))
        staging.rename(model / "2")

        async def every_connection_sees_version_2() -> bool:
            for i in range(12):  # connections land on both workers
                c = await Conn.open(server.url)
                try:
                    reply = await c.request({"type": "predict", "id": i, "model": "double", "inputs": [[1.0]]})
                finally:
                    await c.close()
                if reply.get("version") != "2" or reply["outputs"] != [[3.0]]:
                    return False
            return True

        await wait_until_async(every_connection_sees_version_2, 30, what="version 2 on every worker")
        log = await asyncio.to_thread(server.wait_logged, "serving model 'double' version 2", count=2)
        assert log.count("serving model 'double' version 2") == 2
        shutil.rmtree(model / "2")
    finally:
        server.stop()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_restarts_leave_no_growing_files_or_descriptors(model_cache: Path, tmp_path: Path) -> None:
    """A worker that keeps dying (a crash loop, restarted every 30 s at worst, for days) must not
    leave something behind per death: the supervisor's open descriptors and the files in the
    shared metrics directory (which every scrape reads whole) stay bounded, and every dead
    worker's counts stay in the totals."""
    server = ServerProcess("--workers", "2", "--models", "linear", cache_dir=model_cache,
                           env={"TMPDIR": str(tmp_path)})
    try:
        (metrics_dir,) = tmp_path.glob("wsserve-metrics-*")
        fds_steady = None  # after the first restart: what restarting itself opens once (lazily) is in it
        counted_by_the_dead = 0
        for death in range(1, 5):
            # a request on each new connection until worker 1 has served one (its count must survive)
            before = server.metrics().get("wsserve_requests_total", model="linear", type="predict", code="ok")

            async def worker_1_served(n: int = int(before)) -> bool:
                conn = await Conn.open(server.url)
                try:
                    assert (await conn.request({**P, "id": n}))["type"] == "result"
                finally:
                    await conn.close()
                snap = metrics_dir / "worker-1.json"
                try:
                    counts = json.loads(snap.read_text())["counters"]["requests"]
                except (OSError, ValueError):
                    return False
                return sum(counts.values()) > 0

            await wait_until_async(worker_1_served, 30, what="a request counted by worker 1")
            victim = _worker_pids(server)["1"]
            counted_by_the_dead += sum(json.loads((metrics_dir / "worker-1.json").read_text())["counters"]["requests"].values())
            os.kill(victim, signal.SIGKILL)
            await wait_until_async(lambda v=victim: _worker_pids(server)["1"] != v, 30, what="worker 1 restarted")
            await wait_until_async(lambda: _workers_seen(server) == {"0", "1"}, 30, what="both workers ready",
                                   in_thread=True)
            files = sorted(p.name for p in metrics_dir.iterdir())
            # a snapshot per worker, the dead workers' fold and the supervisor's figures
            assert len(files) <= 4, f"after {death} deaths: {files}"
            if fds_steady is None:
                fds_steady = _fds(server.proc.pid)
        # a dead worker's pipes are closed once the supervisor has reaped it: wait for that, not for a time
        await wait_until_async(lambda: _fds(server.proc.pid) <= fds_steady, 30,
                               what=f"the supervisor's descriptors back to {fds_steady} (none kept per dead worker)")
        # what each dead worker 1 had counted (its last snapshot) stays in the totals
        total = server.metrics().get("wsserve_requests_total", model="linear", type="predict", code="ok")
        assert total >= counted_by_the_dead >= 4
    finally:
        assert server.stop() == 0


def test_dead_snapshots_fold_into_one() -> None:
    """The supervisor's fold of dead workers' snapshots: counters, histograms and model
    statistics summed, gauges dropped, the inputs left as they were."""
    from wsserve.metrics import fold_dead_snapshot

    def snap(n: int) -> dict:
        return {"worker": 1, "pid": 10 + n, "alive": True, "counters": {"requests": {"linear\x00predict\x00ok": n}},
                "histograms": {"duration": {"linear\x00predict": [n, 0, 0.5 * n]}},
                "model_stats": {"linear\x001": {"ok": n, "last": 100.0 + n, "sizes": {"1": [n, 0.1 * n]}}},
                "gauges": {"connections": 3}}

    first = snap(1)
    once = fold_dead_snapshot(None, first)
    twice = fold_dead_snapshot(once, snap(2))
    assert first == snap(1) and once == fold_dead_snapshot(None, snap(1))
    assert twice["alive"] is False and twice["gauges"] == {}
    assert twice["counters"] == {"requests": {"linear\x00predict\x00ok": 3}}
    assert twice["histograms"] == {"duration": {"linear\x00predict": [3, 0, 1.5]}}
    stats = twice["model_stats"]["linear\x001"]
    assert stats["ok"] == 3 and stats["last"] == 102.0 and stats["sizes"] == {"1": [3, pytest.approx(0.3)]}


def _render(peers: Path, worker: int | None) -> Metrics:
    """``/metrics`` of a ``Metrics`` (of worker ``worker``, merging the snapshots in ``peers``), parsed."""
    from wsserve.metrics import Metrics as ServerMetrics

    state = {"messages": 0, "connections": 0, "inflight": 0, "queues": {}, "tasks": 1, "ready": 1}
    metrics = ServerMetrics(version="test", read_state=lambda: state, worker=worker,
                            peers_dir=peers if worker is not None else None)
    return Metrics.parse(metrics.render().decode())


def test_the_supervisor_snapshot_is_merged_into_metrics(tmp_path: Path) -> None:
    """The supervisor's figures (one entry per worker index), written next to the workers'
    snapshots, become a counter and a gauge labelled ``worker`` on any worker's ``/metrics``
    without touching the workers' own series; one process (no supervisor) has neither."""
    from wsserve.metrics import supervisor_snapshot

    snap = supervisor_snapshot({0: 0, 1: 4, 2: 1}, {0: 0.0, 1: 2.0, 2: 0.0}, pid=123)
    assert snap == supervisor_snapshot({2: 1, 1: 4, 0: 0}, {2: 0.0, 1: 2.0, 0: 0.0}, pid=123)  # order-free
    assert json.loads(json.dumps(snap)) == snap and snap["alive"] is False
    (tmp_path / "supervisor.json").write_text(json.dumps(snap))
    m = _render(tmp_path, worker=0)
    assert {dict(k)["worker"]: v for (n, k), v in m.samples.items() if n == "wsserve_worker_restarts_total"} == \
        {"0": 0, "1": 4, "2": 1}
    assert {dict(k)["worker"]: v for (n, k), v in m.samples.items()
            if n == "wsserve_worker_restart_backoff_seconds"} == {"0": 0, "1": 2.0, "2": 0}
    # the supervisor is no worker: only this worker's own gauges
    assert {dict(k)["worker"] for (n, k) in m.samples if n == "wsserve_ready"} == {"0"}
    # one process: no supervisor, no such series
    single = _render(tmp_path, worker=None)
    assert not [n for (n, _) in single.samples if n.startswith("wsserve_worker_")]


def test_the_supervisor_writes_a_pending_restart_and_keeps_one_file(tmp_path: Path) -> None:
    """The supervisor's bookkeeping, without processes: a dead worker waiting 2 s shows that
    backoff on ``/metrics``; its restart (counted) sets it back to 0; and however many restarts,
    one ``supervisor.json`` with one entry per worker, no temporary file left."""
    from wsserve.config import ServerConfig
    from wsserve.supervisor import _Workers

    workers = _Workers(ServerConfig(workers=2), None, tmp_path, 20, frozenset())
    workers.start = lambda index: None  # type: ignore[method-assign]  # no process: bookkeeping only
    workers.write_metrics()
    m = _render(tmp_path, worker=0)
    assert m.value("wsserve_worker_restarts_total", worker="1") == 0
    assert m.value("wsserve_worker_restart_backoff_seconds", worker="1") == 0
    for n in range(1, 6):
        workers.schedule_restart(1, at=100.0 + n, delay=2.0)
        workers.write_metrics()
        assert _render(tmp_path, worker=0).value("wsserve_worker_restart_backoff_seconds", worker="1") == 2.0
        workers.restart(1)
        workers.write_metrics()
    m = _render(tmp_path, worker=0)
    assert m.value("wsserve_worker_restarts_total", worker="1") == 5
    assert m.value("wsserve_worker_restarts_total", worker="0") == 0
    assert m.value("wsserve_worker_restart_backoff_seconds", worker="1") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["supervisor.json"]
    assert set(json.loads((tmp_path / "supervisor.json").read_text())["counters"]["worker_restarts"]) == {"0", "1"}


# -- gRPC (--grpc-port) under --workers -----------------------------------------------------------

#: The supervisor's log line naming the gRPC port its workers share (``--grpc-port 0``: a free one).
GRPC_SHARED = re.compile(r"wsserve\.supervisor: gRPC \(Open Inference Protocol\) on 127\.0\.0\.1:(\d+), "
                         r"shared by the 2 workers")
#: /proc/net/tcp states: a listening socket, an established connection.
LISTEN, ESTABLISHED = "0A", "01"


def _tcp_inodes(port: int, state: str) -> set[str]:
    """Inodes of this network namespace's TCP sockets (IPv4 and IPv6) whose *local* port is ``port``
    and whose state is ``state``: a server's listeners, or the server side of its connections."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def _owners(inodes: set[str], pids: list[int]) -> set[int]:
    """Those of ``pids`` that hold an open descriptor on a socket of ``inodes``."""
    links = {f"socket:[{inode}]" for inode in inodes}
    owners = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # a descriptor closed meanwhile
                if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                    owners.add(pid)
    return owners


@pytest.fixture(scope="module")
def grpc_workers(model_cache: Path):
    """``--workers 2 --grpc-port 0``: the server, its gRPC port (from the supervisor's log) and its
    workers' pids."""
    pytest.importorskip("tritonclient.grpc")  # the grpc extra
    proc = ServerProcess("--workers", "2", "--grpc-port", "0", "--models", "linear", cache_dir=model_cache)
    try:
        found = wait_until(lambda: GRPC_SHARED.search(proc.stderr_text()), 20, what="the supervisor's gRPC line")
        pids = _worker_pids(proc)
        assert set(pids) == {"0", "1"}
        yield proc, int(found[1]), sorted(pids.values())
    finally:
        proc.stop()


def test_the_grpc_port_is_shared_by_every_worker_and_answers_triton_clients(grpc_workers) -> None:
    """``--grpc-port 0`` under ``--workers 2``: one free port, which both workers listen on
    (SO_REUSEPORT); Triton's gRPC client, over fresh channels (each its own HTTP/2 connection),
    gets health and inference answers from both workers, ``ModelStatistics`` on any worker sums
    over both, as the HTTP statistics do, and a repository load is refused on each, as over HTTP."""
    import numpy as np
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    proc, port, pids = grpc_workers
    assert port != proc.port
    assert _owners(_tcp_inodes(port, LISTEN), pids) == set(pids), "both workers listen on the gRPC port"
    log = proc.stderr_text()
    assert all(f"[worker {i}] wsserve.server: gRPC (Open Inference Protocol) on 127.0.0.1:{port}" in log for i in "01")
    x = np.array([[0.5], [1.5], [-2.0]])
    clients: list[Any] = []
    outputs = []
    try:
        # Connections, not RPCs, are spread: a new channel each time (its own subchannel pool, so
        # grpc does not reuse the previous channel's connection), until both workers hold one.
        # 2 workers and 32 connections: all on one worker has odds of 2^-31.
        for _ in range(32):
            client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}",
                                                 channel_args=[("grpc.use_local_subchannel_pool", 1)])
            clients.append(client)
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("linear")
            inp = tgrpc.InferInput("input", [3, 1], "FP64")
            inp.set_data_from_numpy(x)
            outputs.append(client.infer("linear", [inp]).as_numpy("output"))
            if _owners(_tcp_inodes(port, ESTABLISHED), pids) == set(pids):
                break
        assert _owners(_tcp_inodes(port, ESTABLISHED), pids) == set(pids), \
            f"{len(clients)} gRPC connections, all answered by one worker"
        assert all(np.array_equal(out, outputs[0]) for out in outputs) and outputs[0].shape == (3, 1)

        def merged(client: Any) -> bool:
            (stat,) = client.get_inference_statistics("linear", "1").model_stats
            return stat.inference_stats.success.count >= len(outputs) and stat.inference_count >= 3 * len(outputs)

        # each worker's statistics count the other's requests too (its snapshot, written twice a second)
        for client in clients:
            wait_until(lambda c=client: merged(c), 20, what="the gRPC statistics summed over both workers")
        # the repository operations are refused on every worker, as over HTTP (403) and the WebSocket:
        # each worker has its own models; the index is the answering worker's
        for client in clients:
            with pytest.raises(InferenceServerException) as refused:
                client.load_model("linear")
            assert refused.value.status() == "StatusCode.PERMISSION_DENIED" and "--workers" in refused.value.message()
            index = client.get_model_repository_index().models
            assert [(m.name, m.version, m.state) for m in index] == [("linear", "1", "READY")]
    finally:
        for client in clients:
            client.close()


def test_a_grpc_port_another_server_listens_on_is_refused(grpc_workers, model_cache: Path) -> None:
    """The workers' gRPC listeners have SO_REUSEPORT: a second ``--workers`` server (same user,
    SO_REUSEPORT too) given that port must not share it, nor may one process (which binds without
    SO_REUSEPORT); both fail naming the gRPC port, the second supervisor before starting a worker."""
    _, port, _ = grpc_workers
    common = ["--models", "linear", "--cache-dir", str(model_cache), "--grpc-port", str(port)]
    for extra in (["--workers", "2"], []):
        run = subprocess.run([sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0",
                              *extra, *common], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 1, run.stderr[-2000:]
        assert f"gRPC port {port}:" in run.stderr and "cannot listen" in run.stderr, run.stderr[-2000:]
        assert "ready" not in run.stdout and "worker 0 started" not in run.stderr


def test_a_worker_that_dies_while_starting_fails_the_start_and_stops_the_others(model_cache: Path,
                                                                                 tmp_path: Path) -> None:
    """One worker dies while loading its models (a model whose load exits worker 1's process): the
    supervisor says which and with what status, stops the other worker and exits 1.  It raised
    EOFError reading the dead worker's closed pipe, then hung waiting for the other worker."""
    model = tmp_path / "repo" / "dies_in_worker_1"
    (model / "1").mkdir(parents=True)
    (model / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    (model / "1" / "model.py").write_text(
        "import multiprocessing, os\n"
        "class Model:\n"
        "    def __init__(self, d):\n"
        "        if multiprocessing.current_process().name == 'wsserve-worker-1':\n"
        "            os._exit(3)\n"
        "    def predict(self, x):\n"
        "        return x\n")
    run = subprocess.run([sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0",
                          "--workers", "2", "--models", "linear", "--model-repository", str(model.parent),
                          "--cache-dir", str(model_cache)], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "worker 1 exited with status 3 while starting" in run.stderr, run.stderr[-3000:]
    assert "EOFError" not in run.stderr and "ready" not in run.stdout
    pids = _worker_pids_in(run.stderr)
    assert set(pids) == {"0", "1"} and not any(_running(pid) for pid in pids.values())


def test_a_worker_that_never_boots_again_stops_the_server_with_a_failure(model_cache: Path,
                                                                          tmp_path: Path) -> None:
    """Once started, a worker whose restarts all die before they are ready (here a model whose
    load exits the process once a file exists) is not restarted forever: after MAX_BOOT_FAILURES
    such exits in a row the supervisor names the worker, its last exit and the count, drains the
    other worker and exits 1, so systemd or Kubernetes see the failure.  It restarted it with
    backoff forever."""
    from wsserve.supervisor import MAX_BOOT_FAILURES

    broken = tmp_path / "broken"
    model = tmp_path / "repo" / "dies_when_broken"
    (model / "1").mkdir(parents=True)
    (model / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    (model / "1" / "model.py").write_text(
        "import os\n"
        "class Model:\n"
        "    def __init__(self, d):\n"
        f"        if os.path.exists({str(broken)!r}):\n"
        "            os._exit(3)\n"
        "    def predict(self, x):\n"
        "        return x\n")
    server = ServerProcess("--workers", "2", "--models", "linear", "--model-repository", str(model.parent),
                           cache_dir=model_cache)
    try:
        pids = _worker_pids(server)
        broken.touch()
        os.kill(pids["1"], signal.SIGKILL)
        assert server.wait(300) == 1, server.stderr_text()[-3000:]
    finally:
        server.stop()
    # its last line, read through the pipe after the exit
    wait_until(lambda: "wsserve.supervisor: stopped" in server.stderr_text(), 30, what="the supervisor's last line")
    log = server.stderr_text()
    assert re.search(rf"worker 1 \(pid \d+\) failed to boot {MAX_BOOT_FAILURES} times in a row "
                     r"\(last exit: status 3\): stopping the server", log), log[-3000:]
    # the first death (a ready worker) and every boot failure but the last were restarted
    restarts = re.findall(r"worker 1 \(pid \d+\) exited with status (?:-9|3): restarting it [^\n]*", log)
    assert len(restarts) == MAX_BOOT_FAILURES, restarts
    assert "status -9" in restarts[0] and "boot failure" not in restarts[0]
    assert [int(n) for n in re.findall(r"boot failure (\d) of 5 in a row", log)] == list(range(1, MAX_BOOT_FAILURES))
    # worker 0 drained as on SIGTERM, and nothing is left running
    assert "[worker 0] wsserve.server: received SIGTERM: draining" in log, log[-3000:]
    assert not any(_running(pid) for pid in _worker_pids_in(log).values())


def test_a_restarted_worker_serves_the_grpc_port_again(model_cache: Path) -> None:
    """A worker killed outright is restarted and its successor binds the gRPC port beside the
    worker still listening on it (SO_REUSEPORT), so both serve gRPC again."""
    pytest.importorskip("tritonclient.grpc")
    server = ServerProcess("--workers", "2", "--grpc-port", "0", "--models", "linear", cache_dir=model_cache)
    try:
        port = int(wait_until(lambda: GRPC_SHARED.search(server.stderr_text()), 20, what="the gRPC line")[1])
        victim = _worker_pids(server)["1"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _worker_pids(server)["1"] != victim, 30, what="worker 1 restarted")
        wait_until(lambda: server.stderr_text().count("[worker 1] wsserve.server: gRPC (Open Inference Protocol)") == 2,
                   30, what="the new worker 1 serving gRPC")
        pids = sorted(_worker_pids(server).values())
        assert victim not in pids
        assert _owners(_tcp_inodes(port, LISTEN), pids) == set(pids)
    finally:
        assert server.stop() == 0


# -- --worker-boot-timeout-s: a worker that hangs while starting -----------------------------------

#: A model.py whose load hangs where no load timeout reaches (when ``{condition}`` holds): a C call
#: made through ``ctypes.PyDLL`` keeps the GIL while it waits (``pause()``), as a backend deadlocked
#: holding the GIL does, so the worker's event loop (and the load timeout it runs) never runs again.
#: Such a worker neither says it is ready nor exits; SIGTERM cannot run its Python handler either.
_HANGS_WHILE_LOADING = (
    "import ctypes, multiprocessing, os\n"
    "class Model:\n"
    "    def __init__(self, d):\n"
    "        if {condition}:\n"
    "            libc = ctypes.PyDLL(None)\n"
    "            while True:\n"
    "                libc.pause()\n"
    "    def predict(self, x):\n"
    "        return x\n")
#: Small timeouts so the tests run fast; the boot timeout must exceed the load timeout.
_BOOT_FLAGS = ("--model-load-timeout-s", "1", "--worker-boot-timeout-s", "4")


def _hanging_repository(root: Path, condition: str) -> Path:
    """A model repository of one model.py model whose load hangs when ``condition`` holds."""
    model = root / "repo" / "hangs"
    (model / "1").mkdir(parents=True)
    (model / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    (model / "1" / "model.py").write_text(_HANGS_WHILE_LOADING.format(condition=condition))
    return model.parent


def _boot_timeouts(server: ServerProcess) -> dict[str, float]:
    """``worker index -> wsserve_worker_boot_timeouts_total`` in one scrape."""
    m = server.metrics()
    return {dict(labels)["worker"]: v for (name, labels), v in m.samples.items()
            if name == "wsserve_worker_boot_timeouts_total"}


def test_a_worker_that_hangs_while_the_server_starts_is_killed_and_fails_the_start(model_cache: Path,
                                                                                    tmp_path: Path) -> None:
    """Worker 1 hangs loading its models (the GIL held: its load timeout cannot fire): past
    --worker-boot-timeout-s the supervisor names it and the timeout, stops it (SIGTERM, then
    SIGKILL), and its death fails the start as a crash does: the other worker is drained and the
    supervisor exits 1, leaving nothing running.  It waited for the ready message forever."""
    repo = _hanging_repository(tmp_path, "multiprocessing.current_process().name == 'wsserve-worker-1'")
    run = subprocess.run([sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0",
                          "--workers", "2", "--models", "linear", "--model-repository", str(repo), *_BOOT_FLAGS,
                          "--cache-dir", str(model_cache)], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert re.search(r"worker 1 \(pid \d+\) was not ready within 4 s of its start \(--worker-boot-timeout-s\): "
                     r"stopping it \(SIGTERM, SIGKILL in 5 s\)", run.stderr), run.stderr[-3000:]
    assert re.search(r"worker 1 exited with status -?\d+ while starting \(it was not ready within 4 s: "
                     r"--worker-boot-timeout-s\)", run.stderr), run.stderr[-3000:]
    assert "ready" not in run.stdout and "worker 0 (pid" not in run.stderr
    assert "[worker 0] wsserve.server: received SIGTERM: draining" in run.stderr, run.stderr[-3000:]
    assert "wsserve.supervisor: stopped" in run.stderr
    pids = _worker_pids_in(run.stderr)
    assert set(pids) == {"0", "1"} and not any(_running(pid) for pid in pids.values())


def test_a_worker_that_keeps_hanging_at_boot_is_restarted_then_stops_the_server(model_cache: Path,
                                                                                 tmp_path: Path) -> None:
    """Once the server runs, a worker whose restarts all hang while loading is stopped at each
    boot timeout (counted in ``wsserve_worker_boot_timeouts_total``), restarted, and after
    MAX_BOOT_FAILURES such starts in a row the supervisor gives up as for boot crashes: it names
    the worker, the count and the timeout, drains the other worker and exits 1.  It waited for the
    first hung restart forever."""
    from wsserve.supervisor import MAX_BOOT_FAILURES

    hang = tmp_path / "hang"
    repo = _hanging_repository(tmp_path, f"os.path.exists({str(hang)!r})")
    server = ServerProcess("--workers", "2", "--models", "linear", "--model-repository", str(repo), *_BOOT_FLAGS,
                           cache_dir=model_cache)
    try:
        pids = _worker_pids(server)
        assert _boot_timeouts(server) == {"0": 0, "1": 0}
        hang.touch()
        os.kill(pids["1"], signal.SIGKILL)
        # scrape once the supervisor saw the death (a connection could land in the killed worker's
        # socket until then); a hung worker never listens: it hangs loading, before it binds the port
        wait_until(lambda: "restarting it" in server.stderr_text(), 30, what="the restart log line")
        # the first hung restart is stopped and counted, on the other worker's /metrics
        wait_until(lambda: _boot_timeouts(server).get("1", 0) >= 1, 60, what="a boot timeout of worker 1 counted")
        assert _boot_timeouts(server)["0"] == 0
        assert server.wait(300) == 1, server.stderr_text()[-3000:]
    finally:
        server.stop()
    wait_until(lambda: "wsserve.supervisor: stopped" in server.stderr_text(), 30, what="the supervisor's last line")
    log = server.stderr_text()
    stopped = re.findall(r"worker 1 \(pid (\d+)\) was not ready within 4 s of its start \(--worker-boot-timeout-s\): "
                         r"stopping it", log)
    assert len(stopped) == MAX_BOOT_FAILURES, log[-3000:]
    assert len(set(stopped)) == MAX_BOOT_FAILURES and str(pids["1"]) not in stopped  # each restart once
    assert [int(n) for n in re.findall(r"not ready within 4 s, --worker-boot-timeout-s: boot failure (\d) of 5 in a "
                                       r"row", log)] == list(range(1, MAX_BOOT_FAILURES))
    assert re.search(rf"worker 1 \(pid {stopped[-1]}\) failed to boot {MAX_BOOT_FAILURES} times in a row \(last exit: "
                     r"[^\n]*, not ready within 4 s \(--worker-boot-timeout-s\)\): stopping the server", log), log[-3000:]
    assert "[worker 0] wsserve.server: received SIGTERM: draining" in log, log[-3000:]
    assert not any(_running(pid) for pid in _worker_pids_in(log).values())


def test_a_models_load_timeout_not_under_the_boot_timeout_is_refused_naming_it(model_cache: Path,
                                                                              tmp_path: Path) -> None:
    """--worker-boot-timeout-s must exceed --model-load-timeout-s so that no load a load timeout allows gets
    its worker killed; a model's config.toml model_load_timeout_s (up to a day) is that load's timeout too:
    one not under the boot timeout is refused before any worker starts, naming the model, its file and both
    timeouts. The server started, and a worker whose load of that model took longer than the boot timeout
    (within its own load timeout) was stopped and counted a boot failure."""
    model = tmp_path / "repo" / "slow"
    (model / "1").mkdir(parents=True)
    (model / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\nmodel_load_timeout_s = 4\n")
    (model / "1" / "model.py").write_text("class Model:\n    def __init__(self, d):\n        pass\n"
                                          "    def predict(self, x):\n        return x\n")
    run = subprocess.run([sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0",
                          "--workers", "2", "--models", "none", "--model-repository", str(model.parent), *_BOOT_FLAGS,
                          "--cache-dir", str(model_cache)], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert (f"model 'slow' ({model / 'config.toml'}) has model_load_timeout_s 4, not less than --worker-boot-timeout-s "
            "4: its worker would be stopped while a load its timeout allows still runs; raise --worker-boot-timeout-s "
            "(or turn it off)") in run.stderr, run.stderr[-3000:]
    assert "ready" not in run.stdout and "started (pid" not in run.stderr
