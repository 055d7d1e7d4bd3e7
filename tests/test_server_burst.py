"""The core invariant under a concurrent burst: every request with an id gets exactly
one terminal frame, nothing after it, and streamed frames of an id come in seq order."""

from __future__ import annotations

import asyncio
import random

from tests.support import TERMINAL, Conn

CONNECTIONS = 24
PER_CONNECTION = 60


def _messages(rng: random.Random, c: int) -> tuple[list[object], dict[object, str], set[object]]:
    """A shuffled mix for connection ``c``: (messages, expected outcome by id, ids to cancel)."""
    msgs: list[object] = []
    expect: dict[object, str] = {}
    cancel: set[object] = set()
    for i in range(PER_CONNECTION):
        rid: object = f"{c}-{i}" if i % 2 else c * 1000 + i
        kind = rng.choice(["linear", "mlp", "stream", "generate", "bad_input", "bad_model", "bad_type", "cancel_gen", "cancel_pred"])
        if kind == "linear":
            msgs.append({"type": "predict", "id": rid, "model": "linear", "inputs": [[rng.random()] for _ in range(rng.randint(1, 50))]})
            expect[rid] = "result"
        elif kind == "mlp":
            msgs.append({"type": "predict", "id": rid, "model": "mlp", "inputs": [[rng.random()] * 32 for _ in range(rng.randint(1, 20))], "priority": rng.randint(0, 1)})
            expect[rid] = "result"
        elif kind == "stream":
            msgs.append({"type": "predict", "id": rid, "model": "linear", "inputs": [[0.1]] * rng.randint(1, 3000), "stream": True, "chunk_rows": rng.randint(1, 500)})
            expect[rid] = "done"
        elif kind == "generate":
            msgs.append({"type": "generate", "id": rid, "model": "charlm", "prompt": "def ", "max_tokens": rng.randint(1, 40), "temperature": 0.7, "seed": i})
            expect[rid] = "done"
        elif kind == "bad_input":
            msgs.append({"type": "predict", "id": rid, "model": "linear", "inputs": [["x"]]})
            expect[rid] = "error:invalid_input"
        elif kind == "bad_model":
            msgs.append({"type": "predict", "id": rid, "model": "nope", "inputs": [[1]]})
            expect[rid] = "error:unknown_model"
        elif kind == "bad_type":
            msgs.append({"type": "generate", "id": rid, "model": "charlm", "prompt": "x", "top_k": -3})
            expect[rid] = "error:bad_request"
        elif kind == "cancel_gen":
            msgs.append({"type": "generate", "id": rid, "model": "charlm", "prompt": "a", "max_tokens": 100000})
            expect[rid] = "done:cancelled"
            cancel.add(rid)
        else:
            msgs.append({"type": "predict", "id": rid, "model": "linear", "inputs": [[0.5]] * 4000, "stream": True, "chunk_rows": 100})
            expect[rid] = "cancelled-or-done"
            cancel.add(rid)
        if rng.random() < 0.1:
            msgs.append("{broken json")
        if rng.random() < 0.1:
            msgs.append({"type": "ping", "id": f"ping-{c}-{i}"})
    return msgs, expect, cancel


async def _one_connection(url: str, c: int, rng: random.Random) -> None:
    conn = await Conn.open(url)
    msgs, expect, cancel = _messages(rng, c)
    for m in msgs:
        await conn.send(m)
    for rid in cancel:
        await conn.send({"type": "cancel", "id": rid})
    await conn.collect(set(expect), timeout=120)
    # Nothing more may arrive for any id after its terminal frame: a ping marks the end.
    await conn.send({"type": "ping", "id": "end"})
    while (await conn.recv())["id"] != "end":
        pass
    for f in conn.frames:
        assert f["type"] != "draining"
    by_id: dict[object, list[dict]] = {}
    for f in conn.frames:
        if f.get("id") in expect:
            by_id.setdefault(f["id"], []).append(f)
    for rid, want in expect.items():
        got = by_id[rid]
        terminals = [f for f in got if f["type"] in TERMINAL]
        assert len(terminals) == 1, (rid, terminals)
        assert got[-1] is terminals[0], f"frames after the terminal frame of {rid!r}"
        seqs = [f["seq"] for f in got if f["type"] in ("chunk", "token")]
        assert seqs == list(range(len(seqs))), rid
        end = terminals[0]
        if want == "result":
            assert end["type"] == "result", end
        elif want == "done":
            assert end["type"] == "done" and end["reason"] in ("complete", "length"), end
        elif want == "done:cancelled":
            assert end["type"] == "done" and end["reason"] == "cancelled", end
        elif want == "cancelled-or-done":
            assert (end["type"] == "error" and end["code"] == "cancelled") or end["type"] == "done", end
        else:
            code = want.split(":")[1]
            assert end["type"] == "error" and end["code"] == code, end
    await conn.close()


async def test_every_request_gets_exactly_one_terminal_frame(server_url: str) -> None:
    rng = random.Random(1234)
    seeds = [random.Random(rng.random()) for _ in range(CONNECTIONS)]
    await asyncio.gather(*(_one_connection(server_url, c, seeds[c]) for c in range(CONNECTIONS)))
