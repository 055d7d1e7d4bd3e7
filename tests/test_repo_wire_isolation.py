"""One request's model failure stays in that request (a real server on loopback, a ``model.py``).

The model (:data:`POISON_PY`) raises on a row holding :data:`RAISE`, returns one row too few for a
batch holding :data:`SHORT` (the backend reports that as a ``ValueError``), and has an input
gradient that overflows the attributions to infinity for rows whose first value is over 100.  To
put several requests in one batch deterministically, a held request (first value ``-1``) keeps the
model busy in its own batch until the test touches its gate file; the requests sent meanwhile
queue, and the test waits for the queue to hold all of them
(``wsserve_queue_depth``) before it opens the gate: they are then computed as one batch.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.repo_models import (
    AFFINE_CONFIG,
    BIGRAM_CONFIG,
    BIGRAM_PY,
    BIGRAM_VOCAB,
    bigram_table,
    write_py,
)
from tests.support import Conn, ServerProcess, wait_until

RAISE, SHORT = 666.0, 667.0
W = np.array([1.0, 2.0, 3.0])

POISON_PY = """
import time
from pathlib import Path

import numpy as np

W = np.array([1.0, 2.0, 3.0])


class Model:
    def __init__(self, version_dir):
        self.gates = Path((Path(version_dir) / "gates.txt").read_text().strip())

    def predict(self, batch):
        for row in batch[batch[:, 0] == -1]:  # held: wait for the gate named by the row's second value
            gate = self.gates / str(int(row[1]))
            Path(str(gate) + ".started").touch()
            end = time.monotonic() + 60
            while not gate.exists():
                if time.monotonic() > end:
                    raise TimeoutError(f"{gate} never appeared")
                time.sleep(0.005)
        if (batch == 666.0).any():
            raise ValueError("poison row")
        y = batch @ W[:, None]
        if (batch == 667.0).any():
            return y[:-1]
        return y

    def input_gradient(self, x, target):
        g = np.tile(W, (len(x), 1))
        g[x[:, 0] > 100] = 1e308  # finite, but 128 of them sum to infinity
        return g
"""


#: A bigram generative model (tests/repo_models.py's BIGRAM_PY) whose step raises when a context
#: holds the newline id, which it never generates itself (its logit is -inf), and takes 2 ms.
POISONGEN_PY = BIGRAM_PY.replace("""        if self.delay:
            time.sleep(self.delay)
        return self.table[contexts[:, -1]]""", """        if (contexts == VOCAB.index("\\n")).any():
            raise ValueError("poison context")
        time.sleep(0.002)
        out = self.table[contexts[:, -1]].copy()
        out[:, VOCAB.index("\\n")] = -np.inf
        return out""")
GEN_SEED = 31


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gates: Path, module_transport: str) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repository")
    (repo / "poison").mkdir()
    (repo / "poison" / "config.toml").write_text(AFFINE_CONFIG)
    write_py(repo / "poison" / "1", POISON_PY, **{"gates.txt": str(gates)})
    (repo / "poisongen").mkdir()
    (repo / "poisongen" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(repo / "poisongen" / "1", POISONGEN_PY, **{"seed.txt": str(GEN_SEED)})
    with ServerProcess("--models", "none", "--model-repository", str(repo), transport=module_transport) as srv:
        yield srv


_gate_names = itertools.count(1)  # each held batch waits for a gate of its own (a touched gate stays)


async def batched(server: ServerProcess, gates: Path, requests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Send ``requests`` (id -> predict fields) so that the model computes them as one batch, and
    return each one's terminal frame (after checking it is the request's only frame)."""
    gate = str(next(_gate_names))
    conn = await Conn.open(server.url)
    await conn.send({"type": "predict", "id": "held", "model": "poison", "inputs": [[-1.0, float(gate), 0.0]]})
    wait_until(lambda: (gates / f"{gate}.started").exists(), 30, what="the held batch started")
    for rid, fields in requests.items():
        await conn.send({"type": "predict", "id": rid, "model": "poison", **fields})
    wait_until(lambda: server.metrics().get("wsserve_queue_depth", model="poison") == len(requests), 30,
               what=f"{len(requests)} requests queued behind the held batch")
    (gates / gate).touch()
    frames = await conn.collect({"held", *requests})
    await conn.close()
    assert frames["held"][-1]["type"] == "result", frames["held"]
    for rid, got in frames.items():
        assert len(got) == 1, got  # one terminal frame each (nothing streamed)
    return {rid: got[0] for rid, got in frames.items() if rid != "held"}


