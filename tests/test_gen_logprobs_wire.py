"""``logprobs`` on the WebSocket ``generate``: each token frame carries the token's log-probability
and the k likeliest alternatives, by the model's own softmax (checked against a reference computed
here from the server's charlm), without changing the text; bounded and refused by name."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tests.charlm_reference import reference_logprobs
from tests.support import Conn
from wsserve.trainer import train_default_models

GEN = {"type": "generate", "model": "charlm"}


async def _frames(conn: Conn, rid: Any, **fields: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    await conn.send({**GEN, "id": rid, **fields})
    frames, last = await conn.until_terminal(rid)
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    return frames, last


async def test_token_frames_carry_the_models_logprobs(server_url: str, model_cache: Path) -> None:
    conn = await Conn.open(server_url)
    assert conn.hello["limits"]["max_logprobs"] == 20
    plain, _ = await _frames(conn, "p", prompt="The ", max_tokens=30)
    frames, done = await _frames(conn, "l", prompt="The ", max_tokens=30, logprobs=3)
    text = "".join(f["text"] for f in frames)
    assert text == "".join(f["text"] for f in plain) and done["tokens"] == 30  # the same greedy text
    assert all("logprob" not in f for f in plain)
    vocab = train_default_models(names=["charlm"], cache_dir=model_cache)["charlm"].id_to_text
    for f, ref in zip(frames, reference_logprobs(model_cache, "The ", text, 3), strict=True):
        want, top = ref["logprob"], ref["top"]
        assert math.isclose(f["logprob"], want, rel_tol=1e-9, abs_tol=1e-12)
        assert [(t["id"], t["text"]) for t in f["top_logprobs"]] == [(i, vocab[i]) for i, _ in top]
        assert all(math.isclose(t["logprob"], lp, rel_tol=1e-9, abs_tol=1e-12)
                   for t, (_, lp) in zip(f["top_logprobs"], top))
        assert f["top_logprobs"][0]["text"] == f["text"]  # greedy: the likeliest token
    await conn.close()


async def test_logprobs_are_the_models_whatever_the_sampling(server_url: str, model_cache: Path) -> None:
    """Sampled text with penalties and a bias: the text is the same as without logprobs, and each
    token's logprob is the raw model's (not the penalised, biased or tempered distribution)."""
    conn = await Conn.open(server_url)
    args = {"prompt": "It was ", "max_tokens": 25, "temperature": 1.3, "seed": 4, "top_p": 0.9,
            "frequency_penalty": 1.0, "logit_bias": {"70": 3}}
    plain, _ = await _frames(conn, "p", **args)
    frames, _ = await _frames(conn, "l", **args, logprobs=0)
    text = "".join(f["text"] for f in frames)
    assert text == "".join(f["text"] for f in plain)
    assert all(f["top_logprobs"] == [] for f in frames)
    for f, ref in zip(frames, reference_logprobs(model_cache, "It was ", text, 0), strict=True):
        assert math.isclose(f["logprob"], ref["logprob"], rel_tol=1e-9, abs_tol=1e-12)
    await conn.close()


async def test_logprobs_follow_their_tokens_through_stop_strings(server_url: str) -> None:
    """Held-back text keeps its tokens' logprobs: the frames are those of the free generation up
    to the stop string (same texts, same values), and the tokens of the stop string are not sent."""
    conn = await Conn.open(server_url)
    free, _ = await _frames(conn, 1, prompt="The ", max_tokens=50, logprobs=2)
    text = "".join(f["text"] for f in free)
    stop = text[12:15]
    cut = text.find(stop)
    frames, done = await _frames(conn, 2, prompt="The ", max_tokens=50, logprobs=2, stop=[stop, text[cut:cut + 2] + "#"])
    assert done["reason"] == "stop" and done["tokens"] == cut
    assert [(f["text"], f["logprob"], f["top_logprobs"]) for f in frames] == \
        [(f["text"], f["logprob"], f["top_logprobs"]) for f in free[:cut]]
    # a length finish releases held text with its logprobs
    frames, done = await _frames(conn, 3, prompt="The ", max_tokens=cut + 2, logprobs=1, stop=[stop])
    assert done["reason"] == "length"
    assert [(f["text"], f["logprob"]) for f in frames] == [(f["text"], f["logprob"]) for f in free[:cut + 2]]
    await conn.close()


async def test_logprobs_among_concurrent_generations_are_their_own(server_url: str) -> None:
    """Rows with and without logprobs, stop strings and sampling share steps: each stream's frames
    are what it gets alone."""
    conn = await Conn.open(server_url)
    targets = [{"prompt": "The ", "max_tokens": 30, "logprobs": 5},
               {"prompt": "def ", "max_tokens": 30, "temperature": 0.9, "seed": 3, "logprobs": 1, "stop": ["\n\n"]},
               {"prompt": "x = ", "max_tokens": 30}]
    alone = [(await _frames(conn, f"a{i}", **t))[0] for i, t in enumerate(targets)]
    for i in range(12):
        await conn.send({**GEN, "id": f"c{i}", "prompt": "A ", "max_tokens": 10 + i, "temperature": 0.5,
                         "seed": i, **({"logprobs": i % 4} if i % 2 else {})})
    for i, t in enumerate(targets):
        await conn.send({**GEN, "id": f"b{i}", **t})
    got = await conn.collect({f"b{i}" for i in range(3)} | {f"c{i}" for i in range(12)})
    for i in range(3):
        assert got[f"b{i}"][:-1] == [{**f, "id": f"b{i}"} for f in alone[i]], targets[i]
    for i in range(12):
        *tokens, done = got[f"c{i}"]
        assert done["type"] == "done" and len(tokens) == 10 + i
        assert all(("logprob" in f) == bool(i % 2) and len(f.get("top_logprobs", [])) == (i % 4 if i % 2 else 0)
                   for f in tokens)
    await conn.close()


async def test_logprobs_are_bounded_and_refused_by_name(server_url: str) -> None:
    conn = await Conn.open(server_url)
    frames, _ = await _frames(conn, "max", prompt="a", max_tokens=2, logprobs=20)
    assert all(len(f["top_logprobs"]) == 20 for f in frames)
    assert all(a["logprob"] >= b["logprob"] for f in frames for a, b in zip(f["top_logprobs"], f["top_logprobs"][1:]))
    for bad in (21, -1, True, "2", 1.5, [1]):
        reply = await conn.request({**GEN, "id": "bad", "prompt": "a", "logprobs": bad})
        assert (reply["type"], reply["code"]) == ("error", "bad_request"), (bad, reply)
        assert "field 'logprobs' must be an integer in [0, 20]" in reply["message"], reply
    frames, _ = await _frames(conn, "null", prompt="a", max_tokens=2, logprobs=None)
    assert all("logprob" not in f for f in frames)
    await conn.close()