@pytest.mark.parametrize("poison, error", [
    (RAISE, "ValueError: poison row"),
    (SHORT, "output 'output' has shape [1, 1]; expected [2, 1]"),  # its own 2 rows, computed alone
], ids=["raises", "short-outputs"])
async def test_a_poison_request_fails_alone_and_its_batch_neighbours_get_their_results(
        server: ServerProcess, gates: Path, poison: float, error: str) -> None:
    before = server.metrics().get("wsserve_batch_isolations_total", model="poison")
    good = {f"g{i}": [[float(i), 1.0, 2.0]] * (1 + i % 2) for i in range(4)}
    requests: dict[str, dict[str, Any]] = {rid: {"inputs": rows} for rid, rows in good.items()}
    requests["x1"] = {"inputs": [[0.5, -1.0, 2.0]], "explain": True}
    requests["bad"] = {"inputs": [[1.0, 2.0, 3.0], [poison, 0.0, 0.0]]}
    replies = await batched(server, gates, requests)
    bad = replies.pop("bad")
    assert (bad["type"], bad["code"]) == ("error", "internal"), bad
    assert "model 'poison'" in bad["message"] and error in bad["message"], bad
    for rid, rows in good.items():
        r = replies[rid]
        assert r["type"] == "result", r
        np.testing.assert_allclose(r["outputs"], np.asarray(rows) @ W[:, None], rtol=1e-12)
        assert r["timing"]["batch_size"] == len(rows)  # computed alone after the batch failed
    x1 = replies["x1"]
    assert x1["type"] == "result", x1
    np.testing.assert_allclose(x1["attributions"], [[0.5, -2.0, 6.0]], rtol=1e-9)
    assert server.metrics().get("wsserve_batch_isolations_total", model="poison") == before + 1
    log = server.stderr_text()
    assert "computing each request alone" in log and "model poison failed on a request's 2 rows computed alone" in log


async def test_non_finite_attributions_end_only_their_request_with_invalid_input(
        server: ServerProcess, gates: Path) -> None:
    requests: dict[str, dict[str, Any]] = {
        "inf": {"inputs": [[1.0, 1.0, 1.0], [200.0, 0.0, 0.0]], "explain": True},
        "x1": {"inputs": [[0.5, -1.0, 2.0]], "explain": True},
        "plain": {"inputs": [[200.0, 0.0, 0.0]]},
    }
    replies = await batched(server, gates, requests)
    assert replies["inf"] == {"type": "error", "id": "inf", "code": "invalid_input",
                              "message": "attributions of row 1 are not finite"}, replies["inf"]
    np.testing.assert_allclose(replies["x1"]["attributions"], [[0.5, -2.0, 6.0]], rtol=1e-9)
    assert replies["plain"]["outputs"] == [[200.0]]


def _greedy_without_newline(prompt: str, n: int) -> str:
    """POISONGEN_PY's greedy text, computed here: the bigram table with the newline never chosen."""
    table = bigram_table(GEN_SEED).copy()
    table[:, BIGRAM_VOCAB.index("\n")] = -np.inf
    last = BIGRAM_VOCAB.index(prompt[-1])
    out = []
    for _ in range(n):
        last = int(np.argmax(table[last]))
        out.append(BIGRAM_VOCAB[last])
    return "".join(out)


async def test_a_generation_step_failing_on_one_sequence_ends_only_that_sequence(server: ServerProcess) -> None:
    """Two long generations run; a third whose prompt makes the model's step raise joins their
    steps. It used to end all three with internal; now it ends alone and the two stream on,
    token for token what they stream without it, until the test cancels them."""
    before = server.metrics().get("wsserve_batch_isolations_total", model="poisongen") or 0
    conn = await Conn.open(server.url)
    prompts = {"g1": "ab", "g2": "h."}
    for rid, prompt in prompts.items():  # they end only when cancelled: the bad one meets them
        await conn.send({"type": "generate", "id": rid, "model": "poisongen", "prompt": prompt,
                         "max_tokens": conn.hello["limits"]["max_tokens"]})
    streaming: set[str] = set()
    while streaming != set(prompts):
        frame = await conn.recv()
        assert frame["type"] == "token", frame
        streaming.add(frame["id"])
    await conn.send({"type": "generate", "id": "bad", "model": "poisongen", "prompt": "ab\n", "max_tokens": 5})
    _, bad = await conn.until_terminal("bad")
    assert (bad["type"], bad["code"]) == ("error", "internal"), bad
    assert "poison context" in bad["message"], bad
    for rid in prompts:
        await conn.send({"type": "cancel", "id": rid})
    await conn.collect(set(prompts))
    await conn.close()
    for rid, prompt in prompts.items():
        frames = [f for f in conn.frames if f.get("id") == rid]
        *tokens, last = frames
        assert (last["type"], last.get("reason")) == ("done", "cancelled"), last
        assert all(f["type"] == "token" for f in tokens) and [f["seq"] for f in tokens] == list(range(len(tokens)))
        text = "".join(f["text"] for f in tokens)
        assert text == _greedy_without_newline(prompt, len(text))
    assert server.metrics().get("wsserve_batch_isolations_total", model="poisongen") >= before + 1
    await asyncio.to_thread(server.wait_logged, "generation step of model poisongen failed on")
